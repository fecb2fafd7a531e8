//! A reload's servers, on the pure core. Issue 15 item 1: "unchanged servers keep their health
//! state and counters, added servers start fail-closed, removed servers drain (no new sessions,
//! existing ones end by themselves or at `shutdown_grace`)".

use std::sync::Arc;
use std::time::Duration;

use super::super::core::Effect;
use super::super::events::said;
use super::super::testkit::{answer, Run};
use crate::config::Config;
use crate::routing::Claim;
use crate::state::{EventKind, Input};

const A: &str = "[[server]]\nname = \"a\"\naddress = \"127.0.0.11:5432\"\n";
const B: &str = "[[server]]\nname = \"b\"\naddress = \"127.0.0.12:5432\"\n";
const C: &str = "[[server]]\nname = \"c\"\naddress = \"127.0.0.13:5432\"\n";

/// The steps these rules take: a configuration of whole `[[server]]` tables, a check 10 ms after
/// the last step, reloads.
trait Reloads {
    fn new(servers: &str) -> Self;
    fn check(&mut self, node: usize, role: &str);
    fn input(&mut self, input: Input) -> Option<Vec<Effect>>;
    fn reload(&mut self, servers: &str) -> Vec<Effect>;
    fn routed(servers: &str) -> Self;
}

impl Reloads for Run {
    fn new(servers: &str) -> Self {
        Run::from_toml(servers)
    }

    fn check(&mut self, node: usize, role: &str) {
        self.step_check(Duration::from_millis(10), node, answer(role, 1));
    }

    fn input(&mut self, input: Input) -> Option<Vec<Effect>> {
        self.step_input(input)
    }

    fn reload(&mut self, servers: &str) -> Vec<Effect> {
        let previous = Arc::new(std::mem::replace(
            &mut self.cfg,
            Config::from_toml(servers).unwrap(),
        ));
        self.input(Input::Reloaded {
            message: "Configuration reloaded".into(),
            previous,
        })
        .expect("a reload always publishes")
    }

    /// A primary (a) and a replica (b), both UP after `rise` checks.
    fn routed(servers: &str) -> Self {
        let mut r = Self::new(servers);
        for _ in 0..2 {
            r.check(0, "primary");
            r.check(1, "replica");
        }
        assert_eq!(r.snap.primary, Some(0));
        r
    }
}

fn at(effects: &[Effect], f: impl Fn(&Effect) -> bool) -> usize {
    effects
        .iter()
        .position(f)
        .unwrap_or_else(|| panic!("missing effect in {effects:#?}"))
}

fn publish(effects: &[Effect]) -> usize {
    at(effects, |e| *e == Effect::Publish)
}

fn admin_said(effects: &[Effect]) -> Vec<String> {
    said(effects, EventKind::Admin)
}

#[test]
fn an_added_server_starts_fail_closed_and_is_checked_at_once() {
    let mut r = Run::routed(&format!("{A}{B}"));
    let effects = r.reload(&format!("{A}{B}{C}"));
    let c = &r.snap.nodes[2];
    assert_eq!(c.server.name, "c");
    assert!(c.last_check.is_none(), "INI");
    assert_eq!(c.claim, Claim::Unconfirmed);
    assert_eq!(r.snap.primary, Some(0), "routing unchanged");
    // Its IO side exists before any snapshot that has it is published; its checker after.
    let add = at(&effects, |e| {
        matches!(e, Effect::AddBackend { node: 2, .. })
    });
    let start = at(&effects, |e| *e == Effect::StartChecker(2));
    assert!(add < publish(&effects) && publish(&effects) < start);
    assert!(admin_said(&effects).iter().any(|m| m
        .contains("postgres/c (127.0.0.13:5432) added: not routed until its checks confirm it")));
    // Its checks decide from here, as for any node.
    r.check(2, "replica");
    assert!(matches!(r.snap.nodes[2].claim, Claim::Denied { .. }));
}

#[test]
fn a_removed_replica_drains_its_sessions_and_stops_being_checked() {
    let mut r = Run::routed(&format!("{A}{B}"));
    r.io.sessions[1] = 3;
    let effects = r.reload(A);
    let b = &r.snap.nodes[1];
    assert!(b.removed.is_some());
    assert!(
        !effects.iter().any(|e| matches!(e, Effect::Kill(_))),
        "no session is cut by the reload"
    );
    let stop = at(&effects, |e| *e == Effect::StopChecker(1));
    let grace = at(
        &effects,
        |e| matches!(e, Effect::GraceTimer { node: 1, after, .. } if *after == Duration::from_secs(30)),
    );
    assert!(publish(&effects) < stop && stop < grace);
    assert!(admin_said(&effects).iter().any(|m| m.contains(
        "postgres/b removed: no new sessions; its 3 sessions continue until they end, or for 30s"
    )));
    // The node keeps its slot (and counters): indices held elsewhere stay valid.
    assert_eq!(r.snap.nodes.len(), 2);
}

