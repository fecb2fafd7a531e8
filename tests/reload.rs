//! Issue 15 item 1, reload, on the built binary: SIGHUP and `patroni-proxy reload` read the file
//! again; an invalid file or a change that needs a restart keeps the running configuration and is
//! counted as failed; a reload that changes the check timers keeps a relaying session and the
//! routed primary; `/stats.json` shows the loaded file's hash and the reload counts.

mod common;

use std::time::Duration;

use common::binary::{Extra, Proxy, Stderr};
use common::{startup_message, FakePatroni, FakePg, Mode, PgMode};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

async fn stats(p: &Proxy) -> Value {
    serde_json::from_str(&p.get_ok("/stats.json", Duration::from_secs(5)).await).unwrap()
}

/// Polls `/stats.json` until `reloads.<which>` reaches `n`.
async fn wait_reloads(p: &Proxy, which: &str, n: u64) -> Value {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let v = stats(p).await;
        if v["reloads"][which] == n {
            return v;
        }
        assert!(Instant::now() < until, "reloads.{which} never {n}: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A session through the proxy, past its startup.
async fn session(p: &Proxy) -> TcpStream {
    let mut s = TcpStream::connect(p.listen).await.unwrap();
    s.write_all(&startup_message("app")).await.unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 512];
    while !answer.ends_with(&[b'Z', 0, 0, 0, 5, b'I']) {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("the startup answer")
            .unwrap();
        assert!(n > 0, "closed during the startup");
        answer.extend_from_slice(&chunk[..n]);
    }
    s
}

/// The fake PostgreSQL echoes what follows the startup.
async fn echoes(s: &mut TcpStream, what: &[u8]) {
    s.write_all(what).await.unwrap();
    let mut back = vec![0u8; what.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
        .await
        .expect("the echo")
        .expect("the session is open");
    assert_eq!(back, what);
}

fn rewrite(p: &Proxy, from: &str, to: &str) {
    let path = p.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{from:?} not in {text}");
    std::fs::write(&path, text.replace(from, to)).unwrap();
}

async fn started() -> (FakePg, std::sync::Arc<FakePatroni>, Proxy) {
    let pg = FakePg::start(PgMode::Primary).await;
    let rest = FakePatroni::start(Mode::Primary { timeline: 1 }).await;
    let p = Proxy::start(pg.addr, rest.addr, Extra::default(), Stderr::Read, &[]);
    p.wait_routed().await;
    (pg, rest, p)
}

#[tokio::test]
async fn sighup_applies_new_timers_and_a_relaying_session_survives() {
    let (_pg, _rest, p) = started().await;
    let before = stats(&p).await;
    let sha = before["config_sha256"].as_str().unwrap().to_string();
    assert_eq!(sha.len(), 64, "{before}");
    assert!(before["config_loaded_at"].as_f64().unwrap() > 0.0);
    let mut s = session(&p).await;
    echoes(&mut s, b"before").await;

    rewrite(
        &p,
        "inter = \"200ms\"",
        "inter = \"300ms\"\nrise = 3\nfall = 4",
    );
    p.signal("HUP");
    let after = wait_reloads(&p, "ok", 1).await;
    assert_ne!(after["config_sha256"], sha.as_str(), "the new file's hash");
    assert_eq!(after["reloads"]["failed"], 0);
    p.wait_logged("Configuration reloaded", Duration::from_secs(5))
        .await;
    assert!(p.logged("check.inter, check.rise, check.fall"));

    // The session relays on, the primary is still routed and its scur counts the session.
    echoes(&mut s, b"after the reload").await;
    let v = stats(&p).await;
    assert_eq!(v["servers"][0]["routed_primary"], true, "{v}");
    assert_eq!(v["servers"][0]["scur"], 1, "{v}");
    let mut again = session(&p).await;
    echoes(&mut again, b"a new session").await;
    let metrics = p.get_ok("/metrics", Duration::from_secs(5)).await;
    assert!(
        metrics.contains("patroni_proxy_config_reloads_total{result=\"ok\"} 1"),
        "{metrics}"
    );
    // The dashboard's process line names the loaded file's hash, and its event list the reload.
    let new_sha = after["config_sha256"].as_str().unwrap();
    let page = p
        .get_ok("/dashboard/data.json", Duration::from_secs(5))
        .await;
    assert!(
        page.contains(&format!("(sha256 {}, loaded ", &new_sha[..12])),
        "{page}"
    );
    assert!(page.contains("reloads: 1 applied, 0 refused"), "{page}");
    let v = stats(&p).await;
    let events = v["events"].as_array().unwrap();
    assert!(
        events.iter().any(|e| e["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("Configuration reloaded")),
        "{v}"
    );
}

#[tokio::test]
async fn an_invalid_file_keeps_the_running_config_and_counts_a_failure() {
    let (_pg, _rest, p) = started().await;
    let sha = stats(&p).await["config_sha256"].clone();
    let mut s = session(&p).await;
    rewrite(&p, "inter = \"200ms\"", "inter = \"0s\"");
    p.signal("HUP");
    let v = wait_reloads(&p, "failed", 1).await;
    let why = v["reloads"]["last_error"].as_str().unwrap();
    assert!(why.contains("check.inter"), "names the key: {why}");
    assert!(why.contains("unchanged"), "{why}");
    assert_eq!(v["config_sha256"], sha, "still the old file");
    assert_eq!(v["reloads"]["ok"], 0);
    p.wait_logged("reload refused", Duration::from_secs(5))
        .await;
    echoes(&mut s, b"still relaying").await;
    let metrics = p.get_ok("/metrics", Duration::from_secs(5)).await;
    assert!(
        metrics.contains("patroni_proxy_config_reloads_total{result=\"failed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("patroni_proxy_config_reloads_total{result=\"ok\"} 0"),
        "{metrics}"
    );
}

fn reload_command(p: &Proxy, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_patroni-proxy"))
        .arg("--config")
        .arg(p.config_path())
        .arg("reload")
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test]
async fn the_reload_command_signals_the_proxy_and_reports_its_answer() {
    let (_pg, _rest, p) = started().await;
    rewrite(&p, "inter = \"200ms\"", "inter = \"250ms\"");
    let out = reload_command(&p, &[]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(said.contains("reloaded: pid"), "{said}");
    assert_eq!(stats(&p).await["reloads"]["ok"], 1);

    // A change that needs a restart (the relay threads are made once): refused, named, and the
    // proxy serves on as it was.
    rewrite(&p, "threads = 1", "threads = 2");
    let out = reload_command(&p, &[]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        said.contains("global.threads") && said.contains("restart"),
        "{said}"
    );
    let v = stats(&p).await;
    assert_eq!(
        (v["reloads"]["ok"].clone(), v["reloads"]["failed"].clone()),
        (1.into(), 1.into())
    );
    let mut s = session(&p).await;
    echoes(&mut s, b"same listener").await;
}

/// Clients one after another to whatever `target` says, until `stop`: (attempts, refused).
async fn loop_to(
    target: std::sync::Arc<std::sync::Mutex<std::net::SocketAddr>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (u64, u64, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    let (mut attempts, mut refused, mut failed) = (0, 0, 0);
    let until = Instant::now() + Duration::from_secs(30);
    while !stop.load(Relaxed) && Instant::now() < until {
        attempts += 1;
        let addr = *target.lock().unwrap();
        match TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => refused += 1,
            Err(_) => failed += 1,
            Ok(mut s) => {
                let served = async {
                    s.write_all(&startup_message("app")).await.ok()?;
                    let mut answer = Vec::new();
                    let mut chunk = [0u8; 512];
                    while !answer.ends_with(&[b'Z', 0, 0, 0, 5, b'I']) {
                        let n = s.read(&mut chunk).await.ok()?;
                        if n == 0 {
                            return None;
                        }
                        answer.extend_from_slice(&chunk[..n]);
                    }
                    Some(())
                };
                if tokio::time::timeout(Duration::from_secs(5), served)
                    .await
                    .ok()
                    .flatten()
                    .is_none()
                {
                    failed += 1;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    (attempts, refused, failed)
}

#[tokio::test]
async fn a_changed_bind_moves_the_listener_without_a_refused_connection() {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    use std::sync::{Arc, Mutex};
    let (_pg, _rest, p) = started().await;
    let mut kept = session(&p).await;
    let target = Arc::new(Mutex::new(p.listen));
    let stop = Arc::new(AtomicBool::new(false));
    let loops: Vec<_> = (0..2)
        .map(|_| tokio::spawn(loop_to(target.clone(), stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let moved: std::net::SocketAddr = format!("127.0.0.1:{}", common::binary::free_port())
        .parse()
        .unwrap();
    rewrite(
        &p,
        &format!("bind = \"{}\"", p.listen),
        &format!("bind = \"{moved}\""),
    );
    p.signal("HUP");
    let v = wait_reloads(&p, "ok", 1).await;
    assert_eq!(v["listen"], moved.to_string(), "{v}");
    // The clients learn the new address (as an application would, a little later): the old
    // socket still accepts meanwhile.
    tokio::time::sleep(Duration::from_millis(100)).await;
    *target.lock().unwrap() = moved;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Relaxed);
    let (mut attempts, mut refused, mut failed) = (0, 0, 0);
    for l in loops {
        let (a, r, f) = l.await.unwrap();
        attempts += a;
        refused += r;
        failed += f;
    }
    println!(
        "listen.bind moved: {attempts} connections attempted, {refused} refused, {failed} failed"
    );
    assert!(attempts > 20, "{attempts}");
    assert_eq!((refused, failed), (0, 0), "of {attempts}");
    echoes(&mut kept, b"a session from before the move").await;
    // The old socket closes after its linger (2 s): then it refuses.
    let until = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(p.listen).await.is_ok() {
        assert!(Instant::now() < until, "the old socket never closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    echoes(&mut kept, b"and after it closed").await;
}

#[tokio::test]
async fn a_bind_that_cannot_be_opened_is_refused_and_the_old_listener_stays() {
    let (_pg, _rest, p) = started().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap();
    rewrite(
        &p,
        &format!("bind = \"{}\"", p.listen),
        &format!("bind = \"{busy}\""),
    );
    p.signal("HUP");
    let v = wait_reloads(&p, "failed", 1).await;
    let why = v["reloads"]["last_error"].as_str().unwrap();
    assert!(why.starts_with("listen.bind: cannot listen on"), "{why}");
    assert_eq!(v["listen"], p.listen.to_string());
    let mut s = session(&p).await;
    echoes(&mut s, b"where it was").await;
}

/// Polls `/stats.json` until `f` holds.
async fn wait_stats(p: &Proxy, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let v = stats(p).await;
        if f(&v) {
            return v;
        }
        assert!(Instant::now() < until, "never {what}: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn servers_added_and_removed_live_and_no_session_is_cut_by_the_reload() {
    // Issue 15 item 1: "added servers start fail-closed, removed servers drain (no new sessions,
    // existing ones end by themselves or at shutdown_grace)".
    let pg0 = FakePg::start(PgMode::Primary).await;
    let rest0 = FakePatroni::start(Mode::Primary { timeline: 1 }).await;
    let extra = Extra {
        global: "shutdown_grace = \"2s\"",
        ..Extra::default()
    };
    let p = Proxy::start(pg0.addr, rest0.addr, extra, Stderr::Read, &[]);
    p.wait_routed().await;
    let mut s = session(&p).await;
    echoes(&mut s, b"on pg0").await;

    // Added: a second node, a replica for now; checked at once, never routed while it says so.
    let pg1 = FakePg::start(PgMode::Primary).await;
    let rest1 = FakePatroni::start(Mode::Replica).await;
    let pg1_table = format!(
        "[[server]]\nname = \"pg1\"\naddress = \"{}\"\ncheck_port = {}\n",
        pg1.addr,
        rest1.addr.port()
    );
    let path = p.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{text}\n{pg1_table}")).unwrap();
    p.signal("HUP");
    wait_reloads(&p, "ok", 1).await;
    let v = wait_stats(&p, "pg1 checked", |v| {
        v["servers"][1]["name"] == "pg1" && v["servers"][1]["status"] != "INI"
    })
    .await;
    assert_eq!(v["servers"][0]["routed_primary"], true, "{v}");
    assert_eq!(v["servers"][1]["routed_primary"], false, "{v}");
    assert!(p.logged("server 'pg1' added"));
    echoes(&mut s, b"still on pg0").await;
    let metrics = p.get_ok("/metrics", Duration::from_secs(5)).await;
    assert!(
        metrics.contains("patroni_proxy_server_up{server=\"pg1\"}"),
        "the added server's series exist: {metrics}"
    );

    // Removed: the routed primary. Its session goes on; new clients wait for a primary.
    let text = std::fs::read_to_string(&path).unwrap();
    let pg0_table = format!("[[server]]\nname = \"pg0\"\naddress = \"{}\"\n", pg0.addr);
    assert!(text.contains(&pg0_table), "{text}");
    std::fs::write(&path, text.replace(&pg0_table, "")).unwrap();
    p.signal("HUP");
    wait_reloads(&p, "ok", 2).await;
    let v = wait_stats(&p, "pg0 removed", |v| {
        v["servers"][0]["status"] == "REMOVED"
    })
    .await;
    assert_eq!(v["servers"][0]["scur"], 1, "its session is draining: {v}");
    assert_eq!(
        v["primary"],
        Value::Null,
        "a removed server is never routed: {v}"
    );
    echoes(&mut s, b"draining on pg0").await;

    // pg1 is promoted: new sessions go there, and the old session still relays to pg0.
    rest1.set(Mode::Primary { timeline: 2 });
    wait_stats(&p, "pg1 routed", |v| v["primary"] == "pg1").await;
    let mut fresh = session(&p).await;
    echoes(&mut fresh, b"on pg1").await;
    echoes(&mut s, b"pg0 until the grace ends").await;

    // shutdown_grace (2 s) after the removal, what is left of pg0's sessions is closed.
    p.wait_logged("closing its 1 remaining sessions", Duration::from_secs(10))
        .await;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("closed after the grace");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    echoes(&mut fresh, b"pg1 untouched").await;
}

#[tokio::test]
async fn a_changed_stats_bind_moves_the_stats_listener() {
    // Issue 15 item 1: "a changed `bind` opens the new listener before closing the old", for the
    // stats listener too.
    let (_pg, _rest, p) = started().await;
    let moved: std::net::SocketAddr = format!("127.0.0.1:{}", common::binary::free_port())
        .parse()
        .unwrap();
    rewrite(
        &p,
        &format!("bind = \"{}\"", p.stats),
        &format!("bind = \"{moved}\""),
    );
    // Without the pid, the command cannot find the proxy at the file's new stats address.
    let out = reload_command(&p, &[]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--pid"),
        "{out:?}"
    );
    // With it (systemd's $MAINPID in the unit's ExecReload), it signals and reads the outcome at
    // the new address.
    let out = reload_command(&p, &["--pid", &p.child.id().to_string()]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("reloaded: pid"),
        "{out:?}"
    );
    let (code, body) = common::binary::get(moved, "/stats.json")
        .await
        .expect("the new stats address answers");
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["reloads"]["ok"], 1, "{v}");
    p.wait_logged("stats listener moved", Duration::from_secs(5))
        .await;
    assert!(
        TcpStream::connect(p.stats).await.is_err(),
        "the old stats socket is closed once the new one serves"
    );
}

/// The keepalive timer `ss` shows on the proxy's end of `client`'s connection, if any.
fn keepalive(p: &Proxy, client: &TcpStream) -> Option<String> {
    let port = client.local_addr().unwrap().port();
    let filter = format!("( sport = :{} and dport = :{port} )", p.listen.port());
    let out = std::process::Command::new("ss")
        .args(["-tnoH", "state", "established", &filter])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!text.is_empty(), "no connection from port {port}");
    text.contains("keepalive").then_some(text)
}

#[tokio::test]
async fn a_reload_changes_the_keepalive_of_clients_accepted_after_it() {
    // Accepted sockets inherit the listening socket's options (`proxy::connect::socket_options`), so a
    // reload has to reach the listening socket: every client after it has the new keepalive, the
    // ones before keep theirs.
    let (_pg, _rest, p) = started().await;
    let (first, second) = (session(&p).await, session(&p).await);
    assert!(keepalive(&p, &first).is_some());
    assert!(keepalive(&p, &second).is_some(), "inherited");
    rewrite(&p, "[listen]\n", "[listen]\nclient_keepalive = false\n");
    p.signal("HUP");
    wait_reloads(&p, "ok", 1).await;
    let (third, fourth) = (session(&p).await, session(&p).await);
    assert_eq!(keepalive(&p, &third), None);
    assert_eq!(keepalive(&p, &fourth), None);
    assert!(
        keepalive(&p, &first).is_some(),
        "an open session keeps its own"
    );
    rewrite(
        &p,
        "client_keepalive = false\n",
        "keepalive_idle = \"77s\"\n",
    );
    p.signal("HUP");
    wait_reloads(&p, "ok", 2).await;
    for s in [session(&p).await, session(&p).await] {
        let timer = keepalive(&p, &s).expect("keepalive on again");
        assert!(timer.contains("keepalive,1min1"), "idle 77 s: {timer}");
    }
}
