//! The relay's tests, and the relay-until-the-end helper the session tests use too.

use super::*;

/// Relays until both directions close, an error, or idleness. `idle_client`/`idle_server` are
/// HAProxy's `timeout client`/`timeout server`: inactivity timeouts where a byte in either direction
/// counts as activity for both (writing to a side refreshes its read timer, `haproxy-semantics.md`
/// §2.6), so the session goes at the smaller of the two.
pub(crate) fn relay<'a>(
    client: &'a TcpStream,
    server: &'a TcpStream,
    meters: Meters<'a>,
    idle_client: Duration,
    idle_server: Duration,
) -> impl Future<Output = End> + 'a {
    let (state, deadline) = Relay::new(idle_client, idle_server);
    RelayFuture {
        client,
        server,
        meters,
        state,
        sleep: tokio::time::sleep_until(deadline),
    }
}

pin_project_lite::pin_project! {
    /// [`Relay`] over borrowed sockets, for these tests. Sessions own theirs
    /// (`session::RelayTask`).
    struct RelayFuture<'a> {
        client: &'a TcpStream,
        server: &'a TcpStream,
        meters: Meters<'a>,
        state: Relay,
        #[pin]
        sleep: Sleep,
    }
}

impl Future for RelayFuture<'_> {
    type Output = End;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<End> {
        let this = self.project();
        this.state
            .poll(cx, this.client, this.server, this.meters, this.sleep)
    }
}
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A connected pair of sockets over loopback.
pub(crate) async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (b, _) = l.accept().await.unwrap();
    (a, b)
}

fn meters(c: &[AtomicU64; 4]) -> Meters<'_> {
    Meters {
        up: [&c[0], &c[1]],
        down: [&c[2], &c[3]],
    }
}

#[tokio::test]
async fn relays_both_ways_and_forwards_half_close() {
    // haproxy-semantics.md checklist: "Half-close is forwarded: the client's FIN reaches the
    // server and server->client data keeps flowing."
    let (mut app, proxy_client) = pair().await;
    let (proxy_server, mut db) = pair().await;
    let counters: [AtomicU64; 4] = Default::default();
    let relay_task = async {
        relay(
            &proxy_client,
            &proxy_server,
            meters(&counters),
            Duration::from_secs(60),
            Duration::from_secs(60),
        )
        .await
    };
    let peers = async {
        app.write_all(b"hello").await.unwrap();
        app.shutdown().await.unwrap();
        let mut got = Vec::new();
        db.read_to_end(&mut got).await.unwrap(); // ends only if the FIN was forwarded
        assert_eq!(got, b"hello");
        // The other direction still works after the client's half-close.
        let big = vec![7u8; 1 << 20];
        db.write_all(&big).await.unwrap();
        db.shutdown().await.unwrap();
        let mut back = Vec::new();
        app.read_to_end(&mut back).await.unwrap();
        assert_eq!(back.len(), big.len());
    };
    let (end, ()) = tokio::join!(relay_task, peers);
    assert!(matches!(end, End::Closed), "{end:?}");
    assert_eq!(counters[0].load(Relaxed), 5);
    assert_eq!(counters[2].load(Relaxed), 1 << 20);
}

#[tokio::test(start_paused = true)]
async fn idle_session_ends_at_the_smaller_timeout() {
    // "Client and server timeouts are inactivity timeouts: both sides idle for 30 m closes the
    // whole session (`cD` when the client timeout fires first)."
    let (_app, proxy_client) = pair().await;
    let (proxy_server, _db) = pair().await;
    let counters: [AtomicU64; 4] = Default::default();
    let start = Instant::now();
    let end = relay(
        &proxy_client,
        &proxy_server,
        meters(&counters),
        Duration::from_secs(1800),
        Duration::from_secs(3600),
    )
    .await;
    assert!(matches!(end, End::Idle(Side::Client)), "{end:?}");
    assert_eq!(start.elapsed(), Duration::from_secs(1800));
}

#[tokio::test]
async fn an_idle_relay_is_small() {
    // Its state is part of every session's task for the session's whole life: with the two
    // async pumps it replaced it was 1 904 bytes (docs/benchmarks.md, memory per connection).
    let (_app, proxy_client) = pair().await;
    let (proxy_server, _db) = pair().await;
    let counters: [AtomicU64; 4] = Default::default();
    let f = relay(
        &proxy_client,
        &proxy_server,
        meters(&counters),
        Duration::from_secs(1),
        Duration::from_secs(1),
    );
    assert!(
        std::mem::size_of_val(&f) <= 256,
        "{}",
        std::mem::size_of_val(&f)
    );
}

#[tokio::test]
async fn a_reset_is_attributed_to_its_side() {
    let (app, proxy_client) = pair().await;
    let (proxy_server, _db) = pair().await;
    let counters: [AtomicU64; 4] = Default::default();
    socket2::SockRef::from(&app)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(app); // RST
    let end = relay(
        &proxy_client,
        &proxy_server,
        meters(&counters),
        Duration::from_secs(60),
        Duration::from_secs(60),
    )
    .await;
    assert!(matches!(end, End::Error(Side::Client, _)), "{end:?}");
}
