//! The sockets of every session relaying to one server, so that HAProxy's `on-marked-down
//! shutdown-sessions` can end them from outside: `shutdown(2)` on both sockets, after which each
//! relay sees the end of both streams and finishes by itself. A relaying session therefore waits on
//! nothing but its sockets and its idle timer; a kill future per session (a tokio `Notified`, or a
//! child `CancellationToken` and its heap node) was 120 bytes of every idle connection's task
//! (docs/benchmarks.md, RSS per idle connection).
//!
//! The same registry lets the sessions view (`/sessions.json`) see each relaying session without
//! touching the data path: [`Relaying::visit`] asks the kernel for the addresses and the byte
//! counts of the sockets (`TCP_INFO`), so the relay keeps no per-session counter.
//!
//! This is the crate's only `unsafe`, and it is confined to [`Relaying::shutdown_all`] and
//! [`Relaying::visit`] (with [`tcp_bytes`]): the registry keeps raw descriptors, since a borrow
//! cannot outlive the session task that owns the sockets. They are valid there because the sockets
//! can only be reached through [`Registered`], whose `Drop` removes the entry, under the registry's
//! lock, before the sockets close; so a descriptor number in the registry is never one that was
//! closed (and possibly reused for another file). The two other `getsockopt`/`setsockopt` calls
//! ([`bytes_written`], [`kick`], for the kernel relay) only borrow a descriptor their caller holds;
//! [`watch`] registers one it owns.
#![allow(unsafe_code)]

use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use slab::Slab;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The registry of one server.
#[derive(Debug)]
pub struct Relaying {
    sessions: Mutex<Slab<Entry>>,
    /// What the entries' `since` counts from.
    epoch: Instant,
}

impl Default for Relaying {
    fn default() -> Self {
        Self {
            sessions: Mutex::default(),
            epoch: Instant::now(),
        }
    }
}

/// One registered session: 12 bytes, so a slot of the registry's slab stays 16 bytes as it was
/// before the sessions view needed `since` (a unit test keeps it so; per idle connection memory is
/// a benchmark row).
#[derive(Debug)]
struct Entry {
    /// The client's and the server's socket.
    fds: [RawFd; 2],
    /// When the client was accepted, in tenths of a second since the registry's epoch, modulo 2^32:
    /// ages are taken with wrapping arithmetic, right for sessions younger than 13 years.
    since: u32,
}

/// Tenths of a second from `epoch` to `t`, modulo 2^32 (see [`Entry::since`]).
fn ticks(epoch: Instant, t: Instant) -> u32 {
    (t.saturating_duration_since(epoch).as_millis() / 100) as u32
}

/// A relaying session as the kernel sees its sockets, for the sessions view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The client's address (`None` if the socket no longer has a peer).
    pub client: Option<SocketAddr>,
    /// The local port of the proxy's connection to PostgreSQL (`pg_stat_activity.client_port`).
    pub backend_port: Option<u16>,
    pub age: Duration,
    /// Bytes received from the client and bytes the client acknowledged (`TCP_INFO`'s
    /// `tcpi_bytes_received` / `tcpi_bytes_acked`, Linux 4.2+; `None` on an older kernel).
    pub bytes_in: Option<u64>,
    pub bytes_out: Option<u64>,
}

/// A session's client and server sockets while they are in the registry: tokio's sockets for a
/// relay in user space, the standard library's (out of tokio's event loop, whose readability
/// events would wake the proxy for every message the kernel relays) for the kernel relay.
#[derive(Debug)]
pub struct Registered<S: AsRawFd = TcpStream> {
    // First, so it is dropped (taking the entry out) before the sockets close: see the module
    // comment.
    entry: Key,
    client: S,
    server: S,
}

/// A session's entry in the registry, taken out when this drops.
#[derive(Debug)]
struct Key {
    registry: Arc<Relaying>,
    key: usize,
}

