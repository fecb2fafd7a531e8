use super::*;
use crate::state::EventKind;
use crate::stats::history::{Holds, ListenerReading, NodeReading, Reading};

const T0: u64 = 1_800_000_000_000;

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// One reading per second from `from` for `secs` seconds; node 0 primary except during
/// `[gap_from, gap_to)` (node 0 leaving), node 1 a replica, node 2 down.
fn hour(h: &mut History, from: u64, secs: u64, gaps: &[(u64, u64)]) {
    let mut total = 0;
    let mut since = from;
    for s in 0..secs {
        let at = from + s * 1000;
        let in_gap = gaps.iter().find(|(a, b)| *a <= at && at < *b);
        let ended = gaps.iter().filter(|(_, b)| *b <= at).count();
        if let Some((a, _)) = in_gap {
            since = *a;
        } else if ended > 0 {
            let (a, b) = gaps[ended - 1];
            since = b;
            total = gaps[..ended].iter().map(|(a, b)| b - a).sum();
            let _ = a;
        }
        let band0 = if in_gap.is_some() {
            Band::Leaving
        } else {
            Band::Primary
        };
        let node = |band, scur: u64| NodeReading {
            scur,
            stot: s * 3,
            bin: s * 40_000 + (s % 7) * 1000,
            bout: s * 900_000,
            check: Some(Duration::from_micros(1200 + (s % 13) * 150)),
            band,
        };
        let held = ended as u64 * 3 + u64::from(in_gap.is_some()) * 3;
        h.record(&Reading {
            at_ms: at,
            nodes: vec![
                node(band0, 20 + s % 11),
                node(Band::Replica, 0),
                node(Band::Down, 0),
            ],
            listeners: vec![ListenerReading {
                scur: 20 + s % 11,
                stot: s * 3,
                bin: s * 40_000,
                bout: s * 900_000,
                holds: Holds {
                    holding: u64::from(in_gap.is_some()) * 3,
                    held,
                    released: ended as u64 * 3,
                    refused: 0,
                },
            }],
            routed: in_gap.is_none(),
            primary_since_ms: since,
            no_primary_total_ms: total,
        });
    }
}

fn attr<'a>(fragment: &'a str, name: &str) -> &'a str {
    let key = format!(r#" {name}=""#);
    let from = fragment
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in {fragment}"))
        + key.len();
    &fragment[from..from + fragment[from..].find('"').unwrap()]
}