#[test]
fn removing_the_routed_primary_holds_new_clients_and_keeps_its_sessions() {
    let mut r = Run::routed(&format!("{A}{B}"));
    r.io.sessions[0] = 5;
    let effects = r.reload(B);
    assert_eq!(r.snap.primary, None, "a removed node is never routed");
    assert!(!effects.iter().any(|e| matches!(e, Effect::Kill(_))));
    // A check of it in flight changes nothing (the owner drops it; routing would not take it).
    r.check(0, "primary");
    assert_eq!(r.snap.primary, None);
}

#[test]
fn the_grace_timer_closes_what_is_left_unless_the_server_came_back() {
    let mut r = Run::routed(&format!("{A}{B}"));
    r.reload(A);
    let removed_at = r.snap.nodes[1].removed.unwrap();
    // Nothing left: nothing to do.
    assert!(r
        .input(Input::RemovedGraceOver {
            node: 1,
            removed_at
        })
        .is_none());
    r.io.sessions[1] = 2;
    let effects = r
        .input(Input::RemovedGraceOver {
            node: 1,
            removed_at,
        })
        .unwrap();
    assert_eq!(effects.last(), Some(&Effect::Kill(1)));
    assert!(admin_said(&effects)[0].contains("closing its 2 remaining sessions"));
    // Added back before the timer: its sessions are its own again.
    r.reload(&format!("{A}{B}"));
    assert!(r
        .input(Input::RemovedGraceOver {
            node: 1,
            removed_at
        })
        .is_none());
}

#[test]
fn the_grace_timer_closes_the_sessions_of_every_listener() {
    // A removed server's sessions on the replica, any and standby_leader listeners end with its
    // primary-port ones.
    let mut r = Run::routed(&format!("{A}{B}"));
    r.snap.sets = vec![crate::state::sets::ListenerSet::new(
        crate::state::sets::SetSpec {
            name: "ro".into(),
            binds: vec!["127.0.0.1:5001".parse().unwrap()],
            rule: crate::routing::roles::Rule {
                role: crate::config::Role::Replica,
                max_lag: None,
            },
            balance: Default::default(),
            fallback: false,
            servers: None,
        },
        2,
        2,
        3,
    )];
    r.reload(A);
    let removed_at = r.snap.nodes[1].removed.unwrap();
    let effects = r
        .input(Input::RemovedGraceOver {
            node: 1,
            removed_at,
        })
        .expect("the other listeners may hold sessions");
    assert!(effects.contains(&Effect::Kill(1)));
    assert!(effects.contains(&Effect::KillSet { set: 0, node: 1 }));
}

#[test]
fn a_server_added_back_reuses_its_slot_and_starts_fail_closed() {
    let mut r = Run::routed(&format!("{A}{B}"));
    r.reload(A);
    let effects = r.reload(&format!("{A}{B}"));
    assert_eq!(r.snap.nodes.len(), 2, "same slot, same counters");
    let b = &r.snap.nodes[1];
    assert!(b.removed.is_none() && b.last_check.is_none());
    assert_eq!(b.claim, Claim::Unconfirmed);
    assert!(effects.contains(&Effect::StartChecker(1)));
    assert!(!effects.contains(&Effect::StopChecker(1)), "it had none");
    assert!(!effects
        .iter()
        .any(|e| matches!(e, Effect::AddBackend { .. })));
}

#[test]
fn a_moved_address_starts_over_fail_closed_and_keeps_the_old_sessions() {
    let mut r = Run::routed(&format!("{A}{B}"));
    r.io.sessions[0] = 4;
    let chkdown = r.snap.nodes[0].chkdown;
    let effects = r.reload(&format!(
        "[[server]]\nname = \"a\"\naddress = \"127.0.0.14:5432\"\n{B}"
    ));
    let a = &r.snap.nodes[0];
    assert_eq!(a.server.address.to_string(), "127.0.0.14:5432");
    assert!(
        a.last_check.is_none(),
        "nothing said of the new address holds"
    );
    assert_eq!(a.claim, Claim::Unconfirmed);
    assert_eq!(a.chkdown, chkdown, "its counters go on");
    assert_eq!(
        r.snap.primary, None,
        "not routed until its checks confirm it"
    );
    assert!(!effects.iter().any(|e| matches!(e, Effect::Kill(_))));
    let stop = at(&effects, |e| *e == Effect::StopChecker(0));
    let start = at(&effects, |e| *e == Effect::StartChecker(0));
    assert!(publish(&effects) < stop && stop < start);
    assert!(admin_said(&effects).iter().any(|m| m.contains(
        "moved from 127.0.0.11:5432 to 127.0.0.14:5432; its 4 sessions to 127.0.0.11:5432 continue"
    )));
}

