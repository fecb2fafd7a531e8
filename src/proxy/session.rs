//! One client session: route to the current primary (holding the client while there is none,
//! `proxy::hold`), wait for a server slot and connect (`proxy::connect`), watch PostgreSQL's
//! startup replies (`proxy::startup`: replay on the next primary when the chosen one is leaving,
//! refuse a standby), then relay in a task of its own until either side closes, the session idles
//! out, or the server's sessions are shut down.

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};
use tokio_util::task::TaskTracker;

use super::balance::Admission;
use super::connect::{connect_and_start, Attempt, Evidence, ServerSession};
use super::hold::hold;
use super::kernel::{written_before, KernelRelay};
use super::relay::{End, Meters, Relay, Side};
use super::tcplog::{Phases, SessionLine, Sockets, Timing};
use super::termination::Termination;
use crate::backend::relaying::{bytes_received, Registered};
use crate::backend::{Counters, Frontend, Gauge, GaugeGuard, Ticket};
use crate::config::RelayMode;
use crate::pgwire::startup::Pending;
use crate::state::{Route, Shared};

/// A session's place in the frontend's `scur`, from accept to the end of the session: the guard
/// owns its handle, so the relay task that outlives [`run`] takes it over as it is.
struct ClientSession(Arc<Frontend>);

impl Gauge for ClientSession {
    fn gauge(&self) -> &AtomicU64 {
        &self.0.scur
    }

    fn max(&self) -> Option<&AtomicU64> {
        Some(&self.0.smax)
    }
}

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
    route: Route,
    admission: Admission,
    sessions: TaskTracker,
) {
    let start = Instant::now();
    shared.frontend_of(route).stot.fetch_add(1, Relaxed);
    let open = GaugeGuard::hold(ClientSession(shared.frontend_of(route).clone()));
    let shared = &shared;
    let mut timing = Timing::default();
    let (t, node, client) = match establish(client, peer, shared, route, start, &mut timing).await {
        Setup::Done(t, node, client) => (t, node, client),
        Setup::Relay(s) => {
            let node = s.open.handle().node as usize;
            let backend = s.open.handle().backend.clone();
            let cfg = shared.config();
            let idle = (cfg.listen.timeout_client, cfg.listen.timeout_server);
            let mode = listen_of(&cfg, route).relay;
            let s = match start_kernel_relay(s, mode, shared, &backend, start, idle) {
                Handover::Kernel(kernel) => {
                    // The relay task takes over both gauges, the slots and the log line.
                    sessions.spawn(RelayTask {
                        _frontend: open,
                        server: kernel.open,
                        relay: kernel.relay,
                        io: kernel.io,
                        ticket: kernel.ticket,
                        _slot: kernel.slot,
                        _admission: admission,
                        peer,
                        start,
                        phases: Phases::new(start, timing),
                        sleep: tokio::time::sleep_until(kernel.deadline),
                    });
                    return;
                }
                Handover::User(s) => s,
                Handover::Killed => {
                    backend.counters.killed.fetch_add(1, Relaxed);
                    let phases = Phases::new(start, timing);
                    log_end(
                        shared,
                        peer,
                        Some(node),
                        start,
                        Termination::Killed,
                        phases,
                        Sockets::default,
                    );
                    return;
                }
            };
            // Joins the server's kill registry unless a kill came after the ticket was taken.
            match backend
                .relaying
                .insert(s.client, s.server, start, || !backend.is_killed(s.ticket))
            {
                Ok(io) => {
                    // The relay task takes over both gauges, the slots and the log line.
                    let (relay, deadline) = Relay::new(idle.0, idle.1);
                    sessions.spawn(RelayTask {
                        _frontend: open,
                        server: s.open,
                        relay,
                        io,
                        ticket: s.ticket,
                        _slot: s.slot,
                        _admission: admission,
                        peer,
                        start,
                        phases: Phases::new(start, timing),
                        sleep: tokio::time::sleep_until(deadline),
                    });
                    return;
                }
                Err((client, _server)) => {
                    backend.counters.killed.fetch_add(1, Relaxed);
                    (Termination::Killed, Some(node), client)
                }
            }
        }
    };
    let phases = Phases::new(start, timing);
    log_end(shared, peer, node, start, t, phases, || Sockets {
        bytes_from_client: bytes_received(&client, None),
        ..Sockets::default()
    });
}

