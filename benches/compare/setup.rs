//! Starting and stopping what the benchmark measures: a scratch PostgreSQL 15, an echo server, an
//! iperf3 server, a fake Patroni REST endpoint, HAProxy and patroni-proxy. Every process is our child
//! and is stopped by its PID when its [`Proc`] is dropped (also on panic).

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Loopback addresses, away from the dev cluster's 127.0.0.11-13 / .21 (`baseline.md`).
pub const IP_PG: [u8; 4] = [127, 0, 0, 61];
pub const IP_BACKENDS: [u8; 4] = [127, 0, 0, 62];
pub const IP_PATRONI: [u8; 4] = [127, 0, 0, 63];
pub const IP_HAPROXY: [u8; 4] = [127, 0, 0, 64];
pub const IP_PROXY: [u8; 4] = [127, 0, 0, 65];

/// A free TCP port on `ip` (the kernel's choice; released at once, so a tiny race remains).
pub fn free_addr(ip: [u8; 4]) -> SocketAddr {
    let l = TcpListener::bind((IpAddr::from(ip), 0)).expect("bind a loopback port");
    l.local_addr().expect("local addr")
}

/// A child process, stopped by PID on drop: `stop_signal`, then SIGKILL after 10 s.
pub struct Proc {
    pub name: String,
    pub child: Child,
    stop_signal: &'static str,
}

