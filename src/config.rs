//! Configuration: the TOML file format, its defaults, and validation into a typed [`Config`].
//!
//! Parsing is strict: unknown keys, zero intervals, malformed addresses and values outside a key's range
//! ([`limits`]) are errors that name the key, the bad value, what is allowed, and the line/column in the
//! file. Every default lives in this file, and every default reproduces the seed HAProxy configuration
//! (`haproxy-semantics.md` §0), except TCP keepalive, which is on (see [`Listen::client_keepalive`]).

pub mod limits;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A configuration error, ready to print: it names the key and, when known, the line and column.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

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

/// The validated configuration the program runs with. Built only by [`Config::from_toml`] /
/// [`Config::load`] (or [`Config::validate`]), so every value in it has passed the checks.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub global: Global,
    pub listen: Listen,
    pub check: Check,
    pub servers: Vec<Server>,
    pub stats: Stats,
    pub etcd: Option<Etcd>,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Invalid(msg) => ConfigError::Invalid(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| describe_toml_error(text, &e))?;
        file.validate().map_err(|e| locate(text, e))
    }

    /// The file form of this config, e.g. to print it as TOML.
    pub fn to_file(&self) -> FileConfig {
        FileConfig {
            global: self.global.clone(),
            listen: self.listen.clone(),
            check: self.check.clone(),
            servers: self.servers.clone(),
            stats: self.stats.clone(),
            etcd: self.etcd.clone(),
        }
    }

    /// The effective check interval for a health counter (HAProxy `srv_getinter`): `inter` when fully
    /// UP, `downinter` when fully DOWN, `fastinter` in between; each unset one falls back to `inter`.
    pub fn interval_for(&self, fully_up: bool, fully_down: bool) -> Duration {
        let c = &self.check;
        if fully_up {
            c.inter
        } else if fully_down {
            c.downinter.unwrap_or(c.inter)
        } else {
            c.fastinter.unwrap_or(c.inter)
        }
    }

    /// Connect timeout of a health check: min(inter, timeout connect), as HAProxy computes it.
    pub fn check_connect_timeout(&self) -> Duration {
        self.check.inter.min(self.listen.timeout_connect)
    }

    /// `timeout queue`, defaulting to `timeout connect`.
    pub fn timeout_queue(&self) -> Duration {
        self.listen
            .timeout_queue
            .unwrap_or(self.listen.timeout_connect)
    }

    /// Where the health check of server `i` connects.
    pub fn check_target(&self, i: usize) -> SocketAddr {
        let s = &self.servers[i];
        SocketAddr::new(
            s.check_addr.unwrap_or(s.address.ip()),
            s.check_port.unwrap_or(self.check.port),
        )
    }

    /// Basic-auth credentials of the stats listener, split at the first `:`.
    pub fn stats_credentials(&self) -> Option<(&str, &str)> {
        self.stats.auth.as_deref().and_then(|a| a.split_once(':'))
    }

    /// The keepalive to set on accepted client sockets, or `None` when `listen.client_keepalive`
    /// is off.
    pub fn client_keepalive(&self) -> Option<socket2::TcpKeepalive> {
        self.listen.client_keepalive.then(|| self.keepalive())
    }

    /// The keepalive to set on connections to servers, or `None` when `listen.server_keepalive`
    /// is off.
    pub fn server_keepalive(&self) -> Option<socket2::TcpKeepalive> {
        self.listen.server_keepalive.then(|| self.keepalive())
    }

    fn keepalive(&self) -> socket2::TcpKeepalive {
        // Validation keeps all three within what Linux accepts (whole seconds, count <= 127).
        socket2::TcpKeepalive::new()
            .with_time(self.listen.keepalive_idle)
            .with_interval(self.listen.keepalive_interval)
            .with_retries(self.listen.keepalive_count)
    }
}

/// A validation failure: the dotted key, and a message saying what is wrong and what is allowed.
#[derive(Debug)]
pub struct KeyError {
    pub key: String,
    pub message: String,
}

