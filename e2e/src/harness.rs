//! The real-cluster harness shared by `tests/e2e.rs` and the examples: drives
//! `scripts/cluster`, runs patroni-proxy or HAProxy in front of the cluster, and records what clients
//! see: a probe opening a new connection every 100 ms, one long-lived session, a direct watcher of
//! every node, and the proxy's own view of its servers. Times are Unix seconds (`f64`), the unit of
//! the proxy's `/stats.json` events, so the two can be compared.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinSet;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

pub type Result<T> = anyhow::Result<T>;

pub const PASSWORD: &str = "secretpassword";
const NODES: [(&str, &str); 3] = [
    ("postgresql0", "127.0.0.11"),
    ("postgresql1", "127.0.0.12"),
    ("postgresql2", "127.0.0.13"),
];
/// The client address of the cluster's etcd.
pub const ETCD: &str = "127.0.0.21:2379";

/// Unix time in seconds.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// The repository's top (this crate lives in its `e2e/`).
pub fn repo() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map_or(here.clone(), Path::to_path_buf)
}

/// `target/e2e`, where every scenario writes its JSON.
pub fn out_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"));
    target.join("e2e")
}

pub fn write_json<T: Serialize>(name: &str, value: &T) -> Result<PathBuf> {
    let dir = out_dir();
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(value)?)?;
    Ok(path)
}

/// Polls `f` every `every` until it yields a value, at most `limit` long (and so a bounded number
/// of times).
pub async fn poll<T, F, Fut>(limit: Duration, every: Duration, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    let max_rounds = limit.as_millis() / every.as_millis().max(1) + 2;
    for _ in 0..max_rounds {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(every).await;
    }
    bail!("timed out after {limit:?} waiting for {what}")
}

// ---------------------------------------------------------------------------------------------
// The cluster

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    pub name: String,
    pub ip: String,
}

impl Node {
    pub fn all() -> Vec<Node> {
        NODES
            .iter()
            .map(|(n, ip)| Node {
                name: n.to_string(),
                ip: ip.to_string(),
            })
            .collect()
    }

    pub fn by_ip(ip: &str) -> Option<Node> {
        Node::all().into_iter().find(|n| n.ip == ip)
    }

    /// The server's name in both proxies' configs (HAProxy template: `postgresql_IP_PORT`).
    pub fn server(&self) -> String {
        format!("postgresql_{}_5432", self.ip)
    }
}

/// Where `scripts/cluster up --tls` keeps the test CA and the REST certificates (`ca.crt`,
/// `client.crt`, `client.key`): `$PP_DEV_HOME/tls`, as the script computes it.
pub fn rest_tls_dir() -> PathBuf {
    let home = std::env::var("PP_DEV_HOME").unwrap_or_else(|_| "/var/lib/patroni-proxy-dev".into());
    PathBuf::from(home.trim_end_matches('/')).join("tls")
}

