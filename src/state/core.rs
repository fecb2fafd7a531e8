//! The pure core of the state owner: from (the configuration, the current snapshot, what the IO
//! layer counts, one input, the time) to the next snapshot and the effects to carry out, as values.
//! HAProxy's transitions happen here (the rise/fall step, `on-marked-down shutdown-sessions`, the
//! log lines in its wording), and so do our deliberate differences (one routed primary, fail
//! closed, a 503 or a non-primary body stops new connections at once, the higher timeline wins, a
//! switchover request or PostgreSQL's own word takes a node out of routing, the failover pace).
//! Timeline fencing ([`super::fence`]), the REST outage ride-through ([`super::ride`]), the SQL
//! check's gate ([`super::sql`]) and an operator's orders (`state::admin`) are decided in their
//! own modules, called from here.
//! [`super::owner`] only carries the effects out, in the order given.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::{EventKind, Input, Snapshot};
use crate::config::{Config, OnMarkedDown, Server};
use crate::health::patroni::Answer;
use crate::health::{CheckResult, Transition};
use crate::routing::{self, Candidate, Claim};

/// Longest a node stays "leaving" after a switchover request, in case the end is never seen.
const LEAVING_LIMIT: Duration = Duration::from_secs(60);

/// What the IO layer counts that decisions quote in their messages (read just before deciding).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Io {
    /// Sessions open or being set up, per server.
    pub sessions: Vec<u64>,
    /// Sessions waiting for a slot, per server.
    pub queued: Vec<u64>,
    /// Clients held for a primary now, and hold timeouts so far.
    pub holding: u64,
    pub hold_timeouts: u64,
}

/// What a log line of an effect is about: its log target (`patroni_proxy::health` or `::routing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    /// UP/DOWN transitions, in HAProxy's wording.
    Health,
    /// The routed primary and what puts it in doubt.
    Routing,
    /// An operator's action (`patroni_proxy::admin`).
    Admin,
}

/// Where a log line of an effect goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

/// Something to do once decided, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Record a finished check in the metrics.
    Observe {
        node: usize,
        result: Box<CheckResult>,
        transition: Option<Transition>,
    },
    /// Record a finished SQL check in the metrics.
    ObserveSql {
        node: usize,
        result: Box<crate::health::sql::SqlResult>,
    },
    /// Log a line and, with `event`, record it on the dashboard's timeline at `at`.
    Say {
        level: Level,
        topic: Topic,
        event: Option<(EventKind, Option<usize>)>,
        at: SystemTime,
        message: String,
    },
    /// Publish the new snapshot. Always before any [`Effect::Kill`]: a session takes its kill
    /// ticket and then reads the snapshot ([`super::Shared::ticket_on`]), so one that took its
    /// ticket after a kill reads a snapshot that no longer routes to that server, and one that took
    /// it before is reached by the kill. Killing first left a window in which a session read the
    /// old snapshot with a fresh ticket and relayed to a server just marked DOWN (issue 11 item 3).
    Publish,
    /// Shut down every session of this server (on the primary port).
    Kill(usize),
    /// Shut down the sessions of node `node` on the listener of set `set` (a DOWN for that
    /// listener's rule).
    KillSet { set: usize, node: usize },
    /// Cut the wait before the next check of every node but `except`.
    WakeAll { except: Option<usize> },
    /// Try a TCP connect to `node`'s PostgreSQL port and answer [`Input::PgProbe`] (the REST
    /// outage ride-through, [`super::ride`]).
    Probe(usize),
    /// Add the IO side of node `node` (a reload added it): before the snapshot that has it is
    /// published, so that every index a session reads is valid.
    AddBackend { node: usize, maxconn: u32 },
    /// A reload changed the server's `maxconn`: from the next session (sessions over the new limit
    /// continue; new ones queue until the count is under it).
    SetMaxconn { node: usize, maxconn: u32 },
    /// Start checking `node` (added, or its check target changed), first check at once.
    StartChecker(usize),
    /// Stop checking `node` (removed, or its check target changed).
    StopChecker(usize),
    /// In `after`, close what is left of the sessions of `node`, removed at `removed_at`
    /// ([`Input::RemovedGraceOver`]).
    GraceTimer {
        node: usize,
        removed_at: SystemTime,
        after: Duration,
    },
}

