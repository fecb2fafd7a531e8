//! Fault tests against the REAL local cluster (issue 14 item 5), through the patroni-proxy binary:
//! the primary's REST API wedged by idle clients (and Patroni frozen under the wedge), etcd
//! stopped with Patroni's `failsafe_mode` off and on, the old primary back on its old timeline
//! without a rewind, and a crash and a switchover in a row with the proxy's RSS and descriptors
//! sampled. The scenario code is in `e2e/src/{faults,timeline,churn}.rs`, shared with
//! `scripts/failover-compare`, which runs the same faults beside HAProxy with the full lengths
//! (60 s outages, 20 + 20 events). Here the outages last 30 s (longer than the fast profile's
//! `ttl` of 20 s, so a lease renewed through them is one Patroni kept renewing).
//!
//! `scripts/test` runs them after `tests/e2e/`: `cargo test --locked --test faults --
//! --ignored --test-threads=1 --nocapture`. Every fault is undone by a guard however a test ends.

use patroni_proxy_e2e::{churn, faults, harness, timeline};

use std::path::PathBuf;
use std::time::Duration;

use harness::{write_json, Outcome, Proxy};

const OUTAGE: Duration = Duration::from_secs(30);

/// The binary under test: the one cargo built beside this test, or `PATRONI_PROXY_BIN` (a copy).
fn bin() -> PathBuf {
    std::env::var_os("PATRONI_PROXY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_patroni-proxy")))
}

