//! How values are written in the file: durations (`3s`, `250ms`), listener addresses (`*:5000`),
//! the keys whose value is one of a closed set of words, and their serde adapters.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Durations written as `3s`, `250ms`, `30m`. Zero is rejected: a zero interval or timeout is always a
/// mistake here ("disabled" is expressed by leaving an optional key out).
pub(super) mod duration {
    use super::*;

    pub fn parse(s: &str) -> Result<Duration, String> {
        // humantime can panic on sums near u64::MAX seconds: refuse those before it reads them.
        crate::config::limits::precheck_duration(s)?;
        let d = humantime::parse_duration(s.trim()).map_err(|e| {
            format!("invalid duration {s:?} ({e}): write a number and a unit, e.g. \"3s\", \"250ms\", \"30m\"")
        })?;
        if d.is_zero() {
            return Err(format!(
                "duration {s:?} is zero: give a positive duration, e.g. \"3s\""
            ));
        }
        Ok(d)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }
}

pub(super) mod opt_duration {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::duration::deserialize(d).map(Some)
    }

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }
}

/// Formats a duration the way people write it in the file: `3s`, `250ms`, `30m`, `1h30m`.
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string().replace(' ', "")
}

/// Listener addresses: `IP:PORT`, `[IPv6]:PORT`, or HAProxy's `*:PORT` for all IPv4 addresses.
pub(super) mod bind_addr {
    use super::*;

    pub fn parse(s: &str) -> Result<SocketAddr, String> {
        let s = s.trim();
        let addr = if let Some(port) = s.strip_prefix("*:").or_else(|| s.strip_prefix(':')) {
            port.parse::<u16>()
                .map(|p| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), p))
                .map_err(|_| ())
        } else {
            s.parse::<SocketAddr>().map_err(|_| ())
        };
        addr.map_err(|()| {
            format!("invalid listen address {s:?}: write IP:PORT, [IPv6]:PORT or *:PORT, e.g. \"*:5000\"")
        })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }

    pub fn serialize<S: Serializer>(a: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        if a.ip() == IpAddr::V4(Ipv4Addr::UNSPECIFIED) {
            s.serialize_str(&format!("*:{}", a.port()))
        } else {
            s.serialize_str(&a.to_string())
        }
    }
}

/// HAProxy's `on-marked-down` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnMarkedDown {
    ShutdownSessions,
    None,
}

/// Who moves a relaying session's bytes (`listen.relay`, docs/configuration.md): the proxy's
/// threads (`user`), the kernel through a BPF sockmap (`kernel`; refused at start where it cannot
/// load), or the kernel where it can and the proxy's threads otherwise (`auto`, saying why once).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayMode {
    #[default]
    User,
    Kernel,
    Auto,
}

impl RelayMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RelayMode::User => "user",
            RelayMode::Kernel => "kernel",
            RelayMode::Auto => "auto",
        }
    }
}

/// The health check's HTTP method, written `GET`, `HEAD` or `OPTIONS`: Patroni's REST API answers
/// these three with the role in the status code. Anything else is refused, `POST` included: its
/// handlers are actions (restart, switchover), never a health check
/// (`patroni-and-peers.md`, REST API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum CheckMethod {
    Get,
    Head,
    Options,
}

impl CheckMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckMethod::Get => "GET",
            CheckMethod::Head => "HEAD",
            CheckMethod::Options => "OPTIONS",
        }
    }
}

impl FromStr for CheckMethod {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        [CheckMethod::Get, CheckMethod::Head, CheckMethod::Options]
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("unsupported method {s:?}: use GET, HEAD or OPTIONS"))
    }
}

/// The HTTP version in the check's request line, written `HTTP/1.0` or `HTTP/1.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum HttpVersion {
    Http10,
    Http11,
}

impl HttpVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            HttpVersion::Http10 => "HTTP/1.0",
            HttpVersion::Http11 => "HTTP/1.1",
        }
    }
}

impl FromStr for HttpVersion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        [HttpVersion::Http10, HttpVersion::Http11]
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("unsupported version {s:?}: use HTTP/1.0 or HTTP/1.1"))
    }
}

/// `log.format`: human-readable lines or one JSON object per line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        [LogFormat::Text, LogFormat::Json]
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| format!("unsupported log format {s:?}: use \"text\" or \"json\""))
    }
}

/// `check.verify`: whether the REST server's certificate is verified (HAProxy's server `verify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum Verify {
    /// Not verified: any certificate is accepted (still a TLS connection, open to a
    /// man-in-the-middle).
    None,
    /// Verified against `check.ca_file`, and its names against `check.sni` or the check address.
    #[default]
    Required,
}

impl Verify {
    pub fn as_str(self) -> &'static str {
        match self {
            Verify::None => "none",
            Verify::Required => "required",
        }
    }
}

impl FromStr for Verify {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        [Verify::None, Verify::Required]
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("unsupported verify {s:?}: use \"none\" or \"required\""))
    }
}

// serde's `try_from`/`into` go through these; the file holds the same words `as_str` gives.
macro_rules! words {
    ($($t:ty),*) => {$(
        impl TryFrom<String> for $t {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                s.parse()
            }
        }
        impl From<$t> for &'static str {
            fn from(v: $t) -> &'static str {
                v.as_str()
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}
words!(CheckMethod, HttpVersion, LogFormat, Verify);

pub use bind_addr::parse as parse_bind;
pub use duration::parse as parse_duration;
