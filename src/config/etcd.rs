//! The `[etcd]` section: where Patroni keeps its keys, how often they are re-read, and how to reach
//! etcd (several endpoints, user/password authentication, TLS). Checked here without IO; the
//! certificate files are read by `dcs` when the watch starts (and by `patroni-proxy check`).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::values::duration;

/// Where Patroni keeps its keys (Patroni's `etcd3.hosts`, `namespace`, `scope`) and how to reach it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Etcd {
    /// etcd client addresses, tried in turn: `IP:PORT` or `http://HOST:PORT` (plain HTTP), or
    /// `https://HOST:PORT` (TLS, needs `ca_file`). The v3 JSON gateway (`/v3/watch`) is used, as
    /// Patroni's `etcd3` backend does.
    pub endpoints: Vec<Endpoint>,
    /// Patroni's `namespace`. Default `/service/` (Patroni's default; the seed uses `/db/`).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Patroni's `scope` (the cluster name).
    pub scope: String,
    /// How often the keys (and the leader's lease) are re-read besides the watch: lease renewals
    /// make no watch events, and a watch can fall silent. Default `5s`.
    #[serde(default = "default_resync", with = "duration")]
    pub resync: Duration,
    /// etcd v3 user (`/v3/auth/authenticate`), with `password`. Default: none (no authentication).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The user's password. Keep the file readable only by the service's user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// PEM file of the CA that signed etcd's server certificates; required with `https://`
    /// endpoints (only this CA is trusted). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for etcd's `--client-cert-auth`, with `key_file`. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Ride through an outage of the routed primary's REST API: while its checks time out or are
    /// refused, etcd shows the same member holding the leader key with a live lease, and its
    /// PostgreSQL port still accepts connections, keep routing to it and keep its sessions
    /// (docs/health-checking.md, "REST outage ride-through"). `false`: HAProxy's behaviour (DOWN
    /// after `fall` failed checks, sessions cut). Default `true`.
    #[serde(default = "default_ride_through")]
    pub ride_through: bool,
}

fn default_ride_through() -> bool {
    true
}

/// The default of `etcd.resync`: a lapsed leader lease or a silent watch is seen within this
/// (plus the request timeout), for one small request per period.
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(5);

fn default_namespace() -> String {
    // Patroni's own default namespace.
    "/service/".into()
}

fn default_resync() -> Duration {
    DEFAULT_RESYNC
}

impl Etcd {
    /// The key prefix of this cluster, e.g. `/db/postgres/`.
    pub fn prefix(&self) -> String {
        format!(
            "/{}/{}/",
            self.namespace.trim_matches('/'),
            self.scope.trim_matches('/')
        )
        .replace("//", "/")
    }

    /// What serde cannot say: `(key, message)` of the first problem.
    pub(super) fn check(&self) -> Result<(), (&'static str, String)> {
        if self.endpoints.is_empty() {
            return Err((
                "etcd.endpoints",
                "empty list: give etcd's client address, e.g. [\"127.0.0.21:2379\"], or remove [etcd]".into(),
            ));
        }
        if self.scope.trim_matches('/').is_empty() || self.scope.contains(char::is_whitespace) {
            return Err((
                "etcd.scope",
                format!(
                    "invalid scope {:?}: use Patroni's `scope`, e.g. \"postgres\"",
                    self.scope
                ),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for e in &self.endpoints {
            if !seen.insert(e) {
                return Err((
                    "etcd.endpoints",
                    format!("{e} is listed twice: list each etcd member once"),
                ));
            }
        }
        match (&self.username, &self.password) {
            (Some(u), Some(_)) if u.is_empty() => {
                return Err(("etcd.username", "empty user name".into()))
            }
            (Some(_), None) => {
                return Err((
                    "etcd.password",
                    "missing: `username` needs `password`".into(),
                ))
            }
            (None, Some(_)) => {
                return Err((
                    "etcd.username",
                    "missing: `password` needs `username`".into(),
                ))
            }
            _ => {}
        }
        let tls = self.endpoints.iter().any(|e| e.tls);
        if tls && self.ca_file.is_none() {
            return Err((
                "etcd.ca_file",
                "missing: https:// endpoints need the PEM file of etcd's CA".into(),
            ));
        }
        if !tls {
            for (key, set) in [
                ("etcd.ca_file", self.ca_file.is_some()),
                ("etcd.cert_file", self.cert_file.is_some()),
                ("etcd.key_file", self.key_file.is_some()),
            ] {
                if set {
                    return Err((
                        key,
                        "set, but no endpoint is https://: write the endpoints as https://HOST:PORT, or remove the key".into(),
                    ));
                }
            }
        }
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => Err((
                "etcd.key_file",
                "missing: `cert_file` needs `key_file`".into(),
            )),
            (None, Some(_)) => Err((
                "etcd.cert_file",
                "missing: `key_file` needs `cert_file`".into(),
            )),
            _ => Ok(()),
        }
    }
}

/// One etcd client URL: plain HTTP or TLS, a host (an IP address or a DNS name, as in etcd's
/// server certificate) and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub tls: bool,
    /// An IP address (IPv6 without brackets) or a DNS name.
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// The base URL requests go to, e.g. `https://etcd1:2379`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        match self.host.contains(':') {
            true => format!("{scheme}://[{}]:{}", self.host, self.port),
            false => format!("{scheme}://{}:{}", self.host, self.port),
        }
    }
}

