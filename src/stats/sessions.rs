//! The sessions view: every open client session with who it is (client address and port), where it
//! goes (server, and the proxy's local port towards PostgreSQL, `pg_stat_activity.client_port`),
//! its age, bytes and phase. [`collect`] reads the two registries (sessions in their setup,
//! [`crate::backend::setup`]; relaying sessions, each server's [`crate::backend::relaying`]);
//! `/sessions.json` serves the [`Sessions`] value and `/sessions` its server-side HTML ([`html`]).
//!
//! Bounded: at most [`MAX_SESSIONS`] entries per answer (`?limit=` may ask for fewer), with the
//! total and a `truncated` flag, so a proxy with 10 000 clients answers with ~180 KB of JSON; a
//! server's registry lock is taken for one batch of sessions at a time
//! ([`crate::backend::relaying::Relaying::visit`]). Reading 1 000 relaying sessions takes about
//! 4 ms of the stats thread in a debug build (four system calls each), 100 about 0.2 ms.

use std::fmt::Write as _;

use serde::Serialize;
use tokio::time::Instant;

use super::dashboard::esc;
use crate::state::{Route, Shared};

/// The most sessions one answer lists.
pub const MAX_SESSIONS: usize = 1000;

/// What `/sessions.json` answers.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sessions {
    /// Open sessions in all (setting up and relaying).
    pub total: usize,
    /// True when `sessions` lists fewer than `total`.
    pub truncated: bool,
    /// The most this answer could list.
    pub limit: usize,
    /// Relaying sessions first (by server, in configuration order), then those still setting up.
    pub sessions: Vec<Session>,
}

/// One open session.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Session {
    /// The client's IP address and port (`null` if the client's socket lost its peer).
    pub client_addr: Option<String>,
    pub client_port: Option<u16>,
    /// The listener (`[listen] name`).
    pub listener: String,
    /// The server it relays to or is being connected to; `null` while holding or routing.
    pub server: Option<String>,
    /// The proxy's local port on its connection to PostgreSQL (`pg_stat_activity.client_port`);
    /// `null` until the session relays.
    pub backend_port: Option<u16>,
    /// Seconds since the client was accepted.
    pub age_s: f64,
    /// Bytes received from the client and bytes the client acknowledged, counted by the kernel
    /// (TCP_INFO); `null` until the session relays.
    pub bytes_in: Option<u64>,
    pub bytes_out: Option<u64>,
    /// `holding` (waiting for a primary), `queued` (for a server slot), `connecting`, `starting`
    /// (PostgreSQL's startup replies being inspected) or `relaying`.
    pub state: &'static str,
}

/// Reads the registries of every listener: at most `limit` (capped at [`MAX_SESSIONS`]) sessions,
/// and the total.
pub fn collect(shared: &Shared, limit: usize) -> Sessions {
    let limit = limit.min(MAX_SESSIONS);
    let now = Instant::now();
    let cfg = shared.config();
    let mut sessions = Vec::new();
    let mut total = 0usize;
    // The primary port's side, then each other listener's (`Shared::set_io`, by set index).
    let sides = std::iter::once((Route::PRIMARY, &shared.frontend, shared.backends())).chain(
        (shared.set_io.iter().enumerate())
            .map(|(i, set)| (Route::of_set(i), &set.frontend, set.backends())),
    );
    for (route, frontend, backends) in sides {
        let listener = &route.listen(&cfg).name;
        for (node, backend) in backends.iter().enumerate() {
            let room = limit.saturating_sub(sessions.len());
            let server = shared.server_name(node);
            total = total.saturating_add(backend.relaying.visit(now, room, |s| {
                sessions.push(Session {
                    client_addr: s.client.map(|a| a.ip().to_string()),
                    client_port: s.client.map(|a| a.port()),
                    listener: listener.clone(),
                    server: Some(server.to_string()),
                    backend_port: s.backend_port,
                    age_s: s.age.as_secs_f64(),
                    bytes_in: s.bytes_in,
                    bytes_out: s.bytes_out,
                    state: "relaying",
                })
            }));
        }
        let room = limit.saturating_sub(sessions.len());
        total = total.saturating_add(frontend.setups.visit(now, room, |s| {
            sessions.push(Session {
                client_addr: Some(s.client.ip().to_string()),
                client_port: Some(s.client.port()),
                listener: listener.clone(),
                server: s.node.map(|n| shared.server_name(n).to_string()),
                backend_port: None,
                age_s: s.age.as_secs_f64(),
                bytes_in: None,
                bytes_out: None,
                state: s.phase.as_str(),
            })
        }));
    }
    Sessions {
        truncated: sessions.len() < total,
        total,
        limit,
        sessions,
    }
}

