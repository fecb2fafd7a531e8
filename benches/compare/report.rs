//! The Markdown table (medians over rounds, ratios, targets met) and the JSON's metadata.

use serde_json::json;

use crate::metrics::{Goal, METRICS};
use std::process::Command;

use crate::{setup, sys, Kind, Measurement, Opts, Target};
fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn fmt(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(x) if x.abs() >= 1000.0 => {
            // Thousands separated by a thin space, as in baseline.md.
            let s = format!("{:.0}", x);
            let mut out = String::new();
            for (i, c) in s.chars().enumerate() {
                if i > 0 && (s.len() - i) % 3 == 0 {
                    out.push(' ');
                }
                out.push(c);
            }
            out
        }
        Some(x) if x.abs() >= 100.0 => format!("{x:.0}"),
        Some(x) if x.abs() >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
    }
}

pub fn report(targets: &[Target], results: &[Measurement], o: &Opts) -> String {
    let value = |label: &str, row: &str, key: &str| {
        median(
            results
                .iter()
                .filter(|m| m.target == label && m.row == row)
                .filter_map(|m| m.values.iter().find(|(k, _)| *k == key).map(|(_, v)| *v))
                .collect(),
        )
    };
    let proxies: Vec<&Target> = targets.iter().filter(|t| t.kind == Kind::Proxy).collect();
    let mut s = String::new();
    s.push_str(&format!(
        "\n## patroni-proxy vs HAProxy vs direct: median of {} rounds, {} s per measurement\n\n| metric |",
        o.rounds, o.secs
    ));
    for t in targets {
        s.push_str(&format!(" {} |", t.label));
    }
    for p in &proxies {
        s.push_str(&format!(" {} / HAProxy |", p.label));
    }
    s.push_str(" proxy / direct | target | met | other CPU % |\n|---|");
    for _ in 0..(targets.len() + proxies.len() + 1) {
        s.push_str("---:|");
    }
    s.push_str("---|---|---:|\n");
    let mut met_all = Vec::new();
    for m in METRICS.iter().filter(|m| o.rows.iter().any(|r| r == m.row)) {
        s.push_str(&format!("| {} |", m.label));
        for t in targets {
            s.push_str(&format!(" {} |", fmt(value(&t.label, m.row, m.key))));
        }
        let hap = value("HAProxy", m.row, m.key);
        let ratio = |label: &str| match (value(label, m.row, m.key), hap) {
            (Some(p), Some(h)) if h != 0.0 => Some(p / h),
            _ => None,
        };
        for p in &proxies {
            s.push_str(&format!(
                " {} |",
                ratio(&p.label).map_or("-".into(), |r| format!("{r:.2}x"))
            ));
        }
        let main = value("patroni-proxy", m.row, m.key);
        let direct = value("direct", m.row, m.key);
        s.push_str(&format!(
            " {} |",
            match (main, direct) {
                (Some(p), Some(d)) if d != 0.0 => format!("{:.2}x", p / d),
                _ => "-".into(),
            }
        ));
        let (goal, met) = match m.goal {
            Goal::None => (String::new(), None),
            Goal::RatioAtLeast(x) => (
                format!("≥ {x}x HAProxy"),
                ratio("patroni-proxy").map(|r| r >= x),
            ),
            Goal::RatioAtMost(x) => (
                format!("≤ {x}x HAProxy"),
                ratio("patroni-proxy").map(|r| r <= x),
            ),
            Goal::AtMost(x) => (format!("≤ {x}"), main.map(|v| v <= x)),
        };
        if let Some(ok) = met {
            met_all.push((format!("{} {}", m.row, m.key), ok));
        }
        let noise = results
            .iter()
            .filter(|r| r.row == m.row)
            .map(|r| r.other_pct)
            .fold(0.0, f64::max);
        s.push_str(&format!(
            " {goal} | {} | {noise:.0} |\n",
            match met {
                None => "",
                Some(true) => "yes",
                Some(false) => "**no**",
            }
        ));
    }
    let met = met_all.iter().filter(|(_, ok)| *ok).count();
    s.push_str(&format!(
        "\nTargets met: {met} of {}.{}\n\"other CPU %\": the most CPU (share of all {} CPUs) that processes this benchmark did not start used during any one measurement of the row; above a few % the row is suspect.\n",
        met_all.len(),
        met_all
            .iter()
            .filter(|(_, ok)| !*ok)
            .map(|(l, _)| format!(" Not met: {l}."))
            .collect::<String>(),
        sys::ncpu()
    ));
    s
}

pub fn meta(o: &Opts, targets: &[Target]) -> serde_json::Value {
    let cmd = |c: &str, args: &[&str]| {
        Command::new(c)
            .args(args)
            .output()
            .map(|out| {
                let t = String::from_utf8_lossy(&out.stdout).to_string()
                    + &String::from_utf8_lossy(&out.stderr);
                t.lines().next().unwrap_or("").to_string()
            })
            .unwrap_or_default()
    };
    json!({
        "rounds": o.rounds,
        "secs": o.secs,
        "rows": o.rows,
        "targets": targets.iter().map(|t| &t.label).collect::<Vec<_>>(),
        "cpus": sys::ncpu(),
        "kernel": cmd("uname", &["-r"]),
        "haproxy": cmd("haproxy", &["-v"]),
        "postgres": cmd(&format!("{}/postgres", setup::PG_BIN), &["--version"]),
        "iperf3": cmd("iperf3", &["-v"]),
        "proxy_binary": o.proxy.display().to_string(),
        "also": o.also.iter().map(|(l, p, env)| json!({"label": l, "binary": p.display().to_string(), "env": env})).collect::<Vec<_>>(),
        "git": cmd("git", &["-C", env!("CARGO_MANIFEST_DIR"), "describe", "--always", "--dirty"]),
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
    })
}
