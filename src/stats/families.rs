//! Every metric family this proxy exports, declared once: its name, kind and help text. The same
//! table registers the series ([`super::metrics`]), describes them to the exporter, and is what the
//! documentation test compares `docs/metrics.md` with.

/// A family's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric family.
#[derive(Debug)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

pub const BUILD_INFO: Family = Family {
    name: "patroni_proxy_build_info",
    kind: Kind::Gauge,
    help: "Always 1; the version label says which build runs.",
};

pub const UPTIME_SECONDS: Family = Family {
    name: "patroni_proxy_uptime_seconds",
    kind: Kind::Gauge,
    help: "Seconds since this proxy started.",
};

pub const PRIMARY_ROUTABLE: Family = Family {
    name: "patroni_proxy_primary_routable",
    kind: Kind::Gauge,
    help: "1 while a primary is routable (new connections are accepted and forwarded), else 0.",
};

pub const PRIMARY_CHANGES_TOTAL: Family = Family {
    name: "patroni_proxy_primary_changes_total",
    kind: Kind::Counter,
    help: "Times the routed primary moved from one node to another.",
};

pub const NO_PRIMARY_SECONDS: Family = Family {
    name: "patroni_proxy_no_primary_seconds",
    kind: Kind::Gauge,
    help: "Cumulative seconds without a routable primary since start-up, including the current period (monotonic).",
};

pub const FRONTEND_CONNECTIONS_TOTAL: Family = Family {
    name: "patroni_proxy_frontend_connections_total",
    kind: Kind::Counter,
    help: "Client connections accepted on the primary port.",
};

pub const FRONTEND_SESSIONS_CURRENT: Family = Family {
    name: "patroni_proxy_frontend_sessions_current",
    kind: Kind::Gauge,
    help: "Client sessions open now.",
};

pub const FRONTEND_SESSIONS_MAX: Family = Family {
    name: "patroni_proxy_frontend_sessions_max",
    kind: Kind::Gauge,
    help: "Most client sessions open at once since start-up.",
};

pub const FRONTEND_SESSIONS_LIMIT: Family = Family {
    name: "patroni_proxy_frontend_sessions_limit",
    kind: Kind::Gauge,
    help: "global.maxconn: client sessions beyond it wait in the kernel's accept queue.",
};

pub const FRONTEND_BYTES_IN_TOTAL: Family = Family {
    name: "patroni_proxy_frontend_bytes_in_total",
    kind: Kind::Counter,
    help: "Bytes received from clients.",
};

pub const FRONTEND_BYTES_OUT_TOTAL: Family = Family {
    name: "patroni_proxy_frontend_bytes_out_total",
    kind: Kind::Counter,
    help: "Bytes sent to clients.",
};

pub const FRONTEND_QUEUE_CURRENT: Family = Family {
    name: "patroni_proxy_frontend_queue_current",
    kind: Kind::Gauge,
    help: "Client sessions waiting for a server slot now (all servers).",
};

pub const FRONTEND_REFUSALS_TOTAL: Family = Family {
    name: "patroni_proxy_frontend_refusals_total",
    kind: Kind::Counter,
    help: "Clients closed without reaching a server, by reason.",
};

pub const FRONTEND_HELD_TOTAL: Family = Family {
    name: "patroni_proxy_frontend_held_total",
    kind: Kind::Counter,
    help: "Clients that found no routable primary and were held (failover).",
};

pub const FRONTEND_HOLDING_CURRENT: Family = Family {
    name: "patroni_proxy_frontend_holding_current",
    kind: Kind::Gauge,
    help: "Clients held now, waiting for a primary.",
};

pub const FRONTEND_HOLD_RELEASED_TOTAL: Family = Family {
    name: "patroni_proxy_frontend_hold_released_total",
    kind: Kind::Counter,
    help: "Held clients connected to a primary once one was confirmed.",
};

pub const FRONTEND_STARTUP_REPLAYS_TOTAL: Family = Family {
    name: "patroni_proxy_frontend_startup_replays_total",
    kind: Kind::Counter,
    help: "Startups replayed on the next primary after a 57P01/57P02/57P03 answer before authentication.",
};

pub const FRONTEND_ACCEPT_ERRORS_TOTAL: Family = Family {
    name: "patroni_proxy_frontend_accept_errors_total",
    kind: Kind::Counter,
    help: "Accept errors (EMFILE and the like) the accept loop backed off from.",
};

