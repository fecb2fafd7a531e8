//! The `/` dashboard: the page's sources (`dashboard/` at the top of the repository, compiled into
//! the binary), the server-side render of the first view, and the display text of every cell.
//!
//! The server formats every value once, here, and ships the strings in the view (`display`), so the
//! page rendered without JavaScript and the page updated live by `app.js` (which only copies those
//! strings into the cells every second) cannot disagree on how a number or a state reads.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::export::{ServerView, View};
use crate::state::Event;

pub const INDEX_HTML: &str = include_str!("../../dashboard/index.html");
pub const STYLE_CSS: &str = include_str!("../../dashboard/style.css");
pub const APP_JS: &str = include_str!("../../dashboard/app.js");
pub const FAVICON_SVG: &str = include_str!("../../dashboard/favicon.svg");

/// The text of one cell and its tooltip.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cell {
    pub text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

/// Display text by field name (`data-f` on the page).
pub type Cells = BTreeMap<&'static str, Cell>;

fn cell(text: impl ToString) -> Cell {
    Cell {
        text: text.to_string(),
        title: None,
    }
}

fn titled(text: impl ToString, title: impl ToString) -> Cell {
    Cell {
        text: text.to_string(),
        title: Some(title.to_string()),
    }
}

/// The table's columns: field, label on narrow screens (it heads each value), column group on wide
/// screens (HAProxy's two-row header) and the short header under it.
const COLUMNS: &[(&str, &str, Option<&str>, &str)] = &[
    ("name", "Server", None, "Server"),
    ("addr", "Address", None, "Address"),
    ("role", "Role", None, "Role"),
    ("status", "Status", None, "Status"),
    ("chk", "Last check", Some("Last check"), "Result"),
    ("code", "HTTP code", Some("Last check"), "Code"),
    ("dur", "Check took", Some("Last check"), "Took"),
    ("age", "Checked", Some("Last check"), "Age"),
    ("qcur", "Queued", Some("Queue"), "Cur"),
    ("qmax", "Queued max", Some("Queue"), "Max"),
    ("scur", "Sessions", Some("Sessions"), "Cur"),
    ("smax", "Sessions max", Some("Sessions"), "Max"),
    ("slim", "Session limit", Some("Sessions"), "Limit"),
    ("stot", "Sessions total", Some("Sessions"), "Total"),
    ("bin", "Bytes in", Some("Bytes"), "In"),
    ("bout", "Bytes out", Some("Bytes"), "Out"),
    ("chkfail", "Failed checks", Some("Checks"), "Fail"),
    ("chkdown", "Downs", Some("Checks"), "Dwn"),
    ("lastchg", "Last change", None, "Last change"),
    ("downtime", "Downtime", None, "Downtime"),
];

/// The two header rows: groups (with `rowspan=2` for ungrouped columns), then the short headers.
fn header_rows() -> String {
    let mut top = String::new();
    let mut sub = String::new();
    let mut i = 0;
    while i < COLUMNS.len() {
        let (f, _, group, short) = COLUMNS[i];
        match group {
            None => {
                let _ = write!(top, r#"<th rowspan="2" data-f="{f}">{short}</th>"#);
                i += 1;
            }
            Some(g) => {
                let span = COLUMNS[i..].iter().take_while(|c| c.2 == Some(g)).count();
                let _ = write!(top, r#"<th colspan="{span}" class="group">{g}</th>"#);
                for (f, _, _, short) in &COLUMNS[i..i + span] {
                    let _ = write!(sub, r#"<th data-f="{f}">{short}</th>"#);
                }
                i += span;
            }
        }
    }
    format!("<tr class=\"groups\">{top}</tr>\n    <tr>{sub}</tr>")
}

/// HAProxy's `human_time()`: at most two units, `0s`, `59s`, `1m36s`, `2h5m`, `3d4h`.
pub fn human_time(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, mins, secs) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days}d{hours}h")
    } else if hours > 0 {
        format!("{hours}h{mins}m")
    } else if mins > 0 {
        format!("{mins}m{secs}s")
    } else {
        format!("{secs}s")
    }
}

/// Bytes in binary units with one decimal (`1.5 MiB`); small counts exact.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Seconds with a decimal under a minute (a failover gap is a few seconds), else [`human_time`].
fn short_secs(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.1}s")
    } else {
        human_time(Duration::from_secs_f64(s))
    }
}

/// UTC `HH:MM:SS`, as in the proxy's log lines, and the full RFC 3339 time for the tooltip.
fn clock(at: SystemTime) -> (String, String) {
    let full = humantime::format_rfc3339_seconds(at).to_string();
    (full[11..19].to_string(), full)
}

