//! The stats section, in any of its shapes (`listen stats`, `frontend stats`): its address,
//! `stats auth`, `stats admin if TRUE`; the page's cosmetics are noted as such.

use std::net::{Ipv4Addr, SocketAddr};

use std::collections::HashMap;

use super::proxy::Section;
use super::sections::Line;
use super::userlist::{credentials, Users};
use super::{err, ImportError, Note};
use crate::config::Stats;

pub(super) fn parse_stats(
    s: &Section,
    lists: &HashMap<String, Users>,
    stats: &mut Stats,
    notes: &mut Vec<Note>,
) -> Result<(), ImportError> {
    match s.binds.as_slice() {
        [] => {}
        [(_, addr)] => {
            stats.bind = *addr;
            if let Some(line) = s.bind_tls {
                // Plain HTTP on the network would carry `stats auth` in clear: keep the page on
                // this host until a TLS proxy is put in front.
                stats.bind = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port());
                notes.push(Note::new(
                    line,
                    "bind ssl",
                    &format!(
                        "the stats page is served without TLS, so it listens on {} instead of {addr}: \
                         put a TLS proxy in front, or change [stats] bind knowingly",
                        stats.bind
                    ),
                ));
            }
        }
        [_, (line, _), ..] => {
            return Err(err(*line, "bind", "the stats listener has one address"));
        }
    }
    // The stats listener has its own limits (a header timeout, per-client limits).
    for (line, directive) in s.origins.values() {
        notes.push(Note::new(
            *line,
            directive,
            "an HTTP timeout of the stats section: the stats listener has its own limits",
        ));
    }
    if let Some((line, _)) = s.maxconn {
        notes.push(Note::new(
            line,
            "maxconn",
            "the stats listener has its own small connection limit",
        ));
    }
    let mut admin_line = None;
    // Access by userlist: `acl`, `stats http-request auth unless`, `stats admin if ACL`.
    let by_acl = |l: &Line| {
        l.w[0] == "acl"
            || (l.w.get(1).is_some_and(|x| x == "http-request"))
            || (l.w.get(1).is_some_and(|x| x == "admin") && l.w.get(3).is_some_and(|c| c != "TRUE"))
    };
    let rules: Vec<Line> = s.stats.iter().filter(|l| by_acl(l)).cloned().collect();
    if !rules.is_empty() {
        let (read, admin) = credentials(&rules, lists)?;
        stats.auth = read;
        if let Some((u, p)) = admin {
            stats.admin_user = Some(u);
            stats.admin_password = Some(p);
        }
        notes.push(Note::new(
            rules[0].line,
            "acl",
            "the stats page's userlist rules become [stats] auth (read-only) and admin_user / \
             admin_password",
        ));
    }
    for l in s.stats.iter().filter(|l| !by_acl(l)) {
        let (line, w) = (l.line, &l.w);
        let word = |i: usize| w.get(i).map(String::as_str);
        let directive = format!("{} {}", w[0], word(1).unwrap_or(""));
        match (w[0].as_str(), word(1)) {
            ("stats", Some("enable")) => {}
            ("stats", Some("uri")) => {
                if word(2) != Some("/") {
                    notes.push(Note::new(
                        line,
                        "stats uri",
                        "the dashboard is served at `/` of [stats] bind (with /metrics, \
                         /stats.csv, /stats.json beside it)",
                    ));
                }
            }
            ("stats", Some("auth")) => {
                let cred = word(2)
                    .filter(|c| c.contains(':'))
                    .ok_or_else(|| err(line, "stats auth", "expected user:password"))?;
                if let Some(first) = &stats.auth {
                    if first != cred {
                        return Err(err(
                            line,
                            "stats auth",
                            "a second user: [stats] auth holds one user:password (admin_user / \
                             admin_password can be a second, with admin rights)",
                        ));
                    }
                }
                stats.auth = Some(cred.to_string());
            }
            // HAProxy's admin level for the `stats auth` users: our runtime control, with those
            // credentials. Only the unconditional form: we have no ACLs to carry a condition over.
            ("stats", Some("admin")) => {
                let cond: Vec<&str> = w[2..].iter().map(String::as_str).collect();
                if cond != ["if", "TRUE"] {
                    return Err(err(
                        line,
                        "stats admin",
                        "only `stats admin if TRUE` can be imported (patroni-proxy has no ACLs); \
                         it turns on [stats] admin_user / admin_password",
                    ));
                }
                admin_line = Some(line);
            }
            (
                "stats",
                Some(
                    "refresh" | "realm" | "hide-version" | "show-node" | "show-legends"
                    | "show-desc" | "show-modules",
                ),
            ) => notes.push(Note::new(
                line,
                &directive,
                "a cosmetic of HAProxy's page: the dashboard refreshes itself",
            )),
            ("stats", Some("http-request")) => {
                return Err(err(
                    line,
                    "stats http-request",
                    "access rules on the stats page (userlist ACLs) cannot be converted: write \
                     `stats auth user:password` (and `stats admin if TRUE` for admin rights)",
                ))
            }
            ("http-request", Some("use-service"))
                if w.iter().any(|x| x == "prometheus-exporter") =>
            {
                notes.push(Note::new(
                    line,
                    "http-request use-service prometheus-exporter",
                    "patroni-proxy serves Prometheus metrics at /metrics of [stats] bind",
                ))
            }
            _ => return Err(err(line, &directive, "not supported in the stats section")),
        }
    }
    if let Some(line) = admin_line {
        let (user, password) = stats
            .auth
            .as_deref()
            .and_then(|a| a.split_once(':'))
            .ok_or_else(|| {
                err(
                    line,
                    "stats admin",
                    "needs `stats auth user:password`: runtime control is off without credentials",
                )
            })?;
        stats.admin_user = Some(user.to_string());
        stats.admin_password = Some(password.to_string());
    }
    Ok(())
}