pub const LOCAL_RESOURCE_ERRORS_TOTAL: Family = Family {
    name: "patroni_proxy_local_resource_errors_total",
    kind: Kind::Counter,
    help: "Health checks and server connections that failed for want of a local resource (file descriptors, memory, ports): the proxy's fault, never counted against a server.",
};

pub const LOG_LINES_DROPPED_TOTAL: Family = Family {
    name: "patroni_proxy_log_lines_dropped_total",
    kind: Kind::Counter,
    help: "Log lines dropped because stderr did not keep up (logging never blocks the proxy).",
};

pub const SERVER_UP: Family = Family {
    name: "patroni_proxy_server_up",
    kind: Kind::Gauge,
    help: "1 while the rise/fall health counter says UP (HAProxy's view: a Patroni replica is DOWN), else 0.",
};

pub const SERVER_CHECK_HEALTH: Family = Family {
    name: "patroni_proxy_server_check_health",
    kind: Kind::Gauge,
    help: "The rise/fall health counter, 0 ..= rise+fall-1 (HAProxy's check_health).",
};

pub const SERVER_ROUTED_PRIMARY: Family = Family {
    name: "patroni_proxy_server_routed_primary",
    kind: Kind::Gauge,
    help: "1 for the node new connections go to, else 0.",
};

pub const REST_UNREACHABLE_LEADER_ALIVE: Family = Family {
    name: "patroni_proxy_rest_unreachable_leader_alive",
    kind: Kind::Gauge,
    help: "1 while the node is routed through a REST outage: its checks time out or are refused, \
           etcd shows it holding the leader key with a live lease, its PostgreSQL port accepts \
           connections.",
};

pub const SERVER_ROLE: Family = Family {
    name: "patroni_proxy_server_role",
    kind: Kind::Gauge,
    help: "1 for the Patroni role the last check reported (primary, replica, unknown), 0 for the others.",
};

pub const SERVER_ADMIN_STATE: Family = Family {
    name: "patroni_proxy_server_admin_state",
    kind: Kind::Gauge,
    help: "1 for the administrative state an operator set (ready, drain, maint), 0 for the others.",
};

pub const SERVER_SESSIONS_CURRENT: Family = Family {
    name: "patroni_proxy_server_sessions_current",
    kind: Kind::Gauge,
    help: "Sessions to this server open or being set up now.",
};

pub const SERVER_SESSIONS_MAX: Family = Family {
    name: "patroni_proxy_server_sessions_max",
    kind: Kind::Gauge,
    help: "Most sessions to this server at once since start-up.",
};

pub const SERVER_SESSIONS_LIMIT: Family = Family {
    name: "patroni_proxy_server_sessions_limit",
    kind: Kind::Gauge,
    help: "The server's maxconn.",
};

pub const SERVER_SESSIONS_TOTAL: Family = Family {
    name: "patroni_proxy_server_sessions_total",
    kind: Kind::Counter,
    help: "Sessions ever sent to this server.",
};

pub const SERVER_QUEUE_CURRENT: Family = Family {
    name: "patroni_proxy_server_queue_current",
    kind: Kind::Gauge,
    help: "Sessions waiting for a slot on this server now.",
};

pub const SERVER_BYTES_IN_TOTAL: Family = Family {
    name: "patroni_proxy_server_bytes_in_total",
    kind: Kind::Counter,
    help: "Bytes from clients to this server.",
};

pub const SERVER_BYTES_OUT_TOTAL: Family = Family {
    name: "patroni_proxy_server_bytes_out_total",
    kind: Kind::Counter,
    help: "Bytes from this server to clients.",
};

pub const SERVER_CONNECTION_ERRORS_TOTAL: Family = Family {
    name: "patroni_proxy_server_connection_errors_total",
    kind: Kind::Counter,
    help: "Sessions that gave up connecting to this server after all retries (HAProxy's econ).",
};

pub const SERVER_RETRIES_TOTAL: Family = Family {
    name: "patroni_proxy_server_retries_total",
    kind: Kind::Counter,
    help: "Connection retries to this server (HAProxy's wretr).",
};

pub const SERVER_SESSIONS_KILLED_TOTAL: Family = Family {
    name: "patroni_proxy_server_sessions_killed_total",
    kind: Kind::Counter,
    help: "Sessions closed because this server was marked DOWN or lost the primary role.",
};

