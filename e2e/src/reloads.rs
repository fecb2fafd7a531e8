//! Reloads under load on the real cluster (issue 15, "Done when": "reload under a pgbench load
//! with `-C` and with long sessions: 0 failed transactions, 0 sessions cut by the reload"): two
//! pgbench runs through the proxy (one connecting per transaction, one on persistent
//! connections) and long `SELECT 1` sessions, while the configuration file is changed and
//! reloaded again and again: check timers, every server's `maxconn`, a replica removed and added
//! back, a listener timeout.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde::Serialize;
use tokio::process::Command;

use crate::harness::{poll, stats_json, Node, Proxy, Session, PASSWORD};

type Result<T> = anyhow::Result<T>;

/// What one pgbench run reported.
#[derive(Debug, Clone, Serialize)]
pub struct Pgbench {
    pub args: String,
    pub exit_ok: bool,
    pub processed: u64,
    pub failed: u64,
    /// Its output's lines naming an error (`aborted`, `error`), if any.
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The changes reloaded, in order.
    pub reloads: Vec<String>,
    pub pgbench: Vec<Pgbench>,
    pub sessions: usize,
    /// Long sessions that ended before the run was over: (when, why).
    pub cut: Vec<(f64, String)>,
    /// The replica's status on `/stats.json` while it was removed.
    pub removed_status: String,
}

async fn pgbench(addr: SocketAddr, extra: &[&str], secs: u64, script: &str) -> Result<Pgbench> {
    let mut args: Vec<String> = [
        "-n",
        "-c",
        "4",
        "-j",
        "2",
        "-T",
        &secs.to_string(),
        "-f",
        script,
        "-h",
        &addr.ip().to_string(),
        "-p",
        &addr.port().to_string(),
        "-U",
        "postgres",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.splice(0..0, extra.iter().map(|s| s.to_string()));
    args.push("postgres".into());
    let out = Command::new("/usr/lib/postgresql/15/bin/pgbench")
        .args(&args)
        .env("PGPASSWORD", PASSWORD)
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .await
        .context("running pgbench")?;
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let number = |prefix: &str| -> u64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    Ok(Pgbench {
        args: args.join(" "),
        exit_ok: out.status.success(),
        processed: number("number of transactions actually processed:"),
        failed: number("number of failed transactions:"),
        errors: text
            .lines()
            .filter(|l| l.contains("aborted") || l.contains("error"))
            .map(str::to_string)
            .collect(),
    })
}

/// Rewrites the proxy's file with `change` applied, reloads, and waits until the proxy says it
/// applied reload number `n`.
async fn reload(p: &Proxy, n: u64, change: impl FnOnce(String) -> Result<String>) -> Result<()> {
    let path = p.config_path();
    let text = std::fs::read_to_string(&path)?;
    std::fs::write(&path, change(text)?)?;
    p.hangup()?;
    let stats = p.stats;
    poll(
        Duration::from_secs(5),
        Duration::from_millis(50),
        "the reload applied",
        || async move {
            let v = stats_json(stats).await.ok()?;
            if v["reloads"]["failed"].as_u64() != Some(0) {
                return Some(Err(anyhow!(
                    "reload refused: {}",
                    v["reloads"]["last_error"]
                )));
            }
            (v["reloads"]["ok"].as_u64() == Some(n)).then_some(Ok(()))
        },
    )
    .await?
}

fn replace(text: String, from: &str, to: &str) -> Result<String> {
    if !text.contains(from) {
        bail!("{from:?} is not in the configuration:\n{text}");
    }
    Ok(text.replace(from, to))
}

/// The run: `secs` of load, a reload every couple of seconds meanwhile.
pub async fn under_load(p: &Proxy, leader: &Node, secs: u64) -> Result<Report> {
    p.wait_routes(leader, Duration::from_secs(20)).await?;
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("select.sql");
    std::fs::write(&script, "SELECT 1;\n")?;
    let script = script.display().to_string();
    let mut sessions = Vec::new();
    for _ in 0..8 {
        sessions.push(Session::open(p.listen).await?);
    }
    let listen = p.listen;
    let per_txn = {
        let script = script.clone();
        tokio::spawn(async move { pgbench(listen, &["-C"], secs, &script).await })
    };
    let persistent = {
        let script = script.clone();
        tokio::spawn(async move { pgbench(listen, &[], secs, &script).await })
    };
    // The rest of the script is pgbench's own time: let it get going first.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let replica = Node::all()
        .into_iter()
        .find(|n| n != leader)
        .ok_or_else(|| anyhow!("no replica"))?;
    let table = format!(
        "[[server]]\nname = \"{}\"\naddress = \"{}:5432\"\nmaxconn = 60\n\n",
        replica.server(),
        replica.ip
    );
    let mut done = Vec::new();
    let mut removed_status = String::new();
    let steps: [(&str, &str, &str); 6] = [
        (
            "check.inter 3s -> 2s",
            "inter = \"3000ms\"",
            "inter = \"2000ms\"",
        ),
        (
            "every server's maxconn 100 -> 60",
            "maxconn = 100",
            "maxconn = 60",
        ),
        ("a replica removed", "", ""),
        ("the replica added back", "", ""),
        (
            "listen.timeout_queue = 5s",
            "[listen]\n",
            "[listen]\ntimeout_queue = \"5s\"\n",
        ),
        (
            "check.inter 2s -> 3s",
            "inter = \"2000ms\"",
            "inter = \"3000ms\"",
        ),
    ];
    for (i, (what, from, to)) in steps.iter().enumerate() {
        let n = i as u64 + 1;
        match i {
            2 => reload(p, n, |t| replace(t, &table, "")).await,
            3 => reload(p, n, |t| Ok(format!("{t}\n{table}"))).await,
            _ => reload(p, n, |t| replace(t, from, to)).await,
        }
        .with_context(|| format!("reload {n}: {what}"))?;
        if i == 2 {
            let v = stats_json(p.stats).await?;
            removed_status = (v["servers"].as_array().into_iter().flatten())
                .find(|s| s["name"] == replica.server().as_str())
                .map(|s| s["status"].as_str().unwrap_or("").to_string())
                .unwrap_or_default();
        }
        done.push(what.to_string());
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let runs = vec![per_txn.await??, persistent.await??];
    let cut = sessions.iter().filter_map(Session::cut).collect();
    drop(sessions);
    Ok(Report {
        reloads: done,
        pgbench: runs,
        sessions: 8,
        cut,
        removed_status,
    })
}