/// A decision: the next snapshot and what to do about it.
#[derive(Debug, Clone)]
pub struct Decision {
    pub snapshot: Snapshot,
    pub effects: Vec<Effect>,
}

/// The outcome of a check of `node`: the decision, and the interval before its next check.
pub fn on_check(
    cfg: &Config,
    current: &Snapshot,
    io: &Io,
    node: usize,
    result: CheckResult,
    now: Instant,
    wall: SystemTime,
) -> (Decision, Duration) {
    let px = &cfg.listen.name;
    let name = current.nodes[node].server.name.clone();
    let mut snap = current.clone();
    snap.seq += 1;
    let mut effects = Vec::new();

    let answer = Answer::of(&result);
    let seq = snap.seq;
    let n = &mut snap.nodes[node];
    let before = n.last_answer.clone();
    match &answer {
        Answer::Primary { timeline } => {
            n.claim = Claim::Primary {
                timeline: *timeline,
                seq,
            }
        }
        Answer::NotPrimary { reason } => {
            n.claim = Claim::Denied {
                reason: reason.clone(),
            }
        }
        Answer::Unknown => {}
    }
    if n.leaving_since
        .is_some_and(|t| now.saturating_duration_since(t) > LEAVING_LIMIT)
    {
        n.leaving_since = None;
    }
    let step = n.counter.observe(result.status.passed());
    if step.counted_failure {
        n.chkfail += 1;
    }
    let reason = describe(&result);
    effects.push(Effect::Observe {
        node,
        result: Box::new(result.clone()),
        transition: step.transition,
    });
    n.last_check = Some(result);
    n.last_answer = Some(answer);
    match step.transition {
        Some(Transition::WentDown) => {
            n.chkdown += 1;
            n.last_change = now;
            n.last_change_wall = wall;
        }
        Some(Transition::WentUp) => {
            n.downtime += now.saturating_duration_since(n.last_change);
            n.last_change = now;
            n.last_change_wall = wall;
        }
        None => {}
    }
    let normal = cfg.interval_for(n.counter.is_fully_up(), n.counter.is_fully_down());
    let went_down = step.transition == Some(Transition::WentDown);
    let ride = super::ride::on_check(cfg, &mut snap, node, went_down, now, wall);
    effects.extend(super::fence::on_check(
        cfg,
        &snap,
        node,
        before.as_ref(),
        wall,
    ));
    let active = snap
        .nodes
        .iter()
        .filter(|n| n.counter.is_up() && n.removed.is_none())
        .count();
    let mut kills = Vec::new();
    match step.transition {
        Some(Transition::WentDown) => {
            if cfg.listen.on_marked_down == OnMarkedDown::ShutdownSessions && !ride.keep_sessions {
                kills.push(node);
            }
            let sessions = io.sessions.get(node).copied().unwrap_or(0);
            let queued = io.queued.get(node).copied().unwrap_or(0);
            // Stamped with the moment the node was marked DOWN, before its sessions are shut down:
            // a client on another relay thread must never see its session end before the DOWN.
            effects.push(say(
                Level::Warn,
                Topic::Health,
                Some((EventKind::Down, Some(node))),
                wall,
                format!(
                    "Server {px}/{name} is DOWN, {reason}. {active} active and 0 backup servers left. \
                     {sessions} sessions active, 0 requeued, {queued} remaining in queue."
                ),
            ));
            if active == 0 {
                effects.push(say(
                    Level::Error,
                    Topic::Health,
                    None,
                    wall,
                    format!("proxy '{px}' has no server available!"),
                ));
            }
        }
        Some(Transition::WentUp) => effects.push(say(
            Level::Info,
            Topic::Health,
            Some((EventKind::Up, Some(node))),
            wall,
            format!(
                "Server {px}/{name} is UP, {reason}. {active} active and 0 backup servers online. \
                 0 sessions requeued, 0 total in queue."
            ),
        )),
        None => {}
    }
    effects.extend(ride.effects);
    kills.extend(ride.kill);

    reroute(
        cfg,
        &mut snap,
        io,
        now,
        wall,
        &reason,
        &mut effects,
        &mut kills,
    );
    let on_marked_down = cfg.listen.on_marked_down == OnMarkedDown::ShutdownSessions;
    let set_kills = super::sets::on_check(&mut snap, node, on_marked_down, wall, &mut effects);

    // `node` has just been checked, and goes on at `next`.
    conclude(&mut snap, kills, &mut effects, Some(node));
    // After the publish, as every kill.
    effects.extend(set_kills);
    // The routed primary itself keeps HAProxy's pace even in doubt: an unanswered check says
    // nothing about its role, and counting `fall` at the fast pace would cut its sessions within a
    // second of a Patroni restart (issue 3: DOWN after fall x inter).
    let next = if snap.failover_pace && snap.primary != Some(node) {
        normal.min(cfg.check.failover_inter)
    } else {
        normal
    };
    (
        Decision {
            snapshot: snap,
            effects,
        },
        next,
    )
}

