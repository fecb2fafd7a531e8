//! The failover scenarios on the real cluster, run through one or several proxies at once (the
//! same event seen by every proxy's own probe), and what each client saw, summarised as a
//! [`Report`]. Shared by `tests/e2e.rs` (assertions) and `examples/failover_compare.rs` (the
//! side-by-side table). Every wait polls a condition with a deadline; sleeps only pace the probe or
//! set the length of a measurement window.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::harness::*;

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

const NOTICE_EVENTS: [&str; 4] = ["down", "primary_lost", "suspect", "primary_changed"];

#[allow(clippy::too_many_arguments)]
async fn analyze(
    scenario: &str,
    iteration: usize,
    proxy: &Proxy,
    d: Done,
    watcher: &Watcher,
    event: f64,
    old: &Node,
    new: Option<&Node>,
    check_writes_on: Option<&Node>,
) -> Report {
    let rel = |t: f64| t - event;
    let server = old.server();
    let after_event = |t: &f64| *t > event;
    let status_change = d
        .changes
        .iter()
        .find(|c| c.at > event && c.server == server && c.status != "UP")
        .map(|c| c.at);
    let event_notice = d
        .events
        .iter()
        .find(|e| e.at > event && NOTICE_EVENTS.contains(&e.kind.as_str()))
        .map(|e| e.at);
    let noticed = [status_change, event_notice]
        .into_iter()
        .flatten()
        .filter(after_event)
        .min_by(f64::total_cmp);
    let down = d
        .events
        .iter()
        .find(|e| e.at > event && e.kind == "down" && e.server.as_deref() == Some(&server))
        .map(|e| e.at)
        .or_else(|| {
            d.changes
                .iter()
                .find(|c| c.at > event && c.server == server && c.status.starts_with("DOWN"))
                .map(|c| c.at)
        });
    let first_timeout = d
        .changes
        .iter()
        .find(|c| c.at > event && c.server == server && c.check.as_deref() == Some("L7TOUT"))
        .map(|c| c.at);
    let target = new.unwrap_or(old);
    let promoted = new
        .filter(|n| *n != old)
        .and_then(|n| watcher.promoted_at(&n.name, event));

    let a = &d.attempts;
    let first_bad = a
        .iter()
        .filter(|x| x.end > event && !x.outcome.is_ok())
        .map(|x| x.start)
        .min_by(f64::total_cmp);
    let recovered = first_bad.and_then(|fb| {
        a.iter()
            .filter(|x| x.start >= fb && x.outcome.is_ok())
            .map(|x| x.end)
            .min_by(f64::total_cmp)
    });
    let outage = match (first_bad, recovered) {
        (Some(fb), Some(r)) => r - fb,
        (Some(fb), None) => a.iter().map(|x| x.end).fold(fb, f64::max) - fb,
        _ => 0.0,
    };
    let is_on = |x: &Attempt, node: &Node| {
        x.outcome
            == Outcome::Primary {
                node: node.name.clone(),
            }
    };
    let first_good = if target != old {
        a.iter()
            .filter(|x| x.end > event && is_on(x, target))
            .map(|x| x.end)
            .min_by(f64::total_cmp)
    } else {
        recovered
    };
    let first_on_new = (target != old)
        .then(|| {
            a.iter()
                .filter(|x| is_on(x, target))
                .map(|x| x.end)
                .min_by(f64::total_cmp)
        })
        .flatten();
    let two_primaries = first_on_new.map_or(0, |t| {
        a.iter().filter(|x| x.start > t && is_on(x, old)).count()
    });
    let mut errors = BTreeMap::new();
    let mut patient = BTreeMap::new();
    for x in a {
        if x.patient && x.end > event {
            *patient.entry(x.outcome.label()).or_insert(0) += 1;
        }
        if !matches!(x.outcome, Outcome::Primary { .. } | Outcome::Replica { .. }) {
            *errors.entry(x.outcome.label()).or_insert(0) += 1;
        }
    }
    let resets = |from: f64| {
        a.iter()
            .filter(|x| x.start >= from && matches!(x.outcome, Outcome::Reset { .. }))
            .count()
    };
    let acked: Vec<i32> = a
        .iter()
        .filter(|x| x.outcome.is_ok())
        .map(|x| x.n as i32)
        .collect();
    let lost_writes = match check_writes_on {
        Some(p) => match stored_attempts(p, &d.run).await {
            Ok(stored) => acked
                .iter()
                .copied()
                .filter(|n| !stored.contains(n))
                .collect(),
            Err(e) => {
                eprintln!("could not read back the writes of {}: {e:#}", d.run);
                Vec::new()
            }
        },
        None => Vec::new(),
    };
    let (session_node, cut) = match d.session {
        Some((n, c)) => (Some(n), c),
        None => (None, None),
    };
    Report {
        scenario: scenario.to_string(),
        proxy: proxy.label().to_string(),
        iteration,
        run: d.run,
        event_at: event,
        old_primary: old.name.clone(),
        new_primary: new.map(|n| n.name.clone()),
        promoted_s: promoted.map(rel),
        noticed_s: noticed.map(rel),
        down_s: down.map(rel),
        first_timeout_s: first_timeout.map(rel),
        first_good_s: first_good.map(rel),
        promotion_to_first_good_s: promoted.zip(first_good).map(|(p, g)| g - p),
        outage_s: outage,
        longest_wait_s: a
            .iter()
            .filter(|x| x.end > event)
            .map(|x| x.end - x.start)
            .fold(0.0, f64::max),
        attempts: a.len(),
        ok: a.iter().filter(|x| x.outcome.is_ok()).count(),
        replica_routings: a
            .iter()
            .filter(|x| matches!(x.outcome, Outcome::Replica { .. }))
            .count(),
        two_primaries,
        client_errors: errors.values().sum(),
        errors,
        bare_resets: resets(f64::MIN),
        bare_resets_after_notice: noticed.map_or(0, resets),
        patient,
        session_node,
        session_cut_s: cut.as_ref().map(|c| rel(c.0)),
        session_cut: cut.map(|c| c.1),
        acked_writes: acked.len(),
        lost_writes,
        old_primary_writes_after_event: a
            .iter()
            .filter(|x| x.start > event && is_on(x, old))
            .count(),
        rejoined_as_replica: None,
        proxy_events: d
            .events
            .into_iter()
            .filter(|e| e.at > event - 5.0)
            .collect(),
        server_changes: d
            .changes
            .into_iter()
            .filter(|c| c.at > event - 5.0)
            .collect(),
        watcher: watcher.changes(),
        proxy_log: d.log.into_iter().filter(|l| l.0 > event - 5.0).collect(),
        attempt_log: d.attempts,
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn analyze_all(
    scenario: &str,
    iteration: usize,
    proxies: &[&Proxy],
    done: Vec<Done>,
    watcher: &Watcher,
    event: f64,
    old: &Node,
    new: Option<&Node>,
    check_writes_on: Option<&Node>,
) -> Vec<Report> {
    let mut out = Vec::new();
    for (p, d) in proxies.iter().zip(done) {
        let r = analyze(
            scenario,
            iteration,
            p,
            d,
            watcher,
            event,
            old,
            new,
            check_writes_on,
        )
        .await;
        println!("{}", r.summary());
        out.push(r);
    }
    out
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

// ---------------------------------------------------------------------------------------------
// The side-by-side table

fn range(v: &[f64]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if (hi - lo).abs() < 0.005 {
        format!("{lo:.2} s")
    } else {
        format!("{lo:.2}-{hi:.2} s")
    }
}

/// One Markdown table: a row per scenario and proxy; several iterations are summed (counts) or
/// shown as min-max (times).
pub fn markdown_table(reports: &[Report]) -> String {
    let mut keys: Vec<(String, String)> = Vec::new();
    for r in reports {
        let k = (r.scenario.clone(), r.proxy.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let mut out = String::from(
        "| scenario | proxy | runs | outage | promotion → first good write | first L7TOUT | marked DOWN | \
         replica routings | client errors | bare resets (after notice) | longest wait | session cut | \
         lost acked writes |\n\
         |---|---|---:|---|---|---|---|---:|---:|---|---|---|---:|\n",
    );
    for (scenario, proxy) in keys {
        let rs: Vec<&Report> = reports
            .iter()
            .filter(|r| r.scenario == scenario && r.proxy == proxy)
            .collect();
        let times = |f: &dyn Fn(&Report) -> Option<f64>| -> String {
            let v: Vec<f64> = rs.iter().filter_map(|r| f(r)).collect();
            let missing = rs.len() - v.len();
            match (v.is_empty(), missing) {
                (true, _) => "-".into(),
                (false, 0) => range(&v),
                (false, m) => format!("{} ({m} none)", range(&v)),
            }
        };
        let sum = |f: &dyn Fn(&Report) -> usize| -> usize { rs.iter().map(|r| f(r)).sum() };
        let mut errs: BTreeMap<String, usize> = BTreeMap::new();
        for r in &rs {
            for (k, v) in &r.errors {
                *errs.entry(k.clone()).or_insert(0) += v;
            }
        }
        let errs_text = if errs.is_empty() {
            "0".to_string()
        } else {
            let detail: Vec<String> = errs.iter().map(|(k, v)| format!("{v} {k}")).collect();
            format!("{} ({})", errs.values().sum::<usize>(), detail.join(", "))
        };
        let promo = if scenario == "restart" {
            times(&|r| r.first_good_s).replace(" s", " s from start")
        } else {
            times(&|r| r.promotion_to_first_good_s)
        };
        out += &format!(
            "| {scenario} | {proxy} | {} | {} | {promo} | {} | {} | {} | {errs_text} | {} ({}) | {} | {} | {} |\n",
            rs.len(),
            times(&|r| Some(r.outage_s)),
            times(&|r| r.first_timeout_s),
            times(&|r| r.down_s),
            sum(&|r| r.replica_routings),
            sum(&|r| r.bare_resets),
            sum(&|r| r.bare_resets_after_notice),
            times(&|r| Some(r.longest_wait_s)),
            times(&|r| r.session_cut_s),
            sum(&|r| r.lost_writes.len()),
        );
    }
    out
}
