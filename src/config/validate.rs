//! Validation: every ranged value against [`super::limits`], and the cross-field checks serde cannot
//! express. The only way to a [`Config`].

use std::collections::HashSet;
use std::net::SocketAddr;

use super::{limits, Config, FileConfig, Role};

/// A validation failure: the dotted key, and a message saying what is wrong and what is allowed.
#[derive(Debug)]
pub struct KeyError {
    pub key: String,
    pub message: String,
}

impl FileConfig {
    /// Every duration and count with a range in [`limits::LIMITS`], by dotted key, as set (or
    /// defaulted) in this file. Unset optional keys are left out.
    pub fn ranged_values(&self) -> Vec<(String, limits::Value)> {
        use limits::Value::{Count, Duration as D};
        let (g, c) = (&self.global, &self.check);
        let mut v: Vec<(String, limits::Value)> = vec![
            ("global.maxconn".into(), Count(g.maxconn.get().into())),
            ("global.shutdown_grace".into(), D(g.shutdown_grace)),
        ];
        for (i, l) in self.listen.all().iter().enumerate() {
            let p = self.listen.key(i);
            v.extend([
                (format!("{p}.retries"), Count(l.retries.into())),
                (format!("{p}.timeout_connect"), D(l.timeout_connect)),
                (format!("{p}.timeout_client"), D(l.timeout_client)),
                (format!("{p}.timeout_server"), D(l.timeout_server)),
                (format!("{p}.hold_timeout"), D(l.hold_timeout)),
                (format!("{p}.keepalive_idle"), D(l.keepalive_idle)),
                (format!("{p}.keepalive_interval"), D(l.keepalive_interval)),
                (
                    format!("{p}.keepalive_count"),
                    Count(l.keepalive_count.into()),
                ),
                (format!("{p}.kernel_after"), Count(l.kernel_after.into())),
            ]);
            if let Some(q) = l.timeout_queue {
                v.push((format!("{p}.timeout_queue"), D(q)));
            }
            if let Some(lag) = l.max_lag {
                v.push((format!("{p}.max_lag"), Count(lag.0)));
            }
        }
        v.extend([
            ("check.expect_status".into(), Count(c.expect_status.into())),
            ("check.inter".into(), D(c.inter)),
            ("check.rise".into(), Count(c.rise.get().into())),
            ("check.fall".into(), Count(c.fall.get().into())),
            ("check.timeout".into(), D(c.timeout)),
            ("check.failover_inter".into(), D(c.failover_inter)),
            ("check.resolve_interval".into(), D(c.resolve_interval)),
        ]);
        if let Some(e) = &self.etcd {
            v.push(("etcd.resync".into(), D(e.resync)));
        }
        if let Some(s) = &c.sql {
            v.push(("check.sql.timeout".into(), D(s.timeout)));
        }
        let optional = [
            ("global.threads", g.threads.map(|n| Count(n.get().into()))),
            ("check.fastinter", c.fastinter.map(D)),
            ("check.downinter", c.downinter.map(D)),
        ];
        v.extend(
            optional
                .into_iter()
                .filter_map(|(k, value)| value.map(|value| (k.to_string(), value))),
        );
        for (i, s) in self.servers.iter().enumerate() {
            v.push((
                format!("server[{i}].maxconn"),
                Count(s.maxconn.get().into()),
            ));
        }
        v
    }

    /// Checks every range and what serde cannot express (unique names, ports, paths), that this
    /// version serves what the file asks for, and reads the files it names; the one way to a
    /// [`Config`].
    pub fn validate(self) -> Result<Config, KeyError> {
        self.check_keys()?;
        served_by_this_version(&self)?;
        // Last: the files are read only once everything else holds.
        let check_tls = super::tls::load(&self.check)?;
        let sql = super::sql::load(self.check.sql.as_ref(), self.check.inter, &|var| {
            std::env::var(var).ok()
        })?;
        Ok(Config {
            file: self,
            check_tls,
            sql,
        })
    }

