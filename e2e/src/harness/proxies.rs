//! The proxies in front of the cluster: patroni-proxy or HAProxy started on a configuration of
//! the harness's, their output read, and their own view of the servers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use super::*;

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
        // Every session moves into the kernel as soon as it relays, so each scenario exercises it.
        Ok(m) if !m.is_empty() && m != "user" => format!("relay = \"{m}\"\nkernel_after = 0\n"),
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
