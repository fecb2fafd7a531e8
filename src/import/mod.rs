//! `import-haproxy`: converts an HAProxy configuration of the Patroni template's shape into a
//! [`Config`]. The accepted subset is exactly what that template uses (global `maxconn`; `defaults`
//! mode/retries/timeouts/TCP keepalive; one TCP `listen` with `bind`, `option httpchk`, `http-check
//! expect status`, `default-server` and `server` lines; one stats `listen`). Anything else, a number
//! too large to represent, or a value outside the range `proxy.toml` allows, is an error naming the
//! line and directive: a migration tool that silently drops or changes a setting is worse than none.
//!
//! - `sections`: splits the text into sections.
//! - `listen`: the TCP listen with its `server` lines, and the stats listen.
//! - `shared`: what `defaults` and the TCP listen share (retries, timeouts, keepalive) and
//!   HAProxy's time format.
//!
//! This file runs the passes, lets the listen override `defaults`, and validates the result as
//! `proxy.toml` would be.

mod listen;
mod sections;
mod shared;

use std::collections::HashMap;
use std::num::NonZeroU32;

use crate::config::{Check, Config, FileConfig, Global, Listen, OnMarkedDown, Stats};
use listen::{parse_proxy, parse_server, parse_stats, Proxy, ServerDefaults};
use sections::split_sections;
use shared::{apply_keepalive, parse_shared, Timeouts};

#[derive(Debug, thiserror::Error)]
#[error("line {line}: `{directive}`: {message}")]
pub struct ImportError {
    pub line: usize,
    pub directive: String,
    pub message: String,
}

/// Where each `proxy.toml` key got its value: the line and HAProxy directive, so that a value the
/// config's validation refuses (out of range) is reported at the line that wrote it.
type Origins = HashMap<String, (usize, String)>;

fn note(origins: &mut Origins, key: &str, line: usize, directive: &str) {
    origins.insert(key.to_string(), (line, directive.to_string()));
}

