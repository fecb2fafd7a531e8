//! Where a node's checks connect, and the resolution of its host name. A server written with a
//! host name is resolved by its checker, before a check once `check.resolve_interval` has passed
//! since the last answer, so that one task per node does both and the address a check confirmed is
//! the address the node is routed at: the checker reports the address with the check, and the state
//! owner takes a changed address as another PostgreSQL (fail closed, `state::servers::on_resolved`).
//!
//! A name that does not resolve before the node has any address fails that check with the
//! resolver's reason (`L4CON`, counted like a refused connect): visible on the dashboard and in the
//! log, never a start-up error. A name that stops resolving keeps its last address, as HAProxy's
//! `init-addr last` does: its checks at that address still decide its health.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::Host;

/// Resolves a host name to its addresses (the system resolver; a fake in tests).
pub type Lookup = Arc<
    dyn Fn(String) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>> + Send + Sync,
>;

/// The system resolver (`getaddrinfo`: `/etc/hosts`, then DNS, as `nsswitch.conf` says).
pub fn system() -> Lookup {
    Arc::new(|name: String| {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((name.as_str(), 0)).await?;
            Ok(addrs.map(|a| a.ip()).collect())
        })
    })
}

/// The address to use from a resolver's answer: the current one while the name still resolves to
/// it (a name with several addresses must not move the node between machines at every lookup),
/// else the first one the resolver gave (its order follows RFC 6724 and `gai.conf`).
pub fn choose(current: Option<IpAddr>, answer: &[IpAddr]) -> Option<IpAddr> {
    match current {
        Some(ip) if answer.contains(&ip) => Some(ip),
        _ => answer.first().copied(),
    }
}

/// Where one node's checks go, and what its checker knows of its host name.
#[derive(Clone)]
pub struct Target {
    /// The server's host and PostgreSQL port (its `address`).
    pub host: Host,
    pub port: u16,
    /// `check_addr`, when set: the checks go there whatever the name resolves to.
    pub check_ip: Option<IpAddr>,
    pub check_port: u16,
    /// The address the host name resolved to last, and when (`None` before any answer).
    pub resolved: Option<(IpAddr, Instant)>,
    pub every: Duration,
    pub lookup: Lookup,
}

/// Where a check goes, and the address the server's host name resolved to for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    pub check: SocketAddr,
    /// `None` for a server written with an IP address.
    pub server_ip: Option<IpAddr>,
    /// The server's PostgreSQL at that address (where the SQL check goes).
    pub postgres: SocketAddr,
}

impl Target {
    /// The address of the next check, resolving the host name first when its last answer is
    /// older than `every`. `Err` names the name and why it does not resolve.
    pub async fn next(&mut self, timeout: Duration) -> Result<Resolved, String> {
        let name = match &self.host {
            Host::Ip(ip) => {
                return Ok(Resolved {
                    check: SocketAddr::new(self.check_ip.unwrap_or(*ip), self.check_port),
                    server_ip: None,
                    postgres: SocketAddr::new(*ip, self.port),
                });
            }
            Host::Name(name) => name.clone(),
        };
        let now = Instant::now();
        let stale = self
            .resolved
            .is_none_or(|(_, at)| now.saturating_duration_since(at) >= self.every);
        if stale {
            let answer = tokio::time::timeout(timeout, (self.lookup)(name.clone())).await;
            let current = self.resolved.map(|(ip, _)| ip);
            match answer {
                Ok(Ok(ips)) => match choose(current, &ips) {
                    Some(ip) => self.resolved = Some((ip, now)),
                    None => return self.keep_last(&name, "the resolver gave no address"),
                },
                Ok(Err(e)) => return self.keep_last(&name, &e.to_string()),
                Err(_) => {
                    return self.keep_last(&name, &format!("no answer within {timeout:?}"));
                }
            }
        }
        self.at_resolved(&name)
    }

    /// A failed lookup: the last address stands if there is one; without one the check fails.
    fn keep_last(&mut self, name: &str, why: &str) -> Result<Resolved, String> {
        match self.resolved {
            Some((ip, _)) => {
                tracing::warn!(target: "patroni_proxy::health", host = name, address = %ip, reason = why,
                    "host name does not resolve now: its last address is kept");
                // Asked again at the next check, not at every one: `every` from now.
                self.resolved = Some((ip, Instant::now()));
                self.at_resolved(name)
            }
            None => Err(format!("host name {name:?} does not resolve: {why}")),
        }
    }

