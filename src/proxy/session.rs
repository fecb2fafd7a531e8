//! One client session: route to the current primary (holding the client while there is none), wait
//! for a server slot (`maxconn` + FIFO queue with `timeout queue`), connect with `timeout connect`
//! and `retries`, watch PostgreSQL's startup replies (replay on the new primary when the old one is
//! shutting down; refuse a standby), then relay until either side closes, the session idles out, or
//! the server's sessions are shut down.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};
use tokio_util::task::TaskTracker;

use super::balance::Admission;
use super::relay::{End, Meters, Relay, Side};
use super::startup::{startup, write_all, Pending, Startup};
use super::termination::Termination;
use crate::backend::relaying::Registered;
use crate::backend::{Counters, GaugeGuard, Ticket};
use crate::pgwire::{self, FirstMessage};
use crate::routing::Claim;
use crate::state::Shared;

const FAILOVER_MESSAGE: &str =
    "failover in progress: no primary is available right now (patroni-proxy), retry";
const STANDBY_MESSAGE: &str =
    "failover in progress: the server is a standby (patroni-proxy), retry";
const SHUTDOWN_MESSAGE: &str = "patroni-proxy is shutting down, retry";
const LOCAL_MESSAGE: &str =
    "patroni-proxy is out of a local resource (file descriptors, memory or ports), retry";

/// Runs one client's session: spawned once per accepted client, holding its place under
/// `global.maxconn` (`admission`) until the session ends. Dropping the client socket closes it (FIN),
/// which is how every early exit without a PostgreSQL error answers the client, as HAProxy does in
/// TCP mode.
///
/// This task routes, holds, queues, connects and inspects the startup; for the relay it hands the
/// sockets to a `RelayTask` of their own on `sessions` and ends. An idle connection's memory is
/// mostly its task, so the long-lived task is a small hand-written struct rather than this future,
/// whose setup states are large (docs/benchmarks.md; a unit test keeps the relay task small).
pub async fn run(
    client: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    admission: Admission,
    sessions: TaskTracker,
) {
    let start = Instant::now();
    let fe = &shared.frontend;
    fe.stot.fetch_add(1, Relaxed);
    let fe_open = GaugeGuard::new(&fe.scur, Some(&fe.smax));
    let (t, node) = match establish(client, &shared, start).await {
        Setup::Done(t, node) => (t, node),
        Setup::Relay(s) => {
            let backend = &shared.backends[s.node];
            // Joins the server's kill registry unless a kill came after the ticket was taken.
            match backend
                .relaying
                .insert(s.client, s.server, || !backend.is_killed(s.ticket))
            {
                Ok(io) => {
                    // The relay task takes over both gauges, the slots and the log line.
                    s.open.disarm();
                    fe_open.disarm();
                    let (relay, deadline) = Relay::new(
                        shared.config.listen.timeout_client,
                        shared.config.listen.timeout_server,
                    );
                    sessions.spawn(RelayTask {
                        io,
                        node: s.node,
                        ticket: s.ticket,
                        _slot: s.slot,
                        _admission: admission,
                        peer,
                        start,
                        relay,
                        sleep: tokio::time::sleep_until(deadline),
                        shared: shared.clone(),
                    });
                    return;
                }
                Err(_) => {
                    backend.counters.killed.fetch_add(1, Relaxed);
                    (Termination::Killed, Some(s.node))
                }
            }
        }
    };
    log_end(&shared, peer, node, start, t);
}

/// How the setup phase ended: with the session, or with a relay to run.
enum Setup<'s> {
    Done(Termination, Option<usize>),
    Relay(Established<'s>),
}

/// A client connected to the primary, startup inspected.
struct Established<'s> {
    client: TcpStream,
    server: TcpStream,
    node: usize,
    ticket: Ticket,
    /// The server slot (`maxconn`) and the server's `scur`.
    slot: OwnedSemaphorePermit,
    open: GaugeGuard<'s>,
}

pin_project_lite::pin_project! {
    /// The relay phase of a session, a task of its own: 360 bytes where the `async fn` that set
    /// the session up is several KiB, and tokio sizes a task for the largest state of its future.
    /// Waits only on its two sockets and its idle timer: `shutdown-sessions` reaches it through the
    /// server's registry ([`crate::backend::relaying`]), which shuts its sockets down.
    struct RelayTask {
        io: Registered,
        shared: Arc<Shared>,
        node: usize,
        ticket: Ticket,
        _slot: OwnedSemaphorePermit,
        _admission: Admission,
        peer: SocketAddr,
        start: Instant,
        relay: Relay,
        #[pin]
        sleep: Sleep,
    }

    impl PinnedDrop for RelayTask {
        fn drop(this: Pin<&mut Self>) {
            // The gauges the setup task disarmed; every way a task ends (including a forced
            // runtime shutdown) goes through here.
            let this = this.project();
            this.shared.frontend.scur.fetch_sub(1, Relaxed);
            this.shared.backends[*this.node].counters.scur.fetch_sub(1, Relaxed);
        }
    }
}

