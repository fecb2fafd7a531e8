//! What a reload does to the servers, decided as values by the pure core: servers are matched by
//! name; one whose PostgreSQL address is the same keeps its health state, counters and
//! administrative state; an added one (or one whose address changed, or one added back after its
//! removal) starts fail-closed, as every node does at start-up (not routed until a check confirms
//! it); a removed one is drained (no new
//! sessions, its checks stop, its sessions end by themselves or are closed `shutdown_grace`
//! later). Node indices are slots that only grow, so every index a session or the stats side holds
//! stays valid; a removed node keeps its slot (and its counters, shown as REMOVED) until the
//! process restarts or its name comes back.
//!
//! A server written with a host name gets its address from its checker (`health::resolve`): the
//! first address is recorded; a later different one is decided here as a reload's new address is,
//! since it is another machine: the node starts over fail-closed, its sessions to the old address
//! continue.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::time::Instant;

use super::core::{conclude, reroute, rerouted, say, Decision, Effect, Io, Level, Topic};
use super::{EventKind, NodeState, Snapshot};
use crate::config::Config;

/// A reload, on `snap` (the current snapshot, already numbered): the new rise/fall for every node,
/// the servers applied as above, routing recomputed (a removed or re-addressed primary loses the
/// role: new clients are held, its sessions continue), then published. Checkers start and stop
/// after the publish; the IO side of an added node is made before it.
/// What the state owner is told of a reload.
pub(super) struct Reload<'a> {
    /// The log line and event saying what changed.
    pub message: String,
    /// The configuration it replaced.
    pub previous: &'a Config,
}

pub(super) fn on_reload(
    cfg: &Config,
    mut snap: Snapshot,
    io: &Io,
    reload: Reload<'_>,
    now: Instant,
    wall: SystemTime,
) -> Decision {
    let Reload { message, previous } = reload;
    let px = &cfg.listen.name;
    let (rise, fall) = (cfg.check.rise.get(), cfg.check.fall.get());
    let mut effects = vec![say(
        Level::Info,
        Topic::Admin,
        Some((EventKind::Admin, None)),
        wall,
        message,
    )];
    // Carried out once the snapshot is published.
    let mut after = Vec::new();
    for m in snap.sets.iter_mut().flat_map(|set| set.nodes.iter_mut()) {
        m.counter = m.counter.with_thresholds(rise, fall);
    }
    for s in &cfg.servers {
        let new = Arc::new(s.clone());
        let Some(i) = snap.nodes.iter().position(|n| n.server.name == s.name) else {
            let i = snap.nodes.len();
            snap.nodes.push(NodeState::new(new, rise, fall, now, wall));
            effects.push(Effect::AddBackend {
                node: i,
                maxconn: s.maxconn.get(),
            });
            after.push(Effect::StartChecker(i));
            effects.push(say(
                Level::Info,
                Topic::Admin,
                Some((EventKind::Admin, Some(i))),
                wall,
                format!(
                    "Server {px}/{} ({}) added: not routed until its checks confirm it.",
                    s.name, s.address
                ),
            ));
            continue;
        };
        let n = &mut snap.nodes[i];
        let old = std::mem::replace(&mut n.server, new);
        let sessions = io.sessions.get(i).copied().unwrap_or(0);
        if old.maxconn != s.maxconn {
            effects.push(Effect::SetMaxconn {
                node: i,
                maxconn: s.maxconn.get(),
            });
        }
        let revived = n.removed.take().is_some();
        if revived || old.address != s.address {
            // Another PostgreSQL (or one we stopped checking): nothing its checks said holds.
            start_over(&mut snap, i, (rise, fall), now, wall);
            if !revived {
                after.push(Effect::StopChecker(i));
            }
            after.push(Effect::StartChecker(i));
            let what = if revived {
                "added back".to_string()
            } else {
                format!(
                    "moved from {} to {}; its {sessions} sessions to {} continue",
                    old.address, s.address, old.address
                )
            };
            effects.push(say(
                Level::Warn,
                Topic::Admin,
                Some((EventKind::Admin, Some(i))),
                wall,
                format!(
                    "Server {px}/{} {what}: not routed until its checks confirm it.",
                    s.name
                ),
            ));
            continue;
        }
        n.counter = n.counter.with_thresholds(rise, fall);
        if previous.check_address_of(&old) != cfg.check_address_of(s) {
            // The same PostgreSQL, checked elsewhere: its state stands until those checks say
            // otherwise (`fall` of them, as for any check failure).
            after.push(Effect::StopChecker(i));
            after.push(Effect::StartChecker(i));
        }
    }
    for (i, n) in snap.nodes.iter_mut().enumerate() {
        if n.removed.is_some() || cfg.servers.iter().any(|s| s.name == n.server.name) {
            continue;
        }
        n.removed = Some(wall);
        after.push(Effect::StopChecker(i));
        after.push(Effect::GraceTimer {
            node: i,
            removed_at: wall,
            after: cfg.global.shutdown_grace,
        });
        let sessions = io.sessions.get(i).copied().unwrap_or(0);
        effects.push(say(
            Level::Warn,
            Topic::Admin,
            Some((EventKind::Admin, Some(i))),
            wall,
            format!(
                "Server {px}/{} removed: no new sessions; its {sessions} sessions continue until \
                 they end, or for {} (global.shutdown_grace).",
                n.server.name,
                crate::config::format_duration(cfg.global.shutdown_grace)
            ),
        ));
    }
    let mut kills = Vec::new();
    reroute(
        cfg,
        &mut snap,
        io,
        now,
        wall,
        "removed from the configuration or moved to another address",
        &mut effects,
        &mut kills,
    );
    conclude(&mut snap, kills, &mut effects, None);
    effects.extend(after);
    Decision {
        snapshot: snap,
        effects,
    }
}

