//! The `[check.sql]` section (issue 14 item 1): the monitoring role the SQL check logs in with, and
//! how it reaches PostgreSQL (TLS or not, which CA). Read once per load or reload into a
//! [`SqlSpec`]: the password from the file or the environment variable it names, the rustls
//! client from `ca_file`. A missing variable, an unreadable file or one without a certificate is
//! a configuration error naming the key, never a check failure found later.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::validate::KeyError;
use super::values::duration;

/// `[check.sql]` as written: `SELECT pg_is_in_recovery()` on a connection of its own to each
/// server's PostgreSQL `address`, on the check schedule.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SqlCheck {
    /// The monitoring role (`CREATE ROLE ... LOGIN`: `pg_is_in_recovery()` needs no privilege).
    pub user: String,
    /// Its password, in the file. Default: none (or `password_file` / `password_env`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// A file holding the password (one line; a final newline is not part of it), read when the
    /// configuration is loaded or reloaded. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// The name of an environment variable holding the password, read at load and reload.
    /// Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// The database to connect to. Default `postgres`.
    #[serde(default = "default_dbname")]
    pub dbname: String,
    /// `prefer` (TLS when the server offers it, libpq's default), `require` (TLS or no check) or
    /// `disable`. Default `prefer`.
    #[serde(default)]
    pub sslmode: SslMode,
    /// PEM file of the CA that signed PostgreSQL's certificate: with it the certificate is
    /// verified, chain and name (each server's IP address, `subjectAltName` `IP:`); without it,
    /// as libpq's `prefer`/`require`, any certificate is accepted. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The whole check: connect, TLS, authentication and the query. Default `3s`.
    #[serde(default = "default_timeout", with = "duration")]
    pub timeout: Duration,
    /// Whether the SQL check's answer decides routing on the primary port (docs/health-checking.md,
    /// "The SQL check"): `false` shows it only. Default `true`.
    #[serde(default = "default_gate")]
    pub gate: bool,
}

fn default_dbname() -> String {
    "postgres".into()
}

fn default_timeout() -> Duration {
    Duration::from_secs(3)
}

fn default_gate() -> bool {
    true
}

/// libpq's `sslmode`, the three values that do not verify by themselves (`ca_file` does).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
        }
    }
}

/// What a SQL check needs, built from `[check.sql]` at validation.
#[derive(Clone)]
pub struct SqlSpec {
    pub user: String,
    /// Never printed (`Debug` leaves it out).
    pub password: Option<Arc<str>>,
    pub dbname: String,
    pub sslmode: SslMode,
    /// The TLS client (unused with `disable`).
    pub tls: Arc<ClientConfig>,
    /// Whether `tls` verifies the certificate (`ca_file` given).
    pub verified: bool,
    pub timeout: Duration,
    pub gate: bool,
    /// At most one SQL check per node per `every` (`check.inter`), besides the one that follows
    /// every REST answer claiming the primary role.
    pub every: Duration,
    /// SHA-256 over the settings, the password and the CA file's bytes: two loads are equal when
    /// they would behave the same (a reload tells a changed password file from an unchanged one).
    digest: [u8; 32],
}

impl PartialEq for SqlSpec {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest
    }
}

impl fmt::Debug for SqlSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlSpec")
            .field("user", &self.user)
            .field("dbname", &self.dbname)
            .field("sslmode", &self.sslmode)
            .field("verified", &self.verified)
            .field("timeout", &self.timeout)
            .field("gate", &self.gate)
            .finish_non_exhaustive()
    }
}

impl SqlSpec {
    /// One line for `patroni-proxy check`.
    pub fn summary(&self) -> String {
        let tls = match (self.sslmode, self.verified) {
            (SslMode::Disable, _) => "no TLS".to_string(),
            (mode, true) => format!("sslmode {}, certificate verified", mode.as_str()),
            (mode, false) => format!("sslmode {}, certificate not verified", mode.as_str()),
        };
        format!(
            "SQL check: SELECT pg_is_in_recovery() as {} on database {} ({tls}), timeout {}, {}",
            self.user,
            self.dbname,
            super::format_duration(self.timeout),
            if self.gate {
                "gates the primary port"
            } else {
                "shown only"
            }
        )
    }
}

fn err(key: &str, message: String) -> KeyError {
    KeyError {
        key: key.into(),
        message,
    }
}

/// What serde cannot say about `[check.sql]`, without IO.
pub(super) fn check(sql: &SqlCheck) -> Result<(), KeyError> {
    if sql.user.is_empty() || sql.user.chars().any(char::is_control) {
        return Err(err(
            "check.sql.user",
            format!(
                "invalid role name {:?}: give the monitoring role, e.g. \"pp_monitor\"",
                sql.user
            ),
        ));
    }
    if sql.dbname.is_empty() || sql.dbname.chars().any(char::is_control) {
        return Err(err(
            "check.sql.dbname",
            format!("invalid database name {:?}: e.g. \"postgres\"", sql.dbname),
        ));
    }
    let given: Vec<&str> = [
        ("check.sql.password", sql.password.is_some()),
        ("check.sql.password_file", sql.password_file.is_some()),
        ("check.sql.password_env", sql.password_env.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, on)| on.then_some(k))
    .collect();
    if given.len() > 1 {
        return Err(err(
            given[1],
            format!(
                "set with `{}`: give the password one way only",
                given[0].trim_start_matches("check.sql.")
            ),
        ));
    }
    if sql.sslmode == SslMode::Disable && sql.ca_file.is_some() {
        return Err(err(
            "check.sql.ca_file",
            "set with `sslmode = \"disable\"`: remove it, or use \"prefer\" or \"require\"".into(),
        ));
    }
    Ok(())
}

