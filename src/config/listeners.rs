//! The client-facing listeners: `[listen]` written once (one table) or several times
//! (`[[listen]]`), each with one or several `bind` addresses, a role (which nodes it routes to),
//! and for read listeners a balance, a lag limit and a fallback. How the words and sizes are
//! written lives here; the listener's fields are in `sections`.

use std::fmt;
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

use super::sections::Listen;
use super::values::bind_addr;

/// Every listener, in the file's order; never empty. It reads as its first listener
/// (`config.listen.bind`), the one the running proxy serves: code written for one listener keeps
/// working, and [`Listeners::all`] gives every one.
#[derive(Debug, Clone, PartialEq)]
pub struct Listeners(Vec<Listen>);

impl Listeners {
    /// Every listener, in the file's order.
    pub fn all(&self) -> &[Listen] {
        &self.0
    }

    /// The listeners given; `None` when there are none (a config always has one).
    pub fn new(listeners: Vec<Listen>) -> Option<Self> {
        (!listeners.is_empty()).then_some(Self(listeners))
    }

    /// The dotted prefix of listener `i` in errors: `listen` when the file has one, else
    /// `listen[i]`, as the file writes them.
    pub fn key(&self, i: usize) -> String {
        if self.0.len() == 1 {
            "listen".into()
        } else {
            format!("listen[{i}]")
        }
    }
}

impl Default for Listeners {
    fn default() -> Self {
        Self(vec![Listen::default()])
    }
}

impl Deref for Listeners {
    type Target = Listen;

    fn deref(&self) -> &Listen {
        // Never empty: `new` and the deserializer refuse an empty list.
        &self.0[0]
    }
}

impl DerefMut for Listeners {
    fn deref_mut(&mut self) -> &mut Listen {
        &mut self.0[0]
    }
}

impl Serialize for Listeners {
    /// One listener is written as a `[listen]` table (as before several existed), more as
    /// `[[listen]]`.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => one.serialize(s),
            many => many.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Listeners {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Listeners;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a [listen] table or [[listen]] tables")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Listeners, A::Error> {
                let one = Listen::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Listeners(vec![one]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Listeners, A::Error> {
                let mut all = Vec::new();
                while let Some(l) = seq.next_element::<Listen>()? {
                    all.push(l);
                }
                Listeners::new(all).ok_or_else(|| {
                    de::Error::custom("no listener: write at least one [[listen]] table")
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// A listener's addresses: one (`bind = "*:5000"`) or several (`bind = ["*:5000", "[::]:5000"]`),
/// HAProxy's several `bind` lines. Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binds(Vec<SocketAddr>);

impl Binds {
    /// The addresses given; `None` when there are none.
    pub fn new(addrs: Vec<SocketAddr>) -> Option<Self> {
        (!addrs.is_empty()).then_some(Self(addrs))
    }

    /// The first address: the one the running proxy listens on.
    pub fn first(&self) -> SocketAddr {
        self.0[0]
    }

    /// Every address.
    pub fn all(&self) -> &[SocketAddr] {
        &self.0
    }
}

impl From<SocketAddr> for Binds {
    fn from(a: SocketAddr) -> Self {
        Self(vec![a])
    }
}

impl fmt::Display for Binds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all: Vec<String> = self.0.iter().map(|a| a.to_string()).collect();
        f.write_str(&all.join(", "))
    }
}

impl Serialize for Binds {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct One<'a>(#[serde(with = "bind_addr")] &'a SocketAddr);
        match self.0.as_slice() {
            [one] => One(one).serialize(s),
            many => s.collect_seq(many.iter().map(One)),
        }
    }
}

impl<'de> Deserialize<'de> for Binds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Binds;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an address like \"*:5000\" or a list of them")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Binds, E> {
                bind_addr::parse(s).map(Binds::from).map_err(E::custom)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Binds, A::Error> {
                let mut all = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    all.push(bind_addr::parse(&s).map_err(de::Error::custom)?);
                }
                Binds::new(all).ok_or_else(|| de::Error::custom("empty list: give an address"))
            }
        }
        d.deserialize_any(V)
    }
}

/// Which nodes a listener routes new sessions to, from each node's one check answer (Patroni's
/// endpoints in brackets; docs/migrating-from-haproxy.md compares them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The one confirmed primary, fail closed, with the hold (`/primary`, `/master`, `/leader`,
    /// `/read-write`).
    #[default]
    Primary,
    /// Running streaming replicas within `max_lag` (`/replica`).
    Replica,
    /// The primary or a replica (`/read-only`).
    Any,
    /// The leader of a standby cluster (`/standby-leader`).
    StandbyLeader,
    /// Running streaming replicas that are synchronous standbys (`/sync`: the body's
    /// `sync_standby: true`), within `max_lag`.
    Sync,
    /// Running streaming replicas that are neither synchronous nor quorum standbys (`/async`),
    /// within `max_lag`.
    Async,
}

