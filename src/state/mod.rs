//! The backend state: one immutable [`Snapshot`] of every node (health counter, last check, Patroni
//! answer, routed primary), replaced as a whole by the one task that owns it ([`owner`]), which
//! carries out what the pure [`core`] decides. Everyone else holds a narrow handle: the data path
//! and the stats side read a [`Shared`] (a snapshot receiver, the per-server counters and kill
//! registries, the events) and report evidence through it; checkers hold a
//! [`crate::health::checker::Link`]. The dashboard's event list lives in [`events`].

mod admin;
pub mod core;
mod events;
pub mod fence;
pub mod owner;
pub mod ride;
mod servers;
pub mod sets;
pub mod sql;
#[cfg(test)]
mod testkit;

pub use events::{Event, EventKind, Events};
pub use owner::Owner;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, Ticket};
use crate::config::{Config, Server};
use crate::health::patroni::Answer;
use crate::health::{CheckResult, HealthCounter, Transition};
use crate::routing::{AdminState, Candidate, Claim};

/// Everything known about one node at one moment.
#[derive(Debug, Clone)]
pub struct NodeState {
    /// The node's `[[server]]` settings as last loaded (a reload may change them; the name never).
    pub server: Arc<Server>,
    /// When a reload removed the node from the configuration: no new sessions, no checks; its
    /// sessions end by themselves or `shutdown_grace` later. Its slot (index) stays, so that its
    /// counters remain accounted for, until the process restarts or the same name is added back.
    pub removed: Option<SystemTime>,
    pub counter: HealthCounter,
    /// `None` until the first check finishes (HAProxy's `INI`).
    pub last_check: Option<CheckResult>,
    /// The answer of the last check, definitive or not.
    pub last_answer: Option<Answer>,
    pub claim: Claim,
    /// `chkfail`: failed checks that moved the counter.
    pub chkfail: u64,
    /// `chkdown`: UP to DOWN transitions.
    pub chkdown: u64,
    /// When the operational state (UP/DOWN) last changed, or start-up.
    pub last_change: Instant,
    pub last_change_wall: SystemTime,
    /// Time spent DOWN in finished DOWN periods; add `now - last_change` while DOWN.
    pub downtime: Duration,
    /// Set when Patroni announced a switchover away from this node (the DCS `failover` key): no
    /// new connections go to it, whatever its checks say, until the switchover ends.
    pub leaving_since: Option<Instant>,
    /// What an operator said (`drain`, `maint`, `ready`): kept through every check.
    pub admin: AdminState,
    /// Who set `admin` last, and when (`None` until an operator acts).
    pub admin_by: Option<(String, SystemTime)>,
    /// What the REST outage ride-through knows of it ([`ride`]).
    pub ride: ride::NodeRide,
    /// The address its host name resolved to for the checks that decide its state (`None` for a
    /// server written with an IP address, and for a name not resolved yet): the address its
    /// sessions connect to ([`NodeState::address`]).
    pub resolved: Option<std::net::IpAddr>,
    /// The last SQL check (`[check.sql]`), if any ([`sql`]).
    pub sql: Option<sql::Seen>,
}

impl NodeState {
    /// A node nothing is known of yet: DOWN until `rise` checks pass (fail closed).
    pub fn new(server: Arc<Server>, rise: u32, fall: u32, now: Instant, wall: SystemTime) -> Self {
        Self {
            server,
            removed: None,
            counter: HealthCounter::new(rise, fall),
            last_check: None,
            last_answer: None,
            claim: Claim::Unconfirmed,
            chkfail: 0,
            chkdown: 0,
            last_change: now,
            last_change_wall: wall,
            downtime: Duration::ZERO,
            leaving_since: None,
            admin: AdminState::Ready,
            admin_by: None,
            ride: ride::NodeRide::default(),
            resolved: None,
            sql: None,
        }
    }

    /// Where its PostgreSQL is: its IP address, or the address its host name resolved to; `None`
    /// for a name not resolved yet (such a node has passed no check, so it is never routed).
    pub fn address(&self) -> Option<std::net::SocketAddr> {
        let a = &self.server.address;
        a.ip_addr().or_else(|| {
            self.resolved
                .map(|ip| std::net::SocketAddr::new(ip, a.port()))
        })
    }

