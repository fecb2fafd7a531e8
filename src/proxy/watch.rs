//! One epoll instance per relay thread for the kernel-relayed sessions' sockets
//! ([`super::kernel`]): it asks for `EPOLLRDHUP` only (errors and hang-ups are always reported),
//! never `EPOLLIN`, so a segment the kernel redirects wakes no one; only the end of a stream or an
//! error does. A task of the thread's own drains it and wakes the sessions it concerns.
//!
//! One instance per thread rather than per session: a session then costs two descriptors (its
//! sockets) instead of three, and two `epoll_ctl` instead of `epoll_create`, three `epoll_ctl`
//! and a `close` (issue 17: with three, ~6 600 kernel sessions fit under a 20 000-descriptor limit
//! against 9 900 in user space).
//!
//! An event names its session by slab key and generation: a session that ends between the
//! driver's `epoll_wait` and its dispatch leaves its key to the next one, which must not take the
//! old session's events for its own.

use std::cell::RefCell;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use rustix::event::epoll;
use slab::Slab;
use tokio::io::unix::AsyncFd;

/// What the watch saw on one socket since the session last looked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    /// The peer ended its stream (`EPOLLRDHUP`/`EPOLLHUP`).
    pub eof: bool,
    /// The socket reported an error (`EPOLLERR`): its `SO_ERROR` says which.
    pub error: bool,
}

/// A thread's epoll instance and the sessions in it.
struct Watch {
    ep: AsyncFd<OwnedFd>,
    sessions: Mutex<Sessions>,
    /// The driver task ended (its runtime shut down, or the epoll instance failed): sessions
    /// watched here are told, and the thread makes a new watch for the next one.
    dead: AtomicBool,
}

#[derive(Default)]
struct Sessions {
    slots: Slab<Slot>,
    next_gen: u32,
}

struct Slot {
    gen: u32,
    /// The client's (0) and the server's (1) events not yet taken by the session.
    seen: [Seen; 2],
    waker: Option<Waker>,
}

thread_local! {
    static THREAD_WATCH: RefCell<Option<Arc<Watch>>> = const { RefCell::new(None) };
}

/// A session's two sockets in its thread's watch; dropping it forgets the session.
pub struct Watched {
    watch: Arc<Watch>,
    key: usize,
    gen: u32,
}

impl std::fmt::Debug for Watched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched").field("key", &self.key).finish()
    }
}

/// Puts a session's sockets in this thread's watch (made, with its driver task, on first use).
/// Must run inside the tokio runtime that will poll the session.
pub fn watch(client: impl AsFd, server: impl AsFd) -> io::Result<Watched> {
    let w = THREAD_WATCH.with(|t| -> io::Result<Arc<Watch>> {
        let mut t = t.borrow_mut();
        if let Some(w) = t.as_ref().filter(|w| !w.dead.load(Relaxed)) {
            return Ok(w.clone());
        }
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let w = Arc::new(Watch {
            ep: crate::backend::relaying::watch(ep)?,
            sessions: Mutex::default(),
            dead: AtomicBool::new(false),
        });
        tokio::spawn(drive(w.clone()));
        *t = Some(w.clone());
        Ok(w)
    })?;
    let (key, gen) = {
        let mut s = w.lock();
        let gen = s.next_gen;
        s.next_gen = gen.wrapping_add(1) & GEN_MASK;
        let key = s.slots.insert(Slot {
            gen,
            seen: [Seen::default(); 2],
            waker: None,
        });
        (key, gen)
    };
    // From here on, an error drops `watched`, which forgets the session; a socket already added
    // leaves the epoll instance when it closes.
    let watched = Watched {
        watch: w.clone(),
        key,
        gen,
    };
    let flags = epoll::EventFlags::RDHUP | epoll::EventFlags::ET;
    for (side, fd) in [client.as_fd(), server.as_fd()].into_iter().enumerate() {
        epoll::add(w.ep.get_ref(), fd, data(key, gen, side), flags)?;
    }
    Ok(watched)
}

/// Key (32 bits), generation (31 bits) and side (1 bit) in an event's data.
const GEN_MASK: u32 = (1 << 31) - 1;

fn data(key: usize, gen: u32, side: usize) -> epoll::EventData {
    epoll::EventData::new_u64(((key as u64) << 32) | (u64::from(gen) << 1) | side as u64)
}

fn parse(d: epoll::EventData) -> (usize, u32, usize) {
    let v = d.u64();
    (
        (v >> 32) as usize,
        ((v >> 1) as u32) & GEN_MASK,
        (v & 1) as usize,
    )
}