impl FileConfig {
    /// Every duration and count with a range in [`limits::LIMITS`], by dotted key, as set (or
    /// defaulted) in this file. Unset optional keys are left out.
    pub fn ranged_values(&self) -> Vec<(String, limits::Value)> {
        use limits::Value::{Count, Duration as D};
        let (g, l, c) = (&self.global, &self.listen, &self.check);
        let mut v: Vec<(String, limits::Value)> = vec![
            ("global.maxconn".into(), Count(g.maxconn.get().into())),
            ("global.shutdown_grace".into(), D(g.shutdown_grace)),
            ("listen.retries".into(), Count(l.retries.into())),
            ("listen.timeout_connect".into(), D(l.timeout_connect)),
            ("listen.timeout_client".into(), D(l.timeout_client)),
            ("listen.timeout_server".into(), D(l.timeout_server)),
            ("listen.hold_timeout".into(), D(l.hold_timeout)),
            ("listen.keepalive_idle".into(), D(l.keepalive_idle)),
            ("listen.keepalive_interval".into(), D(l.keepalive_interval)),
            (
                "listen.keepalive_count".into(),
                Count(l.keepalive_count.into()),
            ),
            ("check.expect_status".into(), Count(c.expect_status.into())),
            ("check.inter".into(), D(c.inter)),
            ("check.rise".into(), Count(c.rise.get().into())),
            ("check.fall".into(), Count(c.fall.get().into())),
            ("check.timeout".into(), D(c.timeout)),
            ("check.failover_inter".into(), D(c.failover_inter)),
        ];
        let optional = [
            ("global.threads", g.threads.map(|n| Count(n.get().into()))),
            ("listen.timeout_queue", l.timeout_queue.map(D)),
            ("check.fastinter", c.fastinter.map(D)),
            ("check.downinter", c.downinter.map(D)),
        ];
        v.extend(
            optional
                .into_iter()
                .filter_map(|(k, value)| value.map(|value| (k.to_string(), value))),
        );
        for (i, s) in self.servers.iter().enumerate() {
            v.push((
                format!("server[{i}].maxconn"),
                Count(s.maxconn.get().into()),
            ));
        }
        v
    }

