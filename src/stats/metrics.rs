//! The Prometheus metrics of one proxy instance (`/metrics`), through `metrics-exporter-prometheus`.
//!
//! There is no global recorder: each proxy builds its own recorder and keeps the handles of every
//! series it will ever export, registered at start-up so each one reads 0 before anything happened
//! (a series that appears only after the first failure breaks `rate()` and alerts on absence). Labels
//! are bounded by the configuration: `server` is a configured name, `role`, `result`, `to` and
//! `reason` are fixed lists.
//!
//! Values that the data path already counts (sessions, bytes, errors) stay in the IO layer's atomics
//! (`backend.rs`) and are copied into the registered series just before each render; only what has
//! no other home is recorded here as it happens: the check-duration histogram, check results by
//! status and health transitions, all from the state owner (`Observer`), and etcd watch failures,
//! copied from `dcs::Failures` at each render.

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use super::export::{Role, View};
use super::server::Refusal;
use crate::config::Config;
use crate::dcs::{Failures, FAILURE_REASONS};
use crate::health::{CheckResult, CheckStatus, Transition};

/// Buckets of the check-duration histogram, in seconds: a healthy Patroni answers in milliseconds;
/// the top buckets catch `timeout check` (5 s) plus the connect timeout (3 s).
const CHECK_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 8.0, 10.0,
];

/// Refusal reasons: a client that was accepted and closed without reaching a server.
pub const REFUSAL_REASONS: [&str; 4] = ["no_primary", "queue_timeout", "connect_failed", "standby"];

const ROLES: [Role; 3] = [Role::Primary, Role::Replica, Role::Unknown];

/// Every family: name, kind, help. The single list `docs/metrics.md` documents.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

const FAMILIES: &[(&str, Kind, &str)] = &[
    ("patroni_proxy_build_info", Kind::Gauge, "Always 1; the version label says which build runs."),
    ("patroni_proxy_uptime_seconds", Kind::Gauge, "Seconds since this proxy started."),
    ("patroni_proxy_primary_routable", Kind::Gauge, "1 while a primary is routable (new connections are accepted and forwarded), else 0."),
    ("patroni_proxy_primary_changes_total", Kind::Counter, "Times the routed primary moved from one node to another."),
    ("patroni_proxy_no_primary_seconds", Kind::Gauge, "Cumulative seconds without a routable primary since start-up, including the current period (monotonic)."),
    ("patroni_proxy_frontend_connections_total", Kind::Counter, "Client connections accepted on the primary port."),
    ("patroni_proxy_frontend_sessions_current", Kind::Gauge, "Client sessions open now."),
    ("patroni_proxy_frontend_sessions_max", Kind::Gauge, "Most client sessions open at once since start-up."),
    ("patroni_proxy_frontend_sessions_limit", Kind::Gauge, "global.maxconn: client sessions beyond it wait in the kernel's accept queue."),
    ("patroni_proxy_frontend_bytes_in_total", Kind::Counter, "Bytes received from clients."),
    ("patroni_proxy_frontend_bytes_out_total", Kind::Counter, "Bytes sent to clients."),
    ("patroni_proxy_frontend_queue_current", Kind::Gauge, "Client sessions waiting for a server slot now (all servers)."),
    ("patroni_proxy_frontend_refusals_total", Kind::Counter, "Clients closed without reaching a server, by reason."),
    ("patroni_proxy_frontend_held_total", Kind::Counter, "Clients that found no routable primary and were held (failover)."),
    ("patroni_proxy_frontend_holding_current", Kind::Gauge, "Clients held now, waiting for a primary."),
    ("patroni_proxy_frontend_hold_released_total", Kind::Counter, "Held clients connected to a primary once one was confirmed."),
    ("patroni_proxy_frontend_startup_replays_total", Kind::Counter, "Startups replayed on the next primary after a 57P01/57P02/57P03 answer before authentication."),
    ("patroni_proxy_frontend_accept_errors_total", Kind::Counter, "Accept errors (EMFILE and the like) the accept loop backed off from."),
    ("patroni_proxy_local_resource_errors_total", Kind::Counter, "Health checks and server connections that failed for want of a local resource (file descriptors, memory, ports): the proxy's fault, never counted against a server."),
    ("patroni_proxy_log_lines_dropped_total", Kind::Counter, "Log lines dropped because stderr did not keep up (logging never blocks the proxy)."),
    ("patroni_proxy_server_up", Kind::Gauge, "1 while the rise/fall health counter says UP (HAProxy's view: a Patroni replica is DOWN), else 0."),
    ("patroni_proxy_server_check_health", Kind::Gauge, "The rise/fall health counter, 0 ..= rise+fall-1 (HAProxy's check_health)."),
    ("patroni_proxy_server_routed_primary", Kind::Gauge, "1 for the node new connections go to, else 0."),
    ("patroni_proxy_server_role", Kind::Gauge, "1 for the Patroni role the last check reported (primary, replica, unknown), 0 for the others."),
    ("patroni_proxy_server_sessions_current", Kind::Gauge, "Sessions to this server open or being set up now."),
    ("patroni_proxy_server_sessions_max", Kind::Gauge, "Most sessions to this server at once since start-up."),
    ("patroni_proxy_server_sessions_limit", Kind::Gauge, "The server's maxconn."),
    ("patroni_proxy_server_sessions_total", Kind::Counter, "Sessions ever sent to this server."),
    ("patroni_proxy_server_queue_current", Kind::Gauge, "Sessions waiting for a slot on this server now."),
    ("patroni_proxy_server_bytes_in_total", Kind::Counter, "Bytes from clients to this server."),
    ("patroni_proxy_server_bytes_out_total", Kind::Counter, "Bytes from this server to clients."),
    ("patroni_proxy_server_connection_errors_total", Kind::Counter, "Sessions that gave up connecting to this server after all retries (HAProxy's econ)."),
    ("patroni_proxy_server_retries_total", Kind::Counter, "Connection retries to this server (HAProxy's wretr)."),
    ("patroni_proxy_server_sessions_killed_total", Kind::Counter, "Sessions closed because this server was marked DOWN or lost the primary role."),
    ("patroni_proxy_server_check_failures_total", Kind::Counter, "Failed checks that moved the health counter (HAProxy's chkfail)."),
    ("patroni_proxy_server_checks_total", Kind::Counter, "Finished health checks by result (HAProxy's check status: L7OK, L7STS, L4CON, ...)."),
    ("patroni_proxy_server_check_duration_seconds", Kind::Histogram, "Duration of finished health checks."),
    ("patroni_proxy_server_transitions_total", Kind::Counter, "Health state transitions, by the state reached (up, down); to=\"down\" is HAProxy's chkdown."),
    ("patroni_proxy_server_downtime_seconds", Kind::Gauge, "Total seconds this server was DOWN since start-up, including the current period (monotonic)."),
    ("patroni_proxy_server_last_change_seconds", Kind::Gauge, "Seconds since the server's last UP/DOWN change (or start-up)."),
    ("patroni_proxy_etcd_watch_failures_total", Kind::Counter, "etcd watches given up (the next endpoint is tried), by reason: unreachable, silent (no answer within the timeout, or a change the watch did not show), oversized, invalid, canceled (by etcd), closed."),
    ("patroni_proxy_stats_connections_refused_total", Kind::Counter, "Connections to the stats listener closed at once, by reason: the client's limit (client_limit) or all slots taken (full)."),
];

