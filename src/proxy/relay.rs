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

/// What a relay's poll came to: its end, or the point where it hands the session to the kernel.
#[derive(Debug)]
pub enum Next {
    End(End),
    /// `kernel_after` reads were relayed and nothing is held in user space (every byte read was
    /// written, neither stream ended): the caller moves the sockets into the kernel relay
    /// (`proxy::kernel`), or calls [`Relay::stay`] if it cannot.
    Kernel,
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
    /// Reads left before the session moves into the kernel relay; [`NEVER`] in user mode.
    kernel_in: u32,
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
    ///
    /// `kernel_after`: with the kernel relay, how many reads (either way) the session relays here
    /// before it moves there ([`Next::Kernel`]): a short session never pays the move's system
    /// calls (docs/configuration.md, "Kernel relay").
    pub fn new(
        idle_client: Duration,
        idle_server: Duration,
        kernel_after: Option<u32>,
    ) -> (Self, Instant) {
        let (limit, idle_side) = if idle_client <= idle_server {
            (idle_client, Side::Client)
        } else {
            (idle_server, Side::Server)
        };
        let last = Instant::now();
        let relay = Relay {
            up: Direction::default(),
            down: Direction::default(),
            kernel_in: kernel_after.map_or(NEVER, |n| n.min(NEVER - 1)),
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

    /// The idle timeout the session goes at, and the side it is named after.
    pub fn idle(&self) -> (Duration, Side) {
        (self.limit, self.idle_side)
    }

    /// Keeps relaying here: the kernel relay could not take the session.
    pub fn stay(&mut self) {
        self.kernel_in = NEVER;
    }

    pub fn poll(
        &mut self,
        cx: &mut Context<'_>,
        client: &TcpStream,
        server: &TcpStream,
        meters: &Meters<'_>,
        mut sleep: Pin<&mut Sleep>,
    ) -> Poll<Next> {
        if !self.up_done {
            let ways = Way {
                from: client,
                to: server,
                from_side: Side::Client,
                meters: meters.up,
                ends_session: self.down_done,
            };
            match self.up.poll(cx, ways, &mut self.last, &mut self.kernel_in) {
                Poll::Ready(Ok(())) => self.up_done = true,
                Poll::Ready(Err((side, e))) => return Poll::Ready(Next::End(End::Error(side, e))),
                Poll::Pending => {}
            }
        }
        if !self.down_done {
            let ways = Way {
                from: server,
                to: client,
                from_side: Side::Server,
                meters: meters.down,
                ends_session: self.up_done,
            };
            match self
                .down
                .poll(cx, ways, &mut self.last, &mut self.kernel_in)
            {
                Poll::Ready(Ok(())) => self.down_done = true,
                Poll::Ready(Err((side, e))) => return Poll::Ready(Next::End(End::Error(side, e))),
                Poll::Pending => {}
            }
        }
        if self.up_done && self.down_done {
            return Poll::Ready(Next::End(End::Closed));
        }
        if self.kernel_in == 0 {
            // A stream that ended is finished here (the session is closing anyway).
            if self.up_done || self.down_done {
                // The other direction stopped reading without a wake-up to come back for.
                self.stay();
                cx.waker().wake_by_ref();
            } else if self.up.holds_nothing() && self.down.holds_nothing() {
                return Poll::Ready(Next::Kernel);
            }
        }
        while sleep.as_mut().poll(cx).is_ready() {
            let deadline = crate::time::deadline(self.last, self.limit);
            if Instant::now() >= deadline {
                return Poll::Ready(Next::End(End::Idle(self.idle_side)));
            }
            sleep.as_mut().reset(deadline);
        }
        Poll::Pending
    }
}

/// [`Relay::kernel_in`] of a session that never moves into the kernel.
const NEVER: u32 = u32::MAX;

/// One direction's sockets: read `from`, write `to`.
struct Way<'a> {
    from: &'a TcpStream,
    to: &'a TcpStream,
    from_side: Side,
    meters: [&'a AtomicU64; 2],
    /// The other direction has ended: this one's end ends the session.
    ends_session: bool,
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

/// Notes a read of `n` bytes: the counters, the activity time, and one read less before the move
/// into the kernel.
fn count(meters: [&AtomicU64; 2], n: usize, last: &mut Instant, kernel_in: &mut u32) {
    *last = Instant::now();
    if *kernel_in != NEVER {
        *kernel_in = kernel_in.saturating_sub(1);
    }
    for m in meters {
        m.fetch_add(n as u64, Relaxed);
    }
}

impl Direction {
    /// Whether every byte read was written (a pipe may stay, empty).
    fn holds_nothing(&self) -> bool {
        self.cold
            .as_ref()
            .is_none_or(|c| c.pending.is_empty() && c.held == 0)
    }

    /// Moves what is available from `from` to `to`. `Ready(Ok)` once end-of-stream has been passed
    /// on; `Pending` with wake-ups registered for whatever it waits for. Each read counts down
    /// `kernel_in`; at 0 this direction only writes out what it holds, and reads no more.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        way: Way<'_>,
        last: &mut Instant,
        kernel_in: &mut u32,
    ) -> Poll<Result<(), (Side, io::Error)>> {
        let Way {
            from,
            to,
            from_side,
            meters,
            ends_session,
        } = way;
        let to_side = match from_side {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        };
        for _ in 0..READS_PER_POLL {
            // The destination was slow: send what we hold before reading more (back-pressure).
            ready!(self.flush(cx, to, to_side, last))?;
            if *kernel_in == 0 {
                // The session moves into the kernel once both directions have written out what
                // they hold (`Relay::poll`); bytes still arriving wait in the socket for it.
                return Poll::Pending;
            }
            ready!(from.poll_read_ready(cx)).map_err(|e| (from_side, e))?;
            if let Some(p) = self.cold.as_ref().and_then(|c| c.pipe.as_ref()) {
                // No short-read shortcut here: a splice also stops short when the pipe runs out of
                // slots, with bytes still in the socket. Readiness is cleared only by `EAGAIN`.
                let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
                match from.try_io(Interest::READABLE, || {
                    Ok(splice(from, None, &p.write, None, PIPE, flags)?)
                }) {
                    Ok(0) => return Poll::Ready(self.finish(to, to_side, ends_session)),
                    Ok(n) => {
                        count(meters, n, last, kernel_in);
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
                count(meters, n, last, kernel_in);
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
                None => return Poll::Ready(self.finish(to, to_side, ends_session)),
                // A full buffer, all of it sent: this direction carries bulk data; splice from
                // now on. Without a pipe (out of descriptors) it keeps copying. A bulk session
                // stays in user space: splice moves bulk data faster and for less CPU than the
                // kernel relay's redirect (docs/benchmarks.md, "Bulk stays in user space").
                Some(true) => {
                    if let Ok(p) = Pipe::new() {
                        self.cold.get_or_insert_with(Default::default).pipe = Some(p);
                    }
                    *kernel_in = NEVER;
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
    /// When it `ends_session`, the sockets close right after, and closing a socket whose stream
    /// has ended (nothing left unread) sends the same FIN: one system call per session fewer.
    fn finish(
        &mut self,
        to: &TcpStream,
        to_side: Side,
        ends_session: bool,
    ) -> Result<(), (Side, io::Error)> {
        self.cold = None;
        if ends_session {
            return Ok(());
        }
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
