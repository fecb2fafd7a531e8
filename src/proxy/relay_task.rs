//! The relaying phase of a session, a task of its own: it owns the session's sockets, gauges and
//! slots from the end of its startup to its end, and logs that end. Its bytes move in user space
//! ([`Relay`]) or in the kernel ([`KernelRelay`], `listen.relay = "kernel" | "auto"`); a session
//! of a kernel listener starts in user space and moves into the kernel after `kernel_after` reads,
//! once it holds no byte in user space, so a short session never pays the move's system calls
//! (docs/configuration.md, "Kernel relay").

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};

use super::balance::Admission;
use super::connect::ServerSession;
use super::kernel::{written_before, KernelRelay};
use super::relay::{End, Meters, Next, Relay, Side};
use super::tcplog::{log_end, Phases, Sockets};
use super::termination::Termination;
use crate::backend::relaying::{bytes_received, Registered};
use crate::backend::{Backend, Counters, Frontend, Gauge, GaugeGuard, Ticket};
use crate::state::Shared;

/// A session's place in the frontend's `scur`, from accept to the end of the session: the guard
/// owns its handle, so the relay task that outlives the session's setup takes it over as it is.
pub struct ClientSession(pub Arc<Frontend>);

impl Gauge for ClientSession {
    fn gauge(&self) -> &std::sync::atomic::AtomicU64 {
        &self.0.scur
    }

    fn max(&self) -> Option<&std::sync::atomic::AtomicU64> {
        Some(&self.0.smax)
    }
}

/// Who moves a relaying session's bytes, with the sockets in the form that needs.
pub enum Engine {
    /// The proxy's threads (tokio's sockets), until the relay asks to move into the kernel.
    User {
        relay: Relay,
        io: Registered<TcpStream>,
    },
    /// The kernel: boxed, so a user-space session's task does not carry its size.
    Kernel(Box<InKernel>),
    /// Only while the session moves from one to the other.
    Moving,
}

/// A kernel-relayed session: the relay comes first, so its sockets leave the BPF maps before
/// they close.
pub struct InKernel {
    relay: KernelRelay,
    io: Registered<std::net::TcpStream>,
}

impl Engine {
    /// Whether the end of the stream was read from the client and from the server.
    fn eof(&self) -> (bool, bool) {
        match self {
            Engine::User { relay, .. } => relay.eof(),
            Engine::Kernel(k) => k.relay.eof(),
            Engine::Moving => (false, false),
        }
    }

    /// The client's and the server's socket.
    fn sockets(&self) -> Option<[BorrowedFd<'_>; 2]> {
        match self {
            Engine::User { io, .. } => Some([io.client().as_fd(), io.server().as_fd()]),
            Engine::Kernel(k) => Some([k.io.client().as_fd(), k.io.server().as_fd()]),
            Engine::Moving => None,
        }
    }
}

pin_project_lite::pin_project! {
    /// The relay phase of a session: under 400 bytes where the `async fn` that set the session up
    /// is several KiB, and tokio sizes a task for the largest state of its future. Waits only on its
    /// two sockets and its idle timer: `shutdown-sessions` reaches it through the server's registry
    /// ([`crate::backend::relaying`]), which shuts its sockets down.
    pub struct RelayTask {
        // The session's places in the frontend's and its server's `scur`, given back however the
        // task ends (including a forced runtime shutdown), before its sockets close.
        pub frontend: GaugeGuard<ClientSession>,
        pub server: GaugeGuard<ServerSession>,
        pub engine: Engine,
        pub ticket: Ticket,
        pub slot: OwnedSemaphorePermit,
        pub admission: Admission,
        pub peer: SocketAddr,
        pub start: Instant,
        // For the session's log line.
        pub phases: Phases,
        #[pin]
        pub sleep: Sleep,
    }
}

