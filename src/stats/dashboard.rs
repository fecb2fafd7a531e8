//! The `/` dashboard: the page's sources (`dashboard/` at the top of the repository, compiled into
//! the binary), the server-side render of the first view, and `/dashboard/data.json`, the view with
//! the display text of every cell ([`super::cells`]) that `app.js` copies into the page every
//! second.

use std::fmt::Write as _;

use super::cells::{clock, Cells, Display};
use super::export::View;
use crate::state::Event;

pub const INDEX_HTML: &str = include_str!("../../dashboard/index.html");
pub const STYLE_CSS: &str = include_str!("../../dashboard/style.css");
pub const APP_JS: &str = include_str!("../../dashboard/app.js");
pub const FAVICON_SVG: &str = include_str!("../../dashboard/favicon.svg");

/// The table's columns: field, label on narrow screens (it heads each value), column group on wide
/// screens (HAProxy's two-row header) and the short header under it.
const COLUMNS: &[(&str, &str, Option<&str>, &str)] = &[
    ("name", "Server", None, "Server"),
    ("addr", "Address", None, "Address"),
    ("role", "Role", None, "Role"),
    ("status", "Status", None, "Status"),
    ("signals", "Signals", None, "Signals"),
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

/// Minimal HTML escaping for text and attribute values.
pub(super) fn esc(s: &str) -> String {
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

fn page_field(d: &Display, f: &str) -> String {
    d.page.get(f).map_or(String::new(), |c| esc(&c.text))
}

fn event_item(out: &mut String, e: &Event) {
    let kind = serde_json::to_value(e.kind)
        .ok()
        .and_then(|k| k.as_str().map(str::to_string))
        .unwrap_or_default();
    let (time, full) = clock(e.at);
    let _ = writeln!(
        out,
        r##"<li class="ev ev-{kind}"><a href="#{anchor}" title="{full}: see it on the timeline"><time datetime="{full}">{time}</time></a> <span class="kind">{}</span> <span class="msg">{}</span></li>"##,
        esc(&kind.replace('_', " ")),
        esc(&e.message),
        anchor = super::history::pictures::anchor(e.at),
    );
}

/// The whole page for a view (the first render; `app.js` keeps it current), without pictures.
pub fn render(v: &View) -> String {
    render_page(v, "", "")
}

/// The whole page with the history's pictures ([`super::history::pictures::render`]) and the
/// runtime-control section (HTML, built by `admin::forms`; empty when off).
pub fn render_page(v: &View, pictures: &str, admin: &str) -> String {
    let d = Display::of(v);
    let mut rows = String::new();
    for (s, cells) in v.servers.iter().zip(&d.servers) {
        let attrs = format!(
            r#"class="server tone-{tone}{routed}" data-server="{name}" data-tone="{tone}" data-role="{role}""#,
            tone = s.tone.as_str(),
            routed = if s.routed_primary { " routed" } else { "" },
            name = esc(&s.name),
            role = s.role.as_str(),
        );
        row(&mut rows, &attrs, cells, &[]);
    }
    let mut frontend = String::new();
    row(
        &mut frontend,
        r#"class="frontend" id="frontend""#,
        &d.frontend,
        &[("chk", "Refused clients")],
    );
    let mut events = String::new();
    for e in v.events.iter().rev() {
        event_item(&mut events, e);
    }
    if events.is_empty() {
        events.push_str("<li class=\"ev none\">No events yet.</li>\n");
    }
    let process_title = d
        .page
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
    let (process, primary) = (page_field(&d, "process"), page_field(&d, "primary"));
    let primary_detail = page_field(&d, "primary_detail");
    let refusals = page_field(&d, "refusals");
    let listeners = listeners_html(v);
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
            "pictures" => pictures,
            "admin" => admin,
            "listeners" => &listeners,
            _ => return None,
        })
    })
}

/// `/dashboard/data.json`: the export model with the display text of every cell beside it, in the
/// shape `app.js` reads (`display` on the view, on `frontend` and on each server).
pub fn data(v: &View) -> serde_json::Value {
    let d = Display::of(v);
    let mut json = serde_json::to_value(v).unwrap_or_default();
    let cells = |c: Cells| serde_json::to_value(c).unwrap_or_default();
    if let Some(servers) = json.get_mut("servers").and_then(|s| s.as_array_mut()) {
        for (s, c) in servers.iter_mut().zip(d.servers) {
            s["display"] = cells(c);
        }
    }
    json["frontend"]["display"] = cells(d.frontend);
    json["display"] = cells(d.page);
    json["listeners_html"] = listeners_html(v).into();
    json
}

/// One section per listener other than the primary port (HAProxy's stats page has one per proxy):
/// its role, members, and per server its status for that listener, why it is out, its sessions
/// there. Escaped here; `app.js` puts it in place as it is on each refresh.
pub fn listeners_html(v: &View) -> String {
    let mut out = String::new();
    for l in &v.listeners {
        let lag = l
            .max_lag
            .map(|b| format!(", max_lag {b} bytes"))
            .unwrap_or_default();
        let fallback = if l.fallback {
            ", fallback to the primary"
        } else {
            ""
        };
        out.push_str(&format!(
            "<section class=\"listener\" data-listener=\"{name}\">\n<h2>{name} <span class=\"role\">{role}, {balance}{lag}{fallback}</span></h2>\n\
             <p class=\"members\">{members} · {scur} sessions now, {stot} in all</p>\n\
             <table class=\"listener-servers\"><thead><tr><th>Server</th><th>Status</th><th>Member</th><th>Sessions</th><th>Total</th></tr></thead><tbody>\n",
            name = esc(&l.name),
            role = esc(l.role),
            balance = l.balance,
            members = if l.members.is_empty() {
                "no member: new clients wait, then get 57P03".to_string()
            } else {
                format!("members: {}", esc(&l.members.join(", ")))
            },
            scur = l.frontend.scur,
            stot = l.frontend.stot,
        ));
        for s in &l.servers {
            let why = (l.out.iter())
                .find(|(n, _)| *n == s.name)
                .map_or_else(|| "yes".to_string(), |(_, why)| format!("no: {}", esc(why)));
            out.push_str(&format!(
                "<tr class=\"tone-{tone}\"><td>{name}</td><td>{status}</td><td>{why}</td><td>{scur}</td><td>{stot}</td></tr>\n",
                tone = if l.members.contains(&s.name) { "replica" } else { "down" },
                name = esc(&s.name),
                status = esc(&s.status),
                scur = s.scur,
                stot = s.stot,
            ));
        }
        out.push_str("</tbody></table>\n</section>\n");
    }
    out
}

/// Replaces each `{{name}}` of `template` with `value(name)`, in one pass: inserted text is never
/// scanned again, so a value that contains `{{events}}` (a reason phrase from a REST answer) stays
/// text. Values are HTML already (escaped by the caller). A name without a value, or a `{{` without
/// `}}`, is kept as it is (a unit test checks the page template has no such placeholder).
///
/// Hand-written rather than a template crate: the page has a dozen placeholders, all filled with
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