    /// Routable only if not leaving, still configured, not fenced by the timeline `floor`
    /// ([`fence`]), not held back by the SQL check (with `sql_gate`; `routed`: it is the primary
    /// now, [`sql::allows`]), and the operator, the counter (or a REST outage ride-through,
    /// [`ride`]) and the claim allow it. A removed node is drained: no new sessions, its own
    /// continue.
    pub fn candidate(&self, floor: Option<u64>, sql_gate: bool, routed: bool) -> Candidate<'_> {
        Candidate {
            up: (self.counter.is_up() || self.ride.since.is_some())
                && self.leaving_since.is_none()
                && !fence::fenced(&self.claim, floor)
                && sql::allows(sql_gate, self.sql.as_ref(), &self.claim, routed),
            claim: &self.claim,
            admin: if self.removed.is_some() {
                AdminState::Drain
            } else {
                self.admin
            },
        }
    }

    /// Total downtime including the current DOWN period.
    pub fn downtime_at(&self, now: Instant) -> Duration {
        if self.counter.is_up() {
            self.downtime
        } else {
            self.downtime + now.saturating_duration_since(self.last_change)
        }
    }
}

/// The one published view of all backends.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Increments with every applied check.
    pub seq: u64,
    pub nodes: Vec<NodeState>,
    /// The node new connections go to.
    pub primary: Option<usize>,
    /// How many times the routed primary moved to another node than the last one that had the role,
    /// also through a period without any (a failover usually has one); losing it is not a change.
    pub primary_changes: u64,
    /// The last node that was the routed primary, kept through periods without one.
    pub last_primary: Option<usize>,
    /// When `primary` last changed (to a node or to none).
    pub primary_since: Instant,
    /// Completed periods without a routable primary (the current one is `now - primary_since`).
    pub no_primary_total: Duration,
    /// Every node is checked at `failover_inter`: no primary is routable, or the routed one's last
    /// check did not confirm it.
    pub failover_pace: bool,
    /// The routed primary's WAL flush position from its last check: the reference of `max_lag`.
    pub primary_wal: Option<u64>,
    /// The node sets of the listeners that are not the primary port, in the configuration's order.
    pub sets: Vec<sets::ListenerSet>,
    /// The highest timeline a routed primary reported: a node claiming the role on a lower one
    /// is fenced ([`fence`]).
    pub max_timeline: Option<u64>,
    /// The latest etcd reading of the leader key and its lease (kept with the ride-through on).
    pub dcs_leader: Option<ride::DcsLeader>,
}

impl Snapshot {
    pub fn no_primary_total_at(&self, now: Instant) -> Duration {
        match self.primary {
            Some(_) => self.no_primary_total,
            None => self.no_primary_total + now.saturating_duration_since(self.primary_since),
        }
    }
}

/// What the data path and the stats side read, and how sessions report what they saw. Built with
/// its [`Owner`] by [`new`]; only the owner changes the snapshot.
#[derive(Debug)]
pub struct Shared {
    /// The running configuration: replaced as a whole by a reload (the `reload` module). Its
    /// `servers` are the file's; a node's settings are read from the snapshot (`NodeState::server`),
    /// whose indices are slots that only grow.
    config: ArcSwap<Config>,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    /// The IO side of every node, by index: appended to by the owner (a reload that adds a
    /// server) *before* a snapshot with that node is published, never shrunk, so an index read
    /// from any snapshot is valid here.
    backends: std::sync::RwLock<Vec<Arc<Backend>>>,
    pub frontend: Arc<crate::backend::Frontend>,
    /// The IO side of each listener that is not the primary port, by set index (as
    /// `Snapshot::sets`): fixed at start (listeners change at a restart).
    pub set_io: Vec<SetIo>,
    /// Pushed by the owner, read by the stats side.
    pub events: Arc<Events>,
    pub started: SystemTime,
    pub started_at: Instant,
    inputs: mpsc::UnboundedSender<Input>,
    /// Cancelled when the drain begins: clients still waiting for a primary are answered at once.
    pub draining: CancellationToken,
    /// The kernel relay's program, loaded at start if a listener asks for it (`listen.relay`).
    pub sockmap: crate::sockmap::Availability,
}

/// A listener's own side of every node (HAProxy's servers of one backend: their own slots,
/// sessions and kill switch), and its frontend counters.
#[derive(Debug)]
pub struct SetIo {
    pub frontend: Arc<crate::backend::Frontend>,
    backends: std::sync::RwLock<Vec<Arc<Backend>>>,
    /// The balance's turn counter.
    pub turn: std::sync::atomic::AtomicU64,
}

impl SetIo {
    fn new(config: &Config) -> Self {
        Self {
            frontend: Default::default(),
            backends: std::sync::RwLock::new(
                (config.servers.iter())
                    .map(|s| Arc::new(Backend::new(s.maxconn.get())))
                    .collect(),
            ),
            turn: Default::default(),
        }
    }