pub fn server_cells(s: &ServerView) -> Cells {
    let mut c = Cells::new();
    c.insert(
        "name",
        titled(&s.name, format!("health check on {}", s.check_address)),
    );
    c.insert(
        "addr",
        titled(&s.address, format!("check: {}", s.check_address)),
    );
    let patroni = match (&s.patroni_role, &s.patroni_state) {
        (None, None) => "no Patroni body in the last answer".to_string(),
        (role, state) => {
            let mut t = format!(
                "Patroni: role {}, state {}",
                role.as_deref().unwrap_or("?"),
                state.as_deref().unwrap_or("?")
            );
            if let Some(tl) = s.timeline {
                let _ = write!(t, ", timeline {tl}");
            }
            t
        }
    };
    c.insert("role", titled(s.role.as_str(), patroni));
    // HAProxy's arrows: UP but losing health, DOWN but gaining it.
    let health = s.check_health;
    let rise = s.check_rise;
    let arrow = if s.status == "INI" {
        ""
    } else if s.up && health < rise + s.check_fall - 1 {
        " \u{2193}"
    } else if !s.up && health > 0 {
        " \u{2191}"
    } else {
        ""
    };
    c.insert(
        "status",
        titled(
            format!("{}{arrow}", s.status),
            format!(
                "health {health}/{} (UP from {rise}; rise {rise}, fall {})",
                rise + s.check_fall - 1,
                s.check_fall
            ),
        ),
    );
    match &s.last_check {
        Some(r) => {
            let desc = match &r.info {
                Some(info) => format!("{}: {info}", s.check_desc),
                None => s.check_desc.to_string(),
            };
            c.insert("chk", titled(r.status, desc));
            c.insert(
                "code",
                cell(
                    r.code
                        .filter(|_| r.status.is_layer7())
                        .map_or(String::new(), |c| c.to_string()),
                ),
            );
            c.insert("dur", cell(format!("{} ms", r.duration.as_millis())));
            let age = s.last_check_age_s.unwrap_or(0.0);
            c.insert(
                "age",
                titled(
                    human_time(Duration::from_secs_f64(age)),
                    clock(r.finished_at).1,
                ),
            );
        }
        None => {
            c.insert("chk", titled("INI", "no check has finished yet"));
            for f in ["code", "dur", "age"] {
                c.insert(f, cell(""));
            }
        }
    }
    c.insert("qcur", cell(s.qcur));
    c.insert("qmax", cell(s.qmax));
    c.insert("scur", cell(s.scur));
    c.insert("smax", cell(s.smax));
    c.insert("slim", cell(s.slim));
    c.insert(
        "stot",
        titled(
            s.stot,
            format!(
                "{} closed on DOWN or role loss, {} connect failures, {} retries, last session {}",
                s.killed,
                s.econ,
                s.wretr,
                s.lastsess_s.map_or("never".to_string(), |v| format!(
                    "{} ago",
                    human_time(Duration::from_secs(v))
                ))
            ),
        ),
    );
    c.insert(
        "bin",
        titled(human_bytes(s.bin), format!("{} bytes", s.bin)),
    );
    c.insert(
        "bout",
        titled(human_bytes(s.bout), format!("{} bytes", s.bout)),
    );
    c.insert("chkfail", cell(s.chkfail));
    c.insert("chkdown", cell(s.chkdown));
    c.insert(
        "lastchg",
        cell(human_time(Duration::from_secs(s.lastchg_s))),
    );
    c.insert(
        "downtime",
        cell(human_time(Duration::from_secs(s.downtime_s))),
    );
    c
}

fn frontend_cells(v: &View) -> Cells {
    let f = &v.frontend;
    let r = &f.refusals;
    let refused = r.no_primary + r.queue_timeout + r.connect_failed + r.standby;
    let mut c = Cells::new();
    c.insert("name", cell("FRONTEND"));
    c.insert("addr", titled(&v.listen, "the primary port"));
    c.insert("status", cell("OPEN"));
    c.insert("chk", titled(format!("refused {refused}"), refusal_text(v)));
    c.insert("qcur", cell(f.qcur));
    c.insert("qmax", cell(f.qmax));
    c.insert("scur", cell(f.scur));
    c.insert("smax", cell(f.smax));
    c.insert("slim", cell(f.slim));
    c.insert(
        "stot",
        titled(f.stot, format!("{} accept errors", f.accept_errors)),
    );
    c.insert(
        "bin",
        titled(human_bytes(f.bin), format!("{} bytes", f.bin)),
    );
    c.insert(
        "bout",
        titled(human_bytes(f.bout), format!("{} bytes", f.bout)),
    );
    c
}

