//! `import-haproxy`: converts an HAProxy configuration of the Patroni template's shape into a
//! [`Config`]. The accepted subset is exactly what that template uses (global `maxconn`; `defaults`
//! mode/retries/timeouts; one TCP `listen` with `bind`, `option httpchk`, `http-check expect status`,
//! `default-server` and `server` lines; one stats `listen`). Anything else is an error naming the line
//! and directive: a migration tool that silently drops a setting is worse than none.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Duration;

use crate::config::{self, Check, Config, FileConfig, Global, Listen, OnMarkedDown, Server, Stats};

#[derive(Debug, thiserror::Error)]
#[error("line {line}: `{directive}`: {message}")]
pub struct ImportError {
    pub line: usize,
    pub directive: String,
    pub message: String,
}

/// Settings that may appear in `defaults` and be overridden in a `listen`.
#[derive(Debug, Default, Clone)]
struct Timeouts {
    retries: Option<u32>,
    client: Option<Duration>,
    server: Option<Duration>,
    connect: Option<Duration>,
    check: Option<Duration>,
    queue: Option<Duration>,
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
    let mut frontend_maxconn: Option<NonZeroU32> = None;

    for block in split_sections(text)? {
        match block.kind.as_str() {
            "global" => {
                for (line, w) in &block.body {
                    match w[0].as_str() {
                        "maxconn" => global.maxconn = nonzero(*line, w, 1)?,
                        "nbthread" => global.threads = Some(nonzero(*line, w, 1)?),
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
                    parse_timeouts(*line, w, &mut defaults, true)?;
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
                    parse_proxy(
                        &block.body,
                        &mut listen,
                        &mut check,
                        &mut server_defaults,
                        &mut proxy_timeouts,
                        &mut servers,
                        &mut frontend_maxconn,
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
    // Proxy-level settings override `defaults`.
    let pick = |a: Option<Duration>, b: Option<Duration>| a.or(b);
    if let Some(r) = proxy_timeouts.retries.or(defaults.retries) {
        listen.retries = r;
    }
    if let Some(d) = pick(proxy_timeouts.client, defaults.client) {
        listen.timeout_client = d;
    }
    if let Some(d) = pick(proxy_timeouts.server, defaults.server) {
        listen.timeout_server = d;
    }
    if let Some(d) = pick(proxy_timeouts.connect, defaults.connect) {
        listen.timeout_connect = d;
    }
    listen.timeout_queue = pick(proxy_timeouts.queue, defaults.queue);
    if let Some(d) = pick(proxy_timeouts.check, defaults.check) {
        check.timeout = d;
    }
    if let Some(m) = frontend_maxconn {
        // The frontend limit can only be lower than the process limit.
        global.maxconn = global.maxconn.min(m);
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
    for (line, words) in &servers {
        parsed.push(parse_server(*line, words, sd)?);
    }
    // One shared check port goes to `check.port`; differing ones stay per server.
    let ports: Vec<u16> = parsed.iter().map(|(_, p)| *p).collect();
    if let Some(&first) = ports.first() {
        if ports.iter().all(|&p| p == first) {
            check.port = first;
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
    file.validate().map_err(|e| err(0, &e.key, &e.message))
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

#[allow(clippy::too_many_arguments)]
fn parse_proxy(
    body: &[(usize, Vec<String>)],
    listen: &mut Listen,
    check: &mut Check,
    sd: &mut ServerDefaults,
    timeouts: &mut Timeouts,
    servers: &mut Vec<(usize, Vec<String>)>,
    frontend_maxconn: &mut Option<NonZeroU32>,
) -> Result<(), ImportError> {
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
                listen.bind = config::parse_bind(&w[1]).map_err(|m| err(line, "bind", &m))?;
            }
            "maxconn" => *frontend_maxconn = Some(nonzero(line, w, 1)?),
            "option" => match w.get(1).map(String::as_str) {
                Some("httpchk") => {
                    let args = &w[2..];
                    match args.len() {
                        0 => {}
                        1 => check.uri = args[0].clone(),
                        2 | 3 => {
                            check.method = args[0].clone();
                            check.uri = args[1].clone();
                            if let Some(v) = args.get(2) {
                                check.version = v.clone();
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
                    if check.version.contains("\\r") {
                        return Err(err(
                            line,
                            "option httpchk",
                            "headers smuggled in the version field are not supported",
                        ));
                    }
                }
                Some(other) => {
                    return Err(err(line, &format!("option {other}"), "not supported"));
                }
                None => return Err(err(line, "option", "missing option name")),
            },
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
                    check.expect_status = code;
                }
                _ => {
                    return Err(err(
                        line,
                        "http-check",
                        "only `http-check expect status CODE` is supported",
                    ))
                }
            },
            "default-server" => parse_server_params(line, &w[1..], sd, "default-server")?,
            "server" => servers.push((line, w.clone())),
            "timeout" | "retries" => parse_timeouts(line, w, timeouts, false)?,
            "log" if w.get(1).map(String::as_str) == Some("global") => {}
            "balance" => {
                return Err(err(
                    line,
                    "balance",
                    "patroni-proxy always routes to the one confirmed primary; remove the line",
                ))
            }
            _ => return Err(unknown(line, &directive_name(w), "the TCP listen")),
        }
    }
    if servers.is_empty() {
        return Err(err(0, "server", "the TCP listen has no `server` lines"));
    }
    Ok(())
}

fn parse_timeouts(
    line: usize,
    w: &[String],
    t: &mut Timeouts,
    in_defaults: bool,
) -> Result<(), ImportError> {
    match w[0].as_str() {
        "log" if in_defaults && w.get(1).map(String::as_str) == Some("global") => Ok(()),
        "mode" if in_defaults => match w.get(1).map(String::as_str) {
            Some("tcp") => Ok(()),
            _ => Err(err(line, "mode", "defaults must be `mode tcp`")),
        },
        "retries" => {
            t.retries = Some(
                w.get(1)
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| err(line, "retries", "expected a count, e.g. 2"))?,
            );
            Ok(())
        }
        "timeout" => {
            let which = w.get(1).map(String::as_str).unwrap_or("");
            let directive = format!("timeout {which}");
            let value = w
                .get(2)
                .ok_or_else(|| err(line, &directive, "missing duration"))?;
            let d = haproxy_duration(value).map_err(|m| err(line, &directive, &m))?;
            let slot = match which {
                "client" => &mut t.client,
                "server" => &mut t.server,
                "connect" => &mut t.connect,
                "check" => &mut t.check,
                "queue" => &mut t.queue,
                _ => {
                    return Err(err(
                        line,
                        &directive,
                        "supported timeouts: client, server, connect, check, queue",
                    ))
                }
            };
            *slot = Some(d);
            Ok(())
        }
        _ => Err(unknown(
            line,
            &directive_name(w),
            if in_defaults {
                "defaults"
            } else {
                "the TCP listen"
            },
        )),
    }
}

fn parse_server_params(
    line: usize,
    params: &[String],
    sd: &mut ServerDefaults,
    directive: &str,
) -> Result<(), ImportError> {
    let mut it = params.iter();
    while let Some(p) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| err(line, &format!("{directive} {name}"), "missing value"))
        };
        match p.as_str() {
            "inter" | "fastinter" | "downinter" => {
                let v = value(p)?;
                let d =
                    haproxy_duration(&v).map_err(|m| err(line, &format!("{directive} {p}"), &m))?;
                match p.as_str() {
                    "inter" => sd.inter = Some(d),
                    "fastinter" => sd.fastinter = Some(d),
                    _ => sd.downinter = Some(d),
                }
            }
            "rise" | "fall" => {
                let v = value(p)?;
                let n = v
                    .parse::<u32>()
                    .ok()
                    .and_then(NonZeroU32::new)
                    .ok_or_else(|| {
                        err(line, &format!("{directive} {p}"), "expected a count >= 1")
                    })?;
                if p == "rise" {
                    sd.rise = Some(n)
                } else {
                    sd.fall = Some(n)
                }
            }
            "on-marked-down" => {
                let v = value(p)?;
                if v != "shutdown-sessions" {
                    return Err(err(
                        line,
                        &format!("{directive} on-marked-down"),
                        "only `shutdown-sessions` is supported",
                    ));
                }
                sd.on_marked_down = Some(OnMarkedDown::ShutdownSessions);
            }
            "maxconn" => {
                let v = value(p)?;
                sd.maxconn = Some(v.parse::<u32>().ok().and_then(NonZeroU32::new).ok_or_else(
                    || {
                        err(
                            line,
                            &format!("{directive} maxconn"),
                            "expected a count >= 1",
                        )
                    },
                )?);
            }
            "port" => {
                let v = value(p)?;
                sd.port = Some(v.parse().map_err(|_| {
                    err(line, &format!("{directive} port"), "expected a port number")
                })?);
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

/// Returns the server and its check port.
fn parse_server(
    line: usize,
    w: &[String],
    sd: &ServerDefaults,
) -> Result<(Server, u16), ImportError> {
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
    parse_server_params(line, &params, &mut own, "server")?;
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
        .unwrap_or_else(|| NonZeroU32::new(100).expect("non-zero"));
    Ok((
        Server {
            name,
            address,
            maxconn,
            check_port: None,
            check_addr,
        },
        port,
    ))
}

/// HAProxy time format: a number with an optional unit (us, ms, s, m, h, d); no unit means ms.
fn haproxy_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("invalid time {s:?}: expected a number with an optional unit (ms, s, m, h, d)")
    })?;
    let d = match unit {
        "" | "ms" => Duration::from_millis(n),
        "us" => Duration::from_micros(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86400),
        _ => {
            return Err(format!(
                "invalid time unit in {s:?}: use us, ms, s, m, h or d"
            ))
        }
    };
    if d.is_zero() {
        return Err(format!("time {s:?} is zero"));
    }
    Ok(d)
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
    fn haproxy_durations() {
        assert_eq!(haproxy_duration("3s").unwrap(), Duration::from_secs(3));
        assert_eq!(haproxy_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(haproxy_duration("4000").unwrap(), Duration::from_secs(4));
        assert!(haproxy_duration("3x").is_err());
        assert!(haproxy_duration("0s").is_err());
    }

    #[test]
    fn unsupported_directives_name_their_line() {
        let text = "global\n    maxconn 100\n    daemon\n";
        let e = import(text).unwrap_err();
        assert_eq!((e.line, e.directive.as_str()), (3, "daemon"));
    }
}