async fn proxy() -> Proxy {
    Proxy::patroni_proxy(&bin())
        .await
        .expect("patroni-proxy starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real cluster: scripts/test starts it"]
async fn rest_wedged_by_idle_clients_cuts_nothing_while_the_lease_is_renewed() {
    let p = proxy().await;
    let (reports, rides, facts) = faults::rest_wedge(&[&p], OUTAGE, false)
        .await
        .expect("wedge scenario");
    write_json(
        "fault-rest-wedge-e2e",
        &serde_json::json!({ "reports": reports, "rides": rides, "facts": facts }),
    )
    .unwrap();
    let (r, ride) = (&reports[0], &rides[0]);
    assert!(facts.confirmed, "the REST API was not wedged: {facts:?}");
    assert!(
        facts.leader_key_kept + 1 >= facts.leader_key_readings && facts.leader_key_kept > 0,
        "Patroni did not keep its leader key through the wedge: {facts:?}"
    );
    assert!(
        ride.down_s.is_some(),
        "the wedged primary's checks never failed: {ride:?}"
    );
    assert!(ride.riding, "not ridden through at the end: {ride:?}");
    assert_eq!(ride.errors_during, 0, "{ride:?}\n{}", r.failures());
    assert!(ride.session_kept, "the long session was cut: {ride:?}");
    assert_eq!(r.session_cut_s, None, "{}", r.summary());
    assert_eq!(r.client_errors, 0, "{}\n{}", r.summary(), r.failures());
    assert_eq!(r.replica_routings, 0, "{}", r.summary());
    assert!(r.lost_writes.is_empty(), "{}", r.summary());
    assert!(facts.answered_after_release, "{facts:?}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real cluster: scripts/test starts it"]
async fn rest_wedged_then_patroni_frozen_the_lease_lapses_and_the_failover_is_followed() {
    let p = proxy().await;
    let (reports, rides, facts) = faults::rest_wedge(&[&p], OUTAGE, true)
        .await
        .expect("wedge + freeze scenario");
    write_json(
        "fault-rest-wedge-frozen-e2e",
        &serde_json::json!({ "reports": reports, "rides": rides, "facts": facts }),
    )
    .unwrap();
    let r = &reports[0];
    assert_eq!(rides[0].errors_during, 0, "{:?}", rides[0]);
    assert_ne!(r.new_primary.as_deref(), Some(r.old_primary.as_str()));
    assert_eq!(r.replica_routings, 0, "{}", r.summary());
    assert_eq!(r.two_primaries, 0, "{}", r.summary());
    let good = r
        .promotion_to_first_good_s
        .unwrap_or_else(|| panic!("never wrote to the new primary: {}", r.summary()));
    assert!(good <= 3.0, "promotion -> first good write {good:.2}s");
    // Frozen, the old primary's PostgreSQL still ran; only what it acknowledged before the
    // promotion may be missing (asynchronous replication), never a write on the new primary.
    for lost in &r.lost_writes {
        let a = r.attempt_log.iter().find(|a| a.n as i32 == *lost).unwrap();
        assert_eq!(
            a.outcome,
            Outcome::Primary {
                node: r.old_primary.clone()
            },
            "lost write #{lost}"
        );
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real cluster: scripts/test starts it"]
async fn etcd_stopped_with_failsafe_mode_the_primary_stays_and_so_does_the_routing() {
    let p = proxy().await;
    let (reports, rides, facts) = faults::etcd_stopped(&[&p], OUTAGE, true)
        .await
        .expect("etcd outage, failsafe on");
    write_json(
        "fault-etcd-stopped-failsafe-e2e",
        &serde_json::json!({ "reports": reports, "rides": rides, "facts": facts }),
    )
    .unwrap();
    let (r, ride) = (&reports[0], &rides[0]);
    assert!(
        facts.failsafe_active_s.is_some(),
        "Patroni never said failsafe_mode_is_active: {:?}",
        facts.patroni
    );
    assert_eq!(
        facts.old_primary_left_s, None,
        "the primary stepped down in failsafe mode: {:?}",
        facts.patroni
    );
    assert_eq!(ride.errors_during, 0, "{ride:?}\n{}", r.failures());
    assert!(ride.session_kept, "{ride:?}");
    assert_eq!(r.client_errors, 0, "{}\n{}", r.summary(), r.failures());
    assert_eq!(r.replica_routings, 0, "{}", r.summary());
    assert!(r.lost_writes.is_empty(), "{}", r.summary());
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real cluster: scripts/test starts it"]
async fn etcd_stopped_without_failsafe_the_primary_demotes_and_clients_are_held_not_misrouted() {
    let p = proxy().await;
    let (reports, rides, facts) = faults::etcd_stopped(&[&p], OUTAGE, false)
        .await
        .expect("etcd outage, failsafe off");
    write_json(
        "fault-etcd-stopped-e2e",
        &serde_json::json!({ "reports": reports, "rides": rides, "facts": facts }),
    )
    .unwrap();
    let r = &reports[0];
    let left = facts
        .old_primary_left_s
        .unwrap_or_else(|| panic!("the primary did not step down: {:?}", facts.patroni));
    // Patroni demotes within retry_timeout (3 s) of losing etcd, at worst by the lease's ttl.
    assert!(left <= 25.0, "stepped down {left:.1}s after etcd stopped");
    assert_eq!(r.replica_routings, 0, "{}\n{}", r.summary(), r.failures());
    assert_eq!(r.two_primaries, 0, "{}", r.summary());
    // Held clients end with the next primary or 57P03, never a bare close.
    for a in r.attempt_log.iter().filter(|a| a.patient) {
        assert!(
            matches!(&a.outcome, Outcome::Primary { .. })
                || matches!(&a.outcome, Outcome::PgError { code, .. } if code == "57P03"),
            "held client #{} ended {:?}",
            a.n,
            a.outcome
        );
    }
    assert!(facts.leader_after.is_some(), "{facts:?}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real cluster: scripts/test starts it"]
async fn old_primary_back_on_its_old_timeline_without_rewind_is_never_routed() {
    let p = proxy().await;
    let (reports, fenced, facts) = timeline::old_timeline(&[&p], Duration::from_secs(15))
        .await
        .expect("old timeline scenario");
    write_json(
        "fault-old-timeline-e2e",
        &serde_json::json!({ "reports": reports, "fenced": fenced, "facts": facts }),
    )
    .unwrap();
    let (r, f) = (&reports[0], &fenced[0]);
    assert!(
        facts.alone_primary,
        "the old node did not come up as a primary: {facts:?}"
    );
    assert!(
        facts.alone_timeline < facts.new_timeline && facts.alone_timeline.is_some(),
        "{facts:?}"
    );
    assert!(f.attempts_in_window > 0, "{f:?}");
    assert_eq!(f.routed_to_old, 0, "writes reached the old timeline: {f:?}");
    assert!(f.fence_event, "no fence warning: {f:?}");
    assert_eq!(r.replica_routings, 0, "{}", r.summary());
    assert_eq!(r.two_primaries, 0, "{}", r.summary());
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real cluster: scripts/test starts it"]
async fn a_crash_and_a_switchover_in_a_row_no_replica_no_lost_write_but_the_documented() {
    let p = proxy().await;
    let (reports, c) = churn::churn(&[&p], 1, 1).await.expect("churn");
    write_json("fault-churn-e2e", &c).unwrap();
    let t = &c.totals[0];
    println!("{t:?} in {:.0} s", c.seconds);
    assert_eq!(reports.len(), 2);
    assert_eq!(t.replica_routings, 0, "{t:?}");
    assert_eq!(t.two_primaries, 0, "{t:?}");
    assert_eq!(t.lost_other, 0, "{t:?}");
    assert_eq!(c.routed_mismatches, 0, "{:?}", c.routed);
    p.stop().await;
}