pub const SERVER_CHECK_FAILURES_TOTAL: Family = Family {
    name: "patroni_proxy_server_check_failures_total",
    kind: Kind::Counter,
    help: "Failed checks that moved the health counter (HAProxy's chkfail).",
};

pub const SERVER_CHECKS_TOTAL: Family = Family {
    name: "patroni_proxy_server_checks_total",
    kind: Kind::Counter,
    help: "Finished health checks by result (HAProxy's check status: L7OK, L7STS, L4CON, ...).",
};

pub const SERVER_SQL_CHECKS_TOTAL: Family = Family {
    name: "patroni_proxy_server_sql_checks_total",
    kind: Kind::Counter,
    help: "Finished SQL checks ([check.sql]) by result: primary, standby (pg_is_in_recovery() false, true), failed (no answer), refused (the monitoring role's login refused, or TLS).",
};

pub const SERVER_CHECK_DURATION_SECONDS: Family = Family {
    name: "patroni_proxy_server_check_duration_seconds",
    kind: Kind::Histogram,
    help: "Duration of finished health checks.",
};

pub const SERVER_TRANSITIONS_TOTAL: Family = Family {
    name: "patroni_proxy_server_transitions_total",
    kind: Kind::Counter,
    help: "Health state transitions, by the state reached (up, down); to=\"down\" is HAProxy's chkdown.",
};

pub const SERVER_DOWNTIME_SECONDS: Family = Family {
    name: "patroni_proxy_server_downtime_seconds",
    kind: Kind::Gauge,
    help: "Total seconds this server was DOWN since start-up, including the current period (monotonic).",
};

pub const SERVER_LAST_CHANGE_SECONDS: Family = Family {
    name: "patroni_proxy_server_last_change_seconds",
    kind: Kind::Gauge,
    help: "Seconds since the server's last UP/DOWN change (or start-up).",
};

pub const ETCD_WATCH_FAILURES_TOTAL: Family = Family {
    name: "patroni_proxy_etcd_watch_failures_total",
    kind: Kind::Counter,
    help: "etcd watches given up, by reason: unreachable, silent (no answer within the timeout, or a change the watch did not show), oversized, invalid, canceled (by etcd), closed, compacted (retried on the same endpoint), auth (token refused, retried on the same endpoint; or user/password refused).",
};

pub const ETCD_UP: Family = Family {
    name: "patroni_proxy_etcd_up",
    kind: Kind::Gauge,
    help: "1 while a watch of Patroni's keys is established on an etcd endpoint, else 0 (only with [etcd]).",
};

pub const ETCD_ENDPOINT_IN_USE: Family = Family {
    name: "patroni_proxy_etcd_endpoint_in_use",
    kind: Kind::Gauge,
    help: "1 for the etcd endpoint being watched or tried, 0 for the others; one series per configured endpoint (only with [etcd]).",
};

pub const STATS_CONNECTIONS_REFUSED_TOTAL: Family = Family {
    name: "patroni_proxy_stats_connections_refused_total",
    kind: Kind::Counter,
    help: "Connections to the stats listener closed at once, by reason: the client's limit (client_limit) or all slots taken (full).",
};

/// Every family, in the order of `docs/metrics.md`.
pub const CONFIG_RELOADS_TOTAL: Family = Family {
    name: "patroni_proxy_config_reloads_total",
    kind: Kind::Counter,
    help: "Configuration reloads (SIGHUP, patroni-proxy reload), by result: ok (applied), failed (invalid file, or a change that needs a restart; the running configuration is unchanged).",
};

pub const LISTENER_MEMBER: Family = Family {
    name: "patroni_proxy_listener_member",
    kind: Kind::Gauge,
    help: "1 while a replica, any or standby_leader listener may send new sessions to this server (its rule holds, UP for it, ready), else 0.",
};

pub const LISTENER_SESSIONS_CURRENT: Family = Family {
    name: "patroni_proxy_listener_sessions_current",
    kind: Kind::Gauge,
    help: "Client sessions open now on a replica, any or standby_leader listener.",
};

pub const LISTENER_SESSIONS_TOTAL: Family = Family {
    name: "patroni_proxy_listener_sessions_total",
    kind: Kind::Counter,
    help: "Client sessions accepted on a replica, any or standby_leader listener.",
};

pub const LISTENER_BYTES_IN_TOTAL: Family = Family {
    name: "patroni_proxy_listener_bytes_in_total",
    kind: Kind::Counter,
    help: "Bytes from clients to servers on a replica, any or standby_leader listener.",
};

