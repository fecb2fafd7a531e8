//! The state owner: the one task that applies inputs (check results, suspicions, DCS events) to
//! the snapshot, one at a time. Applying a result is where HAProxy's transitions happen: log lines
//! in its wording, `on-marked-down shutdown-sessions`, and closing the sessions of a primary that
//! lost the role. A new state takes effect in a fixed order ([`CommitStep`]): published first,
//! then sessions are shut down.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{EventKind, Input, NodeState, Shared, Snapshot};
use crate::config::OnMarkedDown;
use crate::health::{CheckResult, Transition};
use crate::patroni::Answer;
use crate::routing::{self, Candidate, Claim};

/// Longest a node stays "leaving" after a switchover request, in case the end is never seen.
const LEAVING_LIMIT: Duration = Duration::from_secs(60);

/// The state owner: applies inputs one at a time until cancelled.
pub async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let mut inputs = shared
        .inputs_rx
        .lock()
        .expect("inputs lock")
        .take()
        .expect("one state owner per Shared");
    // When each node's re-check was last hastened by a session.
    let mut hastened: Vec<Option<Instant>> = vec![None; shared.config.servers.len()];
    loop {
        let input = tokio::select! {
            _ = stop.cancelled() => return,
            r = inputs.recv() => match r { Some(r) => r, None => return },
        };
        match input {
            Input::Recheck { node, reason } => {
                let now = Instant::now();
                let Some(last) = hastened.get_mut(node) else {
                    continue;
                };
                if recheck_allowed(*last, now, shared.config.check.failover_inter) {
                    *last = Some(now);
                    tracing::info!(target: "patroni_proxy::routing", server = shared.server_name(node),
                        "{reason}; re-checking it now (routing unchanged)");
                    shared.wake[node].notify_one();
                }
            }
            Input::Check {
                node,
                result,
                reply,
            } => {
                let next = apply(&shared, node, result);
                // A checker that stopped waiting is shutting down; nothing to do.
                let _ = reply.send(next);
            }
            other => apply_event(&shared, other),
        }
    }
}

/// Sessions may hasten a node's re-check at most once per `pace`, however many clients see a sign:
/// a flood of clients that provoke one cannot turn into a flood of checks on Patroni's REST API.
pub fn recheck_allowed(last: Option<Instant>, now: Instant, pace: Duration) -> bool {
    last.is_none_or(|t| now.saturating_duration_since(t) >= pace)
}

