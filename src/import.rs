//! `import-haproxy`: converts an HAProxy configuration of the Patroni template's shape into a
//! [`Config`]. The accepted subset is exactly what that template uses (global `maxconn`; `defaults`
//! mode/retries/timeouts/TCP keepalive; one TCP `listen` with `bind`, `option httpchk`, `http-check
//! expect status`, `default-server` and `server` lines; one stats `listen`). Anything else, a number
//! too large to represent, or a value outside the range `proxy.toml` allows, is an error naming the
//! line and directive: a migration tool that silently drops or changes a setting is worse than none.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Duration;

use crate::config::{self, Check, Config, FileConfig, Global, Listen, OnMarkedDown, Server, Stats};

mod shared;
use shared::{apply_keepalive, haproxy_duration, parse_shared, Timeouts, Unit};

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

#[derive(Debug, Default, Clone)]
struct ServerDefaults {
    inter: Option<Duration>,
    fastinter: Option<Duration>,
    downinter: Option<Duration>,
    rise: Option<NonZeroU32>,
    fall: Option<NonZeroU32>,
    on_marked_down: Option<OnMarkedDown>,
    maxconn: Option<NonZeroU32>,
    port: Option<u16>,
}

/// Converts HAProxy configuration text.
/// One section of the file: its header line, keyword, name, and directive lines.
struct Block {
    line: usize,
    kind: String,
    name: Option<String>,
    body: Vec<(usize, Vec<String>)>,
}

/// Splits the text into sections, dropping comments and blank lines.
fn split_sections(text: &str) -> Result<Vec<Block>, ImportError> {
    let mut blocks: Vec<Block> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let words: Vec<String> = raw
            .split('#')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_string)
            .collect();
        let Some(kw) = words.first() else { continue };
        match kw.as_str() {
            "global" | "defaults" | "listen" => {
                if words.len() > 2 || (kw == "defaults" && words.len() > 1) {
                    return Err(err(
                        line,
                        kw,
                        "section options are not supported: put the address on a `bind` line",
                    ));
                }
                if kw == "listen" && words.len() < 2 {
                    return Err(err(line, kw, "a listen section needs a name"));
                }
                blocks.push(Block {
                    line,
                    kind: kw.clone(),
                    name: words.get(1).cloned(),
                    body: Vec::new(),
                });
            }
            "frontend" | "backend" | "resolvers" | "peers" | "userlist" | "program" | "cache"
            | "mailers" | "ring" => {
                return Err(err(
                    line,
                    kw,
                    "this section is outside the Patroni template's subset: use one `listen` with \
                     `server` lines",
                ))
            }
            _ => match blocks.last_mut() {
                Some(b) => b.body.push((line, words)),
                None => return Err(err(line, kw, "directive outside any section")),
            },
        }
    }
    Ok(blocks)
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

fn parse_stats(body: &[(usize, Vec<String>)], stats: &mut Stats) -> Result<(), ImportError> {
    for (line, w) in body {
        let line = *line;
        match (w[0].as_str(), w.get(1).map(String::as_str)) {
            ("mode", Some("http")) => {}
            ("bind", Some(addr)) => {
                if w.len() > 2 {
                    return Err(err(line, "bind", "bind options are not supported"));
                }
                stats.bind = config::parse_bind(addr).map_err(|m| err(line, "bind", &m))?;
            }
            ("stats", Some("enable")) => {}
            ("stats", Some("uri")) => {
                if w.get(2).map(String::as_str) != Some("/") {
                    return Err(err(
                        line,
                        "stats uri",
                        "only `stats uri /` is supported: the dashboard is served at `/`",
                    ));
                }
            }
            ("stats", Some("auth")) => {
                let cred = w
                    .get(2)
                    .ok_or_else(|| err(line, "stats auth", "expected user:password"))?;
                stats.auth = Some(cred.clone());
            }
            ("stats", Some(other)) => {
                return Err(err(
                    line,
                    &format!("stats {other}"),
                    "not supported in the stats listen",
                ))
            }
            _ => return Err(unknown(line, &w[0], "the stats listen")),
        }
    }
    Ok(())
}

/// Everything the TCP listen's lines write to.
struct Proxy<'a> {
    listen: &'a mut Listen,
    check: &'a mut Check,
    sd: &'a mut ServerDefaults,
    timeouts: &'a mut Timeouts,
    servers: &'a mut Vec<(usize, Vec<String>)>,
    frontend_maxconn: &'a mut Option<(usize, NonZeroU32)>,
    origins: &'a mut Origins,
}

