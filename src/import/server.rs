//! `server` and `default-server` lines: the node's address, its check target, its check timing
//! and TLS, `backup` and `maxconn`. Each value keeps its line, so that a disagreement the
//! config cannot carry (one check schedule, one TLS setup for every node) names it.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use super::shared::{haproxy_duration, Unit};
use super::{err, ImportError, Note};
use crate::config::{OnMarkedDown, ServerAddr, Verify};

/// A value and the line that set it.
pub(super) type At<T> = Option<(usize, T)>;

/// What a `server` or `default-server` line sets.
#[derive(Debug, Default, Clone)]
pub(super) struct Params {
    pub(super) inter: At<Duration>,
    pub(super) fastinter: At<Duration>,
    pub(super) downinter: At<Duration>,
    pub(super) rise: At<NonZeroU32>,
    pub(super) fall: At<NonZeroU32>,
    pub(super) on_marked_down: At<OnMarkedDown>,
    pub(super) maxconn: At<NonZeroU32>,
    pub(super) port: At<u16>,
    pub(super) addr: At<IpAddr>,
    pub(super) check: Option<usize>,
    pub(super) ssl: At<bool>,
    pub(super) verify: At<Verify>,
    pub(super) ca_file: At<String>,
    pub(super) crt: At<String>,
    pub(super) sni: At<String>,
    pub(super) backup: Option<usize>,
}

impl Params {
    /// A server line's own values over its section's `default-server`.
    pub(super) fn over(&self, d: &Params) -> Params {
        Params {
            inter: self.inter.or(d.inter),
            fastinter: self.fastinter.or(d.fastinter),
            downinter: self.downinter.or(d.downinter),
            rise: self.rise.or(d.rise),
            fall: self.fall.or(d.fall),
            on_marked_down: self.on_marked_down.or(d.on_marked_down),
            maxconn: self.maxconn.or(d.maxconn),
            port: self.port.or(d.port),
            addr: self.addr.or(d.addr),
            check: self.check.or(d.check),
            ssl: self.ssl.or(d.ssl),
            verify: self.verify.or(d.verify),
            ca_file: self.ca_file.clone().or(d.ca_file.clone()),
            crt: self.crt.clone().or(d.crt.clone()),
            sni: self.sni.clone().or(d.sni.clone()),
            backup: self.backup.or(d.backup),
        }
    }
}

/// One `server NAME ADDR:PORT ...` line.
#[derive(Debug, Clone)]
pub(super) struct RawServer {
    pub(super) line: usize,
    pub(super) name: String,
    pub(super) address: ServerAddr,
    pub(super) params: Params,
}

/// Parses `server NAME ADDR:PORT PARAMS...`.
pub(super) fn parse_server(
    line: usize,
    w: &[String],
    notes: &mut Vec<Note>,
) -> Result<RawServer, ImportError> {
    let usage = "expected `server NAME IP:PORT ...`";
    let name = w.get(1).ok_or_else(|| err(line, "server", usage))?.clone();
    let addr_text = w.get(2).ok_or_else(|| err(line, "server", usage))?;
    let addr_text = super::proxy::strip_family(addr_text);
    // A host name is kept as written: the proxy resolves it when it runs, as HAProxy does at
    // start-up (`init-addr libc`), and again every `check.resolve_interval`.
    let address: ServerAddr = addr_text
        .parse()
        .map_err(|e: String| err(line, "server", &e))?;
    let params = parse_params(line, &w[3..], "server", notes)?;
    Ok(RawServer {
        line,
        name,
        address,
        params,
    })
}

