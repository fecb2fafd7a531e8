//! Faults on the real cluster beside the firewalled REST port of [`crate::outage`] (issue 14 item
//! 5): the primary's Patroni REST API wedged by idle clients holding its worker threads, then
//! Patroni frozen under the wedge so that its lease really lapses; and etcd stopped for a while
//! with Patroni's `failsafe_mode` on or off. Each fault is undone by a drop guard however the run
//! ends, and [`crate::harness::restore`] starts a stopped etcd before every scenario.

use std::process::Command as StdCommand;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::harness::*;
use crate::outage::{ride_window, wait_down, Ride};
use crate::scenarios::{analyze_all, begin, prepare, Report};

const SECS: fn(u64) -> Duration = Duration::from_secs;
const REST_PORT: u16 = 8008;

// ---------------------------------------------------------------------------------------------
// The REST wedge

/// Connections to a node's REST port that never finish a request. Patroni 4.1's REST server
/// (`patroni/api.py`, `RestApiServer`) hands every accepted connection to a pool of
/// `restapi.thread_pool_size` (5) threads, and its request handler reads without a timeout: five
/// clients that send nothing (or half a request) hold all five, and every later request waits in
/// the pool's queue, unanswered, for as long as they stay. Closed when dropped.
pub struct Wedge {
    conns: Vec<TcpStream>,
}

impl Wedge {
    pub async fn hold(node: &Node, n: usize) -> Result<Wedge> {
        let mut conns = Vec::new();
        for i in 0..n {
            let mut c = tokio::time::timeout(SECS(3), TcpStream::connect((&*node.ip, REST_PORT)))
                .await
                .context("connect to the REST port timed out")??;
            // Every other one sends the start of a request and stops in its headers: the handler
            // then waits for the rest of a line, as it waits for the first one on the idle ones.
            if i % 2 == 1 {
                c.write_all(b"GET /patroni HTTP/1.1\r\nHost: wedge\r\n")
                    .await?;
            }
            conns.push(c);
        }
        Ok(Wedge { conns })
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }
}

/// Whether `GET /primary` on `ip`'s REST port gets any byte of an answer within `limit` (curl's
/// view of the wedge).
pub async fn rest_answers(ip: &str, limit: Duration) -> bool {
    let attempt = async {
        let mut c = TcpStream::connect((ip, REST_PORT)).await.ok()?;
        c.write_all(b"GET /primary HTTP/1.0\r\n\r\n").await.ok()?;
        let mut b = [0u8; 1];
        c.read(&mut b).await.ok().filter(|n| *n > 0)
    };
    matches!(tokio::time::timeout(limit, attempt).await, Ok(Some(_)))
}

/// The owner of Patroni's leader key in etcd (`None`: no key, or etcd unreachable).
pub async fn leader_key() -> Option<String> {
    let out = tokio::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            ETCD,
            "--command-timeout=2s",
            "get",
            "/db/postgres/leader",
            "--print-value-only",
        ])
        .output()
        .await
        .ok()?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !v.is_empty()).then_some(v)
}

/// What the wedge did to Patroni and to etcd's view, apart from the proxies.
#[derive(Debug, Clone, Serialize, Default)]
pub struct WedgeFacts {
    /// Connections held open on the primary's REST port.
    pub connections: usize,
    /// A `GET /primary` got no answer within 3 s once they were open.
    pub confirmed: bool,
    /// A `GET /primary` was answered again within 5 s of their release.
    pub answered_after_release: bool,
    /// Readings of the leader key (every second) during the hold, and how many named the old
    /// primary: Patroni's HA loop renews its lease without the REST API.
    pub leader_key_readings: usize,
    pub leader_key_kept: usize,
    pub hold_s: f64,
}

