//! The failover scenarios on the real cluster, run through one or several proxies at once (the
//! same event seen by every proxy's own probe), and what each client saw, summarised as a
//! [`Report`]. Shared by `tests/e2e/` (assertions) and `examples/failover_compare.rs` (the
//! side-by-side table). Every wait polls a condition with a deadline; sleeps only pace the probe or
//! set the length of a measurement window.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::harness::*;

mod analyze;
mod table;

use analyze::analyze;
pub(crate) use analyze::analyze_all;
pub use table::markdown_table;

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// What one proxy's clients saw during one scenario run. Times are seconds from the event (the
/// moment the cluster command was issued) unless said otherwise.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    pub scenario: String,
    pub proxy: String,
    pub iteration: usize,
    /// The probe's `run` key in `e2e_probe`.
    pub run: String,
    /// Unix time of the event.
    pub event_at: f64,
    pub old_primary: String,
    pub new_primary: Option<String>,
    /// The new primary left recovery (direct watcher, 20 ms resolution).
    pub promoted_s: Option<f64>,
    /// The proxy first showed a reaction: the old primary left `UP`, or (patroni-proxy) an event.
    pub noticed_s: Option<f64>,
    /// The old primary was marked DOWN.
    pub down_s: Option<f64>,
    /// The proxy's stats first showed an `L7TOUT` check of the old primary.
    pub first_timeout_s: Option<f64>,
    /// First acknowledged write on the primary after the disturbance (on the new primary when the
    /// primary changed).
    pub first_good_s: Option<f64>,
    pub promotion_to_first_good_s: Option<f64>,
    /// From the start of the first attempt that was not an acknowledged write on the primary to the
    /// end of the next one that was; 0 when every attempt succeeded.
    pub outage_s: f64,
    /// The longest time any attempt waited for its outcome (ok or not).
    pub longest_wait_s: f64,
    pub attempts: usize,
    pub ok: usize,
    /// Attempts that reached a node in recovery.
    pub replica_routings: usize,
    /// Acknowledged writes on the old primary that started after the first one on the new primary.
    pub two_primaries: usize,
    /// Attempts that were neither an acknowledged write nor a replica routing.
    pub client_errors: usize,
    /// `client_errors` by kind: SQLSTATE, `reset`, `gave_up`, `connect_failed`, `other`.
    pub errors: BTreeMap<String, usize>,
    /// Closed without a PostgreSQL error (EOF/RST), anywhere in the scenario.
    pub bare_resets: usize,
    /// ... of attempts started once the proxy had noticed.
    pub bare_resets_after_notice: usize,
    /// Outcomes of the patient attempts (which wait longer than the proxy's hold) by kind.
    pub patient: BTreeMap<String, usize>,
    pub session_node: Option<String>,
    pub session_cut_s: Option<f64>,
    pub session_cut: Option<String>,
    pub acked_writes: usize,
    /// Acknowledged writes missing from the primary afterwards.
    pub lost_writes: Vec<i32>,
    /// Acknowledged writes on the old primary by attempts started after the event.
    pub old_primary_writes_after_event: usize,
    /// Crash: the old primary is back as a streaming replica after `start-node`.
    pub rejoined_as_replica: Option<bool>,
    pub proxy_events: Vec<ProxyEvent>,
    pub server_changes: Vec<ServerChange>,
    pub watcher: BTreeMap<String, Vec<(f64, Option<bool>)>>,
    /// The proxy's own log lines from 5 s before the event.
    pub proxy_log: Vec<(f64, String)>,
    pub attempt_log: Vec<Attempt>,
}