impl Future for RelayTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
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
        let end = loop {
            match this.engine {
                Engine::User { relay, io } => {
                    match ready!(relay.poll(
                        cx,
                        io.client(),
                        io.server(),
                        &meters,
                        this.sleep.as_mut()
                    )) {
                        Next::End(end) => break end,
                        Next::Kernel => {
                            let to = crate::sockmap::Counters {
                                frontend: fe.clone(),
                                backend: backend.clone(),
                            };
                            let moved = Move {
                                shared,
                                backend,
                                to,
                                since: *this.start,
                                ticket: *this.ticket,
                            };
                            if let Some(end) = moved.run(this.engine, this.sleep.as_mut()) {
                                break end;
                            }
                        }
                    }
                }
                Engine::Kernel(k) => break ready!(k.relay.poll(cx, &k.io, this.sleep.as_mut())),
                // Only between `Move::run`'s start and its end, which breaks out above when it
                // leaves the engine here: never seen by a poll.
                Engine::Moving => break End::Closed,
            }
        };
        // A kill shows up as the end of both streams: name it for what it was.
        let t = if backend.is_killed(*this.ticket) {
            backend.counters.killed.fetch_add(1, Relaxed);
            Termination::Killed
        } else {
            relay_end(&backend.counters, end)
        };
        let (engine, (client_eof, server_eof)) = (&*this.engine, this.engine.eof());
        log_end(
            shared,
            *route,
            *this.peer,
            Some(*node as usize),
            *this.start,
            t,
            *this.phases,
            || match engine.sockets() {
                Some([client, server]) => Sockets {
                    backend_port: (socket2::SockRef::from(&server).local_addr().ok())
                        .and_then(|a| a.as_socket())
                        .map(|a| a.port()),
                    bytes_from_client: bytes_received(client, Some(client_eof)),
                    bytes_from_server: bytes_received(server, Some(server_eof)),
                },
                None => Sockets::default(),
            },
        );
        Poll::Ready(())
    }
}

/// A session's move from the user-space relay into the kernel.
struct Move<'a> {
    shared: &'a Shared,
    backend: &'a Arc<Backend>,
    to: crate::sockmap::Counters,
    since: Instant,
    ticket: Ticket,
}

impl Move<'_> {
    /// Moves `engine` (a user-space relay holding no byte) into the kernel relay. Where the kernel
    /// refuses the sockets the session stays in user space; `Some` is the session's end when its
    /// sockets were lost on the way, or a kill came while they were out of the server's registry.
    fn run(self, engine: &mut Engine, mut sleep: Pin<&mut Sleep>) -> Option<End> {
        let Engine::User { mut relay, io } = std::mem::replace(engine, Engine::Moving) else {
            return None;
        };
        let Some(map) = self.shared.sockmap.ready() else {
            relay.stay();
            *engine = Engine::User { relay, io };
            return None;
        };
        let base = written_before(io.client(), io.server());
        let joined = match map.join(io.client(), io.server(), self.to) {
            Ok(j) => j,
            Err(e) => {
                tracing::debug!(error = %e, "kernel relay refused this session's sockets; relaying it in user space");
                relay.stay();
                *engine = Engine::User { relay, io };
                return None;
            }
        };
        // Out of tokio's event loop (see `proxy::kernel`); the sockets stay non-blocking.
        let (client, server) = io.leave();
        let (client, server) = match (client.into_std(), server.into_std()) {
            (Ok(c), Ok(s)) => (c, s),
            (Err(e), _) => return Some(End::Error(Side::Client, e)),
            (_, Err(e)) => return Some(End::Error(Side::Server, e)),
        };
        let (kernel, deadline) = match KernelRelay::new(
            &client,
            &server,
            base,
            joined,
            relay.idle(),
        ) {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(error = %e, "watching a kernel-relayed session failed; closing it");
                return Some(End::Error(Side::Server, e));
            }
        };
        let backend = self.backend;
        match (backend.relaying).insert(client, server, self.since, || {
            !backend.is_killed(self.ticket)
        }) {
            Ok(io) => {
                *engine = Engine::Kernel(Box::new(InKernel { relay: kernel, io }));
                sleep.as_mut().reset(deadline);
                None
            }
            Err(_sockets) => {
                // Out of the maps before the sockets close.
                drop(kernel);
                Some(End::Closed)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::proxy::tcplog::Timing;
    use crate::state::Route;
    use std::time::Duration;
    use tokio::net::TcpListener;
    use tokio::sync::Semaphore;
    use tokio_util::task::TaskTracker;

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
        let (relay, deadline) = Relay::new(Duration::from_secs(1), Duration::from_secs(1), None);
        let task = RelayTask {
            frontend: GaugeGuard::hold(ClientSession(shared.frontend.clone())),
            server: GaugeGuard::hold(ServerSession {
                shared: shared.clone(),
                node: 0,
                backend: shared.backend(0),
                route: Route::PRIMARY,
            }),
            engine: Engine::User {
                relay,
                io: shared
                    .backend(0)
                    .relaying
                    .insert(client, server, Instant::now(), || true)
                    .unwrap(),
            },
            ticket: shared.backend(0).ticket(),
            slot: slots.clone().try_acquire_owned().unwrap(),
            admission: Admission::slot_only(slots.try_acquire_owned().unwrap()),
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
