//! The SQL check's wiring (`[check.sql]`, issue 14 item 1), in process against fake nodes: a REST
//! endpoint that says primary or replica, and a "database" that never speaks PostgreSQL, so every
//! SQL check of it gets no answer. What it shows: the check runs on the node's checker, after
//! every primary claim and otherwise at most once per `check.inter` (not at the failover pace);
//! with the gate, a claimant whose SQL check cannot answer is withheld; without it, shown only.
//! Against a real PostgreSQL over TLS: `tests/e2e/sql_check.rs`.

mod common;

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use common::{Cluster, Mode};

const SQL: &str = "[check]\ninter = \"1s\"\nfailover_inter = \"100ms\"\n\
                   [check.sql]\nuser = \"pp_monitor\"\npassword = \"pw\"\nsslmode = \"disable\"\n\
                   timeout = \"300ms\"\n";

fn sql_label(c: &Cluster, node: usize) -> Option<&'static str> {
    let snap = c.shared().current();
    snap.nodes[node]
        .sql
        .as_ref()
        .map(|s| s.result.verdict.label())
}

#[tokio::test]
async fn a_claimant_without_a_sql_answer_is_withheld_and_replicas_are_asked_once_per_inter() {
    // "It can withhold a primary, never create one"; "one SQL check per node per interval at
    // most, alongside the REST check" (docs/health-checking.md, "The SQL check").
    let c = Cluster::start(vec![Mode::Primary { timeline: 1 }, Mode::Replica], SQL).await;
    c.wait_for(Duration::from_secs(5), "both nodes' SQL checks", |c| {
        sql_label(c, 0) == Some("failed") && sql_label(c, 1) == Some("failed")
    })
    .await;
    let (rest0, sql0) = (
        c.nodes[0].rest.checks.load(SeqCst),
        c.nodes[0].db.accepted.load(SeqCst),
    );
    let (rest1, sql1) = (
        c.nodes[1].rest.checks.load(SeqCst),
        c.nodes[1].db.accepted.load(SeqCst),
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(c.primary(), None, "REST's claim alone routes nothing");
    let rest1 = c.nodes[1].rest.checks.load(SeqCst) - rest1;
    let sql1 = c.nodes[1].db.accepted.load(SeqCst) - sql1;
    // No primary: every node at the failover pace (100 ms), the replica's SQL check at `inter`.
    assert!(rest1 >= 10, "replica REST checks in 2.5 s: {rest1}");
    assert!(
        (1..=3).contains(&sql1),
        "replica SQL checks in 2.5 s: {sql1}"
    );
    // The claimant is asked after every claim: each cycle, bounded by its SQL timeout.
    let rest0 = c.nodes[0].rest.checks.load(SeqCst) - rest0;
    let sql0 = c.nodes[0].db.accepted.load(SeqCst) - sql0;
    assert!(
        sql0 >= 4 && sql0 <= rest0 + 1,
        "claimant: {sql0} SQL checks, {rest0} REST checks"
    );
    println!(
        "in 2.5 s: replica {rest1} REST, {sql1} SQL checks; claimant {rest0} REST, {sql0} SQL"
    );
    let stats = common::binary::get(c.stats, "/stats.json")
        .await
        .expect("stats");
    let v: serde_json::Value = serde_json::from_str(&stats.1).unwrap();
    let node0 = &v["servers"][0];
    assert_eq!(node0["last_sql"]["result"], "failed", "{node0}");
    assert_eq!(node0["signals"]["sql"], "failed");
    let metrics = common::binary::get(c.stats, "/metrics")
        .await
        .expect("metrics")
        .1;
    assert!(
        metrics
            .contains("patroni_proxy_server_sql_checks_total{server=\"node0\",result=\"failed\"}")
            && metrics.contains(
                "patroni_proxy_server_sql_checks_total{server=\"node1\",result=\"primary\"} 0"
            ),
        "{metrics}"
    );
}

#[tokio::test]
async fn without_the_gate_the_sql_check_is_shown_and_decides_nothing() {
    let c = Cluster::start(
        vec![Mode::Primary { timeline: 1 }, Mode::Replica],
        &format!("{SQL}gate = false\n"),
    )
    .await;
    c.wait_for(
        Duration::from_secs(5),
        "the SQL check of node0, and routing",
        |c| sql_label(c, 0) == Some("failed") && c.primary() == Some(0),
    )
    .await;
}

#[tokio::test]
async fn check_sql_runs_one_check_per_server_and_a_node_without_answer_is_no_config_error() {
    // `patroni-proxy check --sql`: "fail the config check loudly ... where possible"; a refused login
    // exits 64 (tests/e2e/sql_check.rs, against PostgreSQL), a node that does not answer does not.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(
        &path,
        format!(
            "{SQL}[[server]]\nname = \"a\"\naddress = \"{}\"\n",
            silent.local_addr().unwrap()
        ),
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_patroni-proxy"))
        .args(["check", "--sql", "--config"])
        .arg(&path)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("SQL check: SELECT pg_is_in_recovery() as pp_monitor")
            && stdout.contains("SQL check of a (")
            && stdout.contains("no answer (no answer within 300ms)"),
        "{stdout}"
    );
    // Without [check.sql], --sql is a configuration error.
    std::fs::write(
        &path,
        "[[server]]\nname = \"a\"\naddress = \"127.0.0.1:5432\"\n",
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_patroni-proxy"))
        .args(["check", "--sql", "--config"])
        .arg(&path)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no [check.sql]"));
}
