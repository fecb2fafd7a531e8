//! The REST outage ride-through (issue 14 item 2), as pure decisions on the snapshot. Patroni's
//! REST server is small and can wedge (5 threads, a backlog of 5) while its HA loop and PostgreSQL
//! run on; HAProxy then marks the primary DOWN after `fall` checks and cuts every session although
//! the database is fine. With `[etcd]` (and `etcd.ride_through`, on by default) the routed primary
//! whose counter goes DOWN is kept routed, and its sessions kept, while all of these hold:
//! - its checks time out or are refused (`L4TOUT`, `L4CON`, `L6TOUT`, `L7TOUT`, `SOCKERR`): no
//!   answer, which says nothing about its role. Any answer (a 503, a non-primary body, garbage) is
//!   Patroni's own word and ends the ride;
//! - the latest etcd reading names its member (`[[server]] member`, else the name its own REST
//!   answer gave, `patroni.name`) as the leader key's holder, with a lease still live: the reading
//!   said `remaining` seconds were left, and that many have not passed yet. Patroni renews the
//!   lease only while its HA loop runs and PostgreSQL is its primary;
//! - a TCP connect to its PostgreSQL port succeeded lately ([`Effect::Probe`], run by the owner
//!   after each failed check of the routed primary, answered as [`Input::PgProbe`]).
//!
//! The ride ends at once, with its sessions cut per `on-marked-down` (the DOWN already counted),
//! when the leader key changes owner or is deleted, a reading shows the lease lapsed or another
//! holder, the lease's known life runs out without a new reading, a probe is refused, or the REST
//! API answers anything but a primary 200; it ends quietly when the checks bring the node UP.
//!
//! [`Input::PgProbe`]: super::Input::PgProbe

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::core::{conclude, reroute, say, Decision, Effect, Io, Level, Topic};
use super::{EventKind, Snapshot};
use crate::config::{Config, OnMarkedDown};
use crate::dcs::{LeaderLease, Lease};
use crate::health::patroni::Answer;
use crate::health::CheckStatus;

/// What the ride-through keeps of one node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeRide {
    /// The member name its last REST answer that had one gave (`patroni.name`).
    pub learned: Option<String>,
    /// The last probe of its PostgreSQL port: accepted, and when it was answered.
    pub probe: Option<(bool, Instant)>,
    /// Since when the ride-through keeps it routed although its checks say DOWN.
    pub since: Option<SystemTime>,
}

/// The latest etcd reading of the leader key.
#[derive(Debug, Clone, PartialEq)]
pub struct DcsLeader {
    /// Its holder (`None`: no leader key).
    pub member: Option<String>,
    /// Until when the lease is known to live: the reading's time plus the `remaining` it said.
    /// `None`: lapsed, unleased, or not read since the key last changed.
    pub live_until: Option<Instant>,
}

/// What a check of one node means for its ride.
#[derive(Debug, Default)]
pub struct Step {
    /// The DOWN this check caused must not cut the sessions: the ride begins.
    pub keep_sessions: bool,
    /// The ride ended with the node DOWN: cut its sessions now (after the publish).
    pub kill: Option<usize>,
    pub effects: Vec<Effect>,
}

/// A check result that is no answer at all: the REST API timed out or refused.
pub fn unanswered(status: CheckStatus) -> bool {
    matches!(
        status,
        CheckStatus::L4TOUT
            | CheckStatus::L4CON
            | CheckStatus::L6TOUT
            | CheckStatus::L7TOUT
            | CheckStatus::SOCKERR
    )
}

/// How long a probe's answer counts: two check cycles (the probe runs after each failed check,
/// and the next check comes `inter` plus up to `timeout` later).
fn probe_life(cfg: &Config) -> Duration {
    let inter = cfg.check.inter.max(cfg.check.downinter.unwrap_or_default());
    (inter + cfg.check.timeout) * 2
}

/// Why the ride-through cannot keep `node` routed now (`None`: it can).
fn why_not(cfg: &Config, snap: &Snapshot, node: usize, now: Instant) -> Option<String> {
    if let Some(why) = why_not_dcs(cfg, snap, node, now) {
        return Some(why);
    }
    match snap.nodes.get(node)?.ride.probe {
        Some((true, at)) if now.saturating_duration_since(at) <= probe_life(cfg) => None,
        Some((false, _)) => Some("its PostgreSQL port refuses connections".into()),
        _ => Some("its PostgreSQL port was not probed lately".into()),
    }
}

