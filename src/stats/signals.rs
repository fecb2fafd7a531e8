//! Which signals say a node is the primary, and whether they agree (issue 14 item 1): its REST
//! answer, etcd's leader key and lease for its Patroni member, PostgreSQL's own word at a
//! session's startup (57P0x, `in_hot_standby = on`), and the SQL check's `pg_is_in_recovery()`
//! (`[check.sql]`). Read from one snapshot, without IO, for `/stats.json` (`servers[].signals`)
//! and the dashboard's "Signals" cell.

use serde::Serialize;
use tokio::time::Instant;

use crate::health::patroni::Answer;
use crate::routing::Claim;
use crate::state::{NodeState, Snapshot};

/// What each signal says about one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Signals {
    /// The last REST check: `primary`, `not_primary`, `no_answer`, or `unchecked`.
    pub rest: &'static str,
    /// etcd, for its member: `leader_live` (holds the leader key, lease known live),
    /// `leader` (holds it, lease not read live), `not_leader`; `None` without etcd readings or
    /// without a member name.
    pub dcs: Option<&'static str>,
    /// PostgreSQL's own word from a session's startup that took it out of routing since its last
    /// primary answer (the reason), if any.
    pub postgresql: Option<String>,
    /// The last SQL check: `primary`, `standby` (`pg_is_in_recovery()` false, true), `failed`
    /// (no answer), `refused` (our login refused); `None` without `[check.sql]` or before it ran.
    pub sql: Option<&'static str>,
    /// `true`: the signals that speak say the same; `false`: they differ; `None`: fewer than two
    /// speak.
    pub agree: Option<bool>,
}

pub fn of(snap: &Snapshot, n: &NodeState, now: Instant) -> Signals {
    let rest = match &n.last_answer {
        Some(Answer::Primary { .. }) => "primary",
        Some(Answer::NotPrimary { .. }) => "not_primary",
        Some(Answer::Unknown) => "no_answer",
        None => "unchecked",
    };
    let member = n.server.member.as_ref().or(n.ride.learned.as_ref());
    let dcs = match (&snap.dcs_leader, member) {
        (Some(d), Some(m)) if d.member.as_ref() == Some(m) => {
            Some(if d.live_until.is_some_and(|t| t > now) {
                "leader_live"
            } else {
                "leader"
            })
        }
        (Some(_), Some(_)) => Some("not_leader"),
        _ => None,
    };
    // A denial while the REST check says primary came from elsewhere: a session's startup.
    let postgresql = match (&n.claim, rest) {
        (Claim::Denied { reason }, "primary") => Some(reason.clone()),
        _ => None,
    };
    let says: Vec<bool> = [
        match rest {
            "primary" => Some(true),
            "not_primary" => Some(false),
            _ => None,
        },
        dcs.map(|d| d != "not_leader"),
        postgresql.as_ref().map(|_| false),
        n.sql
            .as_ref()
            .and_then(|s| s.result.verdict.in_recovery().map(|r| !r)),
    ]
    .into_iter()
    .flatten()
    .collect();
    let agree = (says.len() >= 2).then(|| says.iter().all(|s| *s == says[0]));
    Signals {
        rest,
        dcs,
        postgresql,
        sql: n.sql.as_ref().map(|s| s.result.verdict.label()),
        agree,
    }
}

