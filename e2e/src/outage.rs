//! The primary's REST API made unreachable on the real cluster while Patroni's HA loop and
//! PostgreSQL run on (issue 14 item 5, first scenario): an nftables rule drops every packet to
//! its `:8008` on loopback, so checks time out (`L4TOUT`) exactly as on a cut network, while the
//! leader lease is renewed in etcd. Then a switchover requested through the DCS (the `failover`
//! key, as `patronictl` falls back to when the leader's REST API is unreachable), the rule still
//! in place. The rule lives in its own table ([`TABLE`]), deleted however the run ends (a drop
//! guard, and [`crate::harness::restore`] before every scenario).

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::harness::*;
use crate::scenarios::{analyze_all, begin, prepare, Live, Report};

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// The nftables table of the fault (`inet`), one at a time on the machine.
pub const TABLE: &str = "pp_e2e_rest";

/// Drops every packet to `ip:port` sent on this host while it lives.
pub struct Blocked {
    pub ip: String,
}

impl Blocked {
    pub fn rest_of(node: &Node) -> Result<Blocked> {
        unblock();
        let script = format!(
            "add table inet {TABLE}\n\
             add chain inet {TABLE} out {{ type filter hook output priority 0; policy accept; }}\n\
             add rule inet {TABLE} out ip daddr {} tcp dport 8008 drop\n",
            node.ip
        );
        let out = Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin
                    .take()
                    .expect("piped")
                    .write_all(script.as_bytes())?;
                c.wait_with_output()
            })
            .context("running nft (Debian package nftables)")?;
        if !out.status.success() {
            bail!(
                "nft refused the rule: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Blocked {
            ip: node.ip.clone(),
        })
    }
}

impl Drop for Blocked {
    fn drop(&mut self) {
        unblock();
    }
}

/// Deletes the fault's table if it exists (a no-op otherwise, or without `nft`).
pub fn unblock() {
    let _ = Command::new("nft")
        .args(["delete", "table", "inet", TABLE])
        .stderr(std::process::Stdio::null())
        .status();
}

/// What the proxy showed of the old primary during the outage, per proxy.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Ride {
    pub proxy: String,
    /// Seconds from the rule to the old primary's DOWN (by its checks).
    pub down_s: Option<f64>,
    /// `/stats.json` showed it routed with `rest_unreachable_leader_alive`, and `/metrics`
    /// `patroni_proxy_rest_unreachable_leader_alive{server=...} 1`, at the end of the outage.
    pub riding: bool,
    pub metric: Option<f64>,
    /// The long session on it was still open at the end of the outage.
    pub session_kept: bool,
    /// Attempts started during the outage, and those that were not acknowledged writes.
    pub attempts_during: usize,
    pub errors_during: usize,
    /// Seconds from the switchover request to the proxy's "Leader key changed" event, and from
    /// that event to the first acknowledged write through it on the new primary.
    pub leader_change_s: Option<f64>,
    pub leader_change_to_first_good_s: Option<f64>,
}

/// `/metrics`' value of `patroni_proxy_rest_unreachable_leader_alive` for `server`.
async fn metric(p: &Proxy, server: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://{}/metrics", p.stats))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let series = format!("patroni_proxy_rest_unreachable_leader_alive{{server=\"{server}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
}

