//! Operations on the real cluster: reloads under a pgbench load (issue 15 item 1), the replica
//! port (issue 13), and checks over HTTPS with client certificates (issue 13 item 2).

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real cluster: scripts/test starts it"]
async fn reloads_under_pgbench_fail_no_transaction_and_cut_no_session() {
    // Issue 15, "Done when": "reload under a pgbench load with `-C` and with long sessions: 0
    // failed transactions, 0 sessions cut by the reload".
    // Patroni may demote the primary by itself during the run: on this loaded two-core machine the
    // one etcd has taken over a second to answer a read, and Patroni then logs "demoting self
    // because DCS is not accessible" and shuts PostgreSQL down, which cuts sessions for a reason
    // that is not the reloads'. Such a run (the proxy lost its primary during it) is void and runs
    // once more; a second one in a row fails the test.
    let mut tries = 0;
    let (p, r) = loop {
        tries += 1;
        harness::restore().await.expect("the cluster is healthy");
        let leader = harness::leader().await.expect("a leader");
        let p = proxy().await;
        p.wait_routes(&leader, Duration::from_secs(20))
            .await
            .expect("the leader routed");
        // Time without a routed primary, in all: it grows only if the primary is lost.
        let without = || async {
            let v = harness::stats_json(p.stats).await.expect("stats");
            v["no_primary_total_s"]
                .as_f64()
                .expect("no_primary_total_s")
        };
        let before = without().await;
        let r = reloads::under_load(&p, &leader, 16)
            .await
            .expect("the run completes");
        let after = without().await;
        if after == before || tries == 2 {
            break (p, r);
        }
        println!("the proxy had no primary for {:.2} s during the run (Patroni's log says why): once more", after - before);
        p.stop().await;
    };
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
