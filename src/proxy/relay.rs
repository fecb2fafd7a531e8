//! Moving bytes between a client and a server: both directions in one task, half-close forwarded,
//! one idle timer for the session, and every error attributed to the side it came from.
//!
//! Each direction waits for readiness and then reads into a per-thread buffer that is borrowed only
//! until the bytes are handed to the kernel: an idle session holds no buffer at all (`baseline.md`: a
//! naive 2x8 KiB copy loop costs 18 KiB per idle connection). Only when the peer's socket is full are
//! the unsent bytes copied to the heap, and that allocation is dropped as soon as it drains.
//!
//! Small messages (PostgreSQL's) cost one `recv` and one `send` each: a read shorter than the buffer
//! means the socket is drained, so its readiness is cleared then instead of by a second `recv` that
//! would only say `EAGAIN` (tokio's own `poll_read` does the same). A direction whose read fills the
//! whole buffer is carrying bulk data and switches to `splice(2)` through a pipe of its own, so bulk
//! bytes never enter user space (docs/benchmarks.md has the figures for both choices).

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use rustix::pipe::{splice, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// Bytes read per readiness event in copy mode; a read this long switches the direction to splice.
const CHUNK: usize = 64 * 1024;
/// Pipe capacity asked for in splice mode (the kernel's default is 64 KiB).
const PIPE: usize = 256 * 1024;

thread_local! {
    /// The copy buffer of every session on this thread. Never held across an await.
    static BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; CHUNK].into_boxed_slice());
}

/// Which end of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "server",
        }
    }
}

/// How a relay ended.
#[derive(Debug)]
pub enum End {
    /// Both directions reached end-of-stream.
    Closed,
    /// No byte either way for the idle timeout; the side whose timeout fired.
    Idle(Side),
    /// An IO error on one side.
    Error(Side, io::Error),
}

