//! Direct vs HAProxy 2.6 vs patroni-proxy, side by side in one run, on loopback.
//!
//! Run it with `bash benches/run.sh` (docs/benchmarks.md). Every row is measured for every target in
//! each round, the targets alternating A B C then C B A; each figure is the median over rounds. It
//! prints a Markdown table with ratios and writes the raw measurements as JSON. Timings are never
//! asserted anywhere: this reports, the reader judges.

mod load;
mod metrics;
mod perf;
mod report;
mod setup;
mod sys;

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use setup::{Proc, Service, SERVICES};

const USAGE: &str = "usage: bash benches/run.sh [--quick] [--rounds N] [--secs S] [--json PATH] \
[--rows r1,r2] [--proxy PATH] [--also LABEL=PATH[@VAR=VALUE][@relay=kernel][@kernel_after=N]...]... [--no-kernel] [--perf] [--perf-record]
--no-kernel: leave out the `relay = \"kernel\"` column (it needs CAP_BPF and CAP_NET_ADMIN)
--perf: count syscalls and context switches of HAProxy and the proxies per unit of work (perf stat;
        the tracepoint slows syscalls a little, so keep it out of runs whose timings you report)
--perf-record: write a CPU profile per proxy measurement (perf record -g) next to the JSON
rows: pgbench1 pgbench16 pgbenchC iperf1 iperf8 connrate memory stats pingpong";

const ROWS: [&str; 9] = [
    "pgbench1",
    "pgbench16",
    "pgbenchC",
    "iperf1",
    "iperf8",
    "connrate",
    "memory",
    "stats",
    "pingpong",
];

/// Starts a fresh instance: its process, its listener and (patroni-proxy only) its stats listener.
type Fresh = dyn Fn() -> (Proc, SocketAddr, Option<SocketAddr>);

/// A proxy binary to measure: label, path, extra environment.
type ProxyBuild = (String, PathBuf, Vec<(String, String)>);

struct Opts {
    rounds: usize,
    secs: u64,
    json: PathBuf,
    rows: Vec<String>,
    proxy: PathBuf,
    /// Extra proxy builds to compare in the same run: label, binary, environment.
    also: Vec<ProxyBuild>,
    idle_conns: usize,
    /// Measure the proxy with `relay = "kernel"` too (label `pp-kernel`).
    kernel: bool,
    perf: bool,
    perf_record: bool,
}

impl Opts {
    fn parse(args: &[String]) -> Self {
        let mut o = Opts {
            rounds: 4,
            secs: 6,
            json: PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/target/bench/compare.json"
            )),
            rows: ROWS.iter().map(|s| s.to_string()).collect(),
            proxy: PathBuf::from(env!("CARGO_BIN_EXE_patroni-proxy")),
            also: Vec::new(),
            idle_conns: 9900,
            kernel: true,
            perf: false,
            perf_record: false,
        };
        let mut it = args.iter();
        let bad = |m: &str| -> ! {
            eprintln!("{m}\n{USAGE}");
            std::process::exit(2)
        };
        while let Some(a) = it.next() {
            let mut val = || {
                it.next()
                    .cloned()
                    .unwrap_or_else(|| bad(&format!("{a} needs a value")))
            };
            match a.as_str() {
                // `cargo bench` passes this to every bench binary.
                "--bench" => {}
                "--perf" => o.perf = true,
                "--no-kernel" => o.kernel = false,
                "--perf-record" => o.perf_record = true,
                "--quick" => {
                    o.rounds = 2;
                    o.secs = 2;
                }
                "--rounds" => o.rounds = val().parse().unwrap_or_else(|_| bad("--rounds N")),
                "--secs" => o.secs = val().parse().unwrap_or_else(|_| bad("--secs S")),
                "--json" => o.json = PathBuf::from(val()),
                "--rows" => o.rows = val().split(',').map(str::to_string).collect(),
                "--proxy" => o.proxy = PathBuf::from(val()),
                "--idle-conns" => {
                    o.idle_conns = val().parse().unwrap_or_else(|_| bad("--idle-conns N"))
                }
                "--also" => {
                    let v = val();
                    let (l, p) = v
                        .split_once('=')
                        .unwrap_or_else(|| bad("--also LABEL=PATH"));
                    let mut parts = p.split('@');
                    let bin = PathBuf::from(parts.next().unwrap_or_default());
                    let env = parts
                        .map(|kv| {
                            let (k, v) = kv.split_once('=').unwrap_or_else(|| bad("@VAR=VALUE"));
                            (k.to_string(), v.to_string())
                        })
                        .collect();
                    o.also.push((l.to_string(), bin, env));
                }
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0)
                }
                other => bad(&format!("unknown argument {other}")),
            }
        }
        for r in &o.rows {
            if !ROWS.contains(&r.as_str()) {
                bad(&format!("unknown row {r}"));
            }
        }
        o
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Direct,
    Haproxy,
    Proxy,
}

