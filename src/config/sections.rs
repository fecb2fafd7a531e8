//! The file format: one struct per TOML section, each field with its doc comment and default.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::values::{bind_addr, duration, opt_duration};

/// The whole file as written. Optional keys fall back to the defaults documented on each field.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub global: Global,
    #[serde(default)]
    pub listen: Listen,
    #[serde(default)]
    pub check: Check,
    /// The PostgreSQL nodes, in order. HAProxy's `server` lines. At least one.
    #[serde(default, rename = "server")]
    pub servers: Vec<Server>,
    #[serde(default)]
    pub stats: Stats,
    /// Optional: watch Patroni's leader and failover keys in etcd to re-check at once on a change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<Etcd>,
}

/// Where Patroni keeps its keys (Patroni's `etcd3.hosts`, `namespace`, `scope`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Etcd {
    /// etcd client addresses, `IP:PORT`. The v3 JSON gateway (`/v3/watch`) is used, as Patroni's
    /// `etcd3` backend does.
    pub endpoints: Vec<SocketAddr>,
    /// Patroni's `namespace`. Default `/service/` (Patroni's default; the seed uses `/db/`).
    #[serde(default = "defaults::namespace")]
    pub namespace: String,
    /// Patroni's `scope` (the cluster name).
    pub scope: String,
}

impl Etcd {
    /// The key prefix of this cluster, e.g. `/db/postgres/`.
    pub fn prefix(&self) -> String {
        format!(
            "/{}/{}/",
            self.namespace.trim_matches('/'),
            self.scope.trim_matches('/')
        )
        .replace("//", "/")
    }
}

/// Process-wide settings (HAProxy's `global` section).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Global {
    /// Maximum concurrent client sessions on the primary port. Beyond it new connections wait in the
    /// kernel's accept queue, without a timeout, as in HAProxy. Default 100. Unlike HAProxy, stats
    /// connections do not count against it (they have their own small limit).
    #[serde(default = "defaults::maxconn")]
    pub maxconn: NonZeroU32,
    /// How long a SIGTERM/SIGINT waits for sessions to finish before closing them. Default `30s`.
    #[serde(default = "defaults::shutdown_grace", with = "duration")]
    pub shutdown_grace: Duration,
    /// Threads that relay sessions (HAProxy's `nbthread`), each with its own event loop; each
    /// accepts from the one listening socket and a client stays on the thread that accepted it. Default: one per CPU the process may run on.
    #[serde(default)]
    pub threads: Option<NonZeroU32>,
}

/// The most `global.threads` accepts.
pub const MAX_THREADS: u32 = 64;

impl Global {
    /// `threads`, or one per CPU the process may use (at most [`MAX_THREADS`]).
    pub fn threads(&self) -> usize {
        match self.threads {
            Some(n) => n.get() as usize,
            None => std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(MAX_THREADS as usize),
        }
    }
}