fn refusal_text(v: &View) -> String {
    let r = &v.frontend.refusals;
    let h = &v.frontend.holds;
    format!(
        "Refused clients: {} no primary within hold_timeout \u{b7} {} queue timeout \u{b7} {} connect failed \u{b7} {} standby. \
         Held during failover: {} ({} now, {} released); {} startups replayed",
        r.no_primary, r.queue_timeout, r.connect_failed, r.standby, h.held, h.holding, h.released, h.replays
    )
}

fn page_cells(v: &View) -> Cells {
    let mut c = Cells::new();
    let config = v.config_path.as_deref().unwrap_or("(in-process)");
    c.insert(
        "process",
        titled(
            format!(
                "patroni-proxy {} \u{b7} pid {} \u{b7} up {} \u{b7} config {config} \u{b7} listening on {}",
                v.version,
                v.pid,
                human_time(Duration::from_secs(v.uptime_s)),
                v.listen
            ),
            format!(
                "started {}",
                clock(SystemTime::UNIX_EPOCH + Duration::from_secs_f64(v.started_at)).1
            ),
        ),
    );
    let changes = match v.primary_changes {
        1 => "1 primary change".to_string(),
        n => format!("{n} primary changes"),
    };
    let without = format!(
        "{} without a primary in all",
        short_secs(v.no_primary_total_s)
    );
    match &v.primary {
        Some(p) => {
            c.insert("primary", cell(p));
            let tl = v
                .primary_timeline
                .map_or(String::new(), |t| format!("timeline {t} \u{b7} "));
            c.insert(
                "primary_detail",
                cell(format!(
                    "{tl}routed for {} \u{b7} {changes} \u{b7} {without}",
                    human_time(Duration::from_secs_f64(v.primary_since_s))
                )),
            );
        }
        None => {
            c.insert("primary", cell("none"));
            c.insert(
                "primary_detail",
                cell(format!(
                    "new connections are refused \u{b7} for {} \u{b7} {changes} \u{b7} {without}",
                    short_secs(v.primary_since_s)
                )),
            );
        }
    }
    c.insert("refusals", cell(refusal_text(v)));
    c
}

/// Fills the `display` fields of a view.
pub fn decorate(v: &mut View) {
    for s in &mut v.servers {
        s.display = server_cells(s);
    }
    v.frontend.display = frontend_cells(v);
    v.display = page_cells(v);
}

