//! The stats listener's resource limits over real sockets (issue 4, hardening issue item 5):
//! malformed and oversized requests get a 4xx, slow and idle clients are cut by the header timeout,
//! and no client of the stats port can disturb the primary port or lock the probes out.
//! Real time: the listener's timeouts run on hyper's timer.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::{connect, Cluster, Mode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
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
    // proxy on :5000". More slow clients than the stats listener's connection limit, each dripping
    // a request head one byte at a time: those over the per-client limit are closed at once, the
    // others by the header timeout.
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
        "the limits and the header timeout ({:?}) cut slow heads: {cut} of {attackers} cut",
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

/// A connection to `to` from the loopback address `from` (Linux routes all of 127/8 to `lo`).
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::new(from.parse().unwrap(), 0)).unwrap();
    s.connect(to).await.unwrap()
}

/// An HTTP client whose connections come from `from`, one new connection per request (as a
/// liveness probe makes).
fn client_from(from: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(from.parse::<IpAddr>().unwrap())
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// `GET path` from `client`: the status, or a panic if no answer came within one second.
async fn probe(c: &Cluster, client: &reqwest::Client, path: &str) -> u16 {
    let r = tokio::time::timeout(
        Duration::from_secs(1),
        client.get(format!("http://{}{path}", c.stats)).send(),
    )
    .await
    .unwrap_or_else(|_| panic!("{path}: no answer within 1 s"))
    .unwrap_or_else(|e| panic!("{path}: {e}"));
    r.status().as_u16()
}

/// Waits until the server closes `s` (EOF or reset), at most until `deadline`; false if still open.
async fn closed_by(s: &mut TcpStream, deadline: Instant) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // An error answer before the close.
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_flooding_the_stats_port_cannot_lock_out_the_probes() {
    // Hardening item 5: "150 idle sockets from one client made /healthz and /ready fail for 14 s".
    // 300 sockets from 127.0.0.2, more than the whole listener's limit, half of them silent, half
    // stuck in a request head; then probes from 127.0.0.3 are answered at once.
    let c = Cluster::start(vec![PRIMARY], FAST).await;
    c.wait_for(Duration::from_secs(5), "routed", |c| c.primary() == Some(0))
        .await;
    let limits = patroni_proxy::stats::Limits::default();
    let flood = 300;
    assert!(flood > limits.max_connections);
    let mut attack = Vec::new();
    for i in 0..flood {
        let mut s = connect_from("127.0.0.2", c.stats).await;
        if i % 2 == 1 {
            // The server may already have closed it.
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nX-").await;
        }
        attack.push(s);
    }
    let flooded = Instant::now();

    let probes = client_from("127.0.0.3");
    for path in ["/healthz", "/ready", "/healthz", "/ready"] {
        assert_eq!(probe(&c, &probes, path).await, 200, "{path}");
    }

    // Every attacking socket is closed: over the limit at once, the others by the header timeout
    // (hyper's timer starts before the first byte, so silent sockets are cut too).
    let deadline = flooded + limits.header_timeout + Duration::from_secs(2);
    let mut open = 0;
    for s in &mut attack {
        if !closed_by(s, deadline).await {
            open += 1;
        }
    }
    assert_eq!(
        open, 0,
        "attacking sockets still open after the header timeout"
    );
    let m = get(&c, "/metrics").await.text().await.unwrap();
    let refused = |reason: &str| -> usize {
        let series =
            format!("patroni_proxy_stats_connections_refused_total{{reason=\"{reason}\"}} ");
        m.lines()
            .find_map(|l| l.strip_prefix(&series))
            .unwrap_or_else(|| panic!("no {series}"))
            .parse()
            .unwrap()
    };
    // At most `per_client` held at once; a few more if a slot was freed (header timeout) while
    // the flood was still connecting on a slow machine.
    let client_limit = refused("client_limit");
    assert!(
        client_limit >= flood - 2 * limits.per_client && client_limit <= flood - limits.per_client,
        "{client_limit} refused for the client's limit"
    );
    assert_eq!(refused("full"), 0);

    // The slots were given back: the attacker's address is served again.
    assert_eq!(probe(&c, &client_from("127.0.0.2"), "/healthz").await, 200);
}
