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
    let f = relay_next(client, server, meters, (idle_client, idle_server), None);
    async move {
        match f.await {
            Next::End(end) => end,
            Next::Kernel => panic!("a relay without kernel_after asked to move into the kernel"),
        }
    }
}

/// [`Relay`] with `kernel_after`, until it ends or asks to move into the kernel.
fn relay_next<'a>(
    client: &'a TcpStream,
    server: &'a TcpStream,
    meters: Meters<'a>,
    (idle_client, idle_server): (Duration, Duration),
    kernel_after: Option<u32>,
) -> RelayFuture<'a> {
    let (state, deadline) = Relay::new(idle_client, idle_server, kernel_after);
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
    type Output = Next;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Next> {
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
        let end = relay(
            &proxy_client,
            &proxy_server,
            meters(&counters),
            Duration::from_secs(60),
            Duration::from_secs(60),
        )
        .await;
        // As a session's task does: the last FIN is the close's (`Direction::finish`).
        drop((proxy_client, proxy_server));
        end
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
    let f = relay_next(
        &proxy_client,
        &proxy_server,
        meters(&counters),
        (Duration::from_secs(1), Duration::from_secs(1)),
        None,
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

const MINUTE: (Duration, Duration) = (Duration::from_secs(60), Duration::from_secs(60));

/// Bytes waiting in a socket's receive queue (`FIONREAD`).
fn queued(s: &TcpStream) -> usize {
    rustix::io::ioctl_fionread(s).unwrap() as usize
}

#[tokio::test]
async fn asks_to_move_into_the_kernel_after_its_reads_and_reads_no_more() {
    // docs/configuration.md, `listen.kernel_after`: the session moves once it relayed that many
    // reads and holds no byte in user space; what arrives later waits in the socket for the kernel.
    let (mut app, proxy_client) = pair().await;
    let (proxy_server, mut db) = pair().await;
    let counters: [AtomicU64; 4] = Default::default();
    let relaying = relay_next(
        &proxy_client,
        &proxy_server,
        meters(&counters),
        MINUTE,
        Some(3),
    );
    let peers = async {
        let mut b = [0u8; 1];
        app.write_all(b"1").await.unwrap();
        db.read_exact(&mut b).await.unwrap();
        db.write_all(b"2").await.unwrap();
        app.read_exact(&mut b).await.unwrap();
        app.write_all(b"3").await.unwrap();
        db.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"3");
    };
    let (next, ()) = tokio::join!(relaying, peers);
    assert!(matches!(next, Next::Kernel), "{next:?}");
    assert_eq!(counters.each_ref().map(|c| c.load(Relaxed)), [2, 2, 1, 1]);
    app.write_all(b"4").await.unwrap();
    proxy_client.readable().await.unwrap();
    assert_eq!(
        queued(&proxy_client),
        1,
        "left in the socket for the kernel"
    );
}

#[tokio::test]
async fn a_destination_that_has_not_taken_everything_delays_the_move() {
    // Nothing may stay in user space when the kernel takes over: the bytes of the move's last read
    // that the server's socket refused are written first.
    let (mut app, proxy_client) = pair().await;
    let l = tokio::net::TcpSocket::new_v4().unwrap();
    l.set_recv_buffer_size(4096).unwrap();
    l.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let l = l.listen(1).unwrap();
    let proxy_server = tokio::net::TcpSocket::new_v4().unwrap();
    proxy_server.set_send_buffer_size(4096).unwrap();
    let proxy_server = proxy_server.connect(l.local_addr().unwrap()).await.unwrap();
    let (mut db, _) = l.accept().await.unwrap();
    let counters: [AtomicU64; 4] = Default::default();
    let payload: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
    app.write_all(&payload).await.unwrap();
    proxy_client.readable().await.unwrap();
    let mut relaying = std::pin::pin!(relay_next(
        &proxy_client,
        &proxy_server,
        meters(&counters),
        MINUTE,
        Some(1),
    ));
    // One read took more than the server's small buffers hold: the relay waits for them.
    let early = tokio::time::timeout(Duration::from_millis(100), relaying.as_mut()).await;
    assert!(early.is_err(), "moved while holding bytes: {early:?}");
    let read = counters[0].load(Relaxed) as usize;
    assert!(read > 16_384, "one read of {read} bytes");
    let mut got = vec![0u8; read];
    let (next, _) = tokio::join!(relaying, db.read_exact(&mut got));
    assert!(matches!(next, Next::Kernel), "{next:?}");
    assert_eq!(
        got,
        payload[..read],
        "every byte read was written, in order"
    );
    assert_eq!(
        counters[0].load(Relaxed) as usize,
        read,
        "and no more was read"
    );
    assert_eq!(queued(&proxy_client), payload.len() - read);
}

/// [`relay_next`] over sockets it owns, closed once the relay is done, as a session closes them.
async fn relay_then_close(client: TcpStream, server: TcpStream, kernel_after: Option<u32>) -> Next {
    let counters: [AtomicU64; 4] = Default::default();
    relay_next(&client, &server, meters(&counters), MINUTE, kernel_after).await
}

#[tokio::test]
async fn a_stream_that_ended_keeps_its_session_in_user_space() {
    // A half-closed session is on its way out: moving it would only cost.
    let (mut app, proxy_client) = pair().await;
    let (proxy_server, mut db) = pair().await;
    let relaying = relay_then_close(proxy_client, proxy_server, Some(2));
    let peers = async {
        app.write_all(b"x").await.unwrap();
        app.shutdown().await.unwrap();
        let mut got = Vec::new();
        db.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"x");
        db.write_all(b"answer").await.unwrap();
        db.shutdown().await.unwrap();
        let mut back = Vec::new();
        app.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"answer");
    };
    let (next, ()) = tokio::join!(relaying, peers);
    assert!(matches!(next, Next::End(End::Closed)), "{next:?}");
}

#[tokio::test]
async fn a_bulk_session_stays_in_user_space() {
    // docs/benchmarks.md, "Bulk stays in user space": a read that fills the buffer makes the
    // direction splice, and the session keeps relaying here whatever `kernel_after` says.
    let (mut app, proxy_client) = pair().await;
    let (proxy_server, mut db) = pair().await;
    let bulk: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    app.write_all(&bulk).await.unwrap();
    // More than one buffer's worth waits in the socket, so the relay's first read fills it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while queued(&proxy_client) < 65_536 {
        assert!(
            Instant::now() < deadline,
            "{} queued",
            queued(&proxy_client)
        );
        tokio::task::yield_now().await;
    }
    let relaying = relay_then_close(proxy_client, proxy_server, Some(4));
    let peers = async {
        let mut got = vec![0u8; bulk.len()];
        db.read_exact(&mut got).await.unwrap();
        assert!(got == bulk, "the bulk bytes in order");
        // Past `kernel_after` reads in small messages: still no move.
        let mut b = [0u8; 1];
        for i in 0..4u8 {
            app.write_all(&[i]).await.unwrap();
            db.read_exact(&mut b).await.unwrap();
            db.write_all(&b).await.unwrap();
            app.read_exact(&mut b).await.unwrap();
            assert_eq!(b, [i]);
        }
        drop((app, db));
    };
    let (next, ()) = tokio::join!(relaying, peers);
    assert!(matches!(next, Next::End(End::Closed)), "{next:?}");
}
