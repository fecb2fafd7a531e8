//! The REST outage ride-through and timeline fencing, one test per rule, on the pure core. Each
//! quotes the rule (docs/health-checking.md, "REST outage ride-through" and "Timeline fencing").

use std::time::{Duration, SystemTime};

use super::super::core::Effect;
use super::super::events::said;
use super::super::testkit::Run;
use crate::dcs::{LeaderLease, Lease};
use crate::health::patroni::PatroniInfo;
use crate::health::{CheckResult, CheckStatus};
use crate::state::{EventKind, Input};

const ETCD: &str = "[etcd]\nendpoints = [\"127.0.0.1:2379\"]\nscope = \"postgres\"\n";

/// The steps these rules take: three nodes `a`, `b`, `c` (Patroni members `pg-a`, ... through
/// `member` or their answers), a check every 3 s (the seed's `inter`).
trait Ride {
    fn new(extra: &str, members: bool) -> Self;
    fn check(&mut self, node: usize, result: CheckResult) -> Vec<Effect>;
    fn input(&mut self, input: Input) -> Vec<Effect>;
    fn with_primary_a(&mut self, tl: u64);
    fn lease(&mut self, leader: &str, lease: Lease) -> Vec<Effect>;
    fn fail_a(&mut self, status: CheckStatus, accepted: bool) -> Vec<Effect>;
}

impl Ride for Run {
    fn new(extra: &str, members: bool) -> Self {
        let names = ["pg-a", "pg-b", "pg-c"];
        Run::nodes(extra, 3, |i| {
            if members {
                format!("member = \"{}\"\n", names[i])
            } else {
                String::new()
            }
        })
    }

    fn check(&mut self, node: usize, result: CheckResult) -> Vec<Effect> {
        self.step_check(Duration::from_secs(3), node, result).0
    }

    fn input(&mut self, input: Input) -> Vec<Effect> {
        self.step_input(input).unwrap_or_default()
    }

    /// `a` the routed primary on timeline `tl`, `b` and `c` replicas.
    fn with_primary_a(&mut self, tl: u64) {
        for _ in 0..2 {
            self.check(0, primary(tl, "pg-a"));
            self.check(1, replica());
            self.check(2, replica());
        }
        assert_eq!(self.snap.primary, Some(0));
    }

    fn lease(&mut self, leader: &str, lease: Lease) -> Vec<Effect> {
        self.input(Input::LeaderLease(LeaderLease {
            leader: leader.into(),
            lease,
        }))
    }

    /// A failed check of `a` with `status`, its probe (if one is asked for) answered `accepted`.
    fn fail_a(&mut self, status: CheckStatus, accepted: bool) -> Vec<Effect> {
        let mut effects = self.check(0, unanswered(status));
        if effects.contains(&Effect::Probe(0)) {
            effects.extend(self.input(Input::PgProbe { node: 0, accepted }));
        }
        effects
    }
}

fn live() -> Lease {
    Lease::Live {
        id: 7,
        remaining: Duration::from_secs(28),
        granted: Duration::from_secs(30),
    }
}

fn body(role: &str, tl: u64, member: &str) -> PatroniInfo {
    PatroniInfo {
        role: Some(role.into()),
        state: Some("running".into()),
        timeline: Some(tl),
        member: Some(member.into()),
        ..Default::default()
    }
}

fn answered(status: CheckStatus, code: u16, info: PatroniInfo) -> CheckResult {
    CheckResult {
        status,
        code: Some(code),
        duration: Duration::from_millis(2),
        info: None,
        patroni: Some(info),
        finished_at: SystemTime::now(),
    }
}

fn primary(tl: u64, member: &str) -> CheckResult {
    answered(CheckStatus::L7OK, 200, body("primary", tl, member))
}

fn replica() -> CheckResult {
    answered(CheckStatus::L7STS, 503, body("replica", 1, "pg-x"))
}

fn unanswered(status: CheckStatus) -> CheckResult {
    CheckResult {
        status,
        code: None,
        duration: Duration::from_secs(5),
        info: None,
        patroni: None,
        finished_at: SystemTime::now(),
    }
}

fn kills(effects: &[Effect]) -> Vec<usize> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Kill(n) => Some(*n),
            _ => None,
        })
        .collect()
}

fn riding(run: &Run) -> bool {
    run.snap.nodes[0].ride.since.is_some()
}

/// `a` routed, etcd says `pg-a` leads with a live lease, then its REST API stops answering for
/// `fall` (3) checks while its PostgreSQL port accepts connections. Returns every effect.
fn ride_started(run: &mut Run, status: CheckStatus) -> Vec<Effect> {
    run.with_primary_a(3);
    run.lease("pg-a", live());
    let mut all = Vec::new();
    for _ in 0..3 {
        all.extend(run.fail_a(status, true));
    }
    all
}

