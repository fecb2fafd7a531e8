//! The primary port: the accept loops ([`serve`]), one per relay thread, and which thread runs a
//! client ([`balance`]); one session per client ([`session`]) in its phases: the hold for a primary
//! (`hold`), a slot and a connection (`connect`), the startup (`startup`), then the byte relay
//! ([`relay`]); how a session ended ([`termination`]) and its log line ([`tcplog`]). Each server's registry of relaying sessions,
//! which `shutdown-sessions` goes through, is the backend's ([`crate::backend::relaying`]).

pub mod balance;
mod connect;
mod hold;
pub mod kernel;
pub mod relay;
mod relay_task;
pub mod session;
mod startup;
pub mod tcplog;
pub mod termination;
mod watch;

use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::net::{register, Acceptor};
use crate::state::{Route, Shared};
use balance::{Admission, Job, Threads};

pub use crate::net::Moves;

/// How long an accept loop still accepts on the old socket after a move, then closes it: clients
/// already queued there, or that connect before they learn the new address, are served rather
/// than reset or refused.
pub const MOVE_LINGER: Duration = Duration::from_secs(2);

/// Accepts clients until `stop` is cancelled. Sessions are spawned on `sessions` so the caller can
/// drain them. Every relay thread accepts from the same listening socket ([`balance`] says which
/// thread runs a client); at `global.maxconn` open sessions (`slots`, shared by every listener of
/// the process, as HAProxy's `global maxconn` is) they stop calling `accept`: new connections wait
/// in the kernel's queue, without a timeout, and are served in order as slots free (HAProxy's
/// behaviour, `haproxy-semantics.md` §2.4). It never dies on an accept error and never spins.
pub async fn serve(
    listener: TcpListener,
    moves: Moves,
    shared: Arc<Shared>,
    (route, slots): (Route, Arc<Semaphore>),
    sessions: TaskTracker,
    stop: CancellationToken,
) {
    let threads = shared.config().global.threads();
    let (balance, mut inboxes) = Threads::new(threads);
    for i in (1..threads).rev() {
        let inbox = inboxes.pop().expect("one inbox per thread");
        // The same listening socket (a duplicate descriptor), registered with the other thread's
        // event loop: a client is accepted by a thread that is free to take it.
        match socket2::SockRef::from(&listener).try_clone() {
            Ok(dup) => {
                let acceptor = AcceptLoop {
                    me: i,
                    listener: dup.into(),
                    moves: moves.clone(),
                    threads: balance.clone(),
                    slots: slots.clone(),
                    shared: shared.clone(),
                    route,
                    sessions: sessions.clone(),
                    stop: stop.clone(),
                };
                relay_thread(acceptor, inbox)
            }
            Err(e) => {
                tracing::error!(error = %e, "duplicating the listening socket for relay thread {i} failed; it does not start")
            }
        }
    }
    balance.enter(0);
    let inbox = inboxes.pop().expect("one inbox per thread");
    let taking = take_handed(inbox, shared.clone(), route, sessions.clone());
    let work = accept_loop(AcceptLoop {
        me: 0,
        listener,
        moves,
        threads: balance,
        slots,
        shared,
        route,
        sessions,
        stop,
    });
    tokio::select! {
        _ = work => {}
        _ = taking => {}
        _ = timer_tick() => {}
    }
}

