//! A relaying session whose bytes the kernel moves (`listen.relay = "kernel"`, `crate::sockmap`):
//! the proxy keeps both sockets but never reads them. It waits only for the end of either stream or
//! an error, passes half-closes on, attributes errors to their side, and runs the idle timer on the
//! time of the last segment the BPF program saw; the program's byte counts feed the counters
//! (`crate::sockmap` adds them when the stats are read, and at the session's end).
//!
//! The sockets are watched through their thread's epoll instance ([`super::watch`]), asking for
//! `EPOLLRDHUP` (errors and hang-ups are always reported) and never `EPOLLIN`: a mapped socket still
//! signals readability for every segment the kernel redirects, and tokio's event loop, which always
//! asks for it, would wake the proxy's thread for each message.
//!
//! A FIN from one side is passed on only after the bytes the kernel redirected before it have been
//! written to the other socket (`relaying::bytes_written` against the program's count): the
//! redirect runs in the kernel's psock worker, and a `shutdown(SHUT_WR)` ahead of it would make its
//! send fail (`EPIPE`, reported as an error on that socket) and lose the tail of the stream.

use std::future::Future;
use std::io;
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsFd;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use super::relay::{End, Side};
use super::watch::{watch, Watched};
use crate::backend::relaying::{bytes_written, Registered};
use crate::sockmap::{Counted, Joined};

/// How often a half-close waiting for the kernel's redirected bytes to be written looks again.
const DRAIN_POLL: Duration = Duration::from_millis(1);

/// The client (0) and the server (1).
const SIDES: [Side; 2] = [Side::Client, Side::Server];

/// A kernel-relayed session's state (see the module comment).
pub struct KernelRelay {
    /// The sockets' place in the BPF maps; dropped (taken out) before the sockets close, as it
    /// comes before them in the session's task.
    joined: Joined,
    watched: Watched,
    /// Bytes written to the client's and the server's socket before the kernel took over.
    base: [u64; 2],
    /// The last activity known when the timer last fired (at first, when the kernel took over),
    /// and the byte counts then: a count that moved means a segment since.
    last: Instant,
    seen: [u64; 2],
    limit: Duration,
    idle_side: Side,
    /// End of stream read from the client / the server, and passed on to the other side.
    eof: [bool; 2],
    passed: [bool; 2],
}

impl KernelRelay {
    /// Watches a session's sockets, which `joined` has put into the maps. Returns the relay and
    /// the first deadline of its timer; `idle` as the user-space relay had it
    /// ([`super::relay::Relay::idle`]).
    pub fn new(
        client: &TcpStream,
        server: &TcpStream,
        base: [u64; 2],
        joined: Joined,
        (limit, idle_side): (Duration, Side),
    ) -> io::Result<(Self, Instant)> {
        let watched = watch(client, server)?;
        let start = Instant::now();
        let relay = KernelRelay {
            joined,
            watched,
            base,
            last: start,
            seen: [0; 2],
            limit,
            idle_side,
            eof: [false; 2],
            passed: [false; 2],
        };
        Ok((relay, crate::time::deadline(start, limit)))
    }

    /// Whether the end of the stream was read from the client and from the server.
    pub fn eof(&self) -> (bool, bool) {
        (self.eof[0], self.eof[1])
    }

    pub fn poll(
        &mut self,
        cx: &mut Context<'_>,
        io: &Registered<TcpStream>,
        mut sleep: Pin<&mut Sleep>,
    ) -> Poll<End> {
        let socks = [io.client(), io.server()];
        loop {
            if let Err(end) = self.events(cx, socks) {
                return Poll::Ready(end);
            }
            let waiting = match self.pass_half_closes(socks) {
                Ok(w) => w,
                Err(end) => {
                    return Poll::Ready(end);
                }
            };
            if self.passed == [true, true] {
                return Poll::Ready(End::Closed);
            }
            if waiting {
                sleep.as_mut().reset(Instant::now() + DRAIN_POLL);
            }
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // The timer fired: look at the drain again, or at the idle time.
            if !waiting {
                let counted = self.joined.flush();
                self.note_activity(counted);
                let deadline = crate::time::deadline(self.last, self.limit);
                if Instant::now() >= deadline {
                    return Poll::Ready(End::Idle(self.idle_side));
                }
                sleep.as_mut().reset(deadline);
            }
        }
    }

    /// Takes what the thread's watch saw, until it has nothing more (the task's waker then waits
    /// in it): ends of stream are noted, an error ends the relay.
    fn events(&mut self, cx: &mut Context<'_>, socks: [&TcpStream; 2]) -> Result<(), End> {
        loop {
            let seen = match self.watched.poll(cx) {
                Poll::Pending => return Ok(()),
                Poll::Ready(Ok(seen)) => seen,
                // The watch itself failed: nothing is known of the sockets.
                Poll::Ready(Err(e)) => return Err(End::Error(Side::Server, e)),
            };
            for (i, seen) in seen.iter().enumerate() {
                if seen.error {
                    if let Ok(Err(errno)) = rustix::net::sockopt::socket_error(socks[i]) {
                        return Err(End::Error(SIDES[i], errno.into()));
                    }
                }
                if seen.eof {
                    self.eof[i] = true;
                }
            }
        }
    }

    /// Passes each end of stream on once the kernel has written what it redirected before it.
    /// Returns whether one is still waiting for that.
    fn pass_half_closes(&mut self, socks: [&TcpStream; 2]) -> Result<bool, End> {
        let mut waiting = false;
        let mut counted = None;
        for from in 0..2 {
            if !self.eof[from] || self.passed[from] {
                continue;
            }
            let to = 1 - from;
            let counted = *counted.get_or_insert_with(|| self.joined.flush());
            // A socket that can no longer send (shut down by a kill, or reset) has nothing to
            // wait for; nor does a kernel without the counters (older than 4.19).
            if let Some((written, true)) = bytes_written(socks[to].as_fd()) {
                if written.saturating_sub(self.base[to]) < counted[from].bytes {
                    waiting = true;
                    continue;
                }
            }
            match socket2::SockRef::from(socks[to]).shutdown(Shutdown::Write) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                Err(e) => return Err(End::Error(SIDES[to], e)),
            }
            self.passed[from] = true;
        }
        Ok(waiting)
    }

    /// Moves `last` to the last segment either way if there was one since the previous look. The
    /// program's time (CLOCK_MONOTONIC) says how long ago, put on tokio's clock (which tests may
    /// pause); the byte counts say whether there was one at all.
    fn note_activity(&mut self, counted: [Counted; 2]) {
        let bytes = counted.map(|c| c.bytes);
        if bytes == self.seen {
            return;
        }
        self.seen = bytes;
        let last_ns = counted[0].last_ns.max(counted[1].last_ns);
        let now_ns = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let now_ns = (now_ns.tv_sec as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(now_ns.tv_nsec as u64);
        let ago = Duration::from_nanos(now_ns.saturating_sub(last_ns));
        let now = Instant::now();
        self.last = now.checked_sub(ago).unwrap_or(now).max(self.last);
    }
}

/// Bytes written so far to each of a session's sockets, taken before the kernel takes over.
pub fn written_before(client: impl AsFd, server: impl AsFd) -> [u64; 2] {
    [client.as_fd(), server.as_fd()].map(|fd| bytes_written(fd).map_or(0, |(w, _)| w))
}