#[test]
fn rest_unreachable_with_a_live_lease_and_postgresql_up_keeps_routing_and_sessions() {
    // "While the routed primary's REST checks time out or are refused and etcd shows the same
    // member holding the leader key with a live lease and its PostgreSQL port accepts
    // connections, keep routing to it and keep its sessions; keep checking."
    for status in [
        CheckStatus::L7TOUT,
        CheckStatus::L4TOUT,
        CheckStatus::L4CON,
        CheckStatus::SOCKERR,
    ] {
        // The member name from the node's own answer (`patroni.name`) is enough.
        let mut run = Run::new(ETCD, false);
        let effects = ride_started(&mut run, status);
        assert!(!run.snap.nodes[0].counter.is_up(), "DOWN by its checks");
        assert_eq!(run.snap.primary, Some(0), "{status:?}: still routed");
        assert!(kills(&effects).is_empty(), "{status:?}: no session cut");
        assert!(riding(&run));
        let started = said(&effects, EventKind::RideThrough);
        assert_eq!(started.len(), 1, "{started:?}");
        assert!(started[0].contains("unreachable"), "{started:?}");
        assert!(started[0].contains(status.as_str()), "{started:?}");
        // It stays so through more failed checks, each probing PostgreSQL again.
        for _ in 0..5 {
            let more = run.check(0, unanswered(status));
            assert!(more.contains(&Effect::Probe(0)));
            run.input(Input::PgProbe {
                node: 0,
                accepted: true,
            });
            run.lease("pg-a", live());
            assert!(kills(&more).is_empty());
            assert_eq!(run.snap.primary, Some(0));
        }
        // Not a doubt: the replicas are checked at their normal pace, not the failover pace.
        assert!(!run.snap.failover_pace);
    }
}

#[test]
fn a_lapsed_lease_ends_the_ride_at_once_with_its_sessions() {
    // "The moment the lease lapses, act at once as today": unrouted and its sessions cut (the
    // DOWN was already counted), without waiting for another check.
    let mut run = Run::new(ETCD, true);
    ride_started(&mut run, CheckStatus::L7TOUT);
    let effects = run.lease("pg-a", Lease::Lapsed { id: 7 });
    assert_eq!(run.snap.primary, None);
    assert!(!riding(&run));
    assert_eq!(kills(&effects), [0]);
    let publish = effects.iter().position(|e| *e == Effect::Publish).unwrap();
    let kill = effects.iter().position(|e| *e == Effect::Kill(0)).unwrap();
    assert!(publish < kill, "published before the sessions are cut");
    assert!(said(&effects, EventKind::RideThrough)[0].contains("lease"));
    // Another holder in a reading ends it likewise.
    let mut run = Run::new(ETCD, true);
    ride_started(&mut run, CheckStatus::L7TOUT);
    assert_eq!(kills(&run.lease("pg-b", live())), [0]);
    assert_eq!(run.snap.primary, None);
}

#[test]
fn a_leader_key_change_ends_the_ride_at_once_with_its_sessions() {
    // "The moment the leader key changes owner, act at once": faster than `fall`.
    let mut run = Run::new(ETCD, true);
    ride_started(&mut run, CheckStatus::L7TOUT);
    let effects = run.input(Input::LeaderChanged {
        leader: Some("pg-b".into()),
    });
    assert_eq!(kills(&effects), [0]);
    assert_eq!(run.snap.primary, None);
    assert!(!riding(&run));
    let deleted = {
        let mut run = Run::new(ETCD, true);
        ride_started(&mut run, CheckStatus::L7TOUT);
        run.input(Input::LeaderChanged { leader: None })
    };
    assert_eq!(kills(&deleted), [0]);
}

#[test]
fn a_lease_not_renewed_in_etcd_ends_the_ride_when_its_known_life_runs_out() {
    // A reading vouches for `remaining` seconds only: without a newer one (etcd unreachable),
    // the ride ends at the first check after that, and the DOWN's kill follows.
    let mut run = Run::new(ETCD, true);
    ride_started(&mut run, CheckStatus::L7TOUT);
    let mut cut = Vec::new();
    for _ in 0..12 {
        cut.extend(kills(&run.fail_a(CheckStatus::L7TOUT, true)));
        if !riding(&run) {
            break;
        }
    }
    assert_eq!(cut, [0]);
    assert_eq!(run.snap.primary, None);
}

#[test]
fn a_refused_postgresql_port_ends_the_ride_or_prevents_it() {
    // "... and a TCP connect to its PostgreSQL port still succeeds."
    let mut run = Run::new(ETCD, true);
    ride_started(&mut run, CheckStatus::L7TOUT);
    run.check(0, unanswered(CheckStatus::L7TOUT));
    let effects = run.input(Input::PgProbe {
        node: 0,
        accepted: false,
    });
    assert_eq!(kills(&effects), [0]);
    assert_eq!(run.snap.primary, None);
    // Refused from the start: today's DOWN, with its kill.
    let mut run = Run::new(ETCD, true);
    run.with_primary_a(3);
    run.lease("pg-a", live());
    let effects: Vec<Effect> = (0..3)
        .flat_map(|_| run.fail_a(CheckStatus::L7TOUT, false))
        .collect();
    assert_eq!(kills(&effects), [0]);
    assert!(!riding(&run));
}