/// The client-facing listener and how sessions are handled (HAProxy's `defaults` + `listen postgres`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// Name shown in logs, stats and metrics (HAProxy's proxy name). Default `postgres`.
    #[serde(default = "defaults::listen_name")]
    pub name: String,
    /// Address clients connect to. `*:PORT` means `0.0.0.0:PORT`, as in HAProxy. Default `*:5000`.
    #[serde(default = "defaults::listen_bind", with = "bind_addr")]
    pub bind: SocketAddr,
    /// Extra connection attempts to a server after the first one fails (HAProxy `retries`). Default 2.
    #[serde(default = "defaults::retries")]
    pub retries: u32,
    /// Time allowed for each TCP connection attempt to a server. Default `4s`.
    #[serde(default = "defaults::timeout_connect", with = "duration")]
    pub timeout_connect: Duration,
    /// Session closed after this long with no byte from either side (HAProxy `timeout client`).
    /// Default `30m`.
    #[serde(default = "defaults::timeout_idle", with = "duration")]
    pub timeout_client: Duration,
    /// Session closed after this long with no byte from either side (HAProxy `timeout server`).
    /// Default `30m`.
    #[serde(default = "defaults::timeout_idle", with = "duration")]
    pub timeout_server: Duration,
    /// How long a session may wait for a free slot on a server at its `maxconn`. Default: the value of
    /// `timeout_connect`, as in HAProxy.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout_queue: Option<Duration>,
    /// What to do with established sessions when their server is marked DOWN:
    /// `shutdown-sessions` (close them at once, the seed's setting) or `none`. Default `shutdown-sessions`.
    #[serde(default)]
    pub on_marked_down: OnMarkedDown,
    /// While no primary is routable (during a failover), how long a new client waits for one before
    /// it gets a PostgreSQL error (SQLSTATE 57P03) instead of a connection. Default `10s`.
    #[serde(default = "defaults::hold_timeout", with = "duration")]
    pub hold_timeout: Duration,
    /// Read PostgreSQL's startup replies as they pass, until the first ReadyForQuery: replay the
    /// startup on the new primary if the old one answers "shutting down" (57P01/57P02/57P03) before
    /// authentication, and refuse a backend that reports `in_hot_standby = on`. Clients that
    /// negotiate TLS are relayed untouched after the SSLRequest. Default `true`.
    #[serde(default = "defaults::yes")]
    pub inspect_startup: bool,
    /// TCP keepalive on client sockets (HAProxy `option clitcpka`). Default `true`, unlike HAProxy:
    /// a client that vanished without a FIN (a crashed host, a dropped NAT mapping) would otherwise
    /// hold its `maxconn` slot until `timeout_client` (30 min). Not written when it is the default,
    /// so an imported HAProxy file reads as before.
    #[serde(default = "defaults::yes", skip_serializing_if = "is_true")]
    pub client_keepalive: bool,
    /// TCP keepalive on server sockets (HAProxy `option srvtcpka`). Default `true`: a primary that
    /// lost power leaves no one to send a FIN or RST.
    #[serde(default = "defaults::yes", skip_serializing_if = "is_true")]
    pub server_keepalive: bool,
    /// Idle time before the first keepalive probe (`TCP_KEEPIDLE`; HAProxy `clitcpka-idle` /
    /// `srvtcpka-idle`). Whole seconds. Default `60s`.
    #[serde(
        default = "defaults::keepalive_idle",
        with = "duration",
        skip_serializing_if = "defaults::is_keepalive_idle"
    )]
    pub keepalive_idle: Duration,
    /// Time between unanswered probes (`TCP_KEEPINTVL`; HAProxy `*tcpka-intvl`). Whole seconds.
    /// Default `10s`.
    #[serde(
        default = "defaults::keepalive_interval",
        with = "duration",
        skip_serializing_if = "defaults::is_keepalive_interval"
    )]
    pub keepalive_interval: Duration,
    /// Unanswered probes before the kernel drops the connection (`TCP_KEEPCNT`; HAProxy
    /// `*tcpka-cnt`). Default 6: a dead peer is found after 60 s + 6 x 10 s = 2 min idle.
    #[serde(
        default = "defaults::keepalive_count",
        skip_serializing_if = "defaults::is_keepalive_count"
    )]
    pub keepalive_count: u32,
}

fn is_true(b: &bool) -> bool {
    *b
}

/// HAProxy's `on-marked-down` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnMarkedDown {
    #[default]
    ShutdownSessions,
    None,
}

/// The HTTP health check against each node's Patroni REST API (HAProxy `option httpchk`,
/// `http-check expect status`, `default-server inter/fastinter/downinter/rise/fall`, `timeout check`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    /// HTTP method. Default `GET`: Patroni answers `GET /` exactly like HAProxy's `OPTIONS /` and also
    /// returns a JSON body with `role`, `state` and `timeline`, which routing uses.
    #[serde(default = "defaults::check_method")]
    pub method: String,
    /// Request path. Default `/` (Patroni rewrites it to `/primary`).
    #[serde(default = "defaults::check_uri")]
    pub uri: String,
    /// HTTP version in the request line: `HTTP/1.0` or `HTTP/1.1`. Default `HTTP/1.0`.
    #[serde(default = "defaults::check_version")]
    pub version: String,
    /// The only status that passes. Default 200.
    #[serde(default = "defaults::expect_status")]
    pub expect_status: u16,
    /// Default REST port of every server (HAProxy `check port`). Default 8008.
    #[serde(default = "defaults::check_port")]
    pub port: u16,
    /// Time between the end of one check and the start of the next while fully UP. Default `3s`.
    #[serde(default = "defaults::inter", with = "duration")]
    pub inter: Duration,
    /// Interval in transitional states (`UP 2/3`, `DOWN 1/2`, not yet checked). Default: `inter`.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub fastinter: Option<Duration>,
    /// Interval while fully DOWN. Default: `inter`.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub downinter: Option<Duration>,
    /// Consecutive passed checks that mark a DOWN server UP. Default 2.
    #[serde(default = "defaults::rise")]
    pub rise: NonZeroU32,
    /// Consecutive failed checks that mark an UP server DOWN. Default 3.
    #[serde(default = "defaults::fall")]
    pub fall: NonZeroU32,
    /// Time allowed for the answer once the TCP connection is up (HAProxy `timeout check`). The connect
    /// itself is bounded by min(`inter`, `listen.timeout_connect`). Default `5s`.
    #[serde(default = "defaults::timeout_check", with = "duration")]
    pub timeout: Duration,
    /// Interval for every node while no primary is confirmed, or while the routed primary's last
    /// check failed or denied the role: how fast a new primary is found. Set it to `inter` for
    /// HAProxy's pace. Default `200ms`.
    #[serde(default = "defaults::failover_inter", with = "duration")]
    pub failover_inter: Duration,
}