/// Writes Patroni's `failover` key: a switchover from `leader` to `candidate` through the DCS.
async fn request_switchover(leader: &Node, candidate: &Node) -> Result<()> {
    let value = format!(
        "{{\"leader\": \"{}\", \"member\": \"{}\"}}",
        leader.name, candidate.name
    );
    let out = tokio::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", ETCD, "put", "/db/postgres/failover", &value])
        .output()
        .await
        .context("running etcdctl")?;
    if !out.status.success() {
        bail!("etcdctl put: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// One [`Ride`] per lane, with the time each proxy marked `old` DOWN after `event` (waited for up
/// to 40 s, `None` past that: a proxy that never marks it DOWN is reported, not failed).
pub(crate) async fn wait_down(live: &Live<'_>, old: &Node, event: f64) -> Vec<Ride> {
    let mut rides = Vec::new();
    for l in &live.lanes {
        let p = l.proxy;
        let down = poll(SECS(40), Duration::from_millis(50), "DOWN", || async {
            p.status_at(&old.server(), event, |c| c.status.starts_with("DOWN"))
        })
        .await
        .ok();
        rides.push(Ride {
            proxy: p.label().to_string(),
            down_s: down.map(|d| d - event),
            ..Ride::default()
        });
    }
    rides
}

/// What each lane saw from `event` to `end` (the outage): its attempts and errors, whether the
/// long session lived through it, and (patroni-proxy) whether `old` was still routed by the
/// ride-through at its end.
pub(crate) async fn ride_window(
    live: &Live<'_>,
    old: &Node,
    event: f64,
    end: f64,
    rides: &mut [Ride],
) -> Result<()> {
    for (l, r) in live.lanes.iter().zip(rides) {
        let p = l.proxy;
        r.session_kept = l.session.as_ref().is_some_and(|s| s.cut().is_none());
        let during: Vec<_> = (l.probe.finished().into_iter())
            .filter(|a| a.start >= event && a.end <= end)
            .collect();
        r.attempts_during = during.len();
        r.errors_during = during.iter().filter(|a| !a.outcome.is_ok()).count();
        if p.kind != Kind::PatroniProxy {
            continue;
        }
        let v = stats_json(p.stats).await?;
        let server = v["servers"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == old.server()))
            .cloned()
            .unwrap_or_default();
        r.riding =
            server["routed_primary"] == true && server["rest_unreachable_leader_alive"] == true;
        r.metric = metric(p, &old.server()).await;
    }
    Ok(())
}

/// The primary's REST API unreachable for `outage`, then a switchover through the DCS while it
/// still is; the rule is removed once a new primary is routed.
pub async fn rest_unreachable(
    proxies: &[&Proxy],
    outage: Duration,
) -> Result<(Vec<Report>, Vec<Ride>)> {
    let old = prepare(proxies).await?;
    let live = begin(proxies, "rest-unreachable", 0, &old, true, 10).await?;
    let event = now();
    let block = Blocked::rest_of(&old)?;
    let mut rides = wait_down(&live, &old, event).await;
    let end = event + outage.as_secs_f64();
    if now() < end {
        tokio::time::sleep(Duration::from_secs_f64(end - now())).await;
    }
    ride_window(&live, &old, event, end, &mut rides).await?;
    let candidate = Node::all()
        .into_iter()
        .find(|n| *n != old)
        .expect("three nodes");
    let asked = now();
    request_switchover(&old, &candidate).await?;
    let new = wait_leader_other_than(&old, SECS(60)).await?;
    live.wait_all_ok(&new, asked, SECS(30)).await;
    drop(block);
    tokio::time::sleep(SECS(1)).await;
    let (done, watcher) = live.finish().await;
    let mut reports = analyze_all(
        "rest-unreachable",
        0,
        proxies,
        done,
        &watcher,
        event,
        &old,
        Some(&new),
        Some(&new),
    )
    .await;
    for (rep, r) in reports.iter_mut().zip(&mut rides) {
        let changed = (rep.proxy_events.iter())
            .find(|e| e.at >= asked && e.message.starts_with("Leader key changed"))
            .map(|e| e.at);
        r.leader_change_s = changed.map(|t| t - asked);
        r.leader_change_to_first_good_s = changed.and_then(|t| {
            (rep.attempt_log.iter())
                .filter(|a| {
                    a.start >= t
                        && a.outcome
                            == Outcome::Primary {
                                node: new.name.clone(),
                            }
                })
                .map(|a| a.end - t)
                .min_by(f64::total_cmp)
        });
        println!("{} / {:?}", rep.summary(), r);
    }
    cluster(&["wait-healthy", "180"]).await?;
    Ok((reports, rides))
}