/// Byte counters a relay adds to.
pub struct Meters<'a> {
    /// Client to server.
    pub up: [&'a AtomicU64; 2],
    /// Server to client.
    pub down: [&'a AtomicU64; 2],
}

/// A session's relay state, polled by hand rather than as two `async` pumps joined and raced with
/// a timer: the compiler's state machine for that was 1.9 KiB per session, this is 56 bytes (plus
/// the timer), and a session's task is most of the memory an idle connection costs
/// (docs/benchmarks.md). It holds no reference, so a task can own it beside its sockets.
pub struct Relay {
    up: Direction,
    down: Direction,
    /// The last time a byte moved either way.
    last: Instant,
    limit: Duration,
    idle_side: Side,
    /// End-of-stream reached and forwarded, per direction.
    up_done: bool,
    down_done: bool,
}

impl Relay {
    /// A relay whose idle timer (a [`Sleep`] the caller keeps pinned) starts at the returned deadline.
    /// `idle_client`/`idle_server` are HAProxy's `timeout client`/`timeout server`: inactivity
    /// timeouts where a byte in either direction counts as activity for both (writing to a side
    /// refreshes its read timer, `haproxy-semantics.md` §2.6), so the session goes at the smaller.
    pub fn new(idle_client: Duration, idle_server: Duration) -> (Self, Instant) {
        let (limit, idle_side) = if idle_client <= idle_server {
            (idle_client, Side::Client)
        } else {
            (idle_server, Side::Server)
        };
        let last = Instant::now();
        let relay = Relay {
            up: Direction::default(),
            down: Direction::default(),
            last,
            limit,
            idle_side,
            up_done: false,
            down_done: false,
        };
        // The timer is re-armed only when it fires (to `last + limit`), not on every byte.
        (relay, crate::time::deadline(last, limit))
    }

    /// Whether the end of the stream was read from the client and from the server.
    pub fn eof(&self) -> (bool, bool) {
        (self.up_done, self.down_done)
    }

    pub fn poll(
        &mut self,
        cx: &mut Context<'_>,
        client: &TcpStream,
        server: &TcpStream,
        meters: &Meters<'_>,
        mut sleep: Pin<&mut Sleep>,
    ) -> Poll<End> {
        if !self.up_done {
            match self
                .up
                .poll(cx, client, server, Side::Client, meters.up, &mut self.last)
            {
                Poll::Ready(Ok(())) => self.up_done = true,
                Poll::Ready(Err((side, e))) => return Poll::Ready(End::Error(side, e)),
                Poll::Pending => {}
            }
        }
        if !self.down_done {
            match self.down.poll(
                cx,
                server,
                client,
                Side::Server,
                meters.down,
                &mut self.last,
            ) {
                Poll::Ready(Ok(())) => self.down_done = true,
                Poll::Ready(Err((side, e))) => return Poll::Ready(End::Error(side, e)),
                Poll::Pending => {}
            }
        }
        if self.up_done && self.down_done {
            return Poll::Ready(End::Closed);
        }
        while sleep.as_mut().poll(cx).is_ready() {
            let deadline = crate::time::deadline(self.last, self.limit);
            if Instant::now() >= deadline {
                return Poll::Ready(End::Idle(self.idle_side));
            }
            sleep.as_mut().reset(deadline);
        }
        Poll::Pending
    }
}

/// One direction of a session: 8 bytes while it only relays small messages.
#[derive(Default)]
struct Direction {
    /// What a slow destination or a bulk transfer needs; allocated only then.
    cold: Option<Box<Cold>>,
}

#[derive(Default)]
struct Cold {
    /// Copy mode: bytes read but not yet accepted by the destination.
    pending: Vec<u8>,
    /// Splice mode: the pipe, and how many bytes in it are still to be written.
    pipe: Option<Pipe>,
    held: usize,
}

/// Reads per poll before yielding to other sessions (tokio's cooperative budget also applies).
const READS_PER_POLL: usize = 16;

fn count(meters: [&AtomicU64; 2], n: usize, last: &mut Instant) {
    *last = Instant::now();
    for m in meters {
        m.fetch_add(n as u64, Relaxed);
    }
}

impl Direction {
    /// Moves what is available from `from` to `to`. `Ready(Ok)` once end-of-stream has been passed
    /// on; `Pending` with wake-ups registered for whatever it waits for.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        from: &TcpStream,
        to: &TcpStream,
        from_side: Side,
        meters: [&AtomicU64; 2],
        last: &mut Instant,
    ) -> Poll<Result<(), (Side, io::Error)>> {
        let to_side = match from_side {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        };
        for _ in 0..READS_PER_POLL {
            // The destination was slow: send what we hold before reading more (back-pressure).
            ready!(self.flush(cx, to, to_side, last))?;
            ready!(from.poll_read_ready(cx)).map_err(|e| (from_side, e))?;
            if let Some(p) = self.cold.as_ref().and_then(|c| c.pipe.as_ref()) {
                // No short-read shortcut here: a splice also stops short when the pipe runs out of
                // slots, with bytes still in the socket. Readiness is cleared only by `EAGAIN`.
                let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
                match from.try_io(Interest::READABLE, || {
                    Ok(splice(from, None, &p.write, None, PIPE, flags)?)
                }) {
                    Ok(0) => return Poll::Ready(self.finish(to, to_side)),
                    Ok(n) => {
                        count(meters, n, last);
                        if let Some(c) = &mut self.cold {
                            c.held = n;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err((from_side, e))),
                }
                continue;
            }
            // Copy mode, through the thread's buffer, borrowed only inside this closure.
            let bulk = BUF.with_borrow_mut(|buf| {
                let n = match read_with(from, buf.len(), || from.try_read(buf)) {
                    Ok(Got::Data(n)) => n,
                    Ok(Got::Nothing) => return Ok(Some(false)),
                    Ok(Got::Eof) => return Ok(None),
                    Err(e) => return Err((from_side, e)),
                };
                count(meters, n, last);
                let mut off = 0;
                while off < n {
                    match to.try_write(&buf[off..n]) {
                        Ok(k) => off += k,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            let cold = self.cold.get_or_insert_with(Default::default);
                            cold.pending.extend_from_slice(&buf[off..n]);
                            return Ok(Some(false));
                        }
                        Err(e) => return Err((to_side, e)),
                    }
                }
                Ok(Some(n == buf.len()))
            })?;
            match bulk {
                None => return Poll::Ready(self.finish(to, to_side)),
                // A full buffer, all of it sent: this direction carries bulk data; splice from
                // now on. Without a pipe (out of descriptors) it keeps copying.
                Some(true) => {
                    if let Ok(p) = Pipe::new() {
                        self.cold.get_or_insert_with(Default::default).pipe = Some(p);
                    }
                }
                Some(false) => {}
            }
        }
        // Still readable after a full batch: let the other sessions run, then come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Writes out what a slow destination did not take yet.
    fn flush(
        &mut self,
        cx: &mut Context<'_>,
        to: &TcpStream,
        to_side: Side,
        last: &mut Instant,
    ) -> Poll<Result<(), (Side, io::Error)>> {
        let Some(c) = self.cold.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        while !c.pending.is_empty() || c.held > 0 {
            ready!(to.poll_write_ready(cx)).map_err(|e| (to_side, e))?;
            let wrote = match &c.pipe {
                Some(p) if c.held > 0 => {
                    let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
                    to.try_io(Interest::WRITABLE, || {
                        Ok(splice(&p.read, None, to, None, c.held, flags)?)
                    })
                }
                _ => to.try_write(&c.pending),
            };
            match wrote {
                Ok(k) => {
                    *last = Instant::now();
                    if c.held > 0 {
                        c.held -= k;
                    } else {
                        c.pending.drain(..k);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err((to_side, e))),
            }
        }
        if c.pipe.is_none() {
            // Drained: give the memory back until the destination is slow again.
            self.cold = None;
        }
        Poll::Ready(Ok(()))
    }

    /// End-of-stream from the source: pass the FIN on (half-close) and let the other direction run.
    fn finish(&mut self, to: &TcpStream, to_side: Side) -> Result<(), (Side, io::Error)> {
        self.cold = None;
        match socket2::SockRef::from(to).shutdown(Shutdown::Write) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            Err(e) => Err((to_side, e)),
        }
    }
}

/// What one read from the source gave.
enum Got {
    /// Bytes.
    Data(usize),
    Eof,
    /// Spurious readiness: nothing to read after all.
    Nothing,
}

/// One read from `from` into `buf`: `Some(n)` bytes (`Some(0)` at end-of-stream), or `None` when
/// the readiness was spurious. A short read clears readiness, as in the relay ([`read_with`]).
pub fn try_read_drained(from: &TcpStream, buf: &mut [u8]) -> io::Result<Option<usize>> {
    let asked = buf.len();
    Ok(match read_with(from, asked, || from.try_read(buf))? {
        Got::Data(n) => Some(n),
        Got::Eof => Some(0),
        Got::Nothing => None,
    })
}

/// Reads from `from` with `read` inside tokio's readiness bookkeeping. A read shorter than `asked`
/// drained the socket: its readiness is cleared now (by reporting `WouldBlock` to `try_io`, after
/// keeping the count), which saves the `recv` that would only have said `EAGAIN`. A readiness event
/// newer than the read is not lost: tokio clears only the event it handed out.
fn read_with(
    from: &TcpStream,
    asked: usize,
    read: impl FnOnce() -> io::Result<usize>,
) -> io::Result<Got> {
    let mut short = None;
    match from.try_io(Interest::READABLE, || match read()? {
        n if n > 0 && n < asked => {
            short = Some(n);
            Err(io::ErrorKind::WouldBlock.into())
        }
        n => Ok(n),
    }) {
        Ok(0) => Ok(Got::Eof),
        Ok(n) => Ok(Got::Data(n)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            Ok(short.map_or(Got::Nothing, Got::Data))
        }
        Err(e) => Err(e),
    }
}

/// A pipe that a bulk direction splices through. It holds no memory while empty.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        use rustix::pipe::{fcntl_setpipe_size, pipe_with, PipeFlags};
        let (read, write) = pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
        // Best effort: a bigger pipe moves more per syscall; the default still works.
        let _ = fcntl_setpipe_size(&write, PIPE);
        Ok(Self { read, write })
    }
}

#[cfg(test)]
#[path = "relay_tests.rs"]
pub(crate) mod tests;
