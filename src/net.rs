//! Accepting on a listener, for both listeners (and taking a listening socket a reload moved,
//! [`Moves`]): a connection gone before it was taken is skipped,
//! and an error such as EMFILE is backed off from (5 ms doubling to 1 s) instead of retried at once,
//! so an accept loop never spins and never dies. Also which socket errors are the proxy's own
//! shortage rather than the peer's doing.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Where a listener listens next: a reload that moves its `bind` publishes the new socket here,
/// already bound and listening; every accept loop takes its own duplicate of it ([`register`]).
pub type Moves = watch::Receiver<Option<std::sync::Arc<std::net::TcpListener>>>;

/// This accept loop's own handle on a moved listening socket.
pub fn register(l: &std::net::TcpListener) -> io::Result<TcpListener> {
    let dup = l.try_clone()?;
    dup.set_nonblocking(true)?;
    TcpListener::from_std(dup)
}

const FIRST_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// One accept loop's state: its current backoff.
#[derive(Debug)]
pub struct Acceptor {
    backoff: Duration,
}

impl Default for Acceptor {
    fn default() -> Self {
        Self {
            backoff: FIRST_BACKOFF,
        }
    }
}

impl Acceptor {
    /// The next connection, or `None` once `stop` is cancelled. `on_error` is told of every error
    /// backed off from (to log and count it) with the backoff about to be waited.
    pub async fn accept(
        &mut self,
        listener: &TcpListener,
        stop: &CancellationToken,
        on_error: impl Fn(&io::Error, Duration),
    ) -> Option<(TcpStream, SocketAddr)> {
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => return None,
                r = listener.accept() => r,
            };
            match accepted {
                Ok(a) => {
                    self.backoff = FIRST_BACKOFF;
                    return Some(a);
                }
                Err(e) if is_transient(&e) => {}
                Err(e) => {
                    on_error(&e, self.backoff);
                    tokio::select! {
                        _ = stop.cancelled() => return None,
                        _ = tokio::time::sleep(self.backoff) => {}
                    }
                    self.backoff = self.backoff.saturating_mul(2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// The connection was aborted before we took it: nothing to back off from.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// Errors that come from this process or host running out of something, not from the node: the
/// socket could not even be created or bound.
pub fn is_local_resource_error(e: &io::Error) -> bool {
    const EMFILE: i32 = 24;
    const ENFILE: i32 = 23;
    const ENOMEM: i32 = 12;
    const ENOBUFS: i32 = 105;
    // No free local port for the connection (ephemeral range exhausted).
    const EADDRNOTAVAIL: i32 = 99;
    matches!(
        e.raw_os_error(),
        Some(EMFILE | ENFILE | ENOMEM | ENOBUFS | EADDRNOTAVAIL)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_resource_errors_are_told_apart() {
        // Issue 11 item 6: EMFILE is the proxy's shortage, not the node's refusal.
        assert!(is_local_resource_error(&io::Error::from_raw_os_error(24)));
        assert!(is_local_resource_error(&io::Error::from_raw_os_error(105)));
        assert!(!is_local_resource_error(&io::Error::from_raw_os_error(111)));
        assert!(!is_local_resource_error(&io::Error::other("x")));
    }

    #[test]
    fn only_a_vanished_connection_is_transient() {
        assert!(is_transient(&io::Error::from(
            io::ErrorKind::ConnectionAborted
        )));
        assert!(
            !is_transient(&io::Error::from_raw_os_error(24)),
            "EMFILE backs off"
        );
    }
}
