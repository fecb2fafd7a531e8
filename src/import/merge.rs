//! One `[[server]]` list from every listener's `server` lines: a node is its address and check
//! target, listed once whatever the sections that route to it, so one check feeds them all. Also
//! what only the whole list shows: two clusters in one file, listeners over every server, one
//! shared check port.

use std::collections::HashMap;

use super::server::{Params, RawServer};
use super::{err, ImportError, Note, Origins};
use crate::config::{self, Check, Host, Listen, Role, Server, ServerAddr};

/// A server of some listener, before the lists are merged: its line, its parameters over
/// `default-server`, where and how it is checked.
pub(super) struct Node {
    pub(super) raw: RawServer,
    pub(super) p: Params,
    pub(super) check_port: u16,
    pub(super) ssl: bool,
}

/// The servers known so far, by (PostgreSQL address, check target).
pub(super) type ByTarget = HashMap<(ServerAddr, ServerAddr), usize>;

/// Where a node's check goes: its `addr` or its host, and its check port.
fn target_of(n: &Node) -> ServerAddr {
    ServerAddr {
        host: n
            .p
            .addr
            .map_or(n.raw.address.host.clone(), |(_, ip)| Host::Ip(ip)),
        port: n.check_port,
    }
}

/// A listener whose every node is a known server (same host, same check) on one other PostgreSQL
/// port: the same cluster served on another port (Pigsty's pgbouncer port 6432 and PostgreSQL's
/// 5432). Returns that port and the servers, in the listener's order.
fn on_another_port(nodes: &[Node], by_target: &ByTarget) -> Option<(u16, Vec<usize>)> {
    let mut port = None;
    let mut found = Vec::new();
    for n in nodes {
        let target = target_of(n);
        if by_target.contains_key(&(n.raw.address.clone(), target.clone())) {
            return None;
        }
        let (_, &i) = by_target.iter().find(|((a, t), _)| {
            a.host == n.raw.address.host && *t == target && a.port != n.raw.address.port
        })?;
        if *port.get_or_insert(n.raw.address.port) != n.raw.address.port {
            return None;
        }
        found.push(i);
    }
    Some((port?, found))
}

/// What a listener's nodes became: the server names it routes to, their check targets, and the
/// PostgreSQL port it connects to when that is not the servers' own (`listen.server_port`).
pub(super) struct Added {
    pub(super) names: Vec<String>,
    pub(super) targets: Vec<ServerAddr>,
    pub(super) server_port: Option<u16>,
}