/// Runs `scripts/cluster ARGS` and returns its stdout; an error carries the tail of its stderr.
pub async fn cluster(args: &[&str]) -> Result<String> {
    let out = Command::new(repo().join("scripts/cluster"))
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .context("running scripts/cluster")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "scripts/cluster {} failed ({}):\n{}",
            args.join(" "),
            out.status,
            tail.join("\n")
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `scripts/cluster status`'s lines, healthy or not: it exits 1 when the cluster is unhealthy,
/// which is when its lines matter (which component is down).
pub async fn cluster_status() -> String {
    Command::new(repo().join("scripts/cluster"))
        .arg("status")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn parse_node(out: &str) -> Result<Node> {
    let ip = out
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow!("no node in {out:?}"))?;
    Node::by_ip(ip).ok_or_else(|| anyhow!("unknown node {out:?}"))
}

/// The one running primary, judged from each node's own REST API; `None` if none or several.
pub async fn leader() -> Option<Node> {
    cluster(&["leader"])
        .await
        .ok()
        .and_then(|o| parse_node(&o).ok())
}

pub async fn wait_leader_other_than(old: &Node, limit: Duration) -> Result<Node> {
    poll(
        limit,
        Duration::from_millis(250),
        "a new leader",
        || async { leader().await.filter(|n| n != old) },
    )
    .await
}

/// Brings the cluster back to one primary and two streaming replicas: starts any node whose Patroni
/// is not running (a failed earlier scenario may have left one crashed), thaws frozen ones, lifts
/// a REST outage's firewall rule, waits.
pub async fn restore() -> Result<()> {
    // A REST outage scenario that ended without its guard (a killed test) left its rule.
    crate::outage::unblock();
    let status = cluster_status().await;
    // An etcd fault (`faults::etcd_stopped`) that ended without its guard left etcd stopped.
    if status
        .lines()
        .any(|l| l.starts_with("etcd ") && !l.contains("health=true"))
    {
        cluster(&["start-etcd"]).await?;
    }
    for node in Node::all() {
        let line = status
            .lines()
            .find(|l| l.starts_with(&format!("{} ", node.name)));
        if line.is_some_and(|l| l.contains(" pid=- ")) {
            cluster(&["start-node", &node.name]).await?;
        }
        // A thaw of a running Patroni is a no-op SIGCONT.
        let _ = cluster(&["thaw-patroni", &node.name]).await;
    }
    cluster(&["wait-healthy", "180"]).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL clients

pub async fn pg_connect(
    host: &str,
    port: u16,
    connect_timeout: Duration,
) -> std::result::Result<
    (
        Client,
        tokio::task::JoinHandle<std::result::Result<(), tokio_postgres::Error>>,
    ),
    tokio_postgres::Error,
> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(host)
        .port(port)
        .user("postgres")
        .password(PASSWORD)
        .dbname("postgres")
        .application_name("e2e")
        .connect_timeout(connect_timeout);
    let (client, conn) = cfg.connect(NoTls).await?;
    Ok((client, tokio::spawn(conn)))
}

/// A direct connection to a node (not through a proxy).
pub async fn direct(node: &Node) -> Result<Client> {
    let (c, _) = tokio::time::timeout(
        Duration::from_secs(5),
        pg_connect(&node.ip, 5432, Duration::from_secs(3)),
    )
    .await
    .map_err(|_| anyhow!("connect to {} timed out", node.name))??;
    Ok(c)
}

pub async fn create_probe_table(primary: &Node) -> Result<()> {
    direct(primary)
        .await?
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS e2e_probe (run text NOT NULL, attempt int NOT NULL, \
             at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (run, attempt))",
        )
        .await?;
    Ok(())
}

