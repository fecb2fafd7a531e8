//! A proxy section (`defaults`, `listen`, `frontend`, `backend`) read into a [`Section`]: its
//! addresses, the backend it uses, its check request, `default-server` and `server` lines,
//! `balance`, `maxconn`, timeouts. What it means (which role, which listener) is decided in
//! `assemble`.

use std::net::SocketAddr;
use std::num::NonZeroU32;

use super::noop::no_effect;
use super::sections::Line;
use super::server::{parse_params, parse_server, At, Params, RawServer};
use super::shared::{parse_shared, Timeouts};
use super::{directive_name, err, nonzero, ImportError, Note, Origins};
use crate::config::{self, CheckMethod, HttpVersion};

/// The check request a section's `option httpchk` / `http-check send` lines build.
#[derive(Debug, Clone, Default)]
pub(super) struct Request {
    pub(super) line: usize,
    pub(super) directive: String,
    pub(super) method: Option<CheckMethod>,
    pub(super) uri: Option<String>,
    pub(super) version: Option<HttpVersion>,
}

/// One proxy section as written.
#[derive(Debug, Default, Clone)]
pub(super) struct Section {
    pub(super) line: usize,
    pub(super) kind: String,
    pub(super) name: String,
    pub(super) mode: At<String>,
    pub(super) binds: Vec<(usize, SocketAddr)>,
    pub(super) maxconn: At<NonZeroU32>,
    pub(super) backend: At<String>,
    pub(super) request: Option<Request>,
    /// The line of `option tcp-check`, when it came after any `option httpchk` (the last wins).
    pub(super) tcp_check: Option<usize>,
    /// The first `tcp-check` rule line.
    pub(super) tcp_rules: Option<usize>,
    pub(super) connect: At<(Option<u16>, bool)>,
    pub(super) expect: At<u16>,
    pub(super) default_server: Params,
    pub(super) servers: Vec<RawServer>,
    pub(super) balance: At<String>,
    pub(super) timeouts: Timeouts,
    pub(super) origins: Origins,
    /// The lines of `stats` directives (the stats page).
    pub(super) stats: Vec<Line>,
    /// A `bind` line with `ssl`: refused for PostgreSQL, adapted for the stats page.
    pub(super) bind_tls: Option<usize>,
    /// A line that answers HTTP itself (`monitor-uri`, `http-request return`).
    pub(super) serves_http: Option<usize>,
    /// Lines this file notes as having no effect, reported only when the section is converted.
    pub(super) notes: Vec<Note>,
    /// A `use_backend` that picks the backend per request (a sample expression or an ACL): the
    /// error to give if the section proxies PostgreSQL.
    pub(super) per_request: Option<ImportError>,
}

impl Section {
    /// The mode in effect: the section's own, else the `defaults` one, else HAProxy's `tcp`.
    pub(super) fn mode<'a>(&'a self, defaults: &'a Section) -> &'a str {
        self.mode
            .as_ref()
            .or(defaults.mode.as_ref())
            .map_or("tcp", |(_, m)| m.as_str())
    }
}