    /// `node` on this listener (every index a snapshot holds is valid, as for
    /// [`Shared::backend`]).
    pub fn backend(&self, node: usize) -> Arc<Backend> {
        let all = self.backends.read().unwrap_or_else(|p| p.into_inner());
        all[node].clone()
    }

    /// Every node on this listener.
    pub fn backends(&self) -> Vec<Arc<Backend>> {
        self.backends
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn add_backend(&self, maxconn: u32) {
        let mut all = self.backends.write().unwrap_or_else(|p| p.into_inner());
        all.push(Arc::new(Backend::new(maxconn)));
    }
}

/// Which listener a session came in on: the primary port, or the listener of a node set
/// (`Snapshot::sets`, `Shared::set_io`, same index). Four bytes: it lives in every relaying task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route(u32);

impl Route {
    /// The primary port.
    pub const PRIMARY: Route = Route(u32::MAX);

    /// The listener of set `i`.
    pub fn of_set(i: usize) -> Route {
        Route(u32::try_from(i).unwrap_or(u32::MAX - 1).min(u32::MAX - 1))
    }

    /// The set's index, `None` on the primary port.
    pub fn set(self) -> Option<usize> {
        (self != Route::PRIMARY).then_some(self.0 as usize)
    }

    /// The listener this route's sessions came in on (set `i` is listener `i + 1`, `sets::specs`).
    pub fn listen(self, cfg: &Config) -> &crate::config::Listen {
        let i = self.set().map_or(0, |i| i + 1);
        cfg.listen.all().get(i).unwrap_or(&cfg.listen)
    }
}

/// Told of every finished check (the metrics), by the owner.
pub trait Observer: Send + Sync {
    fn check(&self, node: usize, result: &CheckResult, transition: Option<Transition>);
    /// A finished SQL check (`[check.sql]`).
    fn sql(&self, _node: usize, _result: &crate::health::sql::SqlResult) {}
    /// A reload added node `node` (the next index), before its first check.
    fn node_added(&self, _node: usize, _name: &str) {}
}

/// An observer that records nothing, for tests and tools that need no metrics.
pub struct Unobserved;

impl Observer for Unobserved {
    fn check(&self, _: usize, _: &CheckResult, _: Option<Transition>) {}
}

/// The state of a new proxy: nothing routable until a check confirms the primary.
pub fn new(config: Arc<Config>, observer: Arc<dyn Observer>) -> (Arc<Shared>, Owner) {
    let now = Instant::now();
    let wall = SystemTime::now();
    let nodes = config
        .servers
        .iter()
        .map(|s| {
            let (rise, fall) = (config.check.rise.get(), config.check.fall.get());
            NodeState::new(Arc::new(s.clone()), rise, fall, now, wall)
        })
        .collect();
    let (publish, snapshot) = watch::channel(Arc::new(Snapshot {
        seq: 0,
        nodes,
        primary: None,
        last_primary: None,
        primary_changes: 0,
        primary_since: now,
        no_primary_total: Duration::ZERO,
        // Start-up: find the primary at the fast pace too.
        failover_pace: true,
        primary_wal: None,
        sets: sets::of(&config),
        max_timeline: None,
        dcs_leader: None,
    }));
    let (inputs, inputs_rx) = mpsc::unbounded_channel();
    let set_io = (sets::specs(&config).iter())
        .map(|_| SetIo::new(&config))
        .collect();
    let sockmap = crate::sockmap::Availability::for_config(&config);
    let shared = Arc::new(Shared {
        sockmap,
        backends: std::sync::RwLock::new(
            config
                .servers
                .iter()
                .map(|s| Arc::new(Backend::new(s.maxconn.get())))
                .collect(),
        ),
        config: ArcSwap::new(config),
        snapshot,
        frontend: Default::default(),
        set_io,
        events: Arc::default(),
        started: SystemTime::now(),
        started_at: now,
        inputs,
        draining: CancellationToken::new(),
    });
    let owner = Owner::new(shared.clone(), publish, inputs_rx, observer);
    (shared, owner)
}

impl Shared {
    /// A state whose owner is gone: its snapshot never changes. For tests and tools that only read.
    pub fn detached(config: Arc<Config>) -> Arc<Self> {
        new(config, Arc::new(Unobserved)).0
    }

    /// The counters of the listener `route` names.
    pub fn frontend_of(&self, route: Route) -> &Arc<crate::backend::Frontend> {
        match route.set().and_then(|i| self.set_io.get(i)) {
            Some(set) => &set.frontend,
            None => &self.frontend,
        }
    }

