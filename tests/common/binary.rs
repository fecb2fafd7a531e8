//! The built `patroni-proxy` binary as a child process on free loopback ports, for the tests that
//! need a whole process (signals, stderr, descriptor limits, log formats): its config written to a
//! temporary directory, its stderr read line by line.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A free loopback port (bound, then released for the proxy to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Proxy {
    pub child: Child,
    pub listen: SocketAddr,
    pub stats: SocketAddr,
    /// stderr lines, when read.
    pub log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

/// `extra` with `relay = MODE` (and, in the kernel modes, `kernel_after = 0`) added when
/// `PATRONI_PROXY_TEST_RELAY` names one and `extra` does not set it (as
/// [`super::with_test_relay`] for in-process proxies).
fn test_relay(extra: &str) -> String {
    match std::env::var("PATRONI_PROXY_TEST_RELAY") {
        Ok(m) if !m.is_empty() && !extra.contains("relay") => {
            let after = if m == "user" {
                ""
            } else {
                "\nkernel_after = 0"
            };
            format!("{extra}\nrelay = \"{m}\"{after}")
        }
        _ => extra.to_string(),
    }
}

/// Lines added to the config's `[global]`, `[listen]`, `[[server]]` and `[log]` tables.
#[derive(Default)]
pub struct Extra {
    pub global: &'static str,
    pub listen: &'static str,
    pub server: &'static str,
    pub log: &'static str,
}

#[derive(Clone, Copy, PartialEq)]
pub enum Stderr {
    /// Read by a thread into `log`.
    Read,
    /// A pipe nobody reads: it fills up after 64 KiB.
    Blocked,
}

impl Proxy {
    /// Starts the binary on a config for one server (`pg`, REST at `rest`); `prefix` runs it
    /// under another command (`prlimit ...`).
    pub fn start(
        pg: SocketAddr,
        rest: SocketAddr,
        extra: Extra,
        stderr: Stderr,
        prefix: &[&str],
    ) -> Self {
        Self::launch(pg, rest, extra, stderr, prefix, "info,patroni_proxy=debug")
    }

    /// As [`Proxy::start`], stderr read, with `RUST_LOG=filter`.
    pub fn start_with_filter(pg: SocketAddr, rest: SocketAddr, extra: Extra, filter: &str) -> Self {
        Self::launch(pg, rest, extra, Stderr::Read, &[], filter)
    }

    /// As [`Proxy::start`], stderr read, running `bin` instead of the one cargo built (the
    /// installed package's).
    pub fn start_installed(bin: &str, pg: SocketAddr, rest: SocketAddr) -> Self {
        Self::launch_bin(bin, pg, rest, Extra::default(), Stderr::Read, &[], "info")
    }

    fn launch(
        pg: SocketAddr,
        rest: SocketAddr,
        extra: Extra,
        stderr: Stderr,
        prefix: &[&str],
        filter: &str,
    ) -> Self {
        let bin = env!("CARGO_BIN_EXE_patroni-proxy");
        Self::launch_bin(bin, pg, rest, extra, stderr, prefix, filter)
    }

    fn launch_bin(
        bin: &str,
        pg: SocketAddr,
        rest: SocketAddr,
        extra: Extra,
        stderr: Stderr,
        prefix: &[&str],
        filter: &str,
    ) -> Self {
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let stats: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        std::fs::write(
            &path,
            format!(
                "[global]\nthreads = 1\n{}\n[listen]\nbind = \"{listen}\"\n{}\n[check]\ninter = \"200ms\"\nport = {}\n\
                 [stats]\nbind = \"{stats}\"\n[log]\n{}\n[[server]]\nname = \"pg0\"\naddress = \"{pg}\"\n{}\n",
                extra.global,
                test_relay(extra.listen),
                rest.port(),
                extra.log,
                extra.server
            ),
        )
        .unwrap();
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.arg("--config")
            .arg(&path)
            .env("RUST_LOG", filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start patroni-proxy");
        let log = Arc::new(Mutex::new(Vec::new()));
        let pipe = child.stderr.take().unwrap();
        if stderr == Stderr::Read {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { return };
                    log.lock().unwrap().push(line);
                }
            });
        } else {
            // Kept open, never read.
            std::mem::forget(pipe);
        }
        Self {
            child,
            listen,
            stats,
            log,
            _dir: dir,
        }
    }

    /// The config file the proxy was started with (tests rewrite it before a reload).
    pub fn config_path(&self) -> std::path::PathBuf {
        self._dir.path().join("proxy.toml")
    }

    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name}");
    }

    pub fn logged(&self, needle: &str) -> bool {
        self.count(needle) > 0
    }

    pub fn count(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    pub async fn wait_logged(&self, needle: &str, within: Duration) {
        let until = Instant::now() + within;
        while !self.logged(needle) {
            assert!(
                Instant::now() < until,
                "never logged {needle:?}: {:#?}",
                self.log.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The exit status, waiting up to `within`.
    pub async fn exited(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let until = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() >= until {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls `path` on the stats listener until it answers 200, within `within`.
    pub async fn get_ok(&self, path: &str, within: Duration) -> String {
        let until = Instant::now() + within;
        loop {
            if let Some((200, body)) = get(self.stats, path).await {
                return body;
            }
            assert!(Instant::now() < until, "GET {path} never answered 200");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the primary to be routed (a client gets a session).
    pub async fn wait_routed(&self) {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let body = self.get_ok("/stats.json", Duration::from_secs(10)).await;
            if body.contains("\"routed_primary\":true") {
                return;
            }
            assert!(Instant::now() < until, "never routed: {body}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bare HTTP/1.0 GET with a 2 s bound: status and body.
pub async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let work = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).to_string();
        let code = text.get(9..12)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n")?.1.to_string();
        Some((code, body))
    };
    tokio::time::timeout(Duration::from_secs(2), work)
        .await
        .ok()
        .flatten()
}
