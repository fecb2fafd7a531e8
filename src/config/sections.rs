//! The file format: one struct per TOML section, each field with its doc comment and default.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::address::ServerAddr;
pub use super::etcd::Etcd;
use super::listeners::{Balance, Binds, ByteSize, Fallback, Listeners, Role};
use super::values::{
    bind_addr, duration, opt_duration, CheckMethod, HttpVersion, LogFormat, OnMarkedDown,
    RelayMode, Verify,
};

/// The whole file as written. Optional keys fall back to the defaults documented on each field.
/// [`FileConfig::validate`] turns it into the [`Config`](super::Config) the program runs with.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    pub global: Global,
    /// One `[listen]` table, or several `[[listen]]` tables (one per HAProxy `listen` or
    /// `frontend`). Reads as the first listener (`config.listen.bind`).
    pub listen: Listeners,
    pub check: Check,
    /// The PostgreSQL nodes, in order. HAProxy's `server` lines. At least one.
    #[serde(rename = "server")]
    pub servers: Vec<Server>,
    pub stats: Stats,
    /// Optional: watch Patroni's leader and failover keys in etcd to re-check at once on a change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd: Option<Etcd>,
    /// How the process logs. Not written when it is the default, so an imported HAProxy file
    /// reads as before the section existed.
    #[serde(skip_serializing_if = "Log::is_default")]
    pub log: Log,
}

/// Logging to stderr (docs/operations.md, Logs).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Log {
    /// `text` (human-readable lines, as before the key existed) or `json` (one object per line,
    /// the field names documented in docs/operations.md). Default `text`.
    pub format: LogFormat,
    /// One line per ended session at `info`, with HAProxy's `tcplog` fields (client address and
    /// port, server, the backend connection's local port, queue/connect/total times, bytes,
    /// termination code). Default `false`.
    pub sessions: bool,
}

impl Log {
    fn is_default(&self) -> bool {
        *self == Log::default()
    }
}

/// Process-wide settings (HAProxy's `global` section).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Global {
    /// Maximum concurrent client sessions on the primary port. Beyond it new connections wait in the
    /// kernel's accept queue, without a timeout, as in HAProxy. Default 100. Unlike HAProxy, stats
    /// connections do not count against it (they have their own small limit).
    pub maxconn: NonZeroU32,
    /// How long a SIGTERM/SIGINT waits for sessions to finish before closing them. Default `30s`.
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// Threads that relay sessions (HAProxy's `nbthread`), each with its own event loop; each
    /// accepts from the one listening socket and a client stays on the thread that accepted it. Default: one per CPU the process may run on.
    pub threads: Option<NonZeroU32>,
}

/// The default of `global.maxconn` and of each server's `maxconn`: the seed's `maxconn 100`.
pub const DEFAULT_MAXCONN: NonZeroU32 = NonZeroU32::new(100).expect("non-zero");

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