impl Report {
    pub fn summary(&self) -> String {
        let s = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}s"));
        format!(
            "{} #{} via {}: {} -> {} | promoted {} noticed {} down {} L7TOUT {} first-good {} \
             (promotion->good {}) | outage {:.2}s longest wait {:.2}s | {} attempts, {} ok, {} replica, \
             {} errors {:?} ({} bare resets, {} after notice) patient {:?} | session on {} cut {} ({}) | \
             writes acked {} lost {} (to old primary after event {}) rejoined {:?}",
            self.scenario,
            self.iteration,
            self.proxy,
            self.old_primary,
            self.new_primary.as_deref().unwrap_or("?"),
            s(self.promoted_s),
            s(self.noticed_s),
            s(self.down_s),
            s(self.first_timeout_s),
            s(self.first_good_s),
            s(self.promotion_to_first_good_s),
            self.outage_s,
            self.longest_wait_s,
            self.attempts,
            self.ok,
            self.replica_routings,
            self.client_errors,
            self.errors,
            self.bare_resets,
            self.bare_resets_after_notice,
            self.patient,
            self.session_node.as_deref().unwrap_or("-"),
            s(self.session_cut_s),
            self.session_cut.as_deref().unwrap_or("-"),
            self.acked_writes,
            self.lost_writes.len(),
            self.old_primary_writes_after_event,
            self.rejoined_as_replica,
        )
    }

    /// The non-ok attempts, for assertion messages.
    pub fn failures(&self) -> String {
        self.attempt_log
            .iter()
            .filter(|a| !a.outcome.is_ok())
            .map(|a| {
                format!(
                    "  #{} {:+.2}s..{:+.2}s {:?}",
                    a.n,
                    a.start - self.event_at,
                    a.end - self.event_at,
                    a.outcome
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// One proxy's probe and long session during a scenario.
pub(crate) struct Lane<'a> {
    pub(crate) proxy: &'a Proxy,
    pub(crate) probe: Probe,
    pub(crate) session: Option<Session>,
}

pub(crate) struct Live<'a> {
    pub(crate) lanes: Vec<Lane<'a>>,
    watcher: Watcher,
}

/// What was recorded, once the probes have stopped.
pub(crate) struct Done {
    attempts: Vec<Attempt>,
    run: String,
    session: Option<(String, Option<(f64, String)>)>,
    events: Vec<ProxyEvent>,
    changes: Vec<ServerChange>,
    log: Vec<(f64, String)>,
}

/// The cluster healthy, the probe table present, every proxy routing the leader.
pub async fn prepare(proxies: &[&Proxy]) -> Result<Node> {
    restore().await?;
    // Healthy a moment ago, yet between leaders now: a fault that restore() undid (etcd started
    // again) may have made the primary step down just before. Patroni elects one within seconds.
    let leader = match leader().await {
        Some(l) => l,
        None => {
            poll(SECS(60), Duration::from_millis(250), "a leader", leader).await?;
            cluster(&["wait-healthy", "180"]).await?;
            leader().await.ok_or_else(|| anyhow::anyhow!("no leader"))?
        }
    };
    create_probe_table(&leader).await?;
    for p in proxies {
        p.wait_settled(&leader, SECS(30)).await?;
        p.wait_routes(&leader, SECS(30)).await?;
    }
    Ok(leader)
}

pub(crate) async fn begin<'a>(
    proxies: &[&'a Proxy],
    scenario: &str,
    iteration: usize,
    leader: &Node,
    with_session: bool,
    patient_every: u32,
) -> Result<Live<'a>> {
    let watcher = Watcher::start();
    let stamp = (now() * 1000.0) as u64;
    let mut lanes = Vec::new();
    for p in proxies {
        // The label tells instances apart: the probe table's key is (run, attempt).
        let run = format!("{scenario}-{iteration}-{}-{stamp}", p.label());
        let session = match with_session {
            true => Some(session_on(p, leader).await?),
            false => None,
        };
        let probe = Probe::start(p.listen, run, Duration::from_millis(100), patient_every);
        lanes.push(Lane {
            proxy: p,
            probe,
            session,
        });
    }
    // A steady state before the event: every probe writing to the leader.
    let t0 = now();
    for l in &lanes {
        poll(
            SECS(15),
            Duration::from_millis(50),
            "5 good attempts",
            || async { (l.probe.ok_on(&leader.name, t0) >= 5).then_some(()) },
        )
        .await?;
    }
    Ok(Live { lanes, watcher })
}

/// A long session on the primary. HAProxy round-robins over every UP server, so it may take a
/// few tries there (prepare() waits for its steady state, so it should not).
async fn session_on(p: &Proxy, leader: &Node) -> Result<Session> {
    let mut seen = Vec::new();
    for _ in 0..10 {
        let s = Session::open(p.listen).await?;
        if s.node == leader.name {
            return Ok(s);
        }
        seen.push(s.node.clone());
    }
    anyhow::bail!(
        "{}: no long session on {} (got {seen:?})",
        p.label(),
        leader.name
    )
}

impl Live<'_> {
    /// Waits (bounded; a proxy that never gets there is reported, not failed) until every probe has
    /// written to `node` after `after`.
    pub(crate) async fn wait_all_ok(&self, node: &Node, after: f64, limit: Duration) {
        let _ = poll(
            limit,
            Duration::from_millis(50),
            "every proxy back",
            || async {
                self.lanes
                    .iter()
                    .all(|l| l.probe.ok_on(&node.name, after) > 0)
                    .then_some(())
            },
        )
        .await;
    }

    pub(crate) async fn finish(self) -> (Vec<Done>, Watcher) {
        let mut done = Vec::new();
        for l in self.lanes {
            let run = l.probe.run.clone();
            let attempts = l.probe.finish().await;
            let session = l.session.as_ref().map(|s| (s.node.clone(), s.cut()));
            done.push(Done {
                attempts,
                run,
                session,
                events: l.proxy.events().await,
                changes: l.proxy.changes(),
                log: l.proxy.log(),
            });
        }
        (done, self.watcher)
    }
}

