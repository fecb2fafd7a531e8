//! Configuration: the TOML file format, its defaults, and validation into a typed [`Config`].
//!
//! Parsing is strict: unknown keys, zero intervals, malformed addresses and values outside a key's range
//! ([`limits`]) are errors that name the key, the bad value, what is allowed, and the line/column in the
//! file. Every default reproduces the seed HAProxy configuration (`haproxy-semantics.md` §0), except
//! TCP keepalive, which is on (see [`Listen::client_keepalive`]).
//!
//! - `sections`: one struct per TOML section, with its defaults.
//! - `listeners`: one `[listen]` or several `[[listen]]`, their addresses, roles and lag sizes.
//! - `values`: how durations, addresses and the closed sets of words are written.
//! - [`limits`]: the range of every duration and count.
//! - `validate`: the checks that turn a [`FileConfig`] into a [`Config`].
//! - `position`: where an error is in the text.
//! - [`tls`]: the PEM files of `[check]`'s TLS keys, read and built into a rustls client config.
//! - [`sql`]: `[check.sql]`, the SQL check's role, password and TLS, read into a [`sql::SqlSpec`].
//! - `summary`: the effective settings, as `patroni-proxy check` prints them (`Display`).

pub mod address;
mod etcd;
pub mod limits;
mod listeners;
mod position;
mod sections;
pub mod sql;
mod summary;
pub mod tls;
mod validate;
mod values;

use std::ops::Deref;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

pub use address::{Host, ServerAddr};
pub use etcd::{Endpoint as EtcdEndpoint, DEFAULT_RESYNC as DEFAULT_ETCD_RESYNC};
pub use listeners::{Balance, Binds, ByteSize, Fallback, Listeners, Role};
pub use sections::{
    Check, Etcd, FileConfig, Global, Listen, Log, Server, Stats, DEFAULT_MAXCONN, MAX_THREADS,
};
pub use validate::{served_by_this_version, KeyError};
pub use values::{
    format_duration, parse_bind, parse_duration, CheckMethod, HttpVersion, LogFormat, OnMarkedDown,
    RelayMode, Verify,
};

/// A configuration error, ready to print: it names the key and, when known, the line and column.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// The validated configuration the program runs with: a [`FileConfig`] that passed
/// [`FileConfig::validate`], which is the only way to make one ([`Config::from_toml`] and
/// [`Config::load`] call it). Its sections are read through `Deref` (`config.check.inter`) and cannot
/// be changed afterwards, so every value in it stays checked. It also holds what validation built
/// from files the config names (the check's TLS setup), so those are read once per load.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    file: FileConfig,
    check_tls: Option<tls::CheckTls>,
    sql: Option<sql::SqlSpec>,
}

impl Deref for Config {
    type Target = FileConfig;

