//! What a reload would change, decided as a value: from the running configuration and the new one
//! to a [`Plan`] (servers kept, added, removed or changed, matched by name; the keys that apply
//! live; the keys that this version applies only at a restart). [`super`] carries it out, or
//! refuses it as a whole.
//!
//! Every section is destructured without `..`: a key added to the configuration does not compile
//! until it is sorted here into "live" or "restart".

use crate::config::{Check, Config, Etcd, Global, Listen, Log, Server, Stats};

/// The difference between two valid configurations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Servers in both, with the same settings.
    pub kept: Vec<String>,
    /// Servers only in the new configuration.
    pub added: Vec<String>,
    /// Servers only in the running configuration.
    pub removed: Vec<String>,
    /// Servers in both whose settings differ, with the keys that differ (`address`, ...).
    pub changed: Vec<(String, Vec<&'static str>)>,
    /// Keys that differ and apply live (`check.inter`, ...), in the file's order.
    pub live: Vec<&'static str>,
    /// What differs and needs a restart (a key, or what happened to a server), in the file's order.
    pub restart: Vec<String>,
}

impl Plan {
    /// Nothing needs a restart: the new configuration can replace the running one as a whole.
    pub fn applies_live(&self) -> bool {
        self.restart.is_empty()
    }

    /// What differs and applies live, for the log line (`"none"` when the file is the same): the
    /// keys, then the servers added, removed and changed.
    pub fn live_text(&self) -> String {
        let mut parts: Vec<String> = self.live.iter().map(|k| k.to_string()).collect();
        parts.extend(self.added.iter().map(|n| format!("server '{n}' added")));
        parts.extend(self.removed.iter().map(|n| format!("server '{n}' removed")));
        parts.extend(
            (self.changed.iter()).map(|(n, keys)| format!("server '{n}' ({})", keys.join(", "))),
        );
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    }
}