/// A client-facing listener and how its sessions are handled (HAProxy's `defaults` + `listen
/// postgres`, or a `frontend` with its `backend`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Listen {
    /// Name shown in logs, stats and metrics (HAProxy's proxy name); unique among listeners.
    /// Default `postgres`.
    pub name: String,
    /// Address clients connect to, or a list of them (HAProxy's several `bind` lines). `*:PORT`
    /// means `0.0.0.0:PORT`, as in HAProxy. No two listeners share an address. Default `*:5000`.
    pub bind: Binds,
    /// Which nodes get new sessions: `primary` (the one confirmed primary, fail closed, with the
    /// hold), `replica` (running streaming replicas within `max_lag`), `any` (the primary or a
    /// replica, Patroni's `/read-only`) or `standby_leader` (a standby cluster's leader). Default
    /// `primary`.
    #[serde(skip_serializing_if = "is_default_role")]
    pub role: Role,
    /// `replica`/`any` only: `leastconn` (the node with the fewest sessions) or `roundrobin`
    /// (HAProxy's `balance`). Default `leastconn`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balance: Option<Balance>,
    /// `replica`/`any` only: a replica whose replay is more than this many bytes behind the
    /// primary gets no new session (Patroni's `/replica?lag=`), written `16384`, `"10MB"`,
    /// `"1GB"` (units B, kB, MB, GB, TB, powers of 1024). Default: no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_lag: Option<ByteSize>,
    /// `replica` only: where a session goes when no replica qualifies: `none` (refused) or
    /// `primary` (what HAProxy setups build with the primary as a `backup` server). Default
    /// `none`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
    /// The `[[server]]` names this listener routes to, a subset of them. Default: every server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub servers: Option<Vec<String>>,
    /// The PostgreSQL port this listener connects to on each node, instead of the port of the
    /// server's `address`: one cluster served on two ports, pgbouncer's (the servers' addresses)
    /// and PostgreSQL's own (a listener with `server_port = 5432`), as Pigsty's services are.
    /// The node, its check and its state are the same. Default: the address's port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_port: Option<u16>,
    /// Extra connection attempts to a server after the first one fails (HAProxy `retries`). Default 2.
    pub retries: u32,
    /// Time allowed for each TCP connection attempt to a server. Default `4s`.
    #[serde(with = "duration")]
    pub timeout_connect: Duration,
    /// Session closed after this long with no byte from either side (HAProxy `timeout client`).
    /// Default `30m`.
    #[serde(with = "duration")]
    pub timeout_client: Duration,
    /// Session closed after this long with no byte from either side (HAProxy `timeout server`).
    /// Default `30m`.
    #[serde(with = "duration")]
    pub timeout_server: Duration,
    /// How long a session may wait for a free slot on a server at its `maxconn`. Default: the value of
    /// `timeout_connect`, as in HAProxy.
    #[serde(with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub timeout_queue: Option<Duration>,
    /// What to do with established sessions when their server is marked DOWN:
    /// `shutdown-sessions` (close them at once, the seed's setting) or `none`. Default `shutdown-sessions`.
    pub on_marked_down: OnMarkedDown,
    /// While no primary is routable (during a failover), how long a new client waits for one before
    /// it gets a PostgreSQL error (SQLSTATE 57P03) instead of a connection. Default `10s`.
    #[serde(with = "duration")]
    pub hold_timeout: Duration,
    /// Read PostgreSQL's startup replies as they pass, until the first ReadyForQuery: replay the
    /// startup on the new primary if the old one answers "shutting down" (57P01/57P02/57P03) before
    /// authentication, and refuse a backend that reports `in_hot_standby = on`. Clients that
    /// negotiate TLS are relayed untouched after the SSLRequest. Default `true`.
    pub inspect_startup: bool,
    /// TCP keepalive on client sockets (HAProxy `option clitcpka`). Default `true`, unlike HAProxy:
    /// a client that vanished without a FIN (a crashed host, a dropped NAT mapping) would otherwise
    /// hold its `maxconn` slot until `timeout_client` (30 min). Not written when it is the default,
    /// so an imported HAProxy file reads as before.
    #[serde(skip_serializing_if = "is_default_client_keepalive")]
    pub client_keepalive: bool,
    /// TCP keepalive on server sockets (HAProxy `option srvtcpka`). Default `true`: a primary that
    /// lost power leaves no one to send a FIN or RST.
    #[serde(skip_serializing_if = "is_default_server_keepalive")]
    pub server_keepalive: bool,
    /// Idle time before the first keepalive probe (`TCP_KEEPIDLE`; HAProxy `clitcpka-idle` /
    /// `srvtcpka-idle`). Whole seconds. Default `60s`.
    #[serde(with = "duration", skip_serializing_if = "is_default_keepalive_idle")]
    pub keepalive_idle: Duration,
    /// Time between unanswered probes (`TCP_KEEPINTVL`; HAProxy `*tcpka-intvl`). Whole seconds.
    /// Default `10s`.
    #[serde(
        with = "duration",
        skip_serializing_if = "is_default_keepalive_interval"
    )]
    pub keepalive_interval: Duration,
    /// Unanswered probes before the kernel drops the connection (`TCP_KEEPCNT`; HAProxy
    /// `*tcpka-cnt`). Default 6: a dead peer is found after 60 s + 6 x 10 s = 2 min idle.
    #[serde(skip_serializing_if = "is_default_keepalive_count")]
    pub keepalive_count: u32,
    /// Who relays a session's bytes once its startup is inspected: `user` (the proxy's threads),
    /// `kernel` (a BPF sockmap redirects each socket's data to its peer inside the kernel; needs
    /// `CAP_BPF` and `CAP_NET_ADMIN`, and the proxy refuses to start where it cannot load) or
    /// `auto` (the kernel where it can, else the proxy's threads, saying why once). Default `user`.
    #[serde(skip_serializing_if = "is_default_relay")]
    pub relay: RelayMode,
    /// With `relay = "kernel" | "auto"`: reads (of either side, a PostgreSQL message or a batch of
    /// them each) a session relays in user space before it moves into the kernel, so that short
    /// sessions never pay the move (docs/benchmarks.md, "Moving late"). 0 moves every session as
    /// soon as its startup is inspected. Default 64.
    #[serde(skip_serializing_if = "is_default_kernel_after")]
    pub kernel_after: u32,
}

fn is_default_kernel_after(n: &u32) -> bool {
    *n == Listen::default().kernel_after
}

