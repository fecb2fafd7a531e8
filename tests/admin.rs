//! Issue 15 item 2, runtime control, over real HTTP against in-process fakes: each action with and
//! without the admin credentials, methods that change nothing, unknown servers, what drain, maint
//! and ready do to sessions and new clients, the dashboard's CSRF-safe form, and the `ctl`
//! subcommand of the built binary.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{connect, outcome, Cluster, FakeDb, FakePatroni, Mode, Outcome};
use patroni_proxy::routing::AdminState;
use patroni_proxy::state::EventKind;
use reqwest::{header, Method, StatusCode};
use tokio::time::Instant;

const PRIMARY: Mode = Mode::Primary { timeline: 1 };
const ADMIN: &str = "[check]\ninter = \"100ms\"\n[listen]\nhold_timeout = \"1s\"\n\
                     [stats]\nadmin_user = \"ops\"\nadmin_password = \"s3cret\"\n";

/// Primary node0, replica node1, admin API on; settled.
async fn settled(extra: &str) -> Cluster {
    let c = Cluster::start(vec![PRIMARY, Mode::Replica], extra).await;
    c.wait_for(Duration::from_secs(10), "node0 routed", |c| {
        c.primary() == Some(0) && c.status(1) == "DOWN"
    })
    .await;
    c
}

fn admin_of(c: &Cluster, i: usize) -> AdminState {
    c.shared().current().nodes[i].admin
}

async fn send(
    c: &Cluster,
    method: Method,
    path: &str,
    auth: Option<(&str, &str)>,
) -> reqwest::Response {
    let mut r = reqwest::Client::new().request(method, format!("http://{}{path}", c.stats));
    if let Some((u, p)) = auth {
        r = r.basic_auth(u, Some(p));
    }
    r.send().await.expect("stats answered")
}

