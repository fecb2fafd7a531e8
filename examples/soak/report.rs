//! The soak's decisions, as pure functions: which event is due when, whether RSS and descriptors
//! stayed flat, what pgbench's output says, and the Markdown table and verdict lines.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::harness::{Attempt, Outcome};
use crate::Args;

/// How far RSS may end above the first steady sample and still count as flat: 5 %, at least
/// 2 MiB (allocator arenas settle in steps; a leak per session grows without bound).
const RSS_SLACK_PERCENT: u64 = 5;
const RSS_SLACK_MIN_KIB: u64 = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Switchover,
    Crash,
}

/// The events due at multiples of each period strictly inside the run, in time order; a crash
/// replaces a switchover due at the same second.
pub fn plan(duration_s: u64, switchover_every: u64, crash_every: u64) -> Vec<(u64, EventKind)> {
    let mut out = Vec::new();
    for t in 1..duration_s {
        let due = |every: u64| every > 0 && t % every == 0;
        if due(crash_every) {
            out.push((t, EventKind::Crash));
        } else if due(switchover_every) {
            out.push((t, EventKind::Switchover));
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Growth {
    pub first: u64,
    pub last: u64,
    pub max: u64,
    /// last - first.
    pub growth: i64,
    /// max - first.
    pub max_growth: i64,
    /// Least-squares slope over the steady part, per minute.
    pub slope_per_min: f64,
}

/// Growth of `points` (time in s, value); `None` for fewer than two points.
pub fn growth(points: &[(f64, u64)]) -> Option<Growth> {
    let (&(_, first), &(_, last)) = (points.first()?, points.last()?);
    if points.len() < 2 {
        return None;
    }
    let max = points.iter().map(|p| p.1).max().unwrap_or(first);
    let n = points.len() as f64;
    let mt = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mv = points.iter().map(|p| p.1 as f64).sum::<f64>() / n;
    let num: f64 = points.iter().map(|p| (p.0 - mt) * (p.1 as f64 - mv)).sum();
    let den: f64 = points.iter().map(|p| (p.0 - mt).powi(2)).sum();
    let slope = if den > 0.0 { num / den * 60.0 } else { 0.0 };
    Some(Growth {
        first,
        last,
        max,
        growth: last as i64 - first as i64,
        max_growth: max as i64 - first as i64,
        slope_per_min: slope,
    })
}

pub fn rss_flat(g: &Growth) -> bool {
    let slack = (g.first * RSS_SLACK_PERCENT / 100).max(RSS_SLACK_MIN_KIB);
    g.growth <= slack as i64
}

/// Resource use with no session open, before the load and after it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Idle {
    pub rss_kib: u64,
    pub fds: u64,
    pub threads: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub pass: bool,
    pub reasons: Vec<String>,
    pub rss_steady: Option<Growth>,
    pub fds_steady: Option<Growth>,
    pub idle_fd_growth: Option<i64>,
    /// RSS KiB with no session open, before the load and after it.
    pub idle_rss: Option<(u64, u64)>,
    /// WARN and ERROR lines the proxy logged (not judged: failovers log some by design).
    pub proxy_warnings: usize,
    pub replica_routings: u64,
    pub probes: u64,
    pub probe_errors: u64,
    pub tx_ok: u64,
    pub tx_failed: u64,
    pub pgbench_aborted_clients: u64,
    pub switchovers: (usize, usize),
    pub crashes: (usize, usize),
}

pub struct Outcomes<'a> {
    pub samples: &'a [Sample],
    pub warmup: f64,
    pub idle: (Option<Idle>, Option<Idle>),
    pub probes: &'a [Attempt],
    pub runs: &'a [PgbenchRun],
    pub events: &'a [EventRecord],
    pub planned: &'a [(u64, EventKind)],
    pub proxy_warnings: usize,
    pub proxy_died: bool,
    pub interrupted: bool,
}

pub fn verdict(o: &Outcomes) -> Verdict {
    let steady = |f: fn(&Sample) -> Option<u64>| -> Vec<(f64, u64)> {
        let s = o.samples.iter().filter(|s| s.t_s >= o.warmup);
        s.filter_map(|s| Some((s.t_s, f(s)?))).collect()
    };
    let rss_steady = growth(&steady(|s| s.rss_kib));
    let fds_steady = growth(&steady(|s| s.fds));
    let (idle_fd_growth, idle_rss) = match o.idle {
        (Some(b), Some(a)) => (
            Some(a.fds as i64 - b.fds as i64),
            Some((b.rss_kib, a.rss_kib)),
        ),
        _ => (None, None),
    };
    let replica_probes = o
        .probes
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Replica { .. }));
    let replica_pgbench: u64 = o.runs.iter().map(|r| r.read_only_errors).sum();
    let replica_routings = replica_probes.count() as u64 + replica_pgbench;
    let probe_errors = o.probes.iter().filter(|a| !a.outcome.is_ok()).count() as u64;
    let count = |k: EventKind| {
        let done = o.events.iter().filter(|e| e.kind == k && e.ok).count();
        (done, o.planned.iter().filter(|p| p.1 == k).count())
    };
    let (switchovers, crashes) = (count(EventKind::Switchover), count(EventKind::Crash));
    let mut reasons = Vec::new();
    match &rss_steady {
        None => reasons.push("fewer than two samples after the warm-up: no steady part".into()),
        Some(g) if !rss_flat(g) => {
            reasons.push(format!("RSS grew {} KiB after the warm-up", g.growth))
        }
        Some(_) => {}
    }
    match idle_fd_growth {
        None => reasons.push("no idle descriptor count before and after the load".into()),
        Some(d) if d > 0 => reasons.push(format!(
            "{d} more descriptors idle after the load than before"
        )),
        Some(_) => {}
    }
    if replica_routings > 0 {
        reasons.push(format!("{replica_routings} replica routings"));
    }
    if o.runs.iter().all(|r| r.processed == 0) {
        reasons.push("pgbench committed no transaction".into());
    }
    if o.proxy_died {
        reasons.push("the proxy process ended during the run".into());
    }
    if o.interrupted {
        reasons.push("interrupted before the end".into());
    }
    for (what, (done, planned)) in [("switchovers", switchovers), ("crashes", crashes)] {
        if done < planned {
            reasons.push(format!("only {done} of {planned} {what} done"));
        }
    }
    Verdict {
        pass: reasons.is_empty(),
        reasons,
        rss_steady,
        fds_steady,
        idle_fd_growth,
        idle_rss,
        proxy_warnings: o.proxy_warnings,
        replica_routings,
        probes: o.probes.len() as u64,
        probe_errors,
        tx_ok: o.runs.iter().map(|r| r.processed).sum(),
        tx_failed: o.runs.iter().map(|r| r.failed + r.aborted_clients).sum(),
        pgbench_aborted_clients: o.runs.iter().map(|r| r.aborted_clients).sum(),
        switchovers,
        crashes,
    }
}

