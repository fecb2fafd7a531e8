//! The dashboard's pictures, drawn on the server as inline SVG from the [`History`]: the role
//! timeline (one band per node, the gaps without a primary drawn and labelled, the events marked)
//! and the sparklines (sessions, new sessions, throughput, held clients per listener; sessions,
//! throughput, check latency per node), for the last 5 minutes and the last hour.
//!
//! Pure functions of the history, the events and "now": the page reads without JavaScript, and
//! `app.js` swaps in a fresh render every second. No external assets; the size is bounded by the
//! number of columns and points, never by the number of samples: a timeline band has at most
//! [`Window::columns`] rectangles, a sparkline [`Window::points`] points. Colours are classes,
//! styled in `dashboard/style.css` with the table's tones.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use super::{Band, Gap, History};
use crate::state::Event;
use crate::stats::cells::{clock, human_bytes};
use crate::stats::dashboard::esc;

/// One of the two spans the dashboard switches between.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// The CSS class of its pictures (`w5m`, `w1h`).
    pub class: &'static str,
    pub label: &'static str,
    pub span_ms: u64,
    /// Timeline columns: samples sharing one show the worst band among them.
    pub columns: u64,
    /// Sparkline points: samples sharing one show their maximum.
    pub points: u64,
    /// Ticks on the time axis, every this many ms.
    pub tick_ms: u64,
    /// The event marks of this window carry the ids the event list links to (only one window
    /// may: ids are unique in a page).
    pub anchors: bool,
}

pub const FIVE_MINUTES: Window = Window {
    class: "w5m",
    label: "5 min",
    span_ms: 300_000,
    columns: 300,
    points: 100,
    tick_ms: 60_000,
    anchors: false,
};

pub const ONE_HOUR: Window = Window {
    class: "w1h",
    label: "1 h",
    span_ms: 3_600_000,
    columns: 360,
    points: 120,
    tick_ms: 600_000,
    anchors: true,
};

pub const WINDOWS: [Window; 2] = [FIVE_MINUTES, ONE_HOUR];

/// Layout of the timeline, in CSS pixels (its width is the page's: x is in percent).
const TOP: u32 = 6;
const LABEL: u32 = 13;
const BAND: u32 = 14;
const ROW: u32 = LABEL + BAND + 5;
const GAP_LINES: u32 = 2;
const LINE: u32 = 14;
const AXIS: u32 = 14;
/// Sparkline height in its own units (its width is the number of points).
const SPARK_H: f64 = 24.0;

/// The anchor of an event's moment on the timeline: its time in epoch ms, rounded as `app.js`
/// rounds it (`Math.round(at * 1000)`), so the list rendered by either links to the same mark.
pub fn anchor(at: SystemTime) -> String {
    let ms = (crate::time::epoch_secs(at) * 1000.0).round();
    format!("t{ms}")
}

