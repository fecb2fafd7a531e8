//! The proxy's own short memory of what happened, for the dashboard's pictures: one sample per
//! second for the last hour, per node and per listener, in fixed-size rings reserved once at
//! start-up, and the periods without a routable primary ("gaps") with what their held clients got.
//!
//! The step ([`History::record`]) is pure: a [`Reading`] of the counters and the snapshot in, the
//! rings and gaps updated. [`sampler`] takes the readings once a second; [`pictures`] draws them.
//!
//! Memory bound, reserved at start-up (written, so resident, as the first hour fills) and never
//! grown ([`History::bytes`], checked by a test): `SAMPLES` × (8 B of time + 24 B per node + 20 B
//! per listener) + `GAPS` × 88 B; 3600 samples make 28,800 B of times, 86,400 B per node and
//! 72,000 B per listener: 360,000 B for 3 nodes and the one listener, plus 5,632 B of gaps.

pub mod pictures;
mod ring;
pub mod sampler;

use std::collections::VecDeque;
use std::time::Duration;

pub use ring::Ring;

use super::export::{tone_of, Tone};
use crate::state::NodeState;

/// One hour at one sample per second.
pub const SAMPLES: usize = 3600;
/// Gaps kept; older ones are dropped first (their samples are long out of the rings anyway).
pub const GAPS: usize = 64;
/// A closed gap's outcome counts keep being updated this long after its end (and while clients are
/// still holding): the released clients are counted by their sessions just after the new primary is
/// published, so possibly after the sample that saw it.
const SETTLE_MS: u64 = 3000;

/// A node's role and health in one sample: the colour of its band on the timeline. One byte.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Band {
    /// No sample (before start-up, or the sampler missed that second).
    #[default]
    None,
    /// A running replica.
    Replica,
    /// The routed primary.
    Primary,
    /// No check finished yet.
    Unknown,
    /// Going up or down, UP but not routed, Patroni starting or stopping.
    Changing,
    /// A switchover was announced away from it: no new connections.
    Leaving,
    /// Taken out by an operator (drain or maint).
    Admin,
    /// Not answering, or Patroni reports it stopped or failed.
    Down,
}

impl Band {
    /// The band of a node in a snapshot. The order of the variants is their weight when several
    /// samples share one column of a picture: the worst one shows, so a short DOWN is never hidden.
    pub fn of(n: &NodeState, routed: bool) -> Band {
        if n.leaving_since.is_some() {
            return Band::Leaving;
        }
        match tone_of(n, routed) {
            Tone::Primary => Band::Primary,
            Tone::Replica => Band::Replica,
            Tone::Transitional => Band::Changing,
            Tone::Down => Band::Down,
            Tone::Init => Band::Unknown,
            Tone::Admin => Band::Admin,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Band::None => "none",
            Band::Replica => "replica",
            Band::Primary => "primary",
            Band::Unknown => "unknown",
            Band::Changing => "changing",
            Band::Leaving => "leaving",
            Band::Admin => "admin",
            Band::Down => "down",
        }
    }
}

/// One node's second. Rates are per second over the time since the previous sample; they saturate
/// at `u32::MAX` (4 GiB/s, far above what one proxy relays).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeSample {
    pub sessions: u32,
    pub new_sessions: u32,
    pub bytes_in: u32,
    pub bytes_out: u32,
    /// The duration of the last finished check, in microseconds; 0 before the first.
    pub check_us: u32,
    pub band: Band,
}

/// One listener's second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenerSample {
    pub sessions: u32,
    pub new_sessions: u32,
    pub bytes_in: u32,
    pub bytes_out: u32,
    /// Clients waiting for a primary at that moment.
    pub holding: u32,
}

/// A period without a routable primary, as the proxy measured it (the state owner's own instants,
/// converted to wall time on one fixed anchor, so `end - start` is exactly what it counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub start_ms: u64,
    /// `None` while it lasts.
    pub end_ms: Option<u64>,
    pub kind: GapKind,
    /// Clients that started waiting for a primary during it, and what they got: connected to the
    /// new primary, or refused with 57P03 on `hold_timeout`.
    pub held: u64,
    pub released: u64,
    pub refused: u64,
    /// The frontend's counters just before it began (outcomes are differences from these).
    base: Holds,
}

impl Gap {
    pub fn duration_ms(&self, now_ms: u64) -> u64 {
        self.end_ms.unwrap_or(now_ms).saturating_sub(self.start_ms)
    }
}

/// Why there was no primary, as far as the proxy can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapKind {
    /// From the proxy's start until its first primary was confirmed.
    StartUp,
    /// A node was leaving (Patroni announced a switchover in etcd) during it.
    Switchover,
    /// Anything else: the primary stopped answering, or said it no longer was one.
    Failover,
}