    /// Cross-field checks that serde cannot express; returns the typed config.
    pub fn validate(self) -> Result<Config, KeyError> {
        let err = |key: &str, message: String| KeyError {
            key: key.to_string(),
            message,
        };
        for (key, value) in self.ranged_values() {
            limits::check(&key, value).map_err(|m| err(&key, m))?;
        }
        if self.servers.is_empty() {
            return Err(err(
                "server",
                "no servers: add at least one [[server]] table with `name` and `address`".into(),
            ));
        }
        let mut names = HashSet::new();
        let mut addrs = HashSet::new();
        for (i, s) in self.servers.iter().enumerate() {
            if s.name.is_empty() || s.name.chars().any(|c| c.is_whitespace() || c == ',') {
                return Err(err(
                    &format!("server[{i}].name"),
                    format!(
                        "invalid name {:?}: use a non-empty name without spaces or commas",
                        s.name
                    ),
                ));
            }
            if !names.insert(s.name.as_str()) {
                return Err(err(
                    &format!("server[{i}].name"),
                    format!(
                        "duplicate server name {:?}: every server needs its own name",
                        s.name
                    ),
                ));
            }
            if !addrs.insert(s.address) {
                return Err(err(
                    &format!("server[{i}].address"),
                    format!(
                        "duplicate server address {}: each node is listed once",
                        s.address
                    ),
                ));
            }
            if s.address.port() == 0 || s.check_port == Some(0) {
                return Err(err(
                    &format!("server[{i}].address"),
                    "port 0 is not a server port: give the PostgreSQL port, e.g. 5432".into(),
                ));
            }
        }
        if self.check.port == 0 {
            return Err(err(
                "check.port",
                "port 0 is not a REST port: use Patroni's, e.g. 8008".into(),
            ));
        }
        if !matches!(
            self.check.method.as_str(),
            "GET" | "HEAD" | "OPTIONS" | "POST"
        ) {
            return Err(err(
                "check.method",
                format!(
                    "unsupported method {:?}: use GET, HEAD or OPTIONS",
                    self.check.method
                ),
            ));
        }
        if !self.check.uri.starts_with('/') || self.check.uri.contains(char::is_whitespace) {
            return Err(err(
                "check.uri",
                format!(
                    "invalid path {:?}: it must start with `/` and contain no spaces",
                    self.check.uri
                ),
            ));
        }
        if !matches!(self.check.version.as_str(), "HTTP/1.0" | "HTTP/1.1") {
            return Err(err(
                "check.version",
                format!(
                    "unsupported version {:?}: use HTTP/1.0 or HTTP/1.1",
                    self.check.version
                ),
            ));
        }
        if self.listen.name.is_empty() || self.listen.name.contains(char::is_whitespace) {
            return Err(err(
                "listen.name",
                format!(
                    "invalid name {:?}: use a non-empty name without spaces",
                    self.listen.name
                ),
            ));
        }
        if let Some(auth) = &self.stats.auth {
            match auth.split_once(':') {
                Some((u, p)) if !u.is_empty() && !p.is_empty() => {}
                _ => {
                    return Err(err(
                        "stats.auth",
                        "expected `user:password` with both parts non-empty".into(),
                    ))
                }
            }
        }
        if let Some(etcd) = &self.etcd {
            if etcd.endpoints.is_empty() {
                return Err(err(
                    "etcd.endpoints",
                    "empty list: give etcd's client address, e.g. [\"127.0.0.21:2379\"], or remove [etcd]".into(),
                ));
            }
            if etcd.scope.trim_matches('/').is_empty() || etcd.scope.contains(char::is_whitespace) {
                return Err(err(
                    "etcd.scope",
                    format!(
                        "invalid scope {:?}: use Patroni's `scope`, e.g. \"postgres\"",
                        etcd.scope
                    ),
                ));
            }
        }
        Ok(Config {
            global: self.global,
            listen: self.listen,
            check: self.check,
            servers: self.servers,
            stats: self.stats,
            etcd: self.etcd,
        })
    }
}

/// Formats a TOML/serde error with the dotted key it happened at, keeping the line/column and snippet
/// the `toml` crate prints.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let key = e.span().and_then(|span| key_at(text, span.start));
    // A number too large for its type, or a duration far too long, is refused before validation
    // sees it: still say what the key allows.
    let range = key
        .as_deref()
        .and_then(limits::limit_of)
        .map(|limit| format!("\nallowed: {limit}"))
        .unwrap_or_default();
    let key = key.map(|k| format!("key `{k}`: ")).unwrap_or_default();
    ConfigError::Invalid(format!("{key}{}{range}", e.to_string().trim_end()))
}

/// Finds the dotted key whose value or table header covers byte `offset`: the last `[table]` header
/// above it plus the `key =` on its line.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let before = &text[..offset.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let mut table = None;
    for l in before[..line_start].lines() {
        let t = l.trim();
        if t.starts_with('[') {
            table = Some(t.trim_matches(|c| c == '[' || c == ']').trim().to_string());
        }
    }
    let trimmed = line.trim();
    if trimmed.starts_with('[') {
        return Some(
            trimmed
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_string(),
        );
    }
    let key = trimmed.split_once('=').map(|(k, _)| k.trim().to_string());
    match (table, key) {
        (Some(t), Some(k)) => Some(format!("{t}.{k}")),
        (None, Some(k)) => Some(k),
        (Some(t), None) => Some(t),
        (None, None) => None,
    }
}

