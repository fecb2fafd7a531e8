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

// The SQL check's scenario, in a file of its own (`tests/e2e/`, not a test target by itself).
#[path = "e2e/sql_check.rs"]
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

// ---------------------------------------------------------------------------------------------
// Two instances (issue 15 item 5)

/// How much later than `failover_inter` the second instance may decide: the time a check takes
/// on a loaded two-core machine.
const DECISION_MARGIN: Duration = Duration::from_millis(150);

/// Two instances on 127.0.0.31 and .32, as `scripts/run --instances 2` runs them, through 3
/// planned switchovers and a crash of the primary: both route the same new primary, the second
/// decision within `failover_inter` (+ margin) of the first, never a replica and never two
/// different nodes at once. The 10 + 1 run with the REST load is `scripts/two-instances`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real cluster: scripts/test starts it"]
async fn two_instances_route_the_same_new_primary_within_failover_inter() {
    let a = Proxy::patroni_proxy_on(&bin(), "127.0.0.31", "instance-1")
        .await
        .expect("instance 1 starts");
    let b = Proxy::patroni_proxy_on(&bin(), "127.0.0.32", "instance-2")
        .await
        .expect("instance 2 starts");
    let reports = instances::events(&[&a, &b], 3, 1)
        .await
        .expect("switchovers and a crash through both");
    save("two-instances-e2e-events", &reports);
    let ags = instances::agreements(&reports);
    let figures = instances::figures(&ags);
    let path = write_json(
        "two-instances-e2e",
        &serde_json::json!({ "figures": figures, "events": ags }),
    )
    .expect("write the JSON report");
    println!("two-instances: {}\n{figures:?}", path.display());
    assert_eq!(ags.len(), 4, "3 switchovers and a crash");
    let bound = (harness::FAILOVER_INTER + DECISION_MARGIN).as_secs_f64();
    for (ag, r) in ags.iter().zip(reports.chunks(2)) {
        let what = format!("{} #{}: {ag:?}", ag.scenario, ag.iteration);
        let new = ag.new_primary.as_deref().expect("a new primary");
        let server = harness::Node::all()
            .into_iter()
            .find(|n| n.name == new)
            .expect("a known node")
            .server();
        assert_ne!(new, ag.old_primary, "{what}");
        for routed in &ag.routed_at_end {
            assert_eq!(routed.as_deref(), Some(server.as_str()), "{what}");
        }
        assert!(
            ag.decided_s.iter().all(Option::is_some),
            "an instance never routed the new primary: {what}"
        );
        let spread = ag.spread_s.expect("both decided");
        assert!(spread <= bound, "decisions {spread:.3}s apart: {what}");
        assert!(
            ag.longest_split_s == 0.0,
            "two different nodes routed at once: {what}"
        );
        assert!(
            ag.longest_disagreement_s <= bound,
            "disagreed {:.3}s: {what}",
            ag.longest_disagreement_s
        );
        for one in r {
            assert_one_primary(one);
        }
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real cluster: scripts/test starts it"]
async fn reloads_under_pgbench_fail_no_transaction_and_cut_no_session() {
    // Issue 15, "Done when": "reload under a pgbench load with `-C` and with long sessions: 0
    // failed transactions, 0 sessions cut by the reload".
    harness::restore().await.expect("the cluster is healthy");
    let leader = harness::leader().await.expect("a leader");
    let p = proxy().await;
    let r = reloads::under_load(&p, &leader, 16)
        .await
        .expect("the run completes");
    let path = write_json("reloads-under-load", &r).expect("write the JSON report");
    println!("reloads under load: {}\n{r:#?}", path.display());
    for (at, line) in p.log() {
        if !line.contains("INFO") || line.contains("reload") || line.contains("Server") {
            println!("{at:.3} {line}");
        }
    }
    assert_eq!(r.reloads.len(), 6, "{r:?}");
    assert_eq!(r.removed_status, "REMOVED", "{r:?}");
    for run in &r.pgbench {
        assert!(run.exit_ok && run.errors.is_empty(), "{run:?}");
        assert_eq!(run.failed, 0, "{run:?}");
        assert!(run.processed > 100, "{run:?}");
    }
    assert!(r.cut.is_empty(), "long sessions cut: {:?}", r.cut);
    let v = harness::stats_json(p.stats).await.expect("stats");
    assert_eq!(v["reloads"]["ok"], 6, "{v}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real cluster: scripts/test starts it"]
async fn the_replica_port_spreads_reads_follows_lag_and_never_hands_out_the_primary() {
    // Issue 13, "Real cluster": a replica listener spreads reads over both streaming replicas; a
    // replica whose replay is paused while writes go on leaves the set once past max_lag and comes
    // back after pg_wal_replay_resume(); during 5 switchovers the replica port never hands out a
    // session on the primary (fallback off) and the primary port's figures stay as today.
    harness::restore().await.expect("the cluster is healthy");
    let leader = harness::leader().await.expect("a leader");
    let p = Proxy::patroni_proxy_with(&bin(), "patroni-proxy", &replicas::config())
        .await
        .expect("patroni-proxy starts");
    let ro = replicas::replica_port(&p).expect("the replica port");
    p.wait_routes(&leader, Duration::from_secs(20))
        .await
        .expect("the primary routed");
    let spread = harness::poll(
        Duration::from_secs(20),
        Duration::from_millis(200),
        "both replicas in the set",
        || async {
            let s = replicas::spread(ro, 10).await.ok()?;
            (s.per_node.len() == 2).then_some(s)
        },
    )
    .await
    .expect("reads spread");
    println!("replica port, 10 sessions held: {spread:?}");
    assert_eq!(spread.not_in_recovery, 0, "{spread:?}");
    assert!(!spread.per_node.contains_key(&leader.name), "{spread:?}");
    assert!(
        spread.per_node.values().all(|&n| n == 5),
        "leastconn: {spread:?}"
    );

    let lag = replicas::lag(&p, &leader, ro).await.expect("the lag run");
    println!("replay paused past max_lag {}: {lag:?}", replicas::MAX_LAG);
    assert!(
        !lag.while_out.per_node.contains_key(&lag.replica),
        "{lag:?}"
    );
    assert_eq!(lag.while_out.not_in_recovery, 0, "{lag:?}");

    let reader = replicas::Reader::start(ro);
    let reports = scenarios::switchover(&[&p], 5).await.expect("switchovers");
    let (attempts, on_primary, failed) = reader.finish().await;
    println!(
        "replica port during 5 switchovers: {attempts} sessions, {on_primary} on a primary, \
         {failed} failed"
    );
    save("replica-port-switchovers", &reports);
    write_json(
        "replica-port",
        &serde_json::json!({
            "spread": spread, "lag": lag,
            "switchovers": {"attempts": attempts, "on_primary": on_primary, "failed": failed},
        }),
    )
    .expect("write the JSON report");
    assert_eq!(on_primary, 0, "the replica port handed out the primary");
    assert!(attempts > 20, "{attempts}");
    for r in &reports {
        assert_one_primary(r);
        assert_eq!(r.client_errors, 0, "{}:\n{}", r.summary(), r.failures());
        assert!(r.longest_wait_s <= 6.0, "{}", r.summary());
    }
    p.stop().await;
}

fn event(at: f64, kind: &str, server: Option<&str>) -> ProxyEvent {
    ProxyEvent {
        at,
        kind: kind.into(),
        server: server.map(str::to_string),
        message: String::new(),
    }
}

#[test]
fn timeline_follows_primary_changed_and_lost_events_only() {
    let evs = [
        event(9.0, "primary_changed", Some("x")),
        event(10.5, "suspect", Some("a")),
        event(11.0, "primary_lost", Some("a")),
        event(11.2, "down", Some("a")),
        event(11.4, "primary_changed", Some("b")),
    ];
    let t = instances::timeline(&evs, Some("a"), 10.0);
    assert_eq!(
        t,
        vec![
            (10.0, Some("a".to_string())),
            (11.0, None),
            (11.4, Some("b".to_string()))
        ]
    );
    assert_eq!(instances::routed_at(&t, 10.9), Some("a"));
    assert_eq!(instances::routed_at(&t, 11.1), None);
    assert_eq!(instances::routed_at(&t, 12.0), Some("b"));
    assert_eq!(instances::decided_at(&t, "b", 10.0), Some(11.4));
    assert_eq!(instances::decided_at(&t, "a", 10.5), Some(10.5));
    assert_eq!(instances::decided_at(&t, "c", 10.0), None);
}

#[test]
fn disagreement_is_the_longest_stretch_not_the_sum_and_split_needs_two_nodes() {
    let a = instances::timeline(
        &[
            event(11.0, "primary_lost", None),
            event(11.3, "primary_changed", Some("b")),
        ],
        Some("a"),
        10.0,
    );
    let b = instances::timeline(
        &[
            event(11.1, "primary_lost", None),
            event(11.5, "primary_changed", Some("b")),
            event(12.0, "primary_changed", Some("c")),
        ],
        Some("a"),
        10.0,
    );
    let ts = [a, b];
    // 11.0-11.1 (none vs a), 11.3-11.5 (b vs none), 12.0-13.0 (b vs c): the longest is the last.
    let d = instances::longest_disagreement(&ts, 10.0, 13.0);
    assert!((d - 1.0).abs() < 1e-9, "{d}");
    assert!((instances::longest_disagreement(&ts, 10.0, 11.9) - 0.2).abs() < 1e-9);
    // Only 12.0-13.0 routes two different nodes.
    assert!((instances::longest_split(&ts, 10.0, 13.0) - 1.0).abs() < 1e-9);
    assert_eq!(instances::longest_split(&ts, 10.0, 11.9), 0.0);
}

#[test]
fn min_median_max_and_check_counters_from_metrics() {
    assert_eq!(instances::min_median_max(&[]), None);
    assert_eq!(
        instances::min_median_max(&[3.0, 1.0, 2.0]),
        Some([1.0, 2.0, 3.0])
    );
    assert_eq!(
        instances::min_median_max(&[4.0, 1.0, 2.0, 3.0]),
        Some([1.0, 2.5, 4.0])
    );
    let text = "# TYPE patroni_proxy_server_checks_total counter\n\
        patroni_proxy_server_checks_total{server=\"s1\",result=\"L7OK\"} 10\n\
        patroni_proxy_server_checks_total{server=\"s1\",result=\"L4CON\"} 2\n\
        patroni_proxy_server_checks_total{server=\"s2\",result=\"L7STS\"} 7\n\
        patroni_proxy_server_check_failures_total{server=\"s1\"} 99\n";
    let c = instances::parse_checks(text);
    assert_eq!(c.get("s1"), Some(&12));
    assert_eq!(c.get("s2"), Some(&7));
    assert_eq!(c.len(), 2);
}

/// The e2e proxy's config, checking over HTTPS with the test CA (and, with `client`, the client
/// certificate the cluster's `verify_client: required` asks for).
fn tls_config(client: bool) -> String {
    let dir = harness::rest_tls_dir();
    let mut check = format!("ssl = true\nca_file = {:?}\n", dir.join("ca.crt"));
    if client {
        check += &format!(
            "crt = {:?}\nkey = {:?}\n",
            dir.join("client.crt"),
            dir.join("client.key")
        );
    }
    harness::patroni_proxy_config_with("127.0.0.1", &check)
}

/// With the REST APIs on HTTPS: a proxy with `check.ssl`, the CA and a client certificate finds
/// the primary and routes a real connection to it; one without the client certificate fails its
/// checks with `L6RSP` naming it, and routes nothing.
async fn checks_over_https() -> anyhow::Result<()> {
    use harness::{leader, poll, stats_json};
    let leader = leader().await.ok_or_else(|| anyhow::anyhow!("no leader"))?;
    harness::create_probe_table(&leader).await?;
    let p = Proxy::patroni_proxy_with(&bin(), "https", &tls_config(true)).await?;
    p.wait_settled(&leader, Duration::from_secs(30)).await?;
    p.wait_routes(&leader, Duration::from_secs(30)).await?;
    let stats = stats_json(p.stats).await?;
    let servers = stats["servers"].as_array().cloned().unwrap_or_default();
    let primary = servers
        .iter()
        .find(|s| s["name"] == leader.server().as_str())
        .ok_or_else(|| anyhow::anyhow!("{} not in /stats.json", leader.server()))?;
    anyhow::ensure!(
        primary["last_check"]["status"] == "L7OK",
        "primary's last check: {}",
        primary["last_check"]
    );
    p.stop().await;

    let refused =
        Proxy::patroni_proxy_with(&bin(), "https-no-client-cert", &tls_config(false)).await?;
    let why = poll(
        Duration::from_secs(15),
        Duration::from_millis(200),
        "an L6RSP check",
        || async {
            let stats = stats_json(refused.stats).await.ok()?;
            let servers = stats["servers"].as_array()?.clone();
            servers.iter().find_map(|s| {
                (s["last_check"]["status"] == "L6RSP")
                    .then(|| s["last_check"]["info"].as_str().unwrap_or("").to_string())
            })
        },
    )
    .await?;
    anyhow::ensure!(why.contains("client certificate"), "L6RSP info: {why}");
    println!("without a client certificate: L6RSP, {why}");
    refused.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real cluster: scripts/test starts it"]
async fn checks_over_https_find_the_primary_and_route_through_it() {
    // Issue 13 item 2: Patroni's REST API over HTTPS is checked with `check-ssl`. The switch only
    // reloads Patroni; the cluster is put back on plain HTTP whatever the test's outcome, so the
    // next e2e test finds it as `scripts/test` left it.
    let t = std::time::Instant::now();
    harness::cluster(&["up", "--profile", "fast", "--tls"])
        .await
        .expect("REST APIs on HTTPS");
    let to_tls = t.elapsed();
    let outcome = tokio::spawn(checks_over_https()).await;
    let t = std::time::Instant::now();
    harness::cluster(&["up", "--profile", "fast"])
        .await
        .expect("REST APIs back on plain HTTP");
    println!(
        "REST over HTTPS in {:.1}s, back to plain HTTP in {:.1}s",
        to_tls.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
    match outcome {
        Ok(r) => r.expect("checks over HTTPS"),
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}
