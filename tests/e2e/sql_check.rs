//! The SQL check (`[check.sql]`, issue 14 item 1) on the real cluster, with PostgreSQL offering
//! TLS (`scripts/cluster up --pg-tls`, put back without it whatever the outcome) and the
//! monitoring role `scripts/cluster up` makes (`pp_monitor`): in process, `health::sql::run`
//! against each node (over verified TLS, plain, a wrong password, a wrong CA, a closed port); then
//! through the binary, each server's `last_sql` and signals, and a switchover under the gate.

use std::net::SocketAddr;
use std::time::Duration;

use patroni_proxy::config::Config;
use patroni_proxy::health::sql;
use patroni_proxy_e2e::{harness, scenarios};

use super::{assert_one_primary, bin, save};
use harness::{leader, poll, stats_json, Node, Proxy};

const ROLE: &str = "user = \"pp_monitor\"\npassword = \"pp-monitor-pass\"\n";

/// `[check.sql]` with `extra`, verified against the cluster's CA by default.
fn sql_keys(extra: &str) -> String {
    let ca = harness::rest_tls_dir().join("ca.crt");
    if extra.contains("sslmode") || extra.contains("ca_file") {
        format!("[check.sql]\n{ROLE}{extra}\n")
    } else {
        format!("[check.sql]\n{ROLE}sslmode = \"require\"\nca_file = {ca:?}\n{extra}\n")
    }
}

async fn ask(keys: &str, address: SocketAddr) -> sql::SqlResult {
    let text = format!("{keys}[[server]]\nname = \"a\"\naddress = \"127.0.0.11:5432\"\n");
    let cfg = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    sql::run(address, cfg.sql_check().expect("[check.sql]"))
        .await
        .expect("no local shortage")
}

fn pg(n: &Node) -> SocketAddr {
    format!("{}:5432", n.ip).parse().unwrap()
}

async fn in_process(leader: &Node) -> anyhow::Result<()> {
    for n in Node::all() {
        let r = ask(&sql_keys(""), pg(&n)).await;
        let want = if &n == leader { "primary" } else { "standby" };
        println!(
            "SQL check of {} over verified TLS: {} in {} ms",
            n.name,
            r.verdict.describe(),
            r.duration.as_millis()
        );
        anyhow::ensure!(
            r.verdict.label() == want && r.tls,
            "{}: {:?}, want {want} over TLS",
            n.name,
            r
        );
    }
    let plain = ask(&sql_keys("sslmode = \"disable\""), pg(leader)).await;
    anyhow::ensure!(
        plain.verdict == sql::Verdict::Primary && !plain.tls,
        "{plain:?}"
    );
    let wrong = ask(
        "[check.sql]\nuser = \"pp_monitor\"\npassword = \"not-the-password\"\n",
        pg(leader),
    )
    .await;
    anyhow::ensure!(
        matches!(&wrong.verdict, sql::Verdict::Refused { info } if info.contains("28P01")),
        "a wrong password: {wrong:?}"
    );
    let dir = tempfile::tempdir()?;
    let other_ca = dir.path().join("other-ca.crt");
    let cert = rcgen::generate_simple_self_signed(vec!["elsewhere".to_string()])?;
    std::fs::write(&other_ca, cert.cert.pem())?;
    let untrusted = ask(
        &sql_keys(&format!("sslmode = \"require\"\nca_file = {other_ca:?}")),
        pg(leader),
    )
    .await;
    anyhow::ensure!(
        matches!(&untrusted.verdict, sql::Verdict::Refused { info } if info.contains("check.sql.ca_file")),
        "a certificate from another CA: {untrusted:?}"
    );
    let closed = ask(&sql_keys(""), format!("{}:1", leader.ip).parse()?).await;
    anyhow::ensure!(
        matches!(&closed.verdict, sql::Verdict::Failed { .. }),
        "{closed:?}"
    );
    // `patroni-proxy check --sql`: a wrong password fails the configuration check (exit 64).
    for (password, code) in [("pp-monitor-pass", 0), ("not-the-password", 64)] {
        let text = harness::patroni_proxy_config_with(
            "127.0.0.1",
            &sql_keys("").replace("pp-monitor-pass", password),
        );
        let path = dir.path().join("proxy.toml");
        std::fs::write(&path, text)?;
        let out = tokio::process::Command::new(bin())
            .args(["check", "--sql", "--config"])
            .arg(&path)
            .output()
            .await?;
        let said = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = said
            .lines()
            .filter(|l| l.starts_with("SQL check of"))
            .collect();
        println!(
            "check --sql with password {password:?}: exit {:?}\n{}",
            out.status.code(),
            lines.join("\n")
        );
        anyhow::ensure!(
            out.status.code() == Some(code) && lines.len() == 3,
            "check --sql: {out:?}"
        );
    }
    println!(
        "refused: {}; untrusted: {}; closed port: {}",
        wrong.verdict.describe(),
        untrusted.verdict.describe(),
        closed.verdict.describe()
    );
    Ok(())
}