/// One PostgreSQL node (HAProxy `server NAME ADDR maxconn N check port P`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// Unique name, used in logs, stats and metrics labels.
    pub name: String,
    /// PostgreSQL address, `IP:PORT`.
    pub address: SocketAddr,
    /// Maximum concurrent sessions to this server; more wait in a FIFO queue for `timeout_queue`.
    /// Default 100.
    #[serde(default = "defaults::maxconn")]
    pub maxconn: NonZeroU32,
    /// REST port for the health check. Default: `check.port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_port: Option<u16>,
    /// REST address for the health check (HAProxy `addr`). Default: the server's IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_addr: Option<IpAddr>,
}

/// The stats listener: dashboard, CSV/JSON exports and Prometheus metrics.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Stats {
    /// Address of the stats listener. `*:PORT` means `0.0.0.0:PORT`. Default `*:7000`.
    #[serde(default = "defaults::stats_bind", with = "bind_addr")]
    pub bind: SocketAddr,
    /// Optional HTTP Basic credentials, `user:password` (HAProxy `stats auth`). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
}

mod defaults {
    use super::*;

    pub fn maxconn() -> NonZeroU32 {
        NonZeroU32::new(100).expect("non-zero")
    }
    pub fn shutdown_grace() -> Duration {
        Duration::from_secs(30)
    }
    pub fn listen_name() -> String {
        "postgres".into()
    }
    pub fn listen_bind() -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 5000)
    }
    pub fn stats_bind() -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 7000)
    }
    pub fn retries() -> u32 {
        2
    }
    pub fn timeout_connect() -> Duration {
        Duration::from_secs(4)
    }
    pub fn timeout_idle() -> Duration {
        Duration::from_secs(30 * 60)
    }
    pub fn check_method() -> String {
        "GET".into()
    }
    pub fn check_uri() -> String {
        "/".into()
    }
    pub fn check_version() -> String {
        "HTTP/1.0".into()
    }
    pub fn expect_status() -> u16 {
        200
    }
    pub fn check_port() -> u16 {
        8008
    }
    pub fn inter() -> Duration {
        Duration::from_secs(3)
    }
    pub fn rise() -> NonZeroU32 {
        NonZeroU32::new(2).expect("non-zero")
    }
    pub fn fall() -> NonZeroU32 {
        NonZeroU32::new(3).expect("non-zero")
    }
    pub fn timeout_check() -> Duration {
        Duration::from_secs(5)
    }
    pub fn failover_inter() -> Duration {
        Duration::from_millis(200)
    }
    pub fn hold_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn yes() -> bool {
        true
    }
    pub fn namespace() -> String {
        "/service/".into()
    }
    pub fn keepalive_idle() -> Duration {
        Duration::from_secs(60)
    }
    pub fn keepalive_interval() -> Duration {
        Duration::from_secs(10)
    }
    pub fn keepalive_count() -> u32 {
        6
    }
    pub fn is_keepalive_idle(d: &Duration) -> bool {
        *d == keepalive_idle()
    }
    pub fn is_keepalive_interval(d: &Duration) -> bool {
        *d == keepalive_interval()
    }
    pub fn is_keepalive_count(n: &u32) -> bool {
        *n == keepalive_count()
    }
}

impl Default for Global {
    fn default() -> Self {
        Self {
            maxconn: defaults::maxconn(),
            shutdown_grace: defaults::shutdown_grace(),
            threads: None,
        }
    }
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            name: defaults::listen_name(),
            bind: defaults::listen_bind(),
            retries: defaults::retries(),
            timeout_connect: defaults::timeout_connect(),
            timeout_client: defaults::timeout_idle(),
            timeout_server: defaults::timeout_idle(),
            timeout_queue: None,
            on_marked_down: OnMarkedDown::default(),
            hold_timeout: defaults::hold_timeout(),
            inspect_startup: true,
            client_keepalive: true,
            server_keepalive: true,
            keepalive_idle: defaults::keepalive_idle(),
            keepalive_interval: defaults::keepalive_interval(),
            keepalive_count: defaults::keepalive_count(),
        }
    }
}

impl Default for Check {
    fn default() -> Self {
        Self {
            method: defaults::check_method(),
            uri: defaults::check_uri(),
            version: defaults::check_version(),
            expect_status: defaults::expect_status(),
            port: defaults::check_port(),
            inter: defaults::inter(),
            fastinter: None,
            downinter: None,
            rise: defaults::rise(),
            fall: defaults::fall(),
            timeout: defaults::timeout_check(),
            failover_inter: defaults::failover_inter(),
        }
    }
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            bind: defaults::stats_bind(),
            auth: None,
        }
    }
}