/// Every family with its kind and help text, for documentation tests.
pub fn families() -> impl Iterator<Item = (&'static str, &'static str, &'static str)> {
    FAMILIES.iter().map(|(n, k, h)| {
        let kind = match k {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        (*n, kind, *h)
    })
}

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
    nodes: Vec<NodeSeries>,
    /// In the order of [`FAILURE_REASONS`].
    etcd_failures: Vec<Counter>,
    /// In the order of [`Refusal::ALL`]; counted as it happens (the stats listener has no other
    /// counters).
    stats_refused: Vec<Counter>,
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
    /// In the order of [`ROLES`].
    roles: Vec<Gauge>,
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
    fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
        let labels: Vec<Label> = labels
            .iter()
            .map(|(k, v)| Label::new(*k, v.to_string()))
            .collect();
        Key::from_parts(name, labels)
    }
    fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        self.0.register_counter(&Self::key(name, labels), &META)
    }
    fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        self.0.register_gauge(&Self::key(name, labels), &META)
    }
    fn histogram(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Histogram {
        self.0.register_histogram(&Self::key(name, labels), &META)
    }
}

impl Metrics {
    /// Builds the recorder and registers every series at zero.
    pub fn new(config: &Config) -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("patroni_proxy_server_check_duration_seconds".into()),
                &CHECK_BUCKETS,
            )
            .expect("the bucket list is not empty")
            .build_recorder();
        for (name, kind, help) in FAMILIES {
            let (name, help) = (KeyName::from(*name), SharedString::from(*help));
            match kind {
                Kind::Counter => recorder.describe_counter(name, None, help),
                Kind::Gauge => recorder.describe_gauge(name, None, help),
                Kind::Histogram => recorder.describe_histogram(name, None, help),
            }
        }
        let r = Registrar(&recorder);
        r.gauge(
            "patroni_proxy_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
        )
        .set(1.0);
        let fe = FrontendSeries {
            connections: r.counter("patroni_proxy_frontend_connections_total", &[]),
            scur: r.gauge("patroni_proxy_frontend_sessions_current", &[]),
            smax: r.gauge("patroni_proxy_frontend_sessions_max", &[]),
            slim: r.gauge("patroni_proxy_frontend_sessions_limit", &[]),
            bin: r.counter("patroni_proxy_frontend_bytes_in_total", &[]),
            bout: r.counter("patroni_proxy_frontend_bytes_out_total", &[]),
            queue: r.gauge("patroni_proxy_frontend_queue_current", &[]),
            refusals: REFUSAL_REASONS
                .iter()
                .map(|reason| {
                    r.counter(
                        "patroni_proxy_frontend_refusals_total",
                        &[("reason", reason)],
                    )
                })
                .collect(),
            held: r.counter("patroni_proxy_frontend_held_total", &[]),
            holding: r.gauge("patroni_proxy_frontend_holding_current", &[]),
            released: r.counter("patroni_proxy_frontend_hold_released_total", &[]),
            replays: r.counter("patroni_proxy_frontend_startup_replays_total", &[]),
            accept_errors: r.counter("patroni_proxy_frontend_accept_errors_total", &[]),
            local_errors: r.counter("patroni_proxy_local_resource_errors_total", &[]),
            log_lines_dropped: r.counter("patroni_proxy_log_lines_dropped_total", &[]),
        };
        let nodes = config
            .servers
            .iter()
            .map(|s| {
                let l: &[(&'static str, &str)] = &[("server", &s.name)];
                let name = s.name.as_str();
                NodeSeries {
                    up: r.gauge("patroni_proxy_server_up", l),
                    health: r.gauge("patroni_proxy_server_check_health", l),
                    routed: r.gauge("patroni_proxy_server_routed_primary", l),
                    roles: ROLES
                        .iter()
                        .map(|role| {
                            r.gauge(
                                "patroni_proxy_server_role",
                                &[("server", name), ("role", role.as_str())],
                            )
                        })
                        .collect(),
                    scur: r.gauge("patroni_proxy_server_sessions_current", l),
                    smax: r.gauge("patroni_proxy_server_sessions_max", l),
                    slim: r.gauge("patroni_proxy_server_sessions_limit", l),
                    stot: r.counter("patroni_proxy_server_sessions_total", l),
                    qcur: r.gauge("patroni_proxy_server_queue_current", l),
                    bin: r.counter("patroni_proxy_server_bytes_in_total", l),
                    bout: r.counter("patroni_proxy_server_bytes_out_total", l),
                    econ: r.counter("patroni_proxy_server_connection_errors_total", l),
                    wretr: r.counter("patroni_proxy_server_retries_total", l),
                    killed: r.counter("patroni_proxy_server_sessions_killed_total", l),
                    chkfail: r.counter("patroni_proxy_server_check_failures_total", l),
                    checks: CheckStatus::FINISHED
                        .iter()
                        .map(|st| {
                            let c = r.counter(
                                "patroni_proxy_server_checks_total",
                                &[("server", name), ("result", st.as_str())],
                            );
                            (*st, c)
                        })
                        .collect(),
                    duration: r.histogram("patroni_proxy_server_check_duration_seconds", l),
                    went_up: r.counter(
                        "patroni_proxy_server_transitions_total",
                        &[("server", name), ("to", "up")],
                    ),
                    went_down: r.counter(
                        "patroni_proxy_server_transitions_total",
                        &[("server", name), ("to", "down")],
                    ),
                    downtime: r.gauge("patroni_proxy_server_downtime_seconds", l),
                    lastchg: r.gauge("patroni_proxy_server_last_change_seconds", l),
                }
            })
            .collect();
        let m = Self {
            uptime: r.gauge("patroni_proxy_uptime_seconds", &[]),
            primary_routable: r.gauge("patroni_proxy_primary_routable", &[]),
            primary_changes: r.counter("patroni_proxy_primary_changes_total", &[]),
            no_primary: r.gauge("patroni_proxy_no_primary_seconds", &[]),
            fe,
            nodes,
            etcd_failures: FAILURE_REASONS
                .iter()
                .map(|reason| {
                    r.counter(
                        "patroni_proxy_etcd_watch_failures_total",
                        &[("reason", reason)],
                    )
                })
                .collect(),
            stats_refused: Refusal::ALL
                .iter()
                .map(|why| {
                    r.counter(
                        "patroni_proxy_stats_connections_refused_total",
                        &[("reason", why.as_str())],
                    )
                })
                .collect(),
            handle: recorder.handle(),
        };
        // Renders the empty histograms once, so their buckets exist before the first check.
        m.handle.run_upkeep();
        m
    }

    /// Records one finished check of node `node` (called by the state owner, the only place checks
    /// are applied).
    pub fn observe_check(&self, node: usize, result: &CheckResult, transition: Option<Transition>) {
        let Some(n) = self.nodes.get(node) else {
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
    pub fn render(&self, view: &View, etcd: &Failures) -> String {
        for ((_, n), c) in etcd.counts().zip(&self.etcd_failures) {
            c.absolute(n);
        }
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
        for (n, s) in self.nodes.iter().zip(&view.servers) {
            n.up.set(if s.up { 1.0 } else { 0.0 });
            n.health.set(s.check_health);
            n.routed.set(if s.routed_primary { 1.0 } else { 0.0 });
            for (g, role) in n.roles.iter().zip(ROLES) {
                g.set(if s.role == role { 1.0 } else { 0.0 });
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
