//! The SQL check as a routing signal, one test per rule of `state::sql` (docs/health-checking.md,
//! "The SQL check"), on the pure core. Each quotes the rule it keeps.

use std::time::{Duration, SystemTime};

use super::super::core::{Effect, Level};
use super::super::testkit::{answer, Run};
use crate::health::sql::{SqlResult, Verdict};
use crate::state::{EventKind, Input};

const SQL: &str = "[check.sql]\nuser = \"pp_monitor\"\npassword = \"pw\"\n";

/// The steps these rules take: two nodes `a` and `b`, REST answers and SQL checks 10 ms apart.
trait Sql {
    fn new(sql: &str) -> Self;
    fn rest(&mut self, node: usize, role: &str, timeline: u64) -> Vec<Effect>;
    fn sql(&mut self, node: usize, verdict: Verdict) -> Vec<Effect>;
    fn a_routed(sql: &str) -> Self;
}

impl Sql for Run {
    /// `[check.sql]` as `sql` (empty: no SQL check).
    fn new(sql: &str) -> Self {
        Run::nodes(sql, 2, |_| String::new())
    }

    fn rest(&mut self, node: usize, role: &str, timeline: u64) -> Vec<Effect> {
        let after = Duration::from_millis(10);
        self.step_check(after, node, answer(role, timeline)).0
    }

    fn sql(&mut self, node: usize, verdict: Verdict) -> Vec<Effect> {
        self.now += Duration::from_millis(10);
        let result = Box::new(SqlResult {
            verdict,
            tls: true,
            duration: Duration::from_millis(3),
            finished_at: SystemTime::now(),
        });
        self.step_input(Input::Sql { node, result })
            .expect("a SQL check is always applied")
    }

    /// `a` routed: its REST answer and a SQL check after it agree.
    fn a_routed(sql: &str) -> Self {
        let mut r = Run::new(sql);
        r.rest(0, "primary", 2);
        r.sql(0, Verdict::Primary);
        r.rest(1, "replica", 2);
        r.sql(1, Verdict::Standby);
        assert_eq!(r.snap.primary, Some(0));
        r
    }
}

fn failed() -> Verdict {
    Verdict::Failed {
        info: "Connection refused".into(),
    }
}

fn refused() -> Verdict {
    Verdict::Refused {
        info: "password authentication failed for user \"pp_monitor\" (28P01)".into(),
    }
}

