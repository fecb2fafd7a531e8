//! The typed view of one snapshot plus the IO counters: what `/stats.json` serves and what the page,
//! the CSV and the metrics are all rendered from, so they can never disagree. The judgements an
//! operator needs at a glance (the node's role, and whether its state is normal, in flux or broken)
//! are made here once.

use std::sync::atomic::Ordering::Relaxed;
use std::time::SystemTime;

use serde::Serialize;
use tokio::time::Instant;

use crate::health::patroni::Answer;
use crate::health::{CheckResult, Status};
use crate::routing::{AdminState, Claim};
use crate::state::{Event, NodeState, Shared};
use crate::time::epoch_secs as epoch;

/// Events carried by one view: enough for the page's timeline, small enough to poll every second.
pub const EVENTS_IN_VIEW: usize = 50;

#[derive(Debug, Serialize)]
pub struct View {
    /// The listen section's name (HAProxy's proxy name, `pxname`).
    pub proxy: String,
    pub version: &'static str,
    pub pid: u32,
    /// The configuration file this process loaded, when it was loaded from one.
    pub config_path: Option<String>,
    /// SHA-256 of the loaded file's bytes (hex), and when it was loaded (Unix time).
    pub config_sha256: Option<String>,
    pub config_loaded_at: Option<f64>,
    /// Reloads (SIGHUP, `patroni-proxy reload`) applied and refused since start-up.
    pub reloads: Reloads,
    /// The primary port's address.
    pub listen: String,
    /// Unix time of start-up.
    pub started_at: f64,
    pub uptime_s: u64,
    /// The node new connections go to.
    pub primary: Option<String>,
    pub primary_timeline: Option<u64>,
    /// Seconds since the routed primary last changed (to a node or to none).
    pub primary_since_s: f64,
    pub primary_changes: u64,
    /// The highest timeline a routed primary reported: a node claiming the role on a lower one
    /// is not routed (timeline fencing).
    pub max_timeline: Option<u64>,
    /// Seconds without a routable primary since start-up, the current period included.
    pub no_primary_total_s: f64,
    pub frontend: FrontendView,
    pub servers: Vec<ServerView>,
    /// The listeners that are not the primary port (replica, any, standby_leader), each with its
    /// members and its own counters.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<super::listeners::ListenerView>,
    /// The most recent events, oldest first.
    pub events: Vec<Event>,
    /// The etcd watch, when `[etcd]` is configured: endpoint in use, the leader's lease as last
    /// read, failures by reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd: Option<crate::dcs::StatusView>,
    /// Who relays each listener's sessions (`listen.relay`), in the file's order.
    pub relay: Vec<super::relay::RelayView>,
}

#[derive(Debug, Default, Serialize)]
pub struct Reloads {
    pub ok: u64,
    pub failed: u64,
    /// Why the last refused reload was refused.
    pub last_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct FrontendView {
    pub scur: u64,
    pub smax: u64,
    pub slim: u32,
    pub stot: u64,
    pub bin: u64,
    pub bout: u64,
    /// Sessions waiting for a server slot now, over all servers; and the highest server `qmax`.
    pub qcur: u64,
    pub qmax: u64,
    /// Clients closed without reaching a server, by reason.
    pub refusals: Refusals,
    pub holds: Holds,
    pub accept_errors: u64,
    /// Checks and server connections that failed for want of a local resource (our fault).
    pub local_errors: u64,
    /// Log lines dropped because stderr did not keep up.
    pub log_lines_dropped: u64,
}

#[derive(Debug, Serialize)]
pub struct Refusals {
    /// No primary within `hold_timeout`: answered with 57P03.
    pub no_primary: u64,
    /// Waited `timeout queue` for a server slot.
    pub queue_timeout: u64,
    /// Connecting to the primary failed after all retries.
    pub connect_failed: u64,
    /// The backend reported `in_hot_standby = on`: answered with 57P03.
    pub standby: u64,
}

/// Clients held while no primary was routable (failover).
#[derive(Debug, Serialize)]
pub struct Holds {
    /// Clients that had to wait, in all.
    pub held: u64,
    /// Clients waiting now.
    pub holding: u64,
    /// Held clients connected to a primary once one was confirmed.
    pub released: u64,
    /// Startups replayed on another connection after a "shutting down" answer.
    pub replays: u64,
}

/// The node's Patroni role, bounded (it is a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Replica,
    Unknown,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::Unknown => "unknown",
        }
    }
}

