//! In-process fakes for exact tests of the health and routing logic: a Patroni REST endpoint whose
//! answer the test flips (200/503 with Patroni-like JSON, hang, reset, garbage, stopped), and an echo
//! "database" that greets each client with its node name. The real-cluster tests live in `e2e.rs`.
#![allow(dead_code)]

pub mod binary;
mod pg;

#[allow(unused_imports)]
pub use pg::*;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use patroni_proxy::config::Config;
use patroni_proxy::supervisor::{self, Listeners, Running};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

/// What the fake REST endpoint answers.
#[derive(Debug, Clone)]
pub enum Mode {
    /// 200 with `role: primary`.
    Primary { timeline: u64 },
    /// 503 with `role: replica`, as Patroni's `/` on a replica.
    Replica,
    /// Any status line and body.
    Raw(String),
    /// Accept, read the request, never answer.
    Hang,
    /// Accept, then reset the connection.
    Reset,
    /// Answer after a delay.
    Delayed(Duration, Box<Mode>),
}

impl Mode {
    fn response(&self) -> Option<String> {
        match self {
            Mode::Primary { timeline } => Some(format!(
                "HTTP/1.0 200 OK\r\nServer: BaseHTTP/0.6 Python/3.11\r\nContent-Type: application/json\r\n\r\n\
                 {{\"state\": \"running\", \"role\": \"primary\", \"server_version\": 150018, \"timeline\": {timeline}, \
                 \"xlog\": {{\"location\": 67108864}}, \"patroni\": {{\"version\": \"4.1.5\", \"scope\": \"postgres\"}}}}"
            )),
            Mode::Replica => Some(
                "HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n\r\n\
                 {\"state\": \"running\", \"role\": \"replica\", \"timeline\": 1, \"replication_state\": \"streaming\"}"
                    .to_string(),
            ),
            Mode::Raw(s) => Some(s.clone()),
            _ => None,
        }
    }
}

/// A fake Patroni REST API on 127.0.0.1.
pub struct FakePatroni {
    pub addr: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    /// Every request received, raw.
    pub requests: Arc<Mutex<Vec<Vec<u8>>>>,
    pub checks: Arc<AtomicUsize>,
    /// When each request arrived.
    pub times: Arc<Mutex<Vec<tokio::time::Instant>>>,
    running: Mutex<CancellationToken>,
}

impl FakePatroni {
    pub async fn start(mode: Mode) -> Arc<Self> {
        Self::start_at("127.0.0.1:0", mode).await
    }

    /// As [`FakePatroni::start`], on `addr`.
    pub async fn start_at(addr: &str, mode: Mode) -> Arc<Self> {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = Arc::new(Self {
            addr,
            mode: Arc::new(Mutex::new(mode)),
            requests: Default::default(),
            checks: Default::default(),
            times: Default::default(),
            running: Mutex::new(CancellationToken::new()),
        });
        fake.serve(listener);
        fake
    }

    pub fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// Closes the listening socket: checks now get "Connection refused".
    pub fn stop(&self) {
        self.running.lock().unwrap().cancel();
    }

    /// Listens again on the same port.
    pub async fn restart(self: &Arc<Self>) {
        let sock = TcpSocket::new_v4().unwrap();
        sock.set_reuseaddr(true).unwrap();
        sock.bind(self.addr).unwrap();
        let listener = sock.listen(64).unwrap();
        *self.running.lock().unwrap() = CancellationToken::new();
        self.serve(listener);
    }

    fn serve(self: &Arc<Self>, listener: TcpListener) {
        let me = self.clone();
        let stop = self.running.lock().unwrap().clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = tokio::select! {
                    _ = stop.cancelled() => return,
                    a = listener.accept() => a.unwrap(),
                };
                let me = me.clone();
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    me.requests.lock().unwrap().push(req);
                    me.checks.fetch_add(1, SeqCst);
                    me.times.lock().unwrap().push(tokio::time::Instant::now());
                    let mut mode = me.mode.lock().unwrap().clone();
                    if let Mode::Delayed(d, inner) = mode {
                        tokio::time::sleep(d).await;
                        mode = *inner;
                    }
                    match mode {
                        Mode::Hang => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        }
                        Mode::Reset => {
                            socket2::SockRef::from(&s)
                                .set_linger(Some(Duration::ZERO))
                                .unwrap();
                        }
                        m => {
                            let _ = s.write_all(m.response().unwrap().as_bytes()).await;
                        }
                    }
                });
            }
        });
    }
}

