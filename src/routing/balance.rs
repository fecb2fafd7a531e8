//! Which member of a replica listener's set gets a new session: HAProxy's `balance leastconn` (the
//! member with the fewest sessions now, ties taken in turn) or `roundrobin` (each in turn). Pure:
//! the caller reads the session counts and keeps the turn counter.

/// HAProxy's `balance` (the configuration's).
pub use crate::config::Balance;

/// The member of `members` (node indices) for the next session; `sessions(node)` is its current
/// session count on this listener, `turn` a counter the caller moves on each pick.
pub fn pick(
    members: &[usize],
    balance: Balance,
    sessions: impl Fn(usize) -> u64,
    turn: u64,
) -> Option<usize> {
    if members.is_empty() {
        return None;
    }
    let start = (turn % members.len() as u64) as usize;
    let in_turn = members[start..].iter().chain(&members[..start]).copied();
    match balance {
        Balance::Roundrobin => in_turn.into_iter().next(),
        // `min_by_key` keeps the first of equals: the one whose turn comes first.
        Balance::Leastconn => in_turn.min_by_key(|&n| sessions(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundrobin_takes_each_member_in_turn() {
        // haproxy-semantics.md: `balance roundrobin` "each server is used in turns".
        let picks: Vec<_> = (0..4)
            .map(|t| pick(&[1, 2], Balance::Roundrobin, |_| 0, t).unwrap())
            .collect();
        assert_eq!(picks, [1, 2, 1, 2]);
    }

    #[test]
    fn leastconn_takes_the_least_loaded_and_spreads_ties() {
        // `balance leastconn`: "the server with the lowest number of connections receives the
        // connection"; equals are taken in turn, so a fresh set fills evenly.
        let load = |n: usize| if n == 1 { 5 } else { 2 };
        assert_eq!(pick(&[1, 2, 3], Balance::Leastconn, load, 0), Some(2));
        let ties: Vec<_> = (0..3)
            .map(|t| pick(&[1, 2, 3], Balance::Leastconn, |_| 0, t).unwrap())
            .collect();
        assert_eq!(ties, [1, 2, 3]);
        assert_eq!(pick(&[], Balance::Leastconn, |_| 0, 7), None);
    }
}
