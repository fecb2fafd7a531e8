//! The product's routing rules, one test each, on the pure core: each quotes the line of
//! `../shared/reference/haproxy-semantics.md` it keeps, or names the deliberate difference (README,
//! "How it differs from HAProxy").

use std::time::Duration;

use super::*;
use crate::health::{CheckResult, CheckStatus};
use crate::routing::AdminState;
use crate::state::events::said;
use crate::state::testkit::{result, Run};
use crate::state::{AdminOrder, EventKind, Input, Scope};

/// The steps these rules take: three nodes `a`, `b`, `c`, a check 10 ms after the last step.
trait Core {
    fn new(extra: &str) -> Self;
    fn check(&mut self, node: usize, result: CheckResult) -> (Vec<Effect>, Duration);
    fn input(&mut self, input: Input) -> Option<Vec<Effect>>;
}

impl Core for Run {
    fn new(extra: &str) -> Self {
        Run::nodes(extra, 3, |_| String::new())
    }

    fn check(&mut self, node: usize, result: CheckResult) -> (Vec<Effect>, Duration) {
        self.step_check(Duration::from_millis(10), node, result)
    }

    fn input(&mut self, input: Input) -> Option<Vec<Effect>> {
        self.step_input(input)
    }
}

fn primary(timeline: u64) -> CheckResult {
    result(CheckStatus::L7OK, Some(200), "primary", timeline)
}

fn replica() -> CheckResult {
    result(CheckStatus::L7STS, Some(503), "replica", 1)
}

fn timeout() -> CheckResult {
    result(CheckStatus::L7TOUT, None, "", 0)
}

