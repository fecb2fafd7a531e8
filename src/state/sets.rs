//! The node sets of the listeners that are not the primary port (`replica`, `any`,
//! `standby_leader`), decided by the pure core from the same check answers as the routed primary:
//! per listener and node, HAProxy's rise/fall counter over that listener's own rule
//! ([`crate::routing::roles::admits`]), as if each listener were an HAProxy backend checking its
//! own Patroni endpoint, but with one check per node for all of them. A node is a member when its
//! counter is UP, its latest answer satisfies the rule (a failed rule stops new sessions at once,
//! as a 503 does on the primary port), an operator left it ready and a reload did not remove it.
//! A DOWN ends its sessions on that listener by `on-marked-down`, as HAProxy's backend would.

use std::sync::Arc;

use crate::health::{HealthCounter, Transition};
use crate::routing::balance::Balance;
use crate::routing::roles::{admits, Role, Rule};
use crate::routing::AdminState;

use super::core::{say, Effect, Level, Topic};
use super::{EventKind, Snapshot};

/// One node as one listener sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Membership {
    pub counter: HealthCounter,
    /// The rule's verdict on the latest answer (`None` before the first: not a member).
    pub verdict: Option<Result<(), String>>,
}

/// One non-primary listener's view of every node.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerSet {
    /// The listener's name (logs, events).
    pub name: String,
    pub rule: Rule,
    /// How its sessions spread over the members.
    pub balance: Balance,
    /// With no member, new sessions go to the routed primary (HAProxy users' `backup` server).
    pub fallback: bool,
    /// Only these servers (by name) may be members, when the listener names some.
    pub only: Option<Vec<String>>,
    /// By node index (grows with the nodes).
    pub nodes: Vec<Membership>,
    /// The nodes new sessions may go to now, in index order.
    pub members: Arc<[usize]>,
}

impl ListenerSet {
    pub fn new(spec: SetSpec, nodes: usize, rise: u32, fall: u32) -> Self {
        Self {
            name: spec.name,
            rule: spec.rule,
            balance: spec.balance,
            fallback: spec.fallback,
            only: spec.servers,
            nodes: (0..nodes).map(|_| Membership::new(rise, fall)).collect(),
            members: Arc::from([]),
        }
    }
}

impl Membership {
    pub fn new(rise: u32, fall: u32) -> Self {
        Self {
            counter: HealthCounter::new(rise, fall),
            verdict: None,
        }
    }
}

/// The sets of a new proxy: one per listener that is not a primary port, every node not yet a
/// member (fail closed).
pub fn of(config: &crate::config::Config) -> Vec<ListenerSet> {
    let (rise, fall) = (config.check.rise.get(), config.check.fall.get());
    specs(config)
        .into_iter()
        .map(|spec| ListenerSet::new(spec, config.servers.len(), rise, fall))
        .collect()
}

/// What a non-primary listener of the configuration asks.
#[derive(Debug, Clone, PartialEq)]
pub struct SetSpec {
    pub name: String,
    /// Where its clients connect.
    pub binds: Vec<std::net::SocketAddr>,
    pub rule: Rule,
    pub balance: Balance,
    pub fallback: bool,
    /// Only these servers (by name), when the listener names some.
    pub servers: Option<Vec<String>>,
}

/// The listeners of `config` after the first (the primary port), in its order.
pub fn specs(config: &crate::config::Config) -> Vec<SetSpec> {
    (config.listen.all().iter().skip(1))
        .map(|l| SetSpec {
            name: l.name.clone(),
            binds: l.bind.all().to_vec(),
            rule: Rule {
                role: l.role,
                max_lag: l.max_lag.map(|b| b.0),
            },
            balance: l.balance.unwrap_or_default(),
            fallback: l.fallback == Some(crate::config::Fallback::Primary),
            servers: l.servers.clone(),
        })
        .collect()
}

/// What a check of one node did to one listener's set.
#[derive(Debug, Clone, PartialEq)]
pub struct SetChange {
    pub set: usize,
    pub transition: Transition,
    /// The verdict that moved it (for DOWN, the reason).
    pub why: Option<String>,
}

