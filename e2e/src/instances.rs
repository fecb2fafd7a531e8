//! Several patroni-proxy instances in front of the one cluster (issue 15 item 5): each instance's
//! routed primary over time, rebuilt from its own `/stats.json` events (each stamped at the
//! decision, on the same host clock), when each routed the new primary after a switchover or a
//! crash, how long the instances disagreed, and the Patroni REST load they put on each node (from
//! their own check counters in `/metrics`). The analysis functions are pure and unit-tested in
//! `tests/e2e/`; [`events`], [`steady_load`] and [`LoadSampler`] run against the real cluster.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::harness::*;
use crate::scenarios::{self, Report};

/// One instance's routed primary over time: `(since, server or none)`, in time order, changes only.
pub type Timeline = Vec<(f64, Option<String>)>;

/// The routed primary rebuilt from an instance's events: `initial` from `from` on, then every
/// `primary_changed` (to its server) and `primary_lost` (to none) after `from`. The proxy records
/// an event on every change of its routed primary, so nothing between two events is missed.
pub fn timeline(events: &[ProxyEvent], initial: Option<&str>, from: f64) -> Timeline {
    let mut changes: Vec<&ProxyEvent> = events
        .iter()
        .filter(|e| e.at > from && matches!(e.kind.as_str(), "primary_changed" | "primary_lost"))
        .collect();
    changes.sort_by(|a, b| a.at.total_cmp(&b.at));
    let mut t: Timeline = vec![(from, initial.map(str::to_string))];
    for e in changes {
        let routed = match e.kind.as_str() {
            "primary_changed" => e.server.clone(),
            _ => None,
        };
        if t.last().map(|l| &l.1) != Some(&routed) {
            t.push((e.at, routed));
        }
    }
    t
}

/// What `t` routes at `at` (its initial value before its first entry).
pub fn routed_at(t: &Timeline, at: f64) -> Option<&str> {
    t.iter()
        .take_while(|(since, _)| *since <= at)
        .last()
        .or(t.first())
        .and_then(|(_, r)| r.as_deref())
}

/// The first instant at or after `from` from which `t` routes `node`.
pub fn decided_at(t: &Timeline, node: &str, from: f64) -> Option<f64> {
    if routed_at(t, from) == Some(node) {
        return Some(from);
    }
    t.iter()
        .find(|(since, r)| *since >= from && r.as_deref() == Some(node))
        .map(|(since, _)| *since)
}

/// The longest stretch within `[from, to]` during which `differ` holds for the instances' routed
/// primaries, in seconds.
fn longest(ts: &[Timeline], from: f64, to: f64, differ: impl Fn(&[Option<&str>]) -> bool) -> f64 {
    let mut cuts: Vec<f64> = ts
        .iter()
        .flat_map(|t| t.iter().map(|(s, _)| *s))
        .filter(|s| *s > from && *s < to)
        .collect();
    cuts.push(from);
    cuts.push(to);
    cuts.sort_by(f64::total_cmp);
    let (mut best, mut open) = (0.0_f64, None::<f64>);
    for w in cuts.windows(2) {
        let routed: Vec<Option<&str>> = ts.iter().map(|t| routed_at(t, w[0])).collect();
        match (differ(&routed), open) {
            (true, None) => open = Some(w[0]),
            (false, Some(o)) => {
                best = best.max(w[0] - o);
                open = None;
            }
            _ => {}
        }
    }
    if let Some(o) = open {
        best = best.max(to - o);
    }
    best
}

/// The longest stretch in `[from, to]` during which the instances did not all route the same thing
/// (one a node, another none or another node).
pub fn longest_disagreement(ts: &[Timeline], from: f64, to: f64) -> f64 {
    longest(ts, from, to, |r| r.iter().any(|x| *x != r[0]))
}

/// The longest stretch in `[from, to]` during which two instances routed two different nodes: the
/// case that would put clients on two primaries.
pub fn longest_split(ts: &[Timeline], from: f64, to: f64) -> f64 {
    longest(ts, from, to, |r| {
        let nodes: Vec<&str> = r.iter().flatten().copied().collect();
        nodes.iter().any(|n| *n != nodes[0])
    })
}

/// Minimum, median and maximum; `None` for no values.
pub fn min_median_max(v: &[f64]) -> Option<[f64; 3]> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = match v.len() {
        0 => return None,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    };
    Some([v[0], mid, v[v.len() - 1]])
}

/// How the instances decided one event.
#[derive(Debug, Clone, Serialize)]
pub struct Agreement {
    pub scenario: String,
    pub iteration: usize,
    pub event_at: f64,
    pub old_primary: String,
    /// The cluster's new primary (`scripts/cluster leader` / `switchover`).
    pub new_primary: Option<String>,
    pub instances: Vec<String>,
    /// Seconds from the event until each instance routed the new primary (`None`: never).
    pub decided_s: Vec<Option<f64>>,
    /// Between the first and the last instance's decision.
    pub spread_s: Option<f64>,
    /// The longest stretch during which the instances did not route the same (a node or none).
    pub longest_disagreement_s: f64,
    /// The longest stretch during which two instances routed two different nodes.
    pub longest_split_s: f64,
    /// What each instance routed at the end of the window.
    pub routed_at_end: Vec<Option<String>>,
    /// Probe attempts through each instance that reached a node in recovery.
    pub replica_routings: Vec<usize>,
    /// Each instance's routed primary, seconds from the event.
    pub timelines: Vec<Timeline>,
}