impl Relaying {
    /// Adds a session's sockets if `admit` (evaluated under the registry's lock, so no
    /// [`Relaying::shutdown_all`] runs between the check and the insertion) says so; otherwise gives
    /// them back.
    /// `since` is when the client was accepted (the session's age in the sessions view).
    pub fn insert<S: AsRawFd>(
        self: &Arc<Self>,
        client: S,
        server: S,
        since: Instant,
        admit: impl FnOnce() -> bool,
    ) -> Result<Registered<S>, (S, S)> {
        let mut sessions = self.sessions.lock().expect("registry lock");
        if !admit() {
            return Err((client, server));
        }
        let key = sessions.insert(Entry {
            fds: [client.as_raw_fd(), server.as_raw_fd()],
            since: ticks(self.epoch, since),
        });
        drop(sessions);
        Ok(Registered {
            entry: Key {
                registry: self.clone(),
                key,
            },
            client,
            server,
        })
    }

    /// Runs `first`, then shuts down both sockets of every registered session, all under the lock.
    /// Returns how many sessions that reached.
    pub fn shutdown_all(&self, first: impl FnOnce()) -> usize {
        let sessions = self.sessions.lock().expect("registry lock");
        first();
        for (_, entry) in sessions.iter() {
            for &fd in &entry.fds {
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

    /// Shows `f` at most `limit` registered sessions; returns how many are registered in all. Four
    /// system calls per session are made under the lock (the descriptors are valid only there), so
    /// it is taken for [`VISIT_BATCH`] slots at a time: sessions of this server starting or ending
    /// wait for at most one batch (a few hundred microseconds), not for the whole list. A session
    /// that starts during the visit may be missed; none is shown twice.
    pub fn visit(&self, now: Instant, limit: usize, mut f: impl FnMut(Seen)) -> usize {
        let mut shown = 0;
        let mut from = 0usize;
        let now = ticks(self.epoch, now);
        loop {
            let sessions = self.sessions.lock().expect("registry lock");
            let end = from.saturating_add(VISIT_BATCH).min(sessions.capacity());
            if from >= end || shown >= limit {
                return sessions.len();
            }
            for key in from..end {
                let Some(entry) = sessions.get(key) else {
                    continue;
                };
                if shown >= limit {
                    break;
                }
                shown += 1;
                f(seen(entry, now));
            }
            from = end;
        }
    }

    /// Sessions registered now.
    pub fn len(&self) -> usize {
        self.sessions.lock().expect("registry lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Slots of the registry [`Relaying::visit`] goes through per taking of the lock.
const VISIT_BATCH: usize = 64;

/// The time from `since` to `now` (both [`ticks`]), right across a wrap of the counter.
fn age(now: u32, since: u32) -> Duration {
    Duration::from_millis(u64::from(now.wrapping_sub(since)) * 100)
}

/// What the sessions view shows of a registered session (`now` in [`ticks`]). Call only under the
/// registry's lock.
fn seen(entry: &Entry, now: u32) -> Seen {
    // SAFETY: as in `shutdown_all`: the entry's sockets are open while its registry is locked,
    // which the caller does.
    let [client, server] = entry.fds.map(|fd| unsafe { BorrowedFd::borrow_raw(fd) });
    let (bytes_in, bytes_out) = tcp_bytes(client);
    Seen {
        client: socket2::SockRef::from(&client)
            .peer_addr()
            .ok()
            .and_then(|a| a.as_socket()),
        backend_port: socket2::SockRef::from(&server)
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .map(|a| a.port()),
        age: age(now, entry.since),
        bytes_in,
        bytes_out,
    }
}

/// `tcpi_bytes_received` and `tcpi_bytes_acked` of a TCP socket. The offsets are the kernel's ABI
/// (`struct tcp_info` only ever grows at its end); the kernel says how much of it it filled, and a
/// field it did not fill is `None`. The `libc` crate's `tcp_info` for glibc stops before these.
fn tcp_bytes(fd: BorrowedFd<'_>) -> (Option<u64>, Option<u64>) {
    const BYTES_ACKED: usize = 120;
    const BYTES_RECEIVED: usize = 128;
    let mut buf = [0u8; 256];
    let filled = tcp_info(fd, &mut buf);
    let field = |at: usize| {
        filled
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_ne_bytes)
    };
    (field(BYTES_RECEIVED), field(BYTES_ACKED))
}

/// The part of `buf` the kernel filled with the socket's `struct tcp_info` (empty on an error).
fn tcp_info<'b>(fd: BorrowedFd<'_>, buf: &'b mut [u8; 256]) -> &'b [u8] {
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: `fd` is open (see the callers); the kernel writes at most `len` bytes into `buf`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r != 0 {
        return &[];
    }
    buf.get(..len as usize).unwrap_or_default()
}

/// Bytes of data the kernel has received on a TCP socket so far, for a session's log line at its
/// end (`None` on a kernel older than 4.2). `tcpi_bytes_received` counts the peer's FIN too (it
/// takes a sequence number), so one is taken off when the FIN has arrived: `eof` if the caller read
/// the end of the stream, else as the socket's state says (`CLOSE_WAIT`, `LAST_ACK`, `CLOSING`,
/// `TIME_WAIT`; a socket reset after a FIN, in `CLOSE`, may count one byte too many).
pub fn bytes_received(s: impl AsFd, eof: Option<bool>) -> Option<u64> {
    const CLOSE_WAIT: u8 = 8;
    const LAST_ACK: u8 = 9;
    const CLOSING: u8 = 11;
    const TIME_WAIT: u8 = 6;
    let mut buf = [0u8; 256];
    let info = tcp_info(s.as_fd(), &mut buf);
    let received = info
        .get(128..136)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_ne_bytes)?;
    let fin = eof.unwrap_or_else(|| {
        info.first()
            .is_some_and(|st| [CLOSE_WAIT, LAST_ACK, CLOSING, TIME_WAIT].contains(st))
    });
    Some(received.saturating_sub(u64::from(fin)))
}

/// Bytes the application has written to a TCP socket so far (sent once, or still unsent), from
/// `TCP_INFO` (Linux 4.19+): `tcpi_bytes_sent - tcpi_bytes_retrans + tcpi_notsent_bytes`, and whether
/// the socket can still send (`ESTABLISHED` or `CLOSE_WAIT`: no FIN sent yet). `None` on an older
/// kernel. The kernel relay waits for the bytes it redirected to a socket to be written to it
/// before passing the other side's half-close on (`src/proxy/kernel.rs`).
pub fn bytes_written(fd: BorrowedFd<'_>) -> Option<(u64, bool)> {
    const ESTABLISHED: u8 = 1;
    const CLOSE_WAIT: u8 = 8;
    const NOTSENT: usize = 144;
    const BYTES_SENT: usize = 200;
    const BYTES_RETRANS: usize = 208;
    let mut buf = [0u8; 256];
    let info = tcp_info(fd, &mut buf);
    let u64_at = |at: usize| {
        info.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_ne_bytes)
    };
    let notsent = info
        .get(NOTSENT..NOTSENT + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_ne_bytes)?;
    let sent = u64_at(BYTES_SENT)?.saturating_sub(u64_at(BYTES_RETRANS)?);
    let open = info
        .first()
        .is_some_and(|st| [ESTABLISHED, CLOSE_WAIT].contains(st));
    Some((sent + u64::from(notsent), open))
}

/// Hands the bytes waiting in a socket's receive queue to its `sk_data_ready`: setting
/// `SO_RCVLOWAT` makes TCP check whether readers must be woken now (`tcp_set_rcvlowat`), and on a
/// socket in the kernel relay's map that reader is the BPF verdict. Bytes that arrived before the
/// socket entered the map would otherwise wait for the next segment (`src/sockmap`).
pub fn kick(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: `fd` is open (the caller borrows it); the kernel reads `size_of::<c_int>()` bytes.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Registers a descriptor the caller gives away (the kernel relay's epoll instance) with tokio's
/// event loop, for readability.
pub fn watch(
    fd: std::os::fd::OwnedFd,
) -> std::io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    // SAFETY: the `AsyncFd` owns the descriptor, and closes it only when it drops, after taking it
    // out of the event loop: it is never closed while registered (tokio#8587).
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(std::io::Error::from)
}

impl<S: AsRawFd> Registered<S> {
    pub fn client(&self) -> &S {
        &self.client
    }

    pub fn server(&self) -> &S {
        &self.server
    }

    /// Takes the session out of the registry and gives its sockets back (to move them into the
    /// kernel relay, which registers them again: `shutdown_all` does not reach them in between,
    /// so the caller checks for a kill when it does).
    pub fn leave(self) -> (S, S) {
        let Registered {
            entry,
            client,
            server,
        } = self;
        drop(entry);
        (client, server)
    }
}

impl Drop for Key {
    fn drop(&mut self) {
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
        let r = registry
            .insert(client, server, Instant::now(), || true)
            .unwrap();
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
        let _r = registry
            .insert(client, server, Instant::now(), || true)
            .unwrap();
        app.write_all(b"x").await.unwrap();
    }

    #[tokio::test]
    async fn visit_reports_the_peers_the_backend_port_and_the_kernels_byte_counts() {
        let registry = Arc::new(Relaying::default());
        let (mut app, client) = pair().await;
        let (server, db) = pair().await;
        let since = Instant::now();
        let r = registry
            .insert(client, server, since, || true)
            .map_err(|_| ())
            .unwrap();
        app.write_all(b"hello").await.unwrap();
        r.client().writable().await.unwrap();
        assert_eq!(r.client().try_write(b"abc").unwrap(), 3);
        let mut got = [0u8; 3];
        app.read_exact(&mut got).await.unwrap();
        // The kernel counts the 5 bytes on arrival and the 3 once the app's ACK is back.
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        let seen = loop {
            let mut seen = Vec::new();
            assert_eq!(registry.visit(Instant::now(), 10, |s| seen.push(s)), 1);
            if seen[0].bytes_in == Some(5) && seen[0].bytes_out == Some(3) {
                break seen.remove(0);
            }
            assert!(Instant::now() < deadline, "bytes never counted: {seen:?}");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        };
        assert_eq!(seen.client, Some(app.local_addr().unwrap()));
        assert_eq!(seen.backend_port, Some(db.peer_addr().unwrap().port()));
        // A limit of zero shows nothing but still counts.
        assert_eq!(registry.visit(Instant::now(), 0, |_| panic!("shown")), 1);
    }

    #[test]
    fn an_entry_keeps_the_slab_slot_at_16_bytes_and_ages_wrap_correctly() {
        // A slab slot is an enum of the entry and a `usize` (the free list's next index).
        assert!(std::mem::size_of::<Entry>() <= std::mem::size_of::<usize>() + 4);
        let epoch = Instant::now();
        let t = epoch + Duration::from_millis(1234);
        assert_eq!(ticks(epoch, t), 12);
        assert_eq!(ticks(t, epoch), 0, "before the epoch saturates");
        assert_eq!(age(17, 5), Duration::from_millis(1200));
        // Across the wrap of the counter, the age is still the difference.
        assert_eq!(age(5, u32::MAX - 4), Duration::from_secs(1));
    }

    #[tokio::test]
    async fn visit_goes_through_every_batch_and_stops_at_the_limit() {
        let registry = Arc::new(Relaying::default());
        let mut held = Vec::new();
        let n = VISIT_BATCH * 2 + 3;
        // Each session is told apart by its age (ports may repeat across destinations).
        let now = Instant::now() + std::time::Duration::from_secs(1000);
        for i in 0..n {
            let (app, client) = pair().await;
            let (server, db) = pair().await;
            let since = now - std::time::Duration::from_secs(i as u64);
            let r = registry
                .insert(client, server, since, || true)
                .map_err(|_| ())
                .unwrap();
            held.push((i as u64, app, db, r));
        }
        // A hole in the slab is skipped, not shown.
        held.remove(5);
        let mut ages = std::collections::BTreeSet::new();
        let total = registry.visit(now, usize::MAX, |s| {
            assert!(ages.insert(s.age.as_secs()), "shown twice");
        });
        let expected: std::collections::BTreeSet<u64> = held.iter().map(|h| h.0).collect();
        assert_eq!(total, n - 1);
        assert_eq!(ages, expected);
        let mut shown = 0;
        assert_eq!(registry.visit(now, VISIT_BATCH + 1, |_| shown += 1), n - 1);
        assert_eq!(shown, VISIT_BATCH + 1);
    }

    #[tokio::test]
    async fn a_refused_admission_gives_the_sockets_back() {
        let registry = Arc::new(Relaying::default());
        let (_app, client) = pair().await;
        let (server, _db) = pair().await;
        assert!(registry
            .insert(client, server, Instant::now(), || false)
            .is_err());
        assert!(registry.is_empty());
    }
}