// ---------------------------------------------------------------------------------------------
// pgbench

#[derive(Debug, Clone, Default, Serialize)]
pub struct PgbenchRun {
    pub start_s: f64,
    pub end_s: f64,
    /// `-C`: a new connection per transaction.
    pub connect_per_tx: bool,
    pub exit: Option<i32>,
    pub processed: u64,
    pub failed: u64,
    pub aborted_clients: u64,
    /// "read-only transaction" errors: a write that reached a replica.
    pub read_only_errors: u64,
    pub first_error: Option<String>,
}

/// Reads pgbench's summary (stdout) and its per-client errors (stderr).
pub fn parse_pgbench(stdout: &str, stderr: &str, run: &mut PgbenchRun) {
    let number = |prefix: &str| {
        let rest = stdout.lines().find_map(|l| l.strip_prefix(prefix))?;
        let digits: String = rest
            .trim_start()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse::<u64>().ok()
    };
    run.processed = number("number of transactions actually processed:").unwrap_or(0);
    run.failed = number("number of failed transactions:").unwrap_or(0);
    let lines = || stderr.lines();
    run.aborted_clients = lines()
        .filter(|l| l.contains("client ") && l.contains(" aborted"))
        .count() as u64;
    run.read_only_errors = lines()
        .filter(|l| l.contains("read-only transaction"))
        .count() as u64;
    run.first_error = lines().find(|l| l.contains("error")).map(str::to_string);
}

#[derive(Debug, Clone, Serialize)]
pub struct EventRecord {
    pub kind: EventKind,
    pub due_s: u64,
    pub start_s: f64,
    pub end_s: f64,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub rss_kib: Option<u64>,
    pub fds: Option<u64>,
    pub threads: Option<u64>,
    pub sessions: Option<u64>,
    pub probes_ok: u64,
    pub probes_err: u64,
    pub replica: u64,
    pub note: String,
}

/// (VmRSS KiB, open descriptors, threads) of a live process; `None` once it has ended.
// ---------------------------------------------------------------------------------------------
// Report

#[derive(Serialize)]
pub struct Report<'a> {
    pub args: &'a Args,
    pub started_at: f64,
    pub planned: &'a [(u64, EventKind)],
    pub idle_before: Option<Idle>,
    pub idle_after: Option<Idle>,
    pub samples: &'a [Sample],
    pub events: &'a [EventRecord],
    pub pgbench: &'a [PgbenchRun],
    pub probe_outcomes: BTreeMap<String, u64>,
    pub proxy_frontend_at_end: Option<serde_json::Value>,
    /// The proxy's WARN and ERROR log lines (the first 500).
    pub proxy_warnings: Vec<String>,
    pub verdict: &'a Verdict,
}

/// (ok, errors, replica) of the probe attempts started in `[from, to)`.
pub fn probe_window(attempts: &[Attempt], from: f64, to: f64) -> (u64, u64, u64) {
    let (mut ok, mut err, mut replica) = (0, 0, 0);
    for x in attempts.iter().filter(|x| x.start >= from && x.start < to) {
        match x.outcome {
            Outcome::Primary { .. } => ok += 1,
            Outcome::Replica { .. } => replica += 1,
            _ => err += 1,
        }
    }
    (ok, err, replica)
}