impl Future for RelayTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let fe = &this.shared.frontend;
        let backend = &this.shared.backends[*this.node];
        let meters = Meters {
            up: [&fe.bin, &backend.counters.bin],
            down: [&fe.bout, &backend.counters.bout],
        };
        let end =
            ready!(this
                .relay
                .poll(cx, this.io.client(), this.io.server(), &meters, this.sleep));
        // A kill shows up as the end of both streams: name it for what it was.
        let t = if backend.is_killed(*this.ticket) {
            backend.counters.killed.fetch_add(1, Relaxed);
            Termination::Killed
        } else {
            relay_end(&backend.counters, end)
        };
        log_end(this.shared, *this.peer, Some(*this.node), *this.start, t);
        Poll::Ready(())
    }
}

/// Routes the client to the primary (holding it while there is none), retrying on the next primary
/// when the chosen one turns out to be leaving before any server byte reached the client.
async fn establish(client: TcpStream, shared: &Shared, start: Instant) -> Setup<'_> {
    // Small PostgreSQL messages must not wait for Nagle.
    let _ = client.set_nodelay(true);
    // A client that vanished without a FIN (host down, cable cut) would keep its maxconn place
    // until `timeout client` (30 min): keepalive finds it within idle + interval x count.
    tune(&client, shared.config.client_keepalive());
    let deadline = crate::time::deadline(start, shared.config.listen.hold_timeout);
    let mut pending = Pending::default();
    let mut avoid: Option<(usize, u64)> = None;
    let mut last_node = None;
    // The node that closed on this client's startup without a word: once is a crash, twice on the
    // same node is this client's startup (PostgreSQL drops malformed ones silently).
    let mut vanished_on = None;
    loop {
        let node = match hold(shared, &client, deadline, &mut pending, avoid).await {
            Ok(n) => n,
            Err(t) => return Setup::Done(t, last_node),
        };
        last_node = Some(node);
        // Taken before queueing, so a DOWN while this session waits or connects closes it too.
        let Some(ticket) = shared.ticket_for(node) else {
            continue;
        };
        match connect_and_start(&client, shared, node, ticket, &mut pending).await {
            Step::Done(t) => return Setup::Done(t, last_node),
            Step::Ready { server, slot, open } => {
                return Setup::Relay(Established {
                    client,
                    server,
                    node,
                    ticket,
                    slot,
                    open,
                })
            }
            Step::Retry(evidence) => {
                match evidence {
                    Evidence::None => {}
                    Evidence::Authoritative(reason) => shared.suspect(node, reason, false),
                    Evidence::Vanished(reason) if vanished_on == Some(node) => {
                        tracing::debug!(
                            server = shared.server_name(node),
                            "{reason} again: giving up on this client"
                        );
                        return Setup::Done(Termination::ServerError, last_node);
                    }
                    Evidence::Vanished(reason) => {
                        vanished_on = Some(node);
                        shared.recheck(node, reason);
                    }
                    Evidence::Unreachable(reason) => shared.recheck(node, reason),
                }
                avoid = Some((node, shared.current().seq));
            }
        }
    }
}

/// The termination of a relay that ran, counted on its server.
fn relay_end(c: &Counters, end: End) -> Termination {
    match end {
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
    }
}

