//! The TCP listen (`bind`, `option httpchk`, `http-check expect status`, `default-server`, `server`
//! lines) and the stats listen, written into the config's sections.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Duration;

use super::shared::{haproxy_duration, parse_shared, Timeouts, Unit};
use super::{err, nonzero, note, unknown, ImportError, Origins};
use crate::config::{self, Check, Listen, OnMarkedDown, Server, Stats};

/// `default-server` settings (and a `server` line's own, which may only set `maxconn` and `port`).
#[derive(Debug, Default, Clone)]
pub(super) struct ServerDefaults {
    pub(super) inter: Option<Duration>,
    pub(super) fastinter: Option<Duration>,
    pub(super) downinter: Option<Duration>,
    pub(super) rise: Option<NonZeroU32>,
    pub(super) fall: Option<NonZeroU32>,
    pub(super) on_marked_down: Option<OnMarkedDown>,
    pub(super) maxconn: Option<NonZeroU32>,
    pub(super) port: Option<u16>,
}

pub(super) fn parse_stats(
    body: &[(usize, Vec<String>)],
    stats: &mut Stats,
) -> Result<(), ImportError> {
    let mut admin_line = None;
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
            // HAProxy's admin level for the `stats auth` users: our runtime control, with those
            // credentials. Only the unconditional form: we have no ACLs to carry a condition over.
            ("stats", Some("admin")) => {
                let words: Vec<&str> = w[2..].iter().map(String::as_str).collect();
                if words != ["if", "TRUE"] {
                    return Err(err(
                        line,
                        "stats admin",
                        "only `stats admin if TRUE` can be imported (patroni-proxy has no ACLs); \
                         it turns on [stats] admin_user / admin_password",
                    ));
                }
                admin_line = Some(line);
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

/// Everything the TCP listen's lines write to.
pub(super) struct Proxy<'a> {
    pub(super) listen: &'a mut Listen,
    pub(super) check: &'a mut Check,
    pub(super) sd: &'a mut ServerDefaults,
    pub(super) timeouts: &'a mut Timeouts,
    pub(super) servers: &'a mut Vec<(usize, Vec<String>)>,
    pub(super) frontend_maxconn: &'a mut Option<(usize, NonZeroU32)>,
    pub(super) origins: &'a mut Origins,
}

pub(super) fn parse_proxy(
    body: &[(usize, Vec<String>)],
    p: &mut Proxy<'_>,
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
pub(super) fn parse_server(
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
            member: None,
        },
        port,
        own.maxconn.is_some(),
    ))
}
