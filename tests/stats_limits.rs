//! The stats listener's resource limits over real sockets (issue 4, hardening issue item 5):
//! malformed and oversized requests get a 4xx, slow and idle clients are cut by the header timeout,
//! and no client of the stats port can disturb the primary port or lock the probes out.
//! Real time: the listener's timeouts run on hyper's timer.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{connect, Cluster, Mode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const PRIMARY: Mode = Mode::Primary { timeline: 1 };
/// Checks every 100 ms so the cluster settles in well under a second.
const FAST: &str = "[check]\ninter = \"100ms\"\n";

async fn get(c: &Cluster, path: &str) -> reqwest::Response {
    reqwest::get(format!("http://{}{path}", c.stats))
        .await
        .expect("stats answered")
}

/// Sends raw bytes to the stats port and returns what came back until the server closed (or 10 s).
async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before it has read everything we send.
    let _ = s.write_all(request).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_requests_get_a_4xx() {
    let c = Cluster::start(vec![PRIMARY], FAST).await;
    let status = |r: &str| r.lines().next().unwrap_or("").to_string();
    let r = raw(c.stats, b"HELLO THERE\r\n\r\n").await;
    assert!(status(&r).starts_with("HTTP/1.1 400"), "{r:.200}");
    let r = raw(c.stats, b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n").await;
    assert!(status(&r).starts_with("HTTP/1.1 400"), "{r:.200}");
    let long = format!(
        "GET /{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "a".repeat(4000)
    );
    let r = raw(c.stats, long.as_bytes()).await;
    assert!(status(&r).starts_with("HTTP/1.1 414"), "{r:.200}");
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(64 * 1024)
    );
    let r = raw(c.stats, huge.as_bytes()).await;
    assert!(status(&r).starts_with("HTTP/1.1 431"), "{r:.200}");

    // A body (announced as large and sent slowly) is never read: 413 and the connection closes.
    let t = Instant::now();
    let mut s = TcpStream::connect(c.stats).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\nsome")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("closed without waiting for the body")
        .unwrap();
    let r = String::from_utf8_lossy(&out);
    assert!(status(&r).starts_with("HTTP/1.1 413"), "{r:.200}");
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_on_the_stats_port_does_not_disturb_the_primary_port() {
    // Issue 4: "malformed, slow or oversized requests get a 4xx or a timeout and never disturb the
    // proxy on :5000". More slow clients than the stats listener's connection limit (64), each
    // dripping a request head one byte at a time.
    let c = Cluster::start(vec![PRIMARY], FAST).await;
    c.wait_for(Duration::from_secs(5), "routed", |c| c.primary() == Some(0))
        .await;
    let limits = patroni_proxy::stats::Limits::default();
    let attackers = limits.max_connections + 36;
    let mut slow = Vec::new();
    for _ in 0..attackers {
        let mut s = TcpStream::connect(c.stats).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nX-").await.unwrap();
        slow.push(s);
    }
    let drip = tokio::spawn(async move {
        let start = Instant::now();
        let mut cut = 0;
        // Keep dripping one byte a second; count the connections the server cut.
        while start.elapsed() < Duration::from_secs(12) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            for s in &mut slow {
                let _ = s.write_all(b"a").await;
            }
            cut = 0;
            for s in &mut slow {
                let mut b = [0u8; 512];
                match tokio::time::timeout(Duration::from_millis(1), s.read(&mut b)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => cut += 1,
                    Ok(Ok(_)) => cut += 1, // an error answer, then the close
                    Err(_) => {}
                }
            }
        }
        cut
    });

    // Meanwhile the primary port serves clients at once.
    for _ in 0..30 {
        let t = Instant::now();
        let (node, mut session) = connect(c.addr).await.expect("proxied during the attack");
        assert_eq!(node, "node0");
        assert!(session.alive().await);
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "slow: {:?}",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cut = drip.await.unwrap();
    assert!(
        cut >= limits.max_connections,
        "the header timeout ({:?}) cuts slow heads: {cut} of {attackers} cut",
        limits.header_timeout
    );
    // And the stats listener itself serves again once they are gone.
    assert_eq!(get(&c, "/healthz").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let c = Cluster::start(vec![PRIMARY], FAST).await;
    let limits = patroni_proxy::stats::Limits::default();
    let mut s = TcpStream::connect(c.stats).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Kept alive, then idle: closed by the server once the next head has not come in time.
    let t = Instant::now();
    let closed = tokio::time::timeout(limits.header_timeout * 2, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "idle connection still open after {:?}",
        t.elapsed()
    );
    assert!(t.elapsed() >= limits.header_timeout - Duration::from_millis(500));
}
