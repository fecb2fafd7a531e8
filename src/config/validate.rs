//! Validation: every ranged value against [`super::limits`], and the cross-field checks serde cannot
//! express. The only way to a [`Config`].

use std::collections::HashSet;

use super::{limits, Config, FileConfig};

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
        let (g, l, c) = (&self.global, &self.listen, &self.check);
        let mut v: Vec<(String, limits::Value)> = vec![
            ("global.maxconn".into(), Count(g.maxconn.get().into())),
            ("global.shutdown_grace".into(), D(g.shutdown_grace)),
            ("listen.retries".into(), Count(l.retries.into())),
            ("listen.timeout_connect".into(), D(l.timeout_connect)),
            ("listen.timeout_client".into(), D(l.timeout_client)),
            ("listen.timeout_server".into(), D(l.timeout_server)),
            ("listen.hold_timeout".into(), D(l.hold_timeout)),
            ("listen.keepalive_idle".into(), D(l.keepalive_idle)),
            ("listen.keepalive_interval".into(), D(l.keepalive_interval)),
            (
                "listen.keepalive_count".into(),
                Count(l.keepalive_count.into()),
            ),
            ("check.expect_status".into(), Count(c.expect_status.into())),
            ("check.inter".into(), D(c.inter)),
            ("check.rise".into(), Count(c.rise.get().into())),
            ("check.fall".into(), Count(c.fall.get().into())),
            ("check.timeout".into(), D(c.timeout)),
            ("check.failover_inter".into(), D(c.failover_inter)),
        ];
        if let Some(e) = &self.etcd {
            v.push(("etcd.resync".into(), D(e.resync)));
        }
        let optional = [
            ("global.threads", g.threads.map(|n| Count(n.get().into()))),
            ("listen.timeout_queue", l.timeout_queue.map(D)),
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

    /// Checks every range and what serde cannot express (unique names, ports, paths); the one way
    /// to a [`Config`].
    pub fn validate(self) -> Result<Config, KeyError> {
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
            if !addrs.insert(s.address) {
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
        if self.listen.name.is_empty() || self.listen.name.contains(char::is_whitespace) {
            return Err(err(
                "listen.name",
                format!(
                    "invalid name {:?}: use a non-empty name without spaces",
                    self.listen.name
                ),
            ));
        }
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
        // Last: the files are read only once everything else holds.
        let check_tls = super::tls::load(&self.check)?;
        Ok(Config {
            file: self,
            check_tls,
        })
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
