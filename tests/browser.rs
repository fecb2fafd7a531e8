//! The dashboard in a real headless Chromium, driven over WebDriver (chromedriver): rows, roles and
//! colours as a browser renders them, a primary flip seen on the live page without a reload, and
//! screenshots under `target/` (`dashboard.png`, `dashboard-phone.png`); the runtime-control buttons
//! as an operator uses them, and another site's form refused (CSRF).
//!
//! Needs the Debian packages `chromium` and `chromium-driver` (`scripts/install-test-deps`); without
//! them this test fails, it does not skip. Real time throughout: the page polls every second.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Cluster, Mode};
use patroni_proxy_e2e::browser::launch;
use serde_json::Value;
use tokio::time::Instant;

/// Checks every 100 ms (rise 2, fall 3): a flip settles in well under a second.
const FAST: &str = "[check]\ninter = \"100ms\"\n";

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

/// Clicks the newest primary change's time in the event list.
const FOLLOW_EVENT_LINK: &str = r##"
const a = document.querySelector('#events .ev-primary_changed a[href^="#t"]');
if (!a) return null;
a.click();
return a.getAttribute('href').slice(1);
"##;

/// Where the link led: its mark exists once, on the hour's timeline, shown and highlighted.
const EVENT_MARK_SHOWN: &str = r##"
const id = location.hash.slice(1);
const m = document.getElementById(id);
const win = m && m.closest('.w1h');
return document.querySelectorAll('[id="' + id + '"]').length === 1 && win !== null
  && getComputedStyle(win).display !== 'none' && m.matches('.hit, :target');
"##;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium and chromedriver: scripts/test installs them and runs it"]
async fn the_dashboard_in_chromium_shows_roles_colours_and_a_live_primary_flip() {
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

    let (_driver, browser) = launch(&dir.path().join("profile")).await;
    browser.resize(1440, 1000).await;
    browser.goto(&format!("http://{}/", c.stats)).await;
    // app.js has run at least once: the live badge says so.
    browser
        .poll_js(
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
    browser
        .poll_js(
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
    browser
        .poll_js(
            "return document.querySelector('tr[data-server=node0]').dataset.tone === 'replica';",
            Duration::from_secs(5),
            "node0 to settle as a replica",
        )
        .await;
    browser
        .screenshot(&target.join("dashboard-after-flip.png"))
        .await;

    // The flip's event row links to its mark on the hour's timeline; following it shows the hour.
    let link = browser.js(FOLLOW_EVENT_LINK).await;
    assert!(link.as_str().is_some_and(|l| l.starts_with('t')), "{link}");
    browser
        .poll_js(
            EVENT_MARK_SHOWN,
            Duration::from_secs(3),
            "the event's mark shown",
        )
        .await;
    // The switch still goes back to the last 5 minutes, and stays there across redraws.
    browser
        .js("document.querySelector('label[for=w5m]').click(); return true;")
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        browser
            .js("return getComputedStyle(document.querySelector('#pictures .w5m')).display !== 'none' \
                 && getComputedStyle(document.querySelector('#pictures .w1h')).display === 'none';")
            .await,
        true,
        "the 5 minutes shown again"
    );

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
    let (_driver, browser) = launch(&dir.path().join("profile")).await;
    // The admin credentials open the page (401 for the realm, answered from the URL), and the
    // browser keeps them for every path of the origin.
    browser
        .goto(&format!("http://ops:s3cret@{}/", c.stats))
        .await;
    browser
        .poll_js(
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
    browser
        .poll_js(
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
    browser.poll_js("return location.pathname === '/' && document.querySelector('tr[data-server=node1] [data-f=status]') !== null \
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