/// The probe attempts of `run` present on `primary`.
pub async fn stored_attempts(primary: &Node, run: &str) -> Result<Vec<i32>> {
    let rows = direct(primary)
        .await?
        .query("SELECT attempt FROM e2e_probe WHERE run = $1", &[&run])
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

pub async fn in_recovery(node: &Node) -> Result<bool> {
    Ok(direct(node)
        .await?
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await?
        .get(0))
}

/// What one client attempt ended with.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// Not in recovery, and the INSERT was acknowledged.
    Primary {
        node: String,
    },
    /// Reached a node in recovery (`pg_is_in_recovery()`, or the INSERT refused as read-only).
    Replica {
        node: String,
    },
    /// An `ErrorResponse`, at connect time (`node` unknown) or during the queries.
    PgError {
        code: String,
        message: String,
        node: Option<String>,
    },
    /// Closed (EOF or RST) without an `ErrorResponse`: a bare reset.
    Reset {
        detail: String,
        node: Option<String>,
    },
    /// The TCP connect itself failed.
    ConnectFailed {
        detail: String,
    },
    /// No outcome within the attempt's limit (the client gave up waiting).
    GaveUp,
    Other {
        detail: String,
    },
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Primary { .. })
    }

    pub fn label(&self) -> String {
        match self {
            Outcome::Primary { .. } => "ok".into(),
            Outcome::Replica { .. } => "replica".into(),
            Outcome::PgError { code, .. } => code.clone(),
            Outcome::Reset { .. } => "reset".into(),
            Outcome::ConnectFailed { .. } => "connect_failed".into(),
            Outcome::GaveUp => "gave_up".into(),
            Outcome::Other { .. } => "other".into(),
        }
    }

    fn from_error(e: &tokio_postgres::Error, node: Option<String>) -> Outcome {
        if let Some(db) = e.as_db_error() {
            if db.code().code() == "25006" {
                if let Some(node) = node {
                    return Outcome::Replica { node };
                }
            }
            return Outcome::PgError {
                code: db.code().code().to_string(),
                message: db.message().to_string(),
                node,
            };
        }
        let text = e.to_string();
        let io = std::error::Error::source(e).and_then(|s| s.downcast_ref::<std::io::Error>());
        if text.starts_with("error connecting to server") {
            return Outcome::ConnectFailed { detail: text };
        }
        let reset = e.is_closed()
            || io.is_some_and(|io| {
                use std::io::ErrorKind::*;
                matches!(
                    io.kind(),
                    ConnectionReset | UnexpectedEof | BrokenPipe | ConnectionAborted
                )
            });
        if reset {
            let detail = match io {
                Some(io) => format!("{text}: {io}"),
                None => text,
            };
            Outcome::Reset { detail, node }
        } else {
            Outcome::Other { detail: text }
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub n: u32,
    /// Waits up to `PATIENT_LIMIT`, longer than the proxy's hold: sees how a held client ends.
    pub patient: bool,
    pub start: f64,
    pub end: f64,
    pub outcome: Outcome,
}

fn ip_of(inet: &str) -> String {
    inet.split('/').next().unwrap_or(inet).to_string()
}

async fn one_attempt(addr: SocketAddr, run: &str, n: u32) -> Outcome {
    let host = addr.ip().to_string();
    let (client, _conn) = match pg_connect(&host, addr.port(), Duration::from_secs(3)).await {
        Ok(c) => c,
        Err(e) => return Outcome::from_error(&e, None),
    };
    let row = match client
        .query_one("SELECT pg_is_in_recovery(), host(inet_server_addr())", &[])
        .await
    {
        Ok(r) => r,
        Err(e) => return Outcome::from_error(&e, None),
    };
    let (recovery, ip): (bool, String) = (row.get(0), row.get(1));
    let node = Node::by_ip(&ip_of(&ip)).map(|n| n.name).unwrap_or(ip);
    if recovery {
        return Outcome::Replica { node };
    }
    let n = n as i32;
    match client
        .execute(
            "INSERT INTO e2e_probe (run, attempt) VALUES ($1, $2)",
            &[&run, &n],
        )
        .await
    {
        Ok(_) => Outcome::Primary { node },
        Err(e) => Outcome::from_error(&e, Some(node)),
    }
}

/// A new connection through `addr` every `pace`, each running the probe's SELECT and INSERT.
pub struct Probe {
    pub run: String,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// The give-up time of an ordinary attempt (the probe's "connect timeout").
pub const ATTEMPT_LIMIT: Duration = Duration::from_secs(3);
/// The give-up time of a patient attempt: longer than patroni-proxy's `hold_timeout` (10 s).
pub const PATIENT_LIMIT: Duration = Duration::from_secs(15);

impl Probe {
    /// `patient_every`: every Nth attempt is patient (0 = none).
    pub fn start(addr: SocketAddr, run: String, pace: Duration, patient_every: u32) -> Probe {
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (a, s, r) = (attempts.clone(), stop.clone(), run.clone());
        let task = tokio::spawn(async move {
            let mut set = JoinSet::new();
            let mut tick = tokio::time::interval(pace);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Bounded by the stop token; the count bound is a safety net (an hour at 100 ms).
            for n in 0..36_000u32 {
                tokio::select! {
                    _ = s.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let patient = patient_every > 0 && n % patient_every == patient_every - 1;
                let limit = if patient {
                    PATIENT_LIMIT
                } else {
                    ATTEMPT_LIMIT
                };
                let (a, r) = (a.clone(), r.clone());
                set.spawn(async move {
                    let start = now();
                    let outcome = tokio::time::timeout(limit, one_attempt(addr, &r, n))
                        .await
                        .unwrap_or(Outcome::GaveUp);
                    a.lock().unwrap().push(Attempt {
                        n,
                        patient,
                        start,
                        end: now(),
                        outcome,
                    });
                });
                while set.try_join_next().is_some() {}
            }
            // Every attempt ends within its own limit.
            while set.join_next().await.is_some() {}
        });
        Probe {
            run,
            attempts,
            stop,
            task,
        }
    }

    /// The attempts finished so far.
    pub fn finished(&self) -> Vec<Attempt> {
        self.attempts.lock().unwrap().clone()
    }

    pub fn ok_on(&self, node: &str, after: f64) -> usize {
        self.finished()
            .iter()
            .filter(|a| a.start >= after && a.outcome == Outcome::Primary { node: node.into() })
            .count()
    }

    /// Stops starting attempts and waits for those in flight; returns all, in start order.
    pub async fn finish(self) -> Vec<Attempt> {
        self.stop.cancel();
        let _ = tokio::time::timeout(PATIENT_LIMIT + Duration::from_secs(5), self.task).await;
        let mut all = self.attempts.lock().unwrap().clone();
        all.sort_by(|a, b| a.start.total_cmp(&b.start));
        all
    }
}

/// An error as a client would log it: the SQLSTATE and message of an `ErrorResponse`.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// One long-lived session through the proxy, running `SELECT 1` every 100 ms until it is cut.
pub struct Session {
    pub node: String,
    pub opened: f64,
    cut: Arc<Mutex<Option<(f64, String)>>>,
    stop: CancellationToken,
}

impl Session {
    pub async fn open(addr: SocketAddr) -> Result<Session> {
        let (client, conn) = tokio::time::timeout(
            Duration::from_secs(5),
            pg_connect(&addr.ip().to_string(), addr.port(), Duration::from_secs(3)),
        )
        .await
        .map_err(|_| anyhow!("long session: connect timed out"))??;
        let ip: String = client
            .query_one("SELECT host(inet_server_addr())", &[])
            .await?
            .get(0);
        let node = Node::by_ip(&ip).map(|n| n.name).unwrap_or(ip);
        let cut = Arc::new(Mutex::new(None));
        let stop = CancellationToken::new();
        let record = |cut: &Arc<Mutex<Option<(f64, String)>>>, why: String| {
            let mut c = cut.lock().unwrap();
            if c.is_none() {
                *c = Some((now(), why));
            }
        };
        let (c1, s1) = (cut.clone(), stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = s1.cancelled() => {}
                r = conn => record(&c1, match r {
                    Ok(Ok(())) => "closed by the server side".into(),
                    Ok(Err(e)) => describe(&e),
                    Err(e) => e.to_string(),
                }),
            }
        });
        let (c2, s2) = (cut.clone(), stop.clone());
        tokio::spawn(async move {
            // Bounded by the stop token and by the cut; the count bound is a safety net.
            for _ in 0..36_000 {
                tokio::select! {
                    _ = s2.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                if let Err(e) = client.simple_query("SELECT 1").await {
                    record(&c2, describe(&e));
                    return;
                }
            }
        });
        Ok(Session {
            node,
            opened: now(),
            cut,
            stop,
        })
    }

    pub fn cut(&self) -> Option<(f64, String)> {
        self.cut.lock().unwrap().clone()
    }

    pub async fn wait_cut(&self, limit: Duration) -> Option<(f64, String)> {
        poll(limit, Duration::from_millis(20), "session cut", || async {
            self.cut()
        })
        .await
        .ok()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Polls every node directly (one persistent connection each) for `pg_is_in_recovery()` every
/// 20 ms and keeps the changes: when a node was promoted, demoted, unreachable (`None`).
pub struct Watcher {
    changes: Arc<Mutex<Changes>>,
    stop: CancellationToken,
}

/// Per node: (time, `pg_is_in_recovery()` or `None` when unreachable), changes only.
pub type Changes = BTreeMap<String, Vec<(f64, Option<bool>)>>;

impl Watcher {
    pub fn start() -> Watcher {
        let changes: Arc<Mutex<Changes>> = Default::default();
        let stop = CancellationToken::new();
        for node in Node::all() {
            let (changes, stop) = (changes.clone(), stop.clone());
            tokio::spawn(async move {
                let mut client: Option<Client> = None;
                let every = Duration::from_millis(20);
                let note = |v: Option<bool>| {
                    let mut c = changes.lock().unwrap();
                    let list = c.entry(node.name.clone()).or_default();
                    if list.last().map(|l| l.1) != Some(v) {
                        list.push((now(), v));
                    }
                };
                // Bounded by the stop token; the count bound is a safety net (an hour at 20 ms).
                for _ in 0..180_000 {
                    if stop.is_cancelled() {
                        return;
                    }
                    if client.is_none() {
                        let c = tokio::time::timeout(
                            Duration::from_millis(500),
                            pg_connect(&node.ip, 5432, Duration::from_millis(500)),
                        )
                        .await;
                        match c {
                            Ok(Ok((c, _))) => client = Some(c),
                            _ => note(None),
                        }
                    }
                    if let Some(c) = &client {
                        let r = tokio::time::timeout(
                            Duration::from_millis(500),
                            c.query_one("SELECT pg_is_in_recovery()", &[]),
                        )
                        .await;
                        match r {
                            Ok(Ok(row)) => note(Some(row.get(0))),
                            _ => {
                                note(None);
                                client = None;
                            }
                        }
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(every) => {}
                    }
                }
            });
        }
        Watcher { changes, stop }
    }

    /// When `node` was first seen out of recovery after `after`, having been in recovery or
    /// unreachable before.
    pub fn promoted_at(&self, node: &str, after: f64) -> Option<f64> {
        let c = self.changes.lock().unwrap();
        c.get(node)?
            .iter()
            .find(|(t, v)| *t > after && *v == Some(false))
            .map(|(t, _)| *t)
    }

    pub fn changes(&self) -> Changes {
        self.changes.lock().unwrap().clone()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

// ---------------------------------------------------------------------------------------------
// The proxies

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Kind {
    #[serde(rename = "patroni-proxy")]
    PatroniProxy,
    #[serde(rename = "haproxy")]
    HAProxy,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::PatroniProxy => "patroni-proxy",
            Kind::HAProxy => "haproxy",
        }
    }
}

/// One change of a server as the proxy's stats show it (polled every 50 ms).
#[derive(Debug, Clone, Serialize)]
pub struct ServerChange {
    pub at: f64,
    pub server: String,
    /// `UP`, `UP 2/3`, `DOWN`, ... (HAProxy's strings; patroni-proxy uses the same).
    pub status: String,
    /// `L7OK`, `L7STS`, `L7TOUT`, `L4CON`, ...
    pub check: Option<String>,
}

/// patroni-proxy's `/stats.json` event.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ProxyEvent {
    pub at: f64,
    pub kind: String,
    pub server: Option<String>,
    pub message: String,
}

pub struct Proxy {
    pub kind: Kind,
    /// Its name in reports and probe keys: the kind's label, or one given to tell instances apart.
    pub name: String,
    pub listen: SocketAddr,
    pub stats: SocketAddr,
    /// When the process was spawned.
    pub spawned: f64,
    /// Where the start line was printed (`stderr` as documented).
    pub log_stream: &'static str,
    child: Child,
    log: Arc<Mutex<Vec<(f64, String)>>>,
    changes: Arc<Mutex<Vec<ServerChange>>>,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

type StartLine = (&'static str, Option<SocketAddr>, Option<SocketAddr>);

/// Keeps a child's output lines with their time; reports patroni-proxy's start line.
fn read_lines<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
    stream: &'static str,
    r: R,
    log: &Arc<Mutex<Vec<(f64, String)>>>,
    start: Option<tokio::sync::mpsc::Sender<StartLine>>,
) {
    let log = log.clone();
    let mut lines = BufReader::new(r).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let line = strip_ansi(&line);
            if let Some(tx) = &start {
                if line.contains("patroni-proxy started") {
                    let _ = tx.try_send((stream, field(&line, "listen"), field(&line, "stats")));
                }
            }
            log.lock()
                .unwrap()
                .push((now(), format!("{stream}: {line}")));
        }
    });
}

fn field(line: &str, key: &str) -> Option<SocketAddr> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
}

