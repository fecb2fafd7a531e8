//! From the parsed sections to one listener per `listen` or `frontend` (with its `backend`):
//! its role from the check URI, its servers merged into one `[[server]]` list (one check per
//! node feeds every listener), and the one `[check]` every listener shares. Where sections
//! disagree on something the config holds once, this decides: a note when only timing or load
//! spread differ, an error naming the line when routing or the check's TLS would change.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::merge::{self, Node};
use super::proxy::Section;
use super::roles::role_of;
use super::{err, ImportError, Note, Origins};
use crate::config::{
    self, Balance, Binds, Check, Fallback, Listen, OnMarkedDown, Role, Server, Verify,
};

/// A listener to build: its frontend side and backend side (the same section for a `listen`),
/// each with the `defaults` in force where it was written.
pub(super) struct Pair<'a> {
    pub(super) fe: &'a Section,
    pub(super) fe_defaults: &'a Section,
    pub(super) be: &'a Section,
    pub(super) be_defaults: &'a Section,
}

/// What the listeners add up to.
#[derive(Default)]
pub(super) struct Built {
    pub(super) listeners: Vec<Listen>,
    pub(super) servers: Vec<Server>,
    pub(super) check: Check,
    /// The frontend `maxconn` of the first primary listener, which lowers `global.maxconn`.
    pub(super) maxconn: Option<(usize, std::num::NonZeroU32)>,
}

/// TLS paths relative to `ca-base` / `crt-base`.
#[derive(Default)]
pub(super) struct Bases {
    pub(super) ca: Option<String>,
    pub(super) crt: Option<String>,
    pub(super) verify_none: bool,
}

