//! An operator's order (`drain`, `maint`, `ready`) as a pure decision on the snapshot: the
//! administrative state kept through checks, who gave it, the re-routing and, for maint, the kill.

use std::time::SystemTime;

use tokio::time::Instant;

use super::core::{rerouted, say, Decision, Io, Level, Topic};
use super::{AdminOrder, EventKind, Scope, Snapshot};
use crate::config::{Config, OnMarkedDown};
use crate::routing::AdminState;

/// An operator's `drain`, `maint` or `ready` (HAProxy's `set server ... state`), on `snap` (the
/// current snapshot, already numbered). The state is kept through every check until the next
/// order; only `ready` gives the node back to its checks. The deliberate difference with HAProxy:
/// its checks go on in MAINT (HAProxy suspends them and, on `ready`, declares the server UP at once,
/// `haproxy-semantics.md` §1.4, routing a 503-answering replica until its next check), so on
/// `ready` routing follows the latest check at once and stays fail closed.
pub(super) fn on_admin(
    cfg: &Config,
    mut snap: Snapshot,
    io: &Io,
    order: AdminOrder,
    now: Instant,
    wall: SystemTime,
) -> Option<Decision> {
    let Scope::Server(node) = order.scope;
    let px = &cfg.listen.name;
    let name = snap.nodes.get(node)?.server.name.clone();
    let n = snap.nodes.get_mut(node)?;
    let (was, state, who) = (n.admin, order.state, order.who);
    n.admin = state;
    n.admin_by = Some((who.clone(), wall));
    let sessions = io.sessions.get(node).copied().unwrap_or(0);
    let queued = io.queued.get(node).copied().unwrap_or(0);
    let mut kills = Vec::new();
    let (level, message) = match (was, state) {
        (w, s) if w == s => (
            Level::Info,
            format!(
                "Server {px}/{name} is already in {} ({who}): nothing changes.",
                s.word()
            ),
        ),
        (_, AdminState::Maint) => {
            // haproxy-semantics.md §2.2: entering MAINT shuts the sessions down like a DOWN.
            if cfg.listen.on_marked_down == OnMarkedDown::ShutdownSessions {
                kills.push(node);
            }
            let active = snap
                .nodes
                .iter()
                .filter(|n| {
                    n.counter.is_up() && n.admin != AdminState::Maint && n.removed.is_none()
                })
                .count();
            (
                Level::Warn,
                format!(
                    "Server {px}/{name} is going DOWN for maintenance ({who}). {active} active and \
                     0 backup servers left. {sessions} sessions active, 0 requeued, {queued} \
                     remaining in queue."
                ),
            )
        }
        (_, AdminState::Drain) => (
            Level::Warn,
            format!(
                "Server {px}/{name} enters drain state ({who}): no new sessions, {sessions} \
                 sessions continue."
            ),
        ),
        (was, AdminState::Ready) => (
            Level::Info,
            format!(
                "Server {px}/{name} is READY, leaving forced {} ({who}): its checks decide again.",
                if was == AdminState::Maint {
                    "maintenance"
                } else {
                    "drain"
                }
            ),
        ),
    };
    let effects = vec![say(
        level,
        Topic::Admin,
        Some((EventKind::Admin, Some(node))),
        wall,
        message,
    )];
    let reason = format!("{} by an operator", state.word());
    Some(rerouted(
        cfg,
        snap,
        io,
        (now, wall),
        &reason,
        (effects, kills),
    ))
}
