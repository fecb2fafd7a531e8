//! The read-only port on the real cluster (issue 13, "Real cluster"): a replica listener spreads
//! reads over both streaming replicas; a replica whose replay is paused while writes go on leaves
//! the set once past `max_lag` and comes back after `pg_wal_replay_resume()`; during switchovers
//! the replica port never hands out a session on the primary.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use serde::Serialize;

use crate::harness::{direct, pg_connect, poll, stats_json, Node, Proxy};

type Result<T> = anyhow::Result<T>;

/// The lag a paused replica must pass to leave the set.
pub const MAX_LAG: &str = "1MB";

/// patroni-proxy's config for the real cluster with a replica listener (`replicas`) beside the
/// primary port, both on OS-chosen loopback ports.
pub fn config() -> String {
    // Each server's maxconn under PostgreSQL's max_connections (100) less what Patroni, the
    // replication and the test's own direct connections hold: a slow switchover here (seen: 11.6 s
    // to promote, with the replica port's reader loading the 2 cores) releases every held client
    // at once, and with maxconn = 100 some met PostgreSQL's 53300 "too many clients". The proxy
    // queues the rest (`timeout_queue`), as HAProxy would.
    crate::harness::patroni_proxy_config()
        .replace("maxconn = 100", "maxconn = 80")
        .replacen(
            "[listen]\nbind = \"127.0.0.1:0\"\n",
            &format!(
                "[[listen]]\nname = \"postgres\"\nbind = \"127.0.0.1:0\"\n\n\
             [[listen]]\nname = \"replicas\"\nbind = \"127.0.0.1:0\"\nrole = \"replica\"\n\
             max_lag = \"{MAX_LAG}\"\n"
            ),
            1,
        )
}

/// The replica listener's address, from the proxy's start log.
pub fn replica_port(p: &Proxy) -> Result<SocketAddr> {
    p.log()
        .iter()
        .filter(|(_, l)| l.contains("listener=replicas"))
        .find_map(|(_, l)| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("bind="))
                .and_then(|a| a.parse().ok())
        })
        .ok_or_else(|| anyhow!("no 'listening' line for the replicas listener"))
}

/// Where `n` sessions opened one after another on `addr` landed, and whether each was in recovery.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Spread {
    pub per_node: BTreeMap<String, usize>,
    pub not_in_recovery: usize,
    pub failed: usize,
}

/// One session: which node, in recovery or not.
async fn one(addr: SocketAddr) -> Result<(String, bool)> {
    let (client, _conn) = tokio::time::timeout(
        Duration::from_secs(10),
        pg_connect(&addr.ip().to_string(), addr.port(), Duration::from_secs(5)),
    )
    .await
    .map_err(|_| anyhow!("connect timed out"))??;
    let row = client
        .query_one("SELECT host(inet_server_addr()), pg_is_in_recovery()", &[])
        .await?;
    let ip: String = row.get(0);
    let node = Node::by_ip(&ip).map(|n| n.name).unwrap_or(ip);
    Ok((node, row.get(1)))
}

/// `n` sessions held open at once (so `leastconn` spreads them), then closed.
pub async fn spread(addr: SocketAddr, n: usize) -> Result<Spread> {
    let mut s = Spread::default();
    let mut held = Vec::new();
    for _ in 0..n {
        let (client, conn) =
            pg_connect(&addr.ip().to_string(), addr.port(), Duration::from_secs(5))
                .await
                .context("a session on the replica port")?;
        let row = client
            .query_one("SELECT host(inet_server_addr()), pg_is_in_recovery()", &[])
            .await?;
        let ip: String = row.get(0);
        let node = Node::by_ip(&ip).map(|n| n.name).unwrap_or(ip);
        *s.per_node.entry(node).or_default() += 1;
        if !row.get::<_, bool>(1) {
            s.not_in_recovery += 1;
        }
        held.push((client, conn));
    }
    Ok(s)
}

/// Whether the proxy's `replicas` listener counts `node` as a member now.
async fn member(p: &Proxy, node: &Node) -> Result<bool> {
    let v = stats_json(p.stats).await?;
    let l = (v["listeners"].as_array().into_iter().flatten())
        .find(|l| l["name"] == "replicas")
        .ok_or_else(|| anyhow!("no replicas listener in /stats.json"))?;
    Ok((l["members"].as_array().into_iter().flatten()).any(|m| m == node.server().as_str()))
}

#[derive(Debug, Clone, Serialize)]
pub struct LagReport {
    pub replica: String,
    /// Seconds from the end of the writes to the replica leaving the set.
    pub left_after_s: f64,
    /// Sessions opened while it was out: where they landed.
    pub while_out: Spread,
    /// Seconds from `pg_wal_replay_resume()` to the replica back in the set.
    pub back_after_s: f64,
}