/// The primary's REST API wedged for `hold` by idle clients (Patroni and PostgreSQL run on, the
/// lease is renewed); then, with `frozen` and the wedge still held, its Patroni stopped (SIGSTOP):
/// the lease lapses after `ttl` and the other nodes fail over. Reports: the whole run, seen from
/// the freeze (or from the wedge without `frozen`); the rides cover the hold only.
pub async fn rest_wedge(
    proxies: &[&Proxy],
    hold: Duration,
    frozen: bool,
) -> Result<(Vec<Report>, Vec<Ride>, WedgeFacts)> {
    let old = prepare(proxies).await?;
    let scenario = if frozen {
        "rest-wedge-frozen"
    } else {
        "rest-wedge"
    };
    let live = begin(proxies, scenario, 0, &old, true, 10).await?;
    let event = now();
    let wedge = Wedge::hold(&old, 8).await?;
    let mut facts = WedgeFacts {
        connections: wedge.len(),
        confirmed: !rest_answers(&old.ip, SECS(3)).await,
        ..WedgeFacts::default()
    };
    if !facts.confirmed {
        bail!(
            "{}'s REST API still answers with {} idle clients",
            old.name,
            wedge.len()
        );
    }
    let mut rides = wait_down(&live, &old, event).await;
    let end = event + hold.as_secs_f64();
    // Bounded by `end`: one reading a second.
    while now() < end {
        facts.leader_key_readings += 1;
        if leader_key().await.as_deref() == Some(old.name.as_str()) {
            facts.leader_key_kept += 1;
        }
        tokio::time::sleep(SECS(1)).await;
    }
    facts.hold_s = now() - event;
    ride_window(&live, &old, event, end, &mut rides).await?;
    for r in &rides {
        println!("{scenario} hold: {r:?}");
    }
    let (from, new) = if frozen {
        let froze = now();
        let f = cluster(&["freeze-patroni", &old.name]).await;
        let new = match f {
            Ok(_) => wait_leader_other_than(&old, SECS(90)).await,
            Err(e) => Err(e),
        };
        if let Ok(new) = &new {
            live.wait_all_ok(new, froze, SECS(30)).await;
            tokio::time::sleep(SECS(2)).await;
        }
        let _ = cluster(&["thaw-patroni", &old.name]).await;
        drop(wedge);
        (froze, new?)
    } else {
        drop(wedge);
        let released = now();
        facts.answered_after_release = rest_answers(&old.ip, SECS(5)).await;
        // Back to normal: the old primary UP again in every proxy, and written to.
        for l in &live.lanes {
            let p = l.proxy;
            let _ = poll(SECS(30), Duration::from_millis(50), "UP again", || async {
                p.status_at(&old.server(), released, |c| c.status == "UP")
            })
            .await;
        }
        live.wait_all_ok(&old, released, SECS(30)).await;
        tokio::time::sleep(SECS(1)).await;
        (event, old.clone())
    };
    let (done, watcher) = live.finish().await;
    cluster(&["wait-healthy", "180"]).await?;
    let primary = leader().await.unwrap_or_else(|| new.clone());
    let reports = analyze_all(
        scenario,
        0,
        proxies,
        done,
        &watcher,
        from,
        &old,
        Some(&new),
        Some(&primary),
    )
    .await;
    println!("{scenario}: {facts:?}");
    Ok((reports, rides, facts))
}

// ---------------------------------------------------------------------------------------------
// etcd stopped

/// What one node's REST API said, at a change.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NodeSaid {
    pub at: f64,
    pub node: String,
    /// `None`: no answer within 1 s.
    pub role: Option<String>,
    pub state: Option<String>,
    pub failsafe_mode_is_active: bool,
}

/// Polls every node's `GET /patroni` every 250 ms and keeps the changes: Patroni's own account.
struct PatroniView {
    said: Arc<Mutex<Vec<NodeSaid>>>,
    stop: CancellationToken,
}

