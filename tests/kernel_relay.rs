//! The kernel relay (`listen.relay = "kernel"`, issue 17) end to end against in-process fakes, in
//! real time (the BPF program's clock is the machine's): bytes move both ways and are counted,
//! half-closes pass in order, idle timeouts and `shutdown-sessions` end kernel-relayed sessions as
//! they end user-space ones, and nothing stays in the kernel's maps. Loading the program needs
//! `CAP_BPF` and `CAP_NET_ADMIN` (root here): without them each test says so and passes; the
//! fallback (`auto` as an unprivileged user) is `auto_falls_back_...` below.

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::{Cluster, Mode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

const PRIMARY: Mode = Mode::Primary { timeline: 1 };
/// Every session moves into the kernel as soon as it relays.
const KERNEL: &str = "[listen]\nrelay = \"kernel\"\nkernel_after = 0\n";

/// The maps' entries (`socks`, `targets`, `links`), or `None` (said) where the program cannot load.
fn entries(c: &Cluster) -> Option<(usize, usize, usize)> {
    match c.shared().sockmap.ready() {
        Some(m) => Some(m.entries()),
        None => {
            eprintln!("kernel relay not tested here: {:?}", c.shared().sockmap);
            None
        }
    }
}

async fn until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .expect("bytes within 5 s")
        .unwrap();
    buf
}

async fn started(extra: &str) -> Cluster {
    let c = Cluster::start(vec![PRIMARY], extra).await;
    c.wait_for(Duration::from_secs(5), "a primary", |c| {
        c.primary() == Some(0)
    })
    .await;
    c
}

#[tokio::test]
async fn bytes_move_in_the_kernel_are_counted_and_nothing_stays_in_the_maps() {
    let c = started(KERNEL).await;
    let Some(before) = entries(&c) else { return };
    assert_eq!(before, (0, 0, 0));
    let mut app = TcpStream::connect(c.addr).await.unwrap();
    assert_eq!(read_n(&mut app, 11).await, b"NODE node0\n");
    let payload: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
    let writer = {
        let (payload, mut w) = (payload.clone(), app);
        tokio::spawn(async move {
            w.write_all(&payload).await.unwrap();
            w
        })
    };
    let mut app = writer.await.unwrap();
    assert_eq!(read_n(&mut app, payload.len()).await, payload);
    assert_eq!(entries(&c), Some((2, 2, 2)), "the session's two sockets");
    drop(app);
    let fe = &c.shared().frontend;
    until(Duration::from_secs(5), "the session's end", || {
        fe.scur.load(Relaxed) == 0
    })
    .await;
    assert_eq!(
        entries(&c),
        Some((0, 0, 0)),
        "a session leaves nothing behind"
    );
    // The program's counts: the echo node's greeting came before the kernel took over (the
    // startup inspection relays it); everything after, both ways.
    let node = &c.shared().backend(0).counters;
    assert_eq!(fe.bin.load(Relaxed), payload.len() as u64);
    assert_eq!(node.bin.load(Relaxed), payload.len() as u64);
    assert!(fe.bout.load(Relaxed) >= payload.len() as u64);
}

/// A server that reads to the end of the stream, then answers with how many bytes it read and
/// closes: it sees the client's FIN only after the client's bytes, and its answer still reaches
/// the client after that half-close.
async fn counting_server() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let mut all = Vec::new();
                s.read_to_end(&mut all).await.unwrap();
                s.write_all(format!("read {}\n", all.len()).as_bytes())
                    .await
                    .unwrap();
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_half_close_passes_after_the_bytes_before_it_and_the_answer_comes_back() {
    // Not PostgreSQL: relayed from the start, without the startup inspection.
    let extra = "[listen]\nrelay = \"kernel\"\nkernel_after = 0\ninspect_startup = false\n";
    let c = Cluster::start_on(vec![PRIMARY], extra, vec![counting_server().await]).await;
    c.wait_for(Duration::from_secs(5), "a primary", |c| {
        c.primary() == Some(0)
    })
    .await;
    if entries(&c).is_none() {
        return;
    }
    for n in [1usize, 70_000, 1_000_000] {
        let mut app = TcpStream::connect(c.addr).await.unwrap();
        // The first byte may reach the server before the kernel takes over; the rest after.
        app.write_all(b"x").await.unwrap();
        until(Duration::from_secs(5), "the kernel relay", || {
            entries(&c) == Some((2, 2, 2))
        })
        .await;
        app.write_all(&vec![1u8; n - 1]).await.unwrap();
        app.shutdown().await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(5), app.read_to_string(&mut answer))
            .await
            .expect("an answer and the end of the stream")
            .unwrap();
        assert_eq!(answer, format!("read {n}\n"));
        until(Duration::from_secs(5), "the session's end", || {
            entries(&c) == Some((0, 0, 0))
        })
        .await;
    }
    assert_eq!(c.shared().backend(0).counters.srv_abrt.load(Relaxed), 0);
    assert_eq!(c.shared().backend(0).counters.cli_abrt.load(Relaxed), 0);
}