/// Applies a finished check of `node` to every set: the rule's verdict on `info` feeds the
/// listener's counter. Returns the UP/DOWN transitions, for the log and the kills.
pub fn observe(
    snap: &mut Snapshot,
    node: usize,
    info: Option<&crate::health::patroni::PatroniInfo>,
) -> Vec<SetChange> {
    let primary_wal = snap.primary_wal;
    let routed = snap.primary == Some(node);
    let mut changes = Vec::new();
    for (set, l) in snap.sets.iter_mut().enumerate() {
        let Some(m) = l.nodes.get_mut(node) else {
            continue;
        };
        let verdict = admits(l.rule, info, primary_wal, routed);
        let step = m.counter.observe(verdict.is_ok());
        if let Some(transition) = step.transition {
            changes.push(SetChange {
                set,
                transition,
                why: verdict.clone().err(),
            });
        }
        m.verdict = Some(verdict);
    }
    changes
}

/// A finished check of `node`, already applied to the routed primary: notes the primary's WAL
/// position, feeds every set, and says what went DOWN or UP. Returns the kills (with
/// `on-marked-down shutdown-sessions`), to carry out after the publish; members are recomputed by
/// the decision's end (`core::conclude`).
pub(super) fn on_check(
    snap: &mut Snapshot,
    node: usize,
    shutdown_sessions: bool,
    wall: std::time::SystemTime,
    effects: &mut Vec<Effect>,
) -> Vec<Effect> {
    let mut kills = Vec::new();
    let n = &snap.nodes[node];
    let info = n.last_check.as_ref().and_then(|r| r.patroni.clone());
    let name = n.server.name.clone();
    if snap.primary == Some(node) {
        if let Some(at) = info.as_ref().and_then(|i| i.wal.location) {
            snap.primary_wal = Some(at);
        }
    }
    for change in observe(snap, node, info.as_ref()) {
        let l = &snap.sets[change.set];
        let (kind, level, text) = match change.transition {
            Transition::WentDown => (
                EventKind::Down,
                Level::Warn,
                format!(
                    "Server {}/{name} is DOWN for the {} listener: {}.",
                    l.name,
                    l.rule.role.as_str(),
                    change.why.as_deref().unwrap_or("checks failed")
                ),
            ),
            Transition::WentUp => (
                EventKind::Up,
                Level::Info,
                format!(
                    "Server {}/{name} is UP for the {} listener.",
                    l.name,
                    l.rule.role.as_str()
                ),
            ),
        };
        effects.push(say(
            level,
            Topic::Health,
            Some((kind, Some(node))),
            wall,
            text,
        ));
        if change.transition == Transition::WentDown && shutdown_sessions {
            kills.push(Effect::KillSet {
                set: change.set,
                node,
            });
        }
    }
    kills
}

/// Recomputes every set's members from the counters, the verdicts, the operators' orders, the
/// removals and the routed primary (never a replica listener's member, even before its next check
/// says so; always an `any` listener's).
pub fn recompute(snap: &mut Snapshot) {
    let primary = snap.primary;
    for l in &mut snap.sets {
        let ready: Vec<bool> = (snap.nodes.iter())
            .map(|n| {
                let listed = (l.only.as_ref()).is_none_or(|only| only.contains(&n.server.name));
                listed && n.removed.is_none() && n.admin == AdminState::Ready
            })
            .collect();
        let members: Vec<usize> = (l.nodes.iter().enumerate())
            .filter(|&(i, m)| {
                let checked = m.counter.is_up() && matches!(m.verdict, Some(Ok(())));
                let ok = match l.rule.role {
                    Role::Any => checked || primary == Some(i),
                    Role::Replica | Role::Sync | Role::Async => checked && primary != Some(i),
                    Role::StandbyLeader => checked,
                    // Not a set's role (the guard keeps it to the first listener).
                    Role::Primary => primary == Some(i),
                };
                ok && ready.get(i).copied().unwrap_or(false)
            })
            .map(|(i, _)| i)
            .collect();
        if *l.members != *members {
            l.members = Arc::from(members);
        }
    }
}

#[cfg(test)]
#[path = "sets_tests.rs"]
mod tests;