/// How the setup phase ended: with the session (and the client's socket, for the log line), or
/// with a relay to run.
enum Setup {
    Done(Termination, Option<usize>, TcpStream),
    Relay(Established),
}

/// A client connected to the primary, startup inspected.
struct Established {
    client: TcpStream,
    server: TcpStream,
    ticket: Ticket,
    /// The server slot (`maxconn`).
    slot: OwnedSemaphorePermit,
    /// The server's `scur`, and which server.
    open: GaugeGuard<ServerSession>,
}

pin_project_lite::pin_project! {
    /// The relay phase of a session, a task of its own: under 400 bytes where the `async fn` that
    /// set the session up is several KiB, and tokio sizes a task for the largest state of its
    /// future. Waits only on its two sockets and its idle timer: `shutdown-sessions` reaches it
    /// through the server's registry ([`crate::backend::relaying`]), which shuts its sockets down.
    struct RelayTask<E: Engine> {
        // The session's places in the frontend's and its server's `scur`, given back however the
        // task ends (including a forced runtime shutdown), before its sockets close.
        _frontend: GaugeGuard<ClientSession>,
        server: GaugeGuard<ServerSession>,
        // Before `io`: the kernel relay takes its sockets out of the BPF maps before they close.
        relay: E,
        io: Registered<E::Socket>,
        ticket: Ticket,
        _slot: OwnedSemaphorePermit,
        _admission: Admission,
        peer: SocketAddr,
        start: Instant,
        // For the session's log line.
        phases: Phases,
        #[pin]
        sleep: Sleep,
    }
}

/// Who moves a relaying session's bytes: [`Relay`] in user space, [`KernelRelay`] in the kernel.
trait Engine {
    type Socket: AsRawFd + AsFd;
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        io: &Registered<Self::Socket>,
        meters: &Meters<'_>,
        sleep: Pin<&mut Sleep>,
    ) -> Poll<End>;
    /// Whether the end of the stream was read from the client and from the server.
    fn eof(&self) -> (bool, bool);
}

impl Engine for Relay {
    type Socket = TcpStream;
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        io: &Registered<TcpStream>,
        meters: &Meters<'_>,
        sleep: Pin<&mut Sleep>,
    ) -> Poll<End> {
        Relay::poll(self, cx, io.client(), io.server(), meters, sleep)
    }
    fn eof(&self) -> (bool, bool) {
        Relay::eof(self)
    }
}

impl Engine for KernelRelay {
    type Socket = std::net::TcpStream;
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        io: &Registered<std::net::TcpStream>,
        // Its bytes reach the counters through `crate::sockmap` (read from the program).
        _meters: &Meters<'_>,
        sleep: Pin<&mut Sleep>,
    ) -> Poll<End> {
        KernelRelay::poll(self, cx, io, sleep)
    }
    fn eof(&self) -> (bool, bool) {
        KernelRelay::eof(self)
    }
}

/// A session the kernel relays, ready for its task.
struct Kernel {
    relay: KernelRelay,
    deadline: Instant,
    io: Registered<std::net::TcpStream>,
    ticket: Ticket,
    slot: OwnedSemaphorePermit,
    open: GaugeGuard<ServerSession>,
}

/// Who relays a session that is through its startup.
enum Handover {
    Kernel(Kernel),
    /// The proxy's threads: the mode is `user`, the program is not loaded, or the kernel refused
    /// these sockets (said at debug; the session still works).
    User(Established),
    /// A kill came after the session's ticket was taken (or its sockets failed on the way).
    Killed,
}