    fn deref(&self) -> &FileConfig {
        &self.file
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Invalid(msg) => ConfigError::Invalid(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        // Parsed once: the same document gives the values and, for an error, where its key is.
        let doc = position::Document::parse(text)
            .map_err(|e| ConfigError::Invalid(e.to_string().trim_end().to_string()))?;
        let file = FileConfig::deserialize(toml_edit::de::Deserializer::from(doc.clone()))
            .map_err(|e| position::describe_serde_error(&doc, &e))?;
        file.validate().map_err(|e| position::locate(&doc, e))
    }

    /// A config from a file that passed every check but [`served_by_this_version`]: for tests of
    /// code that will serve several listeners (the reload plan) before the runtime does.
    #[cfg(test)]
    pub(crate) fn unserved(text: &str) -> Result<Self, String> {
        let file: FileConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        file.check_keys()
            .map_err(|e| format!("{}: {}", e.key, e.message))?;
        Ok(Self {
            file,
            check_tls: None,
            sql: None,
        })
    }

    /// The file form of this config, e.g. to print it as TOML.
    pub fn to_file(&self) -> FileConfig {
        self.file.clone()
    }

    /// The file form, to change and validate again.
    pub fn into_file(self) -> FileConfig {
        self.file
    }

    /// The check's TLS setup, when `check.ssl` is on: built from the files when this config was
    /// validated.
    pub fn check_tls(&self) -> Option<&tls::CheckTls> {
        self.check_tls.as_ref()
    }

    /// The SQL check, when `[check.sql]` is present: its password and TLS client read when this
    /// config was validated.
    pub fn sql_check(&self) -> Option<&sql::SqlSpec> {
        self.sql.as_ref()
    }

    /// Whether the SQL check's answer decides routing (`[check.sql]` present, `gate` on).
    pub fn sql_gate(&self) -> bool {
        self.sql.as_ref().is_some_and(|s| s.gate)
    }

    /// The effective check interval for a health counter (HAProxy `srv_getinter`): `inter` when fully
    /// UP, `downinter` when fully DOWN, `fastinter` in between; each unset one falls back to `inter`.
    pub fn interval_for(&self, fully_up: bool, fully_down: bool) -> Duration {
        let c = &self.check;
        if fully_up {
            c.inter
        } else if fully_down {
            c.downinter.unwrap_or(c.inter)
        } else {
            c.fastinter.unwrap_or(c.inter)
        }
    }

    /// Connect timeout of a health check: min(inter, timeout connect), as HAProxy computes it.
    pub fn check_connect_timeout(&self) -> Duration {
        self.check.inter.min(self.listen.timeout_connect)
    }

    /// `timeout queue`, defaulting to `timeout connect`.
    pub fn timeout_queue(&self) -> Duration {
        self.listen
            .timeout_queue
            .unwrap_or(self.listen.timeout_connect)
    }

    /// Where the health check of server `s` connects, as written: its `check_addr`, else its host
    /// (a host name is resolved when the proxy runs), and its `check_port`, else `check.port`.
    pub fn check_address_of(&self, s: &Server) -> String {
        let host = s.check_addr.map_or(s.address.host.clone(), Host::Ip);
        format!("{host}:{}", self.check_port_of(s))
    }

    /// The REST port the health check of server `s` connects to.
    pub fn check_port_of(&self, s: &Server) -> u16 {
        s.check_port.unwrap_or(self.check.port)
    }

    /// Whether the REST outage ride-through applies: `[etcd]` is configured and its `ride_through`
    /// is on (the default). Without etcd there is no second signal: HAProxy's behaviour.
    pub fn ride_through(&self) -> bool {
        self.etcd.as_ref().is_some_and(|e| e.ride_through)
    }

    /// Basic-auth credentials of the stats listener, split at the first `:`.
    pub fn stats_credentials(&self) -> Option<(&str, &str)> {
        self.stats.auth.as_deref().and_then(|a| a.split_once(':'))
    }

    /// Credentials of the admin API (`[stats] admin_user`, `admin_password`), when it is on.
    pub fn admin_credentials(&self) -> Option<(&str, &str)> {
        self.stats
            .admin_user
            .as_deref()
            .zip(self.stats.admin_password.as_deref())
    }

    /// The keepalive to set on accepted client sockets, or `None` when `listen.client_keepalive`
    /// is off.
    pub fn client_keepalive(&self) -> Option<socket2::TcpKeepalive> {
        self.listen.client_keepalive.then(|| self.keepalive())
    }

    /// The keepalive to set on connections to servers, or `None` when `listen.server_keepalive`
    /// is off.
    pub fn server_keepalive(&self) -> Option<socket2::TcpKeepalive> {
        self.listen.server_keepalive.then(|| self.keepalive())
    }

    fn keepalive(&self) -> socket2::TcpKeepalive {
        // Validation keeps all three within what Linux accepts (whole seconds, count <= 127).
        socket2::TcpKeepalive::new()
            .with_time(self.listen.keepalive_idle)
            .with_interval(self.listen.keepalive_interval)
            .with_retries(self.listen.keepalive_count)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    const MINIMAL: &str = "[[server]]\nname = \"a\"\naddress = \"127.0.0.11:5432\"\n";

    #[test]
    fn defaults_are_the_seed_haproxy_settings() {
        // haproxy-semantics.md §0: inter 3s, fall 3, rise 2, timeout check 5s, retries 2,
        // timeout connect 4s, client/server 30m, maxconn 100, expect status 200, check port 8008.
        let c = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(c.check.inter, Duration::from_secs(3));
        assert_eq!((c.check.rise.get(), c.check.fall.get()), (2, 3));
        assert_eq!(c.check.timeout, Duration::from_secs(5));
        assert_eq!(c.listen.retries, 2);
        assert_eq!(c.listen.timeout_connect, Duration::from_secs(4));
        assert_eq!(c.listen.timeout_client, Duration::from_secs(1800));
        assert_eq!(c.global.maxconn.get(), 100);
        assert_eq!(c.servers[0].maxconn.get(), 100);
        assert_eq!(c.check_address_of(&c.servers[0]), "127.0.0.11:8008");
        assert_eq!(c.listen.bind.first(), "0.0.0.0:5000".parse().unwrap());
        // "Check connect timeout | min(inter, timeout connect) = 3 s"
        assert_eq!(c.check_connect_timeout(), Duration::from_secs(3));
        // "timeout queue | unset, so = timeout connect = 4 s"
        assert_eq!(c.timeout_queue(), Duration::from_secs(4));
    }

    #[test]
    fn a_missing_key_takes_the_default_of_its_section() {
        // One source of defaults: serde fills every missing key from the section's `impl Default`,
        // the same values `import-haproxy` starts from.
        let empty: FileConfig = toml::from_str("[global]\n[listen]\n[check]\n[stats]\n").unwrap();
        assert_eq!(empty, FileConfig::default());
        let c = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(
            (&c.global, &*c.listen, &c.check, &c.stats),
            (
                &Global::default(),
                &Listen::default(),
                &Check::default(),
                &Stats::default()
            )
        );
        assert_eq!(c.servers[0].maxconn, DEFAULT_MAXCONN);
        assert_eq!(c.global.maxconn, DEFAULT_MAXCONN);
    }

    #[test]
    fn fastinter_and_downinter_fall_back_to_inter() {
        // haproxy-semantics.md §1.5 srv_getinter.
        let c = Config::from_toml(MINIMAL).unwrap();
        for (up, down) in [(true, false), (false, true), (false, false)] {
            assert_eq!(c.interval_for(up, down), Duration::from_secs(3));
        }
        let c = Config::from_toml(&format!(
            "[check]\nfastinter = \"1s\"\ndowninter = \"5s\"\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(c.interval_for(true, false), Duration::from_secs(3));
        assert_eq!(c.interval_for(false, true), Duration::from_secs(5));
        assert_eq!(c.interval_for(false, false), Duration::from_secs(1));
    }

    #[test]
    fn errors_name_key_and_position() {
        let e = Config::from_toml(&format!("[check]\ninter = \"0s\"\n{MINIMAL}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("check.inter"), "{e}");
        assert!(e.contains("line 2"), "{e}");
        assert!(e.contains("zero"), "{e}");

        let e = Config::from_toml(&format!(
            "{MINIMAL}[[server]]\nname = \"a\"\naddress = \"127.0.0.12:5432\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("server[1].name") && e.contains("line 5"), "{e}");
    }

    #[test]
    fn bind_accepts_haproxy_star() {
        assert_eq!(
            parse_bind("*:7000").unwrap(),
            "0.0.0.0:7000".parse().unwrap()
        );
        assert_eq!(
            parse_bind("[::1]:7000").unwrap(),
            "[::1]:7000".parse().unwrap()
        );
        assert!(parse_bind("localhost:7000").is_err());
    }

    #[test]
    fn every_ranged_key_is_checked_and_every_checked_key_has_a_range() {
        // validate() checks what ranged_values() lists against limits::LIMITS: the two must agree,
        // or a key would go unchecked (or fail as "no range is defined").
        // Every optional key set; a replica listener for `max_lag` (checked, not yet served).
        let file: FileConfig = toml::from_str(&format!(
            "[global]\nthreads = 2\n[listen]\ntimeout_queue = \"1s\"\nrole = \"replica\"\n\
             max_lag = \"1MB\"\n[check]\nfastinter = \"1s\"\ndowninter = \"1s\"\n\
             [check.sql]\nuser = \"m\"\n\
             [etcd]\nendpoints = [\"127.0.0.1:2379\"]\nscope = \"pg\"\n{MINIMAL}"
        ))
        .unwrap();
        file.check_keys().unwrap();
        let checked: HashSet<String> = file
            .ranged_values()
            .into_iter()
            .map(|(k, _)| k.replace("server[0]", "server"))
            .collect();
        let table: HashSet<String> = limits::LIMITS.iter().map(|(k, _)| k.to_string()).collect();
        assert_eq!(checked, table);
    }

    #[test]
    fn round_trips_through_toml() {
        let c = Config::from_toml(MINIMAL).unwrap();
        let text = toml::to_string(&c.to_file()).unwrap();
        assert_eq!(Config::from_toml(&text).unwrap(), c);
    }
}