/// The outcome of a suspicion or DCS event; `None` when it changes nothing. (`Input::Recheck` is
/// not a state change: the owner handles it.)
pub fn on_input(
    cfg: &Config,
    current: &Snapshot,
    io: &Io,
    input: Input,
    now: Instant,
    wall: SystemTime,
) -> Option<Decision> {
    let mut snap = current.clone();
    snap.seq += 1;
    // The suspected node itself is re-checked at the failover pace, not at once: a leader whose
    // PostgreSQL restarts under a held lock answers 200 while refusing clients, and re-checking it
    // on every refusal would spin.
    let mut except = None;
    let mut ride = super::ride::Step::default();
    let names: Vec<Arc<Server>> = current.nodes.iter().map(|n| n.server.clone()).collect();
    let name = |i: usize| names.get(i).map_or("?", |s| s.name.as_str());
    let message = match input {
        Input::Recheck { .. } => return None,
        Input::LeaderLease(seen) => return super::ride::on_lease(cfg, snap, io, seen, now, wall),
        Input::Sql { node, result } => {
            return super::sql::on_sql(cfg, current, io, node, *result, now, wall)
        }
        Input::PgProbe { node, accepted } => {
            return super::ride::on_probe(cfg, snap, io, node, accepted, now, wall)
        }
        Input::Admin(order) => return super::admin::on_admin(cfg, snap, io, order, now, wall),
        Input::Reloaded { message, previous } => {
            let reload = super::servers::Reload {
                message,
                previous: &previous,
            };
            return Some(super::servers::on_reload(cfg, snap, io, reload, now, wall));
        }
        Input::Resolved { node, ip } => {
            return super::servers::on_resolved(cfg, snap, io, node, ip, now, wall)
        }
        Input::RemovedGraceOver { node, removed_at } => {
            return super::servers::on_grace_over(cfg, snap, io, node, removed_at, wall)
        }
        Input::Suspect {
            node,
            reason,
            recheck_now,
        } => {
            except = (!recheck_now).then_some(node);
            let n = snap.nodes.get_mut(node)?;
            n.claim = Claim::Denied {
                reason: reason.clone(),
            };
            format!(
                "Server {}/{} is not routable: {reason}; re-checking every node now.",
                cfg.listen.name,
                name(node)
            )
        }
        Input::LeaderChanged { leader } => {
            ride = super::ride::on_leader(cfg, &mut snap, leader.as_deref(), wall);
            // Every "primary" answer predates the change: the REST check must confirm the new
            // state before anything is routed again.
            for n in &mut snap.nodes {
                if matches!(n.claim, Claim::Primary { .. }) {
                    n.claim = Claim::Unconfirmed;
                }
            }
            format!(
                "Leader key changed to {}; re-checking every node now.",
                leader.as_deref().unwrap_or("(none)")
            )
        }
        Input::SwitchoverRequested => {
            let p = snap.primary?;
            snap.nodes[p].leaving_since = Some(now);
            format!(
                "Switchover requested: {} is leaving; new clients are held for the next primary.",
                name(p)
            )
        }
        Input::SwitchoverEnded => {
            if snap.nodes.iter().all(|n| n.leaving_since.is_none()) {
                return None;
            }
            for n in &mut snap.nodes {
                if n.leaving_since.take().is_some() {
                    // Whatever it answered before the switchover, ask again.
                    n.claim = Claim::Unconfirmed;
                }
            }
            "Switchover request cleared.".to_string()
        }
    };
    let mut effects = vec![say(
        Level::Warn,
        Topic::Routing,
        Some((EventKind::Suspect, None)),
        wall,
        message,
    )];
    effects.extend(ride.effects);
    let mut kills: Vec<usize> = ride.kill.into_iter().collect();
    reroute(
        cfg,
        &mut snap,
        io,
        now,
        wall,
        "primary in doubt",
        &mut effects,
        &mut kills,
    );
    snap.failover_pace = true;
    super::sets::recompute(&mut snap);
    effects.push(Effect::Publish);
    effects.extend(kills.into_iter().map(Effect::Kill));
    effects.push(Effect::WakeAll { except });
    Some(Decision {
        snapshot: snap,
        effects,
    })
}

