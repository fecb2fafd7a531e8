//! The real-cluster harness shared by `tests/e2e/` and the examples: drives
//! `scripts/cluster`, runs patroni-proxy or HAProxy in front of the cluster, and records what clients
//! see: a probe opening a new connection every 100 ms, one long-lived session, a direct watcher of
//! every node, and the proxy's own view of its servers. Times are Unix seconds (`f64`), the unit of
//! the proxy's `/stats.json` events, so the two can be compared.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use serde::Serialize;
use tokio::process::Command;

mod clients;
mod proxies;

pub use clients::*;
pub use proxies::*;

pub type Result<T> = anyhow::Result<T>;

pub const PASSWORD: &str = "secretpassword";
const NODES: [(&str, &str); 3] = [
    ("postgresql0", "127.0.0.11"),
    ("postgresql1", "127.0.0.12"),
    ("postgresql2", "127.0.0.13"),
];
/// The client address of the cluster's etcd.
pub const ETCD: &str = "127.0.0.21:2379";

/// Unix time in seconds.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// The repository's top (this crate lives in its `e2e/`).
pub fn repo() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map_or(here.clone(), Path::to_path_buf)
}

/// `target/e2e`, where every scenario writes its JSON.
pub fn out_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"));
    target.join("e2e")
}

pub fn write_json<T: Serialize>(name: &str, value: &T) -> Result<PathBuf> {
    let dir = out_dir();
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(value)?)?;
    Ok(path)
}

/// Polls `f` every `every` until it yields a value, at most `limit` long (and so a bounded number
/// of times).
pub async fn poll<T, F, Fut>(limit: Duration, every: Duration, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    let max_rounds = limit.as_millis() / every.as_millis().max(1) + 2;
    for _ in 0..max_rounds {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(every).await;
    }
    bail!("timed out after {limit:?} waiting for {what}")
}

// ---------------------------------------------------------------------------------------------
// The cluster

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    pub name: String,
    pub ip: String,
}

impl Node {
    pub fn all() -> Vec<Node> {
        NODES
            .iter()
            .map(|(n, ip)| Node {
                name: n.to_string(),
                ip: ip.to_string(),
            })
            .collect()
    }

    pub fn by_ip(ip: &str) -> Option<Node> {
        Node::all().into_iter().find(|n| n.ip == ip)
    }

    /// The server's name in both proxies' configs (HAProxy template: `postgresql_IP_PORT`).
    pub fn server(&self) -> String {
        format!("postgresql_{}_5432", self.ip)
    }
}

/// Where `scripts/cluster up --tls` keeps the test CA and the REST certificates (`ca.crt`,
/// `client.crt`, `client.key`): `$PP_DEV_HOME/tls`, as the script computes it.
pub fn rest_tls_dir() -> PathBuf {
    let home = std::env::var("PP_DEV_HOME").unwrap_or_else(|_| "/var/lib/patroni-proxy-dev".into());
    PathBuf::from(home.trim_end_matches('/')).join("tls")
}

/// Runs `scripts/cluster ARGS` and returns its stdout; an error carries the tail of its stderr.
pub async fn cluster(args: &[&str]) -> Result<String> {
    let out = Command::new(repo().join("scripts/cluster"))
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .context("running scripts/cluster")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "scripts/cluster {} failed ({}):\n{}",
            args.join(" "),
            out.status,
            tail.join("\n")
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `scripts/cluster status`'s lines, healthy or not: it exits 1 when the cluster is unhealthy,
/// which is when its lines matter (which component is down).
pub async fn cluster_status() -> String {
    Command::new(repo().join("scripts/cluster"))
        .arg("status")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn parse_node(out: &str) -> Result<Node> {
    let ip = out
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow!("no node in {out:?}"))?;
    Node::by_ip(ip).ok_or_else(|| anyhow!("unknown node {out:?}"))
}

/// The one running primary, judged from each node's own REST API; `None` if none or several.
pub async fn leader() -> Option<Node> {
    cluster(&["leader"])
        .await
        .ok()
        .and_then(|o| parse_node(&o).ok())
}

pub async fn wait_leader_other_than(old: &Node, limit: Duration) -> Result<Node> {
    poll(
        limit,
        Duration::from_millis(250),
        "a new leader",
        || async { leader().await.filter(|n| n != old) },
    )
    .await
}

/// Brings the cluster back to one primary and two streaming replicas: starts any node whose Patroni
/// is not running (a failed earlier scenario may have left one crashed), thaws frozen ones, lifts
/// a REST outage's firewall rule, waits.
pub async fn restore() -> Result<()> {
    // A REST outage scenario that ended without its guard (a killed test) left its rule.
    crate::outage::unblock();
    let status = cluster_status().await;
    // An etcd fault (`faults::etcd_stopped`) that ended without its guard left etcd stopped.
    if status
        .lines()
        .any(|l| l.starts_with("etcd ") && !l.contains("health=true"))
    {
        cluster(&["start-etcd"]).await?;
    }
    for node in Node::all() {
        let line = status
            .lines()
            .find(|l| l.starts_with(&format!("{} ", node.name)));
        if line.is_some_and(|l| l.contains(" pid=- ")) {
            cluster(&["start-node", &node.name]).await?;
        }
        // A thaw of a running Patroni is a no-op SIGCONT.
        let _ = cluster(&["thaw-patroni", &node.name]).await;
    }
    cluster(&["wait-healthy", "180"]).await?;
    Ok(())
}
