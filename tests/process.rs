//! Issue 11, the defects only a whole process shows: a check answer that left a zombie serving
//! nothing, signals, a blocked stderr, running out of file descriptors. Each test runs the built
//! `patroni-proxy` binary against in-process fakes on loopback.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{pg_startup, startup_message, FakePatroni, FakePg, Mode, PgMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A free loopback port (bound, then released for the proxy to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Proxy {
    child: Child,
    listen: SocketAddr,
    stats: SocketAddr,
    /// stderr lines, when read.
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

/// Lines added to the config's `[global]`, `[listen]` and `[[server]]` tables.
#[derive(Default)]
struct Extra {
    global: &'static str,
    listen: &'static str,
    server: &'static str,
}

#[derive(Clone, Copy, PartialEq)]
enum Stderr {
    /// Read by a thread into `log`.
    Read,
    /// A pipe nobody reads: it fills up after 64 KiB.
    Blocked,
}

impl Proxy {
    /// Starts the binary on a config for one server (`pg`, REST at `rest`); `prefix` runs it
    /// under another command (`prlimit ...`).
    fn start(
        pg: SocketAddr,
        rest: SocketAddr,
        extra: Extra,
        stderr: Stderr,
        prefix: &[&str],
    ) -> Self {
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let stats: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        std::fs::write(
            &path,
            format!(
                "[global]\nthreads = 1\n{}\n[listen]\nbind = \"{listen}\"\n{}\n[check]\ninter = \"200ms\"\nport = {}\n\
                 [stats]\nbind = \"{stats}\"\n[[server]]\nname = \"pg0\"\naddress = \"{pg}\"\n{}\n",
                extra.global,
                extra.listen,
                rest.port(),
                extra.server
            ),
        )
        .unwrap();
        let bin = env!("CARGO_BIN_EXE_patroni-proxy");
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
            .env("RUST_LOG", "info,patroni_proxy=debug")
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

    fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name}");
    }

    fn logged(&self, needle: &str) -> bool {
        self.count(needle) > 0
    }

    fn count(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    async fn wait_logged(&self, needle: &str, within: Duration) {
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
    async fn exited(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
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
    async fn get_ok(&self, path: &str, within: Duration) -> String {
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
    async fn wait_routed(&self) {
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
async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
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

#[tokio::test]
async fn a_huge_content_length_neither_panics_nor_stops_serving() {
    // Issue 11 item 1: `Content-Length: 18446744073709551615` overflowed `body_start + n`, panicked
    // the checker, and the supervisor closed the listeners while the process stayed alive serving
    // nothing. Now it is an invalid answer (L7RSP), and the proxy goes on.
    let pg = FakePg::start(PgMode::Primary).await;
    let rest = FakePatroni::start(Mode::Raw(
        "HTTP/1.0 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\n{}".into(),
    ))
    .await;
    let mut p = Proxy::start(pg.addr, rest.addr, Extra::default(), Stderr::Read, &[]);
    p.get_ok("/healthz", Duration::from_secs(10)).await;
    let until = Instant::now() + Duration::from_secs(10);
    while rest.checks.load(std::sync::atomic::Ordering::SeqCst) < 5 {
        assert!(Instant::now() < until);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(p.child.try_wait().unwrap().is_none(), "the process exited");
    let body = p.get_ok("/stats.json", Duration::from_secs(2)).await;
    assert!(
        body.contains("L7RSP") && body.contains("body over 64 KiB"),
        "{body}"
    );
    assert!(
        TcpStream::connect(p.listen).await.is_ok(),
        "the primary port still listens"
    );
    assert!(!p.logged("panicked"));
}

#[tokio::test]
async fn sighup_is_ignored_and_logged() {
    // Issue 11 item 9: "SIGHUP ends the process without a drain (until reload exists, ignore it
    // and log that it was ignored)".
    let pg = FakePg::start(PgMode::Primary).await;
    let rest = FakePatroni::start(Mode::Primary { timeline: 1 }).await;
    let mut p = Proxy::start(pg.addr, rest.addr, Extra::default(), Stderr::Read, &[]);
    p.wait_routed().await;
    p.signal("HUP");
    p.wait_logged("SIGHUP ignored", Duration::from_secs(5))
        .await;
    assert!(p.exited(Duration::ZERO).await.is_none());
    assert!(pg_startup(p.listen, false).await.is_ok(), "still serving");
}

#[tokio::test]
async fn a_second_stop_signal_closes_everything_at_once() {
    // Issue 11 item 9: "a second SIGTERM/SIGINT during the drain closes everything at once".
    let pg = FakePg::start(PgMode::Primary).await;
    let rest = FakePatroni::start(Mode::Primary { timeline: 1 }).await;
    let mut p = Proxy::start(
        pg.addr,
        rest.addr,
        Extra {
            global: "shutdown_grace = \"60s\"",
            ..Extra::default()
        },
        Stderr::Read,
        &[],
    );
    p.wait_routed().await;
    // A relaying session keeps the drain going for the whole grace period.
    let mut s = TcpStream::connect(p.listen).await.unwrap();
    s.write_all(&startup_message("app")).await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    p.signal("TERM");
    p.wait_logged("draining sessions", Duration::from_secs(5))
        .await;
    assert!(
        p.exited(Duration::from_millis(300)).await.is_none(),
        "drains first"
    );
    let t = Instant::now();
    p.signal("INT");
    let status = p
        .exited(Duration::from_secs(5))
        .await
        .expect("exited at once");
    assert!(status.success(), "{status:?}");
    assert!(t.elapsed() < Duration::from_secs(5));
    let mut rest_of = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut rest_of)).await;
}

#[tokio::test]
async fn held_clients_are_answered_when_the_drain_begins() {
    // Issue 11 item 9: "held clients end within shutdown_grace". With the checks stopped no
    // primary can be confirmed for them, so they are answered 57P03 at once.
    let pg = FakePg::start(PgMode::Primary).await;
    let rest = FakePatroni::start(Mode::Replica).await;
    let mut p = Proxy::start(
        pg.addr,
        rest.addr,
        Extra {
            global: "shutdown_grace = \"20s\"",
            listen: "hold_timeout = \"60s\"",
            ..Extra::default()
        },
        Stderr::Read,
        &[],
    );
    p.get_ok("/healthz", Duration::from_secs(10)).await;
    let listen = p.listen;
    let client = tokio::spawn(async move { pg_startup(listen, false).await });
    let until = Instant::now() + Duration::from_secs(5);
    while !p
        .get_ok("/stats.json", Duration::from_secs(2))
        .await
        .contains("\"holding\":1")
    {
        assert!(Instant::now() < until, "the client was never held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = Instant::now();
    p.signal("TERM");
    let answer = tokio::time::timeout(Duration::from_secs(5), client)
        .await
        .expect("answered before the grace period")
        .unwrap();
    let Err(common::Outcome::PgError(code, message)) = answer else {
        panic!("{answer:?}");
    };
    assert_eq!(code, "57P03", "{message}");
    assert!(message.contains("shutting down"), "{message}");
    assert!(p.exited(Duration::from_secs(5)).await.is_some());
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_blocked_stderr_does_not_stall_the_proxy() {
    // Issue 11 item 4: logging was synchronous; a stderr pipe nobody reads stalled the whole
    // runtime (state owner, checks, stats, sessions). Lines are now dropped and counted.
    let pg = FakePg::start(PgMode::Primary).await;
    let rest = FakePatroni::start(Mode::Primary { timeline: 1 }).await;
    let p = Proxy::start(pg.addr, rest.addr, Extra::default(), Stderr::Blocked, &[]);
    p.wait_routed().await;
    // One debug line per session: far more than the pipe's 64 KiB.
    let listen = p.listen;
    for _ in 0..40 {
        let batch: Vec<_> = (0..100)
            .map(|_| {
                tokio::spawn(async move {
                    let mut s = TcpStream::connect(listen).await.unwrap();
                    s.write_all(&startup_message("app")).await.unwrap();
                    let mut b = [0u8; 1];
                    tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut b))
                        .await
                        .is_ok()
                })
            })
            .collect();
        for served in batch {
            assert!(served.await.unwrap(), "a session was not served within 2 s");
        }
    }
    // Still serving at once, and says how many lines it dropped.
    let t = Instant::now();
    assert!(pg_startup(listen, false).await.is_ok());
    let metrics = p.get_ok("/metrics", Duration::from_secs(2)).await;
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let dropped: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("patroni_proxy_log_lines_dropped_total "))
        .expect("the metric")
        .trim()
        .parse()
        .unwrap();
    assert!(dropped > 0.0, "{dropped}");
}

#[tokio::test]
async fn no_colour_codes_when_stderr_is_not_a_terminal() {
    // Issue 11 item 4: "no ANSI colour codes when stderr is not a terminal".
    let pg = FakePg::start(PgMode::Primary).await;
    let rest = FakePatroni::start(Mode::Primary { timeline: 1 }).await;
    let p = Proxy::start(pg.addr, rest.addr, Extra::default(), Stderr::Read, &[]);
    p.wait_logged("is now pg0", Duration::from_secs(10)).await;
    let log = p.log.lock().unwrap().join("\n");
    assert!(!log.contains('\u{1b}'), "{log}");
}

#[tokio::test]
async fn running_out_of_descriptors_is_never_blamed_on_the_server() {
    // Issue 11 item 6: EMFILE during a check became L4CON, so the primary was marked DOWN and its
    // sessions cut. Run under `prlimit --nofile`, then open sessions until the proxy runs out.
    // With `maxconn = 1` every session but one waits in the queue holding only its client socket,
    // so the proxy fills its last descriptor whatever number it started with: with two per
    // session (client and server) an odd count left one free, and checks ran in it.
    let pg = FakePg::start(PgMode::Primary).await;
    let rest = FakePatroni::start(Mode::Primary { timeline: 1 }).await;
    let extra = Extra {
        listen: "timeout_queue = \"60s\"",
        server: "maxconn = 1",
        ..Extra::default()
    };
    let p = Proxy::start(
        pg.addr,
        rest.addr,
        extra,
        Stderr::Read,
        &["prlimit", "--nofile=48:48"],
    );
    p.wait_routed().await;
    let mut sessions = Vec::new();
    let until = Instant::now() + Duration::from_secs(20);
    // More checks in a row could not run than `fall` (3) failures would need to mark it DOWN.
    while p.count("health check not run") < 5 {
        assert!(
            Instant::now() < until,
            "never ran out: {} sessions",
            sessions.len()
        );
        if sessions.len() < 80 {
            if let Ok(mut s) = TcpStream::connect(p.listen).await {
                let _ = s.write_all(&startup_message("app")).await;
                sessions.push(s);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(sessions);
    let body = p.get_ok("/stats.json", Duration::from_secs(10)).await;
    assert!(body.contains("\"routed_primary\":true"), "{body}");
    assert!(
        body.contains("\"chkdown\":0") && body.contains("\"chkfail\":0"),
        "{body}"
    );
    assert!(!body.contains("L4CON"), "{body}");
    let metrics = p.get_ok("/metrics", Duration::from_secs(2)).await;
    assert!(
        metrics.lines().any(
            |l| l.starts_with("patroni_proxy_local_resource_errors_total ") && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
}