/// The plan of replacing `old` with `new`.
pub fn plan(old: &Config, new: &Config) -> Plan {
    let mut p = Plan::default();
    let mut key = |name: &'static str, differs: bool, live: bool| {
        if differs {
            if live {
                p.live.push(name);
            } else {
                p.restart.push(name.to_string());
            }
        }
    };

    // The accept loops' slots and threads are made once.
    let Global {
        maxconn,
        shutdown_grace,
        threads,
    } = &new.global;
    key("global.maxconn", *maxconn != old.global.maxconn, false);
    // Read when a drain begins.
    key(
        "global.shutdown_grace",
        *shutdown_grace != old.global.shutdown_grace,
        true,
    );
    key("global.threads", *threads != old.global.threads, false);

    // The listeners are made once, each with its role, membership and sockets: adding,
    // removing or renaming one needs a restart.
    let names =
        |c: &Config| -> Vec<String> { c.listen.all().iter().map(|l| l.name.clone()).collect() };
    key(
        "listen (the set of listeners)",
        names(new) != names(old),
        false,
    );
    for l in new.listen.all() {
        if let Some(o) = old.listen.all().iter().find(|o| o.name == l.name) {
            listener(&mut key, l, o);
        }
    }

    // The state owner answers each check with the delay before the next one, and builds the
    // request each checker sends: these apply from each node's next check.
    let Check {
        method,
        uri,
        version,
        expect_status,
        port,
        inter,
        fastinter,
        downinter,
        rise,
        fall,
        timeout,
        failover_inter,
        resolve_interval,
        ssl,
        verify,
        ca_file,
        crt,
        key: tls_key,
        sni,
        sql,
    } = &new.check;
    let o = &old.check;
    key("check.method", *method != o.method, true);
    key("check.uri", *uri != o.uri, true);
    key("check.version", *version != o.version, true);
    key(
        "check.expect_status",
        *expect_status != o.expect_status,
        true,
    );
    // The owner restarts the checkers whose target moved.
    key("check.port", *port != o.port, true);
    key("check.inter", *inter != o.inter, true);
    key("check.fastinter", *fastinter != o.fastinter, true);
    key("check.downinter", *downinter != o.downinter, true);
    key("check.rise", *rise != o.rise, true);
    key("check.fall", *fall != o.fall, true);
    key("check.timeout", *timeout != o.timeout, true);
    key(
        "check.failover_inter",
        *failover_inter != o.failover_inter,
        true,
    );
    // Each checker reads it before its next check.
    key(
        "check.resolve_interval",
        *resolve_interval != o.resolve_interval,
        true,
    );
    // The check carries its TLS client config, built when the file was validated: a reload
    // re-reads the PEM files and the next check of each node uses them.
    key("check.ssl", *ssl != o.ssl, true);
    key("check.verify", *verify != o.verify, true);
    key("check.ca_file", *ca_file != o.ca_file, true);
    key("check.crt", *crt != o.crt, true);
    key("check.key", *tls_key != o.key, true);
    key("check.sni", *sni != o.sni, true);
    let same_keys = (ssl, verify, ca_file, crt, tls_key, sni)
        == (&o.ssl, &o.verify, &o.ca_file, &o.crt, &o.key, &o.sni);
    // Same paths, new contents: a certificate renewed in place, picked up by a reload.
    key(
        "check TLS files (contents)",
        same_keys && new.check_tls() != old.check_tls(),
        true,
    );

    // The SQL check's spec travels with the check's (read before each check), and the gate is
    // read at each decision; a changed password file or CA file is a change too.
    key(
        "check.sql",
        *sql != o.sql || new.sql_check() != old.sql_check(),
        true,
    );

    // The stats router holds its credentials, made once with its listener; moving the stats
    // listener live is not done (yet).
    let Stats {
        bind,
        auth,
        admin_user,
        admin_password,
    } = &new.stats;
    let o = &old.stats;
    // Moved live as `listen.bind` is: bound before the old socket closes.
    key("stats.bind", *bind != o.bind, true);
    key("stats.auth", *auth != o.auth, false);
    key("stats.admin_user", *admin_user != o.admin_user, false);
    key(
        "stats.admin_password",
        *admin_password != o.admin_password,
        false,
    );

    // The watch reads its endpoints, keys, credentials, certificates and resync period when it
    // starts: adding or removing the section, or changing any key of it, needs a restart.
    match (&new.etcd, &old.etcd) {
        (Some(n), Some(o)) => {
            let Etcd {
                endpoints,
                namespace,
                scope,
                resync,
                username,
                password,
                ca_file,
                cert_file,
                key_file,
                ride_through,
            } = n;
            key("etcd.endpoints", *endpoints != o.endpoints, false);
            key("etcd.namespace", *namespace != o.namespace, false);
            key("etcd.scope", *scope != o.scope, false);
            key("etcd.resync", *resync != o.resync, false);
            key("etcd.username", *username != o.username, false);
            key("etcd.password", *password != o.password, false);
            key("etcd.ca_file", *ca_file != o.ca_file, false);
            key("etcd.cert_file", *cert_file != o.cert_file, false);
            key("etcd.key_file", *key_file != o.key_file, false);
            // Read by the state owner at each decision.
            key("etcd.ride_through", *ride_through != o.ride_through, true);
        }
        (n, o) => key("etcd", n != o, false),
    }

    // The log's format is chosen when logging is set up; the session line is decided per session.
    let Log { format, sessions } = &new.log;
    key("log.format", *format != old.log.format, false);
    key("log.sessions", *sessions != old.log.sessions, true);

    servers(&old.servers, &new.servers, &mut p);
    p
}

