//! The SQL check as a routing signal (issue 14 item 1), decided without IO: what PostgreSQL's
//! `pg_is_in_recovery()` does to a node's place on the primary port, with `check.sql.gate` on.
//!
//! The rule (docs/health-checking.md, "The SQL check"):
//! - a node whose REST answer claims the primary role is **not routed until a SQL check made after
//!   that claim says `false`**: it can withhold a primary, never create one (the REST claim, the
//!   timeline fence, the counter and the operator still decide as before);
//! - `true` (in recovery) **takes a routed primary out of routing** at once: PostgreSQL's own
//!   word, as a session's `in_hot_standby = on` or Patroni's "promoted, still in recovery"; a
//!   REST outage ride-through (`state::ride`) ends on it, its sessions cut: the one thing the
//!   ride could not see, whether the primary is still out of recovery, is what this says;
//! - a check that gets **no answer** (refused, timed out, 57P03) or is **refused** (password,
//!   `pg_hba.conf`, TLS: `[check.sql]` needs fixing) withholds a node not yet routed, and is
//!   shown, but **never unroutes the routed primary**: a typo in the monitoring role's password,
//!   or a `max_connections` full of clients, must not take the database away from its clients.
//!
//! With `gate = false` the answers are shown (signals, metrics, logs) and decide nothing.

use std::time::SystemTime;

use tokio::time::Instant;

use super::core::{self, say, Decision, Effect, Io, Level, Topic};
use super::{EventKind, Snapshot};
use crate::config::Config;
use crate::health::sql::{SqlResult, Verdict};
use crate::routing::Claim;

/// The last SQL check of a node, and the snapshot `seq` it was applied at: a claim confirmed at
/// `seq` N needs an answer from a SQL check applied at N or later.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub result: SqlResult,
    pub seq: u64,
}

/// Whether the SQL check lets a node with `claim` be (or stay, when `routed`) the primary.
pub fn allows(gate: bool, seen: Option<&Seen>, claim: &Claim, routed: bool) -> bool {
    let Claim::Primary { seq, .. } = claim else {
        // Not claiming: the claim keeps it out already.
        return true;
    };
    if !gate {
        return true;
    }
    match seen.map(|s| (&s.result.verdict, s.seq)) {
        Some((Verdict::Standby, _)) => false,
        Some((Verdict::Primary, at)) if at >= *seq => true,
        // No answer after the claim yet, or none at all: withheld, unless already routed.
        _ => routed,
    }
}

/// The outcome of a SQL check of `node`: recorded, said when its answer changes, and routing
/// recomputed.
pub fn on_sql(
    cfg: &Config,
    current: &Snapshot,
    io: &Io,
    node: usize,
    result: SqlResult,
    now: Instant,
    wall: SystemTime,
) -> Option<Decision> {
    let mut snap = current.clone();
    snap.seq += 1;
    let seq = snap.seq;
    let n = snap.nodes.get_mut(node)?;
    if n.removed.is_some() {
        return None;
    }
    let before = n.sql.as_ref().map(|s| s.result.verdict.clone());
    let mut effects = vec![Effect::ObserveSql {
        node,
        result: Box::new(result.clone()),
    }];
    let claims = matches!(n.claim, Claim::Primary { .. });
    let verdict = result.verdict.clone();
    n.sql = Some(Seen { result, seq });
    let routed = snap.primary == Some(node);
    let gate = cfg.sql_gate();
    // Said when the answer changes (a failure's reason too), not at every check.
    if before.as_ref() != Some(&verdict) {
        let name = &snap.nodes[node].server.name;
        let px = &cfg.listen.name;
        let said = verdict.describe();
        let (level, event, tail) = match (&verdict, claims && gate) {
            (Verdict::Standby, true) => (
                Level::Warn,
                Some((EventKind::Suspect, Some(node))),
                if routed {
                    ": in recovery although its REST answer claims the primary role; not routed \
                     (PostgreSQL's own word)"
                } else {
                    ": in recovery although its REST answer claims the primary role; not routed \
                     until the SQL check says false"
                },
            ),
            (Verdict::Refused { .. }, _) => (
                Level::Error,
                Some((EventKind::Suspect, Some(node))),
                if gate && !routed {
                    "; it cannot confirm a primary until this is fixed (a routed one stays)"
                } else {
                    ""
                },
            ),
            (Verdict::Failed { .. }, true) if !routed => (
                Level::Warn,
                None,
                "; not routed until the SQL check says false",
            ),
            (Verdict::Failed { .. }, _) => (Level::Warn, None, ""),
            _ => (Level::Info, None, ""),
        };
        effects.push(say(
            level,
            Topic::Health,
            event,
            wall,
            format!("Server {px}/{name} SQL check: {said}{tail}."),
        ));
    }
    let mut kills = Vec::new();
    if gate && verdict == Verdict::Standby && snap.nodes[node].ride.since.is_some() {
        let end = super::ride::end(
            cfg,
            &mut snap,
            node,
            "its SQL check says pg_is_in_recovery() = true",
            wall,
        );
        effects.extend(end.effects);
        kills.extend(end.kill);
    }
    core::reroute(
        cfg,
        &mut snap,
        io,
        now,
        wall,
        &format!("SQL check: {}", verdict.describe()),
        &mut effects,
        &mut kills,
    );
    core::conclude(&mut snap, kills, &mut effects, Some(node));
    Some(Decision {
        snapshot: snap,
        effects,
    })
}

#[cfg(test)]
#[path = "sql_tests.rs"]
mod tests;
