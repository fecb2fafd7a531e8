//! Soak: pgbench through patroni-proxy on the real local cluster for N minutes, with a planned
//! switchover every S seconds and a crash of the primary every C seconds, while the proxy's RSS,
//! open descriptors, threads and sessions are sampled every 10 s and a probe opens a connection
//! every 200 ms to count replica routings. Prints a Markdown table and a verdict; writes JSON.
//!
//! Run it with `scripts/soak` (builds, starts the cluster, cleans up); see its `--help`. The cluster
//! and probe code is the end-to-end tests' (`e2e/src/harness.rs`, the `patroni-proxy-e2e` crate); the plan, the verdict and the
//! table are pure functions in `report.rs`. Not part of the test suite.

use patroni_proxy_e2e::harness;
mod report;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use harness::{cluster, now, poll, stats_json, Node, Probe, Proxy};
use report::{
    markdown, opt, parse_pgbench, plan, probe_outcomes, probe_window, verdict, verdict_text,
    EventKind, EventRecord, Idle, Outcomes, PgbenchRun, Report, Sample,
};
use serde::Serialize;
use tokio::process::Command;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

const USAGE: &str = "soak [--minutes N (30)] [--switchover-every S (120, 0 = none)] \
[--crash-every S (600, 0 = none)] [--sample-every S (10)] [--warmup S (180)] [--clients N (4)] \
[--rate TPS (100, 0 = unthrottled)] [--run-secs S (20)] [--scale N (4)] [--out FILE.json] \
[--proxy-bin PATH] [--pgbench PATH] [--proxy-pidfile PATH]";

/// A new connection through the proxy this often, each asking `pg_is_in_recovery()`.
const PROBE_EVERY: Duration = Duration::from_millis(200);
/// Upper bound of one cluster event (a crash waits for promotion, start-node and wait-healthy 180).
const EVENT_LIMIT: Duration = Duration::from_secs(330);

#[derive(Debug, Clone, Serialize)]
pub struct Args {
    minutes: u64,
    switchover_every: u64,
    crash_every: u64,
    sample_every: u64,
    warmup: u64,
    clients: u32,
    rate: u32,
    run_secs: u64,
    scale: u32,
    out: Option<PathBuf>,
    proxy_bin: PathBuf,
    pgbench: PathBuf,
    proxy_pidfile: Option<PathBuf>,
}

fn args() -> anyhow::Result<Args> {
    // The proxy built beside this example: target/<profile>/examples/soak -> target/<profile>/.
    let exe = std::env::current_exe()?;
    let mut a = Args {
        minutes: 30,
        switchover_every: 120,
        crash_every: 600,
        sample_every: 10,
        warmup: 180,
        clients: 4,
        rate: 100,
        run_secs: 20,
        scale: 4,
        out: None,
        proxy_bin: exe
            .parent()
            .and_then(|p| p.parent())
            .map(|p| p.join("patroni-proxy"))
            .context("where is patroni-proxy?")?,
        pgbench: "/usr/lib/postgresql/15/bin/pgbench".into(),
        proxy_pidfile: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--minutes" => a.minutes = value()?.parse()?,
            "--switchover-every" => a.switchover_every = value()?.parse()?,
            "--crash-every" => a.crash_every = value()?.parse()?,
            "--sample-every" => a.sample_every = value()?.parse()?,
            "--warmup" => a.warmup = value()?.parse()?,
            "--clients" => a.clients = value()?.parse()?,
            "--rate" => a.rate = value()?.parse()?,
            "--run-secs" => a.run_secs = value()?.parse()?,
            "--scale" => a.scale = value()?.parse()?,
            "--out" => a.out = Some(value()?.into()),
            "--proxy-bin" => a.proxy_bin = value()?.into(),
            "--pgbench" => a.pgbench = value()?.into(),
            "--proxy-pidfile" => a.proxy_pidfile = Some(value()?.into()),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\nusage: {USAGE}"),
        }
    }
    // The harness's probe starts at most 36 000 attempts (2 h at 200 ms).
    if !(1..=120).contains(&a.minutes) {
        bail!("--minutes must be 1..=120");
    }
    if !(1..=600).contains(&a.sample_every) || !(1..=3600).contains(&a.run_secs) {
        bail!("--sample-every must be 1..=600 and --run-secs 1..=3600");
    }
    if !(1..=1000).contains(&a.clients) || !(1..=10_000).contains(&a.scale) {
        bail!("--clients must be 1..=1000 and --scale 1..=10000");
    }
    for (what, p) in [("--proxy-bin", &a.proxy_bin), ("--pgbench", &a.pgbench)] {
        if !p.is_file() {
            bail!(
                "{what} {} is missing (scripts/soak builds and finds both)",
                p.display()
            );
        }
    }
    Ok(a)
}

