//! The client sessions not relaying yet, and what each is doing (holding for a primary, queued for
//! a server slot, connecting, in its startup), for the sessions view (`/sessions.json`). Relaying
//! sessions are in their server's [`super::relaying`] registry instead.
//!
//! A session joins when its setup starts and leaves when the setup ends (its [`SetupGuard`] drops),
//! taking this lock three to five times in its life, never per byte. The setup future is several
//! KiB anyway; an entry here is under 100 bytes of a slab while the session sets up, nothing once
//! it relays.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use slab::Slab;
use tokio::time::Instant;

/// What a session in its setup is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for a routable primary (none now, or the last one failed it).
    Holding,
    /// Waiting for a slot under the server's `maxconn`.
    Queued,
    /// Routed: connecting to the server (or about to).
    Connecting,
    /// Connected: PostgreSQL's startup replies are being inspected.
    Starting,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Holding => "holding",
            Phase::Queued => "queued",
            Phase::Connecting => "connecting",
            Phase::Starting => "starting",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    client: SocketAddr,
    since: Instant,
    phase: Phase,
    /// The server this phase is about (none while holding).
    node: Option<usize>,
}

/// A session in its setup, as the sessions view shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetupSeen {
    pub client: SocketAddr,
    pub age: Duration,
    pub phase: Phase,
    pub node: Option<usize>,
}

/// The registry of the sessions in their setup (one per proxy).
#[derive(Debug, Default)]
pub struct Setups {
    sessions: Mutex<Slab<Entry>>,
}

/// A session's place in [`Setups`], removed when dropped.
#[derive(Debug)]
pub struct SetupGuard<'a> {
    registry: &'a Setups,
    key: usize,
}

impl Setups {
    /// Adds a session accepted at `since`, routing (no server yet).
    pub fn join(&self, client: SocketAddr, since: Instant) -> SetupGuard<'_> {
        let key = self.lock().insert(Entry {
            client,
            since,
            phase: Phase::Connecting,
            node: None,
        });
        SetupGuard {
            registry: self,
            key,
        }
    }

    /// Shows `f` at most `limit` sessions; returns how many there are in all.
    pub fn visit(&self, now: Instant, limit: usize, mut f: impl FnMut(SetupSeen)) -> usize {
        let sessions = self.lock();
        for (_, e) in sessions.iter().take(limit) {
            f(SetupSeen {
                client: e.client,
                age: now.saturating_duration_since(e.since),
                phase: e.phase,
                node: e.node,
            });
        }
        sessions.len()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slab<Entry>> {
        // A panic while holding it cannot leave a half-written entry: every write is one store.
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl SetupGuard<'_> {
    /// The session moved on to `phase` (about server `node`).
    pub fn set(&self, phase: Phase, node: Option<usize>) {
        if let Some(e) = self.registry.lock().get_mut(self.key) {
            e.phase = phase;
            e.node = node;
        }
    }
}

impl Drop for SetupGuard<'_> {
    fn drop(&mut self) {
        self.registry.lock().try_remove(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_listed_in_its_phase_until_its_guard_drops() {
        let r = Setups::default();
        let t0 = Instant::now();
        let a = r.join("127.0.0.1:5000".parse().unwrap(), t0);
        let b = r.join("127.0.0.1:5001".parse().unwrap(), t0);
        a.set(Phase::Holding, None);
        b.set(Phase::Queued, Some(1));
        let mut seen = Vec::new();
        let later = t0 + Duration::from_secs(3);
        assert_eq!(r.visit(later, 10, |s| seen.push(s)), 2);
        assert_eq!(
            seen,
            [
                SetupSeen {
                    client: "127.0.0.1:5000".parse().unwrap(),
                    age: Duration::from_secs(3),
                    phase: Phase::Holding,
                    node: None
                },
                SetupSeen {
                    client: "127.0.0.1:5001".parse().unwrap(),
                    age: Duration::from_secs(3),
                    phase: Phase::Queued,
                    node: Some(1)
                },
            ]
        );
        // The limit bounds what is shown, not the count.
        let mut shown = 0;
        assert_eq!(r.visit(later, 1, |_| shown += 1), 2);
        assert_eq!(shown, 1);
        drop(a);
        assert_eq!(r.len(), 1);
        drop(b);
        assert!(r.is_empty());
    }
}