    /// `node` as the listener `route` names sees it (its own slots, sessions, kill switch).
    pub fn backend_on(&self, route: Route, node: usize) -> Arc<Backend> {
        match route.set().and_then(|i| self.set_io.get(i)) {
            Some(set) => set.backend(node),
            None => self.backend(node),
        }
    }

    /// The node a new session of `route` goes to in `snap`, if any: the routed primary on the
    /// primary port; on a set's listener, a member by the listener's balance, other than `avoid`
    /// while another is there, else the routed primary with `fallback`.
    pub fn pick(&self, snap: &Snapshot, route: Route, avoid: Option<usize>) -> Option<usize> {
        let Some(i) = route.set() else {
            return snap.primary;
        };
        let (set, io) = (snap.sets.get(i)?, self.set_io.get(i)?);
        let others: Vec<usize> = (set.members.iter().copied())
            .filter(|&n| Some(n) != avoid)
            .collect();
        let members = if others.is_empty() {
            &set.members[..]
        } else {
            &others[..]
        };
        let turn = io.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let load = |n: usize| {
            io.backend(n)
                .counters
                .scur
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        crate::routing::balance::pick(members, set.balance, load, turn)
            .or(snap.primary.filter(|_| set.fallback))
    }

    /// Whether `snap` still lets `route` send new sessions to `node`.
    pub fn routes_to(&self, snap: &Snapshot, route: Route, node: usize) -> bool {
        match route.set().and_then(|i| snap.sets.get(i)) {
            None => snap.primary == Some(node),
            Some(set) => {
                set.members.contains(&node)
                    || (set.fallback && set.members.is_empty() && snap.primary == Some(node))
            }
        }
    }

    /// What a session of `route` to `node` must find in PostgreSQL's `in_hot_standby`: `off` on
    /// the primary port and for a replica listener's fallback to the primary, `on` for replica and
    /// standby-leader listeners, either for `any`.
    /// Where a session of `route` connects on `node`: the node's address, with the listener's
    /// `server_port` when it has one; `None` while the node's host name has not resolved.
    pub fn address_on(
        &self,
        snap: &Snapshot,
        route: Route,
        node: usize,
    ) -> Option<std::net::SocketAddr> {
        let mut address = snap.nodes.get(node)?.address()?;
        let cfg = self.config();
        let index = route.set().map_or(0, |i| i + 1);
        if let Some(port) = cfg.listen.all().get(index).and_then(|l| l.server_port) {
            address.set_port(port);
        }
        Some(address)
    }

    pub fn wants_standby(&self, snap: &Snapshot, route: Route, node: usize) -> Option<bool> {
        match route.set().and_then(|i| snap.sets.get(i)) {
            None => Some(false),
            Some(_) if snap.primary == Some(node) => Some(false),
            Some(set) => match set.rule.role {
                crate::routing::roles::Role::Any => None,
                crate::routing::roles::Role::Primary => Some(false),
                _ => Some(true),
            },
        }
    }

    /// A session's admission to `node` on `route`: its kill ticket, taken *before* confirming that the
    /// published snapshot still routes there. `None`: no longer routed, pick again. Together with
    /// the owner's order (publish, then kill: [`core::Effect`]) no session can relay to a server
    /// whose sessions were shut down after it was chosen.
    pub fn ticket_on(&self, route: Route, node: usize) -> Option<Ticket> {
        let ticket = self.backend_on(route, node).ticket();
        self.routes_to(&self.current(), route, node)
            .then_some(ticket)
    }

    /// The IO side of `node` (counters, slots, kill switch). Every index a snapshot holds is
    /// valid: backends are added before the snapshot that has their node is published.
    pub fn backend(&self, node: usize) -> Arc<Backend> {
        let all = self.backends.read().unwrap_or_else(|p| p.into_inner());
        all[node].clone()
    }

    /// Every node's IO side, by index (removed nodes included).
    pub fn backends(&self) -> Vec<Arc<Backend>> {
        self.backends
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Adds the IO side of a new node at the next index, on every listener (the owner, for a
    /// reload).
    pub(crate) fn add_backend(&self, maxconn: u32) -> usize {
        for set in &self.set_io {
            set.add_backend(maxconn);
        }
        let mut all = self.backends.write().unwrap_or_else(|p| p.into_inner());
        all.push(Arc::new(Backend::new(maxconn)));
        all.len() - 1
    }

    /// Every listener's side of `node` (the primary port's first).
    pub fn backends_of(&self, node: usize) -> Vec<Arc<Backend>> {
        let mut all = vec![self.backend(node)];
        all.extend(self.set_io.iter().map(|s| s.backend(node)));
        all
    }

    /// The current snapshot (cheap: one `Arc` clone).
    pub fn current(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// A receiver that sees every snapshot published from now on.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshot.clone()
    }

    /// The name of `node` (a node's name never changes).
    pub fn server_name(&self, node: usize) -> Arc<str> {
        self.current()
            .nodes
            .get(node)
            .map_or_else(|| Arc::from("?"), |n| Arc::from(n.server.name.as_str()))
    }

    /// The running configuration (one `Arc` clone): read it once per decision or session phase,
    /// so that one decision never mixes two configurations.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Replaces the running configuration (a reload); the state owner then applies its servers
    /// ([`Input::Reloaded`]).
    pub(crate) fn replace_config(&self, config: Arc<Config>) {
        self.config.store(config);
    }

    /// Sends an input to the state owner. Inputs sent after it stopped (shutdown) are dropped.
    pub fn send(&self, input: Input) {
        let _ = self.inputs.send(input);
    }

    /// A session saw evidence that `node` is not (or no longer) a primary it may route to.
    /// `recheck_now` re-checks it at once too (otherwise at the failover pace).
    pub fn suspect(&self, node: usize, reason: String, recheck_now: bool) {
        self.send(Input::Suspect {
            node,
            reason,
            recheck_now,
        });
    }

    /// A session saw a sign that `node` may be gone (a close before any answer, refused
    /// connections): re-check it now, at most once per `failover_inter`. Unlike
    /// [`Shared::suspect`] it changes nothing about routing: a client can provoke these signs, and
    /// only the node's check (or PostgreSQL's own word) may take it out of routing.
    pub fn recheck(&self, node: usize, reason: String) {
        self.send(Input::Recheck { node, reason });
    }
}

/// What the state owner acts on besides check results.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// `node` must not get new connections until a check confirms it again.
    Suspect {
        node: usize,
        reason: String,
        recheck_now: bool,
    },
    /// Re-check `node` now (rate-limited); routing is unchanged.
    Recheck { node: usize, reason: String },
    /// Patroni's leader key changed (new value, or deleted): re-check every node now.
    LeaderChanged { leader: Option<String> },
    /// A switchover/failover was requested (DCS `failover` key): the routed primary is leaving.
    SwitchoverRequested,
    /// The `failover` key is gone: the switchover finished or was cancelled.
    SwitchoverEnded,
    /// The leader key's holder and its lease, as read from etcd (every resync, watch start and
    /// leader change): what the REST outage ride-through ([`ride`]) relies on.
    LeaderLease(crate::dcs::LeaderLease),
    /// A finished SQL check of `node` ([`sql`]).
    Sql {
        node: usize,
        result: Box<crate::health::sql::SqlResult>,
    },
    /// The answer of a TCP probe of `node`'s PostgreSQL port ([`core::Effect::Probe`]).
    PgProbe { node: usize, accepted: bool },
    /// `node`'s host name resolved to `ip` for the check about to be applied: a first address is
    /// recorded; a different one means another PostgreSQL (`servers::on_resolved`).
    Resolved { node: usize, ip: std::net::IpAddr },
    /// An operator's `drain`, `maint` or `ready` (the stats listener's admin API).
    Admin(AdminOrder),
    /// The shared configuration was just replaced by a reload (the `reload` module); `message` says
    /// what changed. The owner rebuilds the check request; the core re-reads rise/fall and applies
    /// the servers: kept ones keep their state, added ones start fail-closed, removed ones drain.
    Reloaded {
        message: String,
        /// The configuration it replaced (what the checks' targets were).
        previous: Arc<Config>,
    },
    /// `shutdown_grace` has passed since `node` was removed by a reload: its remaining sessions
    /// are closed (if it is still removed).
    RemovedGraceOver { node: usize, removed_at: SystemTime },
}

/// What an admin action applies to. Per server today; issue 13's listeners add a variant naming a
/// listener (and a server within it), so the API's paths and this type grow without changing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One server (by its index in `[[server]]`), on the one listener.
    Server(usize),
}

/// An operator's order: the new administrative state of `scope`, and who gave it (for the log
/// line and the event: `user@address via api`).
#[derive(Debug, Clone, PartialEq)]
pub struct AdminOrder {
    pub scope: Scope,
    pub state: AdminState,
    pub who: String,
}