impl Proc {
    pub fn spawn(
        name: &str,
        cmd: &mut Command,
        logs: &Path,
        stop_signal: &'static str,
    ) -> std::io::Result<Self> {
        let log = File::create(logs.join(format!("{name}.log")))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        Ok(Self {
            name: name.to_string(),
            child,
            stop_signal,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails loudly if the process already exited (bad config, port taken).
    pub fn check_alive(&mut self, logs: &Path) {
        if let Ok(Some(status)) = self.child.try_wait() {
            let log = std::fs::read_to_string(logs.join(format!("{}.log", self.name)))
                .unwrap_or_default();
            panic!("{} exited early ({status}):\n{log}", self.name);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args([self.stop_signal, &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{} ({}) did not stop; killing it", self.name, self.pid());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `ok` until it holds or `limit` passes.
pub fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// uid/gid to run PostgreSQL as: `postgres` when we are root (it refuses root), else ourselves.
fn pg_user() -> Option<(u32, u32)> {
    let me = String::from_utf8(Command::new("id").arg("-u").output().ok()?.stdout).ok()?;
    if me.trim() != "0" {
        return None;
    }
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, "postgres"]).output().ok()?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    Some((
        id("-u").expect("user postgres (apt: postgresql-15)"),
        id("-g")?,
    ))
}

/// A scratch PostgreSQL 15 cluster in a temporary directory under /var/tmp (readable by `postgres`,
/// unlike /root), initialised for pgbench.
pub struct Postgres {
    pub _proc: Proc,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Postgres {
    pub fn start(logs: &Path) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("patroni-proxy-bench.")
            .tempdir_in("/var/tmp")
            .expect("temp dir in /var/tmp");
        let user = pg_user();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown temp dir");
        }
        let as_pg = |cmd: &mut Command| {
            if let Some((uid, gid)) = user {
                cmd.uid(uid).gid(gid);
            }
        };
        let data = dir.path().join("data");
        let mut initdb = Command::new(format!("{PG_BIN}/initdb"));
        initdb.args([
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "-D",
        ]);
        initdb.arg(&data);
        as_pg(&mut initdb);
        run(&mut initdb, "initdb");
        let addr = free_addr(IP_PG);
        let mut cmd = Command::new(format!("{PG_BIN}/postgres"));
        cmd.arg("-D").arg(&data);
        for (k, v) in [
            ("listen_addresses", addr.ip().to_string()),
            ("port", addr.port().to_string()),
            ("unix_socket_directories", dir.path().display().to_string()),
            ("max_connections", "100".into()),
            ("shared_buffers", "128MB".into()),
            ("fsync", "off".into()),
            ("synchronous_commit", "off".into()),
            ("full_page_writes", "off".into()),
        ] {
            cmd.arg("-c").arg(format!("{k}={v}"));
        }
        as_pg(&mut cmd);
        // SIGINT: PostgreSQL's fast shutdown.
        let mut proc = Proc::spawn("postgres", &mut cmd, logs, "-INT").expect("start postgres");
        wait_for("postgres", Duration::from_secs(30), || {
            proc.check_alive(logs);
            Command::new(format!("{PG_BIN}/pg_isready"))
                .args([
                    "-q",
                    "-h",
                    &addr.ip().to_string(),
                    "-p",
                    &addr.port().to_string(),
                ])
                .status()
                .is_ok_and(|s| s.success())
        });
        run(
            Command::new(format!("{PG_BIN}/pgbench"))
                .args(["-i", "-q", "-s", "10", "-h", &addr.ip().to_string()])
                .args(["-p", &addr.port().to_string(), "-U", "postgres", "postgres"]),
            "pgbench -i",
        );
        Self {
            _proc: proc,
            addr,
            _dir: dir,
        }
    }
}

/// Our echo server, this binary re-executed (a separate process, so its CPU is its own).
pub fn start_echo(logs: &Path) -> (Proc, SocketAddr) {
    let addr = free_addr(IP_BACKENDS);
    let exe = std::env::current_exe().expect("current exe");
    let mut proc = Proc::spawn(
        "echo",
        Command::new(exe).args(["__echo", &addr.to_string()]),
        logs,
        "-TERM",
    )
    .expect("start echo server");
    wait_for("echo server", Duration::from_secs(10), || {
        proc.check_alive(logs);
        TcpStream::connect(addr).is_ok()
    });
    (proc, addr)
}

pub fn start_iperf(logs: &Path) -> (Proc, SocketAddr) {
    let addr = free_addr(IP_BACKENDS);
    let mut proc = Proc::spawn(
        "iperf3-server",
        Command::new("iperf3").args([
            "-s",
            "-B",
            &addr.ip().to_string(),
            "-p",
            &addr.port().to_string(),
        ]),
        logs,
        "-TERM",
    )
    .expect("start iperf3 -s");
    // iperf3 treats a bare connect as a failed test and logs it; wait on the port via /proc instead.
    wait_for("iperf3 server", Duration::from_secs(10), || {
        proc.check_alive(logs);
        listening(addr)
    });
    (proc, addr)
}

/// Whether something listens on `addr` (from /proc/net/tcp, without connecting to it).
fn listening(addr: SocketAddr) -> bool {
    let IpAddr::V4(ip) = addr.ip() else {
        return false;
    };
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(ip.octets()),
        addr.port()
    );
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1] == want && f[3] == "0A"
        })
}

/// A fake Patroni REST endpoint: every request gets Patroni's answer for a running primary.
pub fn start_fake_patroni() -> SocketAddr {
    let listener = TcpListener::bind((IpAddr::from(IP_PATRONI), 0)).expect("bind fake patroni");
    let addr = listener.local_addr().expect("addr");
    std::thread::Builder::new()
        .name("fake-patroni".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut s = stream;
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 1024];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let body = r#"{"role":"primary","state":"running","timeline":1}"#;
                let _ = write!(
                    s,
                    "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
        })
        .expect("spawn fake patroni");
    addr
}

/// The three services every target fronts, in a fixed order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Pg,
    Echo,
    Iperf,
}

pub const SERVICES: [Service; 3] = [Service::Pg, Service::Echo, Service::Iperf];

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::Pg => "pg",
            Service::Echo => "echo",
            Service::Iperf => "iperf",
        }
    }
}

/// HAProxy's `maxconn`: as high as the descriptor limit allows (it wants 2 x maxconn + 17 and
/// refuses to start otherwise), for the ~9 900 idle connections of the memory row.
pub fn haproxy_maxconn() -> u64 {
    let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((20000, 20000));
    ((soft.saturating_sub(20)) / 2).min(20000)
}

/// HAProxy 2.6, one process per service, with the smallest `mode tcp` configuration.
pub fn haproxy_config(name: &str, bind: SocketAddr, server: SocketAddr) -> String {
    let maxconn = haproxy_maxconn();
    format!(
        "# generated by benches/compare: the minimal TCP proxy HAProxy is compared as\n\
         global\n    maxconn {maxconn}\n\
         defaults\n    mode tcp\n    timeout connect 4s\n    timeout client 30m\n    timeout server 30m\n\
         listen {name}\n    bind {bind}\n    maxconn {maxconn}\n    server {name} {server} maxconn {maxconn}\n"
    )
}

