//! End-to-end tests against the REAL local cluster (etcd + 3 Patroni 4.1 + PostgreSQL 15 on
//! 127.0.0.11-13), through the patroni-proxy binary on OS-chosen loopback ports: what clients see
//! during a crash of the primary, planned switchovers, Patroni killed, a hung REST API and a proxy
//! restart (issue 3 items 3-4, issue 6 "Measured on the real cluster"), and two proxy instances
//! deciding the same events (issue 15 item 5; the analysis' pure functions are tested here too,
//! without a cluster), reloads under a pgbench load (issue 15 item 1), and the SQL check over TLS
//! gating a switchover (issue 14 item 1, `tests/e2e/sql_check.rs`).
//!
//! `scripts/test` starts the cluster (`scripts/cluster up --profile fast`) and runs
//! `cargo test --locked --test e2e -- --ignored --test-threads=1 --nocapture`. Correctness is asserted
//! strictly; timings only as generous upper bounds, and printed and written to `target/e2e/*.json`.
//! The scenario and probe code is shared with `examples/failover_compare.rs` (HAProxy side by side).

use patroni_proxy_e2e::{harness, instances, outage, pictures, reloads, replicas, scenarios};

use std::path::PathBuf;
use std::time::Duration;

use harness::{write_json, Kind, Outcome, Proxy, ProxyEvent};
use scenarios::Report;

// The SQL check's scenario, two proxy instances, and the operations (reloads, the replica port,
// checks over HTTPS), in files of their own.
mod sql_check;

/// The binary under test: the one cargo built beside this test, or `PATRONI_PROXY_BIN` (a copy of
/// it, when the target directory is shared and another build may replace it during the run).
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

fn save(name: &str, reports: &[Report]) {
    let path = write_json(name, &reports).expect("write the JSON report");
    println!("{name}: {}", path.display());
}