/// Everything under the switch: both windows' timeline and sparklines.
pub fn render(h: &History, events: &[Event], now_ms: u64) -> String {
    let mut out = String::with_capacity(32 * 1024);
    for w in &WINDOWS {
        let _ = write!(out, r#"<div class="win {}">"#, w.class);
        out.push_str(&timeline(h, events, now_ms, w));
        out.push_str(&sparklines(h, now_ms, w));
        out.push_str("</div>\n");
    }
    out
}

/// Percent of the window's width at `t` (clamped to the window).
fn pct(w: &Window, now_ms: u64, t: u64) -> f64 {
    let start = now_ms.saturating_sub(w.span_ms);
    let t = t.clamp(start, now_ms);
    (t - start) as f64 * 100.0 / w.span_ms.max(1) as f64
}

fn wall(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

/// The worst band of each column of the window (`Band::None` where no sample fell).
fn columns(h: &History, node: usize, now_ms: u64, w: &Window) -> Vec<Band> {
    let mut cols = vec![Band::None; w.columns as usize];
    let start = now_ms.saturating_sub(w.span_ms);
    let Some((_, ring)) = h.nodes.get(node) else {
        return cols;
    };
    let skip = h.samples_until(start);
    for (t, s) in h.times.iter_from(skip).zip(ring.iter_from(skip)) {
        if t <= start || t > now_ms {
            continue;
        }
        // The sample covers the second before `t`.
        let c = ((t - start - 1) * w.columns / w.span_ms.max(1)).min(w.columns - 1) as usize;
        cols[c] = cols[c].max(s.band);
    }
    cols
}

/// The role timeline of one window.
pub fn timeline(h: &History, events: &[Event], now_ms: u64, w: &Window) -> String {
    let n = h.nodes.len() as u32;
    let bands_end = TOP + n * ROW;
    let height = bands_end + GAP_LINES * LINE + AXIS;
    let mut s = String::with_capacity(8 * 1024);
    let _ = write!(
        s,
        r#"<svg class="tl" width="100%" height="{height}" role="img" aria-label="Role of each node over the last {}, the periods without a primary, and the events">"#,
        w.label
    );
    // Axis: a tick per minute (5 min) or per 10 minutes (1 h), labelled by how long ago.
    let ticks = w.span_ms / w.tick_ms.max(1);
    for k in 0..=ticks {
        let x = k as f64 * 100.0 / ticks.max(1) as f64;
        let ago = (ticks - k) * w.tick_ms / 60_000;
        let (anchor, text) = match k {
            0 => ("start", format!("−{ago} min")),
            _ if k == ticks => ("end", "now".to_string()),
            _ => ("middle", format!("−{ago}")),
        };
        let _ = write!(
            s,
            r#"<line class="tick" x1="{x:.2}%" x2="{x:.2}%" y1="{TOP}" y2="{bands_end}"/><text class="axis" x="{x:.2}%" y="{}" text-anchor="{anchor}">{text}</text>"#,
            height - 3
        );
    }
    for (i, (name, _)) in h.nodes.iter().enumerate() {
        let y = TOP + i as u32 * ROW;
        let _ = write!(
            s,
            r#"<text class="node" x="2" y="{}">{}</text><g class="band" transform="translate(0,{})">"#,
            y + LABEL - 3,
            esc(name),
            y + LABEL
        );
        let cols = columns(h, i, now_ms, w);
        let mut c = 0;
        while c < cols.len() {
            let band = cols[c];
            let run = cols[c..].iter().take_while(|b| **b == band).count();
            if band != Band::None {
                let x = c as f64 * 100.0 / w.columns as f64;
                let width = run as f64 * 100.0 / w.columns as f64;
                let _ = write!(
                    s,
                    r#"<rect class="b-{}" x="{x:.2}%" width="{width:.2}%" height="{BAND}"/>"#,
                    band.as_str()
                );
            }
            c += run;
        }
        s.push_str("</g>");
    }
    let start = now_ms.saturating_sub(w.span_ms);
    let mut line = 0;
    for g in h.gaps() {
        let end = g.end_ms.unwrap_or(now_ms);
        if end < start || g.start_ms > now_ms {
            continue;
        }
        gap(&mut s, g, now_ms, w, bands_end, line);
        line = (line + 1) % GAP_LINES;
    }
    let mut last_id = None;
    for e in events {
        let ms = (crate::time::epoch_secs(e.at) * 1000.0).round() as u64;
        if ms <= start || ms > now_ms {
            continue;
        }
        let x = pct(w, now_ms, ms);
        let kind = serde_json::to_value(e.kind)
            .ok()
            .and_then(|k| k.as_str().map(str::to_string))
            .unwrap_or_default();
        // Events of the same millisecond share one anchor (ids are unique in a page); the events
        // come oldest first, so equal times are neighbours.
        let id = if w.anchors && last_id != Some(ms) {
            last_id = Some(ms);
            format!(r#" id="{}""#, anchor(e.at))
        } else {
            String::new()
        };
        let _ = write!(
            s,
            r#"<g{id} class="mk mk-{kind}"><line x1="{x:.3}%" x2="{x:.3}%" y1="0" y2="{bands_end}"/><title>{} {} {}</title></g>"#,
            clock(e.at).0,
            kind.replace('_', " "),
            esc(e.server.as_deref().unwrap_or(""))
        );
    }
    s.push_str("</svg>");
    s
}

/// What a gap's label says: its kind, how long, and what its held clients got.
pub fn gap_label(g: &Gap, now_ms: u64) -> String {
    let kind = g.kind.as_str();
    let secs = g.duration_ms(now_ms) as f64 / 1000.0;
    let ongoing = if g.end_ms.is_none() { " so far" } else { "" };
    format!(
        "{kind}: no primary {secs:.1} s{ongoing} · {} held: {} released, {} refused",
        g.held, g.released, g.refused
    )
}

fn gap(s: &mut String, g: &Gap, now_ms: u64, w: &Window, bands_end: u32, line: u32) {
    let end = g.end_ms.unwrap_or(now_ms);
    let x0 = pct(w, now_ms, g.start_ms);
    let x1 = pct(w, now_ms, end);
    let label = gap_label(g, now_ms);
    let (text_x, anchor) = if x0 < 50.0 {
        (x0, "start")
    } else {
        (x1, "end")
    };
    let (from, _) = clock(wall(g.start_ms));
    let _ = write!(
        s,
        r#"<g class="gap{}" data-gap-ms="{}" data-start-ms="{}" data-end-ms="{}" data-held="{}" data-released="{}" data-refused="{}"><title>from {from} UTC: {label}</title><rect x="{x0:.3}%" width="{:.3}%" y="{TOP}" height="{}"/><text x="{text_x:.3}%" y="{}" text-anchor="{anchor}">{label}</text></g>"#,
        if g.end_ms.is_none() { " open" } else { "" },
        g.duration_ms(now_ms),
        g.start_ms,
        g.end_ms.map_or(String::new(), |e| e.to_string()),
        g.held,
        g.released,
        g.refused,
        x1 - x0,
        bands_end - TOP,
        bands_end + (line + 1) * LINE - 3,
    );
}

/// One value per point of the window: the maximum of the samples that fall in it, `None` where
/// none did.
fn points(
    times: &[u64],
    values: impl Iterator<Item = u64>,
    now_ms: u64,
    w: &Window,
) -> Vec<Option<u64>> {
    let mut out = vec![None; w.points as usize];
    let start = now_ms.saturating_sub(w.span_ms);
    // `times` and `values` start at the same sample (the window's first).
    for (t, v) in times.iter().zip(values) {
        if *t <= start || *t > now_ms {
            continue;
        }
        let p = ((t - start - 1) * w.points / w.span_ms.max(1)).min(w.points - 1) as usize;
        out[p] = Some(out[p].map_or(v, |o: u64| o.max(v)));
    }
    out
}

/// The throughput sparkline: bytes per second in and out, now and over the window.
fn in_out(out: &mut String, now: (u32, u32), ins: Vec<Option<u64>>, outs: Vec<Option<u64>>) {
    let label = format!("{} / {}", per_s(now.0.into()), per_s(now.1.into()));
    spark(out, "in / out", &label, &[("in", ins), ("out", outs)]);
}

/// A sparkline of one or two series (`in`/`out` throughput share a scale), with its caption.
fn spark(out: &mut String, caption: &str, now_text: &str, series: &[(&str, Vec<Option<u64>>)]) {
    let max = series
        .iter()
        .flat_map(|(_, p)| p.iter().flatten())
        .copied()
        .max()
        .unwrap_or(0)
        .max(1);
    let width = series.first().map_or(1, |(_, p)| p.len());
    let _ = write!(
        out,
        r#"<figure class="spark"><figcaption>{} <strong>{}</strong></figcaption><svg viewBox="0 0 {width} {SPARK_H}" preserveAspectRatio="none" role="img" aria-label="{0}">"#,
        esc(caption),
        esc(now_text)
    );
    for (class, pts) in series {
        let _ = write!(out, r#"<polyline class="{class}" points=""#);
        for (x, v) in pts.iter().enumerate() {
            if let Some(v) = v {
                let y = SPARK_H - 1.0 - (*v as f64 / max as f64) * (SPARK_H - 2.0);
                let _ = write!(out, "{x},{y:.1} ");
            }
        }
        out.push_str(r#""/>"#);
    }
    out.push_str("</svg></figure>");
}

fn per_s(bytes: u64) -> String {
    format!("{}/s", human_bytes(bytes))
}

/// The sparklines of one window: per listener, then per node.
pub fn sparklines(h: &History, now_ms: u64, w: &Window) -> String {
    let skip = h.samples_until(now_ms.saturating_sub(w.span_ms));
    let times: Vec<u64> = h.times.iter_from(skip).collect();
    let mut out = String::with_capacity(16 * 1024);
    out.push_str(r#"<div class="sparks">"#);
    for (name, ring) in &h.listeners {
        let last = ring.last().unwrap_or_default();
        let _ = write!(
            out,
            r#"<div class="spark-group"><h3>{} <small>listener</small></h3>"#,
            esc(name)
        );
        let p = |f: fn(&super::ListenerSample) -> u32| {
            points(
                &times,
                ring.iter_from(skip).map(|s| u64::from(f(&s))),
                now_ms,
                w,
            )
        };
        spark(
            &mut out,
            "sessions",
            &last.sessions.to_string(),
            &[("v", p(|s| s.sessions))],
        );
        spark(
            &mut out,
            "new/s",
            &last.new_sessions.to_string(),
            &[("v", p(|s| s.new_sessions))],
        );
        in_out(
            &mut out,
            (last.bytes_in, last.bytes_out),
            p(|s| s.bytes_in),
            p(|s| s.bytes_out),
        );
        spark(
            &mut out,
            "held",
            &last.holding.to_string(),
            &[("v held", p(|s| s.holding))],
        );
        out.push_str("</div>");
    }
    for (name, ring) in &h.nodes {
        let last = ring.last().unwrap_or_default();
        let _ = write!(out, r#"<div class="spark-group"><h3>{}</h3>"#, esc(name));
        let p = |f: fn(&super::NodeSample) -> u32| {
            points(
                &times,
                ring.iter_from(skip).map(|s| u64::from(f(&s))),
                now_ms,
                w,
            )
        };
        spark(
            &mut out,
            "sessions",
            &last.sessions.to_string(),
            &[("v", p(|s| s.sessions))],
        );
        in_out(
            &mut out,
            (last.bytes_in, last.bytes_out),
            p(|s| s.bytes_in),
            p(|s| s.bytes_out),
        );
        spark(
            &mut out,
            "check",
            &format!("{:.1} ms", f64::from(last.check_us) / 1000.0),
            &[("v", p(|s| s.check_us))],
        );
        out.push_str("</div>");
    }
    out.push_str("</div>");
    out
}

#[cfg(test)]
#[path = "pictures_tests.rs"]
mod tests;
