//! Per-server and frontend runtime state that lives at the IO layer: session and byte counters
//! (atomics, updated by the data path), the per-server connection slots (`maxconn` + FIFO queue), and
//! the kill switch that closes every session of a server at once (`on-marked-down shutdown-sessions`),
//! through the registry of its relaying sessions ([`relaying`]); the sessions still in their setup
//! ([`setup`]), for the sessions view.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{Notify, Semaphore};

pub mod relaying;
pub mod setup;

use relaying::Relaying;

/// Monotonic counters and gauges of one server (HAProxy's CSV columns of the same names).
#[derive(Debug, Default)]
pub struct Counters {
    /// `scur`: sessions established or being set up to this server now.
    pub scur: AtomicU64,
    /// `smax`: highest `scur` seen.
    pub smax: AtomicU64,
    /// `stot`: sessions ever sent to this server.
    pub stot: AtomicU64,
    /// `bin`: bytes from clients to the server.
    pub bin: AtomicU64,
    /// `bout`: bytes from the server to clients.
    pub bout: AtomicU64,
    /// `econ`: sessions that gave up connecting (after retries).
    pub econ: AtomicU64,
    /// `wretr`: connection retries.
    pub wretr: AtomicU64,
    /// `qcur`/`qmax`: sessions waiting for a slot now / at most.
    pub qcur: AtomicU64,
    pub qmax: AtomicU64,
    /// Sessions dropped after `timeout queue`.
    pub qtimeouts: AtomicU64,
    /// `cli_abrt`/`srv_abrt`: sessions ended by an error on that side.
    pub cli_abrt: AtomicU64,
    pub srv_abrt: AtomicU64,
    /// Sessions closed because the server was marked DOWN or lost the primary role.
    pub killed: AtomicU64,
    /// Unix seconds of the last session start, 0 = never (`lastsess`).
    pub last_session: AtomicU64,
}

impl Counters {
    /// Raises a high-water mark.
    pub fn raise_max(max: &AtomicU64, value: u64) {
        max.fetch_max(value, Relaxed);
    }
}

/// What a [`GaugeGuard`] counts on: a gauge and, if it keeps one, its high-water mark, either
/// borrowed ([`Borrowed`]) or reached through a handle the guard owns, so that the guard can live as
/// long as a session's task and no decrement is ever handed over by hand.
pub trait Gauge {
    fn gauge(&self) -> &AtomicU64;
    fn max(&self) -> Option<&AtomicU64>;
}

/// A gauge borrowed for a scope shorter than the state that holds it (a hold, a wait in a queue).
#[derive(Debug, Clone, Copy)]
pub struct Borrowed<'a> {
    gauge: &'a AtomicU64,
    max: Option<&'a AtomicU64>,
}

impl Gauge for Borrowed<'_> {
    fn gauge(&self) -> &AtomicU64 {
        self.gauge
    }

    fn max(&self) -> Option<&AtomicU64> {
        self.max
    }
}

/// One increment of a gauge, undone when the guard is dropped: whoever holds the guard holds the
/// increment, so every exit path of a session decrements it exactly once.
#[derive(Debug)]
pub struct GaugeGuard<G: Gauge>(G);

impl<'a> GaugeGuard<Borrowed<'a>> {
    pub fn new(gauge: &'a AtomicU64, max: Option<&'a AtomicU64>) -> Self {
        Self::hold(Borrowed { gauge, max })
    }
}

impl<G: Gauge> GaugeGuard<G> {
    /// Counts one more on `handle`'s gauge (raising its high-water mark) until the guard drops.
    pub fn hold(handle: G) -> Self {
        let now = handle.gauge().fetch_add(1, Relaxed).saturating_add(1);
        if let Some(max) = handle.max() {
            Counters::raise_max(max, now);
        }
        Self(handle)
    }

    /// The handle the guard counts through.
    pub fn handle(&self) -> &G {
        &self.0
    }
}