impl Watch {
    fn lock(&self) -> MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Watched {
    /// The events seen on the client's and the server's socket since the last call, or `Pending`
    /// (the task is woken when there are some). An error means the watch itself is gone.
    pub fn poll(&self, cx: &mut Context<'_>) -> Poll<io::Result<[Seen; 2]>> {
        let mut s = self.watch.lock();
        if self.watch.dead.load(Relaxed) {
            return Poll::Ready(Err(io::Error::other(
                "the relay thread's epoll instance is gone",
            )));
        }
        let Some(slot) = s.slots.get_mut(self.key) else {
            return Poll::Ready(Err(io::Error::other("session not in its thread's watch")));
        };
        let seen = std::mem::take(&mut slot.seen);
        if seen != [Seen::default(); 2] {
            return Poll::Ready(Ok(seen));
        }
        match &mut slot.waker {
            Some(w) => w.clone_from(cx.waker()),
            None => slot.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        // The sockets leave the epoll instance by themselves when they close (it watches their
        // open files); an event that comes in between finds no slot of this generation.
        let mut s = self.watch.lock();
        if s.slots
            .get(self.key)
            .is_some_and(|slot| slot.gen == self.gen)
        {
            s.slots.remove(self.key);
        }
    }
}

/// However the driver task ends (the runtime drops it at shutdown, polled or not), sessions and
/// the thread learn that its watch is gone.
struct Dead(Arc<Watch>);

impl Drop for Dead {
    fn drop(&mut self) {
        self.0.dead.store(true, Relaxed);
        let mut s = self.0.lock();
        for (_, slot) in s.slots.iter_mut() {
            if let Some(waker) = slot.waker.take() {
                waker.wake();
            }
        }
    }
}

/// Drains the thread's epoll instance as long as its runtime runs, and wakes the sessions whose
/// sockets ended or failed.
fn drive(w: Arc<Watch>) -> impl std::future::Future<Output = ()> + Send {
    // Outside the `async` block: a task dropped before its first poll must mark the watch too.
    let dead = Dead(w.clone());
    async move {
        let _dead = dead;
        drain(&w).await;
    }
}

async fn drain(w: &Watch) {
    loop {
        let mut guard = match w.ep.readable().await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "a relay thread's epoll instance failed; its kernel-relayed sessions end");
                return;
            }
        };
        loop {
            let mut buf = [const { MaybeUninit::<epoll::Event>::uninit() }; 64];
            let zero = rustix::time::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            let (events, _) = match epoll::wait(guard.get_inner(), &mut buf, Some(&zero)) {
                Ok(got) => got,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "a relay thread's epoll_wait failed; its kernel-relayed sessions end");
                    return;
                }
            };
            if events.is_empty() {
                guard.clear_ready();
                break;
            }
            let mut wake = Vec::new();
            {
                let mut s = w.lock();
                for ev in events.iter() {
                    let (key, gen, side) = parse(ev.data);
                    let Some(slot) = s.slots.get_mut(key).filter(|slot| slot.gen == gen) else {
                        continue;
                    };
                    let f = ev.flags;
                    let seen = &mut slot.seen[side];
                    seen.error |= f.contains(epoll::EventFlags::ERR);
                    seen.eof |= f.intersects(epoll::EventFlags::RDHUP | epoll::EventFlags::HUP);
                    wake.extend(slot.waker.take());
                }
            }
            for waker in wake {
                waker.wake();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::time::Duration;

    /// A connected pair: (ours, the peer).
    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (ours, _) = l.accept().unwrap();
        (ours, peer)
    }

    async fn next(w: &Watched, within: Duration) -> Option<io::Result<[Seen; 2]>> {
        tokio::time::timeout(within, std::future::poll_fn(|cx| w.poll(cx)))
            .await
            .ok()
    }

    const EOF: Seen = Seen {
        eof: true,
        error: false,
    };

    #[tokio::test]
    async fn the_end_of_a_stream_wakes_its_session_and_no_other() {
        let ((a_client, a_app), (a_server, _a_pg)) = (pair(), pair());
        let ((b_client, _b_app), (b_server, _b_pg)) = (pair(), pair());
        let a = watch(&a_client, &a_server).unwrap();
        let b = watch(&b_client, &b_server).unwrap();
        a_app.shutdown(Shutdown::Write).unwrap();
        let seen = next(&a, Duration::from_secs(5)).await.expect("woken");
        assert_eq!(seen.unwrap(), [EOF, Seen::default()]);
        assert!(next(&b, Duration::from_millis(50)).await.is_none());
        assert!(
            next(&a, Duration::from_millis(50)).await.is_none(),
            "taken once"
        );
    }

    #[tokio::test]
    async fn a_session_on_a_reused_key_never_takes_the_last_ones_events() {
        let ((old_client, old_app), (old_server, _old_pg)) = (pair(), pair());
        let old = watch(&old_client, &old_server).unwrap();
        let key = old.key;
        drop(old);
        // The old sockets are still open (so still in the epoll instance) when the key is reused.
        let ((client, _app), (server, _pg)) = (pair(), pair());
        let new = watch(&client, &server).unwrap();
        assert_eq!(new.key, key, "the slab reuses the key");
        old_app.shutdown(Shutdown::Write).unwrap();
        assert!(next(&new, Duration::from_millis(100)).await.is_none());
    }

    #[test]
    fn a_watch_whose_runtime_ended_tells_its_sessions_and_is_replaced() {
        let rt = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        let ((client, _app), (server, _pg)) = (pair(), pair());
        let first = rt();
        let w = first.block_on(async { watch(&client, &server).unwrap() });
        drop(first);
        let second = rt();
        second.block_on(async {
            let end = next(&w, Duration::from_secs(1))
                .await
                .expect("answered at once");
            assert!(end.is_err(), "the session learns its watch is gone");
            let ((client, app), (server, _pg)) = (pair(), pair());
            let again = watch(&client, &server).unwrap();
            app.shutdown(Shutdown::Write).unwrap();
            let seen = next(&again, Duration::from_secs(5))
                .await
                .expect("a new watch");
            assert_eq!(seen.unwrap(), [EOF, Seen::default()]);
        });
    }
}
