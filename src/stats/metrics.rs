//! The Prometheus metrics of one proxy instance (`/metrics`), through `metrics-exporter-prometheus`.
//!
//! There is no global recorder: each proxy builds its own recorder and keeps the handles of every
//! series it will ever export, registered at start-up so each one reads 0 before anything happened
//! (a series that appears only after the first failure breaks `rate()` and alerts on absence). Labels
//! are bounded by the configuration: `server` is a configured name, `role`, `state`, `result`, `to` and
//! `reason` are fixed lists.
//!
//! Values that the data path already counts (sessions, bytes, errors) stay in the IO layer's atomics
//! (`backend.rs`) and are copied into the registered series just before each render; only what has
//! no other home is recorded here as it happens: the check-duration histogram, check results by
//! status and health transitions, all from the state owner (`Observer`), and etcd watch failures,
//! copied from `dcs::Failures` at each render.

use super::families::*;
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use super::export::{Role, View};
use super::server::Refusal;
use crate::config::Config;
use crate::dcs::{Status as EtcdStatus, FAILURE_REASONS};
use crate::health::sql::{SqlResult, Verdict};
use crate::health::{CheckResult, CheckStatus, Transition};
use crate::routing::AdminState;

/// Buckets of the check-duration histogram, in seconds: a healthy Patroni answers in milliseconds;
/// the top buckets catch `timeout check` (5 s) plus the connect timeout (3 s).
const CHECK_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 8.0, 10.0,
];

/// Refusal reasons: a client that was accepted and closed without reaching a server.
pub const REFUSAL_REASONS: [&str; 4] = ["no_primary", "queue_timeout", "connect_failed", "standby"];

const ROLES: [Role; 3] = [Role::Primary, Role::Replica, Role::Unknown];

/// The recorder of one proxy and the handles of all its series.
#[derive(Debug)]
pub struct Metrics {
    /// Shares the recorder's registry; the recorder itself is not needed once every series is
    /// registered.
    handle: PrometheusHandle,
    uptime: Gauge,
    primary_routable: Gauge,
    primary_changes: Counter,
    no_primary: Gauge,
    fe: FrontendSeries,
    listeners: Vec<ListenerSeries>,
    /// Per listener (the file's order), `mode="user"` and `mode="kernel"`.
    relay_mode: Vec<[Gauge; 2]>,
    /// By node index; a reload that adds a server appends its series ([`Metrics::add_node`]).
    nodes: std::sync::RwLock<Vec<NodeSeries>>,
    /// Kept to register the series of servers added later.
    recorder: PrometheusRecorder,
    /// In the order of [`FAILURE_REASONS`].
    etcd_failures: Vec<Counter>,
    /// `patroni_proxy_etcd_up` and, per configured endpoint, `..._endpoint_in_use`: only with
    /// `[etcd]` (a proxy without it has no etcd to be down).
    etcd_up: Option<Gauge>,
    etcd_in_use: Vec<Gauge>,
    /// `result="ok"` and `result="failed"`.
    reloads: [Counter; 2],
    /// In the order of [`Refusal::ALL`]; counted as it happens (the stats listener has no other
    /// counters).
    stats_refused: Vec<Counter>,
}

/// One replica, any or standby_leader listener's series (`listener` label: its name, fixed at
/// start).
#[derive(Debug)]
struct ListenerSeries {
    /// By node index, at start (a server added by a reload has no series here until a restart).
    members: Vec<Gauge>,
    scur: Gauge,
    stot: Counter,
    bin: Counter,
    bout: Counter,
    /// `no_member`, `queue_timeout`, `connect_failed`, `wrong_role`.
    refusals: [Counter; 4],
}

