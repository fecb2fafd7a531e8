//! A planned switchover watched on the dashboard's pictures in a real Chromium: screenshots at a
//! desktop and a phone width before, during and after it, and what the role timeline drew (its
//! gaps' data attributes) beside what the proxy measured (`no_primary_total_s` of `/stats.json`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::browser::{launch, Browser};
use crate::harness::*;
use crate::scenarios::prepare;

pub const DESKTOP: u32 = 1280;
pub const PHONE: u32 = 390;
/// Traffic through the proxy before the switchover.
pub const WARM_UP: Duration = Duration::from_secs(40);

/// What the scenario saw.
#[derive(Debug, Serialize)]
pub struct Seen {
    pub old_primary: String,
    pub new_primary: String,
    /// Time without a primary during the switchover, as the proxy counted it.
    pub measured_gap_ms: f64,
    /// The gaps the hour's timeline drew since the switchover began (their `data-*` attributes).
    pub drawn_gaps: Vec<Value>,
    /// The "during" screenshots showed a gap still open (the page updates every second, so a gap
    /// shorter than that may already be closed when it first shows).
    pub during_open: bool,
    /// The newest `primary_changed` event row links to a mark that exists on the hour's timeline.
    pub event_link_resolves: bool,
    /// At the phone width nothing is wider than the screen.
    pub phone_fits: bool,
    pub screenshots: Vec<PathBuf>,
}

impl Seen {
    pub fn drawn_gap_ms(&self) -> u64 {
        self.drawn_gaps
            .iter()
            .filter_map(|g| g["gap_ms"].as_u64())
            .sum()
    }
}

/// The hour's gaps with their attributes, as the live page has them.
const READ_GAPS: &str = r#"
return [...document.querySelectorAll('#pictures .w1h .gap')].map(g => ({
  start_ms: Number(g.dataset.startMs),
  end_ms: g.dataset.endMs ? Number(g.dataset.endMs) : null,
  gap_ms: Number(g.dataset.gapMs),
  held: Number(g.dataset.held),
  released: Number(g.dataset.released),
  refused: Number(g.dataset.refused),
  label: g.querySelector('text').textContent,
}));
"#;

async fn shots(b: &Browser, dir: &Path, moment: &str, out: &mut Vec<PathBuf>) -> bool {
    b.fit(DESKTOP).await;
    let desktop = dir.join(format!("switchover-{moment}-desktop.png"));
    b.screenshot(&desktop).await;
    b.fit(PHONE).await;
    let fits = b
        .js("return document.documentElement.scrollWidth <= window.innerWidth + 1;")
        .await
        == true;
    let phone = dir.join(format!("switchover-{moment}-phone.png"));
    b.screenshot(&phone).await;
    out.extend([desktop, phone]);
    fits
}

async fn no_primary_ms(p: &Proxy) -> Result<f64> {
    let v = stats_json(p.stats).await?;
    v["no_primary_total_s"]
        .as_f64()
        .map(|s| s * 1000.0)
        .ok_or_else(|| anyhow::anyhow!("no no_primary_total_s in {v}"))
}

/// Runs one switchover through `p` with a probe making new connections every 100 ms (some are
/// held during the gap), screenshots into `dir`.
pub async fn switchover(p: &Proxy, dir: &Path) -> Result<Seen> {
    let old = prepare(&[p]).await?;
    let profile = tempfile::tempdir()?;
    let (_driver, b) = launch(&profile.path().join("profile")).await;
    b.resize(DESKTOP, 900).await;
    b.goto(&format!("http://{}/", p.stats)).await;
    b.poll_js(
        "return document.getElementById('live').textContent.includes('updated') \
         && document.querySelectorAll('#pictures .w5m svg.tl rect.b-primary').length > 0;",
        Duration::from_secs(20),
        "the live page with the primary's band",
    )
    .await;
    let run = format!("pictures-{}", (now() * 1000.0) as u64);
    let probe = Probe::start(p.listen, run, Duration::from_millis(100), 0);
    poll(
        Duration::from_secs(20),
        Duration::from_millis(200),
        "probe traffic",
        || async { (probe.ok_on(&old.name, 0.0) >= 20).then_some(()) },
    )
    .await?;
    // A measurement window, not a wait for readiness: traffic on the pictures (the 5 minutes'
    // sparklines) before the switchover, so that the screenshots show a before and an after.
    tokio::time::sleep(WARM_UP).await;
    let mut screenshots = Vec::new();
    let mut phone_fits = shots(&b, dir, "before", &mut screenshots).await;
    b.resize(DESKTOP, 900).await;

    let gaps_before = b.js(READ_GAPS).await.as_array().map_or(0, Vec::len);
    let before_ms = no_primary_ms(p).await?;
    let began_ms = now() * 1000.0;
    let switch = tokio::spawn(async { cluster(&["switchover"]).await });
    let count =
        format!("return document.querySelectorAll('#pictures .w1h .gap').length > {gaps_before};");
    b.poll_js(&count, Duration::from_secs(60), "the gap on the timeline")
        .await;
    let during_open = b
        .js("return document.querySelector('#pictures .w1h .gap.open') !== null;")
        .await
        == true;
    phone_fits &= shots(&b, dir, "during", &mut screenshots).await;
    b.resize(DESKTOP, 900).await;

    let out = switch.await??;
    let new = out
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .next_back()
        .and_then(Node::by_ip)
        .ok_or_else(|| anyhow::anyhow!("no leader in {out:?}"))?;
    p.wait_routes(&new, Duration::from_secs(30)).await?;
    // Closed, and its outcome settled (released clients are counted for 3 s after its end).
    b.poll_js(
        &format!(
            "const g = [...document.querySelectorAll('#pictures .w1h .gap')].slice({gaps_before}); \
             return g.length > 0 && g.every(e => e.dataset.endMs \
               && Date.now() > Number(e.dataset.endMs) + 4000);"
        ),
        Duration::from_secs(30),
        "the gap closed and settled",
    )
    .await;
    let measured_gap_ms = no_primary_ms(p).await? - before_ms;
    let drawn_gaps: Vec<Value> = b
        .js(READ_GAPS)
        .await
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|g| {
            g["start_ms"]
                .as_f64()
                .is_some_and(|s| s >= began_ms - 1000.0)
        })
        .collect();
    phone_fits &= shots(&b, dir, "after", &mut screenshots).await;
    b.resize(DESKTOP, 900).await;
    let link = b
        .js(
            "const a = document.querySelector('#events .ev-primary_changed a[href^=\"#t\"]'); \
             if (!a) return null; a.click(); return a.getAttribute('href');",
        )
        .await;
    let mut event_link_resolves = false;
    if link.is_string() {
        // The mark exists once, on the hour's timeline, which is now shown.
        let shown = "const id = location.hash.slice(1); \
             const m = document.getElementById(id); const w = m && m.closest('.w1h'); \
             return document.querySelectorAll('[id=\"' + id + '\"]').length === 1 \
               && w !== null && getComputedStyle(w).display !== 'none';";
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while !event_link_resolves && tokio::time::Instant::now() < deadline {
            event_link_resolves = b.js(shown).await == true;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    probe.finish().await;
    b.quit().await;
    Ok(Seen {
        old_primary: old.name,
        new_primary: new.name,
        measured_gap_ms,
        drawn_gaps,
        during_open,
        event_link_resolves,
        phone_fits,
        screenshots,
    })
}