/// Puts the session's sockets into the kernel relay when its listener asks for it and the
/// program is loaded.
fn start_kernel_relay(
    s: Established,
    mode: RelayMode,
    shared: &Shared,
    backend: &Arc<crate::backend::Backend>,
    since: Instant,
    idle: (std::time::Duration, std::time::Duration),
) -> Handover {
    let Some(map) = (mode != RelayMode::User)
        .then(|| shared.sockmap.ready())
        .flatten()
    else {
        return Handover::User(s);
    };
    let base = written_before(&s.client, &s.server);
    let to = crate::sockmap::Counters {
        frontend: shared.frontend_of(s.open.handle().route).clone(),
        backend: backend.clone(),
    };
    let joined = match map.join(&s.client, &s.server, to) {
        Ok(j) => j,
        Err(e) => {
            tracing::debug!(error = %e, "kernel relay refused this session's sockets; relaying it in user space");
            return Handover::User(s);
        }
    };
    // Out of tokio's event loop (see `proxy::kernel`); the sockets stay non-blocking.
    let (client, server) = match (s.client.into_std(), s.server.into_std()) {
        (Ok(c), Ok(v)) => (c, v),
        // Deregistering failed: the sockets are gone with the error; so is the session.
        _ => return Handover::Killed,
    };
    let (relay, deadline) = match KernelRelay::new(&client, &server, base, joined, idle.0, idle.1) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "watching a kernel-relayed session failed; closing it");
            return Handover::Killed;
        }
    };
    let Ok(io) = (backend.relaying).insert(client, server, since, || !backend.is_killed(s.ticket))
    else {
        return Handover::Killed;
    };
    Handover::Kernel(Kernel {
        relay,
        deadline,
        io,
        ticket: s.ticket,
        slot: s.slot,
        open: s.open,
    })
}

/// The listener a session came in on (set `i` is listener `i + 1`, `state::sets::specs`).
fn listen_of(cfg: &crate::config::Config, route: Route) -> &crate::config::Listen {
    let i = route.set().map_or(0, |i| i + 1);
    cfg.listen.all().get(i).unwrap_or(&cfg.listen)
}

impl<E: Engine> Future for RelayTask<E> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let ServerSession {
            shared,
            backend,
            node,
            route,
        } = this.server.handle();
        let fe = shared.frontend_of(*route);
        let meters = Meters {
            up: [&fe.bin, &backend.counters.bin],
            down: [&fe.bout, &backend.counters.bout],
        };
        let end = ready!(this.relay.poll(cx, this.io, &meters, this.sleep));
        // A kill shows up as the end of both streams: name it for what it was.
        let t = if backend.is_killed(*this.ticket) {
            backend.counters.killed.fetch_add(1, Relaxed);
            Termination::Killed
        } else {
            relay_end(&backend.counters, end)
        };
        let (io, (client_eof, server_eof)) = (&*this.io, this.relay.eof());
        log_end(
            shared,
            *this.peer,
            Some(*node as usize),
            *this.start,
            t,
            *this.phases,
            || Sockets {
                backend_port: (socket2::SockRef::from(io.server()).local_addr().ok())
                    .and_then(|a| a.as_socket())
                    .map(|a| a.port()),
                bytes_from_client: bytes_received(io.client(), Some(client_eof)),
                bytes_from_server: bytes_received(io.server(), Some(server_eof)),
            },
        );
        Poll::Ready(())
    }
}

