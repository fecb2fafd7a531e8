//! Which relay thread runs a new client's session. Every thread accepts from the one listening
//! socket and keeps the clients it accepts, unless another thread has fewer sessions open: then the
//! client goes to that thread's inbox. Keeping is the common case and costs nothing; a hand-over
//! costs an `epoll_ctl` pair and a wake-up of the other thread. Long sessions (a connection pool's)
//! still end up spread evenly, which matters more: a thread that got more of them than its share
//! is the bottleneck of the whole proxy (docs/benchmarks.md has the figures for both).
//!
//! Counts are per thread and a hint, never a limit (`global.maxconn` is the limit): a session is
//! counted from its accept to its end by an [`Admission`], which decrements the count of the thread
//! it is dropped on, the thread that ran it.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::OwnedSemaphorePermit;

/// A client accepted on one thread and handed to another.
pub type Job = (std::net::TcpStream, std::net::SocketAddr, Admission);

/// The relay threads' open-session counts and inboxes.
pub struct Threads {
    open: Arc<[AtomicUsize]>,
    inbox: Box<[UnboundedSender<Job>]>,
}

thread_local! {
    /// The calling relay thread's own count, once it has [`Threads::enter`]ed.
    static OPEN: RefCell<Option<(Arc<[AtomicUsize]>, usize)>> = const { RefCell::new(None) };
}

impl Threads {
    /// `n` threads' counts and inboxes; thread `i` takes its clients from the `i`th receiver.
    pub fn new(n: usize) -> (Arc<Self>, Vec<UnboundedReceiver<Job>>) {
        let (inbox, rx): (Vec<_>, Vec<_>) = (0..n).map(|_| unbounded_channel()).unzip();
        let open = (0..n).map(|_| AtomicUsize::new(0)).collect();
        let threads = Threads {
            open,
            inbox: inbox.into(),
        };
        (Arc::new(threads), rx)
    }

    /// Makes the calling thread relay thread `i`: sessions dropped on it count down its count.
    pub fn enter(&self, i: usize) {
        OPEN.with_borrow_mut(|o| *o = Some((self.open.clone(), i)));
    }

    /// Admits a client accepted on thread `me` and says which thread runs it: `me`, unless another
    /// thread has fewer sessions open (the first of the least loaded).
    pub fn admit(&self, me: usize, permit: OwnedSemaphorePermit) -> (usize, Admission) {
        let mine = self.open[me].load(Relaxed);
        let to = self
            .open
            .iter()
            .enumerate()
            .map(|(j, c)| (c.load(Relaxed), j))
            .min()
            .filter(|&(least, _)| least < mine)
            .map_or(me, |(_, j)| j);
        // Counted at once, not when the session first runs: a burst of accepts must see its own
        // earlier clients.
        self.open[to].fetch_add(1, Relaxed);
        (
            to,
            Admission {
                _permit: permit,
                _counted: CountedOnThread,
            },
        )
    }

    /// Hands a client to thread `to`; gives it back if that thread's inbox is gone (it has stopped).
    pub fn hand(&self, to: usize, job: Job) -> Result<(), Job> {
        self.inbox[to].send(job).map_err(|e| e.0)
    }
}

/// A session's place: its `global.maxconn` slot and its count on the thread that runs it. Both are
/// given back when it drops.
pub struct Admission {
    _permit: OwnedSemaphorePermit,
    _counted: CountedOnThread,
}

impl Admission {
    /// A session outside the relay threads' balance (tests): only the slot.
    #[cfg(test)]
    pub fn slot_only(permit: OwnedSemaphorePermit) -> Self {
        Admission {
            _permit: permit,
            _counted: CountedOnThread,
        }
    }
}

/// Zero-sized: the count it gives back is the dropping thread's, found through a thread-local, so a
/// session's long-lived task does not grow by a pointer (docs/benchmarks.md, memory per connection).
struct CountedOnThread;

impl Drop for CountedOnThread {
    fn drop(&mut self) {
        // `try_with`: a task dropped while its thread exits must not panic. Saturating: a session
        // admitted by `slot_only` on a thread that counts gives back nothing that was taken.
        let _ = OPEN.try_with(|o| {
            if let Some((open, i)) = &*o.borrow() {
                let _ = open[*i].fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::Semaphore;

    fn permit(s: &Arc<Semaphore>) -> OwnedSemaphorePermit {
        s.clone().try_acquire_owned().unwrap()
    }

    #[test]
    fn a_thread_keeps_its_client_unless_another_has_fewer_sessions() {
        let slots = Arc::new(Semaphore::new(10));
        let (t, _rx) = Threads::new(2);
        t.enter(0);
        // Even: the accepting thread keeps it, whichever it is.
        let (to, a) = t.admit(0, permit(&slots));
        assert_eq!(to, 0);
        // Thread 0 is now ahead: its next client goes to thread 1.
        let (to, b) = t.admit(0, permit(&slots));
        assert_eq!(to, 1);
        // Even again: thread 1 keeps what it accepts.
        let (to, c) = t.admit(1, permit(&slots));
        assert_eq!(to, 1);
        assert_eq!(t.open[0].load(Relaxed), 1);
        assert_eq!(t.open[1].load(Relaxed), 2);
        // Thread 1 is ahead: thread 0 keeps its own, and thread 1 hands to thread 0.
        let (to, d) = t.admit(1, permit(&slots));
        assert_eq!(to, 0);
        // Dropped on thread 0 (this one): thread 0's count goes down, whichever thread admitted it.
        drop((a, d));
        assert_eq!(t.open[0].load(Relaxed), 0);
        assert_eq!(slots.available_permits(), 8);
        drop((b, c));
        // Never below zero, though thread 0 ran none of these.
        assert_eq!(t.open[0].load(Relaxed), 0);
        assert_eq!(slots.available_permits(), 10);
    }
}