/// Waits until every server's last SQL check says what its role is, over TLS; returns the
/// leader's check duration (ms).
async fn sees_the_roles(p: &Proxy, leader: &Node) -> anyhow::Result<u64> {
    poll(
        Duration::from_secs(20),
        Duration::from_millis(200),
        "every server's SQL check to match its role, over TLS",
        || async {
            let stats = stats_json(p.stats).await.ok()?;
            let servers = stats["servers"].as_array()?.clone();
            let mut leader_ms = None;
            for n in Node::all() {
                let s = servers.iter().find(|s| s["name"] == n.server().as_str())?;
                let want = if &n == leader { "primary" } else { "standby" };
                let sql = &s["last_sql"];
                if sql["result"] != want || sql["tls"] != true || s["signals"]["agree"] != true {
                    return None;
                }
                if &n == leader {
                    leader_ms = sql["duration_ms"].as_u64();
                }
            }
            leader_ms
        },
    )
    .await
}

async fn through_the_proxy(leader: &Node) -> anyhow::Result<()> {
    let config = harness::patroni_proxy_config_with("127.0.0.1", &sql_keys(""));
    let p = Proxy::patroni_proxy_with(&bin(), "sql-check", &config).await?;
    p.wait_settled(leader, Duration::from_secs(30)).await?;
    p.wait_routes(leader, Duration::from_secs(30)).await?;
    let ms = sees_the_roles(&p, leader).await?;
    println!("the proxy's SQL check of the primary over TLS: {ms} ms");

    // A switchover under the gate: the new primary is routed only after its SQL check says
    // false, and no connection reaches a node in recovery.
    let reports = scenarios::switchover(&[&p], 1).await?;
    save("sql-check-switchover", &reports);
    let r = &reports[0];
    println!("{}", r.summary());
    assert_one_primary(r);
    anyhow::ensure!(r.client_errors == 0, "{}\n{}", r.summary(), r.failures());
    let new = r
        .new_primary
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no new primary: {}", r.summary()))?;
    let new = Node::all()
        .into_iter()
        .find(|n| n.name == new)
        .ok_or_else(|| anyhow::anyhow!("unknown node {new}"))?;
    sees_the_roles(&p, &new).await?;
    let log: Vec<String> = p.log().into_iter().map(|(_, l)| l).collect();
    let server = new.server();
    let said_false = log
        .iter()
        .rposition(|l| l.contains(&server) && l.contains("SQL check: pg_is_in_recovery() = false"));
    let routed = log
        .iter()
        .rposition(|l| l.contains(&format!("Routed primary of postgres is now {server}")));
    match (said_false, routed) {
        (Some(f), Some(r)) => anyhow::ensure!(
            f < r,
            "{server} routed before its SQL check said false:\n{}\n{}",
            log[r],
            log[f]
        ),
        _ => anyhow::bail!(
            "no SQL false ({said_false:?}) or routing ({routed:?}) line for {server}:\n{}",
            log.join("\n")
        ),
    }
    p.stop().await;
    Ok(())
}

async fn scenario() -> anyhow::Result<()> {
    let leader = leader().await.ok_or_else(|| anyhow::anyhow!("no leader"))?;
    harness::create_probe_table(&leader).await?;
    in_process(&leader).await?;
    through_the_proxy(&leader).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real cluster: scripts/test starts it"]
async fn sql_check_over_tls_sees_every_role_and_gates_a_switchover() {
    // Issue 14 item 1: "an optional SQL-level check with a configured monitoring role
    // (`SELECT pg_is_in_recovery()` on its own connection, with TLS when the server offers it)
    // ... run before a newly promoted node is routed and on the check schedule".
    harness::cluster(&["up", "--profile", "fast", "--pg-tls"])
        .await
        .expect("PostgreSQL offering TLS");
    let outcome = tokio::spawn(scenario()).await;
    harness::cluster(&["up", "--profile", "fast"])
        .await
        .expect("PostgreSQL back without TLS");
    match outcome {
        Ok(r) => r.expect("the SQL check on the real cluster"),
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}