/// Reads what `[check.sql]` names (password file or variable, CA file) and builds the spec;
/// `None` without the section.
pub(super) fn load(
    sql: Option<&SqlCheck>,
    every: Duration,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<SqlSpec>, KeyError> {
    let Some(sql) = sql else { return Ok(None) };
    let mut digest = Sha256::new();
    for part in [
        sql.user.as_str(),
        sql.dbname.as_str(),
        sql.sslmode.as_str(),
        if sql.gate { "gate" } else { "show" },
    ] {
        digest.update(part);
        digest.update([0]);
    }
    digest.update(sql.timeout.as_nanos().to_le_bytes());
    digest.update(every.as_nanos().to_le_bytes());
    let password: Option<String> = match (&sql.password, &sql.password_file, &sql.password_env) {
        (Some(p), _, _) => Some(p.clone()),
        (_, Some(path), _) => {
            let key = "check.sql.password_file";
            let bytes = super::tls::read(key, path, &mut digest)?;
            let text = String::from_utf8(bytes)
                .map_err(|_| err(key, format!("{} is not UTF-8 text", path.display())))?;
            let line = text.strip_suffix('\n').unwrap_or(&text);
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.is_empty() || line.contains('\n') {
                return Err(err(
                    key,
                    format!(
                        "{} must hold the password alone, on one line",
                        path.display()
                    ),
                ));
            }
            Some(line.to_string())
        }
        (_, _, Some(var)) => match env(var) {
            Some(p) if !p.is_empty() => Some(p),
            _ => {
                return Err(err(
                    "check.sql.password_env",
                    format!("the environment variable {var} is not set (or empty)"),
                ))
            }
        },
        _ => None,
    };
    if let Some(p) = &password {
        digest.update(p.as_bytes());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| err("check.sql.sslmode", format!("cannot set up TLS: {e}")))?;
    let tls = match &sql.ca_file {
        Some(path) => builder.with_root_certificates(super::tls::roots(
            "check.sql.ca_file",
            path,
            &mut digest,
        )?),
        // libpq's `prefer` and `require`: encrypted, the certificate not verified.
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(super::tls::AcceptAny(provider))),
    }
    .with_no_client_auth();
    Ok(Some(SqlSpec {
        user: sql.user.clone(),
        password: password.map(Arc::from),
        dbname: sql.dbname.clone(),
        sslmode: sql.sslmode,
        tls: Arc::new(tls),
        verified: sql.ca_file.is_some(),
        timeout: sql.timeout,
        gate: sql.gate,
        every,
        digest: digest.finalize().into(),
    }))
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const SERVER: &str = "[[server]]\nname = \"a\"\naddress = \"127.0.0.11:5432\"\n";

    fn load(sql: &str) -> Result<Config, String> {
        Config::from_toml(&format!("[check.sql]\n{sql}\n{SERVER}")).map_err(|e| e.to_string())
    }

    #[test]
    fn absent_means_off_and_defaults_are_prefer_postgres_3s_gating() {
        // "Off when absent (behaviour unchanged)."
        assert!(Config::from_toml(SERVER).unwrap().sql_check().is_none());
        let c = load("user = \"pp_monitor\"\npassword = \"pw\"").unwrap();
        let s = c.sql_check().unwrap();
        assert_eq!(
            (
                s.dbname.as_str(),
                s.sslmode.as_str(),
                s.timeout.as_secs(),
                s.gate
            ),
            ("postgres", "prefer", 3, true)
        );
        assert!(!format!("{s:?}").contains("pw"), "Debug never prints it");
        assert!(c.to_string().contains(
            "SQL check: SELECT pg_is_in_recovery() as pp_monitor on database postgres \
             (sslmode prefer, certificate not verified), timeout 3s, gates the primary port"
        ));
    }

    #[test]
    fn bad_values_are_errors_naming_the_key() {
        for (text, key, says) in [
            ("user = \"\"", "check.sql.user", "invalid role name"),
            (
                "user = \"m\"\npassword = \"a\"\npassword_env = \"B\"",
                "check.sql.password_env",
                "one way only",
            ),
            (
                "user = \"m\"\nsslmode = \"disable\"\nca_file = \"/x\"",
                "check.sql.ca_file",
                "disable",
            ),
            (
                "user = \"m\"\nsslmode = \"verify-full\"",
                "sslmode",
                "prefer",
            ),
            ("user = \"m\"\ntimeout = \"2h\"", "check.sql.timeout", "1h"),
            ("user = \"m\"\ngate = \"yes\"", "gate", "bool"),
            ("user = \"m\"\nport = 5432", "port", "unknown field"),
            (
                "user = \"m\"\npassword_env = \"PP_TEST_UNSET_VARIABLE_42\"",
                "check.sql.password_env",
                "PP_TEST_UNSET_VARIABLE_42 is not set",
            ),
            (
                "user = \"m\"\npassword_file = \"/nonexistent/pw\"",
                "check.sql.password_file",
                "cannot read /nonexistent/pw",
            ),
        ] {
            let e = load(text).unwrap_err();
            assert!(e.contains(key) && e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn the_password_file_is_read_without_its_newline_and_a_change_is_a_new_spec() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\n").unwrap();
        let text = format!(
            "user = \"m\"\npassword_file = {:?}",
            path.display().to_string()
        );
        let first = load(&text).unwrap();
        assert_eq!(
            first.sql_check().unwrap().password.as_deref(),
            Some("s3cret")
        );
        assert_eq!(load(&text).unwrap().sql_check(), first.sql_check());
        std::fs::write(&path, "other\n").unwrap();
        assert_ne!(load(&text).unwrap().sql_check(), first.sql_check());
        std::fs::write(&path, "two\nlines\n").unwrap();
        assert!(load(&text).unwrap_err().contains("one line"));
    }
}
