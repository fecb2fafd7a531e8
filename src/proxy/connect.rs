//! One attempt of a session at a server: a slot under the server's `maxconn` (FIFO queue with
//! `timeout queue`), the connection with `timeout connect` and `retries`, then the startup phase
//! ([`super::startup`]), and what the attempt's end says about the server ([`Evidence`]).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use super::hold::refuse;
use super::relay::Meters;
use super::startup::{startup, write_all, Startup};
use super::tcplog::Timing;
use super::termination::Termination;
use crate::backend::setup::{Phase, SetupGuard};
use crate::backend::{Backend, Gauge, GaugeGuard, Ticket};
use crate::pgwire::{self, startup::Pending};
use crate::state::{Route, Shared};

const WRONG_ROLE_MESSAGE: &str =
    "the server changed role and this listener does not route to it (patroni-proxy), retry";
const STANDBY_MESSAGE: &str =
    "failover in progress: the server is a standby (patroni-proxy), retry";
const LOCAL_MESSAGE: &str =
    "patroni-proxy is out of a local resource (file descriptors, memory or ports), retry";

/// A session's place in its server's `scur`, from the slot to the end of the session: the guard
/// owns its handle, so the relay task that outlives the attempt takes it over as it is.
pub(super) struct ServerSession {
    pub(super) shared: Arc<Shared>,
    /// Four bytes, as `route`: both live in every relaying session's task.
    pub(super) node: u32,
    /// The node's IO side on this listener, held for the session's life (the data path never
    /// looks it up).
    pub(super) backend: Arc<Backend>,
    pub(super) route: Route,
}

impl Gauge for ServerSession {
    fn gauge(&self) -> &AtomicU64 {
        &self.backend.counters.scur
    }

    fn max(&self) -> Option<&AtomicU64> {
        Some(&self.backend.counters.smax)
    }
}

pub(super) enum Attempt {
    Done(Termination),
    /// Connected and past the startup inspection: relay from here on.
    Ready {
        server: TcpStream,
        slot: OwnedSemaphorePermit,
        open: GaugeGuard<ServerSession>,
    },
    /// Go back to holding and try the (next) primary, replaying `Pending`.
    Retry(Evidence),
}

/// What a failed attempt says about the server. Only the server's own word may take it out of
/// routing; what a client can provoke, or a single failure, only hastens a re-check (issue 11
/// item 2: one client rejected every 3 s kept the cluster without a primary for 20 of 26 s).
pub(super) enum Evidence {
    None,
    /// PostgreSQL itself said it cannot take connections (57P01/57P02/57P03).
    Authoritative(String),
    /// Closed or reset before any byte of an answer to the StartupMessage: a postmaster going
    /// away, or a startup it dropped silently.
    Vanished(String),
    /// Connecting failed after every retry.
    Unreachable(String),
}