/// The messages said, with their level and event kind.
fn said(effects: &[Effect]) -> Vec<(Level, Option<EventKind>, String)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Say {
                level,
                event,
                message,
                ..
            } => Some((*level, event.map(|(k, _)| k), message.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_claim_is_not_routed_until_a_sql_check_after_it_says_false() {
    // "A node whose REST answer claims the primary role is not routed until a SQL check made
    // after that claim says `false`." Issue 14: "run before a newly promoted node is routed".
    let mut r = Run::new(SQL);
    // A `false` from before the claim (a stale answer) does not count.
    r.sql(0, Verdict::Primary);
    r.rest(0, "primary", 2);
    assert_eq!(r.snap.primary, None, "REST's word alone routes nothing");
    let effects = r.sql(0, Verdict::Primary);
    assert_eq!(r.snap.primary, Some(0));
    assert!(
        said(&effects)
            .iter()
            .any(|(_, k, m)| *k == Some(EventKind::PrimaryChanged)
                && m.contains("Routed primary of postgres is now a")),
        "{effects:?}"
    );
    assert!(effects.contains(&Effect::Publish));
}

#[test]
fn in_recovery_takes_the_routed_primary_out_at_once() {
    // "`true` (in recovery) takes a routed primary out of routing at once: PostgreSQL's own
    // word, as a session's `in_hot_standby = on`." Patroni's "promoted, still in recovery" trap
    // and a stale REST answer look like this.
    let mut r = Run::a_routed(SQL);
    let effects = r.sql(0, Verdict::Standby);
    assert_eq!(r.snap.primary, None);
    let lines = said(&effects);
    assert!(
        lines.iter().any(|(l, k, m)| *l == Level::Warn
            && *k == Some(EventKind::Suspect)
            && m.contains("pg_is_in_recovery() = true")
            && m.contains("PostgreSQL's own word")),
        "{lines:?}"
    );
    // As for Patroni's own "not the leader": no new sessions; open ones are cut when another
    // takes over (none here), and every node is re-checked at the failover pace.
    assert!(!effects.iter().any(|e| matches!(e, Effect::Kill(_))));
    assert!(r.snap.failover_pace);
    assert!(effects.contains(&Effect::WakeAll { except: Some(0) }));
    // Its next REST claim does not route it back while the SQL check says true.
    r.rest(0, "primary", 2);
    assert_eq!(r.snap.primary, None);
    r.sql(0, Verdict::Primary);
    assert_eq!(r.snap.primary, Some(0));
}

#[test]
fn in_recovery_ends_a_rest_outage_ride_through_and_its_sessions() {
    // "A REST outage ride-through ends on it, its sessions cut": the ride trusts etcd's lease
    // and a TCP connect, which cannot say whether PostgreSQL is still out of recovery.
    let mut r = Run::a_routed(SQL);
    // (The ride's own entry is tested in ride_tests.rs; here it is under way.)
    r.snap.nodes[0].ride.since = Some(SystemTime::now());
    assert!(r
        .sql(0, failed())
        .iter()
        .all(|e| !matches!(e, Effect::Kill(_))));
    assert!(
        r.snap.nodes[0].ride.since.is_some(),
        "no answer ends nothing"
    );
    let effects = r.sql(0, Verdict::Standby);
    assert_eq!(r.snap.nodes[0].ride.since, None);
    assert_eq!(r.snap.primary, None);
    let publish = effects.iter().position(|e| *e == Effect::Publish);
    let kill = effects.iter().position(|e| *e == Effect::Kill(0));
    assert!(
        matches!((publish, kill), (Some(p), Some(k)) if p < k),
        "published, then cut: {effects:?}"
    );
}

#[test]
fn failures_never_unroute_the_routed_primary() {
    // "A check that gets no answer or is refused ... is shown, but never unroutes the routed
    // primary: a typo in the monitoring role's password ... must not take the database away."
    let mut r = Run::a_routed(SQL);
    let effects = r.sql(0, failed());
    assert_eq!(r.snap.primary, Some(0));
    assert!(
        said(&effects)
            .iter()
            .any(|(l, _, m)| *l == Level::Warn && m.contains("no answer (Connection refused)")),
        "{effects:?}"
    );
    let effects = r.sql(0, refused());
    assert_eq!(r.snap.primary, Some(0));
    let lines = said(&effects);
    assert!(
        lines.iter().any(|(l, _, m)| *l == Level::Error
            && m.contains("28P01")
            && m.contains("[check.sql]")),
        "{lines:?}"
    );
    // The same answer again is not said again.
    assert!(said(&r.sql(0, refused())).is_empty());
    // Its REST checks go on confirming it, with no fresh `false`: still routed.
    r.rest(0, "primary", 2);
    assert_eq!(r.snap.primary, Some(0));
}

#[test]
fn failures_withhold_a_primary_not_yet_routed() {
    // "It can withhold a primary, never create one": a claimant without a `false` after its
    // claim waits, clients are held (`hold_timeout`) rather than sent on REST's word alone.
    let mut r = Run::a_routed(SQL);
    // a is demoted, b promoted: b claims, its SQL check cannot log in.
    r.rest(0, "replica", 2);
    assert_eq!(r.snap.primary, None);
    // Two passes: its 503s as a replica marked it DOWN (`rise` 2).
    r.rest(1, "primary", 3);
    r.rest(1, "primary", 3);
    assert!(r.snap.nodes[1].counter.is_up());
    let effects = r.sql(1, refused());
    assert_eq!(r.snap.primary, None);
    assert!(
        said(&effects)
            .iter()
            .any(|(_, _, m)| m.contains("cannot confirm a primary until this is fixed")),
        "{effects:?}"
    );
    r.sql(1, failed());
    assert_eq!(r.snap.primary, None);
    r.sql(1, Verdict::Primary);
    assert_eq!(r.snap.primary, Some(1));
}

#[test]
fn a_sql_false_does_not_route_a_node_that_rest_does_not_call_primary() {
    // "It can withhold a primary, never create one": the REST claim still decides.
    let mut r = Run::new(SQL);
    r.rest(0, "replica", 2);
    r.sql(0, Verdict::Primary);
    assert_eq!(r.snap.primary, None);
}

#[test]
fn without_the_gate_the_answers_are_shown_and_decide_nothing() {
    // "With `gate = false` the answers are shown (signals, metrics, logs) and decide nothing";
    // without `[check.sql]` nothing changes at all.
    for sql in [format!("{SQL}gate = false\n"), String::new()] {
        let mut r = Run::new(&sql);
        r.rest(0, "primary", 2);
        assert_eq!(r.snap.primary, Some(0), "{sql:?}");
        let effects = r.sql(0, Verdict::Standby);
        assert_eq!(r.snap.primary, Some(0), "{sql:?}");
        assert!(effects
            .iter()
            .any(|e| matches!(e, Effect::ObserveSql { node: 0, .. })));
        assert_eq!(
            r.snap.nodes[0]
                .sql
                .as_ref()
                .map(|s| s.result.verdict.label()),
            Some("standby")
        );
    }
}
