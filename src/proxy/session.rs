//! One client session: route to the current primary, wait for a server slot (`maxconn` + FIFO queue
//! with `timeout queue`), connect with `timeout connect` and `retries`, relay until either side
//! closes, the session idles out, or the server's sessions are shut down.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::relay::{self, End, Meters, Side};
use crate::backend::GaugeGuard;
use crate::state::Shared;

/// HAProxy's two-letter termination states (`haproxy-semantics.md` §2.8), for the session log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    /// Normal close by either end.
    Normal,
    /// No routable primary: `SC` with `<NOSRV>`.
    NoServer,
    /// Retries exhausted after refusals (`SC`) or timeouts (`sC`).
    ConnectRefused,
    ConnectTimeout,
    /// `timeout queue` while waiting for a server slot.
    QueueTimeout,
    /// Closed because the server was marked DOWN or lost the primary role (`D-`), or forced shutdown.
    Killed,
    /// The routed primary changed before the session was connected.
    Rerouted,
    /// Idle timeouts (`cD`, `sD`).
    ClientIdle,
    ServerIdle,
    /// Aborted by an error on that side (`CD`, `SD`).
    ClientError,
    ServerError,
}

impl Termination {
    pub fn code(self) -> &'static str {
        match self {
            Termination::Normal => "--",
            Termination::NoServer | Termination::ConnectRefused => "SC",
            Termination::ConnectTimeout => "sC",
            Termination::QueueTimeout => "sQ",
            Termination::Killed => "D-",
            Termination::Rerouted => "DC",
            Termination::ClientIdle => "cD",
            Termination::ServerIdle => "sD",
            Termination::ClientError => "CD",
            Termination::ServerError => "SD",
        }
    }
}

/// Runs a session to its end. Dropping the client socket closes it (FIN), which is how every early
/// exit here answers the client, as HAProxy does in TCP mode.
pub async fn handle(client: TcpStream, peer: SocketAddr, shared: &Shared) -> Termination {
    let start = Instant::now();
    let fe = &shared.frontend;
    fe.stot.fetch_add(1, Relaxed);
    let _fe_open = GaugeGuard::new(&fe.scur, Some(&fe.smax));
    // Small PostgreSQL messages must not wait for Nagle.
    let _ = client.set_nodelay(true);

    let Some(node) = shared.current().primary else {
        fe.no_server.fetch_add(1, Relaxed);
        log_end(shared, peer, None, start, 0, Termination::NoServer);
        return Termination::NoServer;
    };
    // Taken before queueing, so a DOWN while this session waits or connects closes it too.
    let kill = shared.backends[node].session_token();
    let (termination, bytes) = connect_and_relay(&client, shared, node, &kill).await;
    log_end(shared, peer, Some(node), start, bytes, termination);
    termination
}

async fn connect_and_relay(
    client: &TcpStream,
    shared: &Shared,
    node: usize,
    kill: &CancellationToken,
) -> (Termination, u64) {
    let cfg = &shared.config;
    let backend = &shared.backends[node];
    let c = &backend.counters;

    // A slot on the server: at once if free, else FIFO behind earlier waiters for `timeout queue`.
    let _slot = match backend.slots.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(_) => {
            let _queued = GaugeGuard::new(&c.qcur, Some(&c.qmax));
            tokio::select! {
                _ = kill.cancelled() => return (Termination::Killed, 0),
                r = tokio::time::timeout(cfg.timeout_queue(), backend.slots.clone().acquire_owned()) => match r {
                    Ok(p) => p.expect("the semaphore is never closed"),
                    Err(_) => {
                        c.qtimeouts.fetch_add(1, Relaxed);
                        shared.frontend.queue_timeout.fetch_add(1, Relaxed);
                        return (Termination::QueueTimeout, 0);
                    }
                },
            }
        }
    };
    if shared.current().primary != Some(node) {
        // The primary changed while we queued: never connect to the node that lost the role.
        shared.frontend.rerouted.fetch_add(1, Relaxed);
        return (Termination::Rerouted, 0);
    }
    c.stot.fetch_add(1, Relaxed);
    backend.touch_last_session();
    let _open = GaugeGuard::new(&c.scur, Some(&c.smax));

    let server = tokio::select! {
        _ = kill.cancelled() => return (Termination::Killed, 0),
        r = connect(shared, node) => match r {
            Ok(s) => s,
            Err(t) => return (t, 0),
        },
    };
    let _ = server.set_nodelay(true);

    let fe = &shared.frontend;
    let meters = Meters {
        up: [&fe.bin, &c.bin],
        down: [&fe.bout, &c.bout],
    };
    let end = tokio::select! {
        end = relay::relay(client, &server, meters, cfg.listen.timeout_client, cfg.listen.timeout_server) => end,
        _ = kill.cancelled() => {
            c.killed.fetch_add(1, Relaxed);
            return (Termination::Killed, 0);
        }
    };
    let t = match end {
        End::Closed => Termination::Normal,
        End::Idle(Side::Client) => Termination::ClientIdle,
        End::Idle(Side::Server) => Termination::ServerIdle,
        End::Error(side, e) => {
            tracing::debug!(side = side.as_str(), error = %e, "session aborted");
            match side {
                Side::Client => {
                    c.cli_abrt.fetch_add(1, Relaxed);
                    Termination::ClientError
                }
                Side::Server => {
                    c.srv_abrt.fetch_add(1, Relaxed);
                    Termination::ServerError
                }
            }
        }
    };
    (t, 0)
}

/// Connects to the server with `timeout connect` per attempt and up to `retries` more attempts on the
/// same server: 1 s turn-around (min(1 s, timeout connect)) after a refusal, none after a timeout
/// (`haproxy-semantics.md` §2.5). Unlike HAProxy, a retry is abandoned if the node stopped being the
/// routed primary in the meantime.
async fn connect(shared: &Shared, node: usize) -> Result<TcpStream, Termination> {
    let cfg = &shared.config;
    let addr = cfg.servers[node].address;
    let c = &shared.backends[node].counters;
    let turn_around = Duration::from_secs(1).min(cfg.listen.timeout_connect);
    let mut attempt = 0;
    loop {
        let refused = match tokio::time::timeout(
            cfg.listen.timeout_connect,
            TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => {
                tracing::debug!(server = %addr, error = %e, attempt, "connect failed");
                true
            }
            Err(_) => false,
        };
        if attempt == cfg.listen.retries {
            c.econ.fetch_add(1, Relaxed);
            shared.frontend.connect_failed.fetch_add(1, Relaxed);
            return Err(if refused {
                Termination::ConnectRefused
            } else {
                Termination::ConnectTimeout
            });
        }
        attempt += 1;
        c.wretr.fetch_add(1, Relaxed);
        if refused {
            tokio::time::sleep(turn_around).await;
        }
        if shared.current().primary != Some(node) {
            shared.frontend.rerouted.fetch_add(1, Relaxed);
            return Err(Termination::Rerouted);
        }
    }
}

fn log_end(
    shared: &Shared,
    peer: SocketAddr,
    node: Option<usize>,
    start: Instant,
    _bytes: u64,
    t: Termination,
) {
    let px = &shared.config.listen.name;
    let server = node.map_or("<NOSRV>", |n| shared.server_name(n));
    tracing::debug!(
        target: "patroni_proxy::session",
        "{peer} {px} {px}/{server} Tt={}ms {}",
        start.elapsed().as_millis(),
        t.code()
    );
}