/// Converts HAProxy configuration text.
pub fn import(text: &str) -> Result<Config, ImportError> {
    let mut global = Global::default();
    let mut defaults = Timeouts::default();
    let mut proxy_timeouts = Timeouts::default();
    let mut listen = Listen::default();
    let mut check = Check::default();
    let mut stats = Stats::default();
    let mut server_defaults = ServerDefaults::default();
    let mut servers: Vec<(usize, Vec<String>)> = Vec::new();
    let mut seen_proxy = false;
    let mut seen_stats = false;
    let mut frontend_maxconn: Option<(usize, NonZeroU32)> = None;
    // `defaults` first, then the listen's own lines override them key by key, as the values do.
    let mut origins = Origins::new();
    let mut proxy_origins = Origins::new();

    for block in split_sections(text)? {
        match block.kind.as_str() {
            "global" => {
                for (line, w) in &block.body {
                    match w[0].as_str() {
                        "maxconn" => {
                            global.maxconn = nonzero(*line, w, 1)?;
                            note(&mut origins, "global.maxconn", *line, "maxconn");
                        }
                        "nbthread" => {
                            global.threads = Some(nonzero(*line, w, 1)?);
                            note(&mut origins, "global.threads", *line, "nbthread");
                        }
                        kw @ ("log" | "daemon" | "user" | "group" | "chroot" | "pidfile"
                        | "stats") => return Err(err(
                            *line,
                            kw,
                            "not supported in `global`: only `maxconn` and `nbthread` are. \
                                 patroni-proxy logs to stderr (RUST_LOG sets the level) and runs as \
                                 whoever starts it; remove the line",
                        )),
                        _ => return Err(unknown(*line, &directive_name(w), "global")),
                    }
                }
            }
            "defaults" => {
                for (line, w) in &block.body {
                    parse_shared(*line, w, &mut defaults, true, &mut origins)?;
                }
            }
            _ => {
                let name = block.name.unwrap_or_default();
                if block.body.iter().any(|(_, w)| w[0] == "stats") {
                    if seen_stats {
                        return Err(err(
                            block.line,
                            "listen",
                            "a second stats listen: only one is supported",
                        ));
                    }
                    seen_stats = true;
                    parse_stats(&block.body, &mut stats)?;
                } else {
                    if seen_proxy {
                        return Err(err(
                            block.line,
                            "listen",
                            &format!(
                                "a second TCP listen `{name}`: patroni-proxy serves one primary port"
                            ),
                        ));
                    }
                    seen_proxy = true;
                    listen.name = name;
                    note(&mut proxy_origins, "listen.name", block.line, "listen");
                    parse_proxy(
                        &block.body,
                        &mut Proxy {
                            listen: &mut listen,
                            check: &mut check,
                            sd: &mut server_defaults,
                            timeouts: &mut proxy_timeouts,
                            servers: &mut servers,
                            frontend_maxconn: &mut frontend_maxconn,
                            origins: &mut proxy_origins,
                        },
                    )?;
                }
            }
        }
    }

    if !seen_proxy {
        return Err(err(
            0,
            "listen",
            "no TCP `listen` section with `server` lines found",
        ));
    }
    origins.extend(proxy_origins);
    // Proxy-level settings override `defaults`.
    let t = proxy_timeouts.over(defaults);
    if let Some(r) = t.retries {
        listen.retries = r;
    }
    if let Some(d) = t.client {
        listen.timeout_client = d;
    }
    if let Some(d) = t.server {
        listen.timeout_server = d;
    }
    if let Some(d) = t.connect {
        listen.timeout_connect = d;
    }
    listen.timeout_queue = t.queue;
    if let Some(d) = t.check {
        check.timeout = d;
    }
    apply_keepalive(&t, &mut listen, &mut origins)?;
    if let Some((line, m)) = frontend_maxconn {
        // The frontend limit can only be lower than the process limit.
        if m < global.maxconn {
            global.maxconn = m;
            note(&mut origins, "global.maxconn", line, "maxconn");
        }
    }
    let sd = &server_defaults;
    if let Some(d) = sd.inter {
        check.inter = d;
    }
    check.fastinter = sd.fastinter;
    check.downinter = sd.downinter;
    if let Some(r) = sd.rise {
        check.rise = r;
    }
    if let Some(f) = sd.fall {
        check.fall = f;
    }
    // HAProxy's default is to keep sessions of a DOWN server.
    listen.on_marked_down = sd.on_marked_down.unwrap_or(OnMarkedDown::None);

    let mut parsed = Vec::new();
    for (i, (line, words)) in servers.iter().enumerate() {
        let (server, port, own_maxconn) = parse_server(*line, words, sd)?;
        for key in ["name", "address", "check_port", "check_addr"] {
            note(&mut origins, &format!("server[{i}].{key}"), *line, "server");
        }
        let maxconn_origin = match (own_maxconn, origins.get("server.maxconn")) {
            (false, Some(default_server)) => default_server.clone(),
            _ => (*line, "server maxconn".to_string()),
        };
        origins.insert(format!("server[{i}].maxconn"), maxconn_origin);
        parsed.push((server, port));
    }
    // One shared check port goes to `check.port`; differing ones stay per server.
    let ports: Vec<u16> = parsed.iter().map(|(_, p)| *p).collect();
    if let Some(&first) = ports.first() {
        if ports.iter().all(|&p| p == first) {
            check.port = first;
            if let Some((line, _)) = servers.first() {
                note(&mut origins, "check.port", *line, "server port");
            }
        }
    }
    let servers = parsed
        .into_iter()
        .map(|(mut s, port)| {
            if port != check.port {
                s.check_port = Some(port);
            }
            s
        })
        .collect();

    let file = FileConfig {
        global,
        listen,
        check,
        servers,
        stats,
        etcd: None,
        log: Default::default(),
    };
    // Whatever is imported must load as `proxy.toml` would: the same validation, reported at the
    // HAProxy line that set the refused value.
    file.validate().map_err(|e| {
        let (line, directive) = origins
            .get(&e.key)
            .cloned()
            .unwrap_or_else(|| (0, e.key.clone()));
        err(
            line,
            &directive,
            &format!("{} (`{}` in proxy.toml)", e.message, e.key),
        )
    })
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

/// Renders an imported config as a commented `proxy.toml`.
pub fn to_toml(config: &Config, source: &str) -> String {
    let body = toml::to_string(&config.to_file()).expect("a validated config serialises");
    format!(
        "# Generated by `patroni-proxy import-haproxy {source}`.\n\
         # Check it with `patroni-proxy check --config FILE`; docs/configuration.md explains every key.\n\n{body}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_directives_name_their_line() {
        let text = "global\n    maxconn 100\n    daemon\n";
        let e = import(text).unwrap_err();
        assert_eq!((e.line, e.directive.as_str()), (3, "daemon"));
    }
}
