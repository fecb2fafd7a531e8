//! The primary port: the accept loops ([`serve`]), one per relay thread, one
//! session per client ([`session`]), the byte relay ([`relay`]) and each server's registry of relaying
//! sessions that `shutdown-sessions` goes through ([`relaying`]).

pub mod relay;
pub mod relaying;
pub mod session;

use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::state::Shared;

/// Accepts clients until `stop` is cancelled. Sessions are spawned on `sessions` so the caller can
/// drain them. Every relay thread accepts from the same listening socket (`threads` below); at
/// `global.maxconn` open sessions they stop calling `accept`: new connections wait in the kernel's
/// queue, without a timeout, and are served in order as slots free (HAProxy's behaviour,
/// `haproxy-semantics.md` §2.4). It never dies on an accept error and never spins.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    sessions: TaskTracker,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(shared.config.global.maxconn.get() as usize));
    let threads = shared.config.global.threads();
    for i in 1..threads {
        // The same listening socket (a duplicate descriptor), registered with the other thread's
        // event loop: a client is accepted by a thread that is free to take it, and its socket is
        // never handed between threads (docs/benchmarks.md has the figures against a hand-off).
        match socket2::SockRef::from(&listener).try_clone() {
            Ok(dup) => relay_thread(i, dup.into(), &slots, &shared, &sessions, &stop),
            Err(e) => {
                tracing::error!(error = %e, "duplicating the listening socket for relay thread {i} failed; it does not start")
            }
        }
    }
    tokio::select! {
        _ = accept_loop(listener, slots, shared, sessions, stop) => {}
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

/// One thread's accept loop: takes a slot of `global.maxconn`, then a client, and runs its session
/// on this thread.
async fn accept_loop(
    listener: TcpListener,
    slots: Arc<Semaphore>,
    shared: Arc<Shared>,
    sessions: TaskTracker,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => return,
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                sessions.spawn(session::run(
                    stream,
                    peer,
                    shared.clone(),
                    permit,
                    sessions.clone(),
                ));
            }
            Err(e) if is_transient_accept_error(&e) => {
                // Connection aborted before we took it: nothing to back off from.
                tracing::debug!(error = %e, "accept: connection gone before accept");
            }
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS and the like: retrying at once would spin. Back off, up to 1 s.
                shared.frontend.accept_errors.fetch_add(1, Relaxed);
                tracing::error!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed; backing off");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Starts relay thread `i` with its own current-thread runtime (its own `epoll` and timers): a
/// session is registered with one thread's event loop for its life, so no socket is ever polled
/// from two CPUs and no work is stolen. The thread accepts until `stop`, then drains its sessions.
fn relay_thread(
    i: usize,
    listener: std::net::TcpListener,
    slots: &Arc<Semaphore>,
    shared: &Arc<Shared>,
    sessions: &TaskTracker,
    stop: &CancellationToken,
) {
    let (slots, shared, sessions, stop) = (
        slots.clone(),
        shared.clone(),
        sessions.clone(),
        stop.clone(),
    );
    let spawned = std::thread::Builder::new()
        .name(format!("pp-relay-{i}"))
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a relay thread's runtime");
            rt.block_on(async move {
                let work = async {
                    match TcpListener::from_std(listener) {
                        Ok(l) => accept_loop(l, slots, shared, sessions.clone(), stop).await,
                        Err(e) => {
                            tracing::error!(error = %e, "relay thread {i} could not register the listening socket")
                        }
                    }
                    sessions.wait().await;
                };
                tokio::select! {
                    _ = work => {}
                    _ = timer_tick() => {}
                }
            });
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "spawning relay thread {i} failed");
    }
}

fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}
