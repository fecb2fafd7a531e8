//! The runtime's shape: one thread that accepts, checks and relays everything, by default.
//!
//! On the 2-vCPU machines this proxy runs on, the client, PostgreSQL and the proxy share the CPUs,
//! and the proxy's own work per PostgreSQL message is a `recv` and a `send`. A work-stealing
//! multi-thread runtime adds wake-ups of parked workers (futex calls) and hands sockets between CPUs;
//! a current-thread runtime does none of that and needs one `epoll_wait` for many sessions at load.
//! docs/benchmarks.md has the side-by-side figures that chose it.
//!
//! `PATRONI_PROXY_WORKERS=N` (N >= 1) selects tokio's multi-thread runtime with N workers instead:
//! for comparing the two shapes in the benchmark, or for a machine where one CPU is not enough.

use tokio::runtime::{Builder, Runtime};

/// The environment variable that selects a multi-thread runtime and its number of workers.
pub const WORKERS_ENV: &str = "PATRONI_PROXY_WORKERS";

pub fn build() -> std::io::Result<Runtime> {
    let workers = std::env::var(WORKERS_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0);
    match workers {
        Some(n) => Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        None => Builder::new_current_thread().enable_all().build(),
    }
}
