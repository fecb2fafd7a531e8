//! Moving bytes between a client and a server: both directions in one task, half-close forwarded,
//! one idle timer for the session, and every error attributed to the side it came from.
//!
//! Each direction waits for readiness and then reads into a buffer that lives only until the bytes
//! are handed to the kernel: an idle session holds no buffer at all (`baseline.md`: a naive 2x8 KiB
//! copy loop costs 18 KiB per idle connection). Only when the peer's socket is full are the unsent
//! bytes copied to the heap, and that allocation is dropped as soon as it drains.

use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

/// Bytes read per readiness event.
const CHUNK: usize = 16 * 1024;

/// Which end of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "server",
        }
    }
}

/// How a relay ended.
#[derive(Debug)]
pub enum End {
    /// Both directions reached end-of-stream.
    Closed,
    /// No byte either way for the idle timeout; the side whose timeout fired.
    Idle(Side),
    /// An IO error on one side.
    Error(Side, io::Error),
}

/// Byte counters a relay adds to.
pub struct Meters<'a> {
    /// Client to server.
    pub up: [&'a AtomicU64; 2],
    /// Server to client.
    pub down: [&'a AtomicU64; 2],
}

/// Relays until both directions close, an error, or idleness. `idle_client`/`idle_server` are
/// HAProxy's `timeout client`/`timeout server`: inactivity timeouts where a byte in either direction
/// counts as activity for both (writing to a side refreshes its read timer, `haproxy-semantics.md`
/// §2.6), so the session goes at the smaller of the two.
pub async fn relay(
    client: &TcpStream,
    server: &TcpStream,
    meters: Meters<'_>,
    idle_client: Duration,
    idle_server: Duration,
) -> End {
    let epoch = Instant::now();
    let activity = AtomicU64::new(0);
    let up = pump(client, server, Side::Client, &activity, epoch, meters.up);
    let down = pump(server, client, Side::Server, &activity, epoch, meters.down);
    let (limit, side) = if idle_client <= idle_server {
        (idle_client, Side::Client)
    } else {
        (idle_server, Side::Server)
    };
    tokio::select! {
        r = async { tokio::try_join!(up, down) } => match r {
            Ok(_) => End::Closed,
            Err((side, e)) => End::Error(side, e),
        },
        _ = idle(&activity, epoch, limit) => End::Idle(side),
    }
}

/// One direction. Returns when `from` reaches end-of-stream (after forwarding the FIN to `to`).
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    from_side: Side,
    activity: &AtomicU64,
    epoch: Instant,
    meters: [&AtomicU64; 2],
) -> Result<(), (Side, io::Error)> {
    let to_side = match from_side {
        Side::Client => Side::Server,
        Side::Server => Side::Client,
    };
    let mut pending: Vec<u8> = Vec::new();
    loop {
        from.readable().await.map_err(|e| (from_side, e))?;
        {
            // Scoped so the buffer is not part of the future's state across the awaits below.
            let mut buf = [0u8; CHUNK];
            let n = match from.try_read(&mut buf) {
                Ok(0) => {
                    // Half-close: pass the FIN on and keep the other direction running.
                    match socket2::SockRef::from(to).shutdown(Shutdown::Write) {
                        Ok(()) => return Ok(()),
                        Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
                        Err(e) => return Err((to_side, e)),
                    }
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err((from_side, e)),
            };
            touch(activity, epoch);
            for m in meters {
                m.fetch_add(n as u64, Relaxed);
            }
            let mut off = 0;
            while off < n {
                match to.try_write(&buf[off..n]) {
                    Ok(k) => off += k,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        pending.extend_from_slice(&buf[off..n]);
                        break;
                    }
                    Err(e) => return Err((to_side, e)),
                }
            }
        }
        // The peer is slow: stop reading (back-pressure) until what we hold is sent.
        while !pending.is_empty() {
            to.writable().await.map_err(|e| (to_side, e))?;
            match to.try_write(&pending) {
                Ok(k) => {
                    pending.drain(..k);
                    touch(activity, epoch);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err((to_side, e)),
            }
        }
        if pending.capacity() > 0 {
            pending = Vec::new();
        }
    }
}

fn touch(activity: &AtomicU64, epoch: Instant) {
    activity.store(epoch.elapsed().as_millis() as u64, Relaxed);
}

/// Completes once `limit` has passed with no activity.
async fn idle(activity: &AtomicU64, epoch: Instant, limit: Duration) {
    loop {
        let last = epoch + Duration::from_millis(activity.load(Relaxed));
        let deadline = last + limit;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connected pair of sockets over loopback.
    async fn pair() -> (TcpStream, TcpStream) {
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
}
