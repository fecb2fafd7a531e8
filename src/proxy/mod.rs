//! The primary port: the accept loop ([`serve`]) and the relay threads it hands clients to, one
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
/// drain them. At `global.maxconn` open sessions the loop stops calling `accept`: new connections wait
/// in the kernel's queue, without a timeout, and are served in order as slots free (HAProxy's
/// behaviour, `haproxy-semantics.md` §2.4). It never dies on an accept error and never spins.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    sessions: TaskTracker,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(shared.config.global.maxconn.get() as usize));
    let threads = shared.config.global.threads();
    let workers = workers(threads, &shared, &sessions);
    let mut next = 0usize;
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
                // Round robin over the threads, this one included: sessions live long, and a
                // thread that is busy with one burst must not stall every session (docs/benchmarks.md).
                next = (next + 1) % threads;
                if next > 0 {
                    match stream.into_std() {
                        Ok(s) => {
                            // The worker outlives the accept loop (it drains its sessions).
                            let _ = workers[next - 1].send((s, peer, permit));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "handing a client to a relay thread failed")
                        }
                    }
                    continue;
                }
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

/// A client handed from the accept loop to another relay thread.
type Job = (
    std::net::TcpStream,
    std::net::SocketAddr,
    tokio::sync::OwnedSemaphorePermit,
);

/// Starts `threads - 1` relay threads beside this one, each with its own current-thread runtime
/// (its own `epoll` and timers): a session is registered with one thread's event loop for its life,
/// so no socket is ever polled from two CPUs and no work is stolen. Each thread ends once the accept
/// loop is gone (its channel closed) and the sessions are drained.
fn workers(
    threads: usize,
    shared: &Arc<Shared>,
    sessions: &TaskTracker,
) -> Vec<tokio::sync::mpsc::UnboundedSender<Job>> {
    (1..threads)
        .map(|i| {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
            let shared = shared.clone();
            let sessions = sessions.clone();
            std::thread::Builder::new()
                .name(format!("pp-relay-{i}"))
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a relay thread's runtime");
                    rt.block_on(async move {
                        while let Some((s, peer, permit)) = rx.recv().await {
                            match tokio::net::TcpStream::from_std(s) {
                                Ok(s) => {
                                    sessions.spawn(session::run(
                                        s,
                                        peer,
                                        shared.clone(),
                                        permit,
                                        sessions.clone(),
                                    ));
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "registering a handed-over client failed")
                                }
                            }
                        }
                        sessions.wait().await;
                    });
                })
                .expect("spawning a relay thread");
            tx
        })
        .collect()
}

fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}
