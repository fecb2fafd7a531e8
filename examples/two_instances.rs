//! Two patroni-proxy instances in front of the real local cluster (issue 15 item 5): the Patroni
//! REST load of one and of two instances (checks per second per node, in steady state and at the
//! peak of a failover), then N planned switchovers and M crashes of the primary through both, with
//! the instant each instance routed the new primary (from its own events). Prints Markdown tables
//! and writes `target/e2e/two-instances.json` (every event, every timeline, every attempt in
//! `two-instances-events.json`).
//!
//! Run it with `scripts/two-instances` (builds, starts the cluster); the scenario code is the
//! end-to-end tests' (`e2e/src/instances.rs`). Not part of the test suite: `tests/e2e.rs` runs 3
//! switchovers and a crash through two instances.
//!
//! ```text
//! two_instances [--switchovers N (10)] [--crashes N (1)] [--steady SECS (60)] [--proxy-bin PATH]
//! ```

use patroni_proxy_e2e::{harness, instances, scenarios};

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use harness::{write_json, Proxy, CHECK_INTER, FAILOVER_INTER};
use instances::{Agreement, Load, LoadSampler};
use scenarios::Report;
use serde::Serialize;

struct Args {
    switchovers: usize,
    crashes: usize,
    steady: Duration,
    bin: PathBuf,
}