/// Waits for a routable primary (not `avoid.0` unless confirmed again after snapshot `avoid.1`).
/// Meanwhile reads the client's first message so it can be forwarded, or answered on timeout.
async fn hold(
    shared: &Shared,
    client: &TcpStream,
    deadline: Instant,
    pending: &mut Pending,
    avoid: Option<(usize, u64)>,
) -> Result<usize, Termination> {
    let fe = &shared.frontend;
    let mut rx = shared.subscribe();
    let mut holding: Option<GaugeGuard<'_>> = None;
    loop {
        let usable = {
            let snap = rx.borrow_and_update();
            snap.primary.filter(|&p| match avoid {
                Some((a, seq)) if a == p => {
                    matches!(snap.nodes[p].claim, Claim::Primary { seq: s, .. } if s > seq)
                }
                _ => true,
            })
        };
        if let Some(p) = usable {
            if holding.is_some() {
                fe.hold_released.fetch_add(1, Relaxed);
            }
            return Ok(p);
        }
        if holding.is_none() {
            if avoid.is_none() {
                fe.no_server.fetch_add(1, Relaxed);
            }
            fe.held.fetch_add(1, Relaxed);
            holding = Some(GaugeGuard::new(&fe.holding, None));
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                fe.hold_timeouts.fetch_add(1, Relaxed);
                refuse(client, pending, "57P03", FAILOVER_MESSAGE).await;
                return Err(Termination::HoldTimeout);
            }
            // Shutting down: the checks have stopped, no primary will be confirmed for it.
            _ = shared.draining.cancelled() => {
                refuse(client, pending, "57P03", SHUTDOWN_MESSAGE).await;
                return Err(Termination::Killed);
            }
            // The state owner is gone: the proxy is stopping, no primary will be confirmed.
            r = rx.changed() => if r.is_err() {
                refuse(client, pending, "57P03", SHUTDOWN_MESSAGE).await;
                return Err(Termination::Killed);
            },
            r = client.readable(), if pending.wants_more() => {
                if r.is_err() || !read_into(client, &mut pending.buf)? {
                    return Err(Termination::ClientError);
                }
            }
            // A client that gives up while held must not keep its maxconn place until the hold
            // times out, nor open a backend connection for nobody when it is released.
            _ = hung_up(client), if !pending.wants_more() => return Err(Termination::ClientError),
        }
    }
}

/// Resolves when a held client whose first message is complete closes its side. A PostgreSQL client
/// sends nothing more before the server answers; if one does, its bytes stay in the socket for the
/// server and the watch stops here (peeking again would spin).
async fn hung_up(s: &TcpStream) {
    let mut b = [0u8; 1];
    match s.peek(&mut b).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}

/// Reads what the socket has into `buf`. `Ok(false)` on end-of-stream.
fn read_into(s: &TcpStream, buf: &mut Vec<u8>) -> Result<bool, Termination> {
    let mut chunk = [0u8; 4096];
    match s.try_read(&mut chunk) {
        Ok(0) => Ok(false),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(true),
        Err(_) => Err(Termination::ClientError),
    }
}

/// Answers a client we cannot serve with a PostgreSQL FATAL error (`code`, e.g. 57P03), declining
/// TLS first if it asked for it, so drivers report "failover in progress" rather than a reset.
async fn refuse(client: &TcpStream, pending: &mut Pending, code: &str, message: &str) {
    let until = Instant::now() + Duration::from_secs(2);
    loop {
        match pgwire::classify(&pending.buf) {
            FirstMessage::SslRequest | FirstMessage::GssEncRequest => {
                if write_all(client, b"N").await.is_err() {
                    return;
                }
                pending.buf.drain(..8);
            }
            FirstMessage::CancelRequest | FirstMessage::Other => return,
            FirstMessage::Startup { len } if pending.buf.len() >= len => break,
            _ => {
                // Wait (briefly) for the rest of the startup message; answer anyway after that.
                let more = tokio::select! {
                    _ = tokio::time::sleep_until(until) => break,
                    r = client.readable() => r.is_ok() && matches!(read_into(client, &mut pending.buf), Ok(true)),
                };
                if !more {
                    return;
                }
            }
        }
    }
    let _ = write_all(client, &pgwire::error_response(code, message)).await;
}

enum Step<'s> {
    Done(Termination),
    /// Connected and past the startup inspection: relay from here on.
    Ready {
        server: TcpStream,
        slot: OwnedSemaphorePermit,
        open: GaugeGuard<'s>,
    },
    /// Go back to holding and try the (next) primary, replaying `Pending`.
    Retry(Evidence),
}

/// What a failed attempt says about the server. Only the server's own word may take it out of
/// routing; what a client can provoke, or a single failure, only hastens a re-check (issue 11
/// item 2: one client rejected every 3 s kept the cluster without a primary for 20 of 26 s).
enum Evidence {
    None,
    /// PostgreSQL itself said it cannot take connections (57P01/57P02/57P03).
    Authoritative(String),
    /// Closed or reset before any byte of an answer to the StartupMessage: a postmaster going
    /// away, or a startup it dropped silently.
    Vanished(String),
    /// Connecting failed after every retry.
    Unreachable(String),
}