/// Crash of the primary (SIGKILL of Patroni, the postmaster and its children), then the old
/// primary restarted: it must rejoin as a streaming replica.
pub async fn crash(proxies: &[&Proxy]) -> Result<Vec<Report>> {
    let old = prepare(proxies).await?;
    let live = begin(proxies, "crash", 0, &old, true, 10).await?;
    let event = now();
    cluster(&["crash", &old.name]).await?;
    let new = wait_leader_other_than(&old, SECS(90)).await?;
    live.wait_all_ok(&new, event, SECS(30)).await;
    // A window after the return, to see that clients stay on the new primary.
    tokio::time::sleep(SECS(2)).await;
    let (done, watcher) = live.finish().await;
    cluster(&["start-node", &old.name]).await?;
    cluster(&["wait-healthy", "180"]).await?;
    let rejoined = in_recovery(&old).await?;
    let primary = leader().await.unwrap_or_else(|| new.clone());
    let mut reports = analyze_all(
        "crash",
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
    println!(
        "crash: the old primary {} rejoined as a replica: {rejoined}",
        old.name
    );
    for r in &mut reports {
        r.rejoined_as_replica = Some(rejoined);
    }
    Ok(reports)
}

/// `iterations` planned switchovers (`patronictl switchover --force`) in a row; every probe attempt
/// is patient.
pub async fn switchover(proxies: &[&Proxy], iterations: usize) -> Result<Vec<Report>> {
    let mut reports = Vec::new();
    for i in 0..iterations {
        let old = prepare(proxies).await?;
        // Every attempt waits up to 15 s here: the point is the longest wait a client sees, which
        // a 3 s give-up would hide (and count as an error the proxy did not make).
        let live = begin(proxies, "switchover", i, &old, true, 1).await?;
        let event = now();
        let new = parse_leader(&cluster(&["switchover"]).await?)?;
        live.wait_all_ok(&new, event, SECS(30)).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (done, watcher) = live.finish().await;
        reports.extend(
            analyze_all(
                "switchover",
                i,
                proxies,
                done,
                &watcher,
                event,
                &old,
                Some(&new),
                Some(&new),
            )
            .await,
        );
    }
    Ok(reports)
}

fn parse_leader(out: &str) -> Result<Node> {
    let ip = out
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .next_back()
        .ok_or_else(|| anyhow::anyhow!("no leader in {out:?}"))?;
    Node::by_ip(ip).ok_or_else(|| anyhow::anyhow!("unknown leader {out:?}"))
}

/// Patroni killed on the primary, PostgreSQL left running: the proxies mark it DOWN (REST refused)
/// and cut its sessions then; Patroni is restarted once every proxy has marked it DOWN.
pub async fn kill_patroni(proxies: &[&Proxy]) -> Result<Vec<Report>> {
    let old = prepare(proxies).await?;
    let live = begin(proxies, "kill-patroni", 0, &old, true, 10).await?;
    let event = now();
    cluster(&["kill-patroni", &old.name]).await?;
    for l in &live.lanes {
        let p = l.proxy;
        poll(SECS(40), Duration::from_millis(50), "DOWN", || async {
            p.status_at(&old.server(), event, |c| c.status.starts_with("DOWN"))
        })
        .await
        .with_context_msg(p.label())?;
        if let Some(s) = &l.session {
            s.wait_cut(SECS(5)).await;
        }
    }
    tokio::time::sleep(SECS(1)).await;
    cluster(&["start-node", &old.name]).await?;
    let primary = poll(SECS(90), Duration::from_millis(250), "a leader", leader).await?;
    live.wait_all_ok(&primary, event, SECS(30)).await;
    tokio::time::sleep(SECS(1)).await;
    let (done, watcher) = live.finish().await;
    cluster(&["wait-healthy", "180"]).await?;
    let primary = leader().await.unwrap_or(primary);
    Ok(analyze_all(
        "kill-patroni",
        0,
        proxies,
        done,
        &watcher,
        event,
        &old,
        Some(&primary),
        Some(&primary),
    )
    .await)
}

/// The primary's Patroni stopped (SIGSTOP) for `freeze`: its REST API accepts and never answers.
pub async fn hung_rest(proxies: &[&Proxy], freeze: Duration) -> Result<Vec<Report>> {
    let old = prepare(proxies).await?;
    let live = begin(proxies, "hung-rest", 0, &old, true, 10).await?;
    let event = now();
    let frozen = cluster(&["freeze-patroni", &old.name]).await;
    if frozen.is_ok() {
        tokio::time::sleep(freeze).await;
    }
    let thawed_at = now();
    let thawed = cluster(&["thaw-patroni", &old.name]).await;
    frozen?;
    thawed?;
    // Back to normal: every proxy shows the old primary fully UP after a good check, and routes it.
    for l in &live.lanes {
        let p = l.proxy;
        let _ = poll(SECS(30), Duration::from_millis(50), "UP again", || async {
            p.status_at(&old.server(), thawed_at, |c| {
                c.status == "UP" && c.check.as_deref() == Some("L7OK")
            })
        })
        .await;
    }
    live.wait_all_ok(&old, thawed_at, SECS(30)).await;
    tokio::time::sleep(SECS(1)).await;
    let (done, watcher) = live.finish().await;
    Ok(analyze_all(
        "hung-rest",
        0,
        proxies,
        done,
        &watcher,
        event,
        &old,
        Some(&old),
        Some(&old),
    )
    .await)
}

/// A proxy started while the cluster runs and hammered at once (a new connection every 50 ms for
/// 2 s, each waiting up to 15 s): nothing may reach a replica before the primary is confirmed.
pub async fn restart(kind: Kind, bin: &Path) -> Result<Report> {
    let leader = prepare(&[]).await?;
    let watcher = Watcher::start();
    let proxy = Proxy::start(kind, bin).await?;
    let event = proxy.spawned;
    let run = format!("restart-{}-{}", kind.label(), (now() * 1000.0) as u64);
    let probe = Probe::start(proxy.listen, run.clone(), Duration::from_millis(50), 1);
    tokio::time::sleep(SECS(2)).await;
    let attempts = probe.finish().await;
    let done = Done {
        attempts,
        run,
        session: None,
        events: proxy.events().await,
        changes: proxy.changes(),
        log: proxy.log(),
    };
    let mut r = analyze(
        "restart",
        0,
        &proxy,
        done,
        &watcher,
        event,
        &leader,
        Some(&leader),
        Some(&leader),
    )
    .await;
    // Here "first good" is the first acknowledged write at all, from the spawn of the process.
    r.first_good_s = r
        .attempt_log
        .iter()
        .filter(|a| a.outcome.is_ok())
        .map(|a| a.end - event)
        .min_by(f64::total_cmp);
    println!("{}", r.summary());
    proxy.stop().await;
    Ok(r)
}

trait ContextMsg<T> {
    fn with_context_msg(self, who: &str) -> Result<T>;
}

impl<T> ContextMsg<T> for Result<T> {
    fn with_context_msg(self, who: &str) -> Result<T> {
        self.map_err(|e| e.context(format!("through {who}")))
    }
}