impl<G: Gauge> Drop for GaugeGuard<G> {
    fn drop(&mut self) {
        self.0.gauge().fetch_sub(1, Relaxed);
    }
}

/// Runtime of one server.
#[derive(Debug)]
pub struct Backend {
    pub counters: Counters,
    /// `maxconn` slots. Tokio's semaphore is fair, so waiters are served FIFO as in HAProxy's queue.
    pub slots: Arc<Semaphore>,
    /// The limit the slots stand for (a reload may change it: [`Backend::set_maxconn`]).
    maxconn: AtomicU32,
    /// The kill switch: a session notes the generation when it is routed here ([`Ticket`]) and ends
    /// once it has moved on. A generation and a `Notify` cost nothing per session, where a child
    /// `CancellationToken` per session was a heap node in every idle connection's memory.
    kill_generation: AtomicU64,
    kill_notify: Notify,
    /// The sockets of the sessions relaying now, shut down by the kill switch.
    pub relaying: Arc<Relaying>,
    /// Forced shutdown: every session, present and future, is killed.
    closed: AtomicBool,
}

/// What a session holds to learn that its server's sessions were shut down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

impl Backend {
    pub fn new(maxconn: u32) -> Self {
        Self {
            counters: Counters::default(),
            slots: Arc::new(Semaphore::new(maxconn as usize)),
            maxconn: AtomicU32::new(maxconn),
            kill_generation: AtomicU64::new(0),
            kill_notify: Notify::new(),
            relaying: Arc::default(),
            closed: AtomicBool::new(false),
        }
    }

    /// The current `maxconn`.
    pub fn maxconn(&self) -> u32 {
        self.maxconn.load(Relaxed)
    }

    /// A reload's new `maxconn`. More slots are free at once. Fewer: free slots are withdrawn now
    /// and busy ones as their sessions end (a task takes them in the queue's order, so new
    /// sessions wait behind it until the count is under the new limit); no session is cut.
    pub fn set_maxconn(&self, maxconn: u32) {
        let new = maxconn;
        let old = self.maxconn.swap(new, SeqCst);
        if new > old {
            self.slots.add_permits((new - old) as usize);
        } else if old > new {
            let want = (old - new) as usize;
            let rest = want - self.slots.forget_permits(want);
            if rest > 0 {
                let slots = self.slots.clone();
                tokio::spawn(async move {
                    for _ in 0..rest {
                        match slots.acquire().await {
                            Ok(p) => p.forget(),
                            Err(_) => return,
                        }
                    }
                });
            }
        }
    }

    /// Taken by a session when it is routed to this server, before it queues or connects.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.kill_generation.load(SeqCst))
    }

    /// True once [`Backend::kill_sessions`] or [`Backend::close`] ran after `ticket` was taken.
    pub fn is_killed(&self, ticket: Ticket) -> bool {
        self.closed.load(SeqCst) || self.kill_generation.load(SeqCst) != ticket.0
    }

    /// Resolves when the sessions holding `ticket` must end.
    pub async fn killed(&self, ticket: Ticket) {
        loop {
            let notified = self.kill_notify.notified();
            tokio::pin!(notified);
            // Registered before the check, so a kill between the check and the await still wakes us.
            notified.as_mut().enable();
            if self.is_killed(ticket) {
                return;
            }
            notified.await;
        }
    }

    /// Closes every session that took its ticket before this call; later sessions are unaffected.
    /// Returns how many sessions were open.
    pub fn kill_sessions(&self) -> u64 {
        // Relaying sessions are ended by shutting their sockets down; the generation moves under
        // the registry's lock so that no session joins it with a stale ticket afterwards.
        self.relaying.shutdown_all(|| {
            self.kill_generation.fetch_add(1, SeqCst);
        });
        // Sessions still queueing, connecting or in their startup wait on the notification.
        self.kill_notify.notify_waiters();
        self.counters.scur.load(Relaxed)
    }

    /// Forced shutdown: closes every session, including ones routed here from now on.
    pub fn close(&self) {
        self.closed.store(true, SeqCst);
        self.kill_sessions();
    }

    /// Records the start of a session for `lastsess`.
    pub fn touch_last_session(&self) {
        let now = crate::time::epoch_secs(SystemTime::now()) as u64;
        self.counters.last_session.store(now, Relaxed);
    }
}

