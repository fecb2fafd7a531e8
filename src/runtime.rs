//! The runtime's shape: a current-thread runtime that accepts, checks, serves stats and relays its
//! share of the sessions; `global.threads - 1` more relay threads, each with a current-thread
//! runtime of its own: every thread accepts from the one listening socket and keeps the sessions it
//! accepts (`proxy::serve`).
//!
//! On the 2-vCPU machines this proxy runs on, the client, PostgreSQL and the proxy share the CPUs,
//! and the proxy's own work per PostgreSQL message is a `recv` and a `send`. A work-stealing
//! multi-thread runtime adds wake-ups of parked workers (futex calls) and hands sockets between CPUs;
//! per-thread runtimes do none of that, and need one `epoll_wait` for many sessions at load. A single
//! thread, though, is a hub that stalls every session whenever the scheduler delays it (the machine
//! then idles at 87-90 % busy under `pgbench -c16`, 99 % with HAProxy's two threads).
//! docs/benchmarks.md has the side-by-side figures that chose this shape.
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