/// One way of reaching the services: its address and (for proxies) its process, per service.
struct Target {
    label: String,
    kind: Kind,
    addrs: [SocketAddr; 3],
    pids: [Option<u32>; 3],
    /// Starts a fresh instance in front of the echo server, for the memory and stats rows: memory
    /// per idle connection is measured from a fresh start, since allocators and HAProxy's pools keep
    /// what an earlier peak took. The second address is the stats listener (patroni-proxy only).
    fresh: Option<Box<Fresh>>,
}

impl Target {
    fn addr(&self, s: Service) -> SocketAddr {
        self.addrs[s as usize]
    }
    fn pid(&self, s: Service) -> Option<u32> {
        self.pids[s as usize]
    }
}

/// One target measured once for one row.
struct Measurement {
    row: String,
    target: String,
    round: usize,
    values: Vec<(&'static str, f64)>,
    /// CPU used by processes we did not start, % of the whole machine, and steal.
    other_pct: f64,
    steal_pct: f64,
    /// The other processes that used the most CPU.
    top_others: Vec<String>,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("__echo") {
        let addr = args
            .get(1)
            .and_then(|a| a.parse().ok())
            .expect("__echo ADDR");
        return load::echo_server(addr);
    }
    let o = Opts::parse(&args);
    // 9 900 idle connections hold ~20 000 descriptors in the proxy and as many here and in the
    // echo server; children inherit this limit.
    if let Err(e) = rlimit::setrlimit(rlimit::Resource::NOFILE, 65536, 65536) {
        let n = rlimit::increase_nofile_limit(65536).unwrap_or(0);
        eprintln!("cannot raise the open-file limit to 65536 ({e}); using {n}");
    }
    let max_idle = setup::haproxy_maxconn().saturating_sub(50) as usize;
    if o.idle_conns > max_idle {
        eprintln!("idle connections capped at {max_idle} by the open-file limit");
    }
    let o = Opts {
        idle_conns: o.idle_conns.min(max_idle),
        ..o
    };
    let out_dir = o.json.parent().map(PathBuf::from).unwrap_or_default();
    std::fs::create_dir_all(&out_dir).expect("create output dir");
    let logs = setup::logs_dir(&out_dir);
    eprintln!("logs and generated configs: {}", logs.display());

    // Backends.
    let pg = setup::Postgres::start(&logs);
    let (echo, echo_addr) = setup::start_echo(&logs);
    let (iperf_srv, iperf_addr) = setup::start_iperf(&logs);
    let backends = [pg.addr, echo_addr, iperf_addr];
    let patroni = setup::start_fake_patroni();

    // Targets.
    let mut procs: Vec<Proc> = Vec::new();
    let mut targets = vec![Target {
        label: "direct".into(),
        kind: Kind::Direct,
        addrs: backends,
        pids: [None; 3],
        fresh: None,
    }];
    let mut configs = serde_json::Map::new();
    let mut t = Target {
        label: "HAProxy".into(),
        kind: Kind::Haproxy,
        addrs: backends,
        pids: [None; 3],
        fresh: Some({
            let logs = logs.clone();
            Box::new(move || {
                let (p, a, _) = setup::start_haproxy("echo-fresh", echo_addr, &logs, &logs);
                (p, a, None)
            })
        }),
    };
    for s in SERVICES {
        let (p, addr, cfg) = setup::start_haproxy(s.name(), backends[s as usize], &logs, &logs);
        if s == Service::Pg {
            println!(
                "HAProxy configuration (one process per service, this one for pg):\n```\n{cfg}```"
            );
        }
        configs.insert(format!("haproxy-{}", s.name()), cfg.into());
        t.addrs[s as usize] = addr;
        t.pids[s as usize] = Some(p.pid());
        procs.push(p);
    }
    targets.push(t);
    let user = || "relay = \"user\"\n".to_string();
    let mut proxies = vec![("patroni-proxy".to_string(), o.proxy.clone(), vec![], user())];
    if o.kernel {
        let listen = "relay = \"kernel\"\n".to_string();
        proxies.push(("pp-kernel".to_string(), o.proxy.clone(), vec![], listen));
    }
    // In `--also`, a lower-case `@key=value` (`@relay=kernel`, `@kernel_after=0`) is a `[listen]`
    // setting of that build's config; anything else is an environment variable.
    proxies.extend(o.also.iter().map(|(l, b, e)| {
        let setting = |k: &str| k.starts_with(|c: char| c.is_ascii_lowercase());
        let mut listen = String::new();
        for (k, v) in e.iter().filter(|(k, _)| setting(k)) {
            if v.parse::<u64>().is_ok() {
                listen.push_str(&format!("{k} = {v}\n"));
            } else {
                listen.push_str(&format!("{k} = {v:?}\n"));
            }
        }
        if !e.iter().any(|(k, _)| k == "relay") {
            listen.push_str(&user());
        }
        let env = e.iter().filter(|(k, _)| !setting(k)).cloned().collect();
        (l.clone(), b.clone(), env, listen)
    }));
    for (label, bin, env, listen) in &proxies {
        let mut t = Target {
            label: label.clone(),
            kind: Kind::Proxy,
            addrs: backends,
            pids: [None; 3],
            fresh: Some({
                let (logs, label, bin, env, listen) = (
                    logs.clone(),
                    label.clone(),
                    bin.clone(),
                    env.clone(),
                    listen.clone(),
                );
                Box::new(move || {
                    let (p, a, stats, _) = setup::start_proxy(
                        &label,
                        &bin,
                        &env,
                        &listen,
                        "echo-fresh",
                        echo_addr,
                        patroni,
                        &logs,
                        &logs,
                    );
                    (p, a, Some(stats))
                })
            }),
        };
        for s in SERVICES {
            let (p, addr, _, cfg) = setup::start_proxy(
                label,
                bin,
                env,
                listen,
                s.name(),
                backends[s as usize],
                patroni,
                &logs,
                &logs,
            );
            if s == Service::Pg && label == "patroni-proxy" {
                println!("patroni-proxy configuration ({}), health checks on against a fake Patroni at {patroni}:\n```toml\n{cfg}```", bin.display());
            }
            configs.insert(format!("{label}-{}", s.name()), cfg.into());
            t.addrs[s as usize] = addr;
            t.pids[s as usize] = Some(p.pid());
            procs.push(p);
        }
        targets.push(t);
    }
    let started_rss: serde_json::Map<_, _> = targets
        .iter()
        .filter_map(|t| {
            t.pid(Service::Echo)
                .map(|p| (t.label.clone(), sys::rss_kib(p).into()))
        })
        .collect();

    let mut results: Vec<Measurement> = Vec::new();
    for round in 0..o.rounds {
        let order: Vec<&Target> = if round % 2 == 0 {
            targets.iter().collect()
        } else {
            targets.iter().rev().collect()
        };
        for row in &o.rows {
            for t in &order {
                let m = measure(row, t, &o, echo.pid(), round);
                eprintln!(
                    "round {} {:<9} {:<14} {}{}",
                    round + 1,
                    row,
                    t.label,
                    m.values
                        .iter()
                        .map(|(k, v)| format!("{k}={v:.2}"))
                        .collect::<Vec<_>>()
                        .join(" "),
                    if m.other_pct > 5.0 {
                        format!(
                            "  [other processes used {:.0}% of the CPUs: {}]",
                            m.other_pct,
                            m.top_others.join(", ")
                        )
                    } else {
                        String::new()
                    }
                );
                results.push(m);
            }
        }
    }
    drop(procs);
    drop(iperf_srv);
    drop(echo);
    drop(pg);

    let table = report::report(&targets, &results, &o);
    println!("{table}");
    let doc = json!({
        "meta": report::meta(&o, &targets),
        "configs": configs,
        "rss_after_start_kib": started_rss,
        "table_markdown": table,
        "measurements": results.iter().map(|m| json!({
            "row": m.row, "target": m.target, "round": m.round + 1,
            "values": m.values.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_,_>>(),
            "other_cpu_pct": m.other_pct, "steal_pct": m.steal_pct, "top_others": m.top_others,
        })).collect::<Vec<_>>(),
    });
    std::fs::write(&o.json, serde_json::to_string_pretty(&doc).expect("json")).expect("write json");
    eprintln!("wrote {}", o.json.display());
}

fn measure(row: &str, t: &Target, o: &Opts, echo_pid: u32, round: usize) -> Measurement {
    let secs = o.secs;
    let cpu = |s: Service| t.pid(s).map(sys::cpu_secs);
    let service = match row {
        "iperf1" | "iperf8" => Service::Iperf,
        "connrate" | "pingpong" => Service::Echo,
        _ => Service::Pg,
    };
    let watched = t.pid(service).filter(|_| row != "memory" && row != "stats");
    let out_dir = o.json.parent().map(PathBuf::from).unwrap_or_default();
    let stat_file = out_dir.join(format!("perf-stat-{}-{row}-r{}.csv", t.label, round + 1));
    let stat = watched
        .filter(|_| o.perf)
        .map(|pid| perf::stat(pid, &stat_file));
    let record = watched.filter(|_| o.perf_record).map(|pid| {
        perf::record(
            pid,
            &out_dir.join(format!("perf-{}-{row}-r{}.data", t.label, round + 1)),
        )
    });
    let before = sys::sample();
    let mut values: Vec<(&'static str, f64)> = match row {
        "pgbench1" | "pgbench16" | "pgbenchC" => {
            let extra: &[&str] = match row {
                "pgbench1" => &["-M", "prepared", "-c1", "-j1"],
                "pgbench16" => &["-M", "prepared", "-c16", "-j2"],
                _ => &["-C", "-c4"],
            };
            let c0 = cpu(Service::Pg);
            let r = load::pgbench(t.addr(Service::Pg), extra, secs);
            let mut v = vec![("tps", r.tps), ("lat_ms", r.latency_ms)];
            if let (Some(a), Some(b)) = (c0, cpu(Service::Pg)) {
                v.push(("cpu_us_per_txn", (b - a) * 1e6 / r.transactions.max(1.0)));
            }
            v
        }
        "iperf1" | "iperf8" => {
            let c0 = cpu(Service::Iperf);
            let r = load::iperf(
                t.addr(Service::Iperf),
                if row == "iperf1" { 1 } else { 8 },
                secs,
            );
            let mut v = vec![("gbps", r.gbps)];
            if let (Some(a), Some(b)) = (c0, cpu(Service::Iperf)) {
                v.push(("cpu_s_per_gb", (b - a) / (r.bytes / 1e9)));
            }
            v
        }
        "connrate" => {
            let c0 = cpu(Service::Echo);
            let (rate, failed) = load::conn_rate(t.addr(Service::Echo), 4, secs as f64);
            let mut v = vec![("conn_per_s", rate), ("failed", failed as f64)];
            if let (Some(a), Some(b)) = (c0, cpu(Service::Echo)) {
                v.push((
                    "cpu_us_per_conn",
                    (b - a) * 1e6 / (rate * secs as f64).max(1.0),
                ));
            }
            v
        }
        "memory" => match &t.fresh {
            None => vec![],
            Some(fresh) => {
                let (proc, addr, _) = fresh();
                let pid = proc.pid();
                let settle = || std::thread::sleep(Duration::from_millis(500));
                settle();
                let rss0 = sys::rss_kib(pid) as f64;
                let mut conns: Vec<TcpStream> = Vec::new();
                let first = 1000.min(o.idle_conns);
                load::open_idle(addr, first, &mut conns);
                settle();
                let rss1 = sys::rss_kib(pid) as f64;
                load::open_idle(addr, o.idle_conns - first, &mut conns);
                settle();
                let rss2 = sys::rss_kib(pid) as f64;
                drop(conns);
                drop(proc);
                vec![
                    ("rss_idle_mib", rss0 / 1024.0),
                    ("kib_per_conn_1000", (rss1 - rss0) / first as f64),
                    ("kib_per_conn_max", (rss2 - rss0) / o.idle_conns as f64),
                ]
            }
        },
        "stats" => match &t.fresh {
            None => vec![],
            Some(fresh) => {
                let (proc, addr, stats) = fresh();
                match stats {
                    None => vec![],
                    Some(stats) => load::stats_cost(proc.pid(), addr, stats, secs as f64 / 3.0),
                }
            }
        },
        "pingpong" => {
            // As in baseline.md: client, proxy and echo server all on CPU 0, so the latency is
            // the work on the path, not cross-CPU wake-ups.
            let mut pids = vec![std::process::id(), echo_pid];
            pids.extend(t.pid(Service::Echo));
            let saved = setup::pin(&pids, "0");
            let (p50, p99) = load::ping_pong(t.addr(Service::Echo), secs as f64);
            setup::unpin(&saved);
            vec![("p50_us", p50), ("p99_us", p99)]
        }
        _ => unreachable!("rows are validated"),
    };
    let after = sys::sample();
    drop(record);
    // Machine CPU per unit of work: every CPU's busy time (`/proc/stat`) over the measurement,
    // whoever spent it: the load generator, the server, the proxy's process, and the softirq and
    // sender contexts where the kernel relay forwards (which no process's utime+stime shows).
    let busy = sys::machine_busy_secs(&before, &after);
    let per = values.iter().find_map(|(k, v)| match *k {
        "tps" => Some(("machine_cpu_us_per_txn", 1e6 / (v * secs as f64))),
        "conn_per_s" => Some(("machine_cpu_us_per_conn", 1e6 / (v * secs as f64))),
        "gbps" => Some(("machine_cpu_s_per_gb", 8.0 / (v * secs as f64))),
        _ => None,
    });
    if let Some((key, scale)) = per.filter(|(_, s)| s.is_finite()) {
        values.push((key, busy * scale));
    }
    if let Some(p) = stat {
        drop(p);
        // Per unit of work: transactions, connections, GB or round trips.
        let units = values
            .iter()
            .find_map(|(k, v)| match *k {
                "tps" => Some(v * secs as f64),
                "conn_per_s" => Some(v * secs as f64),
                "gbps" => Some(v * secs as f64 / 8.0),
                _ => None,
            })
            .unwrap_or(0.0);
        if units > 0.0 {
            // Per transaction, connection or GB: "syscalls", "switches", "recvfrom", ...
            for (k, n) in perf::parse_stat(&stat_file) {
                values.push((k, n / units));
            }
        }
    }
    let (other_pct, steal_pct) = sys::others(&before, &after);
    let top_others = sys::top_others(&before, &after);
    Measurement {
        top_others,
        row: row.to_string(),
        target: t.label.clone(),
        round,
        values,
        other_pct,
        steal_pct,
    }
}