/// How many probe attempts ended each way (`ok`, `replica`, a SQLSTATE, `reset`, ...).
pub fn probe_outcomes(attempts: &[Attempt]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for x in attempts {
        *out.entry(x.outcome.label()).or_insert(0) += 1;
    }
    out
}

pub fn opt(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

pub fn markdown(samples: &[Sample], idle: (Option<Idle>, Option<Idle>)) -> String {
    let mut s = String::from(
        "| t (s) | RSS KiB | fds | threads | sessions | probes ok/err | event |\n|---:|---:|---:|---:|---:|---:|---|\n",
    );
    let idle_row = |label: &str, i: Option<Idle>| match i {
        Some(i) => format!(
            "| {label} | {} | {} | {} | 0 | | no session open |\n",
            i.rss_kib, i.fds, i.threads
        ),
        None => format!("| {label} | - | - | - | - | | not measured |\n"),
    };
    s += &idle_row("idle before", idle.0);
    for x in samples {
        s += &format!(
            "| {:.0} | {} | {} | {} | {} | {}/{} | {} |\n",
            x.t_s,
            opt(x.rss_kib),
            opt(x.fds),
            opt(x.threads),
            opt(x.sessions),
            x.probes_ok,
            x.probes_err,
            x.note
        );
    }
    s += &idle_row("idle after", idle.1);
    s
}

pub fn verdict_text(v: &Verdict, warmup: u64) -> String {
    let g = |g: &Option<Growth>, unit: &str| match g {
        Some(g) => format!(
            "{} -> {} {unit} ({:+}), max {} ({:+}), slope {:+.1} {unit}/min",
            g.first, g.last, g.growth, g.max, g.max_growth, g.slope_per_min
        ),
        None => "no steady part".into(),
    };
    let mut s = format!(
        "RSS after {warmup} s: {}; idle RSS before -> after: {}\n\
         fds after {warmup} s: {}; idle fds after - before: {}\n\
         replica routings: {} (probes {}, probe errors {})\ntransactions ok {}, failed {} \
         (of which pgbench clients aborted {})\nswitchovers {}/{}, crashes {}/{}; \
         proxy WARN/ERROR log lines {}\n",
        g(&v.rss_steady, "KiB"),
        v.idle_rss.map_or("-".into(), |(b, a)| format!(
            "{b} -> {a} KiB ({:+})",
            a as i64 - b as i64
        )),
        g(&v.fds_steady, "fds"),
        v.idle_fd_growth.map_or("-".into(), |d| format!("{d:+}")),
        v.replica_routings,
        v.probes,
        v.probe_errors,
        v.tx_ok,
        v.tx_failed,
        v.pgbench_aborted_clients,
        v.switchovers.0,
        v.switchovers.1,
        v.crashes.0,
        v.crashes.1,
        v.proxy_warnings
    );
    s += &if v.pass {
        "VERDICT: PASS (RSS and descriptors flat, 0 replica routings, every event done)".to_string()
    } else {
        format!("VERDICT: FAIL: {}", v.reasons.join("; "))
    };
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_puts_a_crash_where_a_switchover_is_also_due_and_nothing_at_the_end() {
        let p = plan(240, 60, 180);
        let want = vec![
            (60, EventKind::Switchover),
            (120, EventKind::Switchover),
            (180, EventKind::Crash),
        ];
        assert_eq!(p, want);
        let full = plan(1800, 120, 600);
        assert_eq!(full.iter().filter(|e| e.1 == EventKind::Crash).count(), 2);
        assert_eq!(
            full.iter().filter(|e| e.1 == EventKind::Switchover).count(),
            12
        );
        assert!(plan(600, 0, 0).is_empty());
    }

    #[test]
    fn growth_and_flatness() {
        let flat = growth(&[(180.0, 20_000), (190.0, 21_000), (200.0, 20_500)]).unwrap();
        assert_eq!((flat.growth, flat.max_growth), (500, 1000));
        assert!(rss_flat(&flat));
        let leak = growth(&[(180.0, 20_000), (240.0, 30_000)]).unwrap();
        assert!(!rss_flat(&leak));
        assert!((leak.slope_per_min - 10_000.0).abs() < 1e-6);
        assert!(growth(&[(1.0, 1)]).is_none());
    }

    #[test]
    fn pgbench_summary_and_aborted_clients_are_counted() {
        let out = "number of transactions actually processed: 1234\nnumber of failed transactions: 2 (0.1%)\n";
        let err = "pgbench: error: client 1 aborted in command 8 (SQL) of script 0; perhaps the backend died\n\
                   pgbench: error: client 3 script 0 aborted in command 5 query 0: ERROR:  cannot execute UPDATE in a read-only transaction\n";
        let mut r = PgbenchRun::default();
        parse_pgbench(out, err, &mut r);
        assert_eq!(
            (r.processed, r.failed, r.aborted_clients, r.read_only_errors),
            (1234, 2, 2, 1)
        );
    }
}