impl fmt::Display for Endpoint {
    /// `IP:PORT` for plain HTTP to an address (as the key was written before TLS existed), the
    /// URL otherwise.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.tls, self.host.parse::<std::net::IpAddr>()) {
            (false, Ok(ip)) => write!(f, "{}", SocketAddr::new(ip, self.port)),
            _ => f.write_str(&self.url()),
        }
    }
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "invalid etcd endpoint {s:?} ({why}): write IP:PORT, http://HOST:PORT or https://HOST:PORT, e.g. \"127.0.0.21:2379\""
            )
        };
        let s = s.trim();
        let (tls, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else if s.contains("://") {
            return Err(bad("only http and https"));
        } else {
            let a: SocketAddr = s.parse().map_err(|_| bad("not IP:PORT"))?;
            return Self::of(false, a.ip().to_string(), a.port()).map_err(|w| bad(&w));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if let Ok(a) = rest.parse::<SocketAddr>() {
            return Self::of(tls, a.ip().to_string(), a.port()).map_err(|w| bad(&w));
        }
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let port = port.parse::<u16>().map_err(|_| bad("bad port"))?;
        let name_ok = !host.is_empty()
            && host.len() <= 253
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            && !host.starts_with(['-', '.']);
        if !name_ok {
            return Err(bad("the host is neither an IP address nor a DNS name"));
        }
        Self::of(tls, host.to_ascii_lowercase(), port).map_err(|w| bad(&w))
    }
}

impl Endpoint {
    fn of(tls: bool, host: String, port: u16) -> Result<Self, String> {
        if port == 0 {
            return Err("port 0".into());
        }
        Ok(Self { tls, host, port })
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Endpoint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> Result<Endpoint, String> {
        s.parse()
    }

    #[test]
    fn endpoints_are_addresses_or_http_and_https_urls() {
        // docs/configuration.md: "IP:PORT or http://HOST:PORT (plain HTTP), or https://HOST:PORT".
        let plain = ep("127.0.0.21:2379").unwrap();
        assert_eq!(
            (plain.tls, plain.url()),
            (false, "http://127.0.0.21:2379".into())
        );
        assert_eq!(plain.to_string(), "127.0.0.21:2379", "written as before");
        assert_eq!(ep("http://127.0.0.21:2379/").unwrap(), plain);
        let tls = ep("https://ETCD-1.example:2379").unwrap();
        assert_eq!(tls.url(), "https://etcd-1.example:2379");
        assert_eq!(tls.to_string(), "https://etcd-1.example:2379");
        let v6 = ep("https://[::1]:2379").unwrap();
        assert_eq!(
            (v6.host.as_str(), v6.url()),
            ("::1", "https://[::1]:2379".into())
        );
        assert_eq!(ep("[::1]:2379").unwrap().to_string(), "[::1]:2379");
        for bad in [
            "etcd:2379",
            "unix:///run/etcd.sock",
            "https://etcd",
            "https://etcd:x",
            "https://:2379",
            "https://et cd:2379",
            "127.0.0.1:0",
            "https://etcd:0",
        ] {
            let e = ep(bad).expect_err(bad);
            assert!(e.contains(bad) && e.contains("https://HOST:PORT"), "{e}");
        }
    }

    fn etcd(extra: &str) -> Result<(), (&'static str, String)> {
        let e: Etcd = toml::from_str(&format!("scope = \"pg\"\n{extra}")).unwrap();
        e.check()
    }

    #[test]
    fn credentials_and_certificates_come_in_pairs_and_tls_needs_a_ca() {
        // Each key names what it needs: user with password, cert with key, https with a CA.
        let key = |extra: &str| etcd(extra).unwrap_err().0;
        let ok = |extra: &str| etcd(extra).unwrap();
        ok("endpoints = [\"127.0.0.1:2379\"]");
        ok("endpoints = [\"127.0.0.1:2379\"]\nusername = \"u\"\npassword = \"p\"");
        assert_eq!(key("endpoints = []"), "etcd.endpoints");
        assert_eq!(
            key("endpoints = [\"127.0.0.1:2379\", \"http://127.0.0.1:2379\"]"),
            "etcd.endpoints"
        );
        assert_eq!(
            key("endpoints = [\"127.0.0.1:2379\"]\nusername = \"u\""),
            "etcd.password"
        );
        assert_eq!(
            key("endpoints = [\"127.0.0.1:2379\"]\npassword = \"p\""),
            "etcd.username"
        );
        assert_eq!(key("endpoints = [\"https://e:2379\"]"), "etcd.ca_file");
        ok("endpoints = [\"https://e:2379\"]\nca_file = \"/ca.pem\"");
        ok("endpoints = [\"https://e:2379\"]\nca_file = \"/ca.pem\"\ncert_file = \"/c\"\nkey_file = \"/k\"");
        assert_eq!(
            key("endpoints = [\"https://e:2379\"]\nca_file = \"/ca.pem\"\ncert_file = \"/c\""),
            "etcd.key_file"
        );
        assert_eq!(
            key("endpoints = [\"127.0.0.1:2379\"]\nca_file = \"/ca.pem\""),
            "etcd.ca_file"
        );
        let e: Etcd = toml::from_str("scope = \"pg\"\nendpoints = [\"127.0.0.1:2379\"]").unwrap();
        assert_eq!(e.resync, DEFAULT_RESYNC);
    }
}