impl GapKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GapKind::StartUp => "start-up",
            GapKind::Switchover => "switchover",
            GapKind::Failover => "failover",
        }
    }
}

/// The frontend's hold counters (see [`crate::backend::Frontend`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Holds {
    pub holding: u64,
    pub held: u64,
    pub released: u64,
    pub refused: u64,
}

/// What the sampler read at one moment: monotonic totals and gauges, not rates.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    pub at_ms: u64,
    pub nodes: Vec<NodeReading>,
    /// In the order of [`History::new`]'s listener names.
    pub listeners: Vec<ListenerReading>,
    /// A primary is routable.
    pub routed: bool,
    /// When the routed primary last changed (to a node or to none), wall ms.
    pub primary_since_ms: u64,
    /// Completed time without a primary (the snapshot's `no_primary_total`).
    pub no_primary_total_ms: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NodeReading {
    pub scur: u64,
    pub stot: u64,
    pub bin: u64,
    pub bout: u64,
    pub check: Option<Duration>,
    pub band: Band,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ListenerReading {
    pub scur: u64,
    pub stot: u64,
    pub bin: u64,
    pub bout: u64,
    pub holds: Holds,
}

/// The rings and the gaps. Built with the node and listener names; grows only when a reload adds a
/// server ([`History::add_node`]). Cloned for each drawing, so the drawing holds no lock.
#[derive(Debug, Clone)]
pub struct History {
    /// Wall time of each sample, epoch ms; index `i` of every ring is the same moment.
    times: Ring<u64>,
    pub nodes: Vec<(String, Ring<NodeSample>)>,
    pub listeners: Vec<(String, Ring<ListenerSample>)>,
    gaps: VecDeque<Gap>,
    last: Option<Reading>,
}

impl History {
    pub fn new(nodes: &[String], listeners: &[String]) -> Self {
        Self::with_capacity(nodes, listeners, SAMPLES)
    }

    pub fn with_capacity(nodes: &[String], listeners: &[String], samples: usize) -> Self {
        Self {
            times: Ring::new(samples),
            nodes: nodes
                .iter()
                .map(|n| (n.clone(), Ring::new(samples)))
                .collect(),
            listeners: listeners
                .iter()
                .map(|n| (n.clone(), Ring::new(samples)))
                .collect(),
            gaps: VecDeque::with_capacity(GAPS),
            last: None,
        }
    }

    /// Adds the ring of a node a reload added, its past filled with empty seconds so that index
    /// `i` of every ring stays the same moment.
    pub fn add_node(&mut self, name: &str) {
        let mut ring = Ring::new(self.times.capacity());
        for _ in 0..self.times.len() {
            ring.push(NodeSample::default());
        }
        self.nodes.push((name.to_string(), ring));
    }

    /// The memory the rings and gaps hold, in bytes (fixed at construction, and per added node).
    pub fn bytes(&self) -> usize {
        self.times.bytes()
            + self.nodes.iter().map(|(_, r)| r.bytes()).sum::<usize>()
            + self.listeners.iter().map(|(_, r)| r.bytes()).sum::<usize>()
            + GAPS * std::mem::size_of::<Gap>()
    }

    /// Sample times, oldest first (epoch ms).
    pub fn times(&self) -> impl DoubleEndedIterator<Item = u64> + ExactSizeIterator + '_ {
        self.times.iter()
    }

    /// How many of the oldest samples are at or before `t` (epoch ms): the ones a picture starting
    /// at `t` skips. Sample times only grow (they are read on the monotonic clock).
    pub fn samples_until(&self, t: u64) -> usize {
        let n = self.times.len();
        // Binary search over the ring's logical order.
        let (mut lo, mut hi) = (0, n);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.times.iter_from(mid).next() {
                Some(v) if v <= t => lo = mid + 1,
                _ => hi = mid,
            }
        }
        lo
    }

    /// The gaps, oldest first.
    pub fn gaps(&self) -> impl Iterator<Item = &Gap> {
        self.gaps.iter()
    }

    /// The pure step: one reading becomes one sample in every ring, and opens, closes or settles a
    /// gap. A reading whose node or listener count differs from the history's is ignored (the
    /// configuration is fixed for the process, so that would be a caller's bug, not worth a panic).
    pub fn record(&mut self, r: &Reading) {
        if r.nodes.len() != self.nodes.len() || r.listeners.len() != self.listeners.len() {
            return;
        }
        let prev = self.last.take();
        let dt_ms = prev
            .as_ref()
            .map_or(1000, |p| r.at_ms.saturating_sub(p.at_ms))
            .max(1);
        let rate = |now: u64, before: Option<u64>| -> u32 {
            let delta = now.saturating_sub(before.unwrap_or(now));
            let per_s = u128::from(delta) * 1000 / u128::from(dt_ms);
            u32::try_from(per_s).unwrap_or(u32::MAX)
        };
        let gauge = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        self.times.push(r.at_ms);
        for (i, (_, ring)) in self.nodes.iter_mut().enumerate() {
            let n = &r.nodes[i];
            // A node added since the previous reading has no previous counts.
            let p = prev.as_ref().and_then(|p| p.nodes.get(i));
            ring.push(NodeSample {
                sessions: gauge(n.scur),
                new_sessions: rate(n.stot, p.map(|p| p.stot)),
                bytes_in: rate(n.bin, p.map(|p| p.bin)),
                bytes_out: rate(n.bout, p.map(|p| p.bout)),
                check_us: n
                    .check
                    .map_or(0, |d| u32::try_from(d.as_micros()).unwrap_or(u32::MAX)),
                band: n.band,
            });
        }
        for (i, (_, ring)) in self.listeners.iter_mut().enumerate() {
            let l = &r.listeners[i];
            let p = prev.as_ref().map(|p| &p.listeners[i]);
            ring.push(ListenerSample {
                sessions: gauge(l.scur),
                new_sessions: rate(l.stot, p.map(|p| p.stot)),
                bytes_in: rate(l.bin, p.map(|p| p.bin)),
                bytes_out: rate(l.bout, p.map(|p| p.bout)),
                holding: gauge(l.holds.holding),
            });
        }
        self.track_gaps(r, prev.as_ref());
        self.last = Some(r.clone());
    }

    fn track_gaps(&mut self, r: &Reading, prev: Option<&Reading>) {
        let holds = total_holds(r);
        let before = prev.map(total_holds).unwrap_or_default();
        let leaving = r.nodes.iter().any(|n| n.band == Band::Leaving)
            || prev.is_some_and(|p| p.nodes.iter().any(|n| n.band == Band::Leaving));
        let open = self.gaps.back().is_some_and(|g| g.end_ms.is_none());
        let kind = match (prev, leaving) {
            (None, _) => GapKind::StartUp,
            (Some(_), true) => GapKind::Switchover,
            (Some(_), false) => GapKind::Failover,
        };
        if r.routed {
            if open {
                if let Some(g) = self.gaps.back_mut() {
                    g.end_ms = Some(r.primary_since_ms.max(g.start_ms));
                }
            } else {
                // A gap that began and ended between two samples (or before the first one: the
                // start-up): the snapshot's total, counted from the start, still has it.
                let missed = r
                    .no_primary_total_ms
                    .saturating_sub(prev.map_or(0, |p| p.no_primary_total_ms));
                if missed > 0 {
                    let end = r.primary_since_ms;
                    self.push_gap(Gap {
                        start_ms: end.saturating_sub(missed),
                        end_ms: Some(end),
                        kind,
                        held: 0,
                        released: 0,
                        refused: 0,
                        base: before,
                    });
                }
            }
        } else {
            let new_loss = self
                .gaps
                .back()
                .is_none_or(|g| g.end_ms.is_some() || g.start_ms != r.primary_since_ms);
            if new_loss {
                // Lost again before the sampler saw the last one end: close it where this began.
                if let Some(g) = self.gaps.back_mut().filter(|g| g.end_ms.is_none()) {
                    g.end_ms = Some(r.primary_since_ms.max(g.start_ms));
                }
                self.push_gap(Gap {
                    start_ms: r.primary_since_ms,
                    end_ms: None,
                    kind,
                    held: 0,
                    released: 0,
                    refused: 0,
                    base: before,
                });
            } else if let Some(g) = self.gaps.back_mut().filter(|g| g.kind == GapKind::Failover) {
                if leaving {
                    g.kind = GapKind::Switchover;
                }
            }
        }
        if let Some(g) = self.gaps.back_mut() {
            let settling = g
                .end_ms
                .is_none_or(|end| holds.holding > 0 || r.at_ms < end.saturating_add(SETTLE_MS));
            if settling {
                g.held = holds.held.saturating_sub(g.base.held) + g.base.holding;
                g.released = holds.released.saturating_sub(g.base.released);
                g.refused = holds.refused.saturating_sub(g.base.refused);
            }
        }
    }

    fn push_gap(&mut self, g: Gap) {
        if self.gaps.len() == GAPS {
            self.gaps.pop_front();
        }
        self.gaps.push_back(g);
    }
}

fn total_holds(r: &Reading) -> Holds {
    r.listeners.iter().fold(Holds::default(), |a, l| Holds {
        holding: a.holding.saturating_add(l.holds.holding),
        held: a.held.saturating_add(l.holds.held),
        released: a.released.saturating_add(l.holds.released),
        refused: a.refused.saturating_add(l.holds.refused),
    })
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