fn args() -> anyhow::Result<Args> {
    // The proxy built beside this example: target/<profile>/examples/two_instances ->
    // target/<profile>/patroni-proxy.
    let exe = std::env::current_exe()?;
    let mut a = Args {
        switchovers: 10,
        crashes: 1,
        steady: Duration::from_secs(60),
        bin: exe
            .parent()
            .and_then(|p| p.parent())
            .map(|p| p.join("patroni-proxy"))
            .context("where is patroni-proxy?")?,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--switchovers" => a.switchovers = value()?.parse()?,
            "--crashes" => a.crashes = value()?.parse()?,
            "--steady" => a.steady = Duration::from_secs(value()?.parse()?),
            "--proxy-bin" => a.bin = value()?.into(),
            "-h" | "--help" => {
                println!(
                    "two_instances [--switchovers N (10)] [--crashes N (1)] [--steady SECS (60)] \
                     [--proxy-bin PATH]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    if a.switchovers + a.crashes == 0 || a.switchovers > 100 || a.crashes > 10 {
        bail!("--switchovers 0-100 and --crashes 0-10, not both 0");
    }
    if a.steady.is_zero() || a.steady > Duration::from_secs(3600) {
        bail!("--steady takes 1 to 3600 seconds");
    }
    if !a.bin.is_file() {
        bail!(
            "{} is missing: build it first (scripts/two-instances does)",
            a.bin.display()
        );
    }
    Ok(a)
}

#[derive(Serialize)]
struct Record {
    check_inter_ms: f64,
    failover_inter_ms: f64,
    figures: instances::Figures,
    /// Steady state and failover peak, for 1 and for 2 instances.
    load: Vec<Load>,
    events: Vec<Agreement>,
}

/// The peak REST load of each event's failover window (the event to 10 s after it).
fn peaks(sampler: &LoadSampler, reports: &[Report]) -> Vec<Load> {
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for r in reports {
        if seen.contains(&r.event_at) {
            continue;
        }
        seen.push(r.event_at);
        if let Some(mut l) = sampler.peak(r.event_at, r.event_at + 10.0, 1.0) {
            l.what = format!("{} #{} peak (1 s)", r.scenario, r.iteration);
            out.push(l);
        }
    }
    out
}

fn highest(loads: &[Load]) -> Option<&Load> {
    let top = |l: &Load| l.per_node.values().copied().fold(0.0, f64::max);
    loads.iter().max_by(|a, b| top(a).total_cmp(&top(b)))
}

fn load_table(loads: &[Load]) -> String {
    let mut out = String::from(
        "| instances | what | window | checks/s per node (all instances) | per instance |\n\
         |---:|---|---:|---|---|\n",
    );
    for l in loads {
        let nodes: Vec<String> = l.per_node.values().map(|v| format!("{v:.2}")).collect();
        let each: Vec<String> = l
            .per_instance
            .iter()
            .map(|m| {
                let v: Vec<String> = m.values().map(|v| format!("{v:.2}")).collect();
                v.join(" / ")
            })
            .collect();
        out += &format!(
            "| {} | {} | {:.1} s | {} | {} |\n",
            l.instances,
            l.what,
            l.window_s,
            nodes.join(" / "),
            each.join(" ; ")
        );
    }
    out
}

fn event_table(ags: &[Agreement]) -> String {
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.0}", v * 1e3));
    let mut out = String::from(
        "| event | old -> new | instance 1 routes new (ms) | instance 2 (ms) | between (ms) | \
         longest disagreement (ms) | replica routings |\n|---|---|---:|---:|---:|---:|---:|\n",
    );
    for a in ags {
        out += &format!(
            "| {} #{} | {} -> {} | {} | {} | {} | {:.0} | {} |\n",
            a.scenario,
            a.iteration,
            a.old_primary,
            a.new_primary.as_deref().unwrap_or("?"),
            ms(a.decided_s.first().copied().flatten()),
            ms(a.decided_s.get(1).copied().flatten()),
            ms(a.spread_s),
            a.longest_disagreement_s * 1e3,
            a.replica_routings.iter().sum::<usize>()
        );
    }
    out
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let one = Proxy::patroni_proxy_on(&a.bin, "127.0.0.31", "instance-1").await?;
    let mut load = Vec::new();

    eprintln!("one instance: steady REST load over {:?}", a.steady);
    scenarios::prepare(&[&one]).await?;
    load.push(instances::steady_load(&[&one], a.steady).await?);
    eprintln!("one instance: a switchover, checks sampled every 100 ms");
    let sampler = LoadSampler::start(&[&one]);
    let single = scenarios::switchover(&[&one], 1).await?;
    load.extend(highest(&peaks(&sampler, &single)).cloned());
    drop(sampler);

    let two = Proxy::patroni_proxy_on(&a.bin, "127.0.0.32", "instance-2").await?;
    let both = [&one, &two];
    eprintln!("two instances: steady REST load over {:?}", a.steady);
    scenarios::prepare(&both).await?;
    load.push(instances::steady_load(&both, a.steady).await?);
    eprintln!(
        "two instances: {} switchovers and {} crashes",
        a.switchovers, a.crashes
    );
    let sampler = LoadSampler::start(&both);
    let reports = instances::events(&both, a.switchovers, a.crashes).await?;
    let event_peaks = peaks(&sampler, &reports);
    load.extend(highest(&event_peaks).cloned());
    drop(sampler);
    one.stop().await;
    two.stop().await;

    let path = write_json("two-instances-events", &reports)?;
    eprintln!("every attempt: {}", path.display());
    let ags = instances::agreements(&reports);
    let figures = instances::figures(&ags);
    let record = Record {
        check_inter_ms: CHECK_INTER.as_secs_f64() * 1e3,
        failover_inter_ms: FAILOVER_INTER.as_secs_f64() * 1e3,
        figures,
        load,
        events: ags,
    };
    let path = write_json("two-instances", &record)?;
    println!("{}", event_table(&record.events));
    println!("{:?}\n", record.figures);
    println!("{}", load_table(&record.load));
    println!(
        "expected: steady N x 1/(inter + check time) per node = N x ~{:.2}/s; during a failover \
         N x 1/(failover_inter + check time) = N x ~{:.1}/s",
        1.0 / CHECK_INTER.as_secs_f64(),
        1.0 / FAILOVER_INTER.as_secs_f64()
    );
    eprintln!("{}", path.display());
    Ok(())
}
