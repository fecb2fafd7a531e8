//! Per-server and frontend runtime state that lives at the IO layer: session and byte counters
//! (atomics, updated by the data path), the per-server connection slots (`maxconn` + FIFO queue), and
//! the kill switch that closes every session of a server at once (`on-marked-down shutdown-sessions`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

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

/// A gauge increment undone on drop, so every exit path of a session decrements it.
pub struct GaugeGuard<'a>(&'a AtomicU64);

impl<'a> GaugeGuard<'a> {
    pub fn new(gauge: &'a AtomicU64, max: Option<&AtomicU64>) -> Self {
        let now = gauge.fetch_add(1, Relaxed) + 1;
        if let Some(max) = max {
            Counters::raise_max(max, now);
        }
        Self(gauge)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Runtime of one server.
#[derive(Debug)]
pub struct Backend {
    pub counters: Counters,
    /// `maxconn` slots. Tokio's semaphore is fair, so waiters are served FIFO as in HAProxy's queue.
    pub slots: Arc<Semaphore>,
    pub maxconn: u32,
    /// Cancelled to close all current sessions; replaced by a fresh child of `all_sessions` each time.
    kill: Mutex<CancellationToken>,
    all_sessions: CancellationToken,
}

impl Backend {
    pub fn new(maxconn: u32, all_sessions: CancellationToken) -> Self {
        Self {
            counters: Counters::default(),
            slots: Arc::new(Semaphore::new(maxconn as usize)),
            maxconn,
            kill: Mutex::new(all_sessions.child_token()),
            all_sessions,
        }
    }

    /// The token a new session watches: cancelled by [`Backend::kill_sessions`] or at forced shutdown.
    pub fn session_token(&self) -> CancellationToken {
        self.kill.lock().expect("kill lock").child_token()
    }

    /// Closes every session that took its token before this call; later sessions are unaffected.
    /// Returns how many sessions were open.
    pub fn kill_sessions(&self) -> u64 {
        let fresh = self.all_sessions.child_token();
        let old = std::mem::replace(&mut *self.kill.lock().expect("kill lock"), fresh);
        old.cancel();
        self.counters.scur.load(Relaxed)
    }

    /// Records the start of a session for `lastsess`.
    pub fn touch_last_session(&self) {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_closes_existing_sessions_only() {
        let all = CancellationToken::new();
        let b = Backend::new(10, all.clone());
        let old = b.session_token();
        b.kill_sessions();
        let new = b.session_token();
        assert!(old.is_cancelled());
        assert!(!new.is_cancelled());
        all.cancel();
        assert!(new.is_cancelled(), "forced shutdown reaches every session");
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
}
