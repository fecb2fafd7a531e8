//! The primary port: the accept loop ([`serve`]), one session per client ([`session`]) and the byte
//! relay ([`relay`]).

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

fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}
