//! Many failovers in a row through the same proxy processes (issue 14 item 5): crashes of the
//! primary and planned switchovers, alternating, each run as [`scenarios::crash`] or
//! [`scenarios::switchover`] does (a probe writing a numbered row per new connection, so every
//! acknowledged write is known and read back afterwards). After each event: the proxies' RSS and
//! open descriptors, and which node patroni-proxy routes against Patroni's own leader. Lost
//! acknowledged writes are split into the loss Patroni documents for asynchronous replication
//! (acknowledged by the crashed primary before the crash) and any other (which would be ours).

use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use crate::harness::*;
use crate::scenarios::{self, Report};

/// One sample of a proxy process.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Events done when it was taken (0 = before the first).
    pub events: usize,
    pub at: f64,
    pub proxy: String,
    pub rss_kib: Option<u64>,
    pub fds: Option<usize>,
}

/// After an event: the leader Patroni names and the server patroni-proxy routes.
#[derive(Debug, Clone, Serialize)]
pub struct Routed {
    pub event: usize,
    pub kind: String,
    pub patroni_leader: Option<String>,
    pub routed: Option<String>,
    /// Seconds after the event's end until they agreed (`None`: not within 10 s).
    pub agreed_after_s: Option<f64>,
}

/// Per proxy, summed over the run.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Totals {
    pub proxy: String,
    pub events: usize,
    pub attempts: usize,
    pub acked_writes: usize,
    pub replica_routings: usize,
    pub two_primaries: usize,
    pub client_errors: usize,
    /// Acknowledged by the crashed primary before its crash, missing on the new one: Patroni's
    /// documented loss with asynchronous replication.
    pub lost_async: usize,
    /// Any other acknowledged write missing afterwards.
    pub lost_other: usize,
    pub rss_kib_first: Option<u64>,
    pub rss_kib_last: Option<u64>,
    pub rss_kib_max: Option<u64>,
    pub fds_first: Option<usize>,
    pub fds_last: Option<usize>,
    pub fds_max: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Churn {
    pub crashes: usize,
    pub switchovers: usize,
    pub seconds: f64,
    pub totals: Vec<Totals>,
    pub samples: Vec<Sample>,
    pub routed: Vec<Routed>,
    /// Routed samples where patroni-proxy's server was not Patroni's leader's within 10 s.
    pub routed_mismatches: usize,
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

fn sample(proxies: &[&Proxy], events: usize) -> Vec<Sample> {
    proxies
        .iter()
        .map(|p| Sample {
            events,
            at: now(),
            proxy: p.label().to_string(),
            rss_kib: p.pid().and_then(rss_kib),
            fds: p.pid().and_then(fds),
        })
        .collect()
}

/// Whether lost write `n` of `r` is the documented asynchronous loss of a crash.
fn async_loss(r: &Report, n: i32) -> bool {
    r.scenario == "crash"
        && r.attempt_log.iter().any(|a| {
            a.n as i32 == n
                && a.outcome
                    == Outcome::Primary {
                        node: r.old_primary.clone(),
                    }
                && a.end <= r.event_at + 1.0
        })
}

/// The tally of one proxy's reports and samples.
pub fn totals(proxy: &str, reports: &[Report], samples: &[Sample]) -> Totals {
    let rs: Vec<&Report> = reports.iter().filter(|r| r.proxy == proxy).collect();
    let ss: Vec<&Sample> = samples.iter().filter(|s| s.proxy == proxy).collect();
    let lost: Vec<(bool, i32)> = rs
        .iter()
        .flat_map(|r| r.lost_writes.iter().map(|n| (async_loss(r, *n), *n)))
        .collect();
    let rss: Vec<u64> = ss.iter().filter_map(|s| s.rss_kib).collect();
    let fd: Vec<usize> = ss.iter().filter_map(|s| s.fds).collect();
    Totals {
        proxy: proxy.to_string(),
        events: rs.len(),
        attempts: rs.iter().map(|r| r.attempts).sum(),
        acked_writes: rs.iter().map(|r| r.acked_writes).sum(),
        replica_routings: rs.iter().map(|r| r.replica_routings).sum(),
        two_primaries: rs.iter().map(|r| r.two_primaries).sum(),
        client_errors: rs.iter().map(|r| r.client_errors).sum(),
        lost_async: lost.iter().filter(|l| l.0).count(),
        lost_other: lost.iter().filter(|l| !l.0).count(),
        rss_kib_first: rss.first().copied(),
        rss_kib_last: rss.last().copied(),
        rss_kib_max: rss.iter().copied().max(),
        fds_first: fd.first().copied(),
        fds_last: fd.last().copied(),
        fds_max: fd.iter().copied().max(),
    }
}

/// `crashes` crash failovers and `switchovers` switchovers, alternating (crash first), through
/// the same `proxies`.
pub async fn churn(
    proxies: &[&Proxy],
    crashes: usize,
    switchovers: usize,
) -> Result<(Vec<Report>, Churn)> {
    let started = now();
    let mut reports = Vec::new();
    let mut c = Churn {
        crashes,
        switchovers,
        samples: sample(proxies, 0),
        ..Churn::default()
    };
    let (mut crashes_left, mut switchovers_left) = (crashes, switchovers);
    let mut event = 0;
    while crashes_left + switchovers_left > 0 {
        let crash = crashes_left > 0 && (event % 2 == 0 || switchovers_left == 0);
        let (kind, mut rs) = if crash {
            crashes_left -= 1;
            ("crash", scenarios::crash(proxies).await?)
        } else {
            switchovers_left -= 1;
            ("switchover", scenarios::switchover(proxies, 1).await?)
        };
        event += 1;
        for r in &mut rs {
            r.iteration = event;
        }
        reports.extend(rs);
        let ended = now();
        let agreed = poll(
            SECS_10,
            Duration::from_millis(200),
            "routing = leader",
            || async {
                let l = leader().await?;
                for p in proxies.iter().filter(|p| p.kind == Kind::PatroniProxy) {
                    if p.routed().await != Some(l.server()) {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await
        .ok()
        .map(|_| now() - ended);
        let patroni_leader = leader().await;
        for p in proxies.iter().filter(|p| p.kind == Kind::PatroniProxy) {
            c.routed.push(Routed {
                event,
                kind: kind.to_string(),
                patroni_leader: patroni_leader.as_ref().map(Node::server),
                routed: p.routed().await,
                agreed_after_s: agreed,
            });
        }
        c.samples.extend(sample(proxies, event));
        eprintln!(
            "churn: event {event} ({kind}) done, {} crashes and {} switchovers left",
            crashes_left, switchovers_left
        );
    }
    c.seconds = now() - started;
    c.routed_mismatches = c
        .routed
        .iter()
        .filter(|r| r.agreed_after_s.is_none())
        .count();
    c.totals = proxies
        .iter()
        .map(|p| totals(p.label(), &reports, &c.samples))
        .collect();
    Ok((reports, c))
}

const SECS_10: Duration = Duration::from_secs(10);
