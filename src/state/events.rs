//! The dashboard's event timeline: the recent state changes, bounded, newest last.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

/// A line of the dashboard's event timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    #[serde(serialize_with = "crate::time::ser_epoch")]
    pub at: SystemTime,
    pub kind: EventKind,
    pub server: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Up,
    Down,
    PrimaryChanged,
    PrimaryLost,
    /// Something outside the checks (a backend's startup reply, the DCS) put the primary in doubt.
    Suspect,
    /// An operator's `drain`, `maint` or `ready`.
    Admin,
    /// The REST outage ride-through began or ended (`state::ride`).
    RideThrough,
    /// A server's host name resolved, or resolves to another address (`state::servers`).
    Address,
}

/// The recent events, newest last, bounded.
#[derive(Debug, Default)]
pub struct Events(Mutex<VecDeque<Event>>);

impl Events {
    const KEEP: usize = 200;

    pub fn push(&self, kind: EventKind, server: Option<&str>, message: String) {
        self.push_at(SystemTime::now(), kind, server, message)
    }

    /// An event that happened at `at`, recorded now.
    pub fn push_at(&self, at: SystemTime, kind: EventKind, server: Option<&str>, message: String) {
        let mut q = self.0.lock().expect("events lock");
        if q.len() == Self::KEEP {
            q.pop_front();
        }
        q.push_back(Event {
            at,
            kind,
            server: server.map(str::to_string),
            message,
        });
    }

    pub fn recent(&self) -> Vec<Event> {
        self.0
            .lock()
            .expect("events lock")
            .iter()
            .cloned()
            .collect()
    }
}

/// The messages said with an event of `kind`: what the rule tests read of a decision.
#[cfg(test)]
pub(super) fn said(effects: &[super::core::Effect], kind: EventKind) -> Vec<String> {
    effects
        .iter()
        .filter_map(|e| match e {
            super::core::Effect::Say {
                event: Some((k, _)),
                message,
                ..
            } if *k == kind => Some(message.clone()),
            _ => None,
        })
        .collect()
}