fn order(node: usize, state: AdminState) -> Input {
    Input::Admin(AdminOrder {
        scope: Scope::Server(node),
        state,
        who: "admin@127.0.0.1 via api".into(),
    })
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

fn position(effects: &[Effect], f: impl Fn(&Effect) -> bool) -> Option<usize> {
    effects.iter().position(f)
}

#[test]
fn nothing_is_routed_before_a_check_confirms_the_primary() {
    // haproxy-semantics.md §1.4: "servers start UP ... health = rise"; the deliberate difference:
    // fail closed, nothing is routable until a check confirms the primary.
    let mut r = Run::new("");
    assert!(r.snap.nodes.iter().all(|n| n.counter.is_up()));
    assert_eq!(r.snap.primary, None);
    r.check(1, replica());
    r.check(2, timeout());
    assert_eq!(r.snap.primary, None, "a 503 or a timeout confirms nothing");
    r.check(0, primary(1));
    assert_eq!(r.snap.primary, Some(0));
}

#[test]
fn a_503_stops_new_connections_at_once_and_fall_still_decides_down() {
    // Deliberate difference: "A 503 ... stops new connections at once; `fall` still decides DOWN
    // and the session kill" (HAProxy needs fall 3, 6-9 s, before the node stops getting
    // connections; haproxy-semantics.md §1.3).
    let mut r = Run::new("");
    r.check(0, primary(1));
    let (effects, _) = r.check(0, replica());
    assert_eq!(r.snap.primary, None);
    assert!(r.snap.nodes[0].counter.is_up(), "UP 2/3: fall not reached");
    assert!(kills(&effects).is_empty(), "its sessions stay until DOWN");
    r.check(0, replica());
    let (effects, _) = r.check(0, replica());
    assert!(!r.snap.nodes[0].counter.is_up());
    assert_eq!(
        kills(&effects),
        [0],
        "on-marked-down shutdown-sessions at DOWN"
    );
}

#[test]
fn down_is_published_before_its_sessions_are_cut() {
    // haproxy-semantics.md §2.2 on-marked-down shutdown-sessions, and issue 11 item 3: the
    // snapshot that says DOWN is out before the kill, and the DOWN is said before both.
    let mut r = Run::new("");
    r.check(0, primary(1));
    r.check(0, timeout());
    r.check(0, timeout());
    let (effects, _) = r.check(0, timeout());
    let down = position(&effects, |e| {
        matches!(
            e,
            Effect::Say {
                event: Some((EventKind::Down, Some(0))),
                ..
            }
        )
    })
    .expect("the DOWN is said");
    let publish = position(&effects, |e| *e == Effect::Publish).unwrap();
    let kill = position(&effects, |e| *e == Effect::Kill(0)).unwrap();
    assert!(down < publish && publish < kill, "{effects:?}");
}

#[test]
fn on_marked_down_none_keeps_the_sessions() {
    // haproxy-semantics.md §2.2: without `on-marked-down shutdown-sessions` sessions outlive DOWN.
    let mut r = Run::new("[listen]\non_marked_down = \"none\"");
    r.check(0, primary(1));
    let mut all = Vec::new();
    for _ in 0..3 {
        all.extend(r.check(0, timeout()).0);
    }
    assert!(!r.snap.nodes[0].counter.is_up());
    assert!(kills(&all).is_empty(), "{all:?}");
}

#[test]
fn the_higher_timeline_wins_and_the_old_primarys_sessions_go() {
    // Deliberate difference: "Exactly one routed primary; if two claim it, the higher timeline
    // wins; a change of primary closes the old one's sessions" (HAProxy round-robins over both,
    // haproxy-semantics.md §2.1).
    let mut r = Run::new("");
    r.check(0, primary(1));
    let (effects, _) = r.check(1, primary(1));
    assert_eq!(
        r.snap.primary,
        Some(0),
        "the same timeline keeps the current one"
    );
    assert!(kills(&effects).is_empty());
    let (effects, _) = r.check(1, primary(2));
    assert_eq!(r.snap.primary, Some(1));
    assert_eq!(kills(&effects), [0]);
    assert_eq!(r.snap.primary_changes, 1);
}

#[test]
fn a_switchover_request_takes_the_routed_primary_out_until_it_ends() {
    // Deliberate difference: the DCS `failover` key stops new connections to the outgoing primary
    // (HAProxy keeps sending them until its checks see the demotion).
    let mut r = Run::new("");
    r.check(0, primary(1));
    let effects = r.input(Input::SwitchoverRequested).unwrap();
    assert_eq!(r.snap.primary, None);
    assert!(r.snap.failover_pace);
    assert!(effects.contains(&Effect::WakeAll { except: None }));
    r.check(0, primary(1));
    assert_eq!(
        r.snap.primary, None,
        "its own 200 does not bring it back while leaving"
    );
    r.input(Input::SwitchoverEnded).unwrap();
    assert_eq!(r.snap.primary, None, "asked again after the switchover");
    r.check(0, primary(1));
    assert_eq!(r.snap.primary, Some(0));
    assert!(r.input(Input::SwitchoverEnded).is_none(), "nothing to end");
}

#[test]
fn postgresqls_own_word_denies_a_node_until_a_check_confirms_it() {
    // Deliberate difference: a 57P0x before authentication or `in_hot_standby = on` takes the
    // node out of routing at once (issue 11 item 2: only what a client cannot provoke).
    let mut r = Run::new("");
    r.check(0, primary(1));
    let effects = r
        .input(Input::Suspect {
            node: 0,
            reason: "PostgreSQL answered 57P03".into(),
            recheck_now: false,
        })
        .unwrap();
    assert_eq!(r.snap.primary, None);
    assert!(
        effects.contains(&Effect::WakeAll { except: Some(0) }),
        "the suspect keeps its pace: re-checking it on every refusal would spin"
    );
    r.check(0, primary(1));
    assert_eq!(r.snap.primary, Some(0));
    // A re-check asked for by a session is not a state change at all.
    assert!(r
        .input(Input::Recheck {
            node: 0,
            reason: "closed before answering".into()
        })
        .is_none());
}

#[test]
fn a_leader_key_change_puts_every_primary_claim_in_doubt() {
    // Deliberate difference: the etcd watch re-checks at once; the REST check must confirm before
    // anything is routed again.
    let mut r = Run::new("");
    r.check(0, primary(1));
    r.input(Input::LeaderChanged {
        leader: Some("b".into()),
    })
    .unwrap();
    assert_eq!(r.snap.primary, None);
    r.check(1, primary(2));
    assert_eq!(r.snap.primary, Some(1));
}

#[test]
fn the_failover_pace_checks_others_fast_and_the_routed_primary_at_inter() {
    // haproxy-semantics.md §1.5 (`srv_getinter`: inter while fully UP) for the routed primary;
    // the deliberate difference: while no primary is confirmed every other node is checked every
    // `failover_inter`.
    let mut r = Run::new("");
    let (_, next) = r.check(1, replica());
    assert_eq!(next, Duration::from_millis(200), "no primary yet: fast");
    let (effects, next) = r.check(0, primary(1));
    assert_eq!(next, Duration::from_secs(3));
    assert!(!r.snap.failover_pace);
    assert!(!effects.iter().any(|e| matches!(e, Effect::WakeAll { .. })));
    let (_, next) = r.check(1, replica());
    assert_eq!(next, Duration::from_secs(3), "primary confirmed: inter");
    // The routed primary's check times out: in doubt, fast pace for the others, waking them...
    let (effects, next) = r.check(0, timeout());
    assert!(r.snap.failover_pace);
    assert!(effects.contains(&Effect::WakeAll { except: Some(0) }));
    // ...while the routed primary keeps HAProxy's pace (fastinter = inter in the seed).
    assert_eq!(next, Duration::from_secs(3));
    assert_eq!(
        r.snap.primary,
        Some(0),
        "a timeout says nothing about the role"
    );
    let (_, next) = r.check(2, replica());
    assert_eq!(next, Duration::from_millis(200));
}

#[test]
fn messages_quote_the_io_counts() {
    // haproxy-semantics.md §4.4: "Server postgres/a is DOWN, ... N sessions active, 0 requeued,
    // M remaining in queue."
    let mut r = Run::new("");
    r.check(0, primary(1));
    r.io.sessions[0] = 7;
    r.io.queued[0] = 2;
    for _ in 0..2 {
        r.check(0, timeout());
    }
    let (effects, _) = r.check(0, timeout());
    let said = effects
        .iter()
        .find_map(|e| match e {
            Effect::Say {
                event: Some((EventKind::Down, _)),
                message,
                ..
            } => Some(message.clone()),
            _ => None,
        })
        .unwrap();
    assert!(
        said.starts_with("Server postgres/a is DOWN, reason: Layer7 timeout")
            && said.ends_with("7 sessions active, 0 requeued, 2 remaining in queue."),
        "{said}"
    );
}

#[test]
fn draining_the_primary_holds_new_clients_and_keeps_its_sessions() {
    // haproxy-semantics.md §2.1: "A `DRAIN` server (weight 0) is not eligible", and §2.2: "nothing
    // happens on `drain`". The deliberate difference: a drained primary is not replaced by a
    // replica (fail closed), so new clients wait in hold exactly as in a failover.
    let mut r = Run::new("");
    r.check(0, primary(1));
    let effects = r.input(order(0, AdminState::Drain)).unwrap();
    assert_eq!(r.snap.primary, None);
    assert_eq!(r.snap.nodes[0].admin, AdminState::Drain);
    assert!(kills(&effects).is_empty(), "its sessions continue");
    assert_eq!(
        said(&effects, EventKind::PrimaryLost).len(),
        1,
        "{effects:?}"
    );
    assert!(r.snap.failover_pace, "held clients wait for a primary");
}

#[test]
fn maint_cuts_the_sessions_per_on_marked_down_after_publishing() {
    // haproxy-semantics.md §2.2: shutdown-sessions applies "when it is **forced into MAINT** from
    // the CLI or stats page"; as for a DOWN, the snapshot is published before the kill.
    let mut r = Run::new("");
    r.check(0, primary(1));
    let effects = r.input(order(0, AdminState::Maint)).unwrap();
    assert_eq!(r.snap.primary, None);
    let publish = position(&effects, |e| *e == Effect::Publish).unwrap();
    let kill = position(&effects, |e| *e == Effect::Kill(0)).unwrap();
    assert!(publish < kill, "{effects:?}");
    assert_eq!(kills(&effects), [0], "killed once");
    let mut r = Run::new("[listen]\non_marked_down = \"none\"");
    r.check(0, primary(1));
    let effects = r.input(order(0, AdminState::Maint)).unwrap();
    assert!(kills(&effects).is_empty(), "{effects:?}");
}

#[test]
fn the_admin_state_survives_checks_which_keep_running() {
    // Deliberate difference: HAProxy suspends the checks of a server in MAINT; ours go on (the
    // dashboard keeps showing its role) but no answer brings it back into routing.
    let mut r = Run::new("");
    for state in [AdminState::Drain, AdminState::Maint] {
        r.input(order(0, state)).unwrap();
        r.check(0, primary(1));
        assert_eq!(r.snap.primary, None, "{state:?}");
        assert_eq!(r.snap.nodes[0].admin, state);
        assert!(r.snap.nodes[0].last_check.is_some(), "checked in {state:?}");
    }
}

#[test]
fn ready_gives_the_node_back_to_its_latest_check() {
    // haproxy-semantics.md §1.4: "Leaving MAINT ... makes the server **UP at once**". The
    // deliberate difference: our checks went on, so routing follows the latest one at once, and a
    // node whose checks fail stays out (fail closed).
    let mut r = Run::new("");
    r.input(order(0, AdminState::Maint)).unwrap();
    r.check(0, primary(1));
    let effects = r.input(order(0, AdminState::Ready)).unwrap();
    assert_eq!(r.snap.primary, Some(0));
    assert_eq!(said(&effects, EventKind::PrimaryChanged).len(), 1);
    r.input(order(1, AdminState::Maint)).unwrap();
    r.check(1, timeout());
    r.input(order(1, AdminState::Ready)).unwrap();
    assert!(!r.snap.nodes[1].counter.is_up(), "not forced UP");
    assert_eq!(r.snap.primary, Some(0));
}

#[test]
fn every_order_is_said_with_who_gave_it() {
    // issue 15: "Every action logged with who and what, and shown on the dashboard's event list."
    let mut r = Run::new("");
    r.io.sessions[1] = 4;
    let drain = r.input(order(1, AdminState::Drain)).unwrap();
    let again = r.input(order(1, AdminState::Drain)).unwrap();
    let maint = r.input(order(1, AdminState::Maint)).unwrap();
    let ready = r.input(order(1, AdminState::Ready)).unwrap();
    let lines: Vec<String> = [drain, again, maint, ready]
        .iter()
        .flat_map(|e| said(e, EventKind::Admin))
        .collect();
    assert_eq!(
        lines,
        [
            "Server postgres/b enters drain state (admin@127.0.0.1 via api): no new sessions, 4 \
             sessions continue.",
            "Server postgres/b is already in DRAIN (admin@127.0.0.1 via api): nothing changes.",
            "Server postgres/b is going DOWN for maintenance (admin@127.0.0.1 via api). 2 active \
             and 0 backup servers left. 4 sessions active, 0 requeued, 0 remaining in queue.",
            "Server postgres/b is READY, leaving forced maintenance (admin@127.0.0.1 via api): its \
             checks decide again.",
        ]
    );
    assert_eq!(
        r.snap.nodes[1].admin_by.as_ref().map(|(w, _)| w.as_str()),
        Some("admin@127.0.0.1 via api")
    );
    assert!(
        r.input(order(9, AdminState::Drain)).is_none(),
        "no such server"
    );
}

#[test]
fn a_reload_keeps_every_state_and_the_new_timers_apply_from_the_next_check() {
    // Issue 15 item 1: "unchanged servers keep their health state and counters ... changed
    // timers apply from the next check".
    let mut r = Run::new("");
    r.check(0, primary(1));
    r.check(1, replica());
    r.input(order(2, AdminState::Drain)).unwrap();
    let before = r.snap.clone();
    assert_eq!(before.primary, Some(0));
    let previous = Arc::new(r.cfg.clone());
    r.cfg = Config::from_toml(&format!(
        "[check]\ninter = \"700ms\"\nrise = 4\nfall = 5\n{}",
        "[[server]]\nname = \"a\"\naddress = \"127.0.0.11:5432\"\n\
         [[server]]\nname = \"b\"\naddress = \"127.0.0.12:5432\"\n\
         [[server]]\nname = \"c\"\naddress = \"127.0.0.13:5432\"\n"
    ))
    .unwrap();
    let effects = r
        .input(Input::Reloaded {
            message: "Configuration reloaded".into(),
            previous,
        })
        .unwrap();
    assert_eq!(said(&effects, EventKind::Admin), ["Configuration reloaded"]);
    assert!(kills(&effects).is_empty(), "a reload cuts no session");
    assert_eq!(r.snap.primary, Some(0), "routing unchanged");
    for (old, new) in before.nodes.iter().zip(&r.snap.nodes) {
        assert_eq!(old.counter.is_up(), new.counter.is_up());
        assert_eq!(old.claim, new.claim);
        assert_eq!(old.admin, new.admin);
        assert_eq!(old.chkfail, new.chkfail);
    }
    assert_eq!(r.snap.nodes[2].admin, AdminState::Drain);
    // The primary's next check is at the new inter (the routed primary is checked at `inter`).
    let (_, next) = r.check(0, primary(1));
    assert_eq!(next, Duration::from_millis(700));
}
