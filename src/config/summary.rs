//! The effective settings as `patroni-proxy check` prints them (like `haproxy -c`): every default
//! and fallback resolved, one line per concern.

use std::fmt;

use super::{format_duration as d, Config, FileConfig, Listen, Role};

impl FileConfig {
    /// How each listener routes, one line each: what `import-haproxy --check` prints and
    /// `check` starts with.
    pub fn routing(&self) -> String {
        let every: Vec<&str> = self.servers.iter().map(|s| s.name.as_str()).collect();
        self.listen
            .all()
            .iter()
            .map(|l| format!("{}\n", route(l, &every)))
            .collect()
    }
}

fn route(l: &Listen, every: &[&str]) -> String {
    let mut servers = match &l.servers {
        Some(names) => names.join(", "),
        None => every.join(", "),
    };
    if let Some(port) = l.server_port {
        servers.push_str(&format!(" (on their port {port})"));
    }
    let lag = l
        .max_lag
        .map(|g| format!(" within max_lag {g}"))
        .unwrap_or_default();
    let balance = l.balance.unwrap_or_default();
    let who = match l.role {
        Role::Primary => format!(
            "the one confirmed primary among {servers} (fail closed; clients wait up to {} for one)",
            d(l.hold_timeout)
        ),
        Role::Replica => format!(
            "running streaming replicas{lag} among {servers}, balanced {balance}; when none \
             qualifies: {}",
            match l.fallback.unwrap_or_default() {
                super::Fallback::None => "refused",
                super::Fallback::Primary => "the primary",
            }
        ),
        Role::Any => format!(
            "the primary or running streaming replicas{lag} among {servers}, balanced {balance}"
        ),
        Role::StandbyLeader => format!("the standby cluster's leader among {servers}"),
        Role::Sync => format!(
            "running streaming synchronous standbys{lag} among {servers}, balanced {balance}"
        ),
        Role::Async => format!(
            "running streaming asynchronous replicas{lag} among {servers}, balanced {balance}"
        ),
    };
    format!(
        "routing: listen {} on {} -> role {}: {who}",
        l.name, l.bind, l.role
    )
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (l, c) = (&*self.listen, &self.check);
        let on_off = |b: bool| if b { "on" } else { "off" };
        f.write_str(&self.routing())?;
        writeln!(
            f,
            "listen {} on {} (maxconn {}, retries {}, timeout connect {} / client {} / server {} / \
             queue {}, on-marked-down {:?})",
            l.name,
            l.bind,
            self.global.maxconn,
            l.retries,
            d(l.timeout_connect),
            d(l.timeout_client),
            d(l.timeout_server),
            d(self.timeout_queue()),
            l.on_marked_down,
        )?;
        writeln!(
            f,
            "check {} {} {} expect {} every {} (fastinter {}, downinter {}), rise {} fall {}, \
             timeout {}",
            c.method,
            c.uri,
            c.version,
            c.expect_status,
            d(c.inter),
            d(self.interval_for(false, false)),
            d(self.interval_for(false, true)),
            c.rise,
            c.fall,
            d(c.timeout),
        )?;
        if c.ssl {
            let file = |p: &Option<std::path::PathBuf>| match p {
                Some(p) => p.display().to_string(),
                None => "none".into(),
            };
            let name = c.sni.as_deref().unwrap_or("the check address");
            writeln!(
                f,
                "check over TLS: verify {} (ca-file {}, name {name}), client certificate {}{}",
                c.verify,
                file(&c.ca_file),
                file(&c.crt),
                c.key
                    .as_ref()
                    .map(|k| format!(" key {}", k.display()))
                    .unwrap_or_default(),
            )?;
        }
        if let Some(sql) = self.sql_check() {
            writeln!(f, "{}", sql.summary())?;
        }
        for (i, srv) in self.servers.iter().enumerate() {
            writeln!(
                f,
                "server {} {} maxconn {} check {}",
                srv.name,
                srv.address,
                srv.maxconn,
                self.check_address_of(&self.servers[i])
            )?;
        }
        writeln!(
            f,
            "failover: re-check every {} while the primary is unknown; hold clients up to {}; \
             inspect startup {}",
            d(c.failover_inter),
            d(l.hold_timeout),
            on_off(l.inspect_startup),
        )?;
        writeln!(
            f,
            "tcp keepalive: client {}, server {} (idle {}, probe every {}, {} probes)",
            on_off(l.client_keepalive),
            on_off(l.server_keepalive),
            d(l.keepalive_idle),
            d(l.keepalive_interval),
            l.keepalive_count,
        )?;
        if let Some(e) = &self.etcd {
            let endpoints: Vec<String> = e.endpoints.iter().map(|e| e.to_string()).collect();
            writeln!(
                f,
                "etcd watch on {}{{leader,failover}} via {} (tried in turn), keys and leader lease re-read every {}",
                e.prefix(),
                endpoints.join(", "),
                d(e.resync),
            )?;
            let file = |p: &Option<std::path::PathBuf>| {
                p.as_ref()
                    .map_or("none".to_string(), |p| p.display().to_string())
            };
            writeln!(
                f,
                "etcd authentication {}, TLS CA {}, client certificate {} (key {})",
                e.username
                    .as_ref()
                    .map_or("off".to_string(), |u| format!("as user {u:?}")),
                file(&e.ca_file),
                file(&e.cert_file),
                file(&e.key_file),
            )?;
            let named: Vec<String> = (self.servers.iter())
                .map(|s| match &s.member {
                    Some(m) => format!("{}={m}", s.name),
                    None => format!("{}=(from its REST answer)", s.name),
                })
                .collect();
            writeln!(
                f,
                "REST outage ride-through {}{}",
                on_off(e.ride_through),
                if e.ride_through {
                    format!(" (Patroni members: {})", named.join(", "))
                } else {
                    String::new()
                },
            )?;
        }
        writeln!(
            f,
            "log format {}, session lines {}",
            self.log.format,
            on_off(self.log.sessions)
        )?;
        let auth = if self.stats.auth.is_some() {
            " (basic auth)"
        } else {
            ""
        };
        let admin = if self.stats.admin_user.is_some() {
            ", admin API on"
        } else {
            ""
        };
        writeln!(f, "stats on {}{auth}{admin}", self.stats.bind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fallback_is_shown_resolved() {
        let c = Config::from_toml(
            "[check]\nmethod = \"HEAD\"\nversion = \"HTTP/1.1\"\ndowninter = \"10s\"\n\
             [listen]\nclient_keepalive = false\n[stats]\nauth = \"a:b\"\nadmin_user = \"o\"\n\
             admin_password = \"p\"\n\
             [[server]]\nname = \"a\"\naddress = \"127.0.0.11:5432\"\ncheck_port = 8009\n",
        )
        .unwrap();
        let shown = c.to_string();
        for line in [
            "routing: listen postgres on 0.0.0.0:5000 -> role primary: the one confirmed primary \
             among a (fail closed; clients wait up to 10s for one)\n",
            "listen postgres on 0.0.0.0:5000 (maxconn 100, retries 2, timeout connect 4s / \
             client 30m / server 30m / queue 4s, on-marked-down ShutdownSessions)\n",
            "check HEAD / HTTP/1.1 expect 200 every 3s (fastinter 3s, downinter 10s), rise 2 \
             fall 3, timeout 5s\n",
            "server a 127.0.0.11:5432 maxconn 100 check 127.0.0.11:8009\n",
            "tcp keepalive: client off, server on (idle 1m, probe every 10s, 6 probes)\n",
            "stats on 0.0.0.0:7000 (basic auth), admin API on\n",
            "log format text, session lines off\n",
        ] {
            assert!(shown.contains(line), "{line:?} not in:\n{shown}");
        }
    }

    #[test]
    fn routing_says_how_each_listener_routes() {
        // Issue 13: "`import-haproxy --check` prints how each listener will route".
        let file: crate::config::FileConfig = toml::from_str(
            "[[listen]]\nname = \"rw\"\n[[listen]]\nname = \"ro\"\nbind = [\"*:5001\", \"[::1]:5001\"]\n\
             role = \"replica\"\nmax_lag = \"100MB\"\nfallback = \"primary\"\nservers = [\"b\"]\n\
             [[server]]\nname = \"a\"\naddress = \"127.0.0.11:5432\"\n\
             [[server]]\nname = \"b\"\naddress = \"127.0.0.12:5432\"\n",
        )
        .unwrap();
        assert_eq!(
            file.routing(),
            "routing: listen rw on 0.0.0.0:5000 -> role primary: the one confirmed primary among \
             a, b (fail closed; clients wait up to 10s for one)\n\
             routing: listen ro on 0.0.0.0:5001, [::1]:5001 -> role replica: running streaming \
             replicas within max_lag 100MB among b, balanced leastconn; when none qualifies: the \
             primary\n"
        );
    }
}