/// The agreement of one event, from one [`Report`] per instance of the same event.
pub fn agreement(reports: &[&Report]) -> Option<Agreement> {
    let first = reports.first()?;
    let event = first.event_at;
    let old = first.old_primary.as_str();
    let server = |name: &str| {
        Node::all()
            .into_iter()
            .find(|n| n.name == name)
            .map(|n| n.server())
    };
    let old_server = server(old);
    let new_server = first.new_primary.as_deref().and_then(server);
    // Every instance routed the old primary before the event (scenarios::prepare waits for it);
    // events in the 5 s kept before the event come first.
    let ts: Vec<Timeline> = reports
        .iter()
        .map(|r| timeline(&r.proxy_events, old_server.as_deref(), event - 5.0))
        .collect();
    let end = reports
        .iter()
        .flat_map(|r| r.attempt_log.iter().map(|a| a.end))
        .fold(event, f64::max);
    let decided: Vec<Option<f64>> = ts
        .iter()
        .map(|t| {
            new_server
                .as_deref()
                .and_then(|n| decided_at(t, n, event))
                .map(|d| d - event)
        })
        .collect();
    let all: Option<Vec<f64>> = decided.iter().copied().collect();
    let spread_s = all
        .and_then(|v| min_median_max(&v))
        .map(|[lo, _, hi]| hi - lo);
    Some(Agreement {
        scenario: first.scenario.clone(),
        iteration: first.iteration,
        event_at: event,
        old_primary: old.to_string(),
        new_primary: first.new_primary.clone(),
        instances: reports.iter().map(|r| r.proxy.clone()).collect(),
        decided_s: decided,
        spread_s,
        longest_disagreement_s: longest_disagreement(&ts, event, end),
        longest_split_s: longest_split(&ts, event, end),
        routed_at_end: ts
            .iter()
            .map(|t| routed_at(t, end).map(str::to_string))
            .collect(),
        replica_routings: reports.iter().map(|r| r.replica_routings).collect(),
        timelines: ts
            .iter()
            .map(|t| {
                t.iter()
                    .filter(|(s, _)| *s >= event)
                    .map(|(s, r)| (s - event, r.clone()))
                    .collect()
            })
            .collect(),
    })
}

/// The per-event agreements of a scenario run through several instances (its reports come one
/// per instance per iteration, in instance order).
pub fn agreements(reports: &[Report]) -> Vec<Agreement> {
    let mut keys: Vec<(String, usize)> = Vec::new();
    for r in reports {
        let k = (r.scenario.clone(), r.iteration);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.iter()
        .filter_map(|(s, i)| {
            let same: Vec<&Report> = reports
                .iter()
                .filter(|r| &r.scenario == s && r.iteration == *i)
                .collect();
            agreement(&same)
        })
        .collect()
}

/// The figures of a run: the time between the instances' decisions over every event.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    pub events: usize,
    /// Events in which every instance routed the new primary.
    pub decided_by_all: usize,
    /// min, median, max of [`Agreement::spread_s`] in milliseconds.
    pub spread_ms: Option<[f64; 3]>,
    /// The longest disagreement of any event, in milliseconds.
    pub longest_disagreement_ms: f64,
    pub longest_split_ms: f64,
    pub replica_routings: usize,
    pub failover_inter_ms: f64,
}

pub fn figures(ags: &[Agreement]) -> Figures {
    let spreads: Vec<f64> = ags.iter().filter_map(|a| a.spread_s).collect();
    let ms = |v: f64| (v * 1e4).round() / 10.0;
    Figures {
        events: ags.len(),
        decided_by_all: spreads.len(),
        spread_ms: min_median_max(&spreads).map(|v| v.map(ms)),
        longest_disagreement_ms: ms(ags
            .iter()
            .map(|a| a.longest_disagreement_s)
            .fold(0.0, f64::max)),
        longest_split_ms: ms(ags.iter().map(|a| a.longest_split_s).fold(0.0, f64::max)),
        replica_routings: ags.iter().flat_map(|a| &a.replica_routings).sum(),
        failover_inter_ms: FAILOVER_INTER.as_secs_f64() * 1e3,
    }
}

/// `switchovers` planned switchovers then `crashes` crashes of the primary, each seen through
/// every instance (its own probe and long session); the reports, one per instance per event.
pub async fn events(proxies: &[&Proxy], switchovers: usize, crashes: usize) -> Result<Vec<Report>> {
    let mut reports = scenarios::switchover(proxies, switchovers).await?;
    for _ in 0..crashes {
        reports.extend(scenarios::crash(proxies).await?);
    }
    Ok(reports)
}

// ---------------------------------------------------------------------------------------------
// The Patroni REST load