/// The `limit` a request asks for (`?limit=N`), at most [`MAX_SESSIONS`] (also when absent); a
/// value that is not a whole number is an error that says so (the handler answers 400).
pub fn limit_of(query: Option<&str>) -> Result<usize, String> {
    match query
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("limit="))
    {
        None => Ok(MAX_SESSIONS),
        Some(v) => match v.parse::<u128>() {
            Ok(n) => Ok(usize::try_from(n).map_or(MAX_SESSIONS, |n| n.min(MAX_SESSIONS))),
            Err(_) => Err(format!(
                "limit must be a whole number of sessions (at most {MAX_SESSIONS}), not {v:?}"
            )),
        },
    }
}

/// The `/sessions` page: the same list as a table, complete without JavaScript.
pub fn html(s: &Sessions) -> String {
    let mut rows = String::new();
    for x in &s.sessions {
        let dash = || "-".to_string();
        let opt = |v: Option<u64>| v.map_or_else(dash, |v| v.to_string());
        let _ = writeln!(
            rows,
            "<tr class=\"st-{state}\"><td>{addr}</td><td>{port}</td><td>{listener}</td>\
             <td>{server}</td><td>{bport}</td><td>{age:.1}</td><td>{bin}</td><td>{bout}</td><td>{state}</td></tr>",
            addr = esc(x.client_addr.as_deref().unwrap_or("-")),
            port = x.client_port.map_or_else(dash, |p| p.to_string()),
            listener = esc(&x.listener),
            server = esc(x.server.as_deref().unwrap_or("-")),
            bport = x.backend_port.map_or_else(dash, |p| p.to_string()),
            age = x.age_s,
            bin = opt(x.bytes_in),
            bout = opt(x.bytes_out),
            state = x.state,
        );
    }
    let note = if s.truncated {
        format!(
            "{} open sessions; the first {} are listed.",
            s.total,
            s.sessions.len()
        )
    } else {
        format!("{} open sessions.", s.total)
    };
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta http-equiv=\"refresh\" content=\"5\">\n<title>Sessions - patroni-proxy</title>\n\
         <link rel=\"stylesheet\" href=\"/dashboard/style.css\">\n\
         <link rel=\"icon\" href=\"/dashboard/favicon.svg\">\n</head>\n<body>\n\
         <h1>Open sessions</h1>\n<p><a href=\"/\">Dashboard</a> &middot; \
         <a href=\"/sessions.json\">JSON</a></p>\n<p id=\"sessions-total\">{note}</p>\n\
         <table id=\"sessions\">\n<thead><tr><th>Client</th><th>Port</th><th>Listener</th>\
         <th>Server</th><th>Backend port</th><th>Age (s)</th><th>Bytes in</th><th>Bytes out</th>\
         <th>State</th></tr></thead>\n<tbody>\n{rows}</tbody>\n</table>\n</body>\n</html>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(state: &'static str, server: Option<&str>) -> Session {
        Session {
            client_addr: Some("127.0.0.1".into()),
            client_port: Some(40000),
            listener: "pg<rw>".into(),
            server: server.map(String::from),
            backend_port: server.map(|_| 50000),
            age_s: 1.5,
            bytes_in: server.map(|_| 12),
            bytes_out: server.map(|_| 34),
            state,
        }
    }

    #[test]
    fn the_limit_is_read_from_the_query_and_capped() {
        assert_eq!(limit_of(None), Ok(MAX_SESSIONS));
        assert_eq!(limit_of(Some("limit=2")), Ok(2));
        assert_eq!(limit_of(Some("x=1&limit=0")), Ok(0));
        assert_eq!(limit_of(Some("limit=99999999")), Ok(MAX_SESSIONS));
        assert_eq!(
            limit_of(Some("limit=99999999999999999999999")),
            Ok(MAX_SESSIONS)
        );
        for bad in ["limit=-1", "limit=", "limit=ten", "limit=1e3"] {
            let e = limit_of(Some(bad)).unwrap_err();
            assert!(e.starts_with("limit must be a whole number"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_page_lists_every_session_escaped_and_says_when_truncated() {
        let s = Sessions {
            total: 3,
            truncated: true,
            limit: 2,
            sessions: vec![session("relaying", Some("node0")), session("holding", None)],
        };
        let page = html(&s);
        assert!(page.contains("3 open sessions; the first 2 are listed."));
        assert!(page.contains(
            "<tr class=\"st-relaying\"><td>127.0.0.1</td><td>40000</td><td>pg&lt;rw&gt;</td>\
             <td>node0</td><td>50000</td><td>1.5</td><td>12</td><td>34</td><td>relaying</td></tr>"
        ));
        assert!(page.contains(
            "<tr class=\"st-holding\"><td>127.0.0.1</td><td>40000</td><td>pg&lt;rw&gt;</td>\
             <td>-</td><td>-</td><td>1.5</td><td>-</td><td>-</td><td>holding</td></tr>"
        ));
        assert!(!page.contains("<script"));
        let all = Sessions {
            total: 0,
            truncated: false,
            limit: MAX_SESSIONS,
            sessions: vec![],
        };
        assert!(html(&all).contains("0 open sessions."));
    }
}
