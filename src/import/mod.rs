//! `import-haproxy`: converts the HAProxy configurations people run in front of Patroni into a
//! `proxy.toml`: `listen` sections and `frontend`/`backend` pairs, one listener each, whose role
//! the check URI decides (`/primary`, `/replica?lag=..`, `/read-only`, ...); `server` lines
//! merged into one `[[server]]` list; the stats section in any shape. A directive that changes
//! nothing for a TCP proxy like this one is accepted with a [`Note`] (a warning line and a
//! comment in the output); what would change routing and cannot be honoured is an error naming
//! the line, the directive and what to write instead. A migration tool that silently drops or
//! changes a setting is worse than none.
//!
//! - `lex`: a line into words (quotes, escapes, `${VAR}` from a lookup the caller passes).
//! - `sections`: the file into sections.
//! - `noop`: the directives that change nothing here, and why.
//! - `proxy`: a `defaults`/`listen`/`frontend`/`backend` section into a `Section`.
//! - `server`: `server` and `default-server` lines.
//! - `stats`: the stats section; `userlist`: its access rules by userlist.
//! - `roles`: check URI to listener role.
//! - `assemble`: sections into listeners and the one `[check]`; `merge`: their servers into one
//!   `[[server]]` list.
//! - `shared`: timeouts, retries, keepalive and HAProxy's time format.
//!
//! This file runs the passes and validates the result as `proxy.toml` would be.

mod assemble;
mod lex;
mod merge;
mod noop;
mod proxy;
mod roles;
mod sections;
mod server;
mod shared;
mod stats;
mod userlist;

use std::collections::HashMap;
use std::num::NonZeroU32;

use crate::config::{Config, FileConfig, Global, Listeners, Stats};
use assemble::{Bases, Pair};
use proxy::{parse_section, Section};
use sections::split_sections;

#[derive(Debug, Clone, thiserror::Error)]
#[error("line {line}: `{directive}`: {message}")]
pub struct ImportError {
    pub line: usize,
    pub directive: String,
    pub message: String,
}

/// A line accepted without an equivalent, or adapted: why, for the reader of the new file.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    pub line: usize,
    pub directive: String,
    pub why: String,
}

impl Note {
    fn new(line: usize, directive: &str, why: &str) -> Self {
        Self {
            line,
            directive: directive.into(),
            why: why.into(),
        }
    }
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            0 => write!(f, "`{}`: {}", self.directive, self.why),
            line => write!(f, "line {line}: `{}`: {}", self.directive, self.why),
        }
    }
}

/// A converted file: the configuration (every check of `proxy.toml` passed but those of
/// [`crate::config::FileConfig::validate`] that read files or refuse what this version does not
/// serve yet) and the notes, in line order.
#[derive(Debug, Clone)]
pub struct Imported {
    pub file: FileConfig,
    pub notes: Vec<Note>,
}

/// Where each `proxy.toml` key got its value: the line and HAProxy directive, so that a value the
/// config's validation refuses (out of range) is reported at the line that wrote it.
type Origins = HashMap<String, (usize, String)>;

fn note(origins: &mut Origins, key: &str, line: usize, directive: &str) {
    origins.insert(key.to_string(), (line, directive.to_string()));
}

/// Converts HAProxy configuration text, reading `${VAR}` from the process's environment, and
/// validates it fully, as `patroni-proxy check` would.
pub fn import(text: &str) -> Result<Config, ImportError> {
    let imported = convert(text, &|name| std::env::var(name).ok())?;
    imported.file.validate().map_err(|e| {
        err(
            0,
            &e.key,
            &format!("{} (`{}` in proxy.toml)", e.message, e.key),
        )
    })
}