fn pgbench_cmd(a: &Args, proxy: SocketAddr, extra: &[String]) -> Command {
    let mut c = Command::new(&a.pgbench);
    c.args([
        "-h",
        &proxy.ip().to_string(),
        "-p",
        &proxy.port().to_string(),
    ])
    .args(["-U", "postgres"])
    .args(extra)
    .arg("postgres")
    .env("PGPASSWORD", harness::PASSWORD)
    // Longer than the proxy's hold_timeout (10 s): a held client is answered, not given up on.
    .env("PGCONNECT_TIMEOUT", "15")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    c
}

/// Consecutive pgbench runs of `run_secs` until `end` (pgbench ends a client for good at its first
/// connection error, so short runs keep the load going across failovers); every other run with
/// `-C`, so sessions are opened and closed all the time. Interrupted only by `abort`.
async fn pgbench_loop(
    a: Args,
    proxy: SocketAddr,
    t0: f64,
    end: Instant,
    abort: CancellationToken,
) -> Vec<PgbenchRun> {
    let mut runs = Vec::new();
    // Bounded by `end`; the count bound is a safety net.
    for i in 0..1_000_000u64 {
        let left = end.saturating_duration_since(Instant::now()).as_secs();
        if left < 2 || abort.is_cancelled() {
            break;
        }
        let secs = a.run_secs.min(left);
        let mut extra = vec![
            "-n".into(),
            "-c".into(),
            a.clients.to_string(),
            "-j".into(),
            "2".into(),
        ];
        extra.extend(["-T".into(), secs.to_string()]);
        if a.rate > 0 {
            extra.extend(["-R".into(), a.rate.to_string()]);
        }
        let mut run = PgbenchRun {
            start_s: now() - t0,
            connect_per_tx: i % 2 == 1,
            ..Default::default()
        };
        if run.connect_per_tx {
            extra.push("-C".into());
        }
        let out = tokio::select! {
            _ = abort.cancelled() => break,
            r = timeout(Duration::from_secs(secs + 60), pgbench_cmd(&a, proxy, &extra).output()) => r,
        };
        run.end_s = now() - t0;
        match out {
            Ok(Ok(o)) => {
                run.exit = o.status.code();
                parse_pgbench(
                    &String::from_utf8_lossy(&o.stdout),
                    &String::from_utf8_lossy(&o.stderr),
                    &mut run,
                );
            }
            Ok(Err(e)) => run.first_error = Some(format!("pgbench did not run: {e}")),
            Err(_) => run.first_error = Some(format!("pgbench did not end within {} s", secs + 60)),
        }
        let quick = run.end_s - run.start_s < 1.0;
        runs.push(run);
        if quick {
            // A run that could not even start (no primary yet): not a busy loop.
            tokio::select! {
                _ = abort.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
    runs
}

// ---------------------------------------------------------------------------------------------
// Cluster events

async fn wait_healthy(secs: u64) -> anyhow::Result<()> {
    cluster(&["wait-healthy", &secs.to_string()])
        .await
        .map(drop)
        .context("cluster not healthy")
}

async fn switchover() -> anyhow::Result<String> {
    wait_healthy(60).await?;
    let old = harness::leader()
        .await
        .map(|n| n.name)
        .unwrap_or_else(|| "?".into());
    let out = cluster(&["switchover"]).await?;
    let new = out.split_whitespace().next().unwrap_or("?");
    Ok(format!("switchover {old} -> {new}"))
}

/// `scripts/cluster crash` (SIGKILL of Patroni, the postmaster and its children, as the e2e crash
/// scenario), then the node is started again and rejoins as a replica.
async fn crash() -> anyhow::Result<String> {
    wait_healthy(60).await?;
    let old = harness::leader()
        .await
        .context("no single leader to crash")?;
    let t = now();
    cluster(&["crash", &old.name]).await?;
    let new = harness::wait_leader_other_than(&old, Duration::from_secs(90)).await?;
    let promoted = now() - t;
    cluster(&["start-node", &old.name]).await?;
    wait_healthy(180).await?;
    Ok(format!(
        "crash {}: {} primary after {promoted:.1} s, {} back as replica after {:.1} s",
        old.name,
        new.name,
        old.name,
        now() - t
    ))
}

/// Runs the plan until `end`; an event in progress at `end` or at `abort` is finished (each is
/// bounded by EVENT_LIMIT), none is started after.
async fn run_events(
    planned: Vec<(u64, EventKind)>,
    start: Instant,
    t0: f64,
    end: Instant,
    abort: CancellationToken,
    log: Arc<Mutex<Vec<EventRecord>>>,
) {
    for (due_s, kind) in planned {
        tokio::select! {
            _ = abort.cancelled() => return,
            _ = tokio::time::sleep_until(start + Duration::from_secs(due_s)) => {}
        }
        if Instant::now() >= end {
            return;
        }
        let start_s = now() - t0;
        let r = match kind {
            EventKind::Switchover => timeout(EVENT_LIMIT, switchover()).await,
            EventKind::Crash => timeout(EVENT_LIMIT, crash()).await,
        };
        let (ok, detail) = match r {
            Ok(Ok(d)) => (true, d),
            Ok(Err(e)) => (false, format!("{kind:?} failed: {e:#}")),
            Err(_) => (
                false,
                format!("{kind:?} did not end within {EVENT_LIMIT:?}"),
            ),
        };
        let rec = EventRecord {
            kind,
            due_s,
            start_s,
            end_s: now() - t0,
            ok,
            detail,
        };
        eprintln!(
            "[{:>6.0} s] {} ({:.1} s)",
            rec.end_s,
            rec.detail,
            rec.end_s - rec.start_s
        );
        log.lock().unwrap().push(rec);
    }
}

// ---------------------------------------------------------------------------------------------
// Sampling the proxy

fn proc_usage(pid: u32) -> Option<(u64, u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |key: &str| -> Option<String> {
        let v = status.lines().find_map(|l| l.strip_prefix(key))?;
        v.split_whitespace().next().map(str::to_string)
    };
    if field("State:").as_deref() == Some("Z") {
        return None;
    }
    let rss = field("VmRSS:")?.parse().ok()?;
    let threads = field("Threads:")?.parse().ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((rss, fds, threads))
}

async fn sessions(proxy: &Proxy) -> Option<u64> {
    let v = timeout(Duration::from_secs(3), stats_json(proxy.stats))
        .await
        .ok()?
        .ok()?;
    v["frontend"]["scur"].as_u64()
}

/// The proxy with no session open: waits (at most 60 s) for none, then the fewest descriptors of
/// ten samples 300 ms apart (a health check's connection is open only for milliseconds).
async fn idle(proxy: &Proxy, pid: u32) -> anyhow::Result<Idle> {
    poll(
        Duration::from_secs(60),
        Duration::from_millis(200),
        "no open session",
        || async { (sessions(proxy).await == Some(0)).then_some(()) },
    )
    .await?;
    let mut best = Idle {
        rss_kib: 0,
        fds: u64::MAX,
        threads: u64::MAX,
    };
    for _ in 0..10 {
        let (rss_kib, fds, threads) = proc_usage(pid).context("the proxy has ended")?;
        best = Idle {
            rss_kib,
            fds: best.fds.min(fds),
            threads: best.threads.min(threads),
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(best)
}

// ---------------------------------------------------------------------------------------------
// The run

/// What the sampling loop saw.
struct Sampled {
    samples: Vec<Sample>,
    proxy_died: bool,
    interrupted: bool,
}

/// One sample every `sample_every` until `end`, SIGINT/SIGTERM (the report is still written), or the
/// proxy's end. Each row notes the events finished since the previous one.
async fn sample_loop(
    a: &Args,
    proxy: &Proxy,
    pid: u32,
    probe: &Probe,
    (start, t0, end): (Instant, f64, Instant),
    events: &Mutex<Vec<EventRecord>>,
    bench: &tokio::task::JoinHandle<Vec<PgbenchRun>>,
) -> anyhow::Result<Sampled> {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut int, mut term) = (
        signal(SignalKind::interrupt())?,
        signal(SignalKind::terminate())?,
    );
    let every = Duration::from_secs(a.sample_every);
    let mut tick = tokio::time::interval_at(start + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut out = Sampled {
        samples: Vec::new(),
        proxy_died: false,
        interrupted: false,
    };
    let (mut prev, mut seen_events, mut bench_end_noted) = (t0, 0, false);
    eprintln!(
        "{:>6} {:>9} {:>5} {:>7} {:>8} {:>13} event",
        "t(s)", "RSS KiB", "fds", "threads", "sessions", "probes ok/err"
    );
    // Bounded by `end` (one sample per tick).
    while Instant::now() < end {
        tokio::select! {
            _ = tick.tick() => {}
            _ = int.recv() => { out.interrupted = true; break; }
            _ = term.recv() => { out.interrupted = true; break; }
        }
        let at = now();
        let usage = proc_usage(pid);
        let (ok, err, replica) = probe_window(&probe.finished(), prev, at);
        let mut notes: Vec<String> = events.lock().unwrap()[seen_events..]
            .iter()
            .map(|e| format!("{} [{:.0}-{:.0} s]", e.detail, e.start_s, e.end_s))
            .collect();
        seen_events += notes.len();
        if replica > 0 {
            notes.push(format!("{replica} REPLICA ROUTINGS"));
        }
        // The loop ends by itself within 2 s of `end`; earlier only if it panicked.
        let early = end.saturating_duration_since(Instant::now()) > Duration::from_secs(5);
        if bench.is_finished() && early && !bench_end_noted {
            bench_end_noted = true;
            notes.push("pgbench loop ENDED EARLY".into());
        }
        let sample = Sample {
            t_s: at - t0,
            rss_kib: usage.map(|u| u.0),
            fds: usage.map(|u| u.1),
            threads: usage.map(|u| u.2),
            sessions: sessions(proxy).await,
            probes_ok: ok,
            probes_err: err + replica,
            replica,
            note: notes.join("; "),
        };
        eprintln!(
            "{:>6.0} {:>9} {:>5} {:>7} {:>8} {:>13} {}",
            sample.t_s,
            opt(sample.rss_kib),
            opt(sample.fds),
            opt(sample.threads),
            opt(sample.sessions),
            format!("{ok}/{}", err + replica),
            sample.note
        );
        out.samples.push(sample);
        prev = at;
        if usage.is_none() {
            out.proxy_died = true;
            break;
        }
    }
    Ok(out)
}

/// Starts the proxy in front of the cluster, initialises pgbench's tables through it; returns the
/// proxy and its pid.
async fn setup(a: &Args) -> anyhow::Result<(Proxy, u32)> {
    let leader = harness::leader()
        .await
        .context("no single primary: is the cluster up?")?;
    harness::create_probe_table(&leader).await?;
    let proxy = Proxy::patroni_proxy(&a.proxy_bin).await?;
    let pid = stats_json(proxy.stats).await?["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .context("no pid in /stats.json")?;
    if let Some(f) = &a.proxy_pidfile {
        std::fs::write(f, pid.to_string())?;
    }
    proxy.wait_routes(&leader, Duration::from_secs(30)).await?;
    eprintln!(
        "proxy pid {pid} on {}, stats {}; pgbench -i -s {}",
        proxy.listen, proxy.stats, a.scale
    );
    let init = ["-i", "-q", "-s", &a.scale.to_string()].map(String::from);
    let init = timeout(
        Duration::from_secs(600),
        pgbench_cmd(a, proxy.listen, &init).output(),
    )
    .await
    .context("pgbench -i took over 600 s")??;
    if !init.status.success() {
        bail!(
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
    }
    Ok((proxy, pid))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let duration = Duration::from_secs(a.minutes * 60);
    let planned = plan(duration.as_secs(), a.switchover_every, a.crash_every);
    eprintln!(
        "soak: {} min, {} planned events; cluster:\n{}",
        a.minutes,
        planned.len(),
        cluster(&["status"]).await?
    );
    let (proxy, pid) = setup(&a).await?;
    let idle_before = idle(&proxy, pid)
        .await
        .map_err(|e| eprintln!("idle before: {e:#}"))
        .ok();

    let (start, t0) = (Instant::now(), now());
    let end = start + duration;
    let abort = CancellationToken::new();
    let events: Arc<Mutex<Vec<EventRecord>>> = Default::default();
    let run_name = format!("soak-{}", t0 as u64);
    let probe = Probe::start(proxy.listen, run_name.clone(), PROBE_EVERY, 0);
    let bench = pgbench_loop(a.clone(), proxy.listen, t0, end, abort.clone());
    let bench = tokio::spawn(bench);
    let ev = run_events(
        planned.clone(),
        start,
        t0,
        end,
        abort.clone(),
        events.clone(),
    );
    let ev = tokio::spawn(ev);
    let times = (start, t0, end);
    let s = sample_loop(&a, &proxy, pid, &probe, times, &events, &bench).await?;

    if s.interrupted || s.proxy_died {
        abort.cancel();
    }
    eprintln!("load ends; waiting for the last pgbench run and any event in progress");
    let runs = timeout(Duration::from_secs(a.run_secs + 90), bench).await;
    let runs = runs.ok().and_then(Result::ok).unwrap_or_default();
    abort.cancel();
    if timeout(EVENT_LIMIT + Duration::from_secs(10), ev)
        .await
        .is_err()
    {
        eprintln!("an event did not end in time");
    }
    let attempts = probe.finish().await;
    let idle_after = match s.proxy_died {
        true => None,
        false => idle(&proxy, pid)
            .await
            .map_err(|e| eprintln!("idle after: {e:#}"))
            .ok(),
    };
    let frontend = stats_json(proxy.stats)
        .await
        .ok()
        .map(|v| v["frontend"].clone());
    let warnings: Vec<String> = proxy
        .log()
        .into_iter()
        .map(|(_, line)| line)
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    proxy.stop().await;
    eprintln!("restoring the cluster (every node up, streaming)");
    let restored = timeout(Duration::from_secs(300), harness::restore()).await;
    match restored {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("restore: {e:#}"),
        Err(_) => eprintln!("restore: not done within 300 s"),
    }
    if let Some(l) = harness::leader().await {
        let _ = timeout(Duration::from_secs(10), delete_probe_rows(&l, &run_name)).await;
    }

    let events = events.lock().unwrap().clone();
    let v = verdict(&Outcomes {
        samples: &s.samples,
        warmup: a.warmup as f64,
        idle: (idle_before, idle_after),
        probes: &attempts,
        runs: &runs,
        events: &events,
        planned: &planned,
        proxy_warnings: warnings.len(),
        proxy_died: s.proxy_died,
        interrupted: s.interrupted,
    });
    let report = Report {
        args: &a,
        started_at: t0,
        planned: &planned,
        idle_before,
        idle_after,
        samples: &s.samples,
        events: &events,
        pgbench: &runs,
        probe_outcomes: probe_outcomes(&attempts),
        proxy_frontend_at_end: frontend,
        proxy_warnings: warnings.into_iter().take(500).collect(),
        verdict: &v,
    };
    let out = a.out.clone();
    let out = out.unwrap_or_else(|| harness::out_dir().join("soak.json"));
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_vec_pretty(&report)?)?;
    println!("\n{}", markdown(&s.samples, (idle_before, idle_after)));
    println!("{}\nJSON: {}", verdict_text(&v, a.warmup), out.display());
    if !v.pass {
        std::process::exit(1);
    }
    Ok(())
}

async fn delete_probe_rows(primary: &Node, run: &str) -> anyhow::Result<()> {
    harness::direct(primary)
        .await?
        .execute("DELETE FROM e2e_probe WHERE run = $1", &[&run])
        .await?;
    Ok(())
}