/// Node `i` is another PostgreSQL under the same name (a new address, or added back): fail closed
/// on every listener, as at start-up.
fn start_over(
    snap: &mut Snapshot,
    i: usize,
    (rise, fall): (u32, u32),
    now: Instant,
    wall: SystemTime,
) {
    let n = &mut snap.nodes[i];
    *n = renewed(n, rise, fall, now, wall);
    for set in &mut snap.sets {
        if let Some(m) = set.nodes.get_mut(i) {
            *m = super::sets::Membership::new(rise, fall);
        }
    }
}

/// A node starting over under the same name: fail-closed like a new one, keeping what its
/// counters and the operator's order say of its past.
fn renewed(n: &NodeState, rise: u32, fall: u32, now: Instant, wall: SystemTime) -> NodeState {
    let mut fresh = NodeState::new(n.server.clone(), rise, fall, now, wall);
    fresh.chkfail = n.chkfail;
    fresh.chkdown = n.chkdown;
    fresh.downtime = n.downtime_at(now);
    fresh.admin = n.admin;
    fresh.admin_by = n.admin_by.clone();
    fresh
}

/// `shutdown_grace` after `node` was removed at `removed_at`: what is left of its sessions is
/// closed, unless it was added back since (or removed again later: that removal's own timer).
pub(super) fn on_grace_over(
    cfg: &Config,
    mut snap: Snapshot,
    io: &Io,
    node: usize,
    removed_at: SystemTime,
    wall: SystemTime,
) -> Option<Decision> {
    let n = snap.nodes.get(node)?;
    if n.removed != Some(removed_at) {
        return None;
    }
    let sessions = io.sessions.get(node).copied().unwrap_or(0);
    let queued = io.queued.get(node).copied().unwrap_or(0);
    // The counts are the primary port's; the other listeners' sessions are closed with them
    // (a kill of a listener without any is a no-op).
    if sessions + queued == 0 && snap.sets.is_empty() {
        return None;
    }
    let message = format!(
        "Server {}/{} was removed global.shutdown_grace ago: closing its {sessions} remaining \
         sessions.",
        cfg.listen.name, n.server.name,
    );
    snap.seq += 1;
    let mut effects = vec![
        say(
            Level::Warn,
            Topic::Admin,
            Some((EventKind::Admin, Some(node))),
            wall,
            message,
        ),
        Effect::Kill(node),
    ];
    effects.extend((0..snap.sets.len()).map(|set| Effect::KillSet { set, node }));
    Some(Decision {
        snapshot: snap,
        effects,
    })
}

/// `node`'s host name resolved to `ip` for the check about to be applied. `None` when that changes
/// nothing (an IP server, the same address, a removed node).
pub(super) fn on_resolved(
    cfg: &Config,
    mut snap: Snapshot,
    io: &Io,
    node: usize,
    ip: IpAddr,
    now: Instant,
    wall: SystemTime,
) -> Option<Decision> {
    let (rise, fall) = (cfg.check.rise.get(), cfg.check.fall.get());
    let n = snap.nodes.get_mut(node)?;
    let host = n.server.address.name()?.to_string();
    if n.removed.is_some() || n.resolved == Some(ip) {
        return None;
    }
    let px = &cfg.listen.name;
    let name = n.server.name.clone();
    let mut effects = Vec::new();
    let Some(old) = n.resolved.replace(ip) else {
        effects.push(say(
            Level::Info,
            Topic::Health,
            Some((EventKind::Address, Some(node))),
            wall,
            format!("Server {px}/{name}: host name {host} resolves to {ip}."),
        ));
        conclude(&mut snap, Vec::new(), &mut effects, None);
        return Some(Decision {
            snapshot: snap,
            effects,
        });
    };
    // Another machine answers under the name: nothing the checks at `old` said holds for it.
    start_over(&mut snap, node, (rise, fall), now, wall);
    snap.nodes[node].resolved = Some(ip);
    let sessions = io.sessions.get(node).copied().unwrap_or(0);
    effects.push(say(
        Level::Warn,
        Topic::Health,
        Some((EventKind::Address, Some(node))),
        wall,
        format!(
            "Server {px}/{name}: host name {host} now resolves to {ip} (was {old}): not routed \
             until its checks at {ip} confirm it; its {sessions} sessions to {old} continue."
        ),
    ));
    let reason = "its host name resolves to another address";
    Some(rerouted(
        cfg,
        snap,
        io,
        (now, wall),
        reason,
        (effects, Vec::new()),
    ))
}

#[cfg(test)]
#[path = "servers_tests.rs"]
mod tests;
