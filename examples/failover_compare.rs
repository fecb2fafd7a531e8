//! Failover side by side: HAProxy 2.6 with the seed's `haproxy.cfg` and patroni-proxy with
//! `proxy.toml`'s semantics, both in front of the real local cluster at the same time, each with its
//! own probe, through the same events: crash of the primary, N planned switchovers, Patroni killed,
//! a hung REST API, and a proxy (re)start; on request the faults of issue 14 item 5 (the REST API
//! wedged by idle clients, with and without Patroni frozen under it; etcd stopped with
//! `failsafe_mode` off and on; the old primary back on its old timeline; `--count` crashes and
//! switchovers in a row). Prints one Markdown table and writes `target/e2e/compare.json` (every
//! attempt of every run), `target/e2e/compare.md`, and each fault's own figures in
//! `target/e2e/fault-<scenario>.json`.
//!
//! Run it with `scripts/failover-compare` (installs HAProxy, builds, starts the cluster); the
//! scenario code is the end-to-end tests' (`tests/e2e/`). Not part of the test suite.
//!
//! ```text
//! failover_compare [--switchovers N] [--freeze SECS] [--hold SECS] [--count N]
//!                  [--only crash,switchover,kill-patroni,hung-rest,rest-unreachable,restart,
//!                          rest-wedge,rest-wedge-frozen,etcd-stopped,etcd-stopped-failsafe,
//!                          old-timeline,churn]
//! ```

use patroni_proxy_e2e::{churn, faults, harness, outage, scenarios, timeline};

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use harness::{cluster, write_json, Kind, Proxy};
use scenarios::Report;

struct Args {
    switchovers: usize,
    freeze: Duration,
    hold: Duration,
    count: usize,
    only: Vec<String>,
    bin: PathBuf,
}

/// Run when `--only` is not given.
const DEFAULT: [&str; 6] = [
    "crash",
    "switchover",
    "kill-patroni",
    "hung-rest",
    "rest-unreachable",
    "restart",
];

/// The faults of issue 14 item 5, run on request: together they take about 25 minutes (`churn`
/// with `--count 20` most of it).
const FAULTS: [&str; 6] = [
    "rest-wedge",
    "rest-wedge-frozen",
    "etcd-stopped",
    "etcd-stopped-failsafe",
    "old-timeline",
    "churn",
];

fn args() -> anyhow::Result<Args> {
    // The proxy built beside this example: target/<profile>/examples/failover_compare ->
    // target/<profile>/patroni-proxy.
    let exe = std::env::current_exe()?;
    let mut a = Args {
        switchovers: 10,
        freeze: Duration::from_secs(15),
        hold: Duration::from_secs(60),
        count: 20,
        only: DEFAULT.iter().map(|s| s.to_string()).collect(),
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
            "--freeze" => a.freeze = Duration::from_secs(value()?.parse()?),
            "--hold" => a.hold = Duration::from_secs(value()?.parse()?),
            "--count" => a.count = value()?.parse()?,
            "--only" => a.only = value()?.split(',').map(str::to_string).collect(),
            "--proxy-bin" => a.bin = value()?.into(),
            "-h" | "--help" => {
                println!(
                    "failover_compare [--switchovers N (10)] [--freeze SECS (15)] \
                     [--hold SECS (60): REST wedge and etcd outage] \
                     [--count N (20): crashes and as many switchovers for churn] \
                     [--only {} (default), or any of {}] [--proxy-bin PATH]",
                    DEFAULT.join(","),
                    FAULTS.join(",")
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    for s in &a.only {
        if !DEFAULT.contains(&s.as_str()) && !FAULTS.contains(&s.as_str()) {
            bail!(
                "unknown scenario {s:?}; known: {}, {}",
                DEFAULT.join(", "),
                FAULTS.join(", ")
            );
        }
    }
    if !a.bin.is_file() {
        bail!(
            "{} is missing: build it first (scripts/failover-compare does)",
            a.bin.display()
        );
    }
    Ok(a)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let dcs = cluster(&["status"]).await.unwrap_or_default();
    eprintln!("cluster:\n{dcs}");
    let mut reports: Vec<Report> = Vec::new();
    let mut failures = Vec::new();
    for scenario in &a.only {
        eprintln!("==> {scenario}");
        let r = if scenario == "restart" {
            let mut v = Vec::new();
            for kind in [Kind::HAProxy, Kind::PatroniProxy] {
                v.push(scenarios::restart(kind, &a.bin).await?);
            }
            Ok(v)
        } else {
            // Fresh proxies per scenario: both start from the same cluster state.
            let ha = Proxy::start(Kind::HAProxy, &a.bin).await?;
            let pp = Proxy::start(Kind::PatroniProxy, &a.bin).await?;
            let proxies = [&ha, &pp];
            let r = match scenario.as_str() {
                "crash" => scenarios::crash(&proxies).await,
                "switchover" => scenarios::switchover(&proxies, a.switchovers).await,
                "kill-patroni" => scenarios::kill_patroni(&proxies).await,
                "hung-rest" => scenarios::hung_rest(&proxies, a.freeze).await,
                "rest-unreachable" => outage::rest_unreachable(&proxies, Duration::from_secs(40))
                    .await
                    .map(|(r, _)| r),
                "rest-wedge" | "rest-wedge-frozen" => {
                    let frozen = scenario == "rest-wedge-frozen";
                    faults::rest_wedge(&proxies, a.hold, frozen).await.and_then(
                        |(r, rides, facts)| {
                            let json = serde_json::json!({ "rides": rides, "facts": facts });
                            write_json(&format!("fault-{scenario}"), &json)?;
                            Ok(r)
                        },
                    )
                }
                "etcd-stopped" | "etcd-stopped-failsafe" => {
                    let failsafe = scenario == "etcd-stopped-failsafe";
                    faults::etcd_stopped(&proxies, a.hold, failsafe)
                        .await
                        .and_then(|(r, rides, facts)| {
                            let json = serde_json::json!({ "rides": rides, "facts": facts });
                            write_json(&format!("fault-{scenario}"), &json)?;
                            Ok(r)
                        })
                }
                "old-timeline" => timeline::old_timeline(&proxies, Duration::from_secs(20))
                    .await
                    .and_then(|(r, fenced, facts)| {
                        let json = serde_json::json!({ "fenced": fenced, "facts": facts });
                        write_json("fault-old-timeline", &json)?;
                        Ok(r)
                    }),
                "churn" => churn::churn(&proxies, a.count, a.count)
                    .await
                    .and_then(|(r, c)| {
                        write_json("fault-churn", &c)?;
                        println!("{}", serde_json::to_string_pretty(&c.totals)?);
                        Ok(r)
                    }),
                _ => unreachable!(),
            };
            ha.stop().await;
            pp.stop().await;
            r
        };
        match r {
            Ok(v) => reports.extend(v),
            Err(e) => {
                eprintln!("{scenario} FAILED: {e:#}");
                failures.push(format!("{scenario}: {e:#}"));
                harness::restore().await?;
            }
        }
        write_json("compare", &reports)?;
    }
    let table = scenarios::markdown_table(&reports);
    let path = harness::out_dir().join("compare.md");
    std::fs::write(&path, &table)?;
    println!("\n{table}");
    println!(
        "Times from the event; \"promotion\" = the new leader left recovery (direct watcher). \
         Restart row: first good write after the process was spawned. JSON: {}",
        harness::out_dir().join("compare.json").display()
    );
    if !failures.is_empty() {
        bail!("scenarios failed: {failures:?}");
    }
    Ok(())
}