/// Reads one section's lines.
pub(super) fn parse_section(
    kind: &str,
    name: &str,
    line: usize,
    body: &[Line],
) -> Result<Section, ImportError> {
    let mut s = Section {
        line,
        kind: kind.into(),
        name: name.into(),
        ..Section::default()
    };
    for Line { line, w } in body {
        let line = *line;
        let word = |i: usize| w.get(i).map(String::as_str);
        match (w[0].as_str(), word(1)) {
            ("mode", Some(m @ ("tcp" | "http"))) => s.mode = Some((line, m.into())),
            ("bind", _) => parse_bind(line, w, &mut s)?,
            ("maxconn", _) => s.maxconn = Some((line, nonzero(line, w, 1)?)),
            ("default_backend", Some(b)) => s.backend = Some((line, b.into())),
            // Refused only if the section proxies PostgreSQL: an HTTP frontend routing by Host
            // header is left out whole, as any HTTP section is (its mode is known later).
            ("use_backend", Some(_)) if s.per_request.is_some() => {}
            ("use_backend", Some(b)) => {
                if b.contains("%[") {
                    s.per_request = Some(err(
                        line,
                        "use_backend",
                        "a backend chosen per request (a sample expression) cannot be \
                         converted: patroni-proxy routes a listener by node role; give each \
                         backend its own frontend and port",
                    ));
                    continue;
                }
                if w.len() > 2 {
                    s.per_request = Some(err(
                        line,
                        "use_backend",
                        "a conditional `use_backend ... if/unless` routes by an ACL, which \
                         patroni-proxy cannot: give each backend its own frontend and port \
                         (one listener per role)",
                    ));
                    continue;
                }
                s.backend = Some((line, b.into()));
            }
            ("option", Some("httpchk")) => {
                s.request = Some(parse_httpchk(line, w)?);
                if let Some(tcp) = s.tcp_check.take() {
                    s.notes.push(Note::new(
                        tcp,
                        "option tcp-check",
                        &format!("replaced by `option httpchk` on line {line}: the last check option wins, as in HAProxy"),
                    ));
                }
            }
            ("option", Some("tcp-check")) => s.tcp_check = Some(line),
            ("tcp-check", _) => {
                s.tcp_rules.get_or_insert(line);
            }
            ("http-check", Some("send")) => parse_send(line, w, &mut s)?,
            ("http-check", Some("connect")) => parse_connect(line, w, &mut s)?,
            ("http-check", Some("expect")) => {
                let code = match (word(2), word(3), w.len()) {
                    (Some("status"), Some(c), 4) => c.parse::<u16>().ok(),
                    _ => None,
                };
                let code = code.ok_or_else(|| {
                    err(
                        line,
                        "http-check expect",
                        "only `http-check expect status CODE` is supported (Patroni answers \
                         with the status)",
                    )
                })?;
                s.expect = Some((line, code));
            }
            ("http-check", Some("disable-on-404")) => s.notes.push(Note::new(
                line,
                "http-check disable-on-404",
                "Patroni never answers 404 to a role check",
            )),
            ("default-server", _) => {
                s.default_server = parse_params(line, &w[1..], "default-server", &mut s.notes)?
            }
            ("server", _) => {
                let server = parse_server(line, w, &mut s.notes)?;
                s.servers.push(server);
            }
            ("server-template", _) => {
                return Err(err(
                    line,
                    "server-template",
                    "servers discovered through DNS/Consul are not supported: list each node \
                     with a `server NAME IP:PORT check port 8008` line",
                ))
            }
            ("balance", Some(b)) => s.balance = Some((line, b.into())),
            ("tcp-request" | "tcp-response", _) => {
                return Err(err(
                    line,
                    &w[0],
                    "TCP content rules (accept/reject/route by inspection) are not supported: \
                     patroni-proxy admits every client and routes by role; filter clients in \
                     pg_hba.conf or a firewall",
                ))
            }
            // Kept with the stats lines: the stats page's access rules refer to them.
            ("acl", Some(_)) => {
                s.stats.push(Line { line, w: w.clone() });
                if let Some(why) = no_effect(kind, w) {
                    s.notes.push(Note::new(line, "acl", why));
                }
            }
            ("stats", Some(_)) => s.stats.push(Line { line, w: w.clone() }),
            ("http-request", Some("return")) => {
                s.serves_http.get_or_insert(line);
            }
            ("monitor-uri", _) => {
                s.serves_http.get_or_insert(line);
            }
            ("http-request" | "http-response", _) => s.stats.push(Line { line, w: w.clone() }),
            (
                "retries" | "timeout" | "clitcpka-idle" | "srvtcpka-idle" | "clitcpka-intvl"
                | "srvtcpka-intvl" | "clitcpka-cnt" | "srvtcpka-cnt",
                _,
            ) if no_effect(kind, w).is_none() => {
                parse_shared(line, w, &mut s.timeouts, kind == "defaults", &mut s.origins)?
            }
            ("option" | "no", Some(_))
                if matches!(
                    w.iter()
                        .find(|x| *x != "no" && *x != "option")
                        .map(String::as_str),
                    Some("clitcpka" | "srvtcpka" | "tcpka")
                ) =>
            {
                parse_shared(line, w, &mut s.timeouts, kind == "defaults", &mut s.origins)?
            }
            _ => {
                match no_effect(kind, w) {
                    // `log global` only points at `global`'s log lines, which are reported there.
                    Some(_) if w[0] == "log" && word(1) == Some("global") => {}
                    Some(why) => s.notes.push(Note::new(line, &directive_name(w), why)),
                    None => {
                        return Err(err(
                            line,
                            &directive_name(w),
                            &format!(
                            "not supported in a `{kind}` section, and not known to change nothing"
                        ),
                        ))
                    }
                }
            }
        }
    }
    Ok(s)
}

