//! What clients see through a proxy: a probe opening a new connection every 100 ms, one long-lived
//! session, and a direct watcher of every node.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::anyhow;
use serde::Serialize;
use tokio::task::JoinSet;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

use super::*;

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

pub(super) async fn one_attempt(addr: SocketAddr, run: &str, n: u32) -> Outcome {
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