impl PatroniView {
    fn start() -> PatroniView {
        let said: Arc<Mutex<Vec<NodeSaid>>> = Default::default();
        let stop = CancellationToken::new();
        for node in Node::all() {
            let (said, stop) = (said.clone(), stop.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .timeout(SECS(1))
                    .no_proxy()
                    .build()
                    .expect("a plain reqwest client");
                let url = format!("http://{}:{REST_PORT}/patroni", node.ip);
                let mut last: Option<(Option<String>, Option<String>, bool)> = None;
                // Bounded by the stop token; the count bound is a safety net (an hour at 250 ms).
                for _ in 0..14_400 {
                    let v: Option<serde_json::Value> = match client.get(&url).send().await {
                        Ok(r) => r.json().await.ok(),
                        Err(_) => None,
                    };
                    let text = |k: &str| v.as_ref().and_then(|v| v[k].as_str()).map(str::to_string);
                    let now_said = (
                        text("role"),
                        text("state"),
                        v.as_ref()
                            .is_some_and(|v| v["failsafe_mode_is_active"] == true),
                    );
                    if last.as_ref() != Some(&now_said) {
                        said.lock().unwrap().push(NodeSaid {
                            at: now(),
                            node: node.name.clone(),
                            role: now_said.0.clone(),
                            state: now_said.1.clone(),
                            failsafe_mode_is_active: now_said.2,
                        });
                        last = Some(now_said);
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    }
                }
            });
        }
        PatroniView { said, stop }
    }

    fn said(&self) -> Vec<NodeSaid> {
        let mut v = self.said.lock().unwrap().clone();
        v.sort_by(|a, b| a.at.total_cmp(&b.at));
        v
    }
}