pub fn start_haproxy(
    name: &str,
    server: SocketAddr,
    logs: &Path,
    cfg_dir: &Path,
) -> (Proc, SocketAddr, String) {
    let bind = free_addr(IP_HAPROXY);
    let cfg = haproxy_config(name, bind, server);
    let path = cfg_dir.join(format!("haproxy-{name}.cfg"));
    std::fs::write(&path, &cfg).expect("write haproxy config");
    let mut proc = Proc::spawn(
        &format!("haproxy-{name}"),
        Command::new("haproxy").arg("-db").arg("-f").arg(&path),
        logs,
        "-TERM",
    )
    .expect("start haproxy");
    wait_for("haproxy", Duration::from_secs(10), || {
        proc.check_alive(logs);
        listening(bind)
    });
    (proc, bind, cfg)
}

/// patroni-proxy with health checks on against the fake Patroni endpoint; returns once `/ready`
/// says a primary is routable. Returns the process, the listener, the stats listener and the config.
#[allow(clippy::too_many_arguments)]
pub fn start_proxy(
    label: &str,
    bin: &Path,
    env: &[(String, String)],
    listen: &str,
    name: &str,
    server: SocketAddr,
    patroni: SocketAddr,
    logs: &Path,
    cfg_dir: &Path,
) -> (Proc, SocketAddr, SocketAddr, String) {
    let bind = free_addr(IP_PROXY);
    let stats = free_addr(IP_PROXY);
    let cfg = format!(
        "# generated by benches/compare\n\
         [global]\nmaxconn = 20000\n\
         [listen]\nname = \"{name}\"\nbind = \"{bind}\"\n{listen}\
         [check]\ninter = \"1s\"\n\
         [[server]]\nname = \"{name}1\"\naddress = \"{server}\"\nmaxconn = 20000\n\
         check_addr = \"{}\"\ncheck_port = {}\n\
         [stats]\nbind = \"{stats}\"\n",
        patroni.ip(),
        patroni.port()
    );
    let path = cfg_dir.join(format!("{label}-{name}.toml"));
    std::fs::write(&path, &cfg).expect("write proxy config");
    let mut proc = Proc::spawn(
        &format!("{label}-{name}"),
        Command::new(bin)
            .arg("--config")
            .arg(&path)
            .envs(env.iter().map(|(k, v)| (k, v))),
        logs,
        "-TERM",
    )
    .expect("start patroni-proxy");
    wait_for(
        "patroni-proxy to route to the primary",
        Duration::from_secs(20),
        || {
            proc.check_alive(logs);
            http_get(stats, "/ready")
                .is_some_and(|r| r.lines().next().is_some_and(|l| l.contains(" 200 ")))
        },
    );
    (proc, bind, stats, cfg)
}

/// One HTTP/1.0 GET; the whole answer, status line and headers included.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// Pins every thread of `pids` to the CPUs in `list` (taskset syntax, e.g. `0` or `0-1`) and
/// returns each thread's previous mask, for [`unpin`]: a process that chose its own CPUs keeps them
/// after the row that pinned it.
pub fn pin(pids: &[u32], list: &str) -> Vec<(String, String)> {
    let mut saved = Vec::new();
    for pid in pids {
        let tids = std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned());
        for tid in tids {
            let out = Command::new("taskset").args(["-p", &tid]).output();
            // "pid 123's current affinity mask: 3"
            if let Some(mask) = out.ok().and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .rsplit(':')
                    .next()
                    .map(|m| m.trim().to_string())
            }) {
                saved.push((tid, mask));
            }
        }
        let _ = Command::new("taskset")
            .args(["-a", "-c", "-p", list, &pid.to_string()])
            .stdout(Stdio::null())
            .status();
    }
    saved
}

/// Gives threads back the masks [`pin`] saved.
pub fn unpin(saved: &[(String, String)]) {
    for (tid, mask) in saved {
        let _ = Command::new("taskset")
            .args(["-p", mask, tid])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

pub fn logs_dir(root: &Path) -> PathBuf {
    let d = root.join("logs");
    std::fs::create_dir_all(&d).expect("create logs dir");
    d
}
