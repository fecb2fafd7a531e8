//! A headless Chromium driven over WebDriver (chromedriver), for the tests that look at the
//! dashboard as a browser renders it (`tests/browser.rs` on a fake cluster, the dashboard scenario
//! of `tests/e2e/` on the real one): the few WebDriver commands they need, and screenshots.
//!
//! Needs the Debian packages `chromium` and `chromium-driver` (`scripts/install-test-deps`); without
//! them the tests fail, they do not skip.

use std::net::TcpListener as StdListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use tokio::time::Instant;

pub fn require(binary: &str) -> PathBuf {
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
pub struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.0.wait();
    }
}

/// Starts chromedriver on a free loopback port and a browser session in it, with its profile
/// under `profile`. Keep the [`Driver`] alive as long as the [`Browser`].
pub async fn launch(profile: &Path) -> (Driver, Browser) {
    let chromedriver = require("chromedriver");
    require("chromium");
    let port = free_port();
    let driver = Driver(
        Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts"),
    );
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while reqwest::get(format!("{url}/status")).await.is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let browser = Browser::start(&url, profile).await;
    (driver, browser)
}

/// The few WebDriver commands the tests need.
pub struct Browser {
    http: reqwest::Client,
    base: String,
}

impl Browser {
    pub async fn start(driver: &str, profile: &Path) -> Self {
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

    pub async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
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

    pub async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    pub async fn js(&self, script: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    pub async fn resize(&self, width: u32, height: u32) {
        self.cmd(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await;
    }

    /// Makes the window `width` wide and as tall as the page, so a screenshot shows all of it.
    pub async fn fit(&self, width: u32) {
        self.resize(width, 900).await;
        let height = self
            .js("return document.documentElement.scrollHeight;")
            .await
            .as_u64()
            .unwrap_or(900);
        self.resize(width, u32::try_from(height).unwrap_or(900).clamp(600, 6000))
            .await;
    }

    pub async fn screenshot(&self, path: &Path) {
        let b64 = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap();
        assert_eq!(&png[1..4], b"PNG");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// Polls a boolean script on the live page until it is true.
    pub async fn poll_js(&self, script: &str, limit: Duration, what: &str) {
        let deadline = Instant::now() + limit;
        loop {
            if self.js(script).await == true {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Ends the session (chromedriver closes Chromium); the driver process goes with its guard.
    pub async fn quit(self) {
        let _ = self.http.delete(&self.base).send().await;
    }
}