/// A loopback port nothing listens on now (HAProxy cannot bind port 0 and report it).
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The check timers of [`patroni_proxy_config`]: `inter` and `failover_inter`.
pub const CHECK_INTER: Duration = Duration::from_secs(3);
pub const FAILOVER_INTER: Duration = Duration::from_millis(200);

/// patroni-proxy's config for the real cluster: `proxy.toml` semantics on ports chosen by the OS.
pub fn patroni_proxy_config() -> String {
    patroni_proxy_config_on("127.0.0.1")
}

/// The same, both listeners on the loopback address `ip` (one per instance, as behind a VIP).
pub fn patroni_proxy_config_on(ip: &str) -> String {
    patroni_proxy_config_with(ip, "")
}

/// The same with `check` (TOML lines, e.g. the TLS keys) added to its `[check]` section.
/// `PATRONI_PROXY_TEST_RELAY=kernel` (or `auto`, `user`) sets the listener's `relay`
/// (docs/testing.md).
pub fn patroni_proxy_config_with(ip: &str, check: &str) -> String {
    let relay = match std::env::var("PATRONI_PROXY_TEST_RELAY") {
        Ok(m) if !m.is_empty() => format!("relay = \"{m}\"\n"),
        _ => String::new(),
    };
    let mut s = format!(
        "[listen]\nbind = \"{ip}:0\"\n{relay}\n[stats]\nbind = \"{ip}:0\"\n\n\
         [check]\ninter = \"{}ms\"\nrise = 2\nfall = 3\nfailover_inter = \"{}ms\"\n{check}\n\n",
        CHECK_INTER.as_millis(),
        FAILOVER_INTER.as_millis()
    );
    for n in Node::all() {
        s += &format!(
            "[[server]]\nname = \"{}\"\naddress = \"{}:5432\"\nmaxconn = 100\n\n",
            n.server(),
            n.ip
        );
    }
    s += &format!("[etcd]\nendpoints = [\"{ETCD}\"]\nnamespace = \"/db/\"\nscope = \"postgres\"\n");
    s
}