/// Matches servers by name. Every difference applies live (`crate::state` applies them: kept
/// servers keep their state, added ones start fail-closed, removed ones drain, a changed address
/// starts over fail-closed); the order of the sections changes nothing.
fn servers(old: &[Server], new: &[Server], p: &mut Plan) {
    for s in new {
        match old.iter().find(|o| o.name == s.name) {
            None => p.added.push(s.name.clone()),
            Some(o) => {
                let keys = server_keys(o, s);
                if keys.is_empty() {
                    p.kept.push(s.name.clone());
                } else {
                    p.changed.push((s.name.clone(), keys));
                }
            }
        }
    }
    for o in old {
        if !new.iter().any(|s| s.name == o.name) {
            p.removed.push(o.name.clone());
        }
    }
}

fn server_keys(old: &Server, new: &Server) -> Vec<&'static str> {
    let Server {
        name: _,
        address,
        maxconn,
        check_port,
        check_addr,
        member,
    } = new;
    [
        ("address", *address != old.address),
        ("maxconn", *maxconn != old.maxconn),
        ("check_port", *check_port != old.check_port),
        ("check_addr", *check_addr != old.check_addr),
        ("member", *member != old.member),
    ]
    .into_iter()
    .filter_map(|(k, differs)| differs.then_some(k))
    .collect()
}

/// The keys of one listener present in both configurations.
fn listener(key: &mut impl FnMut(&'static str, bool, bool), new: &Listen, o: &Listen) {
    // Sessions read these when they start (or at the phase that uses them): from the next session.
    let Listen {
        name,
        bind,
        role,
        balance,
        max_lag,
        fallback,
        servers,
        server_port,
        retries,
        timeout_connect,
        timeout_client,
        timeout_server,
        timeout_queue,
        on_marked_down,
        hold_timeout,
        inspect_startup,
        client_keepalive,
        server_keepalive,
        keepalive_idle,
        keepalive_interval,
        keepalive_count,
        relay,
        kernel_after,
    } = new;
    // Listeners are matched by name: a renamed one is in the set of listeners above.
    key("listen.name", *name != o.name, false);
    // Moved live: the new socket is bound before the old one closes (`crate::proxy::Moves`).
    // One address moves live; a second one is a socket the runtime makes at start.
    let single = bind.all().len() == 1 && o.bind.all().len() == 1;
    key("listen.bind", *bind != o.bind, single);
    // Membership rules are built with the listener.
    key("listen.role", *role != o.role, false);
    key("listen.balance", *balance != o.balance, false);
    key("listen.max_lag", *max_lag != o.max_lag, false);
    key("listen.fallback", *fallback != o.fallback, false);
    key("listen.servers", *servers != o.servers, false);
    // Read by each connect.
    key("listen.server_port", *server_port != o.server_port, true);
    key("listen.retries", *retries != o.retries, true);
    key(
        "listen.timeout_connect",
        *timeout_connect != o.timeout_connect,
        true,
    );
    key(
        "listen.timeout_client",
        *timeout_client != o.timeout_client,
        true,
    );
    key(
        "listen.timeout_server",
        *timeout_server != o.timeout_server,
        true,
    );
    key(
        "listen.timeout_queue",
        *timeout_queue != o.timeout_queue,
        true,
    );
    key(
        "listen.on_marked_down",
        *on_marked_down != o.on_marked_down,
        true,
    );
    key("listen.hold_timeout", *hold_timeout != o.hold_timeout, true);
    key(
        "listen.inspect_startup",
        *inspect_startup != o.inspect_startup,
        true,
    );
    key(
        "listen.client_keepalive",
        *client_keepalive != o.client_keepalive,
        true,
    );
    key(
        "listen.server_keepalive",
        *server_keepalive != o.server_keepalive,
        true,
    );
    key(
        "listen.keepalive_idle",
        *keepalive_idle != o.keepalive_idle,
        true,
    );
    key(
        "listen.keepalive_interval",
        *keepalive_interval != o.keepalive_interval,
        true,
    );
    key(
        "listen.keepalive_count",
        *keepalive_count != o.keepalive_count,
        true,
    );
    // The BPF program is loaded (or found unavailable) at start.
    key("listen.relay", *relay != o.relay, false);
    key("listen.kernel_after", *kernel_after != o.kernel_after, true);
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