const OPS: Option<(&str, &str)> = Some(("ops", "s3cret"));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_action_needs_the_admin_credentials() {
    let c = settled(ADMIN).await;
    for action in ["drain", "maint", "ready"] {
        let path = format!("/admin/servers/node1/{action}");
        for auth in [None, Some(("ops", "wrong")), Some(("other", "s3cret"))] {
            let r = send(&c, Method::POST, &path, auth).await;
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{action} {auth:?}");
            assert_eq!(
                r.headers()[header::WWW_AUTHENTICATE],
                "Basic realm=\"patroni-proxy admin\""
            );
        }
        assert_eq!(admin_of(&c, 1), AdminState::Ready, "refused: no change");
    }
    for (action, state, status) in [
        ("drain", AdminState::Drain, "DOWN"),
        ("maint", AdminState::Maint, "MAINT"),
        ("ready", AdminState::Ready, "DOWN"),
    ] {
        let r = send(
            &c,
            Method::POST,
            &format!("/admin/servers/node1/{action}"),
            OPS,
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK, "{action}");
        let json: serde_json::Value = r.json().await.unwrap();
        assert_eq!(json["name"], "node1");
        assert_eq!(json["admin"], action);
        assert_eq!(json["status"], status, "{json}");
        assert_eq!(json["admin_by"], "ops@127.0.0.1 via api");
        assert_eq!(admin_of(&c, 1), state);
    }
    // Said with who did what, on the timeline.
    let admin_events: Vec<String> = c
        .shared()
        .events
        .recent()
        .into_iter()
        .filter(|e| e.kind == EventKind::Admin && e.server.as_deref() == Some("node1"))
        .map(|e| e.message)
        .collect();
    assert_eq!(admin_events.len(), 3, "{admin_events:?}");
    assert!(admin_events[0].contains("enters drain state (ops@127.0.0.1 via api)"));
    // The read-only pages show it; the metric has one series per state.
    send(&c, Method::POST, "/admin/servers/node0/drain", OPS).await;
    let json: serde_json::Value = send(&c, Method::GET, "/stats.json", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(json["servers"][0]["admin"], "drain");
    assert_eq!(json["servers"][0]["status"], "DRAIN");
    let metrics = send(&c, Method::GET, "/metrics", None)
        .await
        .text()
        .await
        .unwrap();
    for (state, v) in [("ready", 0), ("drain", 1), ("maint", 0)] {
        let line =
            format!("patroni_proxy_server_admin_state{{server=\"node0\",state=\"{state}\"}} {v}\n");
        assert!(metrics.contains(&line), "{line} not in metrics");
    }
    let page = send(&c, Method::GET, "/", None).await.text().await.unwrap();
    assert!(page.contains(">DRAIN</td>"), "the status cell says DRAIN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_methods_and_unknown_servers_change_nothing() {
    let c = settled(ADMIN).await;
    for method in [Method::GET, Method::HEAD, Method::PUT, Method::DELETE] {
        let r = send(&c, method.clone(), "/admin/servers/node0/maint", OPS).await;
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(r.headers()[header::ALLOW], "POST");
    }
    let r = send(&c, Method::GET, "/admin/servers/node0/maint", OPS).await;
    assert!(r.text().await.unwrap().contains("nothing was changed"));
    assert_eq!(admin_of(&c, 0), AdminState::Ready);
    assert_eq!(c.primary(), Some(0));
    let r = send(&c, Method::POST, "/admin/servers/nope/drain", OPS).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        r.text().await.unwrap(),
        "no server named \"nope\" in [[server]]\n"
    );
    let r = send(&c, Method::POST, "/admin/servers/node0/shutdown", OPS).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("unknown action \"shutdown\""));
    assert_eq!(admin_of(&c, 0), AdminState::Ready);
    // `show`: authenticated, GET only, every server with its admin state.
    assert_eq!(
        send(&c, Method::GET, "/admin/show", None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let r = send(&c, Method::POST, "/admin/show", OPS).await;
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers()[header::ALLOW], "GET, HEAD");
    let show: serde_json::Value = send(&c, Method::GET, "/admin/show", OPS)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(show["primary"], "node0");
    let admin: Vec<_> = show["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].clone(), s["admin"].clone()))
        .collect();
    assert_eq!(
        admin,
        [
            ("node0".into(), "ready".into()),
            ("node1".into(), "ready".into())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_control_is_off_without_admin_credentials() {
    // `[stats] auth` alone (read access) does not turn it on.
    let c = settled("[check]\ninter = \"100ms\"\n[stats]\nauth = \"ops:s3cret\"\n").await;
    let r = send(&c, Method::POST, "/admin/servers/node0/drain", OPS).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(r.text().await.unwrap().contains("runtime control is off"));
    assert_eq!(admin_of(&c, 0), AdminState::Ready);
    // The read-only pages stay read-only.
    let r = send(&c, Method::POST, "/stats.json", OPS).await;
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_the_primary_keeps_its_session_and_holds_new_clients() {
    let c = settled(ADMIN).await;
    let (node, mut open) = connect(c.addr).await.expect("a session");
    assert_eq!(node, "node0");
    let r = send(&c, Method::POST, "/admin/servers/node0/drain", OPS).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(c.primary(), None, "a drained primary is not routed");
    assert!(open.alive().await, "the open session continues");
    // A new client is held like in a failover, then answered 57P03 at hold_timeout (1 s).
    let started = Instant::now();
    match outcome(c.addr).await {
        Outcome::PgError(code, _) => assert_eq!(code, "57P03"),
        other => panic!("expected 57P03, got {other:?}"),
    }
    let held = started.elapsed();
    assert!(
        held >= Duration::from_millis(900) && held < Duration::from_secs(5),
        "held {held:?}"
    );
    // Its checks still say primary, and the drain holds across them.
    let checks = c.nodes[0]
        .rest
        .checks
        .load(std::sync::atomic::Ordering::SeqCst);
    c.wait_for(Duration::from_secs(5), "two more checks", |c| {
        c.nodes[0]
            .rest
            .checks
            .load(std::sync::atomic::Ordering::SeqCst)
            >= checks + 2
    })
    .await;
    assert_eq!(c.primary(), None);
    assert!(open.alive().await);
    // A client waiting when `ready` comes is released to it.
    let waiting = tokio::spawn(outcome(c.addr));
    c.wait_for(Duration::from_secs(5), "a client held", |c| {
        c.shared()
            .frontend
            .holding
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    })
    .await;
    send(&c, Method::POST, "/admin/servers/node0/ready", OPS).await;
    assert_eq!(
        c.primary(),
        Some(0),
        "routed at once: its last check said primary"
    );
    match waiting.await.unwrap() {
        Outcome::Node(n) => assert_eq!(n, "node0"),
        other => panic!("expected node0, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maint_cuts_the_sessions_and_ready_restores() {
    let c = settled(ADMIN).await;
    let (_, mut open) = connect(c.addr).await.expect("a session");
    let r = send(&c, Method::POST, "/admin/servers/node0/maint", OPS).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        open.closed_within(Duration::from_secs(2)).await,
        "maint shuts its sessions down (on-marked-down shutdown-sessions)"
    );
    assert_eq!(c.primary(), None);
    send(&c, Method::POST, "/admin/servers/node0/ready", OPS).await;
    let (node, mut again) = connect(c.addr).await.expect("routed again");
    assert_eq!(node, "node0");
    assert!(again.alive().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_is_not_chosen_when_it_becomes_primary() {
    // Drain the replica, then switch over to it: fail closed, nothing routed until `ready`.
    let c = settled(ADMIN).await;
    send(&c, Method::POST, "/admin/servers/node1/drain", OPS).await;
    c.nodes[0].rest.set(Mode::Replica);
    c.nodes[1].rest.set(Mode::Primary { timeline: 2 });
    c.wait_for(Duration::from_secs(10), "node1 checked as primary", |c| {
        c.status(1) == "UP" && c.status(0) == "DOWN"
    })
    .await;
    assert_eq!(c.primary(), None);
    send(&c, Method::POST, "/admin/servers/node1/ready", OPS).await;
    assert_eq!(c.primary(), Some(1));
}

/// The token embedded in the dashboard's forms.
fn token_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("the page has the admin forms");
    page[at + 19..at + 19 + 32].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboards_form_needs_its_token_and_origin() {
    let c = settled(ADMIN).await;
    let page = send(&c, Method::GET, "/", OPS).await.text().await.unwrap();
    let token = token_of(&page);
    assert!(page.contains("formaction=\"/admin/servers/node1/maint\""));
    let origin = format!("http://{}", c.stats);
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let post = |origin: &str, body: String| {
        no_redirect
            .post(format!("http://{}/admin/servers/node1/maint", c.stats))
            .basic_auth("ops", Some("s3cret"))
            .header(header::ORIGIN, origin)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    // What another site's page can make a browser send: Basic credentials resent, no token.
    let r = post(&origin, String::new()).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = post(&origin, format!("csrf={}", "0".repeat(32)))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = post("http://evil.example", format!("csrf={token}"))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(admin_of(&c, 1), AdminState::Ready, "nothing changed");
    // The dashboard's own form: 303 back to the page, as HAProxy's stats page answers.
    let r = post(&origin, format!("csrf={token}")).await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[header::LOCATION], "/");
    assert_eq!(admin_of(&c, 1), AdminState::Maint);
    let who = c.shared().current().nodes[1].admin_by.clone().unwrap().0;
    assert_eq!(who, "ops@127.0.0.1 via dashboard");
    // Without the admin credentials, even with the token: 401.
    let r = no_redirect
        .post(format!("http://{}/admin/servers/node1/ready", c.stats))
        .header(header::ORIGIN, &origin)
        .body(format!("csrf={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(admin_of(&c, 1), AdminState::Maint);
}

/// A free loopback port (bound, then released for the proxy to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn ctl(config: &std::path::Path, args: &[&str], password: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_patroni-proxy"));
    cmd.arg("--config").arg(config).arg("ctl").args(args);
    cmd.env_remove("PATRONI_PROXY_ADMIN_PASSWORD");
    if let Some(p) = password {
        cmd.env("PATRONI_PROXY_ADMIN_PASSWORD", p);
    }
    cmd.stdin(Stdio::null()).output().expect("run ctl")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_calls_the_api_of_a_running_binary() {
    let rest = FakePatroni::start(PRIMARY).await;
    let db = FakeDb::start("pg0").await;
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let stats: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(
        &path,
        format!(
            "[global]\nthreads = 1\n[listen]\nbind = \"{listen}\"\n[check]\ninter = \"200ms\"\n\
             port = {}\n[stats]\nbind = \"{stats}\"\nadmin_user = \"ops\"\n\
             admin_password = \"s3cret\"\n[[server]]\nname = \"pg0\"\naddress = \"{}\"\n",
            rest.addr.port(),
            db.addr
        ),
    )
    .unwrap();
    let mut child = Killed(
        Command::new(env!("CARGO_BIN_EXE_patroni-proxy"))
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start patroni-proxy"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = reqwest::get(format!("http://{stats}/ready")).await;
        if ready.is_ok_and(|r| r.status() == StatusCode::OK) {
            break;
        }
        // A proxy that ended at once (a bad config, or a binary built from another branch in a
        // shared target directory) says why.
        if let Ok(Some(status)) = child.0.try_wait() {
            let mut err = String::new();
            if let Some(mut pipe) = child.0.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut pipe, &mut err);
            }
            panic!("the proxy exited ({status}) before it was ready: {err}");
        }
        assert!(Instant::now() < deadline, "the proxy never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let path2 = path.clone();
    let run = move |args: &'static [&'static str], pw: Option<&'static str>| {
        let path = path2.clone();
        tokio::task::spawn_blocking(move || ctl(&path, args, pw))
    };
    let out = run(&["drain", "pg0"], None).await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (json["name"].as_str(), json["admin"].as_str()),
        (Some("pg0"), Some("drain"))
    );
    let ready = reqwest::get(format!("http://{stats}/ready")).await.unwrap();
    assert_eq!(
        ready.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "drained: no primary"
    );
    let out = run(&["show"], Some("s3cret")).await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let show: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(show["servers"][0]["admin"], "drain");
    let out = run(&["ready", "pg0"], None).await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ready = reqwest::get(format!("http://{stats}/ready")).await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    // The failures, each with a clear message and a non-zero exit.
    let out = run(&["maint", "nope"], None).await.unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no server named \"nope\""),
        "{}",
        text(&out.stderr)
    );
    let out = run(&["maint", "pg0"], Some("wrong")).await.unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("(401)"), "{}", text(&out.stderr));
    let show: serde_json::Value = reqwest::get(format!("http://{stats}/stats.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(show["servers"][0]["admin"], "ready", "refused: no change");
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let out = run(&["show"], None).await.unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("cannot reach the stats listener"),
        "{}",
        text(&out.stderr)
    );
    // A configuration without admin credentials: said before any request.
    let off = dir.path().join("off.toml");
    std::fs::write(
        &off,
        format!("[[server]]\nname = \"pg0\"\naddress = \"{}\"\n", db.addr),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || ctl(&off, &["show"], Some("x")))
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("runtime control is off"),
        "{}",
        text(&out.stderr)
    );
}

/// The proxy process, killed (by its own id) however the test ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
