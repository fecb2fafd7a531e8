//! Issue 15 item 1, "binary upgrade without a refused connection": the proxy takes its listening
//! socket from `LISTEN_FDS`/`LISTEN_PID` (systemd's socket activation). The test plays systemd: it
//! makes the listening socket, keeps it open, and passes it as descriptor 3 to one proxy, stops
//! that proxy (SIGTERM, drain, exit), then starts a second one on the same socket, while clients
//! connect in a loop. No connection is refused: while no process accepts, clients wait in the
//! socket's accept queue.

mod common;

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use common::binary::{free_port, get};
use common::{startup_message, FakePatroni, FakePg, Mode, PgMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A proxy started on the inherited socket `fd`, its stats on `stats`.
struct Activated {
    child: Child,
    stats: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Activated {
    /// `fd`: the inherited socket, or `None` for a proxy that binds `listen` itself.
    fn start(fd: Option<i32>, listen: SocketAddr, pg: SocketAddr, rest: SocketAddr) -> Self {
        let stats: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        std::fs::write(
            &path,
            format!(
                "[global]\nthreads = 1\nshutdown_grace = \"5s\"\n[listen]\nbind = \"{listen}\"\n\
                 [check]\ninter = \"200ms\"\nport = {}\n[stats]\nbind = \"{stats}\"\n\
                 [[server]]\nname = \"pg0\"\naddress = \"{pg}\"\n",
                rest.port()
            ),
        )
        .unwrap();
        // As systemd does (bash: dash takes one-digit descriptors only): the socket at descriptor 3, LISTEN_PID the service's own pid (the
        // shell's, which `exec` keeps), LISTEN_FDS=1.
        let script = match fd {
            None => "exec \"$0\" --config \"$1\"".to_string(),
            Some(3) => "LISTEN_FDS=1 LISTEN_PID=$$ exec \"$0\" --config \"$1\"".to_string(),
            Some(fd) => format!(
                "exec 3<&{fd} {fd}<&-; LISTEN_FDS=1 LISTEN_PID=$$ exec \"$0\" --config \"$1\""
            ),
        };
        let child = Command::new("bash")
            .arg("-c")
            .arg(script)
            .arg(env!("CARGO_BIN_EXE_patroni-proxy"))
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
            .spawn()
            .unwrap();
        Self {
            child,
            stats,
            _dir: dir,
        }
    }

    async fn wait_routed(&self) {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some((200, body)) = get(self.stats, "/stats.json").await {
                if body.contains("\"routed_primary\":true") {
                    return;
                }
            }
            assert!(
                Instant::now() < until,
                "never routed: {}",
                std::fs::read_to_string(self._dir.path().join("stderr")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(&mut self) {
        let ok = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                assert!(s.success(), "{s}");
                return;
            }
            assert!(Instant::now() < until, "never exited");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Activated {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the clients saw.
#[derive(Debug, Default)]
struct Tally {
    attempts: u64,
    served: u64,
    refused: u64,
    failed: u64,
    max_wait: Duration,
}

/// One client: connect, startup, ReadyForQuery, close. `Err(true)`: refused at connect.
async fn client(addr: SocketAddr) -> Result<(), bool> {
    let mut s = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Err(true),
        Err(_) => return Err(false),
    };
    s.write_all(&startup_message("app"))
        .await
        .map_err(|_| false)?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 512];
    while !answer.ends_with(&[b'Z', 0, 0, 0, 5, b'I']) {
        match s.read(&mut chunk).await {
            Ok(n) if n > 0 => answer.extend_from_slice(&chunk[..n]),
            _ => return Err(false),
        }
    }
    Ok(())
}

/// Clients one after another until `stop`, each bounded by 15 s.
async fn connect_loop(addr: SocketAddr, stop: Arc<AtomicBool>) -> Tally {
    let mut t = Tally::default();
    let until = Instant::now() + Duration::from_secs(60);
    while !stop.load(Relaxed) && Instant::now() < until {
        t.attempts += 1;
        let began = Instant::now();
        match tokio::time::timeout(Duration::from_secs(15), client(addr)).await {
            Ok(Ok(())) => t.served += 1,
            Ok(Err(true)) => t.refused += 1,
            Ok(Err(false)) | Err(_) => t.failed += 1,
        }
        t.max_wait = t.max_wait.max(began.elapsed());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    t
}

/// Starts a proxy, runs 4 client loops, restarts the proxy (SIGTERM, wait for its exit, start a
/// new one), and returns what the clients saw and the time from the stop to the new proxy routing.
async fn restart_under_load(fd: Option<i32>, listen: SocketAddr) -> (Tally, Duration) {
    let pg = FakePg::start(PgMode::Primary).await;
    let rest = FakePatroni::start(Mode::Primary { timeline: 1 }).await;
    let mut old = Activated::start(fd, listen, pg.addr, rest.addr);
    old.wait_routed().await;
    let stop = Arc::new(AtomicBool::new(false));
    let loops: Vec<_> = (0..4)
        .map(|_| tokio::spawn(connect_loop(listen, stop.clone())))
        .collect();
    // Let the loop run against the first proxy, then restart: stop the old one (it drains and
    // exits), then start the new one on the same socket.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let restart = Instant::now();
    old.stop().await;
    let new = Activated::start(fd, listen, pg.addr, rest.addr);
    new.wait_routed().await;
    let gap = restart.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Relaxed);
    let mut total = Tally::default();
    for l in loops {
        let t = l.await.unwrap();
        total.attempts += t.attempts;
        total.served += t.served;
        total.refused += t.refused;
        total.failed += t.failed;
        total.max_wait = total.max_wait.max(t.max_wait);
    }
    drop(new);
    (total, gap)
}

#[tokio::test]
async fn a_restart_on_an_inherited_socket_refuses_no_connection() {
    // The test is the service manager: it owns the listening socket for the whole test.
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = socket.local_addr().unwrap();
    // Inherited by the children (std opens every socket close-on-exec).
    rustix::io::fcntl_setfd(&socket, rustix::io::FdFlags::empty()).unwrap();
    let (total, gap) = restart_under_load(Some(socket.as_raw_fd()), listen).await;
    println!(
        "restart on an inherited socket: {} connections attempted, {} served, {} refused, {} \
         failed; longest wait {:?}; stop-to-routed gap {gap:?}",
        total.attempts, total.served, total.refused, total.failed, total.max_wait
    );
    assert_eq!(total.refused, 0, "{total:?}");
    assert_eq!(total.failed, 0, "{total:?}");
    assert!(
        total.attempts > 20,
        "the loop ran through the restart: {total:?}"
    );
}

#[tokio::test]
async fn without_an_inherited_socket_a_restart_refuses_connections() {
    // The control: the same restart with proxies that bind the port themselves refuses the
    // clients that come between the old one's close and the new one's bind. This is what the
    // socket unit removes, and what shows the loop above can see a refusal.
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (total, gap) = restart_under_load(None, listen).await;
    println!(
        "restart binding itself: {} connections attempted, {} refused; gap {gap:?}",
        total.attempts, total.refused
    );
    assert!(total.refused > 0, "{total:?}");
}
