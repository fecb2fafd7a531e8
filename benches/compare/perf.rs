//! Optional `perf` attachments to a target process during a measurement: `perf stat` for syscall
//! and context-switch counts (machine-independent evidence, unlike timings on a shared VM) and
//! `perf record` for a CPU profile. Both stop (SIGINT, by PID) when the returned guard is dropped.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::setup::Proc;

fn spawn(name: &str, args: &[&str], log_dir: &Path) -> Option<Proc> {
    let mut cmd = Command::new("perf");
    cmd.args(args).stdout(Stdio::null());
    let p = Proc::spawn(name, &mut cmd, log_dir, "-INT").ok()?;
    // perf needs a moment to attach before the load starts.
    std::thread::sleep(std::time::Duration::from_millis(300));
    Some(p)
}

/// What `perf stat` counts: all syscalls, and the ones a relay makes, by name.
pub const EVENTS: [&str; 12] = [
    "task-clock",
    "context-switches",
    "raw_syscalls:sys_enter",
    "syscalls:sys_enter_recvfrom",
    "syscalls:sys_enter_sendto",
    "syscalls:sys_enter_read",
    "syscalls:sys_enter_write",
    "syscalls:sys_enter_epoll_wait",
    "syscalls:sys_enter_epoll_ctl",
    "syscalls:sys_enter_futex",
    "syscalls:sys_enter_splice",
    "syscalls:sys_enter_accept4",
];

pub fn stat(pid: u32, out: &Path) -> Option<Proc> {
    spawn(
        "perf-stat",
        &[
            "stat",
            "-x,",
            "-e",
            &EVENTS.join(","),
            "-p",
            &pid.to_string(),
            "-o",
            &out.display().to_string(),
        ],
        out.parent()?,
    )
}

pub fn record(pid: u32, out: &Path) -> Option<Proc> {
    spawn(
        "perf-record",
        &[
            "record",
            "-F",
            "1999",
            "-g",
            "-p",
            &pid.to_string(),
            "-o",
            &out.display().to_string(),
        ],
        out.parent()?,
    )
}

/// Every counted event (short name, count) from a `perf stat -x,` file.
pub fn parse_stat(file: &Path) -> Vec<(&'static str, f64)> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    EVENTS[1..]
        .iter()
        .map(|event| {
            let n = text
                .lines()
                .find(|l| l.split(',').nth(2) == Some(*event))
                .and_then(|l| l.split(',').next())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0);
            (
                event
                    .trim_start_matches("syscalls:sys_enter_")
                    .trim_start_matches("raw_syscalls:sys_enter")
                    .trim_start_matches("context-"),
                n,
            )
        })
        .map(|(k, n)| (if k.is_empty() { "syscalls" } else { k }, n))
        .collect()
}