/// How the node's state reads to an operator; the dashboard colours rows by it. Unlike HAProxy's
/// colours, a healthy replica is normal (HAProxy paints it red: its check answers 503).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tone {
    /// The routed primary (green).
    Primary,
    /// A running replica (neutral).
    Replica,
    /// Changing: health counter between UP and DOWN, UP but not routed, Patroni starting or
    /// stopping (amber).
    Transitional,
    /// Not answering, or Patroni reports a failed/stopped node (red).
    Down,
    /// No check finished yet (amber, like any state not yet settled).
    Init,
    /// Not routed because an operator drained it or put it in maintenance (HAProxy's MAINT
    /// colour); the status says which (`DRAIN`, `MAINT`).
    Admin,
}

impl Tone {
    pub fn as_str(self) -> &'static str {
        match self {
            Tone::Primary => "primary",
            Tone::Replica => "replica",
            Tone::Transitional => "transitional",
            Tone::Down => "down",
            Tone::Init => "init",
            Tone::Admin => "admin",
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ServerView {
    pub name: String,
    /// As configured: `IP:PORT` or `NAME:PORT`.
    pub address: String,
    /// The address its sessions connect to: `address`, or what its host name resolved to for
    /// the checks that decide its state (`null` while the name has not resolved).
    pub resolved: Option<String>,
    pub check_address: String,
    /// HAProxy's status string (`UP`, `UP 2/3`, `DOWN 1/2`, `DOWN`), or `INI` before the first check;
    /// `REMOVED` once a reload removed the server.
    pub status: String,
    /// A reload removed it from the configuration: listed until the process restarts, with its
    /// sessions (draining) and its totals.
    pub removed: bool,
    pub tone: Tone,
    /// What an operator said (`ready`, `drain`, `maint`): only `ready` lets the checks route.
    pub admin: AdminState,
    /// Who set `admin` last (`user@address via api`) and when (Unix time); `None` until then.
    pub admin_by: Option<String>,
    pub admin_at: Option<f64>,
    /// The rise/fall counter says UP.
    pub up: bool,
    pub routed_primary: bool,
    /// Routed although its REST checks time out or are refused, because etcd shows it holding
    /// the leader key with a live lease and its PostgreSQL port accepts connections (the REST
    /// outage ride-through); since when (Unix time).
    pub rest_unreachable_leader_alive: bool,
    pub ride_through_since: Option<f64>,
    /// Its Patroni member name: `member` as configured, else as its REST answer gave it.
    pub member: Option<String>,
    /// What its REST answer, etcd and PostgreSQL say about it being the primary, and whether they
    /// agree.
    pub signals: super::signals::Signals,
    /// The last SQL check (`[check.sql]`): `result` (`primary`, `standby`, `failed`,
    /// `refused`), `info` for the last two, `tls`, `duration_ms`, `finished_at`.
    pub last_sql: Option<crate::health::sql::SqlResult>,
    pub role: Role,
    /// The role and state exactly as Patroni's last answer spelled them.
    pub patroni_role: Option<String>,
    pub patroni_state: Option<String>,
    pub timeline: Option<u64>,
    pub claim: Claim,
    pub last_answer: Option<Answer>,
    pub last_check: Option<CheckResult>,
    /// Seconds since the last check finished.
    pub last_check_age_s: Option<f64>,
    /// HAProxy's long description of the last check status (`Layer7 wrong status`).
    pub check_desc: &'static str,
    pub check_rise: u32,
    pub check_fall: u32,
    pub check_health: u32,
    pub chkfail: u64,
    pub chkdown: u64,
    pub lastchg_s: u64,
    pub downtime_s: u64,
    pub scur: u64,
    pub smax: u64,
    pub slim: u32,
    pub stot: u64,
    pub qcur: u64,
    pub qmax: u64,
    pub bin: u64,
    pub bout: u64,
    pub econ: u64,
    pub wretr: u64,
    pub killed: u64,
    pub cli_abrt: u64,
    pub srv_abrt: u64,
    /// Seconds since the last session to this server started; `None` = never.
    pub lastsess_s: Option<u64>,
}

/// HAProxy's status string, or `INI` while no check has finished: the counter starts at `UP 1/3`
/// (HAProxy's initial state), which would read as "up" for a node nothing is routed to yet. As in
/// HAProxy, `MAINT` overrides everything and `DRAIN` takes the place of `UP` (`DRAIN 2/3`).
pub fn status_text(n: &NodeState) -> String {
    if n.removed.is_some() {
        return "REMOVED".to_string();
    }
    let checked = match n.last_check {
        None => "INI".to_string(),
        Some(_) => n.counter.status().to_string(),
    };
    match n.admin {
        AdminState::Maint => "MAINT".to_string(),
        AdminState::Drain if n.counter.is_up() => match checked.strip_prefix("UP") {
            Some(rest) => format!("DRAIN{rest}"),
            None => "DRAIN".to_string(),
        },
        _ => checked,
    }
}

/// The Patroni role from the last check: the body's `role` when there is one, else what the status
/// alone says (a bodiless 200 from `/` is the primary).
pub fn role_of(n: &NodeState) -> Role {
    let Some(check) = &n.last_check else {
        return Role::Unknown;
    };
    match check.patroni.as_ref().and_then(|p| p.role.as_deref()) {
        Some("primary") => Role::Primary,
        Some("replica" | "standby_leader" | "sync_standby" | "quorum_standby") => Role::Replica,
        Some(_) => Role::Unknown,
        None => match n.last_answer {
            Some(Answer::Primary { .. }) => Role::Primary,
            _ => Role::Unknown,
        },
    }
}

/// See [`Tone`].
pub fn tone_of(n: &NodeState, routed: bool) -> Tone {
    if routed {
        return Tone::Primary;
    }
    if n.admin != AdminState::Ready || n.removed.is_some() {
        return Tone::Admin;
    }
    if n.last_check.is_none() {
        return Tone::Init;
    }
    match n.counter.status() {
        Status::GoingDown { .. } | Status::GoingUp { .. } => return Tone::Transitional,
        // UP but not routed: a second claimant, or a leader still promoting.
        Status::Up => return Tone::Transitional,
        Status::Down => {}
    }
    match &n.last_answer {
        None | Some(Answer::Unknown) => Tone::Down,
        Some(Answer::Primary { .. }) => Tone::Transitional,
        Some(Answer::NotPrimary { .. }) => {
            let state = n
                .last_check
                .as_ref()
                .and_then(|c| c.patroni.as_ref())
                .and_then(|p| p.state.as_deref());
            match state {
                // Patroni said "not the leader" and nothing worse (a bodiless 503 too).
                None | Some("running") => Tone::Replica,
                Some(s) if s == "stopped" || s == "crashed" || s.contains("failed") => Tone::Down,
                Some(_) => Tone::Transitional,
            }
        }
    }
}

/// One node's row, with the counters of `b` (its side on one listener).
pub fn server_view(
    cfg: &crate::config::Config,
    snap: &crate::state::Snapshot,
    n: &NodeState,
    b: &crate::backend::Backend,
    routed: bool,
    now: Instant,
    wall: SystemTime,
) -> ServerView {
    let s = &n.server;
    let c = &b.counters;
    let info = n.last_check.as_ref().and_then(|r| r.patroni.as_ref());
    let last_session = c.last_session.load(Relaxed);
    ServerView {
        name: s.name.clone(),
        address: s.address.to_string(),
        resolved: n.address().map(|a| a.to_string()),
        check_address: cfg.check_address_of(s),
        status: status_text(n),
        removed: n.removed.is_some(),
        tone: tone_of(n, routed),
        admin: n.admin,
        admin_by: n.admin_by.as_ref().map(|(who, _)| who.clone()),
        admin_at: n.admin_by.as_ref().map(|(_, at)| epoch(*at)),
        up: n.counter.is_up(),
        routed_primary: routed,
        rest_unreachable_leader_alive: n.ride.since.is_some(),
        ride_through_since: n.ride.since.map(epoch),
        member: s.member.clone().or_else(|| n.ride.learned.clone()),
        signals: super::signals::of(snap, n, now),
        last_sql: n.sql.as_ref().map(|s| s.result.clone()),
        role: role_of(n),
        patroni_role: info.and_then(|p| p.role.clone()),
        patroni_state: info.and_then(|p| p.state.clone()),
        timeline: info.and_then(|p| p.timeline),
        claim: n.claim.clone(),
        last_answer: n.last_answer.clone(),
        last_check_age_s: n.last_check.as_ref().map(|r| {
            wall.duration_since(r.finished_at)
                .unwrap_or_default()
                .as_secs_f64()
        }),
        check_desc: n
            .last_check
            .as_ref()
            .map_or("Initializing", |r| r.status.description()),
        last_check: n.last_check.clone(),
        check_rise: cfg.check.rise.get(),
        check_fall: cfg.check.fall.get(),
        check_health: n.counter.health(),
        chkfail: n.chkfail,
        chkdown: n.chkdown,
        lastchg_s: now.saturating_duration_since(n.last_change).as_secs(),
        downtime_s: n.downtime_at(now).as_secs(),
        scur: c.scur.load(Relaxed),
        smax: c.smax.load(Relaxed),
        slim: b.maxconn(),
        stot: c.stot.load(Relaxed),
        qcur: c.qcur.load(Relaxed),
        qmax: c.qmax.load(Relaxed),
        bin: c.bin.load(Relaxed),
        bout: c.bout.load(Relaxed),
        econ: c.econ.load(Relaxed),
        wretr: c.wretr.load(Relaxed),
        killed: c.killed.load(Relaxed),
        cli_abrt: c.cli_abrt.load(Relaxed),
        srv_abrt: c.srv_abrt.load(Relaxed),
        lastsess_s: (last_session > 0).then(|| (epoch(wall) as u64).saturating_sub(last_session)),
    }
}

/// A listener's frontend counters; `servers` for the queue figures.
pub fn frontend_view(
    fe: &crate::backend::Frontend,
    slim: u32,
    servers: &[ServerView],
) -> FrontendView {
    FrontendView {
        scur: fe.scur.load(Relaxed),
        smax: fe.smax.load(Relaxed),
        slim,
        stot: fe.stot.load(Relaxed),
        bin: fe.bin.load(Relaxed),
        bout: fe.bout.load(Relaxed),
        qcur: servers.iter().map(|s| s.qcur).sum(),
        qmax: servers.iter().map(|s| s.qmax).max().unwrap_or(0),
        refusals: Refusals {
            no_primary: fe.hold_timeouts.load(Relaxed),
            queue_timeout: fe.queue_timeout.load(Relaxed),
            connect_failed: fe.connect_failed.load(Relaxed),
            standby: fe.standby_refusals.load(Relaxed),
        },
        holds: Holds {
            held: fe.held.load(Relaxed),
            holding: fe.holding.load(Relaxed),
            released: fe.hold_released.load(Relaxed),
            replays: fe.replays.load(Relaxed),
        },
        accept_errors: fe.accept_errors.load(Relaxed),
        local_errors: fe.local_errors.load(Relaxed),
        log_lines_dropped: crate::logging::dropped_lines(),
    }
}

pub fn view(shared: &Shared) -> View {
    // Kernel-relayed sessions' bytes reach the counters when read.
    if let Some(m) = shared.sockmap.ready() {
        m.flush();
    }
    let snap = shared.current();
    let now = Instant::now();
    let wall = SystemTime::now();
    let fe = &shared.frontend;
    let cfg = &shared.config();
    let backends = shared.backends();
    let servers: Vec<ServerView> = snap
        .nodes
        .iter()
        .zip(&backends)
        .enumerate()
        .map(|(i, (n, b))| server_view(cfg, &snap, n, b, snap.primary == Some(i), now, wall))
        .collect();
    let mut events = shared.events.recent();
    events.drain(..events.len().saturating_sub(EVENTS_IN_VIEW));
    let primary_timeline = snap.primary.and_then(|p| match &snap.nodes[p].claim {
        Claim::Primary { timeline, .. } => *timeline,
        _ => None,
    });
    View {
        proxy: cfg.listen.name.clone(),
        version: env!("CARGO_PKG_VERSION"),
        pid: std::process::id(),
        // Known to the stats side only: [`super::view_of`] fills it in.
        config_path: None,
        config_sha256: None,
        config_loaded_at: None,
        reloads: Reloads::default(),
        listen: cfg.listen.bind.to_string(),
        started_at: epoch(shared.started),
        uptime_s: shared.started_at.elapsed().as_secs(),
        primary: snap.primary.map(|i| shared.server_name(i).to_string()),
        primary_timeline,
        primary_since_s: now
            .saturating_duration_since(snap.primary_since)
            .as_secs_f64(),
        primary_changes: snap.primary_changes,
        max_timeline: snap.max_timeline,
        no_primary_total_s: snap.no_primary_total_at(now).as_secs_f64(),
        frontend: frontend_view(fe, cfg.global.maxconn.get(), &servers),
        listeners: super::listeners::views(shared, &snap),
        servers,
        events,
        etcd: None,
        relay: super::relay::views(shared),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::patroni::PatroniInfo;
    use crate::health::{CheckStatus, HealthCounter};
    use std::time::Duration;

    fn node(status: CheckStatus, body: Option<&str>, passes: &[bool]) -> NodeState {
        let result = CheckResult {
            status,
            code: None,
            duration: Duration::ZERO,
            info: None,
            patroni: body.and_then(|b| PatroniInfo::parse(b.as_bytes())),
            finished_at: SystemTime::now(),
        };
        let mut counter = HealthCounter::new(2, 3);
        for p in passes {
            counter.observe(*p);
        }
        let mut n = fresh();
        n.counter = counter;
        n.last_answer = Some(Answer::of(&result));
        n.last_check = Some(result);
        n
    }

    fn fresh() -> NodeState {
        crate::state::Shared::detached(std::sync::Arc::new(
            crate::config::Config::from_toml(
                "[[server]]\nname = \"a\"\naddress = \"127.0.0.1:5432\"\n",
            )
            .unwrap(),
        ))
        .current()
        .nodes[0]
            .clone()
    }

    const REPLICA: &str = r#"{"state":"running","role":"replica","timeline":1}"#;

    #[test]
    fn a_running_replica_is_neutral_though_haproxy_calls_it_down() {
        let n = node(CheckStatus::L7STS, Some(REPLICA), &[false]);
        assert_eq!(status_text(&n), "DOWN");
        assert_eq!(role_of(&n), Role::Replica);
        assert_eq!(tone_of(&n, false), Tone::Replica);
    }

    #[test]
    fn tones_follow_the_state() {
        assert_eq!(status_text(&fresh()), "INI");
        assert_eq!(tone_of(&fresh(), false), Tone::Init);
        let primary = r#"{"state":"running","role":"primary","timeline":2}"#;
        let up = node(CheckStatus::L7OK, Some(primary), &[true]);
        assert_eq!(
            (tone_of(&up, true), role_of(&up)),
            (Tone::Primary, Role::Primary)
        );
        assert_eq!(tone_of(&up, false), Tone::Transitional, "UP but not routed");
        let going_down = node(CheckStatus::L7TOUT, None, &[true, false]);
        assert_eq!(status_text(&going_down), "UP 2/3");
        assert_eq!(tone_of(&going_down, false), Tone::Transitional);
        let unreachable = node(CheckStatus::L4CON, None, &[false]);
        assert_eq!(
            (tone_of(&unreachable, false), role_of(&unreachable)),
            (Tone::Down, Role::Unknown)
        );
        let crashed = r#"{"state":"crashed","role":"replica"}"#;
        assert_eq!(
            tone_of(&node(CheckStatus::L7STS, Some(crashed), &[false]), false),
            Tone::Down
        );
        let starting = r#"{"state":"starting","role":"replica"}"#;
        assert_eq!(
            tone_of(&node(CheckStatus::L7STS, Some(starting), &[false]), false),
            Tone::Transitional
        );
    }

    #[test]
    fn an_operators_state_reads_as_haproxy_shows_it() {
        // haproxy-semantics.md §3.4: "`MAINT` ... `DRAIN` | `DRAIN f/F`"; MAINT overrides all.
        let mut up = node(CheckStatus::L7OK, None, &[true]);
        up.admin = AdminState::Drain;
        assert_eq!(status_text(&up), "DRAIN");
        assert_eq!(tone_of(&up, false), Tone::Admin);
        let mut going_down = node(CheckStatus::L7TOUT, None, &[true, false]);
        going_down.admin = AdminState::Drain;
        assert_eq!(status_text(&going_down), "DRAIN 2/3");
        let mut down = node(CheckStatus::L4CON, None, &[false]);
        down.admin = AdminState::Drain;
        assert_eq!(
            status_text(&down),
            "DOWN",
            "a drained node that fails is DOWN"
        );
        down.admin = AdminState::Maint;
        assert_eq!(status_text(&down), "MAINT");
        let mut fresh = fresh();
        fresh.admin = AdminState::Maint;
        assert_eq!(
            (status_text(&fresh), tone_of(&fresh, false)),
            ("MAINT".into(), Tone::Admin)
        );
    }
}
