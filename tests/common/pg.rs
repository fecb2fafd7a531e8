//! PostgreSQL's side of the fakes: a server speaking just the startup (`FakePg`), the messages a
//! test client sends, and what a client got back from the proxy (`Outcome`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a client got from the proxy.
#[derive(Debug)]
pub enum Outcome {
    /// Greeted by this echo node.
    Node(String),
    /// A PostgreSQL ErrorResponse with this SQLSTATE and message.
    PgError(String, String),
    /// Closed (or reset) with nothing received.
    Closed,
}

/// Connects and reports the first thing the proxy or the node sends.
pub async fn outcome(addr: SocketAddr) -> Outcome {
    let Ok(s) = TcpStream::connect(addr).await else {
        return Outcome::Closed;
    };
    read_outcome(s).await
}

pub async fn read_outcome(mut s: TcpStream) -> Outcome {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(60), async {
        let mut chunk = [0u8; 1024];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if buf.starts_with(b"NODE ") && buf.contains(&b'\n') {
                break;
            }
        }
    })
    .await;
    parse_outcome(&buf)
}

pub fn parse_outcome(buf: &[u8]) -> Outcome {
    if buf.is_empty() {
        return Outcome::Closed;
    }
    if let Some(rest) = buf.strip_prefix(b"NODE ") {
        let line = String::from_utf8_lossy(rest);
        return Outcome::Node(line.lines().next().unwrap_or("").to_string());
    }
    if buf[0] == b'E' {
        let (mut code, mut msg) = (String::new(), String::new());
        for f in buf[5..].split(|&b| b == 0) {
            match f.first() {
                Some(b'C') => code = String::from_utf8_lossy(&f[1..]).into(),
                Some(b'M') => msg = String::from_utf8_lossy(&f[1..]).into(),
                _ => {}
            }
        }
        return Outcome::PgError(code, msg);
    }
    panic!("unexpected bytes from the proxy: {buf:?}");
}

/// A StartupMessage for `user` (protocol 3.0).
pub fn startup_message(user: &str) -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    for (k, v) in [("user", user), ("database", "postgres")] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut m = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    m.extend_from_slice(&body);
    m
}

pub const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
const CANCEL_CODE: u32 = 80_877_102;

/// How a fake PostgreSQL answers a startup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgMode {
    /// AuthenticationOk, ParameterStatus in_hot_standby=off, ReadyForQuery; then echoes.
    Primary,
    /// As `Primary` but in_hot_standby=on.
    Standby,
    /// FATAL 57P03 "the database system is shutting down", then close.
    ShuttingDown,
    /// Reads the startup and resets the connection without a reply, as a postmaster that exits
    /// with connections still in its listen backlog (end of a switchover, crash).
    Vanishes,
    /// Reads the startup and never answers (a server that hangs, or whose host went silent).
    Silent,
}

fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![kind];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// A fake PostgreSQL server speaking just the startup, answering SSLRequest with `N`.
pub struct FakePg {
    pub addr: SocketAddr,
    mode: Arc<Mutex<PgMode>>,
    pub startups: Arc<AtomicUsize>,
}

impl FakePg {
    pub async fn start(mode: PgMode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(Mutex::new(mode));
        let startups = Arc::new(AtomicUsize::new(0));
        let (m, count) = (mode.clone(), startups.clone());
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let (m, count) = (m.clone(), count.clone());
                tokio::spawn(async move {
                    let mut head = [0u8; 8];
                    if s.read_exact(&mut head).await.is_err() {
                        return;
                    }
                    if head == SSL_REQUEST {
                        s.write_all(b"N").await.unwrap();
                        if s.read_exact(&mut head).await.is_err() {
                            return;
                        }
                    }
                    let len = u32::from_be_bytes(head[..4].try_into().unwrap()) as usize;
                    let code = u32::from_be_bytes(head[4..].try_into().unwrap());
                    // As PostgreSQL: a CancelRequest and an impossible length get no answer.
                    if (len == 16 && code == CANCEL_CODE) || !(9..=10_000).contains(&len) {
                        let mut key = [0u8; 8];
                        let _ = s.read_exact(&mut key).await;
                        return;
                    }
                    let mut rest = vec![0u8; len - 8];
                    if s.read_exact(&mut rest).await.is_err() {
                        return;
                    }
                    // "invalid startup packet layout: expected terminator as last byte": logged
                    // by PostgreSQL, never sent; the connection just closes.
                    if rest.last() != Some(&0) {
                        return;
                    }
                    count.fetch_add(1, SeqCst);
                    let mode = *m.lock().unwrap();
                    let mut out = Vec::new();
                    // A pg_hba.conf reject: FATAL 28000 before any authentication request.
                    if rest.windows(10).any(|w| w == b"\0rejected\0") {
                        out.extend(message(
                            b'E',
                            b"SFATAL\0C28000\0Mno pg_hba.conf entry for user \"rejected\"\0\0",
                        ));
                        let _ = s.write_all(&out).await;
                        return;
                    }
                    if mode == PgMode::Vanishes {
                        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                        return;
                    }
                    if mode == PgMode::Silent {
                        std::future::pending::<()>().await;
                    }
                    if mode == PgMode::ShuttingDown {
                        out.extend(message(
                            b'E',
                            b"SFATAL\0C57P03\0Mthe database system is shutting down\0\0",
                        ));
                        let _ = s.write_all(&out).await;
                        return;
                    }
                    out.extend(message(b'R', &0u32.to_be_bytes()));
                    let hs: &[u8] = if mode == PgMode::Standby {
                        b"in_hot_standby\0on\0"
                    } else {
                        b"in_hot_standby\0off\0"
                    };
                    out.extend(message(b'S', b"server_version\x0015.18\0"));
                    out.extend(message(b'S', hs));
                    out.extend(message(b'K', &[0, 0, 0, 1, 0, 0, 0, 2]));
                    out.extend(message(b'Z', b"I"));
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        Self {
            addr,
            mode,
            startups,
        }
    }

    pub fn set(&self, mode: PgMode) {
        *self.mode.lock().unwrap() = mode;
    }
}

/// Sends a startup (optionally after an SSLRequest) and returns what came back: `Ok(bytes up to and
/// including ReadyForQuery)` or the error.
pub async fn pg_startup(addr: SocketAddr, ssl_first: bool) -> Result<Vec<u8>, Outcome> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|_| Outcome::Closed)?;
    if ssl_first {
        s.write_all(&SSL_REQUEST).await.unwrap();
        let mut b = [0u8; 1];
        match s.read_exact(&mut b).await {
            Ok(_) if b[0] == b'N' => {}
            _ => return Err(Outcome::Closed),
        }
    }
    s.write_all(&startup_message("app")).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(60), s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Err(parse_outcome(&buf)),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
        // Walk the complete messages: an ErrorResponse before ReadyForQuery is the answer.
        let mut at = 0;
        while buf.len() >= at + 5 {
            let len = u32::from_be_bytes(buf[at + 1..at + 5].try_into().unwrap()) as usize;
            if buf.len() < at + 1 + len {
                break;
            }
            match buf[at] {
                b'E' => return Err(parse_outcome(&buf[at..at + 1 + len])),
                b'Z' => return Ok(buf),
                _ => at += 1 + len,
            }
        }
    }
}
