//! The sockets of every session relaying to one server, so that HAProxy's `on-marked-down
//! shutdown-sessions` can end them from outside: `shutdown(2)` on both sockets, after which each
//! relay sees the end of both streams and finishes by itself. A relaying session therefore waits on
//! nothing but its sockets and its idle timer; a kill future per session (a tokio `Notified`, or a
//! child `CancellationToken` and its heap node) was 120 bytes of every idle connection's task
//! (docs/benchmarks.md, RSS per idle connection).
//!
//! This is the crate's only `unsafe`, and it is confined to [`Relaying::shutdown_all`]: the registry
//! keeps raw descriptors, since a borrow cannot outlive the session task that owns the sockets. They
//! are valid there because the sockets can only be reached through [`Registered`], whose `Drop`
//! removes the entry, under the registry's lock, before the sockets close; so a descriptor number in
//! the registry is never one that was closed (and possibly reused for another file).
#![allow(unsafe_code)]

use std::net::Shutdown;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::{Arc, Mutex};

use slab::Slab;
use tokio::net::TcpStream;

/// The registry of one server.
#[derive(Debug, Default)]
pub struct Relaying {
    sessions: Mutex<Slab<[RawFd; 2]>>,
}

/// A session's client and server sockets while they are in the registry.
#[derive(Debug)]
pub struct Registered {
    client: TcpStream,
    server: TcpStream,
    registry: Arc<Relaying>,
    key: usize,
}

impl Relaying {
    /// Adds a session's sockets if `admit` (evaluated under the registry's lock, so no
    /// [`Relaying::shutdown_all`] runs between the check and the insertion) says so; otherwise gives
    /// them back.
    pub fn insert(
        self: &Arc<Self>,
        client: TcpStream,
        server: TcpStream,
        admit: impl FnOnce() -> bool,
    ) -> Result<Registered, (TcpStream, TcpStream)> {
        let mut sessions = self.sessions.lock().expect("registry lock");
        if !admit() {
            return Err((client, server));
        }
        let key = sessions.insert([client.as_raw_fd(), server.as_raw_fd()]);
        drop(sessions);
        Ok(Registered {
            client,
            server,
            registry: self.clone(),
            key,
        })
    }

    /// Runs `first`, then shuts down both sockets of every registered session, all under the lock.
    /// Returns how many sessions that reached.
    pub fn shutdown_all(&self, first: impl FnOnce()) -> usize {
        let sessions = self.sessions.lock().expect("registry lock");
        first();
        for (_, fds) in sessions.iter() {
            for &fd in fds {
                // SAFETY: `fd` belongs to a live `Registered`: its entry is removed under this lock
                // before its sockets can be closed (see `Drop for Registered`), and we hold the lock.
                let fd = unsafe { BorrowedFd::borrow_raw(fd) };
                // Best effort: a socket the peer already reset reports ENOTCONN, and that session is
                // ending anyway.
                let _ = socket2::SockRef::from(&fd).shutdown(Shutdown::Both);
            }
        }
        sessions.len()
    }

    /// Sessions registered now.
    pub fn len(&self) -> usize {
        self.sessions.lock().expect("registry lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Registered {
    pub fn client(&self) -> &TcpStream {
        &self.client
    }

    pub fn server(&self) -> &TcpStream {
        &self.server
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        // Before the fields (and so the sockets) are dropped: see the module comment.
        self.registry
            .sessions
            .lock()
            .expect("registry lock")
            .remove(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::relay::tests::pair;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn shutdown_all_ends_both_peers_and_dropping_deregisters() {
        let registry = Arc::new(Relaying::default());
        let (mut app, client) = pair().await;
        let (server, mut db) = pair().await;
        let r = registry.insert(client, server, || true).unwrap();
        assert_eq!(registry.len(), 1);
        let mut ran = false;
        assert_eq!(registry.shutdown_all(|| ran = true), 1);
        assert!(ran);
        // Both peers see the end of the stream, and so does the registered side.
        assert_eq!(app.read(&mut [0u8; 8]).await.unwrap(), 0);
        assert_eq!(db.read(&mut [0u8; 8]).await.unwrap(), 0);
        let mut b = [0u8; 8];
        r.client().readable().await.unwrap();
        assert_eq!(r.client().try_read(&mut b).unwrap(), 0);
        drop(r);
        assert!(registry.is_empty());
        // A later session is not touched by the earlier shutdown.
        let (mut app, client) = pair().await;
        let (server, _db) = pair().await;
        let _r = registry.insert(client, server, || true).unwrap();
        app.write_all(b"x").await.unwrap();
    }

    #[tokio::test]
    async fn a_refused_admission_gives_the_sockets_back() {
        let registry = Arc::new(Relaying::default());
        let (_app, client) = pair().await;
        let (server, _db) = pair().await;
        assert!(registry.insert(client, server, || false).is_err());
        assert!(registry.is_empty());
    }
}