pub const LISTENER_BYTES_OUT_TOTAL: Family = Family {
    name: "patroni_proxy_listener_bytes_out_total",
    kind: Kind::Counter,
    help: "Bytes from servers to clients on a replica, any or standby_leader listener.",
};

pub const LISTENER_REFUSALS_TOTAL: Family = Family {
    name: "patroni_proxy_listener_refusals_total",
    kind: Kind::Counter,
    help: "Clients of a replica, any or standby_leader listener closed without reaching a server, by reason: no_member (none within hold_timeout), queue_timeout, connect_failed, wrong_role (the server reported the other in_hot_standby).",
};

pub const RELAY_MODE: Family = Family {
    name: "patroni_proxy_relay_mode",
    kind: Kind::Gauge,
    help: "1 for who relays a listener's sessions (mode user: the proxy's threads; kernel: a BPF sockmap), 0 for the other. With relay = \"auto\", user means the kernel relay could not be loaded (the log and the dashboard say why).",
};

pub const FAMILIES: &[&Family] = &[
    &BUILD_INFO,
    &UPTIME_SECONDS,
    &PRIMARY_ROUTABLE,
    &PRIMARY_CHANGES_TOTAL,
    &NO_PRIMARY_SECONDS,
    &FRONTEND_CONNECTIONS_TOTAL,
    &FRONTEND_SESSIONS_CURRENT,
    &FRONTEND_SESSIONS_MAX,
    &FRONTEND_SESSIONS_LIMIT,
    &FRONTEND_BYTES_IN_TOTAL,
    &FRONTEND_BYTES_OUT_TOTAL,
    &FRONTEND_QUEUE_CURRENT,
    &FRONTEND_REFUSALS_TOTAL,
    &FRONTEND_HELD_TOTAL,
    &FRONTEND_HOLDING_CURRENT,
    &FRONTEND_HOLD_RELEASED_TOTAL,
    &FRONTEND_STARTUP_REPLAYS_TOTAL,
    &FRONTEND_ACCEPT_ERRORS_TOTAL,
    &LOCAL_RESOURCE_ERRORS_TOTAL,
    &LOG_LINES_DROPPED_TOTAL,
    &SERVER_UP,
    &SERVER_CHECK_HEALTH,
    &SERVER_ROUTED_PRIMARY,
    &REST_UNREACHABLE_LEADER_ALIVE,
    &SERVER_ROLE,
    &SERVER_ADMIN_STATE,
    &SERVER_SESSIONS_CURRENT,
    &SERVER_SESSIONS_MAX,
    &SERVER_SESSIONS_LIMIT,
    &SERVER_SESSIONS_TOTAL,
    &SERVER_QUEUE_CURRENT,
    &SERVER_BYTES_IN_TOTAL,
    &SERVER_BYTES_OUT_TOTAL,
    &SERVER_CONNECTION_ERRORS_TOTAL,
    &SERVER_RETRIES_TOTAL,
    &SERVER_SESSIONS_KILLED_TOTAL,
    &SERVER_CHECK_FAILURES_TOTAL,
    &SERVER_CHECKS_TOTAL,
    &SERVER_SQL_CHECKS_TOTAL,
    &SERVER_CHECK_DURATION_SECONDS,
    &SERVER_TRANSITIONS_TOTAL,
    &SERVER_DOWNTIME_SECONDS,
    &SERVER_LAST_CHANGE_SECONDS,
    &ETCD_WATCH_FAILURES_TOTAL,
    &ETCD_UP,
    &ETCD_ENDPOINT_IN_USE,
    &CONFIG_RELOADS_TOTAL,
    &STATS_CONNECTIONS_REFUSED_TOTAL,
    &LISTENER_MEMBER,
    &LISTENER_SESSIONS_CURRENT,
    &LISTENER_SESSIONS_TOTAL,
    &LISTENER_BYTES_IN_TOTAL,
    &LISTENER_BYTES_OUT_TOTAL,
    &LISTENER_REFUSALS_TOTAL,
    &RELAY_MODE,
];

/// Every family with its kind and help text, for documentation tests.
pub fn families() -> impl Iterator<Item = (&'static str, &'static str, &'static str)> {
    FAMILIES.iter().map(|f| {
        let kind = match f.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        (f.name, kind, f.help)
    })
}