fn parse_proxy(body: &[(usize, Vec<String>)], p: &mut Proxy<'_>) -> Result<(), ImportError> {
    for (line, w) in body {
        let line = *line;
        match w[0].as_str() {
            "mode" => match w.get(1).map(String::as_str) {
                Some("tcp") => {}
                _ => {
                    return Err(err(
                        line,
                        "mode",
                        "the PostgreSQL listen must be `mode tcp`",
                    ))
                }
            },
            "bind" => {
                if w.len() != 2 {
                    return Err(err(
                        line,
                        "bind",
                        "expected `bind ADDR:PORT` without options",
                    ));
                }
                p.listen.bind = config::parse_bind(&w[1]).map_err(|m| err(line, "bind", &m))?;
                note(p.origins, "listen.bind", line, "bind");
            }
            "maxconn" => *p.frontend_maxconn = Some((line, nonzero(line, w, 1)?)),
            "option" if w.get(1).map(String::as_str) == Some("httpchk") => {
                let check = &mut *p.check;
                let args = &w[2..];
                match args.len() {
                    0 => {}
                    1 => check.uri = args[0].clone(),
                    2 | 3 => {
                        // Refused with the message `proxy.toml` would give, at this line.
                        let refused = |key: &str, m: String| {
                            err(
                                line,
                                "option httpchk",
                                &format!("{m} (`{key}` in proxy.toml)"),
                            )
                        };
                        check.method = args[0].parse().map_err(|m| refused("check.method", m))?;
                        check.uri = args[1].clone();
                        if let Some(v) = args.get(2) {
                            if v.contains("\\r") {
                                return Err(err(
                                    line,
                                    "option httpchk",
                                    "headers smuggled in the version field are not supported",
                                ));
                            }
                            check.version = v.parse().map_err(|m| refused("check.version", m))?;
                        }
                    }
                    _ => {
                        return Err(err(
                            line,
                            "option httpchk",
                            "expected at most METHOD URI VERSION",
                        ))
                    }
                }
                for key in ["check.method", "check.uri", "check.version"] {
                    note(p.origins, key, line, "option httpchk");
                }
            }
            "http-check" => match (w.get(1).map(String::as_str), w.get(2).map(String::as_str)) {
                (Some("expect"), Some("status")) => {
                    let code = w
                        .get(3)
                        .and_then(|c| c.parse::<u16>().ok())
                        .ok_or_else(|| {
                            err(
                                line,
                                "http-check expect status",
                                "expected one status code, e.g. 200",
                            )
                        })?;
                    if w.len() > 4 {
                        return Err(err(
                            line,
                            "http-check expect status",
                            "expected one status code",
                        ));
                    }
                    p.check.expect_status = code;
                    note(
                        p.origins,
                        "check.expect_status",
                        line,
                        "http-check expect status",
                    );
                }
                _ => {
                    return Err(err(
                        line,
                        "http-check",
                        "only `http-check expect status CODE` is supported",
                    ))
                }
            },
            "default-server" => {
                parse_server_params(line, &w[1..], p.sd, "default-server", p.origins)?
            }
            "server" => p.servers.push((line, w.clone())),
            "log" if w.get(1).map(String::as_str) == Some("global") => {}
            "balance" => {
                return Err(err(
                    line,
                    "balance",
                    "patroni-proxy always routes to the one confirmed primary; remove the line",
                ))
            }
            _ => parse_shared(line, w, p.timeouts, false, p.origins)?,
        }
    }
    if p.servers.is_empty() {
        return Err(err(0, "server", "the TCP listen has no `server` lines"));
    }
    Ok(())
}