/// An echo "database" that first writes `NODE <name>\n`.
pub struct FakeDb {
    pub addr: SocketAddr,
    pub name: String,
    pub accepted: Arc<AtomicUsize>,
    /// The address of every connection accepted (the proxy's side of it), in order.
    pub peers: Arc<Mutex<Vec<SocketAddr>>>,
}

impl FakeDb {
    pub async fn start(name: &str) -> Self {
        Self::start_at("127.0.0.1:0", name).await
    }

    /// As [`FakeDb::start`], on `addr`.
    pub async fn start_at(addr: &str, name: &str) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let (count, greeting) = (accepted.clone(), format!("NODE {name}\n"));
        let seen = peers.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, peer) = listener.accept().await.unwrap();
                seen.lock().unwrap().push(peer);
                count.fetch_add(1, SeqCst);
                let greeting = greeting.clone();
                tokio::spawn(async move {
                    if s.write_all(greeting.as_bytes()).await.is_err() {
                        return;
                    }
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        Self {
            addr,
            name: name.to_string(),
            accepted,
            peers,
        }
    }
}

/// A free loopback port with nothing listening (connections to it are refused).
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// One node of a fake cluster.
pub struct Node {
    pub rest: Arc<FakePatroni>,
    pub db: FakeDb,
}

/// Three fake nodes and a proxy in front of them.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub proxy: Option<Running>,
    pub addr: SocketAddr,
    pub stats: SocketAddr,
    /// The other listeners' addresses, in the configuration's order (`state::sets::specs`).
    pub set_addrs: Vec<SocketAddr>,
    /// The primary port's other bind addresses (`listen.bind` with several).
    pub more_addrs: Vec<SocketAddr>,
}

impl Cluster {
    /// `modes[i]` is node i's initial REST answer; `extra` is TOML for `[global]`/`[listen]`/`[check]`
    /// overrides (whole tables).
    pub async fn start(modes: Vec<Mode>, extra: &str) -> Self {
        Self::start_custom(modes, extra, "", &[]).await
    }

    /// As [`Cluster::start`], plus `server_extra` appended to every `[[server]]` table, and the nodes
    /// in `refuse_db` given a PostgreSQL address where nothing listens.
    pub async fn start_custom(
        modes: Vec<Mode>,
        extra: &str,
        server_extra: &str,
        refuse_db: &[usize],
    ) -> Self {
        Self::start_with_dbs(modes, extra, server_extra, refuse_db, None).await
    }

    /// As [`Cluster::start`] with fake PostgreSQL servers (one per node) instead of echo nodes.
    pub async fn start_pg(nodes: Vec<(Mode, PgMode)>, extra: &str) -> (Self, Vec<FakePg>) {
        let mut pgs = Vec::new();
        let mut modes = Vec::new();
        for (m, pg) in nodes {
            pgs.push(FakePg::start(pg).await);
            modes.push(m);
        }
        let addrs = pgs.iter().map(|p| p.addr).collect();
        let c = Self::start_with_dbs(modes, extra, "", &[], Some(addrs)).await;
        (c, pgs)
    }

    /// As [`Cluster::start`], with node `i`'s PostgreSQL at `dbs[i]` (a server of the test's own).
    pub async fn start_on(modes: Vec<Mode>, extra: &str, dbs: Vec<SocketAddr>) -> Self {
        Self::start_with_dbs(modes, extra, "", &[], Some(dbs)).await
    }

    async fn start_with_dbs(
        modes: Vec<Mode>,
        extra: &str,
        server_extra: &str,
        refuse_db: &[usize],
        dbs: Option<Vec<SocketAddr>>,
    ) -> Self {
        let mut nodes = Vec::new();
        for (i, m) in modes.into_iter().enumerate() {
            nodes.push(Node {
                rest: FakePatroni::start(m).await,
                db: FakeDb::start(&format!("node{i}")).await,
            });
        }
        // One relay thread unless a test asks for more: most tests pause tokio's clock, which the
        // other threads' runtimes do not share.
        let mut toml = match (extra.contains("threads"), extra.contains("[global]")) {
            (true, _) => extra.to_string(),
            (false, true) => extra.replacen("[global]", "[global]\nthreads = 1", 1),
            (false, false) => format!("[global]\nthreads = 1\n{extra}"),
        };
        for (i, n) in nodes.iter().enumerate() {
            let db = match &dbs {
                Some(d) => d[i],
                None if refuse_db.contains(&i) => closed_port().await,
                None => n.db.addr,
            };
            toml.push_str(&format!(
                "\n[[server]]\nname = \"node{i}\"\naddress = \"{db}\"\ncheck_port = {}\n{server_extra}\n",
                n.rest.addr.port()
            ));
        }
        let toml = with_test_relay(&toml);
        let config = Arc::new(Config::from_toml(&toml).expect("test config is valid"));
        let proxy_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stats_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, stats) = (proxy_l.local_addr().unwrap(), stats_l.local_addr().unwrap());
        let mut sets = Vec::new();
        for i in 0..patroni_proxy::state::sets::specs(&config).len() {
            sets.push((i, TcpListener::bind("127.0.0.1:0").await.unwrap()));
        }
        let set_addrs = sets.iter().map(|(_, l)| l.local_addr().unwrap()).collect();
        let mut proxy_more = Vec::new();
        for _ in 1..config.listen.bind.all().len() {
            proxy_more.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let more_addrs = proxy_more.iter().map(|l| l.local_addr().unwrap()).collect();
        let running = supervisor::start(
            config,
            Listeners {
                proxy_more,
                proxy: proxy_l,
                stats: Some(stats_l),
                sets,
            },
        );
        Self {
            nodes,
            proxy: Some(running),
            addr,
            stats,
            set_addrs,
            more_addrs,
        }
    }

