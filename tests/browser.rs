//! The dashboard in a real headless Chromium, driven over WebDriver (chromedriver): rows, roles and
//! colours as a browser renders them, a primary flip seen on the live page without a reload, and
//! screenshots under `target/` (`dashboard.png`, `dashboard-phone.png`); the runtime-control buttons
//! as an operator uses them, and another site's form refused (CSRF).
//!
//! Needs the Debian packages `chromium` and `chromium-driver` (`scripts/install-test-deps`); without
//! them this test fails, it does not skip. Real time throughout: the page polls every second.

mod common;

use std::net::TcpListener as StdListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use common::{Cluster, Mode};
use serde_json::{json, Value};
use tokio::time::Instant;

/// Checks every 100 ms (rise 2, fall 3): a flip settles in well under a second.
const FAST: &str = "[check]\ninter = \"100ms\"\n";

fn require(binary: &str) -> PathBuf {
    which(binary).unwrap_or_else(|| {
        panic!(
            "`{binary}` is not installed: run `scripts/install-test-deps` (Debian packages chromium \
             and chromium-driver) before `cargo test`"
        )
    })
}

fn which(binary: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(binary))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// chromedriver and the Chromium it starts, in a process group of their own (its id is
/// chromedriver's pid): when the test ends, however it ends (a failed assertion never reaches
/// `quit`), the whole group is killed and no browser is left behind.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.0.wait();
    }
}

/// The few WebDriver commands the test needs.
struct Browser {
    http: reqwest::Client,
    base: String,
}

impl Browser {
    async fn start(driver: &str, profile: &Path) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": require("chromium"),
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--hide-scrollbars",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let r: Value = http
            .post(format!("{driver}/session"))
            .json(&caps)
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .unwrap();
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {r}"))
            .to_string();
        Self {
            http,
            base: format!("{driver}/session/{session}"),
        }
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r: Value = req.send().await.unwrap().json().await.unwrap();
        assert!(
            r["value"].get("error").is_none(),
            "WebDriver {path}: {}",
            r["value"]
        );
        r["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    async fn js(&self, script: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    async fn resize(&self, width: u32, height: u32) {
        self.cmd(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await;
    }

    async fn screenshot(&self, path: &Path) {
        let b64 = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap();
        assert_eq!(&png[1..4], b"PNG");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// Ends the session (chromedriver closes Chromium); the driver process goes with its guard.
    async fn quit(self) {
        let _ = self.http.delete(&self.base).send().await;
    }
}

/// What the page shows, read from the live DOM.
const READ_ROWS: &str = r#"
return [...document.querySelectorAll('#rows tr.server')].map(tr => ({
  name: tr.dataset.server,
  tone: tr.dataset.tone,
  role: tr.querySelector('[data-f=role]').textContent,
  status: tr.querySelector('[data-f=status]').textContent,
  chk: tr.querySelector('[data-f=chk]').textContent,
  bg: getComputedStyle(tr).backgroundColor,
}));
"#;

#[derive(Debug, PartialEq)]
enum Colour {
    Green,
    Neutral,
    Amber,
    Red,
}

/// Classifies `rgb(r, g, b)` the way an operator's eye would.
fn colour(css: &str) -> Colour {
    let n: Vec<i32> = css
        .trim_start_matches("rgba(")
        .trim_start_matches("rgb(")
        .trim_end_matches(')')
        .split(',')
        .take(3)
        .map(|v| v.trim().parse().unwrap())
        .collect();
    let (r, g, b) = (n[0], n[1], n[2]);
    if (r - g).abs() < 16 && (g - b).abs() < 16 {
        Colour::Neutral
    } else if g > r + 20 && g > b + 20 {
        Colour::Green
    } else if r > 200 && g > 150 && r - b > 60 {
        Colour::Amber
    } else if r > g + 40 && r > b + 40 {
        Colour::Red
    } else {
        panic!("unclassified colour {css}")
    }
}

fn row<'a>(rows: &'a Value, name: &str) -> &'a Value {
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no row {name} in {rows}"))
}

/// chromedriver (killed with its guard) and a WebDriver session with a profile under `dir`.
async fn start_browser(chromedriver: &Path, dir: &Path) -> (Driver, Browser) {
    let port = free_port();
    let driver_process = Driver(
        Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts"),
    );
    let driver = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while reqwest::get(format!("{driver}/status")).await.is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let browser = Browser::start(&driver, &dir.join("profile")).await;
    (driver_process, browser)
}

