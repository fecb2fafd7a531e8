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

    /// The keys that differ and apply live, for the log line (`"none"` when the file is the same).
    pub fn live_text(&self) -> String {
        if self.live.is_empty() {
            "none".into()
        } else {
            self.live.join(", ")
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

    // Sessions read these when they start (or at the phase that uses them): from the next session.
    let Listen {
        name,
        bind,
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
    } = &new.listen;
    let o = &old.listen;
    // The proxy's name labels every metric series, registered once.
    key("listen.name", *name != o.name, false);
    // Moved live: the new socket is bound before the old one closes (`crate::proxy::Moves`).
    key("listen.bind", *bind != o.bind, true);
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
    // Each checker's target address is fixed when it starts.
    key("check.port", *port != o.port, false);
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

    // The stats router holds its credentials, made once with its listener; moving the stats
    // listener live is not done (yet).
    let Stats {
        bind,
        auth,
        admin_user,
        admin_password,
    } = &new.stats;
    let o = &old.stats;
    key("stats.bind", *bind != o.bind, false);
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

/// Matches servers by name. Node indices are fixed for the process's life (the snapshot, the
/// per-server counters, metrics series and history rings are vectors made at start-up), so in
/// this version any change to the set, its order or a server's settings needs a restart; the plan
/// still says exactly which servers.
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
    for name in &p.added {
        p.restart.push(format!("server '{name}' added"));
    }
    for name in &p.removed {
        p.restart.push(format!("server '{name}' removed"));
    }
    for (name, keys) in &p.changed {
        p.restart
            .push(format!("server '{name}' changed ({})", keys.join(", ")));
    }
    let same_set = p.added.is_empty() && p.removed.is_empty();
    let old_names = old.iter().map(|s| &s.name);
    if same_set && !old_names.eq(new.iter().map(|s| &s.name)) {
        p.restart.push("the order of [[server]] sections".into());
    }
}

fn server_keys(old: &Server, new: &Server) -> Vec<&'static str> {
    let Server {
        name: _,
        address,
        maxconn,
        check_port,
        check_addr,
    } = new;
    [
        ("address", *address != old.address),
        ("maxconn", *maxconn != old.maxconn),
        ("check_port", *check_port != old.check_port),
        ("check_addr", *check_addr != old.check_addr),
    ]
    .into_iter()
    .filter_map(|(k, differs)| differs.then_some(k))
    .collect()
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