fn is_default_relay(r: &RelayMode) -> bool {
    *r == RelayMode::default()
}

// The keepalive keys came after the import's golden output: at their defaults they are not written,
// so importing an HAProxy file prints what it printed before they existed.
fn is_default_role(r: &Role) -> bool {
    *r == Role::default()
}
fn is_default_client_keepalive(on: &bool) -> bool {
    *on == Listen::default().client_keepalive
}
fn is_default_server_keepalive(on: &bool) -> bool {
    *on == Listen::default().server_keepalive
}
fn is_default_keepalive_idle(d: &Duration) -> bool {
    *d == Listen::default().keepalive_idle
}
fn is_default_keepalive_interval(d: &Duration) -> bool {
    *d == Listen::default().keepalive_interval
}
fn is_default_keepalive_count(n: &u32) -> bool {
    *n == Listen::default().keepalive_count
}

/// The HTTP health check against each node's Patroni REST API (HAProxy `option httpchk`,
/// `http-check expect status`, `default-server inter/fastinter/downinter/rise/fall`, `timeout check`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Check {
    /// HTTP method. Default `GET`: Patroni answers `GET /` exactly like HAProxy's `OPTIONS /` and also
    /// returns a JSON body with `role`, `state` and `timeline`, which routing uses.
    pub method: CheckMethod,
    /// Request path. Default `/` (Patroni rewrites it to `/primary`).
    pub uri: String,
    /// HTTP version in the request line: `HTTP/1.0` or `HTTP/1.1`. Default `HTTP/1.0`.
    pub version: HttpVersion,
    /// The only status that passes. Default 200.
    pub expect_status: u16,
    /// Default REST port of every server (HAProxy `check port`). Default 8008.
    pub port: u16,
    /// Time between the end of one check and the start of the next while fully UP. Default `3s`.
    #[serde(with = "duration")]
    pub inter: Duration,
    /// Interval in transitional states (`UP 2/3`, `DOWN 1/2`, not yet checked). Default: `inter`.
    #[serde(with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub fastinter: Option<Duration>,
    /// Interval while fully DOWN. Default: `inter`.
    #[serde(with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub downinter: Option<Duration>,
    /// Consecutive passed checks that mark a DOWN server UP. Default 2.
    pub rise: NonZeroU32,
    /// Consecutive failed checks that mark an UP server DOWN. Default 3.
    pub fall: NonZeroU32,
    /// Time allowed for the answer once the TCP connection is up (HAProxy `timeout check`). The connect
    /// itself is bounded by min(`inter`, `listen.timeout_connect`). Default `5s`.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Interval for every node while no primary is confirmed, or while the routed primary's last
    /// check failed or denied the role: how fast a new primary is found. Set it to `inter` for
    /// HAProxy's pace. Default `200ms`.
    #[serde(with = "duration")]
    pub failover_inter: Duration,
    /// How long the address a server's host name resolved to is used before the name is resolved
    /// again (by the next check after it). Servers written with an IP address are never resolved.
    /// Default `10s` (HAProxy's `hold valid`).
    #[serde(with = "duration", skip_serializing_if = "is_default_resolve_interval")]
    pub resolve_interval: Duration,
    /// Run every check over TLS, for Patroni's REST API served over HTTPS (`restapi.certfile`):
    /// HAProxy's `check-ssl`. The handshake counts against `timeout`, as the HTTP exchange does.
    /// Default `false`.
    #[serde(skip_serializing_if = "is_false")]
    pub ssl: bool,
    /// With `ssl`: `required` verifies the server's certificate against `ca_file` and its name
    /// against `sni` (or the check address); `none` accepts any certificate. HAProxy's server
    /// `verify`. Default `required`, as HAProxy's `ssl-server-verify` default.
    #[serde(skip_serializing_if = "is_default_verify")]
    pub verify: Verify,
    /// With `verify = "required"`: PEM file of the CA certificates the server's certificate must
    /// chain to (HAProxy `ca-file`). Required then, as HAProxy requires it: the system's roots do
    /// not sign Patroni certificates. Read when the configuration is loaded or reloaded. Default:
    /// none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM file of the client certificate (chain) sent to a REST API with
    /// `restapi.verify_client`, optionally followed by its private key (HAProxy `crt`). Default:
    /// none (no client certificate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crt: Option<PathBuf>,
    /// PEM file of the private key of `crt`, when `crt` does not contain it. Default: none (the
    /// key is read from `crt`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// The name sent as SNI and verified against the server's certificate (HAProxy `sni` with
    /// `verifyhost`), a DNS name or an IP address. Default: none: no SNI is sent and the
    /// certificate must name the check address as an IP address (subjectAltName `IP:`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// `[check.sql]`: also ask each node's PostgreSQL `SELECT pg_is_in_recovery()` as a
    /// monitoring role (docs/health-checking.md, "The SQL check"). Default: none (off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sql: Option<super::sql::SqlCheck>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_default_verify(v: &Verify) -> bool {
    *v == Verify::default()
}

