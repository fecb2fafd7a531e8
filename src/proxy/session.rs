//! One client session: route to the current primary (holding the client while there is none,
//! `proxy::hold`), wait for a server slot and connect (`proxy::connect`), watch PostgreSQL's
//! startup replies (`proxy::startup`: replay on the next primary when the chosen one is leaving,
//! refuse a standby), then relay in a task of its own until either side closes, the session idles
//! out, or the server's sessions are shut down.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::balance::Admission;
use super::connect::{connect_and_start, Attempt, Evidence, ServerSession};
use super::hold::hold;
use super::relay::Relay;
use super::relay_task::{ClientSession, Engine, RelayTask};
use super::tcplog::{log_end, Phases, Sockets, Timing};
use super::termination::Termination;
use crate::backend::relaying::bytes_received;
use crate::backend::{GaugeGuard, Ticket};
use crate::config::RelayMode;
use crate::pgwire::startup::Pending;
use crate::state::{Route, Shared};

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
            let listen = route.listen(&cfg);
            // A kernel listener's sessions move there after `kernel_after` reads
            // (`proxy::relay_task`); where the program is not loaded they stay here.
            let kernel_after = (listen.relay != RelayMode::User
                && shared.sockmap.ready().is_some())
            .then_some(listen.kernel_after);
            // Joins the server's kill registry unless a kill came after the ticket was taken.
            match backend
                .relaying
                .insert(s.client, s.server, start, || !backend.is_killed(s.ticket))
            {
                Ok(io) => {
                    let (relay, deadline) =
                        Relay::new(listen.timeout_client, listen.timeout_server, kernel_after);
                    // The relay task takes over both gauges, the slots and the log line.
                    sessions.spawn(RelayTask {
                        frontend: open,
                        server: s.open,
                        engine: Engine::User { relay, io },
                        ticket: s.ticket,
                        slot: s.slot,
                        admission,
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
    log_end(shared, route, peer, node, start, t, phases, || Sockets {
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
