//! The stats listener's accept loop and HTTP connections, with the limits that keep a hostile or
//! broken client from holding resources: a connection limit, a deadline for each request head
//! (slowloris), a bounded head size (oversized URIs and headers get 431/414), and a maximum
//! connection age (a client that stops reading a response cannot pin a slot forever).
//!
//! It runs on its own listener and tasks and shares nothing with the primary port but the read-only
//! snapshot, so whatever happens here, clients of :5000 are not slowed down.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::state::Shared;

/// Resource bounds of the stats listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Time allowed to send a whole request head, and to send the next one on an idle keep-alive
    /// connection.
    pub header_timeout: Duration,
    /// Largest request head (request line + headers) read; hyper answers 431 beyond it.
    pub max_head: usize,
    /// Longest request target accepted (414 beyond it).
    pub max_uri: usize,
    /// A connection is closed (gracefully, then for good one second later) after this long.
    pub max_age: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            header_timeout: Duration::from_secs(5),
            max_head: 16 * 1024,
            max_uri: 2048,
            max_age: Duration::from_secs(300),
        }
    }
}

/// How long a connection may take to finish after a graceful close was asked for.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Serves the stats endpoints on `listener` until `stop` is cancelled.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    serve_with(listener, shared, Limits::default(), stop).await
}

/// [`serve`] with explicit limits.
pub async fn serve_with(
    listener: TcpListener,
    shared: Arc<Shared>,
    limits: Limits,
    stop: CancellationToken,
) {
    let app = super::router(shared, limits);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let mut backoff = Duration::from_millis(5);
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff = Duration::from_millis(5);
                stream
            }
            Err(e) if transient(&e) => continue,
            Err(e) => {
                // EMFILE and the like: retrying at once would spin.
                tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "stats accept failed; backing off");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let service = TowerToHyperService::new(app.clone());
        let stop = stop.clone();
        connections.spawn(async move {
            let _permit = permit;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(limits.max_head)
                .keep_alive(true);
            let conn = http.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let close = tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "stats connection ended with an error");
                    }
                    false
                }
                _ = stop.cancelled() => true,
                _ = tokio::time::sleep(limits.max_age) => true,
            };
            if close {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
            }
        });
    }
    connections.close();
    // Every connection task closes itself within CLOSE_GRACE of `stop`.
    connections.wait().await;
}

fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}
