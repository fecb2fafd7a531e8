//! The history behind the dashboard's pictures, in a running proxy (issue 16): the supervised
//! sampler fills it once a second, a failover with a held client is drawn as a gap exactly as long
//! as the proxy counted, labelled with what the client got, on `/dashboard/pictures` and on the
//! page. Real time: the sampler's period is one second.

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::{connect, Cluster, Mode};
use tokio::time::Instant;

/// Checks every 100 ms (rise 2, fall 3).
const FAST: &str = "[check]\ninter = \"100ms\"\n";

async fn pictures(c: &Cluster) -> String {
    let r = reqwest::get(format!("http://{}/dashboard/pictures", c.stats))
        .await
        .expect("stats answered");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    r.text().await.unwrap()
}

fn attr<'a>(fragment: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(r#" {name}=""#);
    let from = fragment.find(&key)? + key.len();
    Some(&fragment[from..from + fragment[from..].find('"')?])
}

/// The hour's gaps: `(data-gap-ms, data-end-ms, data-held, data-released, label)`.
fn gaps(html: &str) -> Vec<(u64, String, String, String, String)> {
    let hour = &html[html.find(r#"<div class="win w1h">"#).expect("the hour")..];
    hour.split(r#"<g class="gap"#)
        .skip(1)
        .map(|g| {
            let text = &g[g.find("<text").unwrap()..];
            let label = &text[text.find('>').unwrap() + 1..text.find("</text>").unwrap()];
            (
                attr(g, "data-gap-ms").unwrap().parse().unwrap(),
                attr(g, "data-end-ms").unwrap().to_string(),
                attr(g, "data-held").unwrap().to_string(),
                attr(g, "data-released").unwrap().to_string(),
                label.to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_with_a_held_client_is_drawn_as_long_as_it_was_counted() {
    let c = Cluster::start(vec![Mode::Primary { timeline: 1 }, Mode::Replica], FAST).await;
    c.wait_for(Duration::from_secs(10), "node0 routed", |c| {
        c.primary() == Some(0)
    })
    .await;
    // The start-up gap, then node0's band as the primary.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let html = pictures(&c).await;
        if html.contains(r#"class="b-primary""#) {
            let g = gaps(&html);
            assert_eq!(g.len(), 1, "{g:?}");
            assert!(g[0].4.starts_with("start-up: no primary"), "{g:?}");
            break;
        }
        assert!(Instant::now() < deadline, "no primary band: {html}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = c.shared().current().no_primary_total;

    // node0 stops being the primary; a client arrives and is held; node1 is promoted.
    c.nodes[0].rest.set(Mode::Replica);
    c.wait_for(Duration::from_secs(10), "no primary", |c| {
        c.primary().is_none()
    })
    .await;
    let client = tokio::spawn(connect(c.addr));
    c.wait_for(Duration::from_secs(10), "the client held", |c| {
        c.shared().frontend.holding.load(Relaxed) == 1
    })
    .await;
    c.nodes[1].rest.set(Mode::Primary { timeline: 2 });
    let (node, _session) = client.await.unwrap().expect("released to the new primary");
    assert_eq!(node, "node1");
    let measured = c.shared().current().no_primary_total - before;
    assert!(c.primary() == Some(1) && measured > Duration::ZERO);

    // Drawn once closed and settled (its outcome is counted up to 3 s after its end).
    let deadline = Instant::now() + Duration::from_secs(15);
    let (drawn, held, released, label) = loop {
        let g = gaps(&pictures(&c).await);
        if let Some((ms, _, held, released, label)) = g
            .iter()
            .find(|g| !g.1.is_empty() && g.4.starts_with("failover") && g.3 == "1")
        {
            break (*ms, held.clone(), released.clone(), label.clone());
        }
        assert!(Instant::now() < deadline, "no settled failover gap: {g:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let measured_ms = measured.as_millis() as u64;
    // Both ends are the owner's own instants, converted on one anchor: equal to the millisecond
    // (each end truncated once).
    assert!(
        drawn.abs_diff(measured_ms) <= 1,
        "drawn {drawn} ms, measured {measured_ms} ms"
    );
    assert_eq!((held.as_str(), released.as_str()), ("1", "1"));
    assert!(
        label.ends_with("· 1 held: 1 released, 0 refused"),
        "{label}"
    );

    // The page carries the same pictures, and the sparklines show the session.
    let page = reqwest::get(format!("http://{}/", c.stats))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains(r#"<svg class="tl""#) && page.contains(r#"data-gap-ms="#));
    assert!(page.contains("<figcaption>sessions <strong>"), "{page}");
}