/// Patroni's maintenance mode on (`PATCH /config {"pause": ...}` on the leader's REST API):
/// unpaused, Patroni resumes a replica's paused WAL replay within a loop (seen: under 2 s).
async fn maintenance(leader: &Node, on: bool) -> Result<()> {
    let url = format!("http://{}:8008/config", leader.ip);
    let answer = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?
        .patch(url)
        .json(&serde_json::json!({ "pause": on }))
        .send()
        .await?;
    if !answer.status().is_success() {
        anyhow::bail!("PATCH /config pause={on}: {}", answer.status());
    }
    Ok(())
}

/// Pauses replay on a replica (the cluster in maintenance mode meanwhile, or Patroni resumes it),
/// writes well past `max_lag` on the primary, and follows the set.
pub async fn lag(p: &Proxy, leader: &Node, ro: SocketAddr) -> Result<LagReport> {
    let replica = Node::all()
        .into_iter()
        .find(|n| n != leader)
        .ok_or_else(|| anyhow!("no replica"))?;
    poll(
        Duration::from_secs(20),
        Duration::from_millis(100),
        "the replica admitted",
        || async { member(p, &replica).await.ok().filter(|m| *m) },
    )
    .await?;
    let r = direct(&replica).await?;
    maintenance(leader, true).await?;
    let outcome = async {
        // Patroni reads the pause from the DCS within a loop; pause replay once it has.
        poll(Duration::from_secs(15), Duration::from_millis(200), "replay paused", || async {
            r.batch_execute("SELECT pg_wal_replay_pause()").await.ok()?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let paused: bool = r
                .query_one("SELECT pg_is_wal_replay_paused()", &[])
                .await
                .ok()?
                .get(0);
            paused.then_some(())
        })
        .await?;
        direct(leader)
            .await?
            .batch_execute(
                // About 4 MB of WAL that does not compress (random hex), four times max_lag.
                "CREATE TABLE IF NOT EXISTS e2e_lag (x text); \
                 INSERT INTO e2e_lag SELECT (SELECT string_agg(md5(random()::text || g::text || i::text), '') \
                 FROM generate_series(1, 32) i) FROM generate_series(1, 4000) g",
            )
            .await?;
        let wrote = crate::harness::now();
        let out = poll(Duration::from_secs(20), Duration::from_millis(100), "the replica out", || async {
            member(p, &replica).await.ok().filter(|m| !*m)
        })
        .await;
        if out.is_err() {
            let v = stats_json(p.stats).await?;
            anyhow::bail!("the replica never left the set: {}", v["listeners"]);
        }
        let left_after_s = crate::harness::now() - wrote;
        let while_out = spread(ro, 6).await?;
        Ok::<_, anyhow::Error>((left_after_s, while_out))
    }
    .await;
    // Whatever happened, replay goes on again, and Patroni manages the cluster again.
    let resumed_replay = r.batch_execute("SELECT pg_wal_replay_resume()").await;
    let resumed = crate::harness::now();
    maintenance(leader, false).await?;
    resumed_replay?;
    let (left_after_s, while_out) = outcome?;
    poll(
        Duration::from_secs(30),
        Duration::from_millis(100),
        "the replica back",
        || async { member(p, &replica).await.ok().filter(|m| *m) },
    )
    .await?;
    Ok(LagReport {
        replica: replica.name,
        left_after_s,
        while_out,
        back_after_s: crate::harness::now() - resumed,
    })
}

/// Opens a session on `ro` every 50 ms until `stop`: how many reached a node not in recovery.
pub struct Reader {
    pub attempts: Arc<AtomicUsize>,
    pub on_primary: Arc<AtomicUsize>,
    pub failed: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Reader {
    pub fn start(ro: SocketAddr) -> Reader {
        let (attempts, on_primary, failed) = Default::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (a, p, f, s): (Arc<AtomicUsize>, Arc<AtomicUsize>, Arc<AtomicUsize>, _) = (
            Arc::clone(&attempts),
            Arc::clone(&on_primary),
            Arc::clone(&failed),
            stop.clone(),
        );
        let task = tokio::spawn(async move {
            while !s.load(Relaxed) {
                a.fetch_add(1, Relaxed);
                match one(ro).await {
                    Ok((_, false)) => {
                        p.fetch_add(1, Relaxed);
                    }
                    Ok((_, true)) => {}
                    Err(_) => {
                        f.fetch_add(1, Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Reader {
            attempts,
            on_primary,
            failed,
            stop,
            task,
        }
    }

    /// Stops it: (attempts, on a primary, failed).
    pub async fn finish(self) -> (usize, usize, usize) {
        self.stop.store(true, Relaxed);
        let _ = self.task.await;
        (
            self.attempts.load(Relaxed),
            self.on_primary.load(Relaxed),
            self.failed.load(Relaxed),
        )
    }
}