/// One PostgreSQL node (HAProxy `server NAME ADDR maxconn N check port P`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// Unique name, used in logs, stats and metrics labels.
    pub name: String,
    /// PostgreSQL address: `IP:PORT`, `[IPv6]:PORT` or `NAME:PORT`. A host name is resolved by the
    /// system resolver (`/etc/hosts`, then DNS) when the proxy runs, before each check once
    /// `check.resolve_interval` has passed; `check` does not resolve it. A name that does not
    /// resolve fails that server's checks (visible on the dashboard), it is not a start-up error.
    pub address: ServerAddr,
    /// Maximum concurrent sessions to this server; more wait in a FIFO queue for `timeout_queue`.
    /// Default 100.
    #[serde(default = "default_server_maxconn")]
    pub maxconn: NonZeroU32,
    /// REST port for the health check. Default: `check.port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_port: Option<u16>,
    /// REST address for the health check (HAProxy `addr`). Default: the server's IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_addr: Option<IpAddr>,
    /// Patroni's member name of this node (its `name` in patroni.yml, the value of the leader key
    /// in etcd when it leads), for the REST outage ride-through (`etcd.ride_through`). Default:
    /// none: the name this node's own REST answer gives (`patroni.name`, sent by Patroni 4) is
    /// used once a check has read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
}

fn is_default_resolve_interval(d: &Duration) -> bool {
    *d == Check::default().resolve_interval
}

/// The stats listener: dashboard, CSV/JSON exports and Prometheus metrics.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Stats {
    /// Address of the stats listener. `*:PORT` means `0.0.0.0:PORT`. Default `*:7000`.
    #[serde(with = "bind_addr")]
    pub bind: SocketAddr,
    /// Optional HTTP Basic credentials, `user:password` (HAProxy `stats auth`). Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    /// User name of the runtime control API (`/admin/...`: drain, maint, ready, show), HAProxy's
    /// `stats admin`. The API is off unless both `admin_user` and `admin_password` are set. These
    /// credentials also open every read-only page when `auth` is set. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_user: Option<String>,
    /// Password of `admin_user` (HTTP Basic; use a long random one and keep the file readable
    /// only by the service). `patroni-proxy ctl` takes it from `PATRONI_PROXY_ADMIN_PASSWORD`
    /// when set. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_password: Option<String>,
}

// Every default, once. serde's container-level `#[serde(default)]` fills a missing key from these
// same impls, and `import-haproxy` starts from them.

impl Default for Global {
    fn default() -> Self {
        Self {
            maxconn: DEFAULT_MAXCONN,
            shutdown_grace: Duration::from_secs(30),
            threads: None,
        }
    }
}

impl Default for Listen {
    fn default() -> Self {
        let idle = Duration::from_secs(30 * 60);
        Self {
            name: "postgres".into(),
            bind: Binds::from(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 5000)),
            role: Role::Primary,
            balance: None,
            max_lag: None,
            fallback: None,
            servers: None,
            server_port: None,
            retries: 2,
            timeout_connect: Duration::from_secs(4),
            timeout_client: idle,
            timeout_server: idle,
            timeout_queue: None,
            on_marked_down: OnMarkedDown::ShutdownSessions,
            hold_timeout: Duration::from_secs(10),
            inspect_startup: true,
            client_keepalive: true,
            server_keepalive: true,
            keepalive_idle: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(10),
            keepalive_count: 6,
            relay: RelayMode::User,
            kernel_after: 64,
        }
    }
}

impl Default for Check {
    fn default() -> Self {
        Self {
            method: CheckMethod::Get,
            uri: "/".into(),
            version: HttpVersion::Http10,
            expect_status: 200,
            port: 8008,
            inter: Duration::from_secs(3),
            fastinter: None,
            downinter: None,
            rise: NonZeroU32::new(2).expect("non-zero"),
            fall: NonZeroU32::new(3).expect("non-zero"),
            timeout: Duration::from_secs(5),
            failover_inter: Duration::from_millis(200),
            resolve_interval: Duration::from_secs(10),
            ssl: false,
            verify: Verify::Required,
            ca_file: None,
            crt: None,
            key: None,
            sni: None,
            sql: None,
        }
    }
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 7000),
            auth: None,
            admin_user: None,
            admin_password: None,
        }
    }
}

// `Server` has required keys, so no `Default`: its optional keys default here.

fn default_server_maxconn() -> NonZeroU32 {
    DEFAULT_MAXCONN
}