/// The seed's `haproxy.cfg` (`tests/config/seed-haproxy.cfg`) mapped onto loopback: only the bind
/// addresses and the servers' addresses change.
pub fn haproxy_config(listen: u16, stats: u16) -> Result<String> {
    let seed = std::fs::read_to_string(repo().join("tests/config/seed-haproxy.cfg"))?;
    let mut out = seed.clone();
    for (from, to) in [
        (
            "bind *:5000".to_string(),
            format!("bind 127.0.0.1:{listen}"),
        ),
        ("bind *:7000".to_string(), format!("bind 127.0.0.1:{stats}")),
    ] {
        if !out.contains(&from) {
            bail!("seed-haproxy.cfg has no {from:?}");
        }
        out = out.replace(&from, &to);
    }
    for (i, n) in Node::all().iter().enumerate() {
        let from = format!("192.0.2.1{}", i + 1);
        if !out.contains(&from) {
            bail!("seed-haproxy.cfg has no server {from}");
        }
        out = out.replace(&from, &n.ip);
    }
    Ok(out)
}

impl Proxy {
    /// Starts the patroni-proxy binary on OS-chosen loopback ports and waits for its start line.
    pub async fn patroni_proxy(bin: &Path) -> Result<Proxy> {
        Proxy::patroni_proxy_on(bin, "127.0.0.1", Kind::PatroniProxy.label()).await
    }

