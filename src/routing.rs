//! Who gets new connections: the pure decision from per-node health and Patroni answers to the one
//! routed primary. HAProxy round-robins over every UP server; on a primary port that sends connections
//! to replicas during every switchover (`baseline.md`: 19-42 per switchover), so this picks exactly one.

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

/// The routing-relevant view of one node.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// The rise/fall counter says UP.
    pub up: bool,
    pub claim: &'a Claim,
}

impl Candidate<'_> {
    fn routable(&self) -> Option<(Option<u64>, u64)> {
        match (self.up, self.claim) {
            (true, Claim::Primary { timeline, seq }) => Some((*timeline, *seq)),
            _ => None,
        }
    }
}

/// Picks the routed primary. A node is routable when its counter is UP and its last definitive answer
/// was "primary". The current choice is kept while it stays routable and nobody shows a higher
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
            .map(|(up, claim)| Candidate { up: *up, claim })
            .collect();
        choose(current, &c)
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
