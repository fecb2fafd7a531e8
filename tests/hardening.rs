//! Issue 11: no input from the network or a config can stop, blind or mislead the proxy. Each test
//! here reproduces one of the defects found against 0c53f5d, with in-process fakes; the tests that
//! need a whole process (exit codes, signals, stderr, file-descriptor limits) run the built binary.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::time::Duration;

use common::{pg_startup, startup_message, Cluster, Mode, PgMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const PRIMARY: Mode = Mode::Primary { timeline: 1 };

/// One client that provokes an answer a server gives to *that client*: a pg_hba reject (FATAL
/// 28000 then close), a malformed startup (closed without a word, as PostgreSQL does), a
/// CancelRequest (closed without a word), or bytes that are not PostgreSQL at all.
async fn provoke(addr: SocketAddr, kind: usize) {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return;
    };
    let bytes = match kind % 4 {
        0 => startup_message("rejected"),
        1 => {
            let mut m = startup_message("app");
            // Drop the terminator: PostgreSQL logs "invalid startup packet layout" and closes.
            let last = m.len() - 1;
            m[last] = b'x';
            m
        }
        2 => {
            let mut m = vec![0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
            m.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2]);
            m
        }
        _ => b"GET / HTTP/1.1\r\n\r\n".to_vec(),
    };
    let _ = s.write_all(&bytes).await;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_provoke_errors_never_take_the_primary_out_of_routing() {
    // Issue 11 item 2: "An ErrorResponse is the server's answer to that client: pass it on, end the
    // session, and never count it against the server ... test with rejected logins, malformed
    // startups and cancel requests at 10 per second while other clients connect: the primary stays
    // routed throughout and the others are not delayed." On 0c53f5d a reject every 3 s kept the
    // cluster without a routable primary for ~20 of 26 s.
    let (c, pgs) = Cluster::start_pg(
        vec![(PRIMARY, PgMode::Primary), (Mode::Replica, PgMode::Primary)],
        "",
    )
    .await;
    c.wait_for(Duration::from_secs(10), "node0 routed", |c| {
        c.primary() == Some(0) && c.status(0) == "UP"
    })
    .await;
    let addr = c.addr;
    let attack = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        for kind in 0..40 {
            tick.tick().await;
            tokio::spawn(provoke(addr, kind));
        }
    });
    let mut slowest = Duration::ZERO;
    let mut served = 0;
    while !attack.is_finished() {
        assert_eq!(
            c.primary(),
            Some(0),
            "the primary left routing during the attack"
        );
        let t = Instant::now();
        let reply = pg_startup(addr, false)
            .await
            .expect("a good client got a session");
        assert_eq!(reply[0], b'R');
        slowest = slowest.max(t.elapsed());
        served += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    attack.await.unwrap();
    assert_eq!(c.primary(), Some(0));
    assert!(served >= 20, "{served} good clients");
    // 0c53f5d held good clients for up to 2.5 s; a session's setup on loopback takes a few ms.
    assert!(
        slowest < Duration::from_secs(1),
        "slowest good client took {slowest:?}"
    );
    // The rejected login reached the server and its answer reached the client, once each.
    let snap = c.shared().current();
    assert!(
        matches!(
            snap.nodes[0].claim,
            patroni_proxy::routing::Claim::Primary { .. }
        ),
        "{:?}",
        snap.nodes[0].claim
    );
    assert!(pgs[0].startups.load(SeqCst) >= served);
}

#[tokio::test]
async fn a_rejected_login_reaches_the_client_as_the_server_sent_it() {
    // Issue 11 item 2: pass the ErrorResponse on and end the session; no replay elsewhere.
    let (c, pgs) = Cluster::start_pg(
        vec![(PRIMARY, PgMode::Primary), (Mode::Replica, PgMode::Primary)],
        "",
    )
    .await;
    c.wait_for(Duration::from_secs(10), "node0 routed", |c| {
        c.primary() == Some(0)
    })
    .await;
    let mut s = TcpStream::connect(c.addr).await.unwrap();
    s.write_all(&startup_message("rejected")).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply[0], b'E');
    let text = String::from_utf8_lossy(&reply);
    assert!(
        text.contains("28000") && text.contains("pg_hba.conf"),
        "{text}"
    );
    assert_eq!(pgs[0].startups.load(SeqCst), 1, "not replayed");
    assert_eq!(pgs[1].startups.load(SeqCst), 0);
    assert_eq!(c.shared().frontend.replays.load(Relaxed), 0);
    assert_eq!(c.primary(), Some(0));
}

/// The keepalive timer `ss` shows on the proxy's socket of a connection, by its local port.
fn keepalive_timer(port: u16) -> Option<String> {
    let out = std::process::Command::new("ss")
        .args([
            "-tnoH",
            "state",
            "established",
            &format!("( sport = :{port} )"),
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.contains("keepalive").then_some(text)
}

#[tokio::test]
async fn client_and_server_sockets_have_tcp_keepalive() {
    // Issue 11, "Also": TCP keepalive on client and server sockets (HAProxy's `option clitcpka` /
    // `srvtcpka`), on by default here: a peer that vanished without a FIN is found in minutes.
    let (c, pgs) = Cluster::start_pg(vec![(PRIMARY, PgMode::Primary)], "").await;
    c.wait_for(Duration::from_secs(10), "node0 routed", |c| {
        c.primary() == Some(0)
    })
    .await;
    let mut s = TcpStream::connect(c.addr).await.unwrap();
    s.write_all(&startup_message("app")).await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    // The proxy's side of the client connection: local port = the proxy's listening port.
    let client_side = keepalive_timer(c.addr.port());
    assert!(client_side.is_some(), "no keepalive on the client socket");
    // The proxy's side of the server connection: `ss` filtered by the fake PostgreSQL's port as the
    // destination.
    let out = std::process::Command::new("ss")
        .args([
            "-tnoH",
            "state",
            "established",
            &format!("( dport = :{} )", pgs[0].addr.port()),
        ])
        .output()
        .unwrap();
    let server_side = String::from_utf8_lossy(&out.stdout);
    assert!(server_side.contains("keepalive"), "{server_side}");
}