    /// Every check of [`FileConfig::validate`] but [`served_by_this_version`] and reading the TLS
    /// files: what `import-haproxy` checks its output with, since the file may be meant for
    /// another machine and for the listeners this version does not serve yet.
    pub(crate) fn check_keys(&self) -> Result<(), KeyError> {
        let err = |key: &str, message: String| KeyError {
            key: key.to_string(),
            message,
        };
        for (key, value) in self.ranged_values() {
            limits::check(&key, value).map_err(|m| err(&key, m))?;
        }
        if self.servers.is_empty() {
            return Err(err(
                "server",
                "no servers: add at least one [[server]] table with `name` and `address`".into(),
            ));
        }
        let mut names = HashSet::new();
        let mut addrs = HashSet::new();
        let mut members = HashSet::new();
        for (i, s) in self.servers.iter().enumerate() {
            if s.name.is_empty() || s.name.chars().any(|c| c.is_whitespace() || c == ',') {
                return Err(err(
                    &format!("server[{i}].name"),
                    format!(
                        "invalid name {:?}: use a non-empty name without spaces or commas",
                        s.name
                    ),
                ));
            }
            if !names.insert(s.name.as_str()) {
                return Err(err(
                    &format!("server[{i}].name"),
                    format!(
                        "duplicate server name {:?}: every server needs its own name",
                        s.name
                    ),
                ));
            }
            if !addrs.insert(&s.address) {
                return Err(err(
                    &format!("server[{i}].address"),
                    format!(
                        "duplicate server address {}: each node is listed once",
                        s.address
                    ),
                ));
            }
            if let Some(m) = &s.member {
                // The leader key's value is matched to it byte for byte.
                if m.is_empty() || m.chars().any(char::is_control) {
                    return Err(err(
                        &format!("server[{i}].member"),
                        format!("invalid member name {m:?}: give Patroni's `name` of this node"),
                    ));
                }
                if !members.insert(m.as_str()) {
                    return Err(err(
                        &format!("server[{i}].member"),
                        format!("duplicate member name {m:?}: each Patroni member is one server"),
                    ));
                }
            }
            if s.address.port() == 0 || s.check_port == Some(0) {
                return Err(err(
                    &format!("server[{i}].address"),
                    "port 0 is not a server port: give the PostgreSQL port, e.g. 5432".into(),
                ));
            }
        }
        if self.check.port == 0 {
            return Err(err(
                "check.port",
                "port 0 is not a REST port: use Patroni's, e.g. 8008".into(),
            ));
        }
        if !self.check.uri.starts_with('/') || self.check.uri.contains(char::is_whitespace) {
            return Err(err(
                "check.uri",
                format!(
                    "invalid path {:?}: it must start with `/` and contain no spaces",
                    self.check.uri
                ),
            ));
        }
        check_listeners(self)?;
        if let Some(auth) = &self.stats.auth {
            match auth.split_once(':') {
                Some((u, p)) if !u.is_empty() && !p.is_empty() => {}
                _ => {
                    return Err(err(
                        "stats.auth",
                        "expected `user:password` with both parts non-empty".into(),
                    ))
                }
            }
        }
        check_admin(&self.stats.admin_user, &self.stats.admin_password)?;
        if let Some(etcd) = &self.etcd {
            etcd.check().map_err(|(key, message)| err(key, message))?;
        }
        if let Some(sql) = &self.check.sql {
            super::sql::check(sql)?;
        }
        Ok(())
    }
}

/// The admin credentials: both or neither, and usable in HTTP Basic (a user name without `:`).
fn check_admin(user: &Option<String>, password: &Option<String>) -> Result<(), KeyError> {
    match (user, password) {
        (None, None) => Ok(()),
        (Some(_), None) => Err(key_error(
            "stats.admin_password",
            "missing: `stats.admin_user` is set, so the admin API needs a password too".into(),
        )),
        (None, Some(_)) => Err(key_error(
            "stats.admin_user",
            "missing: `stats.admin_password` is set, so the admin API needs a user name too".into(),
        )),
        (Some(u), Some(p)) => {
            if u.is_empty() || u.contains(':') || u.chars().any(|c| c.is_control()) {
                return Err(key_error(
                    "stats.admin_user",
                    format!("invalid user name {u:?}: use a non-empty name without `:`"),
                ));
            }
            if p.is_empty() || p.chars().any(|c| c.is_control()) {
                return Err(key_error(
                    "stats.admin_password",
                    "invalid password: use a non-empty one without control characters".into(),
                ));
            }
            Ok(())
        }
    }
}

fn key_error(key: &str, message: String) -> KeyError {
    KeyError {
        key: key.into(),
        message,
    }
}