/// Whether every node must be checked at `failover_inter`: no primary, or the routed one's last
/// check did not confirm it.
fn in_doubt(snap: &Snapshot) -> bool {
    match snap.primary {
        None => true,
        Some(p) => {
            let n = &snap.nodes[p];
            let confirmed = n.last_check.as_ref().is_some_and(|r| r.status.passed())
                && matches!(n.last_answer, Some(Answer::Primary { .. }));
            // A ride-through is no doubt: etcd vouches for it, and its end wakes every checker.
            !confirmed && n.ride.since.is_none()
        }
    }
}

/// How every decision that may change routing ends: the failover pace follows doubt (every node
/// at `failover_inter` while the primary is unknown or in doubt, until one is confirmed), the new
/// snapshot is published before any session is cut, and when the fast pace begins every checker but
/// `checked` (which has just run) is woken.
pub(super) fn conclude(
    snap: &mut Snapshot,
    mut kills: Vec<usize>,
    effects: &mut Vec<Effect>,
    checked: Option<usize>,
) {
    let was_fast = snap.failover_pace;
    snap.failover_pace = in_doubt(snap);
    super::sets::recompute(snap);
    effects.push(Effect::Publish);
    kills.dedup();
    // A second primary listener (another port over the same cluster) loses its sessions to a
    // node with the primary port's, by the same rule and at the same moment.
    let primary_sets: Vec<usize> = (snap.sets.iter().enumerate())
        .filter(|(_, s)| s.rule.role == crate::routing::roles::Role::Primary)
        .map(|(i, _)| i)
        .collect();
    for node in kills {
        effects.push(Effect::Kill(node));
        effects.extend(
            primary_sets
                .iter()
                .map(|&set| Effect::KillSet { set, node }),
        );
    }
    if snap.failover_pace && !was_fast {
        effects.push(Effect::WakeAll { except: checked });
    }
}

pub(super) fn say(
    level: Level,
    topic: Topic,
    event: Option<(EventKind, Option<usize>)>,
    at: SystemTime,
    message: String,
) -> Effect {
    Effect::Say {
        level,
        topic,
        event,
        at,
        message,
    }
}