/// The configuration's and etcd's part of [`why_not`] (what a DCS reading can change).
fn why_not_dcs(cfg: &Config, snap: &Snapshot, node: usize, now: Instant) -> Option<String> {
    if !cfg.ride_through() {
        return Some("ride-through off".into());
    }
    let n = snap.nodes.get(node)?;
    let Some(member) = n.server.member.as_ref().or(n.ride.learned.as_ref()) else {
        return Some("its Patroni member name is unknown (set `member` in its [[server]])".into());
    };
    match &snap.dcs_leader {
        None => Some("no etcd reading of the leader key yet".into()),
        Some(d) if d.member.as_ref() != Some(member) => Some(format!(
            "etcd's leader key names {}, not {member}",
            d.member.as_deref().unwrap_or("no one")
        )),
        Some(d) if d.live_until.is_none_or(|t| t <= now) => {
            Some(format!("{member}'s leader lease is not known to be live"))
        }
        Some(_) => None,
    }
}

/// After the check of `node` was applied to `snap` (counter, claim, `last_check`), before
/// routing is recomputed (so `snap.primary` is still the one the check began under);
/// `went_down`: this check marked it DOWN.
pub fn on_check(
    cfg: &Config,
    snap: &mut Snapshot,
    node: usize,
    went_down: bool,
    now: Instant,
    wall: SystemTime,
) -> Step {
    let mut step = Step::default();
    let was_routed = snap.primary == Some(node);
    let px = cfg.listen.name.clone();
    let Some(n) = snap.nodes.get_mut(node) else {
        return step;
    };
    let name = n.server.name.clone();
    let Some(result) = n.last_check.clone() else {
        return step;
    };
    if let Some(m) = result.patroni.as_ref().and_then(|p| p.member.clone()) {
        n.ride.learned = Some(m);
    }
    let no_answer = unanswered(result.status);
    let confirmed = result.status.passed() && matches!(n.last_answer, Some(Answer::Primary { .. }));
    if let Some(since) = n.ride.since {
        let lasted = wall.duration_since(since).unwrap_or_default().as_secs();
        if n.counter.is_up() {
            n.ride.since = None;
            step.effects.push(say(
                Level::Info,
                Topic::Routing,
                Some((EventKind::RideThrough, Some(node))),
                wall,
                format!(
                    "Server {px}/{name}'s REST API answers again: ride-through over after \
                     {lasted} s, its sessions were kept."
                ),
            ));
            return step;
        }
        let why = if confirmed {
            None
        } else if !no_answer {
            Some(format!(
                "its REST API answered ({})",
                result.status.as_str()
            ))
        } else {
            why_not(cfg, snap, node, now)
        };
        match why {
            None if no_answer => step.effects.push(Effect::Probe(node)),
            None => {}
            Some(why) => step = end(cfg, snap, node, &why, wall),
        }
        return step;
    }
    if !(was_routed && no_answer && cfg.ride_through()) {
        return step;
    }
    // Every failed check of the routed primary probes its PostgreSQL port, so that the probe's
    // answer is in when `fall` is reached.
    step.effects.push(Effect::Probe(node));
    if !went_down {
        return step;
    }
    match why_not(cfg, snap, node, now) {
        None => {
            snap.nodes[node].ride.since = Some(wall);
            step.keep_sessions = true;
            step.effects.push(say(
                Level::Warn,
                Topic::Routing,
                Some((EventKind::RideThrough, Some(node))),
                wall,
                format!(
                    "Server {px}/{name}'s REST API is unreachable ({}) but etcd shows it holding \
                     the leader key with a live lease and its PostgreSQL port accepts \
                     connections: still routed, its sessions kept; checks go on \
                     (rest_unreachable_leader_alive).",
                    result.status.as_str()
                ),
            ));
        }
        Some(why) => step.effects.push(say(
            Level::Info,
            Topic::Routing,
            None,
            wall,
            format!("Server {px}/{name}: no REST outage ride-through: {why}."),
        )),
    }
    step
}

