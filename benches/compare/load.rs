//! The load: pgbench and iperf3 runs (parsed), and our own generators for what they do not measure:
//! connection rate, idle connections, 64-byte ping-pong, the stats listener's cost. Plus the echo
//! server they talk to.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::setup::PG_BIN;
use crate::{setup, sys};

/// The echo backend: returns every byte, closes after the client's FIN. Run as `__echo ADDR`.
pub fn echo_server(addr: SocketAddr) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind echo");
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Pgbench {
    pub tps: f64,
    pub latency_ms: f64,
    pub transactions: f64,
}

/// `pgbench -n -S ...` against `addr` for `secs`.
pub fn pgbench(addr: SocketAddr, extra: &[&str], secs: u64) -> Pgbench {
    let out = Command::new(format!("{PG_BIN}/pgbench"))
        .args(["-n", "-S"])
        .args(extra)
        .args(["-T", &secs.to_string(), "-h", &addr.ip().to_string()])
        .args(["-p", &addr.port().to_string(), "-U", "postgres", "postgres"])
        .output()
        .expect("run pgbench");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgbench failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |prefix: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("pgbench output has no {prefix:?}:\n{text}"))
    };
    Pgbench {
        tps: field("tps = "),
        latency_ms: field("latency average = "),
        transactions: field("number of transactions actually processed: "),
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Iperf {
    pub gbps: f64,
    pub bytes: f64,
}

/// `iperf3 -c addr -P streams` for `secs`, client to server.
pub fn iperf(addr: SocketAddr, streams: u32, secs: u64) -> Iperf {
    let out = Command::new("iperf3")
        .args(["-c", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["-P", &streams.to_string(), "-t", &secs.to_string(), "-J"])
        .output()
        .expect("run iperf3");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "iperf3 output is not JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let end = &v["end"]["sum_received"];
    let (Some(bps), Some(bytes)) = (end["bits_per_second"].as_f64(), end["bytes"].as_f64()) else {
        panic!("iperf3 failed: {}", v["error"]);
    };
    Iperf {
        gbps: bps / 1e9,
        bytes,
    }
}

fn echo_once(addr: SocketAddr, msg: &[u8], back: &mut [u8]) -> std::io::Result<()> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.write_all(msg)?;
    s.read_exact(back)?;
    Ok(())
}

/// Connect, send 64 bytes, read them back, close: as many as `threads` clients manage in `secs`.
/// Returns (connections per second, failed attempts).
pub fn conn_rate(addr: SocketAddr, threads: usize, secs: f64) -> (f64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (stop, done, failed) = (stop.clone(), done.clone(), failed.clone());
            std::thread::spawn(move || {
                let msg = [b'x'; 64];
                let mut back = [0u8; 64];
                while !stop.load(Relaxed) {
                    match echo_once(addr, &msg, &mut back) {
                        Ok(()) => done.fetch_add(1, Relaxed),
                        Err(_) => failed.fetch_add(1, Relaxed),
                    };
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Relaxed);
    for w in workers {
        let _ = w.join();
    }
    let elapsed = start.elapsed().as_secs_f64();
    (done.load(Relaxed) as f64 / elapsed, failed.load(Relaxed))
}

/// 64-byte request/response on one connection for `secs`: (p50, p99) in microseconds.
pub fn ping_pong(addr: SocketAddr, secs: f64) -> (f64, f64) {
    let mut s = TcpStream::connect(addr).expect("connect for ping-pong");
    s.set_nodelay(true).expect("nodelay");
    let msg = [b'p'; 64];
    let mut back = [0u8; 64];
    // Warm up the path (first-touch allocations, caches) before timing.
    for _ in 0..200 {
        s.write_all(&msg).expect("ping");
        s.read_exact(&mut back).expect("pong");
    }
    let mut lat = Vec::with_capacity(1 << 20);
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        let t = Instant::now();
        s.write_all(&msg).expect("ping");
        s.read_exact(&mut back).expect("pong");
        lat.push(t.elapsed().as_nanos() as u64);
    }
    lat.sort_unstable();
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1000.0;
    (q(0.50), q(0.99))
}

/// Opens `n` connections through `addr`, each proven end-to-end by a one-byte echo, and keeps them.
pub fn open_idle(addr: SocketAddr, n: usize, into: &mut Vec<TcpStream>) {
    for i in 0..n {
        let mut s = TcpStream::connect(addr)
            .unwrap_or_else(|e| panic!("idle connection {i} of {n} to {addr}: {e}"));
        s.write_all(b"i").expect("write idle probe");
        let mut b = [0u8; 1];
        s.read_exact(&mut b).expect("read idle probe");
        into.push(s);
    }
}

/// What the stats listener costs with 100 sessions open: bytes and proxy CPU per request of the
/// dashboard page, a Prometheus scrape and the sessions list, each requested one after another for
/// `secs` (CPU time is read in clock ticks, so it takes thousands of requests to be exact). A page
/// the build does not serve (an older build) gives no figure.
pub fn stats_cost(
    pid: u32,
    addr: SocketAddr,
    stats: SocketAddr,
    secs: f64,
) -> Vec<(&'static str, f64)> {
    let mut conns: Vec<TcpStream> = Vec::new();
    open_idle(addr, 100, &mut conns);
    let mut v = Vec::new();
    for (path, kib, us) in [
        ("/", "page_kib", "page_cpu_us"),
        ("/metrics", "metrics_kib", "metrics_cpu_us"),
        ("/sessions.json", "sessions_kib", "sessions_cpu_us"),
    ] {
        let c0 = sys::cpu_secs(pid);
        let until = Instant::now() + Duration::from_secs_f64(secs);
        let (mut bytes, mut n) = (None, 0u64);
        while Instant::now() < until {
            let answer = setup::http_get(stats, path).unwrap_or_default();
            let ok = answer.lines().next().is_some_and(|l| l.contains(" 200 "));
            bytes = ok.then(|| answer.split_once("\r\n\r\n").map_or(0, |(_, b)| b.len()));
            if bytes.is_none() {
                break;
            }
            n += 1;
        }
        if let Some(b) = bytes {
            let c1 = sys::cpu_secs(pid);
            v.push((kib, b as f64 / 1024.0));
            v.push((us, (c1 - c0) * 1e6 / n.max(1) as f64));
        }
    }
    drop(conns);
    v
}