async fn connect_and_start<'s>(
    client: &TcpStream,
    shared: &'s Shared,
    node: usize,
    ticket: Ticket,
    pending: &mut Pending,
) -> Step<'s> {
    let cfg = &shared.config;
    let backend = &shared.backends[node];
    let c = &backend.counters;

    // A slot on the server: at once if free, else FIFO behind earlier waiters for `timeout queue`.
    let slot = match backend.slots.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(_) => {
            let _queued = GaugeGuard::new(&c.qcur, Some(&c.qmax));
            tokio::select! {
                // Marked DOWN while we queued: nothing reached the client yet, wait for the next.
                _ = backend.killed(ticket) => return Step::Retry(Evidence::None),
                r = tokio::time::timeout(cfg.timeout_queue(), backend.slots.clone().acquire_owned()) => match r {
                    Ok(p) => p.expect("the semaphore is never closed"),
                    Err(_) => {
                        c.qtimeouts.fetch_add(1, Relaxed);
                        shared.frontend.queue_timeout.fetch_add(1, Relaxed);
                        return Step::Done(Termination::QueueTimeout);
                    }
                },
            }
        }
    };
    if shared.current().primary != Some(node) {
        // The primary changed while we queued: never connect to the node that lost the role.
        return Step::Retry(Evidence::None);
    }
    c.stot.fetch_add(1, Relaxed);
    backend.touch_last_session();
    let open = GaugeGuard::new(&c.scur, Some(&c.smax));

    let server = tokio::select! {
        // Marked DOWN while we were still connecting (e.g. retrying a crashed primary's refused
        // port): no server byte reached the client, so it is held for the next primary like any
        // client that finds none, instead of being reset by shutdown-sessions.
        _ = backend.killed(ticket) => return Step::Retry(Evidence::None),
        r = Box::pin(connect(shared, node)) => match r {
            Ok(s) => s,
            Err(ConnectError::Rerouted) => return Step::Retry(Evidence::None),
            // Retries exhausted before any server byte reached the client: rather than a bare
            // close (HAProxy's `SC`), hold it for the next primary -- the node may be restarting
            // PostgreSQL under a held leader lock -- and answer 57P03 if none comes in time.
            Err(ConnectError::Failed(t)) => {
                return Step::Retry(Evidence::Unreachable(format!(
                    "PostgreSQL refused or timed out {} connection attempts ({})",
                    cfg.listen.retries.saturating_add(1),
                    t.code()
                )))
            }
            // Our own shortage says nothing about the server: not counted against it, not retried
            // (it would fail the same way), and the client is told why.
            Err(ConnectError::Local(e)) => {
                shared.frontend.local_errors.fetch_add(1, Relaxed);
                tracing::error!(server = %cfg.servers[node].address, error = %e,
                    "cannot connect a client: the proxy is out of a local resource; not counted against the server");
                refuse(client, pending, "53000", LOCAL_MESSAGE).await;
                return Step::Done(Termination::LocalResource);
            }
        },
    };
    let _ = server.set_nodelay(true);
    tune(&server, cfg.server_keepalive());

    let fe = &shared.frontend;
    let meters = Meters {
        up: [&fe.bin, &c.bin],
        down: [&fe.bout, &c.bout],
    };
    if cfg.listen.inspect_startup {
        let startup = tokio::select! {
            _ = backend.killed(ticket) => {
                // Marked DOWN before the server said anything to the client: held for the next
                // primary and its startup replayed there, like a client still connecting.
                if !pending.committed {
                    return Step::Retry(Evidence::None);
                }
                c.killed.fetch_add(1, Relaxed);
                return Step::Done(Termination::Killed);
            }
            r = tokio::time::timeout(cfg.listen.timeout_client, Box::pin(startup(client, &server, pending, &meters))) => r,
        };
        match startup {
            Err(_) => return Step::Done(Termination::ClientIdle),
            Ok(Startup::Relay) => {}
            Ok(Startup::Done(t)) => return Step::Done(t),
            Ok(Startup::Leaving(code)) => {
                shared.frontend.replays.fetch_add(1, Relaxed);
                return Step::Retry(Evidence::Authoritative(format!(
                    "PostgreSQL answered {code} (shutting down or starting up)"
                )));
            }
            Ok(Startup::Vanished) => {
                shared.frontend.replays.fetch_add(1, Relaxed);
                return Step::Retry(Evidence::Vanished(
                    "PostgreSQL closed a new connection before answering".into(),
                ));
            }
            Ok(Startup::Standby) => {
                shared.frontend.standby_refusals.fetch_add(1, Relaxed);
                shared.suspect(node, "PostgreSQL reports in_hot_standby = on".into(), true);
                let _ = write_all(client, &pgwire::error_response("57P03", STANDBY_MESSAGE)).await;
                return Step::Done(Termination::Standby);
            }
        }
    } else if !pending.buf.is_empty() {
        if write_all(&server, &pending.buf).await.is_err() {
            return Step::Done(Termination::ServerError);
        }
        pending.buf.clear();
    }

    Step::Ready { server, slot, open }
}