/// Recomputes the routed primary; on a change, says so and, when another node takes over, adds the
/// previous primary to `kills` (never two primaries: its sessions are closed once published).
/// The end of a decision that may move the routed primary for `reason`: reroute, kill `kills` and
/// what the reroute ends (after the publish), conclude.
pub(super) fn rerouted(
    cfg: &Config,
    mut snap: Snapshot,
    io: &Io,
    (now, wall): (Instant, SystemTime),
    reason: &str,
    (mut effects, mut kills): (Vec<Effect>, Vec<usize>),
) -> Decision {
    reroute(
        cfg,
        &mut snap,
        io,
        now,
        wall,
        reason,
        &mut effects,
        &mut kills,
    );
    conclude(&mut snap, kills, &mut effects, None);
    Decision {
        snapshot: snap,
        effects,
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn reroute(
    cfg: &Config,
    snap: &mut Snapshot,
    io: &Io,
    now: Instant,
    wall: SystemTime,
    reason: &str,
    effects: &mut Vec<Effect>,
    kills: &mut Vec<usize>,
) {
    let px = &cfg.listen.name;
    let names: Vec<Arc<Server>> = snap.nodes.iter().map(|n| n.server.clone()).collect();
    let name = |i: usize| names.get(i).map_or("?", |s| s.name.as_str());
    let floor = snap.max_timeline;
    let gate = cfg.sql_gate();
    let candidates: Vec<Candidate<'_>> = (snap.nodes.iter().enumerate())
        .map(|(i, n)| n.candidate(floor, gate, snap.primary == Some(i)))
        .collect();
    let chosen = routing::choose(snap.primary, &candidates);
    if chosen == snap.primary {
        super::fence::record(snap);
        return;
    }
    let old = snap.primary;
    if old.is_none() {
        snap.no_primary_total += now.saturating_duration_since(snap.primary_since);
    }
    snap.primary = chosen;
    super::fence::record(snap);
    // How long the previous state (a primary, or none) lasted.
    let gap = now.saturating_duration_since(snap.primary_since);
    snap.primary_since = now;
    let message = match chosen {
        Some(new) => {
            snap.primary_changes += u64::from(snap.last_primary.is_some_and(|l| l != new));
            snap.last_primary = Some(new);
            let timeline = match &snap.nodes[new].claim {
                Claim::Primary {
                    timeline: Some(t), ..
                } => format!(" (timeline {t})"),
                _ => String::new(),
            };
            let text = match old {
                Some(old) => {
                    kills.push(old);
                    let closed = io.sessions.get(old).copied().unwrap_or(0);
                    format!(
                        "Routed primary of {px} is now {}{timeline}, was {}; \
                         {closed} sessions to {} closed.",
                        name(new),
                        name(old),
                        name(old)
                    )
                }
                // The end of a failover as clients saw it: how long there was no primary, and how
                // many clients are being released to the new one.
                None => format!(
                    "Routed primary of {px} is now {}{timeline}, after {:.3} s without one; \
                     {} held clients released ({} hold timeouts so far).",
                    name(new),
                    gap.as_secs_f64(),
                    io.holding,
                    io.hold_timeouts
                ),
            };
            (EventKind::PrimaryChanged, Some(new), text)
        }
        None => (
            EventKind::PrimaryLost,
            old,
            format!(
                "Routed primary of {px} lost: {} is no longer routable ({reason}); \
                 new clients are held until a primary is confirmed.",
                old.map_or("?", name)
            ),
        ),
    };
    let (kind, server, text) = message;
    effects.push(say(
        Level::Warn,
        Topic::Routing,
        Some((kind, server)),
        wall,
        text,
    ));
}

/// HAProxy's `reason: ..., code: ..., info: "...", check duration: Nms` fragment.
fn describe(r: &CheckResult) -> String {
    let mut s = format!("reason: {}", r.status.description());
    if let (Some(code), true) = (r.code, r.status.is_layer7()) {
        s.push_str(&format!(", code: {code}"));
    }
    if let Some(info) = &r.info {
        s.push_str(&format!(", info: \"{info}\""));
    }
    s.push_str(&format!(", check duration: {}ms", r.duration.as_millis()));
    s
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
