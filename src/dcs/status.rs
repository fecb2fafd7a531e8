//! What the watch tells the stats side, behind a narrow handle: failures by reason, the endpoint in
//! use and whether a watch is established there, the leader's lease as last read, and the last
//! error. Written by the watch, read by `/stats.json` and `/metrics`; neither knows the other.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::answers::{LeaderLease, Lease};
use super::parse::FAILURE_REASONS;
use crate::config::Etcd;

/// The watch's state as the stats side sees it.
#[derive(Debug)]
pub struct Status {
    failures: [AtomicU64; FAILURE_REASONS.len()],
    /// The configured endpoints, as written: the `endpoint` label (bounded by the config).
    endpoints: Vec<String>,
    /// Index of the endpoint being tried or watched, plus one (0: none yet).
    in_use: AtomicUsize,
    watching: AtomicBool,
    lease: Mutex<Option<(LeaderLease, SystemTime)>>,
    last_error: Mutex<Option<(String, SystemTime)>>,
}

impl Default for Status {
    fn default() -> Self {
        Self::new(None)
    }
}

/// `/stats.json`'s `etcd` object.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StatusView {
    pub endpoints: Vec<String>,
    /// The endpoint being watched (or tried, while `watching` is false).
    pub endpoint: Option<String>,
    /// A watch is established on `endpoint`.
    pub watching: bool,
    /// The leader key's holder at the last read, and its lease then.
    pub leader: Option<String>,
    /// `live`, `lapsed` (etcd no longer knows it) or `unleased`.
    pub lease: Option<&'static str>,
    pub lease_remaining_s: Option<u64>,
    pub lease_granted_s: Option<u64>,
    /// Seconds since that read.
    pub lease_read_age_s: Option<f64>,
    pub last_error: Option<String>,
    pub last_error_age_s: Option<f64>,
    /// Watches given up, by reason.
    pub failures: std::collections::BTreeMap<&'static str, u64>,
}

impl Status {
    pub fn new(cfg: Option<&Etcd>) -> Self {
        Self {
            failures: Default::default(),
            endpoints: cfg
                .map(|c| c.endpoints.iter().map(|e| e.to_string()).collect())
                .unwrap_or_default(),
            in_use: AtomicUsize::new(0),
            watching: AtomicBool::new(false),
            lease: Mutex::new(None),
            last_error: Mutex::new(None),
        }
    }

    pub(super) fn count(&self, reason: &str) {
        if let Some(c) = FAILURE_REASONS
            .iter()
            .position(|r| *r == reason)
            .and_then(|i| self.failures.get(i))
        {
            c.fetch_add(1, Relaxed);
        }
    }

    pub(super) fn trying(&self, index: usize) {
        self.in_use.store(index.saturating_add(1), Relaxed);
        self.watching.store(false, Relaxed);
    }

    pub(super) fn watching(&self, on: bool) {
        self.watching.store(on, Relaxed);
    }

    pub(super) fn failed(&self, error: String) {
        self.watching.store(false, Relaxed);
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some((error, SystemTime::now()));
        }
    }

    pub(super) fn lease(&self, lease: Option<LeaderLease>) {
        if let Ok(mut l) = self.lease.lock() {
            *l = lease.map(|l| (l, SystemTime::now()));
        }
    }

    /// `(reason, count)` for every reason.
    pub fn counts(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        FAILURE_REASONS
            .iter()
            .zip(&self.failures)
            .map(|(r, c)| (*r, c.load(Relaxed)))
    }

    /// The configured endpoints (the metric's label values).
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Index of the endpoint in use, and whether a watch is established on it.
    pub fn in_use(&self) -> (Option<usize>, bool) {
        let i = self.in_use.load(Relaxed).checked_sub(1);
        (i, i.is_some() && self.watching.load(Relaxed))
    }

    pub fn view(&self) -> StatusView {
        let now = SystemTime::now();
        let age = |t: SystemTime| now.duration_since(t).unwrap_or_default().as_secs_f64();
        let (i, watching) = self.in_use();
        let lease = self.lease.lock().ok().and_then(|l| l.clone());
        let (state, remaining, granted) = match lease.as_ref().map(|(l, _)| l.lease) {
            Some(Lease::Live {
                remaining, granted, ..
            }) => (Some("live"), Some(secs(remaining)), Some(secs(granted))),
            Some(Lease::Lapsed { .. }) => (Some("lapsed"), None, None),
            Some(Lease::Unleased) => (Some("unleased"), None, None),
            None => (None, None, None),
        };
        let error = self.last_error.lock().ok().and_then(|e| e.clone());
        StatusView {
            endpoints: self.endpoints.clone(),
            endpoint: i.and_then(|i| self.endpoints.get(i).cloned()),
            watching,
            leader: lease.as_ref().map(|(l, _)| l.leader.clone()),
            lease: state,
            lease_remaining_s: remaining,
            lease_granted_s: granted,
            lease_read_age_s: lease.map(|(_, at)| age(at)),
            last_error_age_s: error.as_ref().map(|(_, at)| age(*at)),
            last_error: error.map(|(e, _)| e),
            failures: self.counts().collect(),
        }
    }
}

fn secs(d: Duration) -> u64 {
    d.as_secs()
}
