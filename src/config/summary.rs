//! The effective settings as `patroni-proxy check` prints them (like `haproxy -c`): every default
//! and fallback resolved, one line per concern.

use std::fmt;

use super::{format_duration as d, Config};

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (l, c) = (&self.listen, &self.check);
        let on_off = |b: bool| if b { "on" } else { "off" };
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
        for (i, srv) in self.servers.iter().enumerate() {
            writeln!(
                f,
                "server {} {} maxconn {} check {}",
                srv.name,
                srv.address,
                srv.maxconn,
                self.check_target(i)
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
}