/// Applies a suspicion or DCS event.
pub fn apply_event(shared: &Shared, input: Input) {
    let now = Instant::now();
    let mut snap = (*shared.current()).clone();
    snap.seq += 1;
    let routed = snap.primary;
    // The suspected node itself is re-checked at the failover pace, not at once: a leader whose
    // PostgreSQL restarts under a held lock answers 200 while refusing clients, and re-checking it
    // on every refusal would spin.
    let mut skip = None;
    let message = match input {
        Input::Check { .. } | Input::Recheck { .. } => {
            tracing::error!("bug: {input:?} reached apply_event; ignored");
            return;
        }
        Input::Suspect {
            node,
            reason,
            recheck_now,
        } => {
            skip = (!recheck_now).then_some(node);
            snap.nodes[node].claim = Claim::Denied {
                reason: reason.clone(),
            };
            format!(
                "Server {}/{} is not routable: {reason}; re-checking every node now.",
                shared.config.listen.name,
                shared.server_name(node)
            )
        }
        Input::LeaderChanged { leader } => {
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
            let Some(p) = routed else { return };
            snap.nodes[p].leaving_since = Some(now);
            format!(
                "Switchover requested: {} is leaving; new clients are held for the next primary.",
                shared.server_name(p)
            )
        }
        Input::SwitchoverEnded => {
            if snap.nodes.iter().all(|n| n.leaving_since.is_none()) {
                return;
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
    tracing::warn!(target: "patroni_proxy::routing", "{message}");
    shared.events.push(EventKind::Suspect, None, message);
    let mut kills = Vec::new();
    reroute(shared, &mut snap, now, "primary in doubt", &mut kills);
    snap.fast = true;
    commit(shared, snap, kills);
    shared.wake_all_but(skip);
}

/// Applies one check result: counter step, transitions and their side effects, routing decision,
/// new snapshot. Returns the interval before the node's next check.
pub fn apply(shared: &Shared, node: usize, result: CheckResult) -> Duration {
    let d = decide(shared, node, result);
    commit(shared, d.snapshot, d.kills);
    if d.enter_fast {
        // Everyone else is checked now; `node` has just been, and goes on at `next`.
        shared.wake_all_but(Some(node));
    }
    d.next
}

/// A check result's consequences, not yet in effect.
#[derive(Debug)]
pub struct Decided {
    pub snapshot: Snapshot,
    /// Servers whose sessions are to be shut down once `snapshot` is published.
    pub kills: Vec<usize>,
    /// The interval before the node's next check.
    pub next: Duration,
    /// The fast pace just began: every other node is to be checked now.
    pub enter_fast: bool,
}

/// How a new state takes effect, in order. Publishing comes first: a session takes its kill
/// ticket and then reads the snapshot ([`Shared::ticket_for`]), so a session that took its ticket
/// after a kill reads a snapshot that no longer routes to that server, and one that took it before
/// is reached by the kill. Killing first left a window in which a session read the old snapshot
/// with a fresh ticket and relayed to a server just marked DOWN (issue 11 item 3).
#[derive(Debug)]
pub enum CommitStep {
    Publish(Arc<Snapshot>),
    Kill(usize),
}

pub fn commit_steps(snapshot: Snapshot, kills: Vec<usize>) -> Vec<CommitStep> {
    std::iter::once(CommitStep::Publish(Arc::new(snapshot)))
        .chain(kills.into_iter().map(CommitStep::Kill))
        .collect()
}

pub fn carry_out(shared: &Shared, step: CommitStep) {
    match step {
        CommitStep::Publish(s) => {
            shared.snapshot.send_replace(s);
        }
        CommitStep::Kill(node) => {
            shared.backends[node].kill_sessions();
        }
    }
}

fn commit(shared: &Shared, snapshot: Snapshot, kills: Vec<usize>) {
    for step in commit_steps(snapshot, kills) {
        carry_out(shared, step);
    }
}

/// The pure-ish half of [`apply`]: everything but publishing and shutting sessions down (it
/// logs and records events).
pub fn decide(shared: &Shared, node: usize, result: CheckResult) -> Decided {
    let cfg = &shared.config;
    let px = &cfg.listen.name;
    let name = shared.server_name(node);
    let now = Instant::now();
    let mut snap = (*shared.current()).clone();
    snap.seq += 1;

    let answer = Answer::of(&result);
    let n = &mut snap.nodes[node];
    match &answer {
        Answer::Primary { timeline } => {
            n.claim = Claim::Primary {
                timeline: *timeline,
                seq: snap.seq,
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
    shared
        .stats
        .metrics
        .observe_check(node, &result, step.transition);
    n.last_check = Some(result);
    n.last_answer = Some(answer);

    match step.transition {
        Some(Transition::WentDown) => {
            n.chkdown += 1;
            n.last_change = now;
            n.last_change_wall = SystemTime::now();
        }
        Some(Transition::WentUp) => {
            n.downtime += now.saturating_duration_since(n.last_change);
            n.last_change = now;
            n.last_change_wall = SystemTime::now();
        }
        None => {}
    }
    let normal = cfg.interval_for(n.counter.is_fully_up(), n.counter.is_fully_down());
    let active = snap.nodes.iter().filter(|n| n.counter.is_up()).count();
    let backend = &shared.backends[node];
    let mut kills = Vec::new();

    match step.transition {
        Some(Transition::WentDown) => {
            // The event carries the moment the node was marked DOWN, taken before its sessions are
            // shut down: a client on another relay thread sees its session end at once, and must
            // never see it end before the DOWN it is the consequence of.
            let marked = snap.nodes[node].last_change_wall;
            if cfg.listen.on_marked_down == OnMarkedDown::ShutdownSessions {
                kills.push(node);
            }
            let sessions = backend.counters.scur.load(Relaxed);
            let queued = backend.counters.qcur.load(Relaxed);
            let msg = format!(
                "Server {px}/{name} is DOWN, {reason}. {active} active and 0 backup servers left. \
                 {sessions} sessions active, 0 requeued, {queued} remaining in queue."
            );
            tracing::warn!(target: "patroni_proxy::health", server = name, "{msg}");
            shared
                .events
                .push_at(marked, EventKind::Down, Some(name), msg);
            if active == 0 {
                tracing::error!(target: "patroni_proxy::health", "proxy '{px}' has no server available!");
            }
        }
        Some(Transition::WentUp) => {
            let msg = format!(
                "Server {px}/{name} is UP, {reason}. {active} active and 0 backup servers online. \
                 0 sessions requeued, 0 total in queue."
            );
            tracing::info!(target: "patroni_proxy::health", server = name, "{msg}");
            shared.events.push(EventKind::Up, Some(name), msg);
        }
        None => {}
    }

    reroute(shared, &mut snap, now, &reason, &mut kills);

    // Fast pace while the primary is unknown or in doubt: every node, until one is confirmed.
    let was_fast = snap.fast;
    snap.fast = match snap.primary {
        None => true,
        Some(p) => {
            let n = &snap.nodes[p];
            let confirmed = n.last_check.as_ref().is_some_and(|r| r.status.passed())
                && matches!(n.last_answer, Some(Answer::Primary { .. }));
            !confirmed
        }
    };
    let enter_fast = snap.fast && !was_fast;
    // The routed primary itself keeps HAProxy's pace even in doubt: an unanswered check says
    // nothing about its role, and counting `fall` at the fast pace would cut its sessions within a
    // second of a Patroni restart (issue 3: DOWN after fall x inter).
    let next = if snap.fast && snap.primary != Some(node) {
        normal.min(cfg.check.failover_inter)
    } else {
        normal
    };
    Decided {
        snapshot: snap,
        kills,
        next,
        enter_fast,
    }
}

/// Recomputes the routed primary; on a change, logs it, records the event and, when another node
/// takes over, adds the previous primary to `kills` (its sessions are closed once published).
fn reroute(
    shared: &Shared,
    snap: &mut Snapshot,
    now: Instant,
    reason: &str,
    kills: &mut Vec<usize>,
) {
    let px = &shared.config.listen.name;
    let candidates: Vec<Candidate<'_>> = snap.nodes.iter().map(NodeState::candidate).collect();
    let chosen = routing::choose(snap.primary, &candidates);
    if chosen == snap.primary {
        return;
    }
    let old = snap.primary;
    if old.is_none() {
        snap.no_primary_total += now.saturating_duration_since(snap.primary_since);
    }
    snap.primary = chosen;
    // How long the previous state (a primary, or none) lasted.
    let gap = now.saturating_duration_since(snap.primary_since);
    snap.primary_since = now;
    match chosen {
        Some(new) => {
            snap.primary_changes += u64::from(snap.last_primary.is_some_and(|l| l != new));
            snap.last_primary = Some(new);
            let new_name = shared.server_name(new);
            let timeline = match &snap.nodes[new].claim {
                Claim::Primary {
                    timeline: Some(t), ..
                } => format!(" (timeline {t})"),
                _ => String::new(),
            };
            let msg = match old {
                Some(old) => {
                    // Never two primaries: sessions opened on the previous one go now, whatever
                    // its health counter says.
                    kills.push(old);
                    let closed = shared.backends[old].counters.scur.load(Relaxed);
                    format!(
                        "Routed primary of {px} is now {new_name}{timeline}, was {}; \
                         {closed} sessions to {} closed.",
                        shared.server_name(old),
                        shared.server_name(old)
                    )
                }
                None => {
                    // The end of a failover as clients saw it: how long there was no primary, and
                    // how many clients are being released to the new one.
                    let held = shared.frontend.holding.load(Relaxed);
                    let timeouts = shared.frontend.hold_timeouts.load(Relaxed);
                    format!(
                        "Routed primary of {px} is now {new_name}{timeline}, after {:.3} s without \
                         one; {held} held clients released ({timeouts} hold timeouts so far).",
                        gap.as_secs_f64()
                    )
                }
            };
            tracing::warn!(target: "patroni_proxy::routing", primary = new_name, "{msg}");
            shared
                .events
                .push(EventKind::PrimaryChanged, Some(new_name), msg);
        }
        None => {
            let old_name = old.map(|o| shared.server_name(o)).unwrap_or("?");
            let msg = format!(
                "Routed primary of {px} lost: {old_name} is no longer routable ({reason}); \
                 new clients are held until a primary is confirmed."
            );
            tracing::warn!(target: "patroni_proxy::routing", "{msg}");
            shared
                .events
                .push(EventKind::PrimaryLost, Some(old_name), msg);
        }
    }
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
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::health::CheckStatus;
    use crate::patroni::PatroniInfo;

    fn two_nodes() -> Arc<Shared> {
        Shared::new(Arc::new(
            Config::from_toml(
                "[[server]]\nname = \"a\"\naddress = \"127.0.0.11:5432\"\n\
                 [[server]]\nname = \"b\"\naddress = \"127.0.0.12:5432\"\n",
            )
            .unwrap(),
        ))
    }

    fn primary(timeline: u64) -> CheckResult {
        CheckResult {
            status: CheckStatus::L7OK,
            code: Some(200),
            duration: Duration::from_millis(1),
            info: None,
            patroni: Some(PatroniInfo {
                role: Some("primary".into()),
                state: Some("running".into()),
                timeline: Some(timeline),
            }),
            finished_at: SystemTime::now(),
        }
    }

    #[tokio::test]
    async fn no_session_is_admitted_where_the_kill_cannot_reach_it() {
        // Issue 11 item 3: "a session that read the old snapshot and took its slot after the kill
        // relays to the DOWN node. Make it impossible by construction (publish, then kill ...)".
        // Every interleaving of a session's admission (`ticket_for`: ticket, then snapshot) with
        // the steps of the commit that moves the primary away from node a: the session is either
        // refused or reached by the kill.
        let steps_of = |shared: &Shared| {
            let d = decide(shared, 1, primary(2));
            assert_eq!(d.kills, [0], "the old primary's sessions are to be closed");
            commit_steps(d.snapshot, d.kills)
        };
        for split in 0..=2 {
            let shared = two_nodes();
            apply(&shared, 0, primary(1));
            assert_eq!(shared.current().primary, Some(0));
            let steps = steps_of(&shared);
            assert_eq!(steps.len(), 2, "publish, kill");
            let mut steps = steps.into_iter();
            for step in steps.by_ref().take(split) {
                carry_out(&shared, step);
            }
            let admitted = shared.ticket_for(0);
            for step in steps {
                carry_out(&shared, step);
            }
            if let Some(ticket) = admitted {
                assert!(
                    shared.backends[0].is_killed(ticket),
                    "split {split}: admitted to the old primary and never reached by its kill"
                );
            }
            assert_eq!(shared.current().primary, Some(1));
        }
    }

    #[tokio::test]
    async fn a_down_is_published_before_its_sessions_are_cut() {
        // `on-marked-down shutdown-sessions` (haproxy-semantics.md §2.2) goes through the same
        // order: the snapshot that says DOWN is out before the kill.
        let shared = two_nodes();
        apply(&shared, 0, primary(1));
        let fail = CheckResult {
            status: CheckStatus::L4CON,
            code: None,
            patroni: None,
            ..primary(1)
        };
        for _ in 0..3 {
            let d = decide(&shared, 0, fail.clone());
            if !d.kills.is_empty() {
                let steps = commit_steps(d.snapshot, d.kills);
                assert!(matches!(steps[0], CommitStep::Publish(ref s) if s.primary.is_none()));
                assert!(matches!(steps[1], CommitStep::Kill(0)));
                return;
            }
            commit_steps(d.snapshot, d.kills)
                .into_iter()
                .for_each(|s| carry_out(&shared, s));
        }
        panic!("fall 3: the third failure marks it DOWN");
    }

    #[test]
    fn sessions_hasten_a_recheck_at_most_once_per_failover_inter() {
        // Issue 11 item 2: what a client can provoke may hasten a re-check, never flood Patroni.
        let pace = Duration::from_millis(200);
        let t = Instant::now();
        assert!(recheck_allowed(None, t, pace));
        assert!(!recheck_allowed(
            Some(t),
            t + Duration::from_millis(199),
            pace
        ));
        assert!(recheck_allowed(Some(t), t + pace, pace));
    }
}