/// Each listener: a usable, unique name; addresses that no other listener (or the stats
/// listener) takes; the read-listener keys only where they mean something; `servers` naming
/// `[[server]]` entries.
fn check_listeners(file: &FileConfig) -> Result<(), KeyError> {
    let all = file.listen.all();
    let mut names = HashSet::new();
    let mut taken: Vec<(SocketAddr, String)> = vec![(file.stats.bind, "the stats listener".into())];
    for (i, l) in all.iter().enumerate() {
        let p = file.listen.key(i);
        if l.name.is_empty() || l.name.contains(char::is_whitespace) || l.name.contains(',') {
            return Err(key_error(
                &format!("{p}.name"),
                format!(
                    "invalid name {:?}: use a non-empty name without spaces or commas",
                    l.name
                ),
            ));
        }
        if !names.insert(l.name.as_str()) {
            return Err(key_error(
                &format!("{p}.name"),
                format!(
                    "duplicate listener name {:?}: every listener needs its own name",
                    l.name
                ),
            ));
        }
        for addr in l.bind.all() {
            if let Some((_, owner)) = taken.iter().find(|(t, _)| same_socket(*t, *addr)) {
                return Err(key_error(
                    &format!("{p}.bind"),
                    format!(
                        "{addr} is already taken by {owner}: give each listener its own address"
                    ),
                ));
            }
            taken.push((*addr, format!("listener '{}'", l.name)));
        }
        if l.server_port == Some(0) {
            return Err(key_error(
                &format!("{p}.server_port"),
                "port 0 is not a server port: give the PostgreSQL port, e.g. 5432".into(),
            ));
        }
        let only = |key: &str, set: bool, allowed: bool, roles: &str| {
            if set && !allowed {
                Err(key_error(
                    &format!("{p}.{key}"),
                    format!(
                        "only for role {roles}: listener '{}' has role '{}'; remove it or change `role`",
                        l.name, l.role
                    ),
                ))
            } else {
                Ok(())
            }
        };
        only(
            "balance",
            l.balance.is_some(),
            l.role.balances(),
            "replica or any",
        )?;
        only(
            "max_lag",
            l.max_lag.is_some(),
            l.role.balances(),
            "replica or any",
        )?;
        only(
            "fallback",
            l.fallback.is_some(),
            l.role == Role::Replica,
            "replica",
        )?;
        if let Some(servers) = &l.servers {
            if servers.is_empty() {
                return Err(key_error(
                    &format!("{p}.servers"),
                    "empty list: name at least one [[server]], or remove the key for all of them"
                        .into(),
                ));
            }
            let mut seen = HashSet::new();
            for name in servers {
                if !file.servers.iter().any(|s| &s.name == name) {
                    return Err(key_error(
                        &format!("{p}.servers"),
                        format!("no [[server]] is named {name:?}"),
                    ));
                }
                if !seen.insert(name) {
                    return Err(key_error(
                        &format!("{p}.servers"),
                        format!("{name:?} is listed twice"),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Two addresses the kernel would not let two sockets bind: the same one, or the same port with
/// one of them the wildcard of its family. Port 0 (any free port, in tests) never clashes.
fn same_socket(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// The shapes of listeners the runtime serves: the first listener is the primary port (role
/// `primary`, every server; a reload can move its one address); the others are node sets
/// (`state::sets`) of any role (a second `primary` one follows the one routed primary), each
/// with an optional subset of servers. Every listener may have several addresses. A file asking for another shape is refused here, naming the
/// listener and key, rather than started with part of it ignored.
pub fn served_by_this_version(file: &FileConfig) -> Result<(), KeyError> {
    let all = file.listen.all();
    let l = &all[0];
    let p = file.listen.key(0);
    if l.role != Role::Primary {
        return Err(key_error(
            &format!("{p}.role"),
            format!(
                "listener '{}': the first listener is the primary port (role 'primary'); put the \
                 '{}' listener after it",
                l.name, l.role
            ),
        ));
    }
    if l.servers.is_some() {
        return Err(key_error(
            &format!("{p}.servers"),
            format!(
                "listener '{}': the primary port routes over every [[server]] in this version \
                 (the other listeners may name a subset)",
                l.name
            ),
        ));
    }
    Ok(())
}