/// Ends the ride of `node`: it is DOWN by its checks, so its sessions go now. Also ended by the
/// SQL check's `pg_is_in_recovery() = true` (`state::sql`).
pub(super) fn end(
    cfg: &Config,
    snap: &mut Snapshot,
    node: usize,
    why: &str,
    wall: SystemTime,
) -> Step {
    let n = &mut snap.nodes[node];
    n.ride.since = None;
    let cut = cfg.listen.on_marked_down == OnMarkedDown::ShutdownSessions;
    Step {
        keep_sessions: false,
        kill: cut.then_some(node),
        effects: vec![say(
            Level::Warn,
            Topic::Routing,
            Some((EventKind::RideThrough, Some(node))),
            wall,
            format!(
                "Server {}/{} ride-through over: {why}; it is DOWN by its checks{}.",
                cfg.listen.name,
                n.server.name,
                if cut { ", its sessions are closed" } else { "" }
            ),
        )],
    }
}

/// The rider, if any, whose ride a DCS change or a probe may end.
fn rider(snap: &Snapshot) -> Option<usize> {
    snap.nodes.iter().position(|n| n.ride.since.is_some())
}

/// Ends the ride (if any) that no longer holds, and concludes the decision.
#[allow(clippy::too_many_arguments)]
fn recheck(
    cfg: &Config,
    mut snap: Snapshot,
    io: &Io,
    now: Instant,
    wall: SystemTime,
    gone: impl Fn(&Snapshot, usize) -> Option<String>,
) -> Decision {
    let mut effects = Vec::new();
    let mut kills = Vec::new();
    if let Some(r) = rider(&snap) {
        if let Some(why) = gone(&snap, r) {
            let step = end(cfg, &mut snap, r, &why, wall);
            effects.extend(step.effects);
            kills.extend(step.kill);
            reroute(
                cfg,
                &mut snap,
                io,
                now,
                wall,
                &why,
                &mut effects,
                &mut kills,
            );
        }
    }
    conclude(&mut snap, kills, &mut effects, None);
    Decision {
        snapshot: snap,
        effects,
    }
}

/// A reading of the leader key and its lease (every etcd resync): kept for the next decision;
/// a rider whose member no longer holds a live lease stops riding at once. `None` without the
/// ride-through (nothing reads it then).
pub fn on_lease(
    cfg: &Config,
    mut snap: Snapshot,
    io: &Io,
    seen: LeaderLease,
    now: Instant,
    wall: SystemTime,
) -> Option<Decision> {
    if !cfg.ride_through() && rider(&snap).is_none() {
        return None;
    }
    snap.dcs_leader = Some(DcsLeader {
        live_until: match seen.lease {
            Lease::Live { remaining, .. } => Some(now + remaining),
            Lease::Lapsed { .. } | Lease::Unleased => None,
        },
        member: Some(seen.leader),
    });
    Some(recheck(cfg, snap, io, now, wall, |s, r| {
        why_not_dcs(cfg, s, r, now)
    }))
}

/// The leader key changed (the watch's event): the reading of it is replaced (its lease unknown
/// until read), and a ride ends. Returns the ride's end
/// to say and the node to cut, for [`super::core::on_input`] to add to its decision.
pub fn on_leader(
    cfg: &Config,
    snap: &mut Snapshot,
    leader: Option<&str>,
    wall: SystemTime,
) -> Step {
    let same = snap
        .dcs_leader
        .as_ref()
        .is_some_and(|d| d.member.as_deref() == leader);
    if !same {
        snap.dcs_leader = Some(DcsLeader {
            member: leader.map(str::to_string),
            live_until: None,
        });
    }
    // Any event of the leader key ends a ride: the core takes every primary claim back
    // (`Claim::Unconfirmed`), and only its REST check, which is what is missing, could give it back.
    match rider(snap) {
        Some(r) => {
            let why = format!(
                "etcd's leader key now names {}",
                leader.unwrap_or("no one (deleted)")
            );
            end(cfg, snap, r, &why, wall)
        }
        None => Step::default(),
    }
}

/// The answer of a probe of `node`'s PostgreSQL port: kept; a refused probe ends its ride.
pub fn on_probe(
    cfg: &Config,
    mut snap: Snapshot,
    io: &Io,
    node: usize,
    accepted: bool,
    now: Instant,
    wall: SystemTime,
) -> Option<Decision> {
    snap.nodes.get_mut(node)?.ride.probe = Some((accepted, now));
    Some(recheck(cfg, snap, io, now, wall, |_, r| {
        (r == node && !accepted).then(|| "its PostgreSQL port refuses connections".to_string())
    }))
}

#[cfg(test)]
#[path = "ride_tests.rs"]
mod tests;
