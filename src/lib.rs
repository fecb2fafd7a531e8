//! patroni-proxy: an L4 proxy that sends every PostgreSQL connection to the current Patroni primary.
//!
//! Layout, in the order data flows (docs/architecture.md follows the paths through them):
//! - [`config`]: the TOML file, its defaults and validation; [`import`] converts an HAProxy config.
//! - [`health`]: HTTP checks against Patroni's REST API, what an answer says about the node's role,
//!   the optional SQL check of PostgreSQL itself, and the pure rise/fall state machine.
//! - [`state`]: the snapshot, its pure core (input -> next snapshot + effects) and its one owner.
//! - [`dcs`]: the optional etcd watch of Patroni's leader and failover keys.
//! - [`routing`]: the pure choice of the one routed primary.
//! - [`backend`]: IO-layer counters, server slots and the session kill switch.
//! - [`pgwire`]: the PostgreSQL messages the proxy reads and writes, and the startup inspector.
//! - [`proxy`]: accept loop, sessions, byte relay; [`net`]: the accept-with-backoff both listeners use.
//! - [`sockmap`]: the kernel relay's BPF program and maps (`listen.relay = "kernel"`).
//! - [`stats`]: the stats listener (dashboard, exports, metrics, runtime control); [`ctl`] is its
//!   command-line client.
//! - [`logging`]: non-blocking, lossy stderr logging.
//! - [`signals`]: SIGTERM/SIGINT drain (twice: close now), SIGHUP reloads ([`reload`]: the pure
//!   plan of what a new file changes, and the swap).
//! - [`supervisor`]: starts, supervises and drains all of the above; [`activation`]: listening
//!   sockets inherited from systemd (`LISTEN_FDS`), so a restart refuses no connection.
//! - [`time`]: deadline arithmetic that saturates instead of overflowing.

pub mod activation;
pub mod backend;
pub mod config;
pub mod ctl;
pub mod dcs;
pub mod health;
pub mod import;
pub mod logging;
pub mod net;
pub mod pgwire;
pub mod proxy;
pub mod reload;
pub mod routing;
pub mod signals;
pub mod sockmap;
pub mod state;
pub mod stats;
pub mod supervisor;
pub mod time;