#[test]
fn a_gap_is_drawn_as_wide_as_it_lasted_and_labelled() {
    let mut h = History::new(&names("node", 3), &names("postgres", 1));
    // 1.85 s without a primary, 100 s before the end of the 5-minute window.
    let (g0, g1) = (T0 + 200_400, T0 + 202_250);
    hour(&mut h, T0, 300, &[(g0, g1)]);
    let now = T0 + 300_000;
    let svg = timeline(&h, &[], now, &FIVE_MINUTES);
    let g = &svg[svg.find(r#"<g class="gap""#).expect("a gap")..];
    assert_eq!(attr(g, "data-gap-ms"), "1850");
    assert_eq!(attr(g, "data-start-ms"), g0.to_string());
    let rect = &g[g.find("<rect").unwrap()..];
    // At 5 min across 100 %: 1850 ms is 0.617 % of the width, starting 66.8 % in.
    assert_eq!(attr(rect, "width"), "0.617%");
    assert_eq!(attr(rect, "x"), "66.800%");
    assert!(
        g.contains("switchover: no primary 1.9 s · 3 held: 3 released, 0 refused"),
        "{g}"
    );
    // The hour's window draws the same gap twelve times narrower.
    let svg = timeline(&h, &[], now, &ONE_HOUR);
    let g = &svg[svg.find(r#"<g class="gap""#).unwrap()..];
    let rect = &g[g.find("<rect").unwrap()..];
    assert_eq!(attr(rect, "width"), "0.051%");
}

#[test]
fn bands_follow_the_samples_and_the_worst_state_of_a_column_shows() {
    let mut h = History::with_capacity(&names("n", 1), &names("l", 1), 600);
    let mut r = Reading {
        at_ms: 0,
        nodes: vec![NodeReading::default()],
        listeners: vec![ListenerReading::default()],
        routed: true,
        ..Reading::default()
    };
    // 150 s primary, then 1 s down, then replica: at the hour's 10 s columns the DOWN second still
    // shows, as a column of its own.
    for s in 1..=300u64 {
        r.at_ms = T0 + s * 1000;
        r.nodes[0].band = match s {
            0..=150 => Band::Primary,
            151 => Band::Down,
            _ => Band::Replica,
        };
        h.record(&r);
    }
    let now = T0 + 300_000;
    let five = timeline(&h, &[], now, &FIVE_MINUTES);
    assert!(
        five.contains(r#"<rect class="b-primary" x="0.00%" width="50.00%""#),
        "{five}"
    );
    assert!(
        five.contains(r#"<rect class="b-down" x="50.00%" width="0.33%""#),
        "{five}"
    );
    assert!(
        five.contains(r#"<rect class="b-replica" x="50.33%" width="49.67%""#),
        "{five}"
    );
    let hour_svg = timeline(&h, &[], now, &ONE_HOUR);
    assert!(hour_svg.contains(r#"class="b-down""#), "{hour_svg}");
    assert!(hour_svg.contains("n0"));
}

#[test]
fn events_are_marked_and_only_the_hour_carries_their_anchors() {
    let h = History::new(&names("node", 3), &names("l", 1));
    let now = T0 + 3_600_000;
    let at = wall(now - 60_000);
    let event = |kind| Event {
        at,
        kind,
        server: Some("node<1>".into()),
        message: "x".into(),
    };
    // Two events of the same millisecond (a DOWN and the primary change it caused): one anchor.
    let events = [event(EventKind::Down), event(EventKind::PrimaryChanged)];
    let id = anchor(at);
    assert_eq!(id, format!("t{}", now - 60_000));
    let hour_svg = timeline(&h, &events, now, &ONE_HOUR);
    assert!(hour_svg.contains(&format!(r#"<g id="{id}" class="mk mk-down">"#)));
    assert!(hour_svg.contains(r#"<g class="mk mk-primary_changed">"#));
    assert_eq!(hour_svg.matches(&format!(r#"id="{id}""#)).count(), 1);
    assert!(
        hour_svg.contains("primary changed node&lt;1&gt;"),
        "escaped"
    );
    let five = timeline(&h, &events, now, &FIVE_MINUTES);
    assert!(five.contains("mk-primary_changed") && !five.contains(&id));
    // The event list links to it.
    let shared = crate::state::Shared::detached(std::sync::Arc::new(
        crate::config::Config::from_toml(
            "[[server]]\nname = \"a\"\naddress = \"127.0.0.1:5432\"\n",
        )
        .unwrap(),
    ));
    shared.events.push_at(at, EventKind::Up, None, "up".into());
    let page = crate::stats::dashboard::render(&crate::stats::export::view(&shared));
    assert!(page.contains(&format!(r##"<a href="#{id}""##)), "{page}");
}

#[test]
fn sparklines_have_a_bounded_number_of_points() {
    let mut h = History::new(&names("node", 3), &names("l", 1));
    hour(&mut h, T0, 3600, &[]);
    let now = T0 + 3_600_000;
    for w in &WINDOWS {
        let html = sparklines(&h, now, w);
        for pl in html.split("<polyline").skip(1) {
            let pts = attr(pl, "points").split_whitespace().count() as u64;
            assert!(pts > 0 && pts <= w.points, "{} points in {}", pts, w.label);
        }
        // Listener: 4 pictures (5 lines), 3 nodes: 3 each (4 lines).
        assert_eq!(html.matches("<figure").count(), 4 + 3 * 3);
        assert_eq!(html.matches("<polyline").count(), 5 + 3 * 4);
        assert!(html.contains("check <strong>"));
    }
}

/// A full hour of three nodes with six switchovers and fifty events: the figures of
/// docs/dashboard.md (page size, render time).
#[test]
fn the_page_with_a_full_hour_stays_under_100_kib() {
    let config = crate::config::Config::from_toml(
        "[[server]]\nname = \"node1\"\naddress = \"127.0.0.1:5432\"\n\
         [[server]]\nname = \"node2\"\naddress = \"127.0.0.2:5432\"\n\
         [[server]]\nname = \"node3\"\naddress = \"127.0.0.3:5432\"\n",
    )
    .unwrap();
    let shared = crate::state::Shared::detached(std::sync::Arc::new(config));
    let mut h = History::new(&names("node", 3), &names("postgres", 1));
    let gaps: Vec<(u64, u64)> = (1..=6)
        .map(|k| {
            (
                T0 + k * 600_000 - 120_000,
                T0 + k * 600_000 - 120_000 + 2_345,
            )
        })
        .collect();
    hour(&mut h, T0, 3600, &gaps);
    let now = T0 + 3_600_000;
    for k in 0..60 {
        shared.events.push_at(
            wall(T0 + k * 60_000),
            EventKind::PrimaryChanged,
            Some("node2"),
            "Routed primary of postgres is now node2 (timeline 7), after 2.345 s without one; \
             3 held clients released (0 hold timeouts so far)."
                .into(),
        );
    }
    let view = crate::stats::export::view(&shared);
    let page = crate::stats::dashboard::render_page(&view, &render(&h, &view.events, now), "");
    let fragment = render(&h, &view.events, now);
    println!(
        "page with a full hour, 3 nodes, 50 events: {} bytes (pictures {} bytes)",
        page.len(),
        fragment.len()
    );
    assert!(page.len() < 100 * 1024, "{} bytes", page.len());
    assert_eq!(
        page.matches(r#"<g class="gap""#).count(),
        6 + 1,
        "6 in the hour, 1 in 5 min"
    );

    // The CPU cost of a page render, with the pictures and without them as before (printed, not
    // asserted: machines and builds differ).
    let n = 50;
    let started = std::time::Instant::now();
    for _ in 0..n {
        std::hint::black_box(render(&h, &view.events, now));
    }
    let pictures = started.elapsed() / n;
    let started = std::time::Instant::now();
    for _ in 0..n {
        std::hint::black_box(crate::stats::dashboard::render(&view));
    }
    let table = started.elapsed() / n;
    let before = crate::stats::dashboard::render(&view).len();
    println!(
        "page render: {table:?} without pictures ({before} bytes), + {pictures:?} for the \
         pictures (mean of {n})"
    );
}

/// The worst case for size: every node changing state every few seconds for a whole hour. The
/// number of rectangles is bounded by the columns, not by the samples.
#[test]
fn a_flapping_hour_is_bounded_by_the_columns() {
    let mut h = History::new(&names("node", 3), &names("l", 1));
    let bands = [Band::Primary, Band::Down, Band::Replica, Band::Changing];
    let mut r = Reading {
        nodes: vec![NodeReading::default(); 3],
        listeners: vec![ListenerReading::default()],
        routed: true,
        ..Reading::default()
    };
    for s in 0..3600u64 {
        r.at_ms = T0 + s * 1000;
        for (i, n) in r.nodes.iter_mut().enumerate() {
            n.band = bands[(s as usize + i) % bands.len()];
        }
        h.record(&r);
    }
    let now = T0 + 3_600_000;
    for w in &WINDOWS {
        let svg = timeline(&h, &[], now, w);
        let rects = svg.matches("<rect").count() as u64;
        assert!(rects <= 3 * w.columns, "{rects} rectangles at {}", w.label);
        println!(
            "flapping hour, {}: {} bytes of timeline",
            w.label,
            svg.len()
        );
    }
    let fragment = render(&h, &[], now);
    println!("flapping hour: pictures {} bytes", fragment.len());
    assert!(fragment.len() < 160 * 1024, "{} bytes", fragment.len());
}