/// Never ends: a timer that fires every second, so that the thread's timer wheel always has a
/// deadline within a second. Why: tokio's time driver wakes its own thread (an `eventfd` write and
/// one more `epoll_wait`) whenever a new timer is due before its next deadline, even when the new
/// timer comes from that very thread, and a relay thread's next deadline is otherwise a session's
/// 30 min idle timer: every client's 4 s connect timeout cost those two syscalls. One wake-up per
/// second is cheaper (docs/benchmarks.md).
async fn timer_tick() {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

/// One thread's accept loop and what it needs.
struct AcceptLoop<L> {
    /// This thread's number among the relay threads.
    me: usize,
    listener: L,
    moves: Moves,
    threads: Arc<Threads>,
    slots: Arc<Semaphore>,
    shared: Arc<Shared>,
    /// The listener its clients came in on.
    route: Route,
    sessions: TaskTracker,
    stop: CancellationToken,
}

/// Waits for a free slot of `global.maxconn`, takes a client and the slot, and runs its session on
/// this thread or hands it to a thread with fewer sessions.
async fn accept_loop(mut a: AcceptLoop<TcpListener>) {
    let mut acceptor = Acceptor::default();
    // After a move: the previous socket, accepted on until the deadline.
    let mut old: Option<(TcpListener, Instant)> = None;
    let mut moves_open = true;
    // The configuration whose client socket options the listening socket carries: accepted
    // sockets inherit them, which saves each client five `setsockopt`.
    let mut tuned: Option<Arc<crate::config::Config>> = None;
    loop {
        // Accept only while a slot is free, without holding it: every listener shares the slots,
        // and one idle in `accept` must not keep a slot from a client of another (HAProxy resumes
        // every listener when the process is under its limit again).
        tokio::select! {
            _ = a.stop.cancelled() => return,
            p = a.slots.acquire() => drop(p.expect("the semaphore is never closed")),
        };
        let on_error = |e: &io::Error, backoff: Duration| {
            a.shared
                .frontend_of(a.route)
                .accept_errors
                .fetch_add(1, Relaxed);
            tracing::error!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed; backing off");
        };
        let next = tokio::select! {
            r = acceptor.accept(&a.listener, &a.stop, on_error) => match r {
                Some(c) => Next::Client(c, true),
                None => return,
            },
            r = accept_old(&old) => match r {
                Ok(c) => Next::Client(c, false),
                // The old socket is only a courtesy: on any error, close it.
                Err(_) => Next::CloseOld,
            },
            _ = linger_over(&old) => Next::CloseOld,
            changed = a.moves.changed(), if moves_open => match changed {
                Ok(()) => Next::Moved(a.moves.borrow_and_update().clone()),
                Err(_) => Next::MovesClosed,
            },
        };
        let ((stream, peer), current) = match next {
            Next::Client(c, current) => (c, current),
            Next::CloseOld => {
                old = None;
                continue;
            }
            Next::MovesClosed => {
                moves_open = false;
                continue;
            }
            Next::Moved(None) => continue,
            Next::Moved(Some(to)) => {
                match register(&to) {
                    Ok(l) => {
                        let prev = std::mem::replace(&mut a.listener, l);
                        old = Some((prev, Instant::now() + MOVE_LINGER));
                        tuned = None;
                    }
                    Err(e) => tracing::error!(error = %e,
                        "relay thread {} could not take the moved listening socket; it accepts on the old one", a.me),
                }
                continue;
            }
        };
        let cfg = a.shared.config();
        if !current || tuned.as_ref().is_none_or(|t| !Arc::ptr_eq(t, &cfg)) {
            // Clients accepted before the listening socket had this configuration's options (or
            // from the old socket of a move) get them one by one.
            let keepalive = cfg.client_keepalive();
            connect::socket_options(socket2::SockRef::from(&stream), keepalive.clone());
            if current {
                connect::socket_options(socket2::SockRef::from(&a.listener), keepalive);
                tuned = Some(cfg);
            }
        }
        // Taken at once, unless another listener took the last free slot since: then this client,
        // already accepted, waits for the next one.
        let permit = tokio::select! {
            _ = a.stop.cancelled() => return,
            p = a.slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let (to, admission) = a.threads.admit(a.me, permit);
        if to == a.me {
            a.sessions.spawn(session::run(
                stream,
                peer,
                a.shared.clone(),
                a.route,
                admission,
                a.sessions.clone(),
            ));
            continue;
        }
        match stream.into_std() {
            Ok(s) => {
                if let Err((s, peer, admission)) = a.threads.hand(to, (s, peer, admission)) {
                    // That thread has stopped (shutdown): run the session here after all.
                    start(s, peer, &a.shared, a.route, admission, &a.sessions);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "handing a client to relay thread {to} failed")
            }
        }
    }
}

/// What an accept loop does next.
enum Next {
    /// A client, and whether it came from the current listening socket (not the old one).
    Client((TcpStream, std::net::SocketAddr), bool),
    CloseOld,
    Moved(Option<Arc<std::net::TcpListener>>),
    MovesClosed,
}

/// A client of the old socket after a move (never resolves without one).
async fn accept_old(
    old: &Option<(TcpListener, Instant)>,
) -> io::Result<(TcpStream, std::net::SocketAddr)> {
    match old {
        Some((l, _)) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the old socket's linger is over (never without one).
async fn linger_over(old: &Option<(TcpListener, Instant)>) {
    match old {
        Some((_, until)) => tokio::time::sleep_until(*until).await,
        None => std::future::pending().await,
    }
}

/// Runs the sessions of the clients other threads hand to this one. Ends when every accept loop
/// has (their senders are gone).
async fn take_handed(
    mut inbox: UnboundedReceiver<Job>,
    shared: Arc<Shared>,
    route: Route,
    sessions: TaskTracker,
) {
    while let Some((s, peer, admission)) = inbox.recv().await {
        start(s, peer, &shared, route, admission, &sessions);
    }
    std::future::pending::<()>().await
}

/// Registers a handed-over client with this thread's event loop and spawns its session.
fn start(
    s: std::net::TcpStream,
    peer: std::net::SocketAddr,
    shared: &Arc<Shared>,
    route: Route,
    admission: Admission,
    sessions: &TaskTracker,
) {
    match TcpStream::from_std(s) {
        Ok(s) => {
            sessions.spawn(session::run(
                s,
                peer,
                shared.clone(),
                route,
                admission,
                sessions.clone(),
            ));
        }
        Err(e) => tracing::warn!(error = %e, "registering a handed-over client failed"),
    }
}

/// Starts a relay thread with its own current-thread runtime (its own `epoll` and timers): a
/// session is registered with one thread's event loop for its life, so no socket is ever polled
/// from two CPUs and no work is stolen. The thread accepts until `stop`, then drains its sessions.
fn relay_thread(a: AcceptLoop<std::net::TcpListener>, inbox: UnboundedReceiver<Job>) {
    let i = a.me;
    let spawned = std::thread::Builder::new()
        .name(format!("pp-relay-{i}"))
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a relay thread's runtime");
            rt.block_on(async move {
                a.threads.enter(i);
                let sessions = a.sessions.clone();
                let taking = take_handed(inbox, a.shared.clone(), a.route, sessions.clone());
                let work = async {
                    match TcpListener::from_std(a.listener) {
                        Ok(listener) => {
                            accept_loop(AcceptLoop {
                                me: i,
                                listener,
                                moves: a.moves,
                                threads: a.threads,
                                slots: a.slots,
                                shared: a.shared,
                                route: a.route,
                                sessions: a.sessions,
                                stop: a.stop,
                            })
                            .await
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "relay thread {i} could not register the listening socket")
                        }
                    }
                    sessions.wait().await;
                };
                tokio::select! {
                    _ = work => {}
                    _ = taking => {}
                    _ = timer_tick() => {}
                }
            });
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "spawning relay thread {i} failed");
    }
}