/// Adds the line/column of a validation error's key, found by searching the text.
fn locate(text: &str, e: KeyError) -> ConfigError {
    let position = position_of_key(text, &e.key)
        .map(|(line, col)| format!(" (line {line}, column {col})"))
        .unwrap_or_default();
    ConfigError::Invalid(format!("key `{}`{position}: {}", e.key, e.message))
}

/// Line and column (1-based) of a dotted key such as `check.uri` or `server[1].name`.
fn position_of_key(text: &str, key: &str) -> Option<(usize, usize)> {
    let (table, index, leaf) = match key.split_once('.') {
        Some((t, leaf)) => match t.split_once('[') {
            Some((t, rest)) => (
                t.to_string(),
                rest.trim_end_matches(']').parse::<usize>().ok(),
                Some(leaf),
            ),
            None => (t.to_string(), None, Some(leaf)),
        },
        None => (key.to_string(), None, None),
    };
    let mut seen = 0usize;
    let mut in_table = false;
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            let name = t.trim_matches(|c| c == '[' || c == ']').trim();
            in_table = name == table && {
                let hit = index.is_none_or(|i| i == seen);
                if name == table && t.starts_with("[[") {
                    seen += 1;
                }
                hit
            };
            if in_table && leaf.is_none() {
                return Some((n + 1, line.find('[').unwrap_or(0) + 1));
            }
            continue;
        }
        if in_table {
            if let Some(leaf) = leaf {
                if let Some((k, _)) = t.split_once('=') {
                    if k.trim() == leaf {
                        return Some((n + 1, line.find(leaf).unwrap_or(0) + 1));
                    }
                }
            }
        }
    }
    None
}

/// Durations written as `3s`, `250ms`, `30m`. Zero is rejected: a zero interval or timeout is always a
/// mistake here ("disabled" is expressed by leaving an optional key out).
mod duration {
    use super::*;

    pub fn parse(s: &str) -> Result<Duration, String> {
        // humantime can panic on sums near u64::MAX seconds: refuse those before it reads them.
        super::limits::precheck_duration(s)?;
        let d = humantime::parse_duration(s.trim()).map_err(|e| {
            format!("invalid duration {s:?} ({e}): write a number and a unit, e.g. \"3s\", \"250ms\", \"30m\"")
        })?;
        if d.is_zero() {
            return Err(format!(
                "duration {s:?} is zero: give a positive duration, e.g. \"3s\""
            ));
        }
        Ok(d)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }
}

mod opt_duration {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::duration::deserialize(d).map(Some)
    }

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }
}

/// Formats a duration the way people write it in the file: `3s`, `250ms`, `30m`, `1h30m`.
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string().replace(' ', "")
}

/// Listener addresses: `IP:PORT`, `[IPv6]:PORT`, or HAProxy's `*:PORT` for all IPv4 addresses.
mod bind_addr {
    use super::*;

    pub fn parse(s: &str) -> Result<SocketAddr, String> {
        let s = s.trim();
        let addr = if let Some(port) = s.strip_prefix("*:").or_else(|| s.strip_prefix(':')) {
            port.parse::<u16>()
                .map(|p| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), p))
                .map_err(|_| ())
        } else {
            s.parse::<SocketAddr>().map_err(|_| ())
        };
        addr.map_err(|()| {
            format!("invalid listen address {s:?}: write IP:PORT, [IPv6]:PORT or *:PORT, e.g. \"*:5000\"")
        })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }

    pub fn serialize<S: Serializer>(a: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        if a.ip() == IpAddr::V4(Ipv4Addr::UNSPECIFIED) {
            s.serialize_str(&format!("*:{}", a.port()))
        } else {
            s.serialize_str(&a.to_string())
        }
    }
}