/// Frontend (client-side) counters.
#[derive(Debug, Default)]
pub struct Frontend {
    /// Client sessions open now / at most / ever.
    pub scur: AtomicU64,
    pub smax: AtomicU64,
    pub stot: AtomicU64,
    pub bin: AtomicU64,
    pub bout: AtomicU64,
    /// Clients closed after waiting `timeout queue` for a server slot.
    pub queue_timeout: AtomicU64,
    /// Clients closed because connecting to the primary failed after all retries.
    pub connect_failed: AtomicU64,
    /// Clients closed because the routed primary changed while they were being connected.
    pub rerouted: AtomicU64,
    /// Accept errors (EMFILE and the like) the accept loop backed off from.
    pub accept_errors: AtomicU64,
    /// Health checks and server connections that failed for want of a local resource (file
    /// descriptors, memory, local ports): the proxy's fault, never counted against a server.
    pub local_errors: AtomicU64,
    /// Clients that found no routable primary when they arrived (they are held, see below).
    pub no_server: AtomicU64,
    /// Clients that had to wait for a primary: in all, now, released to a primary, and answered
    /// with 57P03 after `hold_timeout`.
    pub held: AtomicU64,
    pub holding: AtomicU64,
    pub hold_released: AtomicU64,
    pub hold_timeouts: AtomicU64,
    /// Startups replayed on another connection after a "shutting down" answer (57P01/57P02/57P03).
    pub replays: AtomicU64,
    /// Clients refused because the backend reported `in_hot_standby = on`.
    pub standby_refusals: AtomicU64,
    /// The sessions not relaying yet, and their phase (the sessions view).
    pub setups: setup::Setups,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn kill_closes_existing_sessions_only() {
        let b = Arc::new(Backend::new(10));
        let old = b.ticket();
        // A session already waiting on its ticket is woken by the kill.
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.killed(old).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        b.kill_sessions();
        waiter.await.unwrap();
        let new = b.ticket();
        assert!(b.is_killed(old));
        assert!(
            !b.is_killed(new),
            "sessions routed after the kill are unaffected"
        );
        b.close();
        assert!(b.is_killed(new), "forced shutdown reaches every session");
        assert!(b.is_killed(b.ticket()), "and sessions routed after it");
    }

    #[test]
    fn gauge_guard_tracks_max_and_decrements() {
        let (g, m) = (AtomicU64::new(0), AtomicU64::new(0));
        {
            let _a = GaugeGuard::new(&g, Some(&m));
            let _b = GaugeGuard::new(&g, Some(&m));
            assert_eq!(g.load(Relaxed), 2);
        }
        assert_eq!((g.load(Relaxed), m.load(Relaxed)), (0, 2));
    }

    #[test]
    fn an_owned_gauge_lives_as_long_as_its_guard() {
        // A session moves its guards into the task that outlives the function that took them.
        struct Sessions(Arc<(AtomicU64, AtomicU64)>);
        impl Gauge for Sessions {
            fn gauge(&self) -> &AtomicU64 {
                &self.0 .0
            }
            fn max(&self) -> Option<&AtomicU64> {
                Some(&self.0 .1)
            }
        }
        let counters = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        let guard = GaugeGuard::hold(Sessions(counters.clone()));
        let task = std::thread::spawn(move || {
            let _guard = guard;
        });
        task.join().unwrap();
        assert_eq!((counters.0.load(Relaxed), counters.1.load(Relaxed)), (0, 1));
    }
}