#[tokio::test]
async fn an_idle_kernel_session_times_out_and_a_busy_one_does_not() {
    let c = started("[listen]\nrelay = \"kernel\"\nkernel_after = 0\ntimeout_client = \"600ms\"\n")
        .await;
    if entries(&c).is_none() {
        return;
    }
    let mut busy = TcpStream::connect(c.addr).await.unwrap();
    let mut idle = TcpStream::connect(c.addr).await.unwrap();
    assert_eq!(read_n(&mut busy, 11).await, b"NODE node0\n");
    assert_eq!(read_n(&mut idle, 11).await, b"NODE node0\n");
    let start = Instant::now();
    // A byte each 200 ms keeps `busy` open past several timeouts.
    while start.elapsed() < Duration::from_millis(1500) {
        busy.write_all(b"p").await.unwrap();
        assert_eq!(read_n(&mut busy, 1).await, b"p");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut b = [0u8; 1];
    let idle_end = tokio::time::timeout(Duration::from_secs(1), idle.read(&mut b))
        .await
        .expect("the idle session was closed");
    assert!(matches!(idle_end, Ok(0) | Err(_)));
    busy.write_all(b"q").await.unwrap();
    assert_eq!(
        read_n(&mut busy, 1).await,
        b"q",
        "the busy one is still open"
    );
}

#[tokio::test]
async fn shutdown_sessions_ends_kernel_relayed_sessions_and_empties_the_maps() {
    let c = started(KERNEL).await;
    if entries(&c).is_none() {
        return;
    }
    let mut apps = Vec::new();
    for _ in 0..3 {
        let mut app = TcpStream::connect(c.addr).await.unwrap();
        assert_eq!(read_n(&mut app, 11).await, b"NODE node0\n");
        apps.push(app);
    }
    until(Duration::from_secs(5), "three sessions in the maps", || {
        entries(&c) == Some((6, 6, 6))
    })
    .await;
    c.nodes[0].rest.set(Mode::Replica);
    for app in &mut apps {
        let mut b = [0u8; 1];
        let end = tokio::time::timeout(Duration::from_secs(5), app.read(&mut b))
            .await
            .expect("closed when its server went DOWN");
        assert!(matches!(end, Ok(0) | Err(_)));
    }
    until(Duration::from_secs(5), "the maps to empty", || {
        entries(&c) == Some((0, 0, 0))
    })
    .await;
    assert_eq!(c.shared().backend(0).counters.killed.load(Relaxed), 3);
}

/// A session of a listener with `relay = "kernel"` and `kernel_after = 16` (docs/configuration.md,
/// "Kernel relay"): it starts in user space.
const LATE: &str = "[listen]\nrelay = \"kernel\"\nkernel_after = 16\n";

#[tokio::test]
async fn a_session_moves_into_the_kernel_mid_stream_without_losing_or_reordering_a_byte() {
    // The move happens while both directions are busy: bytes in flight wait in the sockets for
    // the program, and the counters add the user-space part and the kernel's part exactly once.
    let c = started(LATE).await;
    if entries(&c).is_none() {
        return;
    }
    let app = TcpStream::connect(c.addr).await.unwrap();
    let (mut r, mut w) = app.into_split();
    let mut greeting = [0u8; 11];
    r.read_exact(&mut greeting).await.unwrap();
    let payload: Vec<u8> = (0..4_000_000u32).map(|i| (i % 253) as u8).collect();
    // At most 8 KiB in flight, so that no read fills the relay's 64 KiB buffer: a bulk session
    // would stay in user space (docs/benchmarks.md, "Bulk stays in user space").
    let window = std::sync::Arc::new(tokio::sync::Semaphore::new(8192));
    let writer = {
        let (payload, window) = (payload.clone(), window.clone());
        tokio::spawn(async move {
            // PostgreSQL-sized writes, so the move comes after a few dozen reads.
            for chunk in payload.chunks(700) {
                window
                    .acquire_many(chunk.len() as u32)
                    .await
                    .unwrap()
                    .forget();
                w.write_all(chunk).await.unwrap();
            }
            w
        })
    };
    let mut back = vec![0u8; payload.len()];
    let echo = async {
        let mut at = 0;
        while at < back.len() {
            let n = r.read(&mut back[at..]).await.unwrap();
            assert!(n > 0, "the echo ended at {at} bytes");
            at += n;
            window.add_permits(n);
        }
    };
    tokio::time::timeout(Duration::from_secs(20), echo)
        .await
        .expect("the echo within 20 s");
    assert!(back == payload, "the echo differs from what was sent");
    assert_eq!(
        entries(&c),
        Some((2, 2, 2)),
        "the session moved into the kernel"
    );
    let w = writer.await.unwrap();
    drop(r.reunite(w).unwrap());
    let fe = &c.shared().frontend;
    until(Duration::from_secs(5), "the session's end", || {
        fe.scur.load(Relaxed) == 0
    })
    .await;
    assert_eq!(entries(&c), Some((0, 0, 0)));
    let node = &c.shared().backend(0).counters;
    assert_eq!(fe.bin.load(Relaxed), payload.len() as u64, "client bytes");
    assert_eq!(node.bin.load(Relaxed), payload.len() as u64);
    assert_eq!(
        fe.bout.load(Relaxed),
        (payload.len() + 11) as u64,
        "greeting + echo"
    );
}

#[tokio::test]
async fn a_short_session_stays_in_user_space() {
    // Fewer reads than `kernel_after`: the session never pays the move's system calls.
    let c = started(LATE).await;
    if entries(&c).is_none() {
        return;
    }
    let mut app = TcpStream::connect(c.addr).await.unwrap();
    assert_eq!(read_n(&mut app, 11).await, b"NODE node0\n");
    for i in 0..3u8 {
        app.write_all(&[i; 100]).await.unwrap();
        assert_eq!(read_n(&mut app, 100).await, [i; 100]);
    }
    assert_eq!(entries(&c), Some((0, 0, 0)), "still relayed in user space");
    assert_eq!(c.shared().frontend.bin.load(Relaxed), 300);
}

/// Runs the built proxy as `nobody` (no `CAP_BPF`) with `relay`, until its stderr has a line
/// with `until` (then stops it) or until it exits; returns its stderr and, if it exited, its
/// status.
fn unprivileged(relay: &str, until: Option<&str>) -> (String, Option<std::process::ExitStatus>) {
    use std::io::BufRead;
    use std::os::unix::fs::PermissionsExt;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    // Readable by `nobody`.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("proxy.toml");
    let port = |_: ()| common::binary::free_port();
    std::fs::write(
        &path,
        format!(
            "[listen]\nbind = \"127.0.0.1:{}\"\nrelay = \"{relay}\"\n[stats]\nbind = \"127.0.0.1:{}\"\n\
             [[server]]\nname = \"pg0\"\naddress = \"127.0.0.1:1\"\n",
            port(()),
            port(())
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut child = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_patroni-proxy"))
        .arg("-c")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv runs");
    let mut log = String::new();
    let lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    for line in lines.map_while(Result::ok) {
        log.push_str(&line);
        log.push('\n');
        if until.is_some_and(|u| line.contains(u)) {
            let _ = child.kill();
            let _ = child.wait();
            return (log, None);
        }
    }
    (log, Some(child.wait().unwrap()))
}

fn root() -> bool {
    rustix::process::geteuid().is_root()
}

#[test]
fn auto_falls_back_to_user_space_without_cap_bpf_and_says_why_once() {
    if !root() {
        eprintln!("needs root to drop to nobody; skipped");
        return;
    }
    let (log, _) = unprivileged("auto", Some("relays in user space"));
    let said: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("relays in user space"))
        .collect();
    assert_eq!(said.len(), 1, "said once: {log}");
    assert!(
        said[0].contains("listener postgres") && said[0].contains("cannot be used: "),
        "{}",
        said[0]
    );
    // The kernel's answer is in it: no permission.
    assert!(said[0].contains("Operation not permitted"), "{}", said[0]);
}

#[test]
fn kernel_without_cap_bpf_refuses_to_start_and_names_the_key() {
    if !root() {
        eprintln!("needs root to drop to nobody; skipped");
        return;
    }
    let (log, status) = unprivileged("kernel", None);
    assert!(!status.expect("it exits").success(), "{log}");
    assert!(
        log.contains("listen.relay = \"kernel\" but the kernel relay cannot be used"),
        "{log}"
    );
}

/// The built proxy's open descriptors (`/proc/PID/fd`) but its health checks' sockets (to
/// `rest_port`, opened and closed every `inter`), and the id of the BPF program one of them holds
/// (`/proc/PID/fdinfo`: `prog_id:`).
fn descriptors(pid: u32, rest_port: u16) -> (usize, Option<u32>) {
    // Sockets by inode whose remote port is the REST API's (`/proc/net/tcp`: hex `ADDR:PORT`).
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let checks: Vec<String> = (tcp.lines().skip(1))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let port = u16::from_str_radix(f.get(2)?.rsplit(':').next()?, 16).ok()?;
            let inode = f.get(9)?;
            (port == rest_port).then(|| format!("socket:[{inode}]"))
        })
        .collect();
    let mut n = 0;
    let mut prog = None;
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let e = e.unwrap();
        let link = std::fs::read_link(e.path()).unwrap_or_default();
        let link = link.to_string_lossy();
        if checks.iter().any(|c| *c == link) {
            continue;
        }
        n += 1;
        if link == "anon_inode:bpf-prog" {
            let fd = e.file_name();
            let info =
                std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.to_string_lossy()))
                    .unwrap_or_default();
            prog = (info.lines())
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|v| v.trim().parse().ok());
        }
    }
    (n, prog)
}