/// `bind ADDR[,ADDR...] [options]`: `*:P`, `:P`, `IP:P`, `[IPv6]:P`.
fn parse_bind(line: usize, w: &[String], s: &mut Section) -> Result<(), ImportError> {
    let addrs = w
        .get(1)
        .ok_or_else(|| err(line, "bind", "expected an address"))?;
    if w.get(2).is_some_and(|o| o == "ssl") {
        // Decided once the section is known to be the stats page or not.
        s.bind_tls = Some(line);
    } else if let Some(opt) = w.get(2) {
        let why = match opt.as_str() {
            "accept-proxy" => "the PROXY protocol is not supported",
            _ => "bind options are not supported: write the address only",
        };
        return Err(err(line, &format!("bind {opt}"), why));
    }
    for a in addrs.split(',') {
        let a = strip_family(a);
        // HAProxy writes every IPv6 address as `:::PORT`.
        let a = match a.strip_prefix(":::") {
            Some(port) => format!("[::]:{port}"),
            None => a.to_string(),
        };
        let addr = config::parse_bind(&a).map_err(|m| err(line, "bind", &m))?;
        s.binds.push((line, addr));
    }
    Ok(())
}

/// An address without HAProxy's `ipv4@` / `ipv6@` family prefix.
pub(super) fn strip_family(a: &str) -> &str {
    a.strip_prefix("ipv4@")
        .or_else(|| a.strip_prefix("ipv6@"))
        .unwrap_or(a)
}

/// `option httpchk`, `option httpchk URI`, `option httpchk METHOD URI [VERSION]`.
fn parse_httpchk(line: usize, w: &[String]) -> Result<Request, ImportError> {
    let directive = "option httpchk";
    let refused =
        |key: &str, m: String| err(line, directive, &format!("{m} (`{key}` in proxy.toml)"));
    let mut r = Request {
        line,
        directive: directive.into(),
        ..Request::default()
    };
    let args = &w[2..];
    match args.len() {
        0 => {}
        1 => r.uri = Some(args[0].clone()),
        2 | 3 => {
            r.method = Some(args[0].parse().map_err(|m| refused("check.method", m))?);
            r.uri = Some(args[1].clone());
            if let Some(v) = args.get(2) {
                if v.contains("\\r") || v.contains('\r') {
                    return Err(err(
                        line,
                        directive,
                        "headers smuggled in the version field are not supported",
                    ));
                }
                r.version = Some(v.parse().map_err(|m| refused("check.version", m))?);
            }
        }
        _ => return Err(err(line, directive, "expected at most METHOD URI VERSION")),
    }
    Ok(r)
}

/// `http-check send [meth M] [uri U] [ver V]` (HAProxy 2.2+), over `option httpchk`'s values.
fn parse_send(line: usize, w: &[String], s: &mut Section) -> Result<(), ImportError> {
    let directive = "http-check send";
    let mut r = s.request.clone().unwrap_or_default();
    r.line = line;
    r.directive = directive.into();
    let mut it = w[2..].iter();
    while let Some(kw) = it.next() {
        let v = it
            .next()
            .ok_or_else(|| err(line, directive, &format!("`{kw}` without a value")))?;
        match kw.as_str() {
            "meth" => r.method = Some(v.parse().map_err(|m: String| err(line, directive, &m))?),
            "uri" => r.uri = Some(v.clone()),
            "ver" => r.version = Some(v.parse().map_err(|m: String| err(line, directive, &m))?),
            "hdr" | "body" | "uri-lf" | "body-lf" => {
                return Err(err(
                    line,
                    &format!("{directive} {kw}"),
                    "custom headers and bodies are not sent: Patroni's role checks need none",
                ))
            }
            other => {
                return Err(err(
                    line,
                    &format!("{directive} {other}"),
                    "expected meth, uri or ver",
                ))
            }
        }
    }
    s.request = Some(r);
    s.tcp_check = None;
    Ok(())
}

/// `http-check connect [port P] [ssl]`: where and how the check connects.
fn parse_connect(line: usize, w: &[String], s: &mut Section) -> Result<(), ImportError> {
    let (mut port, mut ssl) = (None, false);
    let mut it = w[2..].iter();
    while let Some(kw) = it.next() {
        match kw.as_str() {
            "port" => {
                port = Some(
                    it.next()
                        .and_then(|p| p.parse::<u16>().ok())
                        .filter(|&p| p > 0)
                        .ok_or_else(|| err(line, "http-check connect port", "expected a port"))?,
                )
            }
            "ssl" => ssl = true,
            other => {
                return Err(err(
                    line,
                    &format!("http-check connect {other}"),
                    "only `port P` and `ssl` are supported",
                ))
            }
        }
    }
    s.connect = Some((line, (port, ssl)));
    Ok(())
}
