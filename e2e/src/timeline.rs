//! The old primary back on its old timeline without a rewind (issue 14 item 5): the primary
//! crashes, Patroni fails over, and the old node's PostgreSQL is started by hand (`pg_ctl`, no
//! Patroni, so no `pg_rewind`): a real primary on the old timeline, accepting writes. Its Patroni
//! stays down, and in its place a stand-in REST API on its address answers every check with the
//! body the old primary's Patroni gave before the crash (200, `role` primary, `state` running, the
//! old `timeline`): what a proxy would see of a Patroni that still believed it led. That is what
//! reaches the proxy's timeline fence (`state::fence`) and its higher-timeline rule
//! (`routing::choose`); without a stand-in the proxy would only see a refused check. Then the
//! node is repaired: stopped, restarted under Patroni (which rewinds it), or re-initialised if
//! that fails, leaving the cluster healthy.

use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::harness::*;
use crate::scenarios::{analyze_all, begin, prepare, Report};

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// A REST API on `ip:8008` answering every request with 200 and `body`, until dropped.
pub struct StandIn {
    stop: CancellationToken,
}

impl StandIn {
    pub async fn serve(ip: &str, body: String) -> Result<StandIn> {
        let listener = TcpListener::bind((ip, 8008))
            .await
            .with_context(|| format!("binding the stand-in REST API on {ip}:8008"))?;
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            // Bounded by the stop token; every connection is answered and closed within 2 s.
            loop {
                let (mut c, _) = tokio::select! {
                    _ = s.cancelled() => return,
                    a = listener.accept() => match a {
                        Ok(a) => a,
                        Err(_) => continue,
                    },
                };
                let body = body.clone();
                tokio::spawn(async move {
                    let answer = async {
                        let mut req = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
                            let n = c.read(&mut buf).await?;
                            if n == 0 {
                                break;
                            }
                            req.extend_from_slice(&buf[..n]);
                        }
                        let head = format!(
                            "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\
                             Content-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        c.write_all(head.as_bytes()).await?;
                        c.write_all(body.as_bytes()).await?;
                        c.shutdown().await
                    };
                    let _ = tokio::time::timeout(SECS(2), answer).await;
                });
            }
        });
        Ok(StandIn { stop })
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What the fault was, apart from the proxies.
#[derive(Debug, Clone, Serialize, Default)]
pub struct TimelineFacts {
    pub old_primary: String,
    pub new_primary: String,
    /// The old primary's timeline before the crash (the stand-in claims it) and the new one's.
    pub old_timeline: Option<i64>,
    pub new_timeline: Option<i64>,
    /// The hand-started PostgreSQL was out of recovery, on `alone_timeline`.
    pub alone_primary: bool,
    pub alone_timeline: Option<i64>,
    /// Seconds the old node ran as a primary on the old timeline beside the new primary.
    pub window_s: f64,
    /// How the node came back: `rewind` (Patroni started on it) or `reinit`.
    pub repaired_by: String,
}

/// Per proxy: what reached the old node while it ran alone.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Fenced {
    pub proxy: String,
    /// Attempts that started in the window, and those acknowledged by the old node.
    pub attempts_in_window: usize,
    pub routed_to_old: usize,
    /// The proxy's status of the old node at the end of the window (`UP` = its checks passed).
    pub old_status: Option<String>,
    /// patroni-proxy said it would not route it (the fence's warning event).
    pub fence_event: bool,
}

/// The timeline a node's Patroni reports (the new primary's: its control file says the new one
/// only after the checkpoint that follows the promotion).
async fn rest_timeline(node: &Node) -> Option<i64> {
    let v: serde_json::Value = reqwest::Client::builder()
        .timeout(SECS(2))
        .no_proxy()
        .build()
        .ok()?
        .get(format!("http://{}:8008/patroni", node.ip))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v["timeline"].as_i64()
}

/// The timeline in a node's control file, asked of its PostgreSQL.
async fn timeline_of(node: &Node) -> Result<i64> {
    let row = direct(node)
        .await?
        .query_one(
            "SELECT timeline_id::bigint, pg_is_in_recovery() FROM pg_control_checkpoint()",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// Crash, failover, the old primary started alone on its old timeline for `window` with a
/// stand-in REST API claiming it leads; then repaired.
pub async fn old_timeline(
    proxies: &[&Proxy],
    window: Duration,
) -> Result<(Vec<Report>, Vec<Fenced>, TimelineFacts)> {
    let old = prepare(proxies).await?;
    let body = reqwest::Client::builder()
        .timeout(SECS(2))
        .no_proxy()
        .build()?
        .get(format!("http://{}:8008/patroni", old.ip))
        .send()
        .await?
        .text()
        .await?;
    let old_tl = serde_json::from_str::<serde_json::Value>(&body)?["timeline"].as_i64();
    let live = begin(proxies, "old-timeline", 0, &old, false, 10).await?;
    let event = now();
    cluster(&["crash", &old.name]).await?;
    let new = wait_leader_other_than(&old, SECS(90)).await?;
    live.wait_all_ok(&new, event, SECS(30)).await;
    let mut facts = TimelineFacts {
        old_primary: old.name.clone(),
        new_primary: new.name.clone(),
        old_timeline: old_tl,
        new_timeline: rest_timeline(&new).await,
        ..TimelineFacts::default()
    };
    let alone = now();
    let fault = async {
        cluster(&["pg-alone", &old.name, "start"]).await?;
        let stand_in = StandIn::serve(&old.ip, body).await?;
        facts.alone_primary = !in_recovery(&old).await?;
        facts.alone_timeline = timeline_of(&old).await.ok();
        tokio::time::sleep(window).await;
        drop(stand_in);
        anyhow::Ok(())
    }
    .await;
    facts.window_s = now() - alone;
    let mut fenced = Vec::new();
    for l in &live.lanes {
        let p = l.proxy;
        let in_window: Vec<Attempt> = (l.probe.finished().into_iter())
            .filter(|a| a.start >= alone)
            .collect();
        fenced.push(Fenced {
            proxy: p.label().to_string(),
            attempts_in_window: in_window.len(),
            routed_to_old: in_window
                .iter()
                .filter(|a| {
                    a.outcome
                        == Outcome::Primary {
                            node: old.name.clone(),
                        }
                })
                .count(),
            old_status: p.statuses().get(&old.server()).cloned(),
            fence_event: p.events().await.iter().any(|e| {
                e.at >= alone
                    && e.server.as_deref() == Some(&old.server())
                    && e.message.contains("claims the primary role on timeline")
            }),
        });
    }
    let (done, watcher) = live.finish().await;
    let _ = cluster(&["pg-alone", &old.name, "stop"]).await;
    fault?;
    // Patroni on the node finds it diverged and rewinds it (`use_pg_rewind: true` in this
    // cluster); should that fail, a new base backup.
    facts.repaired_by = "rewind".into();
    cluster(&["start-node", &old.name]).await?;
    if cluster(&["wait-healthy", "120"]).await.is_err() {
        facts.repaired_by = "reinit".into();
        cluster(&["reinit", &old.name]).await?;
        cluster(&["wait-healthy", "240"]).await?;
    }
    let primary = leader().await.unwrap_or_else(|| new.clone());
    let reports = analyze_all(
        "old-timeline",
        0,
        proxies,
        done,
        &watcher,
        event,
        &old,
        Some(&new),
        Some(&primary),
    )
    .await;
    for f in &fenced {
        println!("old-timeline: {f:?}");
    }
    println!("old-timeline: {facts:?}");
    Ok((reports, fenced, facts))
}