pub(super) fn build(
    pairs: &[Pair<'_>],
    bases: &Bases,
    notes: &mut Vec<Note>,
    origins: &mut Origins,
) -> Result<Built, ImportError> {
    let mut b = Built::default();
    let many = pairs.len() > 1;
    // Where the shared [check] values came from: (line, what) per key, the first listener's.
    let mut shared: HashMap<&'static str, (usize, String)> = HashMap::new();
    let mut by_target = merge::ByTarget::new();
    let mut primary_seen = false;
    let mut primaries = Vec::new();
    // The first primary listener sets [check] and the other shared values, whatever its place
    // in the file: it is processed first, and the listeners are written in the file's order.
    let is_primary = |p: &Pair<'_>| {
        let request = p.be.request.as_ref().or(p.be_defaults.request.as_ref());
        request.is_some_and(|r| {
            role_of(r.uri.as_deref().unwrap_or("/")).is_ok_and(|(role, _)| role == Role::Primary)
        })
    };
    let setter = pairs.iter().position(is_primary).unwrap_or(0);
    let order = std::iter::once(setter).chain((0..pairs.len()).filter(|&i| i != setter));
    let mut listeners: Vec<Option<Listen>> = vec![None; pairs.len()];
    for i in order {
        let pair = &pairs[i];
        let (fe, be) = (pair.fe, pair.be);
        let prefix = if many {
            format!("listen[{i}]")
        } else {
            "listen".into()
        };
        let mut l = Listen {
            name: fe.name.clone(),
            ..Listen::default()
        };
        let chain = (pair
            .be_defaults
            .origins
            .iter()
            .chain(&pair.fe_defaults.origins))
        .chain(&fe.origins)
        .chain(&be.origins);
        for (key, v) in chain {
            origins.insert(key.replacen("listen", &prefix, 1), v.clone());
        }
        origins.insert(format!("{prefix}.name"), (fe.line, fe.kind.clone()));

        // Addresses.
        if let Some(line) = fe.bind_tls {
            return Err(err(
                line,
                "bind ssl",
                "TLS on a PostgreSQL listener is not supported: clients negotiate TLS with \
                 PostgreSQL itself through the proxy (sslmode); remove `ssl crt ...`",
            ));
        }
        let binds: Vec<SocketAddr> = fe.binds.iter().map(|(_, a)| *a).collect();
        l.bind = Binds::new(binds).ok_or_else(|| {
            err(
                fe.line,
                &fe.kind,
                "no `bind` line: where do clients connect?",
            )
        })?;
        if let Some((line, _)) = fe.binds.first() {
            origins.insert(format!("{prefix}.bind"), (*line, "bind".into()));
        }

        // The check request decides the role.
        let request = be.request.as_ref().or(pair.be_defaults.request.as_ref());
        if let Some(line) = be.tcp_check.or(pair.be_defaults.tcp_check) {
            let why = match be.tcp_rules {
                Some(_) => "`option tcp-check` with custom `tcp-check` rules cannot be converted",
                None => "`option tcp-check` only tests that the port accepts TCP",
            };
            return Err(err(
                line,
                "option tcp-check",
                &format!("{why}: patroni-proxy routes by the node's Patroni role; write `option httpchk GET /primary` (or /replica) with `check port 8008`"),
            ));
        }
        let request = request.ok_or_else(|| {
            let line = be.servers.first().map_or(be.line, |s| s.line);
            err(
                line,
                "server",
                &format!(
                    "section `{}` has no `option httpchk`: its check only tests TCP, which says \
                     nothing of the node's role, so it routes by something patroni-proxy cannot \
                     honour; add `option httpchk GET /primary` (or /replica) with `check port 8008`",
                    be.name
                ),
            )
        })?;
        let uri = request.uri.clone().unwrap_or_else(|| "/".into());
        let (role, lag) = role_of(&uri).map_err(|m| err(request.line, &request.directive, &m))?;
        l.role = role;
        l.max_lag = lag;

        // Servers, each over its `default-server` lines.
        if be.servers.is_empty() {
            return Err(err(
                be.line,
                &be.kind,
                &format!("section `{}` has no `server` lines", be.name),
            ));
        }
        let defaults = be.default_server.over(&pair.be_defaults.default_server);
        let connect = be.connect.or(pair.be_defaults.connect);
        let mut nodes = Vec::new();
        for raw in &be.servers {
            let p = raw.params.over(&defaults);
            if p.check.is_none() {
                return Err(err(
                    raw.line,
                    "server",
                    "a server without `check`: patroni-proxy routes only to a node its check confirms; add `check port 8008`",
                ));
            }
            let check_port = p
                .port
                .map(|(_, port)| port)
                .or(connect.as_ref().and_then(|(_, (port, _))| *port))
                .ok_or_else(|| {
                    err(
                        raw.line,
                        "server",
                        "`check` without `port`: the HTTP check would go to the PostgreSQL port; add `port 8008` (Patroni's REST API)",
                    )
                })?;
            let ssl = p.ssl.map(|(_, on)| on).unwrap_or(false)
                || connect.as_ref().is_some_and(|(_, (_, ssl))| *ssl);
            nodes.push(Node {
                raw: raw.clone(),
                p,
                check_port,
                ssl,
            });
        }

        // on-marked-down: per listener, so its servers must agree.
        let omd = |n: &Node| n.p.on_marked_down.map(|(_, v)| v);
        let first = omd(&nodes[0]);
        if let Some(n) = nodes.iter().find(|n| omd(n) != first) {
            return Err(err(
                n.raw.line,
                "on-marked-down",
                "servers of one section disagree: listen.on_marked_down is one setting per listener; put it on `default-server`",
            ));
        }
        // HAProxy's default keeps the sessions of a DOWN server.
        l.on_marked_down = first.unwrap_or(OnMarkedDown::None);

        // Timeouts: the frontend's client side, the backend's server side. HAProxy ignores the
        // other side's in each (with a warning): so does the import, with a note.
        if !std::ptr::eq(fe, be) {
            ignored_sides(fe, be, notes);
        }
        let tf = fe.timeouts.clone().over(pair.fe_defaults.timeouts.clone());
        let mut t = be.timeouts.clone().over(pair.be_defaults.timeouts.clone());
        t.client = tf.client;
        if let Some(r) = t.retries {
            l.retries = r;
        }
        if let Some(d) = t.client {
            l.timeout_client = d;
        }
        if let Some(d) = t.server {
            l.timeout_server = d;
        }
        // Once a TCP session is established, HAProxy's `timeout tunnel` replaces both.
        if let Some(d) = tf.tunnel.or(t.tunnel) {
            l.timeout_client = d;
            l.timeout_server = d;
        }
        if let Some(d) = t.connect {
            l.timeout_connect = d;
        }
        l.timeout_queue = t.queue;
        let mut local = Origins::new();
        super::shared::apply_keepalive(&t, &mut l, &mut local)?;
        for (k, v) in local {
            origins.insert(k.replacen("listen", &prefix, 1), v);
        }

        // The one [check]: the first listener's (a primary one if any) sets it; the others are
        // compared with it.
        let sets_check = i == setter;
        let mut agree = |key: &'static str,
                         value: String,
                         line: usize,
                         harmless: bool|
         -> Result<(), ImportError> {
            match shared.get(key) {
                None => {
                    shared.insert(key, (line, value));
                    Ok(())
                }
                Some((_, v)) if *v == value => Ok(()),
                Some((first, v)) if harmless => {
                    notes.push(Note::new(
                        line,
                        key,
                        &format!("one check per node feeds every listener: [check] keeps {v} from line {first}"),
                    ));
                    Ok(())
                }
                Some((first, v)) => Err(err(
                    line,
                    key,
                    &format!("differs from line {first} ({v}): every node is checked the same way, once for all listeners; make them the same"),
                )),
            }
        };
        let timeout_check = t.check;
        // Notes made while `agree` holds `notes`.
        let mut unused_ca = Vec::new();
        let sline = be.servers[0].line;
        for n in &nodes {
            let p = &n.p;
            let line = n.raw.line;
            let show = |d: Option<(usize, std::time::Duration)>| {
                d.map_or("default".to_string(), |(_, d)| config::format_duration(d))
            };
            agree("inter", show(p.inter), p.inter.map_or(line, |x| x.0), true)?;
            agree(
                "fastinter",
                show(p.fastinter),
                p.fastinter.map_or(line, |x| x.0),
                true,
            )?;
            agree(
                "downinter",
                show(p.downinter),
                p.downinter.map_or(line, |x| x.0),
                true,
            )?;
            agree(
                "rise",
                p.rise.map_or("default".into(), |x| x.1.to_string()),
                p.rise.map_or(line, |x| x.0),
                true,
            )?;
            agree(
                "fall",
                p.fall.map_or("default".into(), |x| x.1.to_string()),
                p.fall.map_or(line, |x| x.0),
                true,
            )?;
            agree(
                "check-ssl",
                n.ssl.to_string(),
                p.ssl.map_or(line, |x| x.0),
                false,
            )?;
            let verify = p.verify.map(|x| x.1).unwrap_or(if bases.verify_none {
                Verify::None
            } else {
                Verify::Required
            });
            agree(
                "verify",
                verify.to_string(),
                p.verify.map_or(line, |x| x.0),
                false,
            )?;
            let ca = p.ca_file.clone().map(|(_, f)| based(&bases.ca, f));
            agree(
                "ca-file",
                format!("{ca:?}"),
                p.ca_file.as_ref().map_or(line, |x| x.0),
                false,
            )?;
            let crt = p.crt.clone().map(|(_, f)| based(&bases.crt, f));
            agree(
                "crt",
                format!("{crt:?}"),
                p.crt.as_ref().map_or(line, |x| x.0),
                false,
            )?;
            let sni = p.sni.clone().map(|(_, s)| s);
            agree(
                "check-sni",
                format!("{sni:?}"),
                p.sni.as_ref().map_or(line, |x| x.0),
                false,
            )?;
            if sets_check && n.raw.line == sline {
                let c = &mut b.check;
                if let Some((l0, d)) = p.inter {
                    c.inter = d;
                    origins.insert("check.inter".into(), (l0, "default-server inter".into()));
                }
                c.fastinter = p.fastinter.map(|x| x.1);
                c.downinter = p.downinter.map(|x| x.1);
                if let Some((l0, r)) = p.rise {
                    c.rise = r;
                    origins.insert("check.rise".into(), (l0, "default-server rise".into()));
                }
                if let Some((l0, f)) = p.fall {
                    c.fall = f;
                    origins.insert("check.fall".into(), (l0, "default-server fall".into()));
                }
                c.ssl = n.ssl;
                if n.ssl && verify == Verify::Required && ca.is_none() {
                    // HAProxy refuses this too ("verify is enabled by default but no CA file").
                    return Err(err(
                        p.ssl.map_or(line, |x| x.0),
                        "check-ssl",
                        "the certificate is verified (`verify required`, HAProxy's default) but no \
                         `ca-file` is given: add `ca-file` with Patroni's CA, or `verify none`",
                    ));
                }
                if n.ssl && verify == Verify::None && ca.is_some() {
                    unused_ca.push(Note::new(
                        p.ca_file.as_ref().map_or(line, |x| x.0),
                        "ca-file",
                        "unused with `verify none` (HAProxy ignores it too): not written",
                    ));
                }
                if n.ssl {
                    c.verify = verify;
                    c.ca_file = ca.filter(|_| verify == Verify::Required).map(Into::into);
                    c.crt = crt.map(Into::into);
                    c.sni = sni;
                }
            }
        }
        let show_t =
            |d: Option<std::time::Duration>| d.map_or("default".into(), config::format_duration);
        agree("timeout check", show_t(timeout_check), be.line, true)?;
        if sets_check {
            if let Some(d) = timeout_check {
                b.check.timeout = d;
            }
        }
        let expect = be.expect.or(pair.be_defaults.expect);
        agree(
            "http-check expect status",
            format!("{}", expect.map_or(200, |x| x.1)),
            expect.map_or(be.line, |x| x.0),
            false,
        )?;
        if let Some((line, code)) = expect {
            if sets_check {
                b.check.expect_status = code;
                origins.insert(
                    "check.expect_status".into(),
                    (line, "http-check expect status".into()),
                );
            }
        }
        notes.append(&mut unused_ca);
        // The request: a lone primary listener keeps what it sent (as before several listeners
        // existed); otherwise one GET / answers every listener with the JSON they are decided on.
        if pairs.len() == 1 && role == Role::Primary {
            if let Some(m) = request.method {
                b.check.method = m;
            }
            if let Some(u) = &request.uri {
                b.check.uri = u.clone();
            }
            if let Some(v) = request.version {
                b.check.version = v;
            }
            for key in ["check.method", "check.uri", "check.version"] {
                origins.insert(key.into(), (request.line, request.directive.clone()));
            }
        } else {
            notes.push(Note::new(
                request.line,
                &request.directive,
                &format!(
                    "listener `{}` routes by role = {role}{}; the one check of each node (GET /, \
                     whose JSON answers every role) replaces this request",
                    l.name,
                    lag.map(|g| format!(", max_lag = {g}")).unwrap_or_default()
                ),
            ));
        }

        // Backup servers, balance, fallback.
        let backups: Vec<&Node> = nodes.iter().filter(|n| n.p.backup.is_some()).collect();
        if let Some(first) = backups.first() {
            let line = first.p.backup.map_or(first.raw.line, |l| l);
            let why = match l.role {
                Role::Any => {
                    l.role = Role::Replica;
                    l.fallback = Some(Fallback::Primary);
                    "a `/read-only` section whose backup is the primary: replicas first, the \
                     primary when none qualifies (role = replica, fallback = primary)"
                }
                Role::Replica | Role::Sync | Role::Async => {
                    "backup replicas get sessions only when the others are down in HAProxy; here \
                     every listed replica shares the load (list fewer in `servers` to keep one idle)"
                }
                Role::Primary | Role::StandbyLeader => {
                    "no effect: only the node in that role passes the check, backup or not"
                }
            };
            notes.push(Note::new(line, "backup", why));
        }
        if let Some((line, algo)) = be.balance.clone().or(pair.be_defaults.balance.clone()) {
            if l.role.balances() {
                l.balance = Some(match algo.as_str() {
                    "roundrobin" | "static-rr" => Balance::Roundrobin,
                    "leastconn" => Balance::Leastconn,
                    other => {
                        notes.push(Note::new(
                            line,
                            "balance",
                            &format!("`{other}` has no equivalent: leastconn spreads the sessions"),
                        ));
                        Balance::Leastconn
                    }
                });
            } else {
                notes.push(Note::new(
                    line,
                    "balance",
                    "no effect: a primary listener routes to the one node in that role",
                ));
            }
        }

        // maxconn of the frontend: the first primary listener's lowers global.maxconn.
        if let Some(m) = fe.maxconn.or(pair.fe_defaults.maxconn) {
            if role == Role::Primary && !primary_seen {
                b.maxconn = Some(m);
            } else {
                notes.push(Note::new(
                    m.0,
                    "maxconn",
                    "one [global] maxconn bounds the sessions; this listener's own limit is not kept",
                ));
            }
        }
        primary_seen |= role == Role::Primary;

        let added = merge::add(&nodes, &mut b.servers, &mut by_target, notes, origins);
        l.servers = Some(added.names);
        l.server_port = added.server_port;
        primaries.push((i, fe.line, l.name.clone(), l.role, added.targets));
        listeners[i] = Some(l);
    }
    b.listeners = listeners.into_iter().flatten().collect();
    merge::one_cluster(&primaries)?;
    merge::finish(&mut b.listeners, &mut b.servers, &mut b.check, origins);
    Ok(b)
}

/// The lines of a frontend/backend pair that HAProxy ignores: a frontend's server-side timeouts
/// and `retries`, a backend's `timeout client` and `maxconn`.
fn ignored_sides(fe: &Section, be: &Section, notes: &mut Vec<Note>) {
    let why = |side: &str| {
        format!("HAProxy ignores it in a {side} (the other side's value applies), and so does the import")
    };
    for (key, (line, directive)) in &fe.origins {
        if !matches!(
            key.as_str(),
            "listen.timeout_client" | "listen.client_keepalive"
        ) {
            notes.push(Note::new(*line, directive, &why("frontend")));
        }
    }
    for (key, (line, directive)) in &be.origins {
        if key == "listen.timeout_client" {
            notes.push(Note::new(*line, directive, &why("backend")));
        }
    }
    if let Some((line, _)) = be.maxconn {
        notes.push(Note::new(line, "maxconn", &why("backend")));
    }
}

/// `file` relative to `base`, as HAProxy reads `ca-file`/`crt` after `ca-base`/`crt-base`.
fn based(base: &Option<String>, file: String) -> String {
    match base {
        Some(b) if !file.starts_with('/') => format!("{}/{file}", b.trim_end_matches('/')),
        _ => file,
    }
}
