//! The display text of every cell of the dashboard, formatted once on the server: the page
//! rendered without JavaScript and the page updated live by `app.js` (which only copies these
//! strings into the cells every second, from `/dashboard/data.json`) cannot disagree on how a number
//! or a state reads. The export model ([`super::export::View`]) carries none of it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::export::{ServerView, View};

/// The text of one cell and its tooltip.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cell {
    pub text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

/// Display text by field name (`data-f` on the page).
pub type Cells = BTreeMap<&'static str, Cell>;

pub(super) fn cell(text: impl ToString) -> Cell {
    Cell {
        text: text.to_string(),
        title: None,
    }
}

pub(super) fn titled(text: impl ToString, title: impl ToString) -> Cell {
    Cell {
        text: text.to_string(),
        title: Some(title.to_string()),
    }
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
pub(super) fn clock(at: SystemTime) -> (String, String) {
    let full = humantime::format_rfc3339_seconds(at).to_string();
    (full[11..19].to_string(), full)
}

pub fn server_cells(s: &ServerView) -> Cells {
    let mut c = Cells::new();
    c.insert(
        "name",
        titled(&s.name, format!("health check on {}", s.check_address)),
    );
    let resolved = match (
        &s.resolved,
        s.address.parse::<std::net::SocketAddr>().is_ok(),
    ) {
        (_, true) => String::new(),
        (Some(r), false) => format!("; resolves to {r}"),
        (None, false) => "; not resolved yet".to_string(),
    };
    c.insert(
        "addr",
        titled(&s.address, format!("check: {}{resolved}", s.check_address)),
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
            // Cluster-wide conditions Patroni reports; they change nothing in routing
            // (docs/health-checking.md, "Patroni's roles and states").
            if let Some(p) = s.last_check.as_ref().and_then(|c| c.patroni.as_ref()) {
                for (on, what) in [
                    (p.pause, "cluster paused (Patroni manages no roles)"),
                    (
                        p.failsafe_mode_is_active,
                        "failsafe mode active (DCS unreachable)",
                    ),
                    (p.cluster_unlocked, "no leader lock seen by Patroni"),
                ] {
                    if on {
                        let _ = write!(t, "; {what}");
                    }
                }
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
    let (word, detail) = super::signals::text(&s.signals);
    c.insert("signals", titled(word, detail));
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

/// The etcd watch in a few words: which endpoint, and the leader's lease as last read.
/// Who relays the sessions (`listen.relay`, issue 17): one word when every listener is relayed
/// the same way, else per listener; and, for the title, why the kernel relay was not used where
/// it was asked for (the kernel's answer can be a verifier log: too long for the line).
fn relay_text(relay: &[super::relay::RelayView]) -> (String, String) {
    let word = |mode: &str| match mode {
        "kernel" => "in the kernel",
        _ => "in user space",
    };
    let mut text = match relay.first() {
        None => return (String::new(), String::new()),
        Some(first) if relay.iter().all(|r| r.mode == first.mode) => {
            format!(" \u{b7} relay {}", word(first.mode))
        }
        Some(_) => {
            let each: Vec<String> = (relay.iter())
                .map(|r| format!("{} {}", r.listener, word(r.mode)))
                .collect();
            format!(" \u{b7} relay: {}", each.join(", "))
        }
    };
    let why = relay.iter().find_map(|r| r.why_not_kernel.as_deref());
    if let Some(why) = why {
        text.push_str(" (kernel relay unavailable)");
        return (text, format!("; kernel relay unavailable: {why}"));
    }
    (text, String::new())
}

fn etcd_text(e: &crate::dcs::StatusView) -> String {
    let lease = match (e.leader.as_deref(), e.lease, e.lease_remaining_s) {
        (Some(l), Some("live"), Some(left)) => format!(", leader {l}, lease {left} s left"),
        (Some(l), Some(state), _) => format!(", leader {l}, lease {state}"),
        _ => String::new(),
    };
    match (&e.endpoint, e.watching) {
        (Some(at), true) => format!(" \u{b7} etcd {at}{lease}"),
        _ => " \u{b7} etcd unreachable (routing from REST checks alone)".to_string(),
    }
}

fn page_cells(v: &View) -> Cells {
    let mut c = Cells::new();
    let mut config = v
        .config_path
        .as_deref()
        .unwrap_or("(in-process)")
        .to_string();
    let mut detail = String::new();
    if let (Some(sha), Some(at)) = (&v.config_sha256, v.config_loaded_at) {
        let at = Duration::try_from_secs_f64(at).unwrap_or_default();
        let (short_time, full_time) = clock(SystemTime::UNIX_EPOCH + at);
        let short_sha = sha.get(..12).unwrap_or(sha);
        config.push_str(&format!(" (sha256 {short_sha}, loaded {short_time})"));
        detail = format!("; config sha256 {sha}, loaded {full_time}");
    }
    let r = &v.reloads;
    detail.push_str(&format!(
        "; reloads: {} applied, {} refused",
        r.ok, r.failed
    ));
    if let Some(e) = &r.last_error {
        detail.push_str(&format!(" (last refused: {e})"));
    }
    let etcd = v.etcd.as_ref().map_or(String::new(), etcd_text);
    let (relay, why_not_kernel) = relay_text(&v.relay);
    detail.push_str(&why_not_kernel);
    c.insert(
        "process",
        titled(
            format!(
                "patroni-proxy {} \u{b7} pid {} \u{b7} up {} \u{b7} config {config} \u{b7} listening on {}{etcd}{relay}",
                v.version,
                v.pid,
                human_time(Duration::from_secs(v.uptime_s)),
                v.listen
            ),
            format!(
                "started {}{detail}",
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

/// Every cell of a view: the page's, the FRONTEND row's and each server row's.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Display {
    pub page: Cells,
    pub frontend: Cells,
    pub servers: Vec<Cells>,
}

impl Display {
    pub fn of(v: &View) -> Self {
        Self {
            page: page_cells(v),
            frontend: frontend_cells(v),
            servers: v.servers.iter().map(server_cells).collect(),
        }
    }
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
    fn the_process_line_says_who_relays_and_the_title_why_not_the_kernel() {
        // Issue 17 item 3: where the program cannot be loaded, `auto` relays in user space "and
        // says why once at start (log, dashboard, metric)".
        let view =
            |listener: &str, configured, mode, why: Option<&str>| super::super::relay::RelayView {
                listener: listener.into(),
                configured,
                mode,
                why_not_kernel: why.map(Into::into),
            };
        assert_eq!(
            relay_text(&[view("postgres", "kernel", "kernel", None)]),
            (" \u{b7} relay in the kernel".to_string(), String::new())
        );
        let why = "loading the program: Operation not permitted (os error 1)";
        let (text, title) = relay_text(&[
            view("postgres", "auto", "user", Some(why)),
            view("replicas", "user", "user", None),
        ]);
        assert_eq!(
            text,
            " \u{b7} relay in user space (kernel relay unavailable)"
        );
        assert_eq!(title, format!("; kernel relay unavailable: {why}"));
        let (text, _) = relay_text(&[
            view("postgres", "kernel", "kernel", None),
            view("replicas", "user", "user", None),
        ]);
        assert_eq!(
            text,
            " \u{b7} relay: postgres in the kernel, replicas in user space"
        );
    }
}