    pub fn shared(&self) -> &patroni_proxy::state::Shared {
        &self.proxy.as_ref().unwrap().shared
    }

    pub fn primary(&self) -> Option<usize> {
        self.shared().current().primary
    }

    /// Polls until `f` holds, advancing (paused) time in small steps; panics after `limit`.
    pub async fn wait_for(&self, limit: Duration, what: &str, f: impl Fn(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + limit;
        while !f(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn status(&self, i: usize) -> String {
        self.shared().current().nodes[i]
            .counter
            .status()
            .to_string()
    }
}

/// `PATRONI_PROXY_TEST_RELAY=kernel|auto|user` runs every listener of the in-process proxies in
/// that relay mode unless the test's config sets one (docs/testing.md); unset, the file's own.
/// In the kernel modes every session moves into the kernel as soon as it relays
/// (`kernel_after = 0`, unless the test sets it), so each test exercises the kernel relay.
pub fn with_test_relay(toml_text: &str) -> String {
    let mode = match std::env::var("PATRONI_PROXY_TEST_RELAY") {
        Ok(m) if !m.is_empty() => m,
        _ => return toml_text.to_string(),
    };
    let mut doc: toml::Table = toml_text.parse().expect("test config is TOML");
    let set = |t: &mut toml::Table| {
        t.entry("relay")
            .or_insert_with(|| toml::Value::String(mode.clone()));
        if mode != "user" {
            t.entry("kernel_after")
                .or_insert_with(|| toml::Value::Integer(0));
        }
    };
    match doc
        .entry("listen")
        .or_insert_with(|| toml::Value::Table(Default::default()))
    {
        toml::Value::Table(t) => set(t),
        toml::Value::Array(a) => a.iter_mut().filter_map(|v| v.as_table_mut()).for_each(set),
        _ => {}
    }
    toml::to_string(&doc).expect("a TOML table serializes")
}

pub async fn connect(addr: SocketAddr) -> Option<(String, Client)> {
    client_of(TcpStream::connect(addr).await.ok()?).await
}

/// A session on a connection already made: the echo node's greeting names it.
pub async fn client_of(s: TcpStream) -> Option<(String, Client)> {
    let mut r = BufReader::new(s);
    let mut line = String::new();
    match tokio::time::timeout(Duration::from_secs(30), r.read_line(&mut line)).await {
        Ok(Ok(n)) if n > 0 => Some((
            line.trim().trim_start_matches("NODE ").to_string(),
            Client(r),
        )),
        _ => None,
    }
}

/// An open session through the proxy to an echo node.
pub struct Client(pub BufReader<TcpStream>);

impl Client {
    /// True if the session still echoes.
    pub async fn alive(&mut self) -> bool {
        if self.0.get_mut().write_all(b"ping\n").await.is_err() {
            return false;
        }
        let mut line = String::new();
        // With the kernel relay the echo comes back through a kernel worker, not through this
        // runtime: in paused time the clock would jump to the timeout while the bytes are on
        // their way. A blocking task keeps tokio from advancing it until the read ends (or 5 s of
        // real time pass).
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let hold = tokio::task::spawn_blocking(move || {
            let _ = wait.recv_timeout(Duration::from_secs(5));
        });
        let got = tokio::time::timeout(Duration::from_secs(5), self.0.read_line(&mut line)).await;
        drop(done);
        let _ = hold.await;
        matches!(got, Ok(Ok(n)) if n > 0 && line == "ping\n")
    }

    /// Waits for the proxy to close the session; true if it was closed (EOF or reset).
    pub async fn closed_within(&mut self, limit: Duration) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(limit, self.0.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}