pub use bind_addr::parse as parse_bind;
pub use duration::parse as parse_duration;

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[[server]]\nname = \"a\"\naddress = \"127.0.0.11:5432\"\n";

    #[test]
    fn defaults_are_the_seed_haproxy_settings() {
        // haproxy-semantics.md §0: inter 3s, fall 3, rise 2, timeout check 5s, retries 2,
        // timeout connect 4s, client/server 30m, maxconn 100, expect status 200, check port 8008.
        let c = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(c.check.inter, Duration::from_secs(3));
        assert_eq!((c.check.rise.get(), c.check.fall.get()), (2, 3));
        assert_eq!(c.check.timeout, Duration::from_secs(5));
        assert_eq!(c.listen.retries, 2);
        assert_eq!(c.listen.timeout_connect, Duration::from_secs(4));
        assert_eq!(c.listen.timeout_client, Duration::from_secs(1800));
        assert_eq!(c.global.maxconn.get(), 100);
        assert_eq!(c.servers[0].maxconn.get(), 100);
        assert_eq!(c.check_target(0), "127.0.0.11:8008".parse().unwrap());
        assert_eq!(c.listen.bind, "0.0.0.0:5000".parse().unwrap());
        // "Check connect timeout | min(inter, timeout connect) = 3 s"
        assert_eq!(c.check_connect_timeout(), Duration::from_secs(3));
        // "timeout queue | unset, so = timeout connect = 4 s"
        assert_eq!(c.timeout_queue(), Duration::from_secs(4));
    }

    #[test]
    fn fastinter_and_downinter_fall_back_to_inter() {
        // haproxy-semantics.md §1.5 srv_getinter.
        let c = Config::from_toml(MINIMAL).unwrap();
        for (up, down) in [(true, false), (false, true), (false, false)] {
            assert_eq!(c.interval_for(up, down), Duration::from_secs(3));
        }
        let c = Config::from_toml(&format!(
            "[check]\nfastinter = \"1s\"\ndowninter = \"5s\"\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(c.interval_for(true, false), Duration::from_secs(3));
        assert_eq!(c.interval_for(false, true), Duration::from_secs(5));
        assert_eq!(c.interval_for(false, false), Duration::from_secs(1));
    }

    #[test]
    fn errors_name_key_and_position() {
        let e = Config::from_toml(&format!("[check]\ninter = \"0s\"\n{MINIMAL}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("check.inter"), "{e}");
        assert!(e.contains("line 2"), "{e}");
        assert!(e.contains("zero"), "{e}");

        let e = Config::from_toml(&format!(
            "{MINIMAL}[[server]]\nname = \"a\"\naddress = \"127.0.0.12:5432\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("server[1].name") && e.contains("line 5"), "{e}");
    }

    #[test]
    fn bind_accepts_haproxy_star() {
        assert_eq!(
            parse_bind("*:7000").unwrap(),
            "0.0.0.0:7000".parse().unwrap()
        );
        assert_eq!(
            parse_bind("[::1]:7000").unwrap(),
            "[::1]:7000".parse().unwrap()
        );
        assert!(parse_bind("localhost:7000").is_err());
    }

    #[test]
    fn every_ranged_key_is_checked_and_every_checked_key_has_a_range() {
        // validate() checks what ranged_values() lists against limits::LIMITS: the two must agree,
        // or a key would go unchecked (or fail as "no range is defined").
        let c = Config::from_toml(&format!(
            "[global]\nthreads = 2\n[listen]\ntimeout_queue = \"1s\"\n\
             [check]\nfastinter = \"1s\"\ndowninter = \"1s\"\n{MINIMAL}"
        ))
        .unwrap();
        let checked: HashSet<String> = c
            .to_file()
            .ranged_values()
            .into_iter()
            .map(|(k, _)| k.replace("server[0]", "server"))
            .collect();
        let table: HashSet<String> = limits::LIMITS.iter().map(|(k, _)| k.to_string()).collect();
        assert_eq!(checked, table);
    }

    #[test]
    fn round_trips_through_toml() {
        let c = Config::from_toml(MINIMAL).unwrap();
        let text = toml::to_string(&c.to_file()).unwrap();
        assert_eq!(Config::from_toml(&text).unwrap(), c);
    }
}