#[test]
fn patronis_own_word_is_todays_behaviour_and_ends_a_ride() {
    // "NOT a 503 or a non-primary body, which are Patroni's own word": unrouted at once, sessions
    // cut at `fall` as without etcd.
    let mut run = Run::new(ETCD, true);
    run.with_primary_a(3);
    run.lease("pg-a", live());
    let first = run.check(0, replica());
    assert_eq!(
        run.snap.primary, None,
        "a 503 stops new connections at once"
    );
    assert!(kills(&first).is_empty());
    assert!(!first.contains(&Effect::Probe(0)));
    run.check(0, replica());
    let third = run.check(0, replica());
    assert_eq!(kills(&third), [0], "DOWN at fall, sessions cut");
    assert!(said(&third, EventKind::RideThrough).is_empty());
    // A 503 during a ride: the ride ends with the DOWN's kill.
    let mut run = Run::new(ETCD, true);
    ride_started(&mut run, CheckStatus::L7TOUT);
    let effects = run.check(0, replica());
    assert_eq!(kills(&effects), [0]);
    assert_eq!(run.snap.primary, None);
    assert!(said(&effects, EventKind::RideThrough)[0].contains("L7STS"));
}

#[test]
fn without_etcd_or_a_member_name_or_with_it_off_the_cut_is_haproxys() {
    // "Without etcd: exactly today's HAProxy behaviour": DOWN after `fall`, sessions cut.
    let off = format!("{ETCD}ride_through = false\n");
    for (extra, members) in [("", true), (ETCD, false), (off.as_str(), true)] {
        let mut run = Run::new(extra, members);
        for _ in 0..2 {
            // Answers without `patroni.name`: no learned member either.
            let mut p = primary(3, "");
            p.patroni.as_mut().unwrap().member = None;
            run.check(0, p);
            run.check(1, replica());
        }
        assert_eq!(run.snap.primary, Some(0));
        run.lease("pg-a", live());
        let effects: Vec<Effect> = (0..3)
            .flat_map(|_| run.fail_a(CheckStatus::L7TOUT, true))
            .collect();
        assert_eq!(kills(&effects), [0], "{extra:?} members {members}");
        assert_eq!(run.snap.primary, None);
        assert!(!riding(&run));
        if extra.is_empty() {
            assert!(
                !effects.contains(&Effect::Probe(0)),
                "no probe without etcd"
            );
        }
    }
}

#[test]
fn the_rest_api_answering_again_ends_the_ride_quietly() {
    // The checks bring it UP (`rise`): the ride is over and nothing was cut.
    let mut run = Run::new(ETCD, true);
    ride_started(&mut run, CheckStatus::L7TOUT);
    let mut effects = run.check(0, primary(3, "pg-a"));
    assert!(riding(&run), "rising: still riding");
    effects.extend(run.check(0, primary(3, "pg-a")));
    assert!(!riding(&run));
    assert!(run.snap.nodes[0].counter.is_up());
    assert_eq!(run.snap.primary, Some(0));
    assert!(kills(&effects).is_empty());
    assert!(said(&effects, EventKind::RideThrough)[0].contains("answers again"));
}

#[test]
fn a_node_claiming_primary_on_a_lower_timeline_is_never_routed_until_it_reports_the_higher() {
    // Issue 14 item 1: "a node whose timeline is lower than the highest timeline seen from a
    // routable primary is never routed again until it reports the higher one".
    let mut run = Run::new("", true);
    run.with_primary_a(4);
    assert_eq!(run.snap.max_timeline, Some(4));
    // `b` is promoted (timeline 5); `a` is demoted and goes away.
    run.check(1, primary(5, "pg-b"));
    run.check(1, primary(5, "pg-b"));
    assert_eq!(run.snap.primary, Some(1));
    run.check(0, unanswered(CheckStatus::L4CON));
    assert_eq!(run.snap.max_timeline, Some(5));
    // `b` fails over to `c` (timeline 6) and `a` comes back claiming the role on timeline 4
    // without a rewind: `c` wins on its timeline; once `c` is gone, `a` still is not routed.
    run.check(2, primary(6, "pg-c"));
    run.check(2, primary(6, "pg-c"));
    assert_eq!(run.snap.primary, Some(2));
    let fenced = run.check(0, primary(4, "pg-a"));
    let lines = said(&fenced, EventKind::Suspect);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("timeline 4, below timeline 6"),
        "{lines:?}"
    );
    for _ in 0..3 {
        run.check(1, replica());
        run.check(2, replica());
    }
    let again = run.check(0, primary(4, "pg-a"));
    assert!(said(&again, EventKind::Suspect).is_empty(), "said once");
    assert_eq!(
        run.snap.primary, None,
        "fenced: no primary rather than a diverged one"
    );
    // Once it reports timeline 6 or higher it is routable again.
    run.check(0, primary(7, "pg-a"));
    assert_eq!(run.snap.primary, Some(0));
    assert_eq!(run.snap.max_timeline, Some(7));
    // A body without a timeline cannot be compared and is not fenced.
    assert!(!crate::state::fence::fenced(
        &crate::routing::Claim::Primary {
            timeline: None,
            seq: 1
        },
        Some(7)
    ));
}