impl ListenerSeries {
    fn new(r: &Registrar<'_>, listener: &str, servers: &[crate::config::Server]) -> Self {
        let l: &[(&'static str, &str)] = &[("listener", listener)];
        let refusal = |why: &str| {
            r.counter(
                &LISTENER_REFUSALS_TOTAL,
                &[("listener", listener), ("reason", why)],
            )
        };
        Self {
            members: (servers.iter())
                .map(|s| {
                    r.gauge(
                        &LISTENER_MEMBER,
                        &[("listener", listener), ("server", &s.name)],
                    )
                })
                .collect(),
            scur: r.gauge(&LISTENER_SESSIONS_CURRENT, l),
            stot: r.counter(&LISTENER_SESSIONS_TOTAL, l),
            bin: r.counter(&LISTENER_BYTES_IN_TOTAL, l),
            bout: r.counter(&LISTENER_BYTES_OUT_TOTAL, l),
            refusals: [
                refusal("no_member"),
                refusal("queue_timeout"),
                refusal("connect_failed"),
                refusal("wrong_role"),
            ],
        }
    }

    fn set(&self, v: &super::listeners::ListenerView) {
        for (g, s) in self.members.iter().zip(&v.servers) {
            g.set(if v.members.contains(&s.name) {
                1.0
            } else {
                0.0
            });
        }
        let f = &v.frontend;
        self.scur.set(f.scur as f64);
        self.stot.absolute(f.stot);
        self.bin.absolute(f.bin);
        self.bout.absolute(f.bout);
        let r = &f.refusals;
        for (c, n) in
            self.refusals
                .iter()
                .zip([r.no_primary, r.queue_timeout, r.connect_failed, r.standby])
        {
            c.absolute(n);
        }
    }
}

#[derive(Debug)]
struct FrontendSeries {
    connections: Counter,
    scur: Gauge,
    smax: Gauge,
    slim: Gauge,
    bin: Counter,
    bout: Counter,
    queue: Gauge,
    /// In the order of [`REFUSAL_REASONS`].
    refusals: Vec<Counter>,
    held: Counter,
    holding: Gauge,
    released: Counter,
    replays: Counter,
    accept_errors: Counter,
    local_errors: Counter,
    log_lines_dropped: Counter,
}

#[derive(Debug)]
struct NodeSeries {
    up: Gauge,
    health: Gauge,
    routed: Gauge,
    riding: Gauge,
    /// In the order of [`ROLES`].
    roles: Vec<Gauge>,
    /// One per [`AdminState::ALL`].
    admin: Vec<Gauge>,
    scur: Gauge,
    smax: Gauge,
    slim: Gauge,
    stot: Counter,
    qcur: Gauge,
    bin: Counter,
    bout: Counter,
    econ: Counter,
    wretr: Counter,
    killed: Counter,
    chkfail: Counter,
    /// In the order of [`CheckStatus::FINISHED`].
    checks: Vec<(CheckStatus, Counter)>,
    /// In the order of [`Verdict::LABELS`].
    sql: Vec<Counter>,
    duration: Histogram,
    went_up: Counter,
    went_down: Counter,
    downtime: Gauge,
    lastchg: Gauge,
}

/// Registers series on one recorder (the `metrics` macros would go through a global recorder).
struct Registrar<'a>(&'a PrometheusRecorder);

const META: Metadata<'static> = Metadata::new(module_path!(), metrics::Level::INFO, None);

impl Registrar<'_> {
    fn key(family: &Family, kind: Kind, labels: &[(&'static str, &str)]) -> Key {
        // A family registered as another kind than declared is a bug of this file.
        debug_assert_eq!(family.kind, kind, "{}", family.name);
        let labels: Vec<Label> = labels
            .iter()
            .map(|(k, v)| Label::new(*k, v.to_string()))
            .collect();
        Key::from_parts(family.name, labels)
    }
    fn counter(&self, family: &Family, labels: &[(&'static str, &str)]) -> Counter {
        self.0
            .register_counter(&Self::key(family, Kind::Counter, labels), &META)
    }
    fn gauge(&self, family: &Family, labels: &[(&'static str, &str)]) -> Gauge {
        self.0
            .register_gauge(&Self::key(family, Kind::Gauge, labels), &META)
    }
    fn histogram(&self, family: &Family, labels: &[(&'static str, &str)]) -> Histogram {
        self.0
            .register_histogram(&Self::key(family, Kind::Histogram, labels), &META)
    }
}

impl Metrics {
    /// Builds the recorder and registers every series at zero.
    pub fn new(config: &Config) -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(SERVER_CHECK_DURATION_SECONDS.name.into()),
                &CHECK_BUCKETS,
            )
            .expect("the bucket list is not empty")
            .build_recorder();
        for family in FAMILIES {
            let (name, help) = (KeyName::from(family.name), SharedString::from(family.help));
            match family.kind {
                Kind::Counter => recorder.describe_counter(name, None, help),
                Kind::Gauge => recorder.describe_gauge(name, None, help),
                Kind::Histogram => recorder.describe_histogram(name, None, help),
            }
        }
        let r = Registrar(&recorder);
        r.gauge(&BUILD_INFO, &[("version", env!("CARGO_PKG_VERSION"))])
            .set(1.0);
        let fe = FrontendSeries {
            connections: r.counter(&FRONTEND_CONNECTIONS_TOTAL, &[]),
            scur: r.gauge(&FRONTEND_SESSIONS_CURRENT, &[]),
            smax: r.gauge(&FRONTEND_SESSIONS_MAX, &[]),
            slim: r.gauge(&FRONTEND_SESSIONS_LIMIT, &[]),
            bin: r.counter(&FRONTEND_BYTES_IN_TOTAL, &[]),
            bout: r.counter(&FRONTEND_BYTES_OUT_TOTAL, &[]),
            queue: r.gauge(&FRONTEND_QUEUE_CURRENT, &[]),
            refusals: REFUSAL_REASONS
                .iter()
                .map(|reason| r.counter(&FRONTEND_REFUSALS_TOTAL, &[("reason", reason)]))
                .collect(),
            held: r.counter(&FRONTEND_HELD_TOTAL, &[]),
            holding: r.gauge(&FRONTEND_HOLDING_CURRENT, &[]),
            released: r.counter(&FRONTEND_HOLD_RELEASED_TOTAL, &[]),
            replays: r.counter(&FRONTEND_STARTUP_REPLAYS_TOTAL, &[]),
            accept_errors: r.counter(&FRONTEND_ACCEPT_ERRORS_TOTAL, &[]),
            local_errors: r.counter(&LOCAL_RESOURCE_ERRORS_TOTAL, &[]),
            log_lines_dropped: r.counter(&LOG_LINES_DROPPED_TOTAL, &[]),
        };
        let nodes = config
            .servers
            .iter()
            .map(|s| node_series(&r, &s.name))
            .collect();
        let m = Self {
            uptime: r.gauge(&UPTIME_SECONDS, &[]),
            primary_routable: r.gauge(&PRIMARY_ROUTABLE, &[]),
            primary_changes: r.counter(&PRIMARY_CHANGES_TOTAL, &[]),
            no_primary: r.gauge(&NO_PRIMARY_SECONDS, &[]),
            fe,
            relay_mode: (config.listen.all().iter())
                .map(|l| {
                    ["user", "kernel"]
                        .map(|mode| r.gauge(&RELAY_MODE, &[("listener", &l.name), ("mode", mode)]))
                })
                .collect(),
            listeners: (crate::state::sets::specs(config).iter())
                .map(|spec| ListenerSeries::new(&r, &spec.name, &config.servers))
                .collect(),
            nodes: std::sync::RwLock::new(nodes),
            etcd_up: config.etcd.as_ref().map(|_| r.gauge(&ETCD_UP, &[])),
            etcd_in_use: config
                .etcd
                .iter()
                .flat_map(|e| &e.endpoints)
                .map(|e| r.gauge(&ETCD_ENDPOINT_IN_USE, &[("endpoint", &e.to_string())]))
                .collect(),
            etcd_failures: FAILURE_REASONS
                .iter()
                .map(|reason| r.counter(&ETCD_WATCH_FAILURES_TOTAL, &[("reason", reason)]))
                .collect(),
            reloads: [
                r.counter(&CONFIG_RELOADS_TOTAL, &[("result", "ok")]),
                r.counter(&CONFIG_RELOADS_TOTAL, &[("result", "failed")]),
            ],
            stats_refused: Refusal::ALL
                .iter()
                .map(|why| {
                    r.counter(
                        &STATS_CONNECTIONS_REFUSED_TOTAL,
                        &[("reason", why.as_str())],
                    )
                })
                .collect(),
            handle: recorder.handle(),
            recorder,
        };
        // Renders the empty histograms once, so their buckets exist before the first check.
        m.handle.run_upkeep();
        m
    }

    /// Records one finished check of node `node` (called by the state owner, the only place checks
    /// are applied).
    pub fn observe_check(&self, node: usize, result: &CheckResult, transition: Option<Transition>) {
        let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        let Some(n) = nodes.get(node) else {
            return;
        };
        n.duration.record(result.duration.as_secs_f64());
        if let Some((_, c)) = n.checks.iter().find(|(s, _)| *s == result.status) {
            c.increment(1);
        }
        match transition {
            Some(Transition::WentUp) => n.went_up.increment(1),
            Some(Transition::WentDown) => n.went_down.increment(1),
            None => {}
        }
        // Moves the new sample into the histogram now: without a scrape, samples would pile up.
        self.handle.run_upkeep();
    }

    /// Counts a finished SQL check.
    pub fn observe_sql(&self, node: usize, result: &SqlResult) {
        let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        let label = result.verdict.label();
        if let Some(i) = Verdict::LABELS.iter().position(|l| *l == label) {
            if let Some(c) = nodes.get(node).and_then(|n| n.sql.get(i)) {
                c.increment(1);
            }
        }
    }

    /// Registers the series of node `node`, added by a reload, at zero (before its first check).
    pub fn add_node(&self, node: usize, name: &str) {
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        if nodes.len() == node {
            nodes.push(node_series(&Registrar(&self.recorder), name));
        }
    }

    /// Counts a stats connection closed at once by the listener's limits.
    pub fn stats_refused(&self, why: Refusal) {
        if let Some(c) = Refusal::ALL
            .iter()
            .position(|r| *r == why)
            .and_then(|i| self.stats_refused.get(i))
        {
            c.increment(1);
        }
    }

    /// Copies a view (snapshot + IO counters) into the series and renders the exposition text.
    pub fn render(&self, view: &View, etcd: &EtcdStatus) -> String {
        for (series, l) in self.listeners.iter().zip(&view.listeners) {
            series.set(l);
        }
        for (g, r) in self.relay_mode.iter().zip(&view.relay) {
            g[0].set(if r.mode == "user" { 1.0 } else { 0.0 });
            g[1].set(if r.mode == "kernel" { 1.0 } else { 0.0 });
        }
        for ((_, n), c) in etcd.counts().zip(&self.etcd_failures) {
            c.absolute(n);
        }
        let (in_use, watching) = etcd.in_use();
        if let Some(up) = &self.etcd_up {
            up.set(if watching { 1.0 } else { 0.0 });
        }
        for (i, g) in self.etcd_in_use.iter().enumerate() {
            g.set(if in_use == Some(i) { 1.0 } else { 0.0 });
        }
        self.reloads[0].absolute(view.reloads.ok);
        self.reloads[1].absolute(view.reloads.failed);
        self.uptime.set(view.uptime_s as f64);
        self.primary_routable
            .set(if view.primary.is_some() { 1.0 } else { 0.0 });
        self.primary_changes.absolute(view.primary_changes);
        self.no_primary.set(view.no_primary_total_s);
        let (fe, f) = (&self.fe, &view.frontend);
        fe.connections.absolute(f.stot);
        fe.scur.set(f.scur as f64);
        fe.smax.set(f.smax as f64);
        fe.slim.set(f.slim);
        fe.bin.absolute(f.bin);
        fe.bout.absolute(f.bout);
        fe.queue.set(f.qcur as f64);
        for (c, v) in fe.refusals.iter().zip([
            f.refusals.no_primary,
            f.refusals.queue_timeout,
            f.refusals.connect_failed,
            f.refusals.standby,
        ]) {
            c.absolute(v);
        }
        fe.held.absolute(f.holds.held);
        fe.holding.set(f.holds.holding as f64);
        fe.released.absolute(f.holds.released);
        fe.replays.absolute(f.holds.replays);
        fe.accept_errors.absolute(f.accept_errors);
        fe.local_errors.absolute(f.local_errors);
        fe.log_lines_dropped.absolute(f.log_lines_dropped);
        let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        for (n, s) in nodes.iter().zip(&view.servers) {
            n.up.set(if s.up { 1.0 } else { 0.0 });
            n.health.set(s.check_health);
            n.routed.set(if s.routed_primary { 1.0 } else { 0.0 });
            n.riding.set(if s.rest_unreachable_leader_alive {
                1.0
            } else {
                0.0
            });
            for (g, role) in n.roles.iter().zip(ROLES) {
                g.set(if s.role == role { 1.0 } else { 0.0 });
            }
            for (g, a) in n.admin.iter().zip(AdminState::ALL) {
                g.set(if s.admin == a { 1.0 } else { 0.0 });
            }
            n.scur.set(s.scur as f64);
            n.smax.set(s.smax as f64);
            n.slim.set(s.slim);
            n.stot.absolute(s.stot);
            n.qcur.set(s.qcur as f64);
            n.bin.absolute(s.bin);
            n.bout.absolute(s.bout);
            n.econ.absolute(s.econ);
            n.wretr.absolute(s.wretr);
            n.killed.absolute(s.killed);
            n.chkfail.absolute(s.chkfail);
            n.downtime.set(s.downtime_s as f64);
            n.lastchg.set(s.lastchg_s as f64);
        }
        self.handle.render()
    }
}

/// Every series of one server, registered at zero.
fn node_series(r: &Registrar<'_>, name: &str) -> NodeSeries {
    let l: &[(&'static str, &str)] = &[("server", name)];
    NodeSeries {
        up: r.gauge(&SERVER_UP, l),
        health: r.gauge(&SERVER_CHECK_HEALTH, l),
        routed: r.gauge(&SERVER_ROUTED_PRIMARY, l),
        riding: r.gauge(&REST_UNREACHABLE_LEADER_ALIVE, l),
        roles: ROLES
            .iter()
            .map(|role| r.gauge(&SERVER_ROLE, &[("server", name), ("role", role.as_str())]))
            .collect(),
        admin: AdminState::ALL
            .iter()
            .map(|a| {
                r.gauge(
                    &SERVER_ADMIN_STATE,
                    &[("server", name), ("state", a.as_str())],
                )
            })
            .collect(),
        scur: r.gauge(&SERVER_SESSIONS_CURRENT, l),
        smax: r.gauge(&SERVER_SESSIONS_MAX, l),
        slim: r.gauge(&SERVER_SESSIONS_LIMIT, l),
        stot: r.counter(&SERVER_SESSIONS_TOTAL, l),
        qcur: r.gauge(&SERVER_QUEUE_CURRENT, l),
        bin: r.counter(&SERVER_BYTES_IN_TOTAL, l),
        bout: r.counter(&SERVER_BYTES_OUT_TOTAL, l),
        econ: r.counter(&SERVER_CONNECTION_ERRORS_TOTAL, l),
        wretr: r.counter(&SERVER_RETRIES_TOTAL, l),
        killed: r.counter(&SERVER_SESSIONS_KILLED_TOTAL, l),
        chkfail: r.counter(&SERVER_CHECK_FAILURES_TOTAL, l),
        checks: CheckStatus::FINISHED
            .iter()
            .map(|st| {
                let c = r.counter(
                    &SERVER_CHECKS_TOTAL,
                    &[("server", name), ("result", st.as_str())],
                );
                (*st, c)
            })
            .collect(),
        sql: Verdict::LABELS
            .iter()
            .map(|v| r.counter(&SERVER_SQL_CHECKS_TOTAL, &[("server", name), ("result", v)]))
            .collect(),
        duration: r.histogram(&SERVER_CHECK_DURATION_SECONDS, l),
        went_up: r.counter(&SERVER_TRANSITIONS_TOTAL, &[("server", name), ("to", "up")]),
        went_down: r.counter(
            &SERVER_TRANSITIONS_TOTAL,
            &[("server", name), ("to", "down")],
        ),
        downtime: r.gauge(&SERVER_DOWNTIME_SECONDS, l),
        lastchg: r.gauge(&SERVER_LAST_CHANGE_SECONDS, l),
    }
}
