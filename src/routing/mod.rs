//! Who gets new connections: the pure decision from per-node health and Patroni answers to the one
//! routed primary. HAProxy round-robins over every UP server; on a primary port that sends connections
//! to replicas during every switchover (`baseline.md`: 19-42 per switchover), so this picks exactly one.
//! The other listeners' rules are in [`roles`], their balancing in [`balance`].

pub mod balance;
pub mod roles;

use serde::Serialize;

/// What the latest definitive Patroni answer said about a node. Timeouts and connection errors do not
/// change it: they say nothing about the role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Claim {
    /// No definitive answer yet (start-up): never routable. HAProxy starts servers UP and routes to
    /// replicas until their first check fails (`haproxy-semantics.md` §5 item 4); we fail closed.
    Unconfirmed,
    /// Answered 200 with a primary body. `seq` orders confirmations across nodes.
    Primary { timeline: Option<u64>, seq: u64 },
    /// Answered "not the leader".
    Denied { reason: String },
}

/// What an operator said about a node (HAProxy's administrative state, `set server ... state`),
/// apart from what its checks say. Only `Ready` lets the checks decide; the others keep the node
/// out of routing whatever it answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// Check-driven (HAProxy's READY).
    #[default]
    Ready,
    /// No new sessions; open ones continue (HAProxy's DRAIN: weight 0).
    Drain,
    /// Treated as down: no new sessions, open ones cut per `on-marked-down` (HAProxy's MAINT).
    Maint,
}

impl AdminState {
    /// Every state, in the order of the metric's `state` label values.
    pub const ALL: [AdminState; 3] = [AdminState::Ready, AdminState::Drain, AdminState::Maint];

    /// The action word of the API and `ctl` (`ready`, `drain`, `maint`).
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }

    /// HAProxy's status word for it (`READY`, `DRAIN`, `MAINT`).
    pub fn word(self) -> &'static str {
        match self {
            AdminState::Ready => "READY",
            AdminState::Drain => "DRAIN",
            AdminState::Maint => "MAINT",
        }
    }

    pub fn parse(action: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == action)
    }
}

/// The routing-relevant view of one node.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// The rise/fall counter says UP.
    pub up: bool,
    pub claim: &'a Claim,
    pub admin: AdminState,
}

impl Candidate<'_> {
    /// Fail closed: only a node an operator left to its checks, UP and claiming the role.
    fn routable(&self) -> Option<(Option<u64>, u64)> {
        match (self.admin, self.up, self.claim) {
            (AdminState::Ready, true, Claim::Primary { timeline, seq }) => Some((*timeline, *seq)),
            _ => None,
        }
    }
}

/// Picks the routed primary. A node is routable when an operator has not drained it or put it in
/// maintenance, its counter is UP and its last definitive answer was "primary". The current choice is kept while it stays routable and nobody shows a higher
/// timeline (stability: no flapping between two claimants); otherwise the routable node with the
/// highest timeline wins, then the most recently confirmed.
pub fn choose(current: Option<usize>, nodes: &[Candidate<'_>]) -> Option<usize> {
    let best = nodes
        .iter()
        .enumerate()
        .filter_map(|(i, n)| n.routable().map(|(tl, seq)| (i, tl, seq)))
        .max_by_key(|&(_, tl, seq)| (tl, seq));
    let current_routable = current.and_then(|i| {
        nodes
            .get(i)
            .and_then(|n| n.routable())
            .map(|(tl, _)| (i, tl))
    });
    match (current_routable, best) {
        (Some((i, tl)), Some((_, best_tl, _))) if tl >= best_tl => Some(i),
        (_, best) => best.map(|(i, _, _)| i),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn primary(timeline: u64, seq: u64) -> Claim {
        Claim::Primary {
            timeline: Some(timeline),
            seq,
        }
    }

    fn denied() -> Claim {
        Claim::Denied {
            reason: "HTTP 503".into(),
        }
    }

    fn pick(current: Option<usize>, nodes: &[(bool, Claim)]) -> Option<usize> {
        let c: Vec<_> = nodes
            .iter()
            .map(|(up, claim)| Candidate {
                up: *up,
                claim,
                admin: AdminState::Ready,
            })
            .collect();
        choose(current, &c)
    }

    #[test]
    fn a_drained_or_maint_node_is_never_routed() {
        // Fail closed: whatever its checks say, an operator's drain or maint keeps it out, and the
        // next routable node takes over (or none).
        let claims = [primary(2, 1), primary(1, 2)];
        for admin in [AdminState::Drain, AdminState::Maint] {
            let c = [
                Candidate {
                    up: true,
                    claim: &claims[0],
                    admin,
                },
                Candidate {
                    up: true,
                    claim: &claims[1],
                    admin: AdminState::Ready,
                },
            ];
            assert_eq!(choose(Some(0), &c), Some(1), "{admin:?}");
            assert_eq!(choose(None, &c[..1]), None, "{admin:?}");
        }
    }

    #[test]
    fn admin_words_round_trip() {
        for s in AdminState::ALL {
            assert_eq!(AdminState::parse(s.as_str()), Some(s));
        }
        assert_eq!(AdminState::parse("DRAIN"), None);
        assert_eq!(AdminState::Maint.word(), "MAINT");
    }

    #[test]
    fn fails_closed_until_confirmed() {
        // Servers start UP (health = rise) but nothing is routed before a check confirms a primary.
        let nodes = [(true, Claim::Unconfirmed), (true, Claim::Unconfirmed)];
        assert_eq!(pick(None, &nodes), None);
    }

    #[test]
    fn a_down_or_denied_node_is_never_routed() {
        assert_eq!(
            pick(None, &[(false, primary(1, 1)), (true, denied())]),
            None
        );
        assert_eq!(
            pick(Some(0), &[(true, denied()), (true, primary(1, 2))]),
            Some(1)
        );
    }

    #[test]
    fn keeps_the_current_primary_on_equal_timeline() {
        // Two claimants on one timeline (observation skew): no alternation, stay where we are.
        let nodes = [(true, primary(4, 1)), (true, primary(4, 9))];
        assert_eq!(pick(Some(0), &nodes), Some(0));
        // With no current choice, the freshest confirmation wins.
        assert_eq!(pick(None, &nodes), Some(1));
    }

    #[test]
    fn higher_timeline_wins() {
        let nodes = [(true, primary(4, 9)), (true, primary(5, 1))];
        assert_eq!(pick(Some(0), &nodes), Some(1));
        let unknown_timeline = [
            (
                true,
                Claim::Primary {
                    timeline: None,
                    seq: 9,
                },
            ),
            (true, primary(1, 1)),
        ];
        assert_eq!(pick(None, &unknown_timeline), Some(1));
    }
}