impl Drop for PatroniView {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The cluster's dynamic configuration as a node serves it (`GET /config`).
async fn dynamic_config(node: &Node) -> Result<serde_json::Value> {
    Ok(reqwest::Client::builder()
        .timeout(SECS(2))
        .no_proxy()
        .build()?
        .get(format!("http://{}:{REST_PORT}/config", node.ip))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

/// `PATCH /config` through `node` with `{"failsafe_mode": value}` (`null` removes the key, back
/// to Patroni's default, off), then waits until every node serves it.
async fn set_failsafe(node: &Node, value: serde_json::Value) -> Result<()> {
    reqwest::Client::builder()
        .timeout(SECS(5))
        .no_proxy()
        .build()?
        .patch(format!("http://{}:{REST_PORT}/config", node.ip))
        .json(&serde_json::json!({ "failsafe_mode": value }))
        .send()
        .await?
        .error_for_status()?;
    let want = value.as_bool().unwrap_or(false);
    poll(
        SECS(30),
        Duration::from_millis(250),
        "failsafe_mode everywhere",
        || async {
            for n in Node::all() {
                let c = dynamic_config(&n).await.ok()?;
                if c["failsafe_mode"].as_bool().unwrap_or(false) != want {
                    return None;
                }
            }
            Some(())
        },
    )
    .await
}

/// Undoes the etcd fault however the scenario ends: etcd started, `failsafe_mode` back to what it
/// was. The normal path calls [`EtcdDown::undo`]; the drop (a failed or killed run) does the same
/// with blocking commands.
struct EtcdDown {
    node: Node,
    failsafe_before: serde_json::Value,
    undone: bool,
}

impl EtcdDown {
    async fn undo(mut self) -> Result<()> {
        self.undone = true;
        cluster(&["start-etcd"]).await?;
        set_failsafe(&self.node, self.failsafe_before.clone()).await
    }
}

impl Drop for EtcdDown {
    fn drop(&mut self) {
        if self.undone {
            return;
        }
        let _ = StdCommand::new(repo().join("scripts/cluster"))
            .arg("start-etcd")
            .status();
        let body = serde_json::json!({ "failsafe_mode": self.failsafe_before }).to_string();
        for n in Node::all() {
            let ok = StdCommand::new("curl")
                .args(["-sS", "--noproxy", "*", "--max-time", "5", "-X", "PATCH"])
                .args(["-H", "Content-Type: application/json", "-d", &body])
                .arg(format!("http://{}:{REST_PORT}/config", n.ip))
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                break;
            }
        }
    }
}

/// What Patroni did while etcd was stopped, as its REST APIs said it.
#[derive(Debug, Clone, Serialize, Default)]
pub struct EtcdFacts {
    pub failsafe_mode: bool,
    pub outage_s: f64,
    /// Seconds from the stop to the old primary's REST API saying anything but `primary`/`running`.
    pub old_primary_left_s: Option<f64>,
    /// Seconds from the stop to the first answer with `failsafe_mode_is_active`.
    pub failsafe_active_s: Option<f64>,
    /// The leader once etcd was back and the cluster healthy, and seconds from etcd's start to a
    /// primary answering `running` again (when it had stopped being one).
    pub leader_after: Option<String>,
    pub primary_again_s: Option<f64>,
    pub patroni: Vec<NodeSaid>,
}

/// When a node first said `failsafe_mode_is_active` after `after`, having said otherwise before:
/// Patroni keeps the flag up for a while after an earlier outage, so a node's first reading
/// proves nothing.
fn failsafe_became_active(said: &[NodeSaid], after: f64) -> Option<f64> {
    said.iter()
        .enumerate()
        .filter(|(_, s)| s.at > after && s.failsafe_mode_is_active)
        .find(|(i, s)| {
            said[..*i]
                .iter()
                .rev()
                .find(|p| p.node == s.node)
                .is_some_and(|p| !p.failsafe_mode_is_active)
        })
        .map(|(_, s)| s.at)
}

/// etcd stopped for `outage` with Patroni's `failsafe_mode` set to `failsafe`, then started again.
pub async fn etcd_stopped(
    proxies: &[&Proxy],
    outage: Duration,
    failsafe: bool,
) -> Result<(Vec<Report>, Vec<Ride>, EtcdFacts)> {
    let old = prepare(proxies).await?;
    let before = dynamic_config(&old).await?["failsafe_mode"].clone();
    let guard = EtcdDown {
        node: old.clone(),
        failsafe_before: before,
        undone: false,
    };
    set_failsafe(&old, serde_json::Value::Bool(failsafe)).await?;
    let scenario = if failsafe {
        "etcd-stopped-failsafe"
    } else {
        "etcd-stopped"
    };
    let live = begin(proxies, scenario, 0, &old, true, 10).await?;
    let view = PatroniView::start();
    let event = now();
    cluster(&["stop-etcd"]).await?;
    let end = event + outage.as_secs_f64();
    if now() < end {
        tokio::time::sleep(Duration::from_secs_f64(end - now())).await;
    }
    let mut rides: Vec<Ride> = live
        .lanes
        .iter()
        .map(|l| Ride {
            proxy: l.proxy.label().to_string(),
            down_s: l
                .proxy
                .status_at(&old.server(), event, |c| c.status.starts_with("DOWN"))
                .map(|t| t - event),
            ..Ride::default()
        })
        .collect();
    ride_window(&live, &old, event, end, &mut rides).await?;
    let started = now();
    guard.undo().await?;
    let primary = poll(SECS(90), Duration::from_millis(250), "a leader", leader).await?;
    live.wait_all_ok(&primary, started, SECS(30)).await;
    tokio::time::sleep(SECS(2)).await;
    let (done, watcher) = live.finish().await;
    let said = view.said();
    drop(view);
    cluster(&["wait-healthy", "180"]).await?;
    let primary = leader().await.unwrap_or(primary);
    let left = said
        .iter()
        .find(|s| {
            s.at > event
                && s.node == old.name
                && (s.role.as_deref(), s.state.as_deref()) != (Some("primary"), Some("running"))
        })
        .map(|s| s.at);
    let facts = EtcdFacts {
        failsafe_mode: failsafe,
        outage_s: started - event,
        old_primary_left_s: left.map(|t| t - event),
        failsafe_active_s: failsafe_became_active(&said, event).map(|t| t - event),
        leader_after: Some(primary.name.clone()),
        primary_again_s: left.and_then(|_| {
            said.iter()
                .find(|s| {
                    s.at > started
                        && s.role.as_deref() == Some("primary")
                        && s.state.as_deref() == Some("running")
                })
                .map(|s| s.at - started)
        }),
        patroni: said,
    };
    let reports = analyze_all(
        scenario,
        0,
        proxies,
        done,
        &watcher,
        event,
        &old,
        Some(&primary),
        Some(&primary),
    )
    .await;
    for r in &rides {
        println!("{scenario} outage: {r:?}");
    }
    println!(
        "{scenario}: old primary left {:?} s, failsafe active {:?} s, leader after {:?}, primary again {:?} s after etcd",
        facts.old_primary_left_s, facts.failsafe_active_s, facts.leader_after, facts.primary_again_s
    );
    Ok((reports, rides, facts))
}