/// The keywords of a `server` or `default-server` line.
pub(super) fn parse_params(
    line: usize,
    params: &[String],
    directive: &str,
    notes: &mut Vec<Note>,
) -> Result<Params, ImportError> {
    let mut p = Params::default();
    let mut it = params.iter();
    while let Some(kw) = it.next() {
        let here = format!("{directive} {kw}");
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| err(line, &here, "missing value"))
        };
        let count = |v: String| {
            v.parse::<u32>()
                .ok()
                .and_then(NonZeroU32::new)
                .ok_or_else(|| err(line, &format!("{directive} {kw}"), "expected a count >= 1"))
        };
        let time = |v: String| {
            haproxy_duration(&v, Unit::Millis)
                .map_err(|m| err(line, &format!("{directive} {kw}"), &m))
        };
        match kw.as_str() {
            "inter" => p.inter = Some((line, time(value()?)?)),
            "fastinter" => p.fastinter = Some((line, time(value()?)?)),
            "downinter" => p.downinter = Some((line, time(value()?)?)),
            "rise" => p.rise = Some((line, count(value()?)?)),
            "fall" => p.fall = Some((line, count(value()?)?)),
            "maxconn" => p.maxconn = Some((line, count(value()?)?)),
            "on-marked-down" => {
                let v = value()?;
                if v != "shutdown-sessions" {
                    return Err(err(
                        line,
                        &here,
                        "only `shutdown-sessions` is supported (listen.on_marked_down)",
                    ));
                }
                p.on_marked_down = Some((line, OnMarkedDown::ShutdownSessions));
            }
            "port" => {
                let v = value()?;
                let port = v
                    .parse::<u16>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| err(line, &here, "expected a port number"))?;
                p.port = Some((line, port));
            }
            "addr" => {
                let v = value()?;
                let ip = v.parse().map_err(|_| {
                    err(
                        line,
                        &here,
                        "expected an IP address (host names are not supported yet)",
                    )
                })?;
                p.addr = Some((line, ip));
            }
            "check" => p.check = Some(line),
            "check-ssl" => p.ssl = Some((line, true)),
            "no-check-ssl" => p.ssl = Some((line, false)),
            "verify" => {
                let v = value()?;
                let verify = match v.as_str() {
                    "none" => Verify::None,
                    "required" => Verify::Required,
                    _ => return Err(err(line, &here, "expected `none` or `required`")),
                };
                p.verify = Some((line, verify));
            }
            "ca-file" => p.ca_file = Some((line, value()?)),
            "crt" => p.crt = Some((line, value()?)),
            "check-sni" | "verifyhost" => {
                let v = value()?;
                if let Some((first, ref name)) = p.sni {
                    if *name != v {
                        return Err(err(
                            line,
                            &here,
                            &format!(
                                "differs from the name on line {first}: [check] sni is one name"
                            ),
                        ));
                    }
                }
                p.sni = Some((line, v));
            }
            "backup" => p.backup = Some(line),
            "weight" => {
                let v = value()?;
                if v == "0" {
                    return Err(err(
                        line,
                        &here,
                        "weight 0 takes the server out of the balance: remove it from this \
                         section instead (listen.servers)",
                    ));
                }
                notes.push(Note::new(
                    line,
                    "weight",
                    "nodes are balanced without weights (leastconn or roundrobin over every \
                     qualifying node)",
                ));
            }
            "slowstart" => {
                value()?;
                notes.push(Note::new(
                    line,
                    "slowstart",
                    "a node back UP takes its full share at once; patroni-proxy has no ramp-up",
                ));
            }
            "maxqueue" => {
                value()?;
                notes.push(Note::new(
                    line,
                    "maxqueue",
                    "the queue of a server at its maxconn is bounded by listen.timeout_queue only",
                ));
            }
            "on-marked-up" => {
                value()?;
                notes.push(Note::new(
                    line,
                    "on-marked-up",
                    "no backup servers here: a node coming UP ends no session elsewhere",
                ));
            }
            "resolvers" | "resolve-prefer" | "init-addr" | "resolve-opts" | "resolve-net" => {
                return Err(err(
                    line,
                    &here,
                    "DNS service discovery is not supported: list each node with its IP address",
                ))
            }
            "ssl" => {
                return Err(err(
                    line,
                    &here,
                    "TLS to the server on the PostgreSQL port is not supported: patroni-proxy \
                     relays the client's own TLS; for an HTTPS check use `check-ssl`",
                ))
            }
            kw if kw.starts_with("send-proxy") => {
                return Err(err(
                    line,
                    &here,
                    "the PROXY protocol is not supported: remove it (and PostgreSQL's proxy \
                     settings)",
                ))
            }
            other => {
                return Err(err(
                    line,
                    &format!("{directive} {other}"),
                    "not supported: accepted are check, port, addr, inter, fastinter, downinter, \
                     rise, fall, on-marked-down, on-marked-up, maxconn, maxqueue, weight, \
                     slowstart, backup, check-ssl, verify, ca-file, crt, check-sni, verifyhost",
                ))
            }
        }
    }
    Ok(p)
}