/// Minimal HTML escaping for text and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One table row; `relabel` renames a column's narrow-screen label for this row only.
fn row(out: &mut String, attrs: &str, cells: &Cells, relabel: &[(&str, &str)]) {
    let _ = write!(out, "<tr {attrs}>");
    for (f, label, _, _) in COLUMNS {
        let label = relabel
            .iter()
            .find(|(rf, _)| rf == f)
            .map_or(*label, |(_, l)| *l);
        let (text, title) = cells
            .get(f)
            .map_or(("", None), |c| (c.text.as_str(), c.title.as_deref()));
        let _ = write!(out, r#"<td data-f="{f}" data-label="{label}""#);
        if let Some(t) = title {
            let _ = write!(out, r#" title="{}""#, esc(t));
        }
        let _ = write!(out, ">{}</td>", esc(text));
    }
    out.push_str("</tr>\n");
}

fn page_field(v: &View, f: &str) -> String {
    v.display.get(f).map_or(String::new(), |c| esc(&c.text))
}

fn event_item(out: &mut String, e: &Event) {
    let kind = serde_json::to_value(e.kind)
        .ok()
        .and_then(|k| k.as_str().map(str::to_string))
        .unwrap_or_default();
    let (time, full) = clock(e.at);
    let _ = writeln!(
        out,
        r#"<li class="ev ev-{kind}"><time datetime="{full}" title="{full}">{time}</time> <span class="kind">{}</span> <span class="msg">{}</span></li>"#,
        esc(&kind.replace('_', " ")),
        esc(&e.message)
    );
}

/// The whole page for a view (the first render; `app.js` keeps it current).
pub fn render(v: &View) -> String {
    let mut rows = String::new();
    for s in &v.servers {
        let attrs = format!(
            r#"class="server tone-{tone}{routed}" data-server="{name}" data-tone="{tone}" data-role="{role}""#,
            tone = s.tone.as_str(),
            routed = if s.routed_primary { " routed" } else { "" },
            name = esc(&s.name),
            role = s.role.as_str(),
        );
        row(&mut rows, &attrs, &s.display, &[]);
    }
    let mut frontend = String::new();
    row(
        &mut frontend,
        r#"class="frontend" id="frontend""#,
        &v.frontend.display,
        &[("chk", "Refused clients")],
    );
    let mut events = String::new();
    for e in v.events.iter().rev() {
        event_item(&mut events, e);
    }
    if events.is_empty() {
        events.push_str("<li class=\"ev none\">No events yet.</li>\n");
    }
    let process_title = v
        .display
        .get("process")
        .and_then(|c| c.title.as_deref())
        .map(esc)
        .unwrap_or_default();
    let summary_tone = if v.primary.is_some() {
        "primary"
    } else {
        "down"
    };
    let header = header_rows();
    let proxy = esc(&v.proxy);
    let (process, primary) = (page_field(v, "process"), page_field(v, "primary"));
    let primary_detail = page_field(v, "primary_detail");
    let refusals = page_field(v, "refusals");
    fill(INDEX_HTML, |name| {
        Some(match name {
            "proxy" => proxy.as_str(),
            "process" => &process,
            "process_title" => &process_title,
            "summary_tone" => summary_tone,
            "primary" => &primary,
            "primary_detail" => &primary_detail,
            "refusals" => &refusals,
            "header" => &header,
            "rows" => &rows,
            "frontend" => &frontend,
            "events" => &events,
            _ => return None,
        })
    })
}

/// Replaces each `{{name}}` of `template` with `value(name)`, in one pass: inserted text is never
/// scanned again, so a value that contains `{{events}}` (a reason phrase from a REST answer) stays
/// text. Values are HTML already (escaped by the caller). A name without a value, or a `{{` without
/// `}}`, is kept as it is (a unit test checks the page template has no such placeholder).
///
/// Hand-written rather than a template crate: the page has eleven placeholders, all filled with
/// fragments built and escaped above, which an engine would have to take as raw HTML anyway.
fn fill<'a>(template: &str, value: impl Fn(&str) -> Option<&'a str>) -> String {
    let mut out = String::with_capacity(template.len() * 2);
    let mut rest = template;
    while let Some((before, tail)) = rest.split_once("{{") {
        out.push_str(before);
        match tail
            .split_once("}}")
            .and_then(|(name, after)| Some((value(name)?, after)))
        {
            Some((v, after)) => {
                out.push_str(v);
                rest = after;
            }
            None => {
                out.push_str("{{");
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_time_keeps_two_units_like_haproxy() {
        let t = |s| human_time(Duration::from_secs(s));
        assert_eq!(t(0), "0s");
        assert_eq!(t(59), "59s");
        assert_eq!(t(96), "1m36s");
        assert_eq!(t(2 * 3600 + 5 * 60 + 7), "2h5m");
        assert_eq!(t(3 * 86400 + 4 * 3600 + 59), "3d4h");
    }

    #[test]
    fn bytes_are_exact_when_small() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
    }

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            esc(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn filling_is_one_pass() {
        let values = |n: &str| match n {
            "a" => Some("{{b}}"),
            "b" => Some("B"),
            _ => None,
        };
        assert_eq!(fill("x{{a}}y{{b}}z", values), "x{{b}}yBz");
        assert_eq!(fill("{{a}}{{a}}", values), "{{b}}{{b}}");
        // Unknown names and unclosed braces stay as they are; nothing is lost.
        assert_eq!(fill("{{nope}} {{b}}", values), "{{nope}} B");
        assert_eq!(fill("{{{b}}}", values), "{{{b}}}");
        assert_eq!(fill("{{b", values), "{{b");
        assert_eq!(fill("}}{{", values), "}}{{");
        assert_eq!(fill("", values), "");
        assert_eq!(fill("é{{b}}ü", values), "éBü");
    }

    #[test]
    fn every_placeholder_of_the_template_is_filled() {
        let shared = crate::state::Shared::detached(std::sync::Arc::new(
            crate::config::Config::from_toml(
                "[[server]]\nname = \"a<b>\"\naddress = \"127.0.0.1:5432\"\n",
            )
            .unwrap(),
        ));
        let page = render(&super::super::export::view(&shared));
        assert!(!page.contains("{{"), "unfilled placeholder");
        assert!(page.contains(r#"data-server="a&lt;b&gt;""#));
        assert!(page.contains(">INI</td>"));
    }
}