enum ConnectError {
    /// The node stopped being the routed primary between attempts.
    Rerouted,
    Failed(Termination),
    /// The proxy could not create the socket (EMFILE, ENOBUFS, no local port, ...).
    Local(io::Error),
}

/// Connects to the server with `timeout connect` per attempt and up to `retries` more attempts on the
/// same server: 1 s turn-around (min(1 s, timeout connect)) after a refusal, none after a timeout
/// (`haproxy-semantics.md` §2.5). Unlike HAProxy, a retry is abandoned if the node stopped being the
/// routed primary in the meantime: the session goes back to waiting for the new one.
async fn connect(shared: &Shared, node: usize) -> Result<TcpStream, ConnectError> {
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
            Ok(Err(e)) if crate::health::check::is_local_resource_error(&e) => {
                return Err(ConnectError::Local(e))
            }
            Ok(Err(e)) => {
                tracing::debug!(server = %addr, error = %e, attempt, "connect failed");
                true
            }
            Err(_) => false,
        };
        if attempt == cfg.listen.retries {
            c.econ.fetch_add(1, Relaxed);
            shared.frontend.connect_failed.fetch_add(1, Relaxed);
            return Err(ConnectError::Failed(if refused {
                Termination::ConnectRefused
            } else {
                Termination::ConnectTimeout
            }));
        }
        attempt += 1;
        c.wretr.fetch_add(1, Relaxed);
        if refused {
            tokio::time::sleep(turn_around).await;
        }
        if shared.current().primary != Some(node) {
            shared.frontend.rerouted.fetch_add(1, Relaxed);
            return Err(ConnectError::Rerouted);
        }
    }
}

/// Sets TCP keepalive (HAProxy's `option clitcpka`/`srvtcpka`); best effort: a socket that
/// refuses it still works.
fn tune(s: &TcpStream, keepalive: Option<socket2::TcpKeepalive>) {
    if let Some(ka) = keepalive {
        if let Err(e) = socket2::SockRef::from(s).set_tcp_keepalive(&ka) {
            tracing::debug!(error = %e, "setting TCP keepalive failed");
        }
    }
}

fn log_end(shared: &Shared, peer: SocketAddr, node: Option<usize>, start: Instant, t: Termination) {
    let px = &shared.config.listen.name;
    let server = node.map_or("<NOSRV>", |n| shared.server_name(n));
    tracing::debug!(
        target: "patroni_proxy::session",
        "{peer} {px} {px}/{server} Tt={}ms {}",
        start.elapsed().as_millis(),
        t.code()
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use tokio::net::TcpListener;
    use tokio::sync::Semaphore;

    #[tokio::test]
    async fn a_relaying_session_task_is_small() {
        // Allocated for each connection's whole life, and tokio rounds a task up to a multiple of
        // 128 bytes with about 100 bytes of its own: 400 bytes keep it in 512 (docs/benchmarks.md,
        // RSS per idle connection; the setup future it replaced in that role was 816 bytes).
        let shared = Shared::detached(Arc::new(
            Config::from_toml("[[server]]\nname = \"a\"\naddress = \"127.0.0.1:5432\"\n").unwrap(),
        ));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _app = TcpStream::connect(addr).await.unwrap();
        let (client, peer) = l.accept().await.unwrap();
        let server = TcpStream::connect(addr).await.unwrap();
        let slots = Arc::new(Semaphore::new(2));
        let (relay, deadline) = Relay::new(Duration::from_secs(1), Duration::from_secs(1));
        let task = RelayTask {
            io: shared.backends[0]
                .relaying
                .insert(client, server, || true)
                .unwrap(),
            shared: shared.clone(),
            node: 0,
            ticket: shared.backends[0].ticket(),
            _slot: slots.clone().try_acquire_owned().unwrap(),
            _admission: Admission::slot_only(slots.try_acquire_owned().unwrap()),
            peer,
            start: Instant::now(),
            relay,
            sleep: tokio::time::sleep_until(deadline),
        };
        let tracked = TaskTracker::new().track_future(task);
        let size = std::mem::size_of_val(&tracked);
        assert!(size <= 400, "relay task is {size} bytes");
        // Dropping it gives back the gauges the setup task handed over.
        shared.frontend.scur.fetch_add(1, Relaxed);
        shared.backends[0].counters.scur.fetch_add(1, Relaxed);
        drop(tracked);
        assert_eq!(shared.frontend.scur.load(Relaxed), 0);
        assert_eq!(shared.backends[0].counters.scur.load(Relaxed), 0);
        assert!(shared.backends[0].relaying.is_empty());
    }
}