/// Adds a listener's nodes.
pub(super) fn add(
    nodes: &[Node],
    servers: &mut Vec<Server>,
    by_target: &mut ByTarget,
    notes: &mut Vec<Note>,
    origins: &mut Origins,
) -> Added {
    if let Some((port, found)) = on_another_port(nodes, by_target) {
        let names: Vec<String> = found.iter().map(|&i| servers[i].name.clone()).collect();
        if let Some(n) = nodes.first() {
            notes.push(Note::new(
                n.raw.line,
                "server",
                &format!(
                    "the same nodes as servers {} (same hosts, same checks) on PostgreSQL port \
                     {port}: this listener connects to them there (server_port = {port})",
                    names.join(", ")
                ),
            ));
        }
        return Added {
            names,
            targets: nodes.iter().map(target_of).collect(),
            server_port: Some(port),
        };
    }
    let mut names = Vec::new();
    let mut targets = Vec::new();
    for n in nodes {
        const NAMED: &str = "server (host name)";
        if n.raw.address.name().is_some() && !notes.iter().any(|x| x.directive == NAMED) {
            notes.push(Note::new(
                n.raw.line,
                NAMED,
                "host names are kept: patroni-proxy resolves them when it runs and again every \
                 check.resolve_interval (10s), where HAProxy without `resolvers` resolves them \
                 once at start-up; a name that does not resolve fails that server's checks \
                 instead of stopping the start",
            ));
        }
        let target = target_of(n);
        targets.push(target.clone());
        let key = (n.raw.address.clone(), target);
        let maxconn = n.p.maxconn.map_or(config::DEFAULT_MAXCONN, |(_, m)| m);
        let idx = match by_target.get(&key) {
            Some(&idx) => {
                let s = &mut servers[idx];
                if s.maxconn != maxconn {
                    let kept = s.maxconn.max(maxconn);
                    notes.push(Note::new(
                        n.raw.line,
                        "maxconn",
                        &format!(
                            "server `{}` has one maxconn for every listener: the larger, {kept}, \
                             is kept",
                            s.name
                        ),
                    ));
                    s.maxconn = kept;
                }
                idx
            }
            None => {
                let mut name = n.raw.name.clone();
                if servers.iter().any(|s| s.name == name) {
                    name = format!("{}_{}", n.raw.name, n.raw.address.port());
                    notes.push(Note::new(
                        n.raw.line,
                        "server",
                        &format!(
                            "another section has a `{}` at another address: this one is \
                             `{name}`, checked on its own",
                            n.raw.name
                        ),
                    ));
                }
                let j = servers.len();
                let line = n.raw.line;
                origins.insert(format!("server[{j}].name"), (line, "server".into()));
                origins.insert(format!("server[{j}].address"), (line, "server".into()));
                let mline = n.p.maxconn.map_or(line, |(l, _)| l);
                let mdir = if mline == line {
                    "server maxconn"
                } else {
                    "default-server maxconn"
                };
                origins.insert(format!("server[{j}].maxconn"), (mline, mdir.into()));
                servers.push(Server {
                    name,
                    address: n.raw.address.clone(),
                    maxconn,
                    check_port: Some(n.check_port),
                    check_addr: n.p.addr.map(|(_, ip)| ip),
                    // Learned from each node's REST answer (`patroni.name`) when not given.
                    member: None,
                });
                by_target.insert(key, j);
                j
            }
        };
        names.push(servers[idx].name.clone());
    }
    Added {
        names,
        targets,
        server_port: None,
    }
}

/// A listener as the cluster rule sees it: index, header line, name, role, check targets.
pub(super) type Routed = (usize, usize, String, Role, Vec<ServerAddr>);

/// Two primary listeners checking disjoint nodes route to two primaries at once: two Patroni
/// clusters (Citus groups) in one file, where the runtime follows one. (The same node on two
/// PostgreSQL ports, pgbouncer's and PostgreSQL's, is the same node: its check target.)
pub(super) fn one_cluster(listeners: &[Routed]) -> Result<(), ImportError> {
    for (i, _, a, role_a, sa) in listeners {
        for (j, line, b, role_b, sb) in listeners {
            let primary = *role_a == Role::Primary && *role_b == Role::Primary;
            if i < j && primary && !sa.iter().any(|n| sb.contains(n)) {
                return Err(err(
                    *line,
                    b,
                    &format!(
                        "listeners `{a}` and `{b}` both route to the primary but share no node: \
                         they are two Patroni clusters (or Citus groups), and patroni-proxy follows \
                         one cluster per configuration; write one configuration per cluster"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// A listener over every server needs no `servers` list; one check port shared by every server
/// is `check.port`.
pub(super) fn finish(
    listeners: &mut [Listen],
    servers: &mut [Server],
    check: &mut Check,
    origins: &mut Origins,
) {
    let mut every: Vec<&String> = servers.iter().map(|s| &s.name).collect();
    every.sort();
    for l in listeners {
        if let Some(names) = &l.servers {
            let mut sorted: Vec<&String> = names.iter().collect();
            sorted.sort();
            if sorted == every {
                l.servers = None;
            }
        }
    }
    let ports: Vec<u16> = servers.iter().filter_map(|s| s.check_port).collect();
    if let Some(&first) = ports.first() {
        if ports.iter().all(|&p| p == first) {
            check.port = first;
            if let Some(line) = origins.get("server[0].name").map(|x| x.0) {
                origins.insert("check.port".into(), (line, "server port".into()));
            }
        }
    }
    let port = check.port;
    for s in servers {
        if s.check_port == Some(port) {
            s.check_port = None;
        }
    }
}
