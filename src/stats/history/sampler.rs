//! The task that feeds the history: once a second it reads the IO counters and the published
//! snapshot and hands the [`Reading`] to the pure [`History::record`]. Started and supervised by
//! the supervisor like every long-lived task; it ends only when its token is cancelled.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::{Band, History, Holds, ListenerReading, NodeReading, Reading};
use crate::config::Config;
use crate::state::Shared;

/// One sample per second: the resolution the rings are sized for.
pub const PERIOD: Duration = Duration::from_secs(1);

pub async fn run(shared: Arc<Shared>, history: Arc<Mutex<History>>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(PERIOD);
    // A late tick (a busy machine) is one sample, not a burst: rates are per elapsed second anyway.
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let r = read(&shared, Instant::now());
        // A panic elsewhere while the lock was held poisons it; the data is still whole (every
        // step leaves it consistent), so keep sampling.
        let mut h = history.lock().unwrap_or_else(|p| p.into_inner());
        // Nodes a reload added (the snapshot only grows, so it has every node the reading has).
        if r.nodes.len() > h.nodes.len() {
            let snap = shared.current();
            for n in snap.nodes.get(h.nodes.len()..r.nodes.len()).unwrap_or(&[]) {
                h.add_node(&n.server.name);
            }
        }
        h.record(&r);
    }
}

/// The wall time of `t`, on one fixed anchor (the proxy's start), so that two instants convert to
/// wall times exactly their distance apart: a gap's drawn length is the length the owner counted.
pub fn wall_ms(shared: &Shared, t: Instant) -> u64 {
    let start = crate::time::epoch_secs(shared.started);
    let start_ms = (start * 1000.0) as u64;
    let since = t.saturating_duration_since(shared.started_at).as_millis();
    start_ms.saturating_add(u64::try_from(since).unwrap_or(u64::MAX))
}

/// Reads everything a sample needs, now.
pub fn read(shared: &Shared, now: Instant) -> Reading {
    if let Some(m) = shared.sockmap.ready() {
        m.flush();
    }
    let snap = shared.current();
    let backends = shared.backends();
    let nodes = snap
        .nodes
        .iter()
        .zip(&backends)
        .enumerate()
        .map(|(i, (n, b))| {
            let c = &b.counters;
            NodeReading {
                scur: c.scur.load(Relaxed),
                stot: c.stot.load(Relaxed),
                bin: c.bin.load(Relaxed),
                bout: c.bout.load(Relaxed),
                check: n.last_check.as_ref().map(|r| r.duration),
                band: Band::of(n, snap.primary == Some(i)),
            }
        })
        .collect();
    let fe = &shared.frontend;
    // Today the primary port is the one listener; more would each keep counters of their own.
    let listener = ListenerReading {
        scur: fe.scur.load(Relaxed),
        stot: fe.stot.load(Relaxed),
        bin: fe.bin.load(Relaxed),
        bout: fe.bout.load(Relaxed),
        holds: Holds {
            holding: fe.holding.load(Relaxed),
            held: fe.held.load(Relaxed),
            released: fe.hold_released.load(Relaxed),
            refused: fe.hold_timeouts.load(Relaxed),
        },
    };
    Reading {
        at_ms: wall_ms(shared, now),
        nodes,
        listeners: vec![listener],
        routed: snap.primary.is_some(),
        primary_since_ms: wall_ms(shared, snap.primary_since),
        no_primary_total_ms: u64::try_from(snap.no_primary_total.as_millis()).unwrap_or(u64::MAX),
    }
}

/// The names [`read`]'s readings are in the order of: the nodes, and the one listener.
pub fn names(config: &Config) -> (Vec<String>, Vec<String>) {
    (
        config.servers.iter().map(|s| s.name.clone()).collect(),
        vec![config.listen.name.clone()],
    )
}