    /// The same on the loopback address `ip`, called `name` in reports (one of several instances).
    pub async fn patroni_proxy_on(bin: &Path, ip: &str, name: &str) -> Result<Proxy> {
        Proxy::patroni_proxy_with(bin, name, &patroni_proxy_config_on(ip)).await
    }

    /// The patroni-proxy binary with the configuration `config`, called `name` in reports.
    pub async fn patroni_proxy_with(bin: &Path, name: &str, config: &str) -> Result<Proxy> {
        let dir = tempfile::tempdir()?;
        let cfg = dir.path().join("proxy.toml");
        std::fs::write(&cfg, config)?;
        let spawned = now();
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(&cfg)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, mut rx) = tokio::sync::mpsc::channel(2);
        // The log goes to stderr; stdout is read too, so a regression shows as a failed assertion in
        // a test of its own rather than as "no start line" here.
        read_lines(
            "stdout",
            child.stdout.take().expect("piped"),
            &log,
            Some(tx.clone()),
        );
        read_lines(
            "stderr",
            child.stderr.take().expect("piped"),
            &log,
            Some(tx.clone()),
        );
        drop(tx);
        let (stream, listen, stats) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .map_err(|_| anyhow!("patroni-proxy printed no start line within 10 s"))?
            .ok_or_else(|| anyhow!("patroni-proxy exited before its start line"))?;
        let (listen, stats) = (
            listen.ok_or_else(|| anyhow!("no listen= in the start line"))?,
            stats.ok_or_else(|| anyhow!("no stats= in the start line"))?,
        );
        let mut p = Proxy::watching(Kind::PatroniProxy, listen, stats, spawned, child, log, dir);
        p.log_stream = stream;
        p.name = name.to_string();
        Ok(p)
    }

    /// Starts HAProxy (`haproxy -db`) with the seed's config on free loopback ports.
    pub async fn haproxy() -> Result<Proxy> {
        let dir = tempfile::tempdir()?;
        let (lp, sp) = (free_port()?, free_port()?);
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg, haproxy_config(lp, sp)?)?;
        let spawned = now();
        let mut child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting haproxy (Debian package `haproxy`)")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        read_lines("stderr", child.stderr.take().expect("piped"), &log, None);
        let listen: SocketAddr = format!("127.0.0.1:{lp}").parse()?;
        let stats: SocketAddr = format!("127.0.0.1:{sp}").parse()?;
        poll(
            Duration::from_secs(10),
            Duration::from_millis(50),
            "haproxy's stats page",
            || async { haproxy_rows(stats).await.ok() },
        )
        .await?;
        Ok(Proxy::watching(
            Kind::HAProxy,
            listen,
            stats,
            spawned,
            child,
            log,
            dir,
        ))
    }

    pub async fn start(kind: Kind, bin: &Path) -> Result<Proxy> {
        match kind {
            Kind::PatroniProxy => Proxy::patroni_proxy(bin).await,
            Kind::HAProxy => Proxy::haproxy().await,
        }
    }

    fn watching(
        kind: Kind,
        listen: SocketAddr,
        stats: SocketAddr,
        spawned: f64,
        child: Child,
        log: Arc<Mutex<Vec<(f64, String)>>>,
        dir: tempfile::TempDir,
    ) -> Proxy {
        let changes: Arc<Mutex<Vec<ServerChange>>> = Default::default();
        let stop = CancellationToken::new();
        let (c, s) = (changes.clone(), stop.clone());
        tokio::spawn(async move {
            let mut last: BTreeMap<String, (String, Option<String>)> = BTreeMap::new();
            // Bounded by the stop token; the count bound is a safety net (an hour at 50 ms).
            for _ in 0..72_000 {
                let rows = match kind {
                    Kind::PatroniProxy => patroni_proxy_rows(stats).await,
                    Kind::HAProxy => haproxy_rows(stats).await,
                };
                if let Ok(rows) = rows {
                    let at = now();
                    for (server, status, check) in rows {
                        let v = (status.clone(), check.clone());
                        if last.get(&server) != Some(&v) {
                            last.insert(server.clone(), v);
                            c.lock().unwrap().push(ServerChange {
                                at,
                                server,
                                status,
                                check,
                            });
                        }
                    }
                }
                tokio::select! {
                    _ = s.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        });
        Proxy {
            kind,
            name: kind.label().to_string(),
            listen,
            stats,
            spawned,
            log_stream: "stderr",
            child,
            log,
            changes,
            stop,
            _dir: dir,
        }
    }

    pub fn label(&self) -> &str {
        &self.name
    }

    /// The process id, while it runs (for its RSS and descriptors in `/proc`).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// patroni-proxy's routed primary (the server `/stats.json` says `routed_primary` of), or
    /// `None` when it routes none; always `None` for HAProxy, which has no such notion.
    pub async fn routed(&self) -> Option<String> {
        if self.kind != Kind::PatroniProxy {
            return None;
        }
        let v = stats_json(self.stats).await.ok()?;
        v["servers"]
            .as_array()?
            .iter()
            .find(|s| s["routed_primary"] == true)
            .and_then(|s| s["name"].as_str())
            .map(str::to_string)
    }

    pub fn changes(&self) -> Vec<ServerChange> {
        self.changes.lock().unwrap().clone()
    }

    pub fn log(&self) -> Vec<(f64, String)> {
        self.log.lock().unwrap().clone()
    }

    /// patroni-proxy's recent events (empty for HAProxy).
    pub async fn events(&self) -> Vec<ProxyEvent> {
        if self.kind != Kind::PatroniProxy {
            return Vec::new();
        }
        let Ok(v) = stats_json(self.stats).await else {
            return Vec::new();
        };
        serde_json::from_value(v["events"].clone()).unwrap_or_default()
    }

    /// When the proxy's stats first showed a change of `server` matching `f` after `after`.
    pub fn status_at(
        &self,
        server: &str,
        after: f64,
        f: impl Fn(&ServerChange) -> bool,
    ) -> Option<f64> {
        self.changes()
            .iter()
            .find(|c| c.at > after && c.server == server && f(c))
            .map(|c| c.at)
    }

    /// The latest status of every server, as last polled.
    pub fn statuses(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for c in self.changes() {
            out.insert(c.server, c.status);
        }
        out
    }

    /// Waits for the steady state: `leader` fully UP, every other server DOWN. HAProxy keeps a
    /// demoted primary UP for `fall` checks after a switchover; without this wait, one scenario's
    /// tail would count in the next one.
    pub async fn wait_settled(&self, leader: &Node, limit: Duration) -> Result<()> {
        poll(
            limit,
            Duration::from_millis(100),
            "primary UP, replicas DOWN",
            || async {
                let s = self.statuses();
                Node::all()
                    .iter()
                    .all(|n| match s.get(&n.server()) {
                        Some(st) if n == leader => st == "UP",
                        Some(st) => st.starts_with("DOWN"),
                        None => false,
                    })
                    .then_some(())
            },
        )
        .await
        .with_context(|| format!("{}: {:?}", self.label(), self.statuses()))
    }

    /// Waits until a new connection through the proxy lands on `node`, the primary.
    pub async fn wait_routes(&self, node: &Node, limit: Duration) -> Result<()> {
        let addr = self.listen;
        poll(
            limit,
            Duration::from_millis(200),
            "the proxy to route the primary",
            || async {
                // A fresh key each time: the probe table's primary key is (run, attempt).
                let run = format!("warmup-{}", (now() * 1e6) as u64);
                let o = tokio::time::timeout(ATTEMPT_LIMIT, one_attempt(addr, &run, 0)).await;
                matches!(o, Ok(Outcome::Primary { node: n }) if n == node.name).then_some(())
            },
        )
        .await
        .with_context(|| format!("{} never routed {}", self.label(), node.name))
    }

    /// patroni-proxy's configuration file (a test rewrites it before a reload).
    pub fn config_path(&self) -> PathBuf {
        self._dir.path().join("proxy.toml")
    }

    /// Sends the process SIGHUP (a reload, for patroni-proxy).
    pub fn hangup(&self) -> Result<()> {
        let pid = self
            .child
            .id()
            .ok_or_else(|| anyhow!("the proxy has exited"))?;
        let ok = std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()?
            .success();
        if !ok {
            bail!("kill -HUP {pid} failed");
        }
        Ok(())
    }

    pub async fn stop(mut self) {
        self.stop.cancel();
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn http_get(url: &str) -> Result<reqwest::Response> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    Ok(client.get(url).send().await?.error_for_status()?)
}

pub async fn stats_json(stats: SocketAddr) -> Result<serde_json::Value> {
    Ok(http_get(&format!("http://{stats}/stats.json"))
        .await?
        .json()
        .await?)
}

type Rows = Vec<(String, String, Option<String>)>;

async fn patroni_proxy_rows(stats: SocketAddr) -> Result<Rows> {
    let v = stats_json(stats).await?;
    let servers = v["servers"]
        .as_array()
        .ok_or_else(|| anyhow!("no servers in stats.json"))?;
    Ok(servers
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or_default().to_string(),
                s["status"].as_str().unwrap_or_default().to_string(),
                s["last_check"]["status"].as_str().map(str::to_string),
            )
        })
        .collect())
}

/// HAProxy's `;csv` export: (server, status, check_status) of the `postgres` backend's servers.
async fn haproxy_rows(stats: SocketAddr) -> Result<Rows> {
    let text = http_get(&format!("http://{stats}/;csv"))
        .await?
        .text()
        .await?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .and_then(|h| h.strip_prefix("# "))
        .ok_or_else(|| anyhow!("no CSV header"))?
        .split(',')
        .collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (px, sv, st, ck) = (
        col("pxname").ok_or_else(|| anyhow!("no pxname"))?,
        col("svname").ok_or_else(|| anyhow!("no svname"))?,
        col("status").ok_or_else(|| anyhow!("no status"))?,
        col("check_status").ok_or_else(|| anyhow!("no check_status"))?,
    );
    Ok(lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.len() > ck && f[px] == "postgres" && f[sv].starts_with("postgresql_"))
        .map(|f| {
            let check =
                (!f[ck].is_empty()).then(|| f[ck].trim_start_matches('*').trim().to_string());
            (f[sv].to_string(), f[st].to_string(), check)
        })
        .collect())
}