/// Converts HAProxy configuration text; `env` looks up `${VAR}` references.
pub fn convert(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Imported, ImportError> {
    let mut notes = Vec::new();
    let blocks = split_sections(text, env, &mut notes)?;
    let mut global = Global::default();
    let mut bases = Bases::default();
    let mut origins = Origins::new();
    let mut defaults = Section::default();
    // Each proxy section with the `defaults` in force where it was written.
    let mut proxies: Vec<(Section, Section)> = Vec::new();
    let mut userlists = HashMap::new();
    for block in &blocks {
        let name = block.name.clone().unwrap_or_default();
        match block.kind.as_str() {
            "global" => parse_global(block, &mut global, &mut bases, &mut origins, &mut notes)?,
            "defaults" => {
                defaults = parse_section("defaults", &name, block.line, &block.body)?;
                notes.append(&mut defaults.notes);
            }
            "userlist" => {
                userlists.insert(name.clone(), userlist::parse_userlist(block)?);
            }
            "listen" | "frontend" | "backend" => {
                let s = parse_section(&block.kind, &name, block.line, &block.body)?;
                proxies.push((s, defaults.clone()));
            }
            other => notes.push(Note::new(
                block.line,
                &format!("{other} {name}"),
                match other {
                    "resolvers" => "DNS resolution is not used: servers are IP addresses",
                    _ => "a section that routes no PostgreSQL session",
                },
            )),
        }
    }

    // Sort the sections: the stats page, HTTP services left out, listeners.
    let mut stats = Stats::default();
    let mut seen_stats = None;
    let mut pairs = Vec::new();
    let by_name: HashMap<&str, usize> = proxies
        .iter()
        .enumerate()
        .filter(|(_, (s, _))| s.kind == "backend")
        .map(|(i, (s, _))| (s.name.as_str(), i))
        .collect();
    let mut used_backends = Vec::new();
    for (s, d) in &proxies {
        // The stats page: `stats` lines in an HTTP section (or one without servers); HAProxy
        // ignores them in a TCP one.
        let has_stats = s.stats.iter().any(|l| l.w[0] == "stats");
        if has_stats && (s.mode(d) == "http" || s.servers.is_empty()) {
            if let Some(first) = seen_stats {
                return Err(err(
                    s.line,
                    &s.kind,
                    &format!("a second stats section (the first is on line {first}): there is one"),
                ));
            }
            seen_stats = Some(s.line);
            stats::parse_stats(s, &userlists, &mut stats, &mut notes)?;
            // Its ACLs are the access rules just converted.
            notes.extend(s.notes.iter().filter(|n| n.directive != "acl").cloned());
            continue;
        }
        if s.kind == "frontend" && s.mode(d) == "http" {
            notes.push(Note::new(
                s.line,
                &format!("{} {}", s.kind, s.name),
                "left out: it serves HTTP, not PostgreSQL (not the stats page); keep HAProxy or another proxy for it",
            ));
            continue;
        }
        if let Some(e) = &s.per_request {
            return Err(err(e.line, &e.directive, &e.message));
        }
        let backend = match s.kind.as_str() {
            "backend" => continue,
            "frontend" => {
                let (line, name) = s.backend.clone().ok_or_else(|| {
                    err(
                        s.line,
                        "frontend",
                        "no `default_backend`: which servers does it route to?",
                    )
                })?;
                let &j = by_name.get(name.as_str()).ok_or_else(|| {
                    err(
                        line,
                        "default_backend",
                        &format!("no backend named `{name}`"),
                    )
                })?;
                used_backends.push(j);
                (&proxies[j].0, &proxies[j].1)
            }
            _ => (s, d),
        };
        let http = s.mode(d) == "http" || backend.0.mode(backend.1) == "http";
        if http || (s.serves_http.is_some() && backend.0.servers.is_empty()) {
            notes.push(Note::new(
                s.line,
                &format!("{} {}", s.kind, s.name),
                "left out: it serves HTTP, not PostgreSQL (not the stats page); keep HAProxy or another proxy for it",
            ));
            continue;
        }
        let mut sides = vec![s];
        if !std::ptr::eq(s, backend.0) {
            sides.push(backend.0);
        }
        for section in sides {
            notes.extend(section.notes.iter().cloned());
            // HTTP rules and stats lines of a TCP section: HAProxy ignores them too.
            let http = section.stats.iter().filter(|l| l.w[0] != "acl");
            notes.extend(http.map(|l| {
                Note::new(
                    l.line,
                    &directive_name(&l.w),
                    "HTTP rules and the stats page have no effect in a TCP section (HAProxy \
                     ignores them there too)",
                )
            }));
        }
        pairs.push(Pair {
            fe: s,
            fe_defaults: d,
            be: backend.0,
            be_defaults: backend.1,
        });
    }
    for (j, (s, d)) in proxies.iter().enumerate() {
        if s.kind == "backend" && !used_backends.contains(&j) && s.mode(d) != "http" {
            notes.push(Note::new(
                s.line,
                &format!("backend {}", s.name),
                "left out: no frontend uses it",
            ));
        }
    }
    if pairs.is_empty() {
        return Err(err(
            0,
            "listen",
            "no TCP `listen` or `frontend` with `server` lines found",
        ));
    }
    if seen_stats.is_none() {
        notes.push(Note::new(
            0,
            "stats",
            "no stats section: the dashboard and /metrics are served on [stats] bind, *:7000 by default; change or firewall it",
        ));
    }
    let built = assemble::build(&pairs, &bases, &mut notes, &mut origins)?;
    if let Some((line, m)) = built.maxconn {
        // The frontend limit can only be lower than the process limit.
        if m < global.maxconn {
            global.maxconn = m;
            note(&mut origins, "global.maxconn", line, "maxconn");
        }
    }
    let file = FileConfig {
        global,
        listen: Listeners::new(built.listeners).expect("at least one pair"),
        check: built.check,
        servers: built.servers,
        stats,
        etcd: None,
        log: Default::default(),
    };
    // Whatever is imported must load as `proxy.toml` would: the same validation, reported at the
    // HAProxy line that set the refused value.
    file.check_keys().map_err(|e| {
        let (line, directive) = origins
            .get(&e.key)
            .cloned()
            .unwrap_or_else(|| (0, e.key.clone()));
        err(
            line,
            &directive,
            &format!("{} (`{}` in proxy.toml)", e.message, e.key),
        )
    })?;
    Ok(Imported {
        file,
        notes: merged(notes),
    })
}

/// The notes in line order, one per directive and reason: the same one on several lines (a
/// `weight` on every `server`) is one note naming the other lines.
fn merged(mut notes: Vec<Note>) -> Vec<Note> {
    notes.sort_by_key(|n| n.line);
    let mut out: Vec<(Note, Vec<usize>)> = Vec::new();
    for n in notes {
        match out
            .iter_mut()
            .find(|(o, _)| o.directive == n.directive && o.why == n.why)
        {
            Some((o, more)) => {
                if o.line != n.line && !more.contains(&n.line) {
                    more.push(n.line);
                }
            }
            None => out.push((n, Vec::new())),
        }
    }
    out.into_iter()
        .map(|(mut n, more)| {
            if !more.is_empty() {
                let lines: Vec<String> = more.iter().map(usize::to_string).collect();
                let s = if lines.len() == 1 { "" } else { "s" };
                n.why = format!("{} (also line{s} {})", n.why, lines.join(", "));
            }
            n
        })
        .collect()
}

/// `global`: `maxconn`, `nbthread`, the TLS bases and defaults; the rest is noted.
fn parse_global(
    block: &sections::Block,
    global: &mut Global,
    bases: &mut Bases,
    origins: &mut Origins,
    notes: &mut Vec<Note>,
) -> Result<(), ImportError> {
    for l in &block.body {
        let (line, w) = (l.line, &l.w);
        match w[0].as_str() {
            "maxconn" => {
                global.maxconn = nonzero(line, w, 1)?;
                note(origins, "global.maxconn", line, "maxconn");
                continue;
            }
            "nbthread" => {
                global.threads = Some(nonzero(line, w, 1)?);
                note(origins, "global.threads", line, "nbthread");
                continue;
            }
            "ssl-server-verify" => {
                bases.verify_none = w.get(1).map(String::as_str) == Some("none");
                continue;
            }
            "ca-base" => bases.ca = w.get(1).cloned(),
            "crt-base" => bases.crt = w.get(1).cloned(),
            _ => {}
        }
        match noop::no_effect("global", w) {
            Some(why) => notes.push(Note::new(line, &directive_name(w), why)),
            None => {
                return Err(err(
                    line,
                    &directive_name(w),
                    "not supported in `global`, and not known to change nothing",
                ))
            }
        }
    }
    Ok(())
}

fn nonzero(line: usize, w: &[String], i: usize) -> Result<NonZeroU32, ImportError> {
    w.get(i)
        .and_then(|v| v.parse::<u32>().ok())
        .and_then(NonZeroU32::new)
        .ok_or_else(|| err(line, &w[0], "expected a count >= 1"))
}

fn err(line: usize, directive: &str, message: &str) -> ImportError {
    ImportError {
        line,
        directive: directive.to_string(),
        message: message.to_string(),
    }
}

/// `option redispatch` rather than `option`: the words that identify a directive.
fn directive_name(w: &[String]) -> String {
    match (w[0].as_str(), w.get(1)) {
        ("option" | "http-check" | "stats" | "timeout" | "no", Some(second)) => {
            format!("{} {second}", w[0])
        }
        _ => w[0].clone(),
    }
}

fn unknown(line: usize, kw: &str, section: &str) -> ImportError {
    err(
        line,
        kw,
        &format!("not supported in {section}: it is outside the Patroni template's subset that import-haproxy converts"),
    )
}

/// Renders an imported config as a commented `proxy.toml`: each note as a comment, then the
/// keys.
pub fn to_toml(file: &FileConfig, notes: &[Note], source: &str) -> String {
    let body = toml::to_string(file).expect("a config serialises");
    let mut head = format!(
        "# Generated by `patroni-proxy import-haproxy {source}`.\n\
         # Check it with `patroni-proxy check --config FILE`; docs/configuration.md explains every key.\n"
    );
    if !notes.is_empty() {
        head.push_str("#\n# Lines of the HAProxy file without an equivalent here, or adapted:\n");
        for n in notes {
            head.push_str(&format!("# {n}\n"));
        }
    }
    format!("{head}\n{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_directives_name_their_line() {
        let text = "global\n    maxconn 100\n    lua-load x.lua\n";
        let e = import(text).unwrap_err();
        assert_eq!((e.line, e.directive.as_str()), (3, "lua-load"));
    }
}