    fn at_resolved(&self, name: &str) -> Result<Resolved, String> {
        let Some((ip, _)) = self.resolved else {
            return Err(format!("host name {name:?} is not resolved"));
        };
        Ok(Resolved {
            check: SocketAddr::new(self.check_ip.unwrap_or(ip), self.check_port),
            server_ip: Some(ip),
            postgres: SocketAddr::new(ip, self.port),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A resolver that answers from a table the test changes, and counts the lookups.
    fn table(t: Arc<Mutex<Option<Vec<IpAddr>>>>, asked: Arc<Mutex<u32>>) -> Lookup {
        Arc::new(move |_name| {
            let answer = t.lock().unwrap().clone();
            *asked.lock().unwrap() += 1;
            Box::pin(
                async move { answer.ok_or_else(|| io::Error::other("Name or service not known")) },
            )
        })
    }

    fn target(lookup: Lookup) -> Target {
        Target {
            host: Host::Name("db1".into()),
            port: 5432,
            check_ip: None,
            check_port: 8008,
            resolved: None,
            every: Duration::from_secs(10),
            lookup,
        }
    }

    #[test]
    fn a_name_that_still_resolves_to_the_current_address_keeps_it() {
        let (a, b) = (ip("127.0.0.11"), ip("127.0.0.12"));
        assert_eq!(choose(Some(b), &[a, b]), Some(b));
        assert_eq!(choose(Some(b), &[a]), Some(a));
        assert_eq!(choose(None, &[a, b]), Some(a));
        assert_eq!(choose(Some(a), &[]), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_name_is_resolved_again_only_after_resolve_interval() {
        let answer = Arc::new(Mutex::new(Some(vec![ip("127.0.0.11")])));
        let asked = Arc::new(Mutex::new(0));
        let mut t = target(table(answer.clone(), asked.clone()));
        let first = t.next(Duration::from_secs(1)).await.unwrap();
        assert_eq!(first.check, "127.0.0.11:8008".parse().unwrap());
        assert_eq!(first.server_ip, Some(ip("127.0.0.11")));
        *answer.lock().unwrap() = Some(vec![ip("127.0.0.12")]);
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(t.next(Duration::from_secs(1)).await.unwrap(), first);
        assert_eq!(
            *asked.lock().unwrap(),
            1,
            "not asked again within resolve_interval"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        let moved = t.next(Duration::from_secs(1)).await.unwrap();
        assert_eq!(moved.server_ip, Some(ip("127.0.0.12")));
        assert_eq!(*asked.lock().unwrap(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_name_that_never_resolved_fails_the_check_naming_it_and_why() {
        let mut t = target(table(Arc::new(Mutex::new(None)), Arc::new(Mutex::new(0))));
        let e = t.next(Duration::from_secs(1)).await.unwrap_err();
        assert_eq!(
            e,
            "host name \"db1\" does not resolve: Name or service not known"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_name_that_stops_resolving_keeps_its_last_address() {
        // HAProxy's `init-addr last`: the checks at the last address still decide.
        let answer = Arc::new(Mutex::new(Some(vec![ip("127.0.0.11")])));
        let mut t = target(table(answer.clone(), Arc::new(Mutex::new(0))));
        let first = t.next(Duration::from_secs(1)).await.unwrap();
        *answer.lock().unwrap() = None;
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(t.next(Duration::from_secs(1)).await.unwrap(), first);
    }

    #[tokio::test(start_paused = true)]
    async fn a_resolver_that_does_not_answer_is_given_up_on_at_the_timeout() {
        let hang: Lookup = Arc::new(|_| Box::pin(std::future::pending()));
        let mut t = target(hang);
        let e = t.next(Duration::from_millis(500)).await.unwrap_err();
        assert!(e.contains("no answer within 500ms"), "{e}");
    }

    #[tokio::test]
    async fn check_addr_and_ip_hosts_are_never_resolved() {
        let never: Lookup = Arc::new(|_| panic!("resolved an IP"));
        let mut t = target(never.clone());
        t.host = Host::Ip(ip("127.0.0.11"));
        t.check_ip = Some(ip("127.0.0.21"));
        let r = t.next(Duration::from_secs(1)).await.unwrap();
        assert_eq!(r.check, "127.0.0.21:8008".parse().unwrap());
        assert_eq!(r.server_ip, None);
    }
}