/// Finished checks per server so far, from the proxy's `patroni_proxy_server_checks_total`
/// (summed over results): every check is one request to that node's REST API.
pub async fn checks_by_server(stats: SocketAddr) -> Result<BTreeMap<String, u64>> {
    let text = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?
        .get(format!("http://{stats}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(parse_checks(&text))
}

/// The per-server sums of `patroni_proxy_server_checks_total` in a Prometheus text exposition.
pub fn parse_checks(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("patroni_proxy_server_checks_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let server = labels
            .split(',')
            .find_map(|l| l.strip_prefix("server=\""))
            .map(|s| s.trim_end_matches('"').to_string());
        if let (Some(server), Ok(v)) = (server, value.trim().parse::<f64>()) {
            *out.entry(server).or_insert(0) += v as u64;
        }
    }
    out
}

/// The REST requests per second each node received from a set of instances.
#[derive(Debug, Clone, Serialize)]
pub struct Load {
    pub instances: usize,
    pub what: String,
    pub window_s: f64,
    /// Requests per second per node, all instances together.
    pub per_node: BTreeMap<String, f64>,
    /// The same, instance by instance.
    pub per_instance: Vec<BTreeMap<String, f64>>,
}

fn rates(
    before: &[BTreeMap<String, u64>],
    after: &[BTreeMap<String, u64>],
    secs: f64,
) -> (BTreeMap<String, f64>, Vec<BTreeMap<String, f64>>) {
    let mut total = BTreeMap::new();
    let mut each = Vec::new();
    for (b, a) in before.iter().zip(after) {
        let mut one = BTreeMap::new();
        for (server, n) in a {
            let d = n.saturating_sub(b.get(server).copied().unwrap_or(0)) as f64 / secs.max(1e-3);
            one.insert(server.clone(), d);
            *total.entry(server.clone()).or_insert(0.0) += d;
        }
        each.push(one);
    }
    (total, each)
}

/// The REST load of `proxies` in steady state (a primary routed, nothing in doubt) over `window`.
pub async fn steady_load(proxies: &[&Proxy], window: Duration) -> Result<Load> {
    let read = || async {
        let mut v = Vec::new();
        for p in proxies {
            v.push(checks_by_server(p.stats).await?);
        }
        Ok::<_, anyhow::Error>((now(), v))
    };
    let (t0, before) = read().await?;
    // The measurement window itself.
    tokio::time::sleep(window).await;
    let (t1, after) = read().await?;
    let (per_node, per_instance) = rates(&before, &after, t1 - t0);
    Ok(Load {
        instances: proxies.len(),
        what: "steady".into(),
        window_s: t1 - t0,
        per_node,
        per_instance,
    })
}

/// When, and every instance's finished checks per server then.
type Sample = (f64, Vec<BTreeMap<String, u64>>);

/// Samples every instance's check counters every 100 ms, to find the peak REST load during a
/// failover (checks at `failover_inter` while the primary is in doubt).
pub struct LoadSampler {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: CancellationToken,
    instances: usize,
}

impl LoadSampler {
    pub fn start(proxies: &[&Proxy]) -> LoadSampler {
        let stats: Vec<SocketAddr> = proxies.iter().map(|p| p.stats).collect();
        let samples: Arc<Mutex<Vec<_>>> = Default::default();
        let stop = CancellationToken::new();
        let (s, st) = (samples.clone(), stop.clone());
        tokio::spawn(async move {
            // Bounded by the stop token; the count bound is a safety net (an hour at 100 ms).
            for _ in 0..36_000 {
                let mut v = Vec::new();
                for a in &stats {
                    match checks_by_server(*a).await {
                        Ok(c) => v.push(c),
                        Err(_) => break,
                    }
                }
                if v.len() == stats.len() {
                    s.lock().unwrap().push((now(), v));
                }
                tokio::select! {
                    _ = st.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        });
        LoadSampler {
            samples,
            stop,
            instances: proxies.len(),
        }
    }

    /// The highest load of any node over any `window` within `[from, to]`, all instances
    /// together (and that window's per-instance rates).
    pub fn peak(&self, from: f64, to: f64, window: f64) -> Option<Load> {
        let s = self.samples.lock().unwrap();
        let in_range: Vec<&Sample> = s.iter().filter(|(t, _)| *t >= from && *t <= to).collect();
        let mut best: Option<(f64, Load)> = None;
        for (i, (t0, before)) in in_range.iter().enumerate() {
            let Some((t1, after)) = in_range[i..].iter().find(|(t, _)| *t - *t0 >= window) else {
                break;
            };
            let (per_node, per_instance) = rates(before, after, t1 - t0);
            let top = per_node.values().copied().fold(0.0, f64::max);
            if best.as_ref().is_none_or(|(b, _)| top > *b) {
                let load = Load {
                    instances: self.instances,
                    what: "failover peak".into(),
                    window_s: t1 - t0,
                    per_node,
                    per_instance,
                };
                best = Some((top, load));
            }
        }
        best.map(|(_, l)| l)
    }
}

impl Drop for LoadSampler {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