pub(super) async fn connect_and_start(
    client: &TcpStream,
    shared: &Arc<Shared>,
    (route, node): (Route, usize),
    ticket: Ticket,
    pending: &mut Pending,
    phase: &SetupGuard<'_>,
    timing: &mut Timing,
) -> Attempt {
    *timing = Timing::default();
    let cfg = &shared.config();
    let backend = shared.backend_on(route, node);
    let fe = shared.frontend_of(route);
    let c = &backend.counters;

    // A slot on the server: at once if free, else FIFO behind earlier waiters for `timeout queue`.
    let slot = match backend.slots.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(_) => {
            let _queued = GaugeGuard::new(&c.qcur, Some(&c.qmax));
            phase.set(Phase::Queued, Some(node));
            tokio::select! {
                // Marked DOWN while we queued: nothing reached the client yet, wait for the next.
                _ = backend.killed(ticket) => return Attempt::Retry(Evidence::None),
                r = tokio::time::timeout(cfg.timeout_queue(), backend.slots.clone().acquire_owned()) => match r {
                    Ok(p) => p.expect("the semaphore is never closed"),
                    Err(_) => {
                        c.qtimeouts.fetch_add(1, Relaxed);
                        fe.queue_timeout.fetch_add(1, Relaxed);
                        return Attempt::Done(Termination::QueueTimeout);
                    }
                },
            }
        }
    };
    timing.slot = Some(tokio::time::Instant::now());
    if !shared.routes_to(&shared.current(), route, node) {
        // Routing changed while we queued: never connect to a node that left this listener.
        return Attempt::Retry(Evidence::None);
    }
    phase.set(Phase::Connecting, Some(node));
    c.stot.fetch_add(1, Relaxed);
    backend.touch_last_session();
    let open = GaugeGuard::hold(ServerSession {
        shared: shared.clone(),
        node: u32::try_from(node).unwrap_or(u32::MAX),
        backend: backend.clone(),
        route,
    });

    let server = tokio::select! {
        // Marked DOWN while we were still connecting (e.g. retrying a crashed primary's refused
        // port): no server byte reached the client, so it is held for the next primary like any
        // client that finds none, instead of being reset by shutdown-sessions.
        _ = backend.killed(ticket) => return Attempt::Retry(Evidence::None),
        r = Box::pin(connect(shared, route, node)) => match r {
            Ok(s) => {
                timing.connected = Some(tokio::time::Instant::now());
                s
            }
            Err(ConnectError::Rerouted) => return Attempt::Retry(Evidence::None),
            // Retries exhausted before any server byte reached the client: rather than a bare
            // close (HAProxy's `SC`), hold it for the next primary -- the node may be restarting
            // PostgreSQL under a held leader lock -- and answer 57P03 if none comes in time.
            Err(ConnectError::Failed(t)) => {
                return Attempt::Retry(Evidence::Unreachable(format!(
                    "PostgreSQL refused or timed out {} connection attempts ({})",
                    cfg.listen.retries.saturating_add(1),
                    t.code()
                )))
            }
            // Our own shortage says nothing about the server: not counted against it, not retried
            // (it would fail the same way), and the client is told why.
            Err(ConnectError::Local(e)) => {
                fe.local_errors.fetch_add(1, Relaxed);
                tracing::error!(server = %shared.server_name(node), error = %e,
                    "cannot connect a client: the proxy is out of a local resource; not counted against the server");
                refuse(client, pending, "53000", LOCAL_MESSAGE).await;
                return Attempt::Done(Termination::LocalResource);
            }
        },
    };
    socket_options(socket2::SockRef::from(&server), cfg.server_keepalive());

    let meters = Meters {
        up: [&fe.bin, &c.bin],
        down: [&fe.bout, &c.bout],
    };
    if cfg.listen.inspect_startup {
        phase.set(Phase::Starting, Some(node));
        let want_standby = shared.wants_standby(&shared.current(), route, node);
        let startup = tokio::select! {
            _ = backend.killed(ticket) => {
                // Marked DOWN before the server said anything to the client: held for the next
                // primary and its startup replayed there, like a client still connecting.
                if !pending.is_committed() {
                    return Attempt::Retry(Evidence::None);
                }
                c.killed.fetch_add(1, Relaxed);
                return Attempt::Done(Termination::Killed);
            }
            r = tokio::time::timeout(cfg.listen.timeout_client, Box::pin(startup(client, &server, pending, &meters, want_standby))) => r,
        };
        match startup {
            Err(_) => return Attempt::Done(Termination::ClientIdle),
            Ok(Startup::Relay) => {}
            Ok(Startup::Done(t)) => return Attempt::Done(t),
            Ok(Startup::Leaving(code)) => {
                fe.replays.fetch_add(1, Relaxed);
                return Attempt::Retry(Evidence::Authoritative(format!(
                    "PostgreSQL answered {code} (shutting down or starting up)"
                )));
            }
            Ok(Startup::Vanished) => {
                fe.replays.fetch_add(1, Relaxed);
                return Attempt::Retry(Evidence::Vanished(
                    "PostgreSQL closed a new connection before answering".into(),
                ));
            }
            Ok(Startup::Standby) => {
                fe.standby_refusals.fetch_add(1, Relaxed);
                match route.set() {
                    // PostgreSQL's own word: out of the primary's routing until a check confirms.
                    None => {
                        shared.suspect(node, "PostgreSQL reports in_hot_standby = on".into(), true)
                    }
                    // The set's rule decides membership: check it again now.
                    Some(_) => shared.recheck(
                        node,
                        "PostgreSQL reports a role this listener does not route to".into(),
                    ),
                }
                let message = match route.set() {
                    None => STANDBY_MESSAGE,
                    Some(_) => WRONG_ROLE_MESSAGE,
                };
                let _ = write_all(client, &pgwire::error_response("57P03", message)).await;
                return Attempt::Done(Termination::Standby);
            }
        }
    } else if !pending.bytes().is_empty() {
        if write_all(&server, pending.bytes()).await.is_err() {
            return Attempt::Done(Termination::ServerError);
        }
        pending.clear();
    }

    Attempt::Ready { server, slot, open }
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
async fn connect(shared: &Shared, route: Route, node: usize) -> Result<TcpStream, ConnectError> {
    let cfg = &shared.config();
    // The node's address now (a reload, or its host name resolving elsewhere, may have moved it
    // since the session was routed). Without one it cannot be routed: wait for the next primary.
    let Some(addr) = shared.address_on(&shared.current(), route, node) else {
        return Err(ConnectError::Rerouted);
    };
    let backend = shared.backend_on(route, node);
    let c = &backend.counters;
    let fe = shared.frontend_of(route);
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
            Ok(Err(e)) if crate::net::is_local_resource_error(&e) => {
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
            fe.connect_failed.fetch_add(1, Relaxed);
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
        if !shared.routes_to(&shared.current(), route, node) {
            fe.rerouted.fetch_add(1, Relaxed);
            return Err(ConnectError::Rerouted);
        }
    }
}

/// A session socket's options, client or server side: no Nagle (a small PostgreSQL message must
/// not wait for an ACK), and TCP keepalive (HAProxy's `option clitcpka`/`srvtcpka`) as configured,
/// explicitly off otherwise (a listening socket passes its options on to the sockets it accepts,
/// `proxy::accept_loop`, and may carry an earlier configuration's). Best effort: a socket that
/// refuses them still works.
pub(super) fn socket_options(s: socket2::SockRef<'_>, keepalive: Option<socket2::TcpKeepalive>) {
    let _ = s.set_nodelay(true);
    let r = match keepalive {
        Some(ka) => s.set_tcp_keepalive(&ka),
        None => s.set_keepalive(false),
    };
    if let Err(e) = r {
        tracing::debug!(error = %e, "setting TCP keepalive failed");
    }
}