#[test]
fn a_new_maxconn_or_check_port_keeps_the_state() {
    let mut r = Run::routed(&format!("{A}{B}"));
    let before = r.snap.nodes[0].clone();
    let effects = r.reload(&format!(
        "[[server]]\nname = \"a\"\naddress = \"127.0.0.11:5432\"\nmaxconn = 7\ncheck_port = 8009\n{B}"
    ));
    let a = &r.snap.nodes[0];
    assert_eq!(r.snap.primary, Some(0), "still routed");
    assert_eq!(a.claim, before.claim);
    assert!(a.counter.is_up());
    let set = at(&effects, |e| {
        *e == Effect::SetMaxconn {
            node: 0,
            maxconn: 7,
        }
    });
    assert!(set < publish(&effects));
    // Checks go to the new port from now on; what the old ones said stands until `fall` fail.
    assert!(
        effects.contains(&Effect::StopChecker(0)) && effects.contains(&Effect::StartChecker(0))
    );
}

#[test]
fn a_new_check_port_restarts_every_checker_with_the_state_kept() {
    let mut r = Run::routed(&format!("{A}{B}"));
    let effects = r.reload(&format!("[check]\nport = 8009\n{A}{B}"));
    assert_eq!(r.snap.primary, Some(0));
    for i in 0..2 {
        assert!(
            effects.contains(&Effect::StopChecker(i)) && effects.contains(&Effect::StartChecker(i))
        );
    }
}

#[test]
fn the_order_of_the_sections_moves_no_node() {
    let mut r = Run::routed(&format!("{A}{B}"));
    let effects = r.reload(&format!("{B}{A}"));
    assert_eq!(r.snap.nodes[0].server.name, "a");
    assert_eq!(r.snap.primary, Some(0));
    assert!(!effects.iter().any(|e| matches!(
        e,
        Effect::StartChecker(_) | Effect::StopChecker(_) | Effect::AddBackend { .. }
    )));
}

const NAMED_A: &str = "[[server]]\nname = \"a\"\naddress = \"db1:5432\"\n";

fn resolved(node: usize, ip: &str) -> Input {
    Input::Resolved {
        node,
        ip: ip.parse().unwrap(),
    }
}

#[test]
fn a_host_name_has_no_address_until_it_resolves_and_is_never_routed_before() {
    // docs/configuration.md, Host names: "Sessions always connect to the address the node's
    // checks confirmed".
    let mut r = Run::new(&format!("{NAMED_A}{B}"));
    assert_eq!(r.snap.nodes[0].address(), None);
    assert_eq!(
        r.snap.nodes[1].address(),
        Some("127.0.0.12:5432".parse().unwrap())
    );
    let effects = r.input(resolved(0, "127.0.0.11")).expect("recorded");
    assert_eq!(
        said(&effects, EventKind::Address),
        ["Server postgres/a: host name db1 resolves to 127.0.0.11."]
    );
    assert_eq!(
        r.snap.nodes[0].address(),
        Some("127.0.0.11:5432".parse().unwrap())
    );
    // The same answer again changes nothing.
    assert_eq!(r.input(resolved(0, "127.0.0.11")), None);
    // A server written with an IP address is never re-addressed by a resolution.
    assert_eq!(r.input(resolved(1, "127.0.0.99")), None);
}

#[test]
fn a_host_name_resolving_elsewhere_starts_over_fail_closed_and_keeps_the_old_sessions() {
    // "A name that resolves to another address is another PostgreSQL: the node starts over
    // fail closed ..., its sessions to the old address continue" (as a reload's new address).
    let mut r = Run::new(&format!("{NAMED_A}{B}"));
    r.input(resolved(0, "127.0.0.11"));
    for _ in 0..2 {
        r.check(0, "primary");
        r.check(1, "replica");
    }
    assert_eq!(r.snap.primary, Some(0));
    r.io.sessions[0] = 3;
    let chkdown = r.snap.nodes[0].chkdown;
    let effects = r.input(resolved(0, "127.0.0.14")).expect("decided");
    let a = &r.snap.nodes[0];
    assert_eq!(a.address(), Some("127.0.0.14:5432".parse().unwrap()));
    assert!(
        a.last_check.is_none(),
        "nothing checked at 127.0.0.11 holds"
    );
    assert_eq!(a.claim, Claim::Unconfirmed);
    assert_eq!(a.chkdown, chkdown, "its counters go on");
    assert_eq!(
        r.snap.primary, None,
        "not routed until checks at the new address"
    );
    assert!(!effects.iter().any(|e| matches!(e, Effect::Kill(_))));
    assert!(effects.contains(&Effect::Publish));
    assert_eq!(
        said(&effects, EventKind::Address),
        [
            "Server postgres/a: host name db1 now resolves to 127.0.0.14 (was 127.0.0.11): not \
          routed until its checks at 127.0.0.14 confirm it; its 3 sessions to 127.0.0.11 continue."
        ]
    );
    // `rise` checks at the new address route it again.
    for _ in 0..2 {
        r.check(0, "primary");
    }
    assert_eq!(r.snap.primary, Some(0));
}
