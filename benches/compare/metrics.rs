//! The figures the table shows, row by row, with their targets (docs/benchmarks.md).

/// A figure the table shows: which row measures it, how it reads, and its target if any.
pub struct Metric {
    pub row: &'static str,
    pub key: &'static str,
    pub label: &'static str,
    pub goal: Goal,
}

#[derive(Clone, Copy)]
pub enum Goal {
    None,
    /// proxy / HAProxy at least this.
    RatioAtLeast(f64),
    /// proxy / HAProxy at most this.
    RatioAtMost(f64),
    /// The proxy's own value at most this.
    AtMost(f64),
}

pub const METRICS: &[Metric] = &[
    m(
        "pgbench1",
        "tps",
        "pgbench -S -M prepared -c1 -j1, TPS (↑)",
        Goal::RatioAtLeast(1.05),
    ),
    m(
        "pgbench1",
        "lat_ms",
        "  … average latency, ms (↓)",
        Goal::None,
    ),
    m(
        "pgbench1",
        "cpu_us_per_txn",
        "  … proxy CPU µs per transaction (↓)",
        Goal::None,
    ),
    m(
        "pgbench1",
        "machine_cpu_us_per_txn",
        "  … machine CPU µs per transaction, all CPUs (↓)",
        Goal::None,
    ),
    m(
        "pgbench16",
        "tps",
        "pgbench -S -M prepared -c16 -j2, TPS (↑)",
        Goal::RatioAtLeast(1.15),
    ),
    m(
        "pgbench16",
        "lat_ms",
        "  … average latency, ms (↓)",
        Goal::None,
    ),
    m(
        "pgbench16",
        "cpu_us_per_txn",
        "  … proxy CPU µs per transaction (↓)",
        Goal::RatioAtMost(0.7),
    ),
    m(
        "pgbench16",
        "machine_cpu_us_per_txn",
        "  … machine CPU µs per transaction, all CPUs (↓)",
        Goal::None,
    ),
    m(
        "pgbenchC",
        "tps",
        "pgbench -S -C -c4 (connect per txn), TPS (↑)",
        Goal::None,
    ),
    m(
        "pgbenchC",
        "lat_ms",
        "  … average latency, ms (↓)",
        Goal::None,
    ),
    m(
        "pgbenchC",
        "cpu_us_per_txn",
        "  … proxy CPU µs per transaction (↓)",
        Goal::None,
    ),
    m(
        "pgbenchC",
        "machine_cpu_us_per_txn",
        "  … machine CPU µs per transaction, all CPUs (↓)",
        Goal::None,
    ),
    m(
        "iperf1",
        "gbps",
        "iperf3 1 stream, Gbit/s (↑)",
        Goal::RatioAtLeast(1.5),
    ),
    m(
        "iperf1",
        "cpu_s_per_gb",
        "  … proxy CPU s per GB (↓)",
        Goal::RatioAtMost(0.5),
    ),
    m(
        "iperf1",
        "machine_cpu_s_per_gb",
        "  … machine CPU s per GB, all CPUs (↓)",
        Goal::None,
    ),
    m(
        "iperf8",
        "gbps",
        "iperf3 8 streams, Gbit/s (↑)",
        Goal::RatioAtLeast(1.5),
    ),
    m(
        "iperf8",
        "cpu_s_per_gb",
        "  … proxy CPU s per GB (↓)",
        Goal::RatioAtMost(0.5),
    ),
    m(
        "iperf8",
        "machine_cpu_s_per_gb",
        "  … machine CPU s per GB, all CPUs (↓)",
        Goal::None,
    ),
    m(
        "connrate",
        "conn_per_s",
        "connect + 64 B echo + close, conn/s (↑)",
        Goal::RatioAtLeast(1.1),
    ),
    m(
        "connrate",
        "cpu_us_per_conn",
        "  … proxy CPU µs per connection (↓)",
        Goal::None,
    ),
    m(
        "connrate",
        "machine_cpu_us_per_conn",
        "  … machine CPU µs per connection, all CPUs (↓)",
        Goal::None,
    ),
    m(
        "memory",
        "rss_idle_mib",
        "RSS idle, MiB (↓)",
        Goal::AtMost(8.0),
    ),
    m(
        "memory",
        "kib_per_conn_1000",
        "RSS KiB per idle connection @1 000 (↓)",
        Goal::AtMost(2.0),
    ),
    m(
        "memory",
        "kib_per_conn_max",
        "RSS KiB per idle connection @9 900 (↓)",
        Goal::AtMost(2.0),
    ),
    m(
        "stats",
        "page_kib",
        "dashboard page with 100 sessions, KiB (↓)",
        Goal::AtMost(100.0),
    ),
    m(
        "stats",
        "page_cpu_us",
        "  … proxy CPU µs per page (↓)",
        Goal::None,
    ),
    m(
        "stats",
        "metrics_kib",
        "Prometheus scrape with 100 sessions, KiB (↓)",
        Goal::None,
    ),
    m(
        "stats",
        "metrics_cpu_us",
        "  … proxy CPU µs per scrape (↓)",
        Goal::None,
    ),
    m(
        "stats",
        "sessions_kib",
        "/sessions.json with 100 sessions, KiB (↓)",
        Goal::None,
    ),
    m(
        "stats",
        "sessions_cpu_us",
        "  … proxy CPU µs per request (↓)",
        Goal::None,
    ),
    m(
        "pingpong",
        "p50_us",
        "64 B ping-pong p50 µs, all on CPU 0 (↓)",
        Goal::None,
    ),
    m(
        "pingpong",
        "p99_us",
        "64 B ping-pong p99 µs, all on CPU 0 (↓)",
        Goal::RatioAtMost(0.9),
    ),
];

const fn m(row: &'static str, key: &'static str, label: &'static str, goal: Goal) -> Metric {
    Metric {
        row,
        key,
        label,
        goal,
    }
}
