//! The listener sets, on the pure functions: issue 13 item 1's rules for a replica listener.

use std::sync::Arc;
use std::time::SystemTime;

use super::*;
use crate::config::Config;
use crate::health::patroni::PatroniInfo;
use crate::state::{Snapshot, Unobserved};

fn snapshot(role: Role) -> Snapshot {
    let cfg = Config::from_toml(
        "[[server]]\nname = \"a\"\naddress = \"127.0.0.11:5432\"\n\
         [[server]]\nname = \"b\"\naddress = \"127.0.0.12:5432\"\n\
         [[server]]\nname = \"c\"\naddress = \"127.0.0.13:5432\"\n",
    )
    .unwrap();
    let mut snap = (*crate::state::new(Arc::new(cfg), Arc::new(Unobserved))
        .0
        .current())
    .clone();
    let rule = Rule {
        role,
        max_lag: Some(1000),
    };
    let spec = SetSpec {
        name: "replicas".into(),
        binds: vec!["127.0.0.1:5001".parse().unwrap()],
        rule,
        balance: Balance::Leastconn,
        fallback: false,
        servers: None,
    };
    snap.sets = vec![ListenerSet::new(spec, 3, 2, 3)];
    snap
}

fn body(role: &str, replayed: u64) -> PatroniInfo {
    PatroniInfo::parse(
        format!(
            r#"{{"state":"running","role":"{role}","replication_state":"streaming",
                "xlog":{{"location":{replayed},"replayed_location":{replayed}}}}}"#
        )
        .as_bytes(),
    )
    .unwrap()
}

fn check(snap: &mut Snapshot, node: usize, info: Option<PatroniInfo>) -> Vec<Effect> {
    snap.nodes[node].last_check = Some(crate::health::CheckResult {
        status: crate::health::CheckStatus::L7STS,
        code: Some(503),
        duration: std::time::Duration::ZERO,
        info: None,
        patroni: info,
        finished_at: SystemTime::now(),
    });
    let mut effects = Vec::new();
    let kills = on_check(snap, node, true, SystemTime::now(), &mut effects);
    recompute(snap);
    effects.extend(kills);
    effects
}

#[test]
fn a_replica_joins_after_its_first_good_answer_and_leaves_at_once_when_it_fails() {
    // Fail closed: not a member before a verdict. HAProxy's counter starts UP, so one good answer
    // admits it; one bad answer stops new sessions at once (as a 503 does on the primary port),
    // and `fall` bad answers mark it DOWN, which ends its sessions (on-marked-down).
    let mut snap = snapshot(Role::Replica);
    assert!(snap.sets[0].members.is_empty());
    check(&mut snap, 1, Some(body("replica", 0)));
    check(&mut snap, 2, Some(body("replica", 0)));
    assert_eq!(&*snap.sets[0].members, &[1, 2]);
    // b is promoted: out of the set at the first answer, sessions cut at the third.
    let mut effects = Vec::new();
    for _ in 0..3 {
        effects = check(&mut snap, 1, Some(body("primary", 0)));
        assert_eq!(&*snap.sets[0].members, &[2]);
    }
    assert_eq!(effects.last(), Some(&Effect::KillSet { set: 0, node: 1 }));
}

#[test]
fn the_routed_primary_is_never_a_replica_member_and_always_an_any_member() {
    let mut snap = snapshot(Role::Replica);
    check(&mut snap, 0, Some(body("replica", 0)));
    assert_eq!(&*snap.sets[0].members, &[0]);
    // The primary listener routes it (a promotion seen there first): out of the replica set now.
    snap.primary = Some(0);
    recompute(&mut snap);
    assert!(snap.sets[0].members.is_empty());
    let mut any = snapshot(Role::Any);
    any.primary = Some(2);
    recompute(&mut any);
    assert_eq!(&*any.sets[0].members, &[2]);
}

#[test]
fn a_lagging_replica_leaves_and_comes_back_when_it_catches_up() {
    // Issue 13 tests: "a replica whose replay is paused while writes go on leaves the set once
    // past max_lag and comes back after pg_wal_replay_resume()".
    let mut snap = snapshot(Role::Replica);
    snap.primary = Some(0);
    check(&mut snap, 0, Some(body("primary", 5_000)));
    assert_eq!(snap.primary_wal, Some(5_000));
    check(&mut snap, 1, Some(body("replica", 4_500)));
    assert_eq!(&*snap.sets[0].members, &[1]);
    check(&mut snap, 0, Some(body("primary", 9_000)));
    check(&mut snap, 1, Some(body("replica", 4_500)));
    assert!(snap.sets[0].members.is_empty(), "4500 bytes behind");
    match &snap.sets[0].nodes[1].verdict {
        Some(Err(why)) => assert!(why.contains("4500 bytes behind"), "{why}"),
        other => panic!("{other:?}"),
    }
    check(&mut snap, 1, Some(body("replica", 9_000)));
    assert_eq!(&*snap.sets[0].members, &[1]);
}

#[test]
fn drained_or_removed_nodes_are_not_members() {
    let mut snap = snapshot(Role::Replica);
    check(&mut snap, 1, Some(body("replica", 0)));
    check(&mut snap, 2, Some(body("replica", 0)));
    snap.nodes[1].admin = AdminState::Drain;
    snap.nodes[2].removed = Some(SystemTime::now());
    recompute(&mut snap);
    assert!(snap.sets[0].members.is_empty());
}