/// Properties every scenario shares: never a replica, never two primaries at once.
fn assert_one_primary(r: &Report) {
    assert_eq!(
        r.replica_routings,
        0,
        "{}: connections reached a node in recovery:\n{}",
        r.summary(),
        r.failures()
    );
    assert_eq!(
        r.two_primaries,
        0,
        "{}: writes on the old primary after the new one took them",
        r.summary()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real cluster: scripts/test starts it"]
async fn crash_of_the_primary_no_replica_no_bare_reset_back_soon_after_promotion() {
    let p = proxy().await;
    let reports = scenarios::crash(&[&p]).await.expect("crash scenario");
    save("crash", &reports);
    let r = &reports[0];
    assert_one_primary(r);
    let cut = r.session_cut_s.expect("the long session is cut");
    assert!(cut < 5.0, "session cut {cut:.2}s after the crash");
    let promotion_to_good = r
        .promotion_to_first_good_s
        .unwrap_or_else(|| panic!("never wrote to the new primary: {}", r.summary()));
    // Issue 6 target: 0.5 s; asserted generously.
    assert!(
        promotion_to_good <= 2.0,
        "promotion -> first good write {promotion_to_good:.2}s"
    );
    // Held clients get the new primary or 57P03, never a bare close once the proxy knows.
    assert_eq!(
        r.bare_resets_after_notice,
        0,
        "{}\n{}",
        r.summary(),
        r.failures()
    );
    let noticed = r.event_at + r.noticed_s.expect("the proxy noticed the crash");
    for a in r
        .attempt_log
        .iter()
        .filter(|a| a.patient && a.start >= noticed)
    {
        let fine = match &a.outcome {
            Outcome::Primary { node } => Some(node) == r.new_primary.as_ref(),
            Outcome::PgError { code, .. } => code == "57P03",
            _ => false,
        };
        assert!(fine, "held client #{} ended {:?}", a.n, a.outcome);
    }
    assert_eq!(
        r.rejoined_as_replica,
        Some(true),
        "old primary rejoins as a replica"
    );
    // Only the documented asynchronous-replication loss: commits acknowledged by the old primary
    // just before the crash. Nothing acknowledged after the crash may be missing.
    for lost in &r.lost_writes {
        let a = r.attempt_log.iter().find(|a| a.n as i32 == *lost).unwrap();
        assert_eq!(
            a.outcome,
            Outcome::Primary {
                node: r.old_primary.clone()
            },
            "lost write #{lost} was not on the crashed primary"
        );
        assert!(
            a.end <= r.event_at + 1.0,
            "lost write #{lost} acknowledged after the crash"
        );
    }
    if !r.lost_writes.is_empty() {
        println!(
            "NOTE: {} acknowledged write(s) lost with the crashed primary (asynchronous replication): {:?}",
            r.lost_writes.len(),
            r.lost_writes
        );
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real cluster: scripts/test starts it"]
async fn three_switchovers_no_standby_no_client_error() {
    let p = proxy().await;
    let reports = scenarios::switchover(&[&p], 3).await.expect("switchovers");
    save("switchover", &reports);
    for r in &reports {
        assert_one_primary(r);
        assert_eq!(
            r.client_errors,
            0,
            "{}: client errors on a planned switchover:\n{}",
            r.summary(),
            r.failures()
        );
        assert!(r.lost_writes.is_empty(), "lost writes {:?}", r.lost_writes);
        assert_ne!(r.new_primary.as_deref(), Some(r.old_primary.as_str()));
        assert!(
            r.first_good_s.is_some(),
            "never reached the new primary: {}",
            r.summary()
        );
        // Issue 6 target: the longest wait <= 3 s; it is about Patroni's own switchover time (the
        // old primary's checkpoint and shutdown), so asserted generously and reported.
        assert!(r.longest_wait_s <= 6.0, "{}", r.summary());
        assert!(r.session_cut_s.is_some(), "the old primary's session ends");
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real cluster: scripts/test starts it"]
async fn patroni_killed_sessions_cut_when_marked_down_not_before() {
    // HAProxy's semantics, which this test keeps: `ride_through = false`. With the ride-through
    // (the default with [etcd]) a killed Patroni whose PostgreSQL still accepts is ridden until
    // its lease lapses (tests/ride_through.rs, src/state/ride_tests.rs).
    let config = format!("{}ride_through = false\n", harness::patroni_proxy_config());
    let p = Proxy::patroni_proxy_with(&bin(), "patroni-proxy", &config)
        .await
        .expect("patroni-proxy starts");
    let reports = scenarios::kill_patroni(&[&p]).await.expect("kill-patroni");
    save("kill-patroni", &reports);
    let r = &reports[0];
    assert_one_primary(r);
    let down = r.down_s.expect("marked DOWN");
    let cut = r.session_cut_s.expect("session cut");
    // The DOWN event is taken before the sessions are closed; the client sees the close after it.
    assert!(
        cut >= down,
        "session cut at {cut:.3}s, before DOWN at {down:.3}s"
    );
    assert!(
        cut <= down + 1.0,
        "session cut at {cut:.3}s, DOWN at {down:.3}s"
    );
    // fall 3: the third failed check; the first one comes at most inter (3 s) after the kill.
    let server = harness::Node::all()
        .into_iter()
        .find(|n| n.name == r.old_primary)
        .unwrap()
        .server();
    let down_events: Vec<_> = r
        .proxy_events
        .iter()
        .filter(|e| e.kind == "down" && e.at > r.event_at && e.server.as_ref() == Some(&server))
        .collect();
    assert_eq!(down_events.len(), 1, "{down_events:?}");
    assert!(down <= 3.0 + 3.0 * 3.0 + 1.0, "DOWN after {down:.2}s");
    assert!(r.session_cut.is_some(), "why the session ended is recorded");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real cluster: scripts/test starts it"]
async fn hung_rest_on_the_primary_noticed_by_timeout_check_nothing_misrouted() {
    let p = proxy().await;
    let reports = scenarios::hung_rest(&[&p], Duration::from_secs(15))
        .await
        .expect("hung REST");
    save("hung-rest", &reports);
    let r = &reports[0];
    assert_one_primary(r);
    // The first check after the freeze starts within inter (3 s) and times out after 5 s.
    let tout = r.first_timeout_s.expect("an L7TOUT check");
    assert!((5.0..=9.0).contains(&tout), "L7TOUT at {tout:.2}s");
    assert!(r.lost_writes.is_empty(), "lost writes {:?}", r.lost_writes);
    match r.down_s {
        Some(d) => println!("hung REST: marked DOWN {d:.2}s after the freeze"),
        None => println!("hung REST: not marked DOWN during the freeze"),
    }
    // With [etcd] (the harness's config) the long session survives: 15 s is less than `fall`
    // timed-out checks, and a DOWN within a live lease would be ridden through.
    assert_eq!(r.session_cut, None, "{}", r.summary());
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real cluster (and nftables): scripts/test starts it"]
async fn rest_unreachable_with_a_live_lease_cuts_nothing_then_a_switchover_acts_at_once() {
    // Issue 14 items 2 and 5: the primary's :8008 dropped for 40 s while Patroni and PostgreSQL
    // run on: 0 client errors and the long session kept (HAProxy cuts everything at fall), the
    // metric at 1; then a switchover through the DCS, the rule still in place: the new primary is
    // routed as soon as its check confirms it, the old one never again.
    let p = proxy().await;
    let (reports, rides) = outage::rest_unreachable(&[&p], Duration::from_secs(40))
        .await
        .expect("REST outage");
    save("rest-unreachable", &reports);
    harness::write_json("rest-unreachable-ride", &rides).expect("write the JSON report");
    let (r, ride) = (&reports[0], &rides[0]);
    assert_one_primary(r);
    let down = ride.down_s.expect("marked DOWN by its checks");
    assert!(down < 30.0, "DOWN after {down:.2}s");
    assert!(ride.riding, "routed through the outage: {ride:?}");
    assert_eq!(ride.metric, Some(1.0), "{ride:?}");
    assert!(ride.session_kept, "{ride:?}");
    assert!(ride.attempts_during > 100, "{ride:?}");
    assert_eq!(ride.errors_during, 0, "{ride:?}\n{}", r.failures());
    let changed = ride.leader_change_s.expect("the leader key change seen");
    assert!(
        changed < 30.0,
        "leader key changed {changed:.2}s after the request"
    );
    let good = ride
        .leader_change_to_first_good_s
        .expect("writes on the new primary");
    assert!(
        good <= 3.0,
        "first good write {good:.2}s after the leader key changed"
    );
    assert!(r.lost_writes.is_empty(), "lost writes {:?}", r.lost_writes);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real cluster: scripts/test starts it"]
async fn restarted_proxy_is_fail_closed_then_serves_the_primary() {
    let r = scenarios::restart(Kind::PatroniProxy, &bin())
        .await
        .expect("restart scenario");
    save("restart", std::slice::from_ref(&r));
    assert_one_primary(&r);
    assert_eq!(r.client_errors, 0, "{}\n{}", r.summary(), r.failures());
    let confirmed = r
        .proxy_events
        .iter()
        .find(|e| e.kind == "primary_changed")
        .map(|e| e.at)
        .expect("a primary_changed event");
    let first = &r.attempt_log[0];
    assert!(
        first.outcome.is_ok(),
        "the very first client: {:?}",
        first.outcome
    );
    for a in &r.attempt_log {
        assert!(
            a.end >= confirmed,
            "#{} served {:.3}s before the primary was confirmed",
            a.n,
            confirmed - a.end
        );
    }
    let first_good = r.first_good_s.expect("served");
    assert!(
        first_good <= 5.0,
        "first client served {first_good:.2}s after start"
    );
}

/// Issue 16: a switchover on the dashboard's pictures in a real Chromium. Screenshots at 1280 and
/// 390 px before, during and after it go to `target/screenshots/` (docs/img/ has copies for
/// docs/dashboard.md); the gap the timeline drew equals the time without a primary the proxy
/// counted, within one sample.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real cluster and Chromium: scripts/test starts the one, installs the other"]
async fn switchover_on_the_dashboard_gap_drawn_is_gap_measured() {
    let p = proxy().await;
    let dir = harness::repo().join("target/screenshots");
    let seen = pictures::switchover(&p, &dir).await.expect("the scenario");
    let path = write_json("dashboard-switchover", &seen).expect("write the JSON report");
    println!("dashboard-switchover: {}", path.display());
    assert_ne!(seen.new_primary, seen.old_primary);
    assert!(!seen.drawn_gaps.is_empty(), "no gap drawn: {seen:?}");
    let drawn = seen.drawn_gap_ms() as f64;
    println!(
        "gap drawn {drawn} ms, measured {:.0} ms, open when first shown: {}",
        seen.measured_gap_ms, seen.during_open
    );
    assert!(seen.measured_gap_ms > 0.0, "{seen:?}");
    // One sample: the sampler's resolution (in fact both come from the owner's own instants).
    assert!(
        (drawn - seen.measured_gap_ms).abs() <= 1000.0,
        "drawn {drawn} ms, measured {} ms: {seen:?}",
        seen.measured_gap_ms
    );
    for g in &seen.drawn_gaps {
        let label = g["label"].as_str().unwrap_or_default();
        assert!(label.starts_with("switchover: no primary"), "{label}");
        assert!(
            g["held"].as_u64().is_some() && g["end_ms"].is_number(),
            "{g}"
        );
    }
    assert!(seen.event_link_resolves, "the event row links to its mark");
    assert!(seen.phone_fits, "no horizontal scrolling at 390 px");
    assert_eq!(seen.screenshots.len(), 6);
    for s in &seen.screenshots {
        assert!(
            std::fs::metadata(s).is_ok_and(|m| m.len() > 1000),
            "{}",
            s.display()
        );
    }
    p.stop().await;
}

mod operations;
mod two_instances;