impl Role {
    /// As written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::Any => "any",
            Role::StandbyLeader => "standby_leader",
            Role::Sync => "sync",
            Role::Async => "async",
        }
    }

    /// Routes to several nodes at once, so `balance` applies.
    pub fn balances(self) -> bool {
        matches!(self, Role::Replica | Role::Any | Role::Sync | Role::Async)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a replica listener picks among the nodes that qualify (HAProxy's `balance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// The node with the fewest sessions (HAProxy `leastconn`).
    #[default]
    Leastconn,
    /// Each node in turn (HAProxy `roundrobin`).
    Roundrobin,
}

impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Balance::Leastconn => "leastconn",
            Balance::Roundrobin => "roundrobin",
        })
    }
}

/// Where a replica listener sends a session when no replica qualifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// Nowhere: the client is refused, as HAProxy with no server up.
    #[default]
    None,
    /// The confirmed primary (HAProxy: the primary as a `backup` server).
    Primary,
}

impl fmt::Display for Fallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fallback::None => "none",
            Fallback::Primary => "primary",
        })
    }
}

/// A replication lag in bytes, written as Patroni's `/replica?lag=` reads it: a whole number of
/// bytes (`16384`) or a number with a unit `B`, `kB`, `MB`, `GB`, `TB` (powers of 1024,
/// case-sensitive, as PostgreSQL and Patroni's `parse_int` take them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

const UNITS: [(&str, u64); 5] = [
    ("TB", 1 << 40),
    ("GB", 1 << 30),
    ("MB", 1 << 20),
    ("kB", 1 << 10),
    ("B", 1),
];

impl ByteSize {
    /// Parses `16384`, `10MB`, `1.5GB`, `100 MB`. A fraction is rounded to whole bytes, as
    /// Patroni rounds. Errors say what is allowed; Patroni itself ignores a lag it cannot parse
    /// (no limit), which is never what was meant.
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = (&t[..split], t[split..].trim());
        let bad = || {
            format!(
                "invalid size {s:?}: write bytes (16384) or a number with B, kB, MB, GB or TB \
                 (case-sensitive, as Patroni reads `?lag=`), e.g. \"10MB\""
            )
        };
        let factor = match unit {
            "" => 1,
            u => UNITS.iter().find(|(n, _)| *n == u).ok_or_else(bad)?.1,
        };
        if num.is_empty() || num.starts_with('.') && num.len() == 1 {
            return Err(bad());
        }
        let bytes = if num.contains('.') {
            let v: f64 = num.parse().map_err(|_| bad())?;
            let b = (v * factor as f64).round();
            if !(0.0..=(u64::MAX as f64 / 2.0)).contains(&b) {
                return Err(format!("size {s:?} is too large"));
            }
            b as u64
        } else {
            let v: u64 = num.parse().map_err(|_| bad())?;
            v.checked_mul(factor)
                .ok_or_else(|| format!("size {s:?} is too large"))?
        };
        Ok(Self(bytes))
    }
}