/// Polls a boolean script on the live page until it is true.
async fn poll_js(browser: &Browser, script: &str, limit: Duration, what: &str) {
    let deadline = Instant::now() + limit;
    loop {
        if browser.js(script).await == true {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium and chromedriver: scripts/test installs them and runs it"]
async fn the_dashboard_in_chromium_shows_roles_colours_and_a_live_primary_flip() {
    let chromedriver = require("chromedriver");
    require("chromium");
    let dir = tempfile::tempdir().unwrap();

    // node0 primary (green), node1 running replica (neutral), node2 unreachable (red), node3 answers
    // 200 but says "replica": a leader still promoting, UP and not routed (amber).
    let promoting = Mode::Raw(
        "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n\
         {\"state\": \"running\", \"role\": \"replica\", \"timeline\": 1}"
            .into(),
    );
    let c = Cluster::start(
        vec![
            Mode::Primary { timeline: 1 },
            Mode::Replica,
            Mode::Replica,
            promoting,
        ],
        FAST,
    )
    .await;
    c.nodes[2].rest.stop();
    c.wait_for(Duration::from_secs(10), "settled", |c| {
        let snap = c.shared().current();
        c.primary() == Some(0)
            && c.status(3) == "UP"
            && snap.nodes[2]
                .last_check
                .as_ref()
                .is_some_and(|r| r.status == patroni_proxy::health::CheckStatus::L4CON)
    })
    .await;

    let (_driver, browser) = start_browser(&chromedriver, dir.path()).await;
    browser.resize(1440, 1000).await;
    browser.goto(&format!("http://{}/", c.stats)).await;
    // app.js has run at least once: the live badge says so.
    poll_js(
        &browser,
        "return document.getElementById('live').dataset.state === 'live' \
         && document.getElementById('live').textContent.includes('updated');",
        Duration::from_secs(10),
        "the first live update",
    )
    .await;

    let rows = browser.js(READ_ROWS).await;
    assert_eq!(rows.as_array().unwrap().len(), 4, "{rows}");
    let expect = [
        ("node0", "primary", "primary", "UP", Colour::Green),
        ("node1", "replica", "replica", "DOWN", Colour::Neutral),
        ("node2", "down", "unknown", "DOWN", Colour::Red),
        ("node3", "transitional", "replica", "UP", Colour::Amber),
    ];
    for (name, tone, role, status, col) in expect {
        let r = row(&rows, name);
        assert_eq!(r["tone"], tone, "{name}: {r}");
        assert_eq!(r["role"], role, "{name}: {r}");
        assert_eq!(r["status"], status, "{name}: {r}");
        assert_eq!(colour(r["bg"].as_str().unwrap()), col, "{name}: {r}");
    }
    assert_eq!(row(&rows, "node2")["chk"], "L4CON");
    assert_eq!(
        browser
            .js("return document.getElementById('primary').textContent")
            .await,
        "node0"
    );
    let badge = browser
        .js("return getComputedStyle(document.querySelector('tr.routed td[data-f=name]'), '::after').content")
        .await;
    assert_eq!(badge, "\"PRIMARY\"");
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    browser.screenshot(&target.join("dashboard.png")).await;

    // Flip the primary: node0 is demoted, node1 promoted on a new timeline. The page must follow
    // within 2 s of the proxy's decision, without a reload (the marker survives).
    browser.js("window.__noReload = 42; return true;").await;
    c.nodes[0].rest.set(Mode::Replica);
    c.nodes[1].rest.set(Mode::Primary { timeline: 2 });
    c.wait_for(Duration::from_secs(10), "node1 routed", |c| {
        c.primary() == Some(1)
    })
    .await;
    let routed = Instant::now();
    poll_js(
        &browser,
        "return document.getElementById('primary').textContent === 'node1' \
         && document.querySelector('tr[data-server=node1]').dataset.tone === 'primary' \
         && document.querySelector('tr[data-server=node0]').dataset.tone !== 'primary';",
        Duration::from_secs(2),
        "the page to show node1 as the primary within 2 s",
    )
    .await;
    let seen = routed.elapsed();
    assert_eq!(
        browser.js("return window.__noReload").await,
        42,
        "no reload"
    );
    let rows = browser.js(READ_ROWS).await;
    assert_eq!(
        colour(row(&rows, "node1")["bg"].as_str().unwrap()),
        Colour::Green
    );
    assert_ne!(
        colour(row(&rows, "node0")["bg"].as_str().unwrap()),
        Colour::Green
    );
    let events = browser
        .js("return document.getElementById('events').textContent")
        .await;
    assert!(
        events
            .as_str()
            .unwrap()
            .contains("Routed primary of postgres is now node1 (timeline 2)"),
        "{events}"
    );
    eprintln!("page showed the new primary {seen:?} after the proxy switched");

    // Once node0 is DOWN it is a plain replica again: neutral.
    poll_js(
        &browser,
        "return document.querySelector('tr[data-server=node0]').dataset.tone === 'replica';",
        Duration::from_secs(5),
        "node0 to settle as a replica",
    )
    .await;
    browser
        .screenshot(&target.join("dashboard-after-flip.png"))
        .await;

    // A phone: cards instead of a wide table, nothing wider than the screen.
    browser.resize(400, 1800).await;
    let overflow = browser
        .js("return document.documentElement.scrollWidth <= window.innerWidth + 1;")
        .await;
    assert_eq!(overflow, true, "no horizontal scrolling on a phone");
    let display = browser
        .js("return getComputedStyle(document.querySelector('tr[data-server=node1]')).display")
        .await;
    assert_eq!(display, "grid", "rows become cards");
    browser
        .screenshot(&target.join("dashboard-phone.png"))
        .await;
    browser.quit().await;
}

/// Serves one page to every request, from another origin than the stats listener (another port).
async fn serve_page(html: String) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let html = html.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n",
                    html.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(html.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium and chromedriver: scripts/test installs them and runs it"]
async fn the_dashboards_buttons_work_in_chromium_and_another_sites_form_does_not() {
    // Issue 15 item 2: an operator logged in with the admin credentials drains a node with the
    // dashboard's button; a page on another origin posting the same form, which the browser sends
    // with the cached Basic credentials (the CSRF threat), changes nothing.
    let chromedriver = require("chromedriver");
    require("chromium");
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(
        vec![Mode::Primary { timeline: 1 }, Mode::Replica],
        "[check]\ninter = \"100ms\"\n[stats]\nauth = \"viewer:view\"\nadmin_user = \"ops\"\n\
         admin_password = \"s3cret\"\n",
    )
    .await;
    c.wait_for(Duration::from_secs(10), "settled", |c| {
        c.primary() == Some(0)
    })
    .await;
    let admin = |i: usize| c.shared().current().nodes[i].admin;
    let (_driver, browser) = start_browser(&chromedriver, dir.path()).await;
    // The admin credentials open the page (401 for the realm, answered from the URL), and the
    // browser keeps them for every path of the origin.
    browser
        .goto(&format!("http://ops:s3cret@{}/", c.stats))
        .await;
    poll_js(
        &browser,
        "return document.querySelectorAll('form.admin-server').length === 2;",
        Duration::from_secs(10),
        "the runtime-control forms",
    )
    .await;
    // Another site's page: the same form, without the token, submitted on load.
    let evil = serve_page(format!(
        "<form method=post action=\"http://{}/admin/servers/node1/maint\">\
         <input type=hidden name=csrf value=guess></form>\
         <script>document.forms[0].submit()</script>",
        c.stats
    ))
    .await;
    browser.goto(&format!("http://{evil}/")).await;
    poll_js(
        &browser,
        "return document.body.innerText.includes('refused');",
        Duration::from_secs(10),
        "the cross-site post refused",
    )
    .await;
    assert_eq!(admin(1), patroni_proxy::routing::AdminState::Ready);
    // The dashboard's own button: 303 back to the page, which shows DRAIN.
    browser.goto(&format!("http://{}/", c.stats)).await;
    browser
        .js("document.querySelector('form[data-server=node1] button[formaction$=\"/drain\"]').click(); return true;")
        .await;
    poll_js(
        &browser,
        "return location.pathname === '/' && document.querySelector('tr[data-server=node1] [data-f=status]') !== null \
         && document.querySelector('tr[data-server=node1]').dataset.tone === 'admin';",
        Duration::from_secs(10),
        "the page back, node1 drained",
    )
    .await;
    assert_eq!(admin(1), patroni_proxy::routing::AdminState::Drain);
    let who = c.shared().current().nodes[1].admin_by.clone().unwrap().0;
    assert_eq!(who, "ops@127.0.0.1 via dashboard");
    browser.quit().await;
}