/// A PostgreSQL session through the proxy, past ReadyForQuery (so it relays), kept open.
async fn session(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&common::startup_message("app")).await.unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 512];
    while !got.contains(&b'Z') {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("the startup's answer within 5 s")
            .unwrap();
        assert!(n > 0, "closed during the startup");
        got.extend_from_slice(&chunk[..n]);
    }
    s
}

#[tokio::test]
async fn a_kernel_session_holds_two_descriptors_and_the_program_leaves_with_the_proxy() {
    // Issue 17 item 2: "nothing leaks in the kernel (map entries and program references counted
    // before/after in a test)"; and a kernel session costs the proxy its two sockets, as a
    // user-space one (it had an epoll instance of its own: ~6 600 sessions fit under a
    // 20 000-descriptor limit instead of 9 900).
    use common::binary::{Extra, Proxy, Stderr};
    if !root() {
        eprintln!("needs CAP_BPF; skipped");
        return;
    }
    let pg = common::FakePg::start(common::PgMode::Primary).await;
    let rest = common::FakePatroni::start(PRIMARY).await;
    let extra = Extra {
        listen: "relay = \"kernel\"\nkernel_after = 0",
        ..Extra::default()
    };
    let mut p = Proxy::start(pg.addr, rest.addr, extra, Stderr::Read, &[]);
    p.wait_routed().await;
    let pid = p.child.id();
    // The first kernel session makes its thread's epoll instance.
    let first = session(p.listen).await;
    // Two looks that agree: a health check's socket may be caught between `socket()` and
    // `connect()`, when it has no peer port to be left out by.
    let (mut before, mut prog) = descriptors(pid, rest.addr.port());
    for _ in 0..50 {
        let again = descriptors(pid, rest.addr.port());
        if again.0 == before {
            break;
        }
        (before, prog) = again;
    }
    let prog = prog.expect("the proxy holds its BPF program");
    let mut open = Vec::new();
    for _ in 0..10 {
        open.push(session(p.listen).await);
    }
    // Exactly two per session; waited for, as such a check socket may be counted for a moment.
    until(
        Duration::from_secs(5),
        "two descriptors per session",
        || descriptors(pid, rest.addr.port()).0 == before + 20,
    )
    .await;
    drop(open);
    drop(first);
    until(
        Duration::from_secs(5),
        "the sessions' sockets to close",
        || descriptors(pid, rest.addr.port()).0 == before - 2,
    )
    .await;
    let loaded = || aya::programs::loaded_programs().any(|i| i.is_ok_and(|i| i.id() == prog));
    assert!(loaded(), "program {prog} loaded while the proxy runs");
    let _ = p.child.kill();
    let _ = p.child.wait();
    // A socket's psock left in a map would keep a reference to the program.
    until(Duration::from_secs(5), "the program to be unloaded", || {
        !loaded()
    })
    .await;
}