/// The dashboard cell: a word, and the detail as its title.
pub fn text(s: &Signals) -> (String, String) {
    let word = match s.agree {
        Some(true) => "agree",
        Some(false) => "differ",
        None => "\u{2014}",
    };
    let dcs = match s.dcs {
        Some("leader_live") => "holds the leader key, lease live",
        Some("leader") => "holds the leader key, lease not read live",
        Some(_) => "another member holds the leader key",
        None => "no reading (no [etcd], or member name unknown)",
    };
    let sql = match s.sql {
        Some("primary") => "pg_is_in_recovery() = false",
        Some("standby") => "pg_is_in_recovery() = true",
        Some("failed") => "no answer",
        Some(_) => "login refused: fix [check.sql]",
        None => "not run (no [check.sql])",
    };
    let title = format!(
        "REST: {}; etcd: {dcs}; PostgreSQL: {}; SQL check: {sql}",
        s.rest.replace('_', " "),
        s.postgresql.as_deref().unwrap_or("nothing said")
    );
    (word.to_string(), title)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::state::ride::DcsLeader;
    use std::sync::Arc;
    use std::time::Duration;

    fn snap(dcs: Option<&str>, live: bool) -> Snapshot {
        let cfg = Config::from_toml(
            "[[server]]\nname = \"a\"\naddress = \"127.0.0.11:5432\"\nmember = \"pg-a\"\n",
        )
        .unwrap();
        let mut s = (*crate::state::Shared::detached(Arc::new(cfg)).current()).clone();
        s.dcs_leader = dcs.map(|m| DcsLeader {
            member: Some(m.into()),
            live_until: live.then(|| Instant::now() + Duration::from_secs(20)),
        });
        s
    }

    #[test]
    fn the_rest_answer_and_etcd_are_compared_for_the_nodes_member() {
        // Issue 14 item 1: "the dashboard says which signals agree".
        let mut s = snap(Some("pg-a"), true);
        s.nodes[0].last_answer = Some(Answer::Primary { timeline: Some(3) });
        let now = Instant::now();
        let agreed = of(&s, &s.nodes[0], now);
        assert_eq!(
            (agreed.rest, agreed.dcs, agreed.agree),
            ("primary", Some("leader_live"), Some(true))
        );
        let other = snap(Some("pg-b"), true);
        let mut n = other.nodes[0].clone();
        n.last_answer = Some(Answer::Primary { timeline: Some(3) });
        assert_eq!(of(&other, &n, now).agree, Some(false));
        // PostgreSQL's own word against a primary answer: they differ.
        n.claim = Claim::Denied {
            reason: "in_hot_standby = on".into(),
        };
        let s2 = snap(None, false);
        let said = of(&s2, &n, now);
        assert_eq!((said.dcs, said.agree), (None, Some(false)));
        assert!(text(&said).1.contains("in_hot_standby"));
        // A timed-out check with etcd alone: nothing to compare.
        n.claim = Claim::Unconfirmed;
        n.last_answer = Some(Answer::Unknown);
        assert_eq!(of(&s, &n, now).agree, None);
    }

    #[test]
    fn the_sql_check_is_a_signal_of_its_own() {
        // Issue 14 item 1: the SQL check is "a routing signal like the others", and "the
        // dashboard says which ones agree".
        use crate::health::sql::{SqlResult, Verdict};
        let s = snap(None, false);
        let mut n = s.nodes[0].clone();
        n.last_answer = Some(Answer::Primary { timeline: Some(3) });
        let now = Instant::now();
        let with = |verdict: Verdict| crate::state::sql::Seen {
            result: SqlResult {
                verdict,
                tls: true,
                duration: Duration::from_millis(4),
                finished_at: std::time::SystemTime::now(),
            },
            seq: 1,
        };
        n.sql = Some(with(Verdict::Standby));
        let said = of(&s, &n, now);
        assert_eq!((said.sql, said.agree), (Some("standby"), Some(false)));
        assert!(text(&said)
            .1
            .contains("SQL check: pg_is_in_recovery() = true"));
        n.sql = Some(with(Verdict::Primary));
        assert_eq!(of(&s, &n, now).agree, Some(true));
        // A check that got no answer says nothing about the role: REST alone speaks.
        n.sql = Some(with(Verdict::Refused {
            info: "28P01".into(),
        }));
        let said = of(&s, &n, now);
        assert_eq!((said.sql, said.agree), (Some("refused"), None));
        assert!(text(&said).1.contains("fix [check.sql]"));
    }
}