impl fmt::Display for ByteSize {
    /// The largest unit that writes the value exactly: `100MB`, `16kB`, `1000B`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, size) = UNITS
            .iter()
            .find(|(_, size)| self.0 % size == 0 && self.0 >= *size)
            .copied()
            .unwrap_or(("B", 1));
        write!(f, "{}{name}", self.0 / size)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size like \"10MB\" or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a lag cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<ByteSize, E> {
                ByteSize::parse(s).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, FileConfig};

    const SERVERS: &str = "[[server]]\nname = \"a\"\naddress = \"127.0.0.11:5432\"\n\
                           [[server]]\nname = \"b\"\naddress = \"127.0.0.12:5432\"\n";

    /// The file's keys checked as `import-haproxy` checks them (all but the runtime guard).
    fn keys(listen: &str) -> Result<FileConfig, String> {
        let file: FileConfig =
            toml::from_str(&format!("{listen}{SERVERS}")).map_err(|e| e.to_string())?;
        file.check_keys()
            .map(|()| file.clone())
            .map_err(|e| format!("{}: {}", e.key, e.message))
    }

    #[test]
    fn one_listen_table_or_several_and_one_bind_or_several() {
        // "accept a table or an array"; one listener is written back as a table.
        let one = keys("[listen]\nname = \"rw\"\n").unwrap();
        assert_eq!(one.listen.all().len(), 1);
        assert!(toml::to_string(&one).unwrap().contains("[listen]\n"));
        let two = keys(
            "[[listen]]\nname = \"rw\"\nbind = [\"*:5000\", \"[::]:5000\"]\n\
             [[listen]]\nname = \"ro\"\nbind = \"*:5001\"\nrole = \"replica\"\n\
             balance = \"roundrobin\"\nmax_lag = \"10MB\"\nfallback = \"primary\"\nservers = [\"b\"]\n",
        )
        .unwrap();
        let ro = &two.listen.all()[1];
        assert_eq!(two.listen.name, "rw", "reads as the first listener");
        assert_eq!(two.listen.bind.all().len(), 2);
        assert_eq!(
            (ro.role, ro.balance, ro.max_lag, ro.fallback),
            (
                Role::Replica,
                Some(Balance::Roundrobin),
                Some(ByteSize(10 << 20)),
                Some(Fallback::Primary)
            )
        );
        let text = toml::to_string(&two).unwrap();
        assert!(
            text.contains("[[listen]]") && text.contains("max_lag = \"10MB\""),
            "{text}"
        );
        assert_eq!(toml::from_str::<FileConfig>(&text).unwrap(), two);
    }

    #[test]
    fn listener_keys_are_checked_naming_the_listener_and_key() {
        for (listen, says) in [
            (
                "[[listen]]\nname = \"x\"\n[[listen]]\nname = \"x\"\nbind = \"*:5001\"\n",
                "listen[1].name: duplicate listener name",
            ),
            (
                "[[listen]]\nname = \"x\"\n[[listen]]\nname = \"y\"\nbind = \"127.0.0.1:5000\"\n",
                "listen[1].bind: 127.0.0.1:5000 is already taken by listener 'x'",
            ),
            (
                "[listen]\nbind = \"*:7000\"\n",
                "listen.bind: 0.0.0.0:7000 is already taken by the stats",
            ),
            (
                "[listen]\nbalance = \"roundrobin\"\n",
                "listen.balance: only for role replica or any",
            ),
            (
                "[listen]\nmax_lag = 100\n",
                "listen.max_lag: only for role replica or any",
            ),
            (
                "[listen]\nrole = \"any\"\nfallback = \"primary\"\n",
                "listen.fallback: only for role replica",
            ),
            (
                "[listen]\nservers = [\"c\"]\n",
                "listen.servers: no [[server]] is named \"c\"",
            ),
            ("[listen]\nservers = [\"a\", \"a\"]\n", "listed twice"),
            ("[listen]\nservers = []\n", "listen.servers: empty list"),
            (
                "[listen]\nrole = \"replica\"\nmax_lag = 1125899906842625\n",
                "listen.max_lag: 1125899906842625 is out of range",
            ),
        ] {
            let e = keys(listen).unwrap_err();
            assert!(e.contains(says), "{listen}: {e}");
        }
        assert!(keys("[listen]\nrole = \"lead\"\n")
            .unwrap_err()
            .contains("unknown variant"));
        assert!(keys("listen = []\n").unwrap_err().contains("no listener"));
    }

    #[test]
    fn this_version_serves_a_primary_port_first_and_node_sets_after_it() {
        // The first listener is the primary port (every server); the others are replica, any or
        // standby_leader listeners, with a subset if they like. Each may have several binds.
        for (listen, says) in [
            (
                "[listen]\nrole = \"replica\"\n",
                "the first listener is the primary port",
            ),
            (
                "[listen]\nservers = [\"a\"]\n",
                "routes over every [[server]]",
            ),
        ] {
            keys(listen).unwrap();
            let e = Config::from_toml(&format!("{listen}{SERVERS}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{listen}: {e}");
        }
        let served = "[[listen]]\nname = \"rw\"\n[[listen]]\nname = \"ro\"\n\
                      bind = [\"*:5001\", \"*:5002\"]\nrole = \"replica\"\nservers = [\"a\"]\n";
        Config::from_toml(&format!("{served}{SERVERS}")).unwrap();
    }

    #[test]
    fn lag_units_are_patronis_powers_of_1024_and_case_sensitive() {
        // Patroni `convert_to_base_unit`: "For space: B, kB, MB, GB, or TB" (case sensitive).
        for (text, bytes) in [
            ("16384", 16384),
            ("10MB", 10 << 20),
            ("100 MB", 100 << 20),
            ("1GB", 1 << 30),
            ("1.5kB", 1536),
            ("2TB", 2 << 40),
            ("0", 0),
        ] {
            assert_eq!(ByteSize::parse(text), Ok(ByteSize(bytes)), "{text}");
        }
        for bad in [
            "10mb",
            "10KB",
            "MB",
            "",
            "-1",
            "1e3",
            "10 M",
            "99999999999999TB",
        ] {
            assert!(ByteSize::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_lag_is_written_in_the_largest_exact_unit() {
        assert_eq!(ByteSize(100 << 20).to_string(), "100MB");
        assert_eq!(ByteSize(16384).to_string(), "16kB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
        assert_eq!(ByteSize(0).to_string(), "0B");
    }
}
