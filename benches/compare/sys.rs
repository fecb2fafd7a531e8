//! What the kernel says about CPU and memory: per-process times from `/proc/<pid>/stat`, RSS from
//! `/proc/<pid>/status`, machine-wide busy time from `/proc/stat`, and from those two the CPU that
//! processes this benchmark did not start used during a measurement.

use std::collections::HashMap;
use std::time::Instant;

/// Linux reports process and `/proc/stat` times in USER_HZ, 100 on every architecture we run on.
pub const TICKS_PER_SEC: f64 = 100.0;

#[derive(Debug, Clone, Default)]
pub struct ProcStat {
    pub ppid: u32,
    /// utime + stime of the process (all its threads, live and exited).
    pub cpu: u64,
    /// cutime + cstime: children it has waited for.
    pub children: u64,
    pub name: String,
}

pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let close = text.rfind(')')?;
    let name = text[text.find('(')? + 1..close].to_string();
    let rest = &text[close + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Field N of proc(5) is f[N - 3].
    let n = |i: usize| f.get(i - 3).and_then(|s| s.parse::<u64>().ok());
    Some(ProcStat {
        ppid: n(4)? as u32,
        cpu: n(14)? + n(15)?,
        children: n(16)? + n(17)?,
        name,
    })
}

/// CPU seconds (utime + stime) of one process.
pub fn cpu_secs(pid: u32) -> f64 {
    proc_stat(pid).map_or(0.0, |s| s.cpu as f64 / TICKS_PER_SEC)
}

/// Resident set size in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Machine-wide and own CPU at one moment.
#[derive(Debug, Clone)]
pub struct Sample {
    at: Instant,
    /// user + nice + system + irq + softirq of all CPUs, in ticks.
    busy: u64,
    steal: u64,
    /// CPU of this process and every descendant (including children already waited for).
    ours: u64,
    /// utime+stime of every other process, to name the ones that used the CPU.
    others: HashMap<u32, (u64, String)>,
}

pub fn sample() -> Sample {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let get = |i: usize| cpu.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    let busy = get(0) + get(1) + get(2) + get(5) + get(6);
    let (ours, others) = split_cpu(std::process::id());
    Sample {
        at: Instant::now(),
        busy,
        steal: get(7),
        ours,
        others,
    }
}

/// Busy CPU seconds of the whole machine (all CPUs, every process and the kernel's softirq time)
/// between two samples.
pub fn machine_busy_secs(a: &Sample, b: &Sample) -> f64 {
    b.busy.saturating_sub(a.busy) as f64 / TICKS_PER_SEC
}

/// The processes not ours that used the most CPU between two samples: "name pid: seconds".
pub fn top_others(a: &Sample, b: &Sample) -> Vec<String> {
    let mut v: Vec<(u64, String)> = b
        .others
        .iter()
        .map(|(pid, (t, name))| {
            let before = a.others.get(pid).map_or(0, |x| x.0);
            (t.saturating_sub(before), format!("{name}[{pid}]"))
        })
        .filter(|(d, _)| *d > 0)
        .collect();
    v.sort_by_key(|y| std::cmp::Reverse(y.0));
    v.into_iter()
        .take(3)
        .map(|(d, n)| format!("{n} {:.2}s", d as f64 / TICKS_PER_SEC))
        .collect()
}

/// CPU used by processes that are not ours, and steal, between two samples, as a percentage of
/// the whole machine (all CPUs) over that time.
pub fn others(a: &Sample, b: &Sample) -> (f64, f64) {
    let secs = b.at.duration_since(a.at).as_secs_f64();
    // Counters tick at 100 Hz: below half a second the share is mostly rounding.
    if secs < 0.5 {
        return (0.0, 0.0);
    }
    let wall = secs * TICKS_PER_SEC * ncpu() as f64;
    let busy = b.busy.saturating_sub(a.busy) as f64;
    let ours = b.ours.saturating_sub(a.ours) as f64;
    let steal = b.steal.saturating_sub(a.steal) as f64;
    (
        ((busy - ours).max(0.0) / wall * 100.0).min(100.0),
        steal / wall * 100.0,
    )
}

/// Online CPUs of the machine (not of our affinity mask, which the ping-pong row narrows).
pub fn ncpu() -> usize {
    std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count()
        .max(1)
}

/// utime+stime+cutime+cstime summed over `root` and every live descendant; and utime+stime of every
/// other process by PID.
fn split_cpu(root: u32) -> (u64, HashMap<u32, (u64, String)>) {
    let mut all: HashMap<u32, ProcStat> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
                if let Some(s) = proc_stat(pid) {
                    all.insert(pid, s);
                }
            }
        }
    }
    let mut total = 0;
    let mut others = HashMap::new();
    for (&pid, s) in &all {
        let mut p = pid;
        let mut hops = 0;
        while p != root && p > 1 && hops < 64 {
            p = all.get(&p).map_or(0, |s| s.ppid);
            hops += 1;
        }
        if p == root {
            total += s.cpu + s.children;
        } else {
            others.insert(pid, (s.cpu, s.name.clone()));
        }
    }
    (total, others)
}