fn parse_server_params(
    line: usize,
    params: &[String],
    sd: &mut ServerDefaults,
    directive: &str,
    origins: &mut Origins,
) -> Result<(), ImportError> {
    let mut it = params.iter();
    while let Some(p) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| err(line, &format!("{directive} {name}"), "missing value"))
        };
        let here = format!("{directive} {p}");
        match p.as_str() {
            "inter" | "fastinter" | "downinter" => {
                let v = value(p)?;
                let d = haproxy_duration(&v, Unit::Millis).map_err(|m| err(line, &here, &m))?;
                match p.as_str() {
                    "inter" => sd.inter = Some(d),
                    "fastinter" => sd.fastinter = Some(d),
                    _ => sd.downinter = Some(d),
                }
                note(origins, &format!("check.{p}"), line, &here);
            }
            "rise" | "fall" => {
                let v = value(p)?;
                let n = v
                    .parse::<u32>()
                    .ok()
                    .and_then(NonZeroU32::new)
                    .ok_or_else(|| err(line, &here, "expected a count >= 1"))?;
                if p == "rise" {
                    sd.rise = Some(n)
                } else {
                    sd.fall = Some(n)
                }
                note(origins, &format!("check.{p}"), line, &here);
            }
            "on-marked-down" => {
                let v = value(p)?;
                if v != "shutdown-sessions" {
                    return Err(err(line, &here, "only `shutdown-sessions` is supported"));
                }
                sd.on_marked_down = Some(OnMarkedDown::ShutdownSessions);
            }
            "maxconn" => {
                let v = value(p)?;
                sd.maxconn = Some(
                    v.parse::<u32>()
                        .ok()
                        .and_then(NonZeroU32::new)
                        .ok_or_else(|| err(line, &here, "expected a count >= 1"))?,
                );
                // Read by each server that does not set its own.
                note(origins, "server.maxconn", line, &here);
            }
            "port" => {
                let v = value(p)?;
                sd.port = Some(
                    v.parse()
                        .map_err(|_| err(line, &here, "expected a port number"))?,
                );
            }
            "check" => {}
            other => {
                return Err(err(
                    line,
                    &format!("{directive} {other}"),
                    "not supported: accepted are inter, fastinter, downinter, rise, fall, \
                     on-marked-down, maxconn, check, port (and addr on server lines)",
                ))
            }
        }
    }
    Ok(())
}

/// Returns the server, its check port, and whether the line set its own `maxconn`.
fn parse_server(
    line: usize,
    w: &[String],
    sd: &ServerDefaults,
) -> Result<(Server, u16, bool), ImportError> {
    let name = w
        .get(1)
        .ok_or_else(|| err(line, "server", "expected `server NAME IP:PORT ...`"))?
        .clone();
    let addr_text = w
        .get(2)
        .ok_or_else(|| err(line, "server", "expected `server NAME IP:PORT ...`"))?;
    let address: SocketAddr = addr_text.parse().map_err(|_| {
        err(
            line,
            "server",
            &format!(
                "address {addr_text:?} is not IP:PORT (host names are not resolved; write the IP)"
            ),
        )
    })?;
    // Server lines take the same keywords as default-server, plus `addr`; overriding the check
    // schedule per server is outside the subset.
    let mut params = Vec::new();
    let mut check_addr: Option<IpAddr> = None;
    let mut has_check = false;
    let mut it = w[3..].iter();
    while let Some(p) = it.next() {
        match p.as_str() {
            "addr" => {
                let v = it
                    .next()
                    .ok_or_else(|| err(line, "server addr", "missing value"))?;
                check_addr = Some(
                    v.parse()
                        .map_err(|_| err(line, "server addr", "expected an IP address"))?,
                );
            }
            "check" => has_check = true,
            _ => params.push(p.clone()),
        }
    }
    let mut own = ServerDefaults::default();
    // The caller notes where a server's values come from.
    parse_server_params(line, &params, &mut own, "server", &mut Origins::new())?;
    if own.inter.is_some()
        || own.fastinter.is_some()
        || own.downinter.is_some()
        || own.rise.is_some()
        || own.fall.is_some()
        || own.on_marked_down.is_some()
    {
        return Err(err(
            line,
            "server",
            "per-server check timing is not supported: put inter/fall/rise/on-marked-down on `default-server`",
        ));
    }
    if !has_check {
        return Err(err(
            line,
            "server",
            "a server without `check` is not supported: patroni-proxy routes only to a server its health check confirms",
        ));
    }
    let port = own.port.or(sd.port).ok_or_else(|| {
        err(
            line,
            "server",
            "`check` without `port`: the HTTP check would go to the PostgreSQL port; add `port 8008` (Patroni's REST API)",
        )
    })?;
    let maxconn = own
        .maxconn
        .or(sd.maxconn)
        .unwrap_or(config::DEFAULT_MAXCONN);
    Ok((
        Server {
            name,
            address,
            maxconn,
            check_port: None,
            check_addr,
        },
        port,
        own.maxconn.is_some(),
    ))
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