/// Routes the client to the primary (holding it while there is none), retrying on the next primary
/// when the chosen one turns out to be leaving before any server byte reached the client.
async fn establish(
    client: TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    route: Route,
    start: Instant,
    timing: &mut Timing,
) -> Setup {
    // Listed in the sessions view until the setup ends; then, if it relays, in its server's registry.
    let phase = shared.frontend_of(route).setups.join(peer, start);
    // The client socket's options (no Nagle, keepalive) were set by its accept loop
    // (`proxy::connect::socket_options`).
    let deadline = crate::time::deadline(start, shared.config().listen.hold_timeout);
    let mut pending = Pending::default();
    let mut avoid: Option<(usize, u64)> = None;
    let mut last_node = None;
    // The node that closed on this client's startup without a word: once is a crash, twice on the
    // same node is this client's startup (PostgreSQL drops malformed ones silently).
    let mut vanished_on = None;
    loop {
        let node = match hold(
            shared,
            route,
            &client,
            deadline,
            &mut pending,
            avoid,
            &phase,
        )
        .await
        {
            Ok(n) => n,
            Err(t) => return Setup::Done(t, last_node, client),
        };
        last_node = Some(node);
        // Taken before queueing, so a DOWN while this session waits or connects closes it too.
        let Some(ticket) = shared.ticket_on(route, node) else {
            continue;
        };
        let to = (route, node);
        match connect_and_start(&client, shared, to, ticket, &mut pending, &phase, timing).await {
            Attempt::Done(t) => return Setup::Done(t, last_node, client),
            Attempt::Ready { server, slot, open } => {
                return Setup::Relay(Established {
                    client,
                    server,
                    ticket,
                    slot,
                    open,
                })
            }
            Attempt::Retry(evidence) => {
                match evidence {
                    Evidence::None => {}
                    Evidence::Authoritative(reason) => shared.suspect(node, reason, false),
                    Evidence::Vanished(reason) if vanished_on == Some(node) => {
                        tracing::debug!(
                            server = &*shared.server_name(node),
                            "{reason} again: giving up on this client"
                        );
                        return Setup::Done(Termination::ServerError, last_node, client);
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

/// The session's end in the log: with `log.sessions`, the `tcplog` line at info (its socket facts
/// asked of the kernel only then); otherwise the short line at debug.
fn log_end(
    shared: &Shared,
    peer: SocketAddr,
    node: Option<usize>,
    start: Instant,
    t: Termination,
    phases: Phases,
    sockets: impl FnOnce() -> Sockets,
) {
    let cfg = shared.config();
    let px = &cfg.listen.name;
    if cfg.log.sessions {
        let server = node.map(|n| shared.server_name(n));
        let now = Instant::now();
        let server = server.as_deref();
        SessionLine::new(peer, px, server, start, now, phases, sockets(), t).emit();
        return;
    }
    let server = node.map(|n| shared.server_name(n));
    let server = server.as_deref().unwrap_or("<NOSRV>");
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
    use std::time::Duration;
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
            _frontend: GaugeGuard::hold(ClientSession(shared.frontend.clone())),
            server: GaugeGuard::hold(ServerSession {
                shared: shared.clone(),
                node: 0,
                backend: shared.backend(0),
                route: Route::PRIMARY,
            }),
            relay,
            io: shared
                .backend(0)
                .relaying
                .insert(client, server, Instant::now(), || true)
                .unwrap(),
            ticket: shared.backend(0).ticket(),
            _slot: slots.clone().try_acquire_owned().unwrap(),
            _admission: Admission::slot_only(slots.try_acquire_owned().unwrap()),
            peer,
            start: Instant::now(),
            phases: Phases::new(Instant::now(), Timing::default()),
            sleep: tokio::time::sleep_until(deadline),
        };
        let tracked = TaskTracker::new().track_future(task);
        let size = std::mem::size_of_val(&tracked);
        assert!(size <= 400, "relay task is {size} bytes");
        let open = |s: &Shared| {
            (
                s.frontend.scur.load(Relaxed),
                s.backend(0).counters.scur.load(Relaxed),
            )
        };
        assert_eq!(open(&shared), (1, 1));
        // Dropping it gives back the gauges it holds, and leaves the server's registry.
        drop(tracked);
        assert_eq!(open(&shared), (0, 0));
        assert!(shared.backend(0).relaying.is_empty());
    }
}
