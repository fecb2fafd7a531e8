//! A server's address as written in the file: an IP address or a host name, and a port. A host name
//! is only checked for its form here: `check` never resolves it (the machine that validates a
//! config may not be the one that runs it, as with HAProxy's `-c`). The proxy resolves it when it
//! runs (in `health::resolve`).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Where a server is: `IP:PORT`, `[IPv6]:PORT` or `NAME:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerAddr {
    pub host: Host,
    pub port: u16,
}

/// The host part of a [`ServerAddr`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Ip(IpAddr),
    /// A host name, lowercase (names are case-insensitive, RFC 4343): resolved at run time.
    Name(String),
}

impl ServerAddr {
    /// The socket address when the host is an IP address; `None` for a host name.
    pub fn ip_addr(&self) -> Option<SocketAddr> {
        match self.host {
            Host::Ip(ip) => Some(SocketAddr::new(ip, self.port)),
            Host::Name(_) => None,
        }
    }

    /// The host name, when the host is one.
    pub fn name(&self) -> Option<&str> {
        match &self.host {
            Host::Ip(_) => None,
            Host::Name(n) => Some(n),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl From<SocketAddr> for ServerAddr {
    fn from(a: SocketAddr) -> Self {
        Self {
            host: Host::Ip(a.ip()),
            port: a.port(),
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(n) => f.write_str(n),
        }
    }
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl FromStr for ServerAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(a.into());
        }
        let example = "write IP:PORT or NAME:PORT, e.g. \"10.0.0.11:5432\" or \"db1:5432\"";
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err(format!("address {s:?} has no port: {example}"));
        };
        let port: u16 = port
            .parse()
            .map_err(|_| format!("address {s:?}: {port:?} is not a port number: {example}"))?;
        if host.parse::<IpAddr>().is_ok() || host.contains(':') {
            // An IPv6 address needs brackets to be told from its port.
            return Err(format!(
                "address {s:?}: write an IPv6 address in brackets, e.g. \"[fd00::11]:5432\""
            ));
        }
        check_name(host).map_err(|why| format!("address {s:?}: {why}"))?;
        Ok(Self {
            host: Host::Name(host.to_ascii_lowercase()),
            port,
        })
    }
}

/// A host name's form (RFC 1123 labels; `_` is allowed too, as Docker and Kubernetes service
/// names use it and the system resolver accepts it).
pub fn check_name(name: &str) -> Result<(), String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err("the host is empty: give an IP address or a host name".into());
    }
    if name.len() > 253 {
        return Err(format!(
            "host name of {} characters: at most 253 are allowed",
            name.len()
        ));
    }
    for label in name.split('.') {
        let ok_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if label.is_empty() || label.len() > 63 {
            return Err(format!(
                "host name {name:?}: each dot-separated part must have 1 to 63 characters"
            ));
        }
        if let Some(c) = label.chars().find(|&c| !ok_char(c)) {
            return Err(format!(
                "host name {name:?} contains {c:?}: use letters, digits, '-', '_' and '.'"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "host name {name:?}: a part cannot start or end with '-'"
            ));
        }
    }
    if name
        .split('.')
        .all(|l| l.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(format!("{name:?} is neither an IP address nor a host name"));
    }
    Ok(())
}

impl Serialize for ServerAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ServerAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_addresses_and_host_names_are_read_and_printed_back() {
        for (text, printed) in [
            ("127.0.0.11:5432", "127.0.0.11:5432"),
            ("[fd00::11]:5432", "[fd00::11]:5432"),
            ("db1:5432", "db1:5432"),
            ("Node1.Example.COM:5432", "node1.example.com:5432"),
            ("host.docker.internal:5433", "host.docker.internal:5433"),
            ("pg_node-1:5432", "pg_node-1:5432"),
        ] {
            let a: ServerAddr = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(a.to_string(), printed);
            assert_eq!(printed.parse::<ServerAddr>().unwrap(), a);
        }
        let a: ServerAddr = "db1:5432".parse().unwrap();
        assert_eq!(a.name(), Some("db1"));
        assert_eq!(a.ip_addr(), None);
        let a: ServerAddr = "127.0.0.11:5432".parse().unwrap();
        assert_eq!(a.ip_addr(), Some("127.0.0.11:5432".parse().unwrap()));
    }

    #[test]
    fn malformed_addresses_are_refused_saying_what_is_wrong() {
        for (text, says) in [
            ("db1", "has no port"),
            ("db1:", "not a port number"),
            ("db1:70000", "not a port number"),
            (":5432", "the host is empty"),
            ("fd00::11:5432", "IPv6 address in brackets"),
            ("db 1:5432", "contains ' '"),
            ("db1..example:5432", "1 to 63 characters"),
            ("-db1:5432", "cannot start or end with '-'"),
            ("300.1.2.3:5432", "neither an IP address nor a host name"),
            ("${PG_HOST}:5432", "contains '$'"),
        ] {
            let e = text.parse::<ServerAddr>().expect_err(text);
            assert!(e.contains(says), "{text}: {e}");
        }
        let long = format!("{}:5432", "a".repeat(254));
        assert!(long
            .parse::<ServerAddr>()
            .unwrap_err()
            .contains("at most 253"));
    }
}
