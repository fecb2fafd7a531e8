//! The stats listener's accept loop and HTTP connections, with the limits that keep a hostile or
//! broken client from holding resources: a per-client and a total connection limit (with slots kept
//! for addresses that hold none, so one client can never lock the probes out), a deadline for each
//! request head (slowloris, and idle keep-alive connections), a bounded head size (oversized URIs
//! and headers get 431/414), and a maximum connection age (a client that stops reading a response
//! cannot pin a slot forever).
//!
//! It runs on its own listener and tasks and shares nothing with the primary port but the read-only
//! snapshot, so whatever happens here, clients of :5000 are not slowed down.

use std::collections::HashMap;

use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Extension;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_layer::Layer as _;

use crate::net::{register, Acceptor, Moves};
use crate::state::Shared;

/// Resource bounds of the stats listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once, all clients together; beyond it a new connection is closed at
    /// once (waiting in the kernel's queue would make a probe wait behind an attacker).
    pub max_connections: usize,
    /// Connections one client (an IPv4 address, an IPv6 /64) may hold at once; more are closed at
    /// once. Well under `max_connections`, so one address can never take the slots of others.
    pub per_client: usize,
    /// The last `reserved` of the `max_connections` slots go only to clients that hold no
    /// connection yet: with many busy addresses, a probe from a new one still gets in.
    pub reserved: usize,
    /// Time allowed to send a whole request head, and to send the next one on an idle keep-alive
    /// connection. A probe or a browser sends its request at once.
    pub header_timeout: Duration,
    /// Largest request head (request line + headers) read; hyper answers 431 beyond it.
    pub max_head: usize,
    /// Longest request target accepted (414 beyond it).
    pub max_uri: usize,
    /// A connection is closed (gracefully, then for good one second later) after this long.
    pub max_age: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            // A browser opens up to 6 connections per host, Prometheus one per scrape target.
            per_client: 16,
            reserved: 16,
            header_timeout: Duration::from_secs(2),
            max_head: 16 * 1024,
            max_uri: 2048,
            max_age: Duration::from_secs(300),
        }
    }
}

/// Why a new connection was closed without being served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The client already holds `per_client` connections, or holds some and only the slots kept
    /// for other clients are left.
    ClientLimit,
    /// `max_connections` are open.
    Full,
}

impl Refusal {
    /// Every reason, in the order of the metric's `reason` label values.
    pub const ALL: [Refusal; 2] = [Refusal::ClientLimit, Refusal::Full];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::ClientLimit => "client_limit",
            Refusal::Full => "full",
        }
    }
}

/// The admission rule, given what the connecting client holds and what is open in all.
pub fn admit(limits: &Limits, client_open: usize, total_open: usize) -> Result<(), Refusal> {
    if total_open >= limits.max_connections {
        return Err(Refusal::Full);
    }
    if client_open >= limits.per_client {
        return Err(Refusal::ClientLimit);
    }
    let unreserved = limits.max_connections.saturating_sub(limits.reserved);
    if client_open > 0 && total_open >= unreserved {
        return Err(Refusal::ClientLimit);
    }
    Ok(())
}

/// Who a connection counts against: the IPv4 address, or the /64 of an IPv6 address (one host
/// usually has a whole /64 to pick addresses from). An IPv4-mapped IPv6 address is its IPv4 one.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = v6.to_bits() & !u128::from(u64::MAX);
            IpAddr::V6(Ipv6Addr::from_bits(prefix))
        }
        v4 => v4,
    }
}

/// The connections open per client and in all. Entries at zero are removed, so the map never
/// holds more than `max_connections` keys.
#[derive(Debug, Default)]
pub struct Clients {
    open: HashMap<IpAddr, usize>,
    total: usize,
}

impl Clients {
    /// Counts a new connection from `ip` if [`admit`] allows it.
    pub fn try_add(&mut self, limits: &Limits, ip: IpAddr) -> Result<(), Refusal> {
        let key = client_key(ip);
        let client_open = self.open.get(&key).copied().unwrap_or(0);
        admit(limits, client_open, self.total)?;
        *self.open.entry(key).or_insert(0) += 1;
        self.total += 1;
        Ok(())
    }

    /// Forgets one connection from `ip` (one that [`Clients::try_add`] counted).
    pub fn remove(&mut self, ip: IpAddr) {
        let key = client_key(ip);
        if let Some(n) = self.open.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.open.remove(&key);
            }
            self.total = self.total.saturating_sub(1);
        }
    }

    /// Connections open from `ip`'s client.
    #[cfg(test)]
    fn open_from(&self, ip: IpAddr) -> usize {
        self.open.get(&client_key(ip)).copied().unwrap_or(0)
    }

    #[cfg(test)]
    fn total(&self) -> usize {
        self.total
    }
}

/// One counted connection; dropping it (when the connection task ends, however) releases it.
struct Slot {
    clients: Arc<Mutex<Clients>>,
    ip: IpAddr,
}

impl Slot {
    fn take(clients: &Arc<Mutex<Clients>>, limits: &Limits, ip: IpAddr) -> Result<Self, Refusal> {
        // The lock only guards counters: a panic elsewhere cannot leave them half-updated.
        let mut c = clients.lock().unwrap_or_else(PoisonError::into_inner);
        c.try_add(limits, ip)?;
        Ok(Slot {
            clients: clients.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        c.remove(self.ip);
    }
}

/// How long a connection may take to finish after a graceful close was asked for.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Serves the stats endpoints on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    stats: Arc<super::Stats>,
    stop: CancellationToken,
) {
    serve_with(listener, shared, stats, Limits::default(), stop).await
}

/// [`serve`] with explicit limits.
pub async fn serve_with(
    listener: TcpListener,
    shared: Arc<Shared>,
    stats: Arc<super::Stats>,
    limits: Limits,
    stop: CancellationToken,
) {
    // Nothing ever moves it.
    let (_, moves) = tokio::sync::watch::channel(None);
    serve_moving(listener, moves, shared, stats, limits, stop).await
}

/// [`serve_with`], moving to the socket a reload of `stats.bind` sends on `moves`: the new one is
/// listening before the old one is closed, and the clients already queued on the old one are
/// served, not reset.
pub async fn serve_moving(
    mut listener: TcpListener,
    mut moves: Moves,
    shared: Arc<Shared>,
    stats: Arc<super::Stats>,
    limits: Limits,
    stop: CancellationToken,
) {
    let app = super::router(shared, stats.clone(), limits);
    let clients = Arc::new(Mutex::new(Clients::default()));
    let connections = TaskTracker::new();
    let mut acceptor = Acceptor::default();
    let mut moves_open = true;
    // Clients of a socket just moved away from, still to be served.
    let mut backlog = Vec::new();
    // Always accept: a connection over a limit is closed here at once rather than left in the
    // kernel's queue, where it would hold up the clients queued behind it.
    loop {
        let next = match backlog.pop() {
            Some(c) => Some(c),
            None => tokio::select! {
                c = acceptor.accept(&listener, &stop, |e, backoff| {
                    tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "stats accept failed; backing off")
                }) => c,
                changed = moves.changed(), if moves_open => {
                    let to = match changed {
                        Ok(()) => moves.borrow_and_update().clone(),
                        Err(_) => {
                            moves_open = false;
                            None
                        }
                    };
                    if let Some(to) = to {
                        match register(&to) {
                            Ok(new) => {
                                let old = std::mem::replace(&mut listener, new);
                                backlog = queued(old);
                                tracing::info!(to = ?listener.local_addr().ok(), served = backlog.len(),
                                    "stats listener moved; closing the old socket");
                            }
                            Err(e) => tracing::error!(error = %e,
                                "could not take the moved stats socket; listening on the old one"),
                        }
                    }
                    continue;
                }
            },
        };
        let Some((stream, peer)) = next else { break };
        let slot = match Slot::take(&clients, &limits, peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                // Debug only: a flood would otherwise flood the log too; the metric counts it.
                tracing::debug!(client = %peer, reason = why.as_str(), "stats connection refused");
                stats.metrics.stats_refused(why);
                drop(stream);
                continue;
            }
        };
        // Each request learns its client's address (who gave an admin order).
        let service = TowerToHyperService::new(Extension(ConnectInfo(peer)).layer(app.clone()));
        let stop = stop.clone();
        connections.spawn(async move {
            let _slot = slot;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(limits.max_head)
                .keep_alive(true);
            let conn = http.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let close = tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "stats connection ended with an error");
                    }
                    false
                }
                _ = stop.cancelled() => true,
                _ = tokio::time::sleep(limits.max_age) => true,
            };
            if close {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
            }
        });
    }
    connections.close();
    // Every connection task closes itself within CLOSE_GRACE of `stop`.
    connections.wait().await;
}

/// The connections already in `old`'s accept queue (taken without waiting), so that closing it
/// resets none of them.
fn queued(old: TcpListener) -> Vec<(tokio::net::TcpStream, std::net::SocketAddr)> {
    // Asked of the kernel directly (non-blocking `accept` until it would block): the event loop
    // may not have seen the latest arrivals yet.
    let Ok(old) = old.into_std() else {
        return Vec::new();
    };
    let mut taken = Vec::new();
    while let Ok((s, peer)) = old.accept() {
        let stream = s
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpStream::from_std(s));
        if let Ok(stream) = stream {
            taken.push((stream, peer));
        }
    }
    taken
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, per_client: usize, reserved: usize) -> Limits {
        Limits {
            max_connections: max,
            per_client,
            reserved,
            ..Limits::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_client_gets_at_most_its_share() {
        let l = limits(10, 3, 0);
        assert_eq!(admit(&l, 0, 0), Ok(()));
        assert_eq!(admit(&l, 2, 5), Ok(()));
        assert_eq!(admit(&l, 3, 5), Err(Refusal::ClientLimit));
        assert_eq!(admit(&l, 0, 10), Err(Refusal::Full));
    }

    #[test]
    fn the_reserved_slots_go_only_to_clients_without_a_connection() {
        let l = limits(10, 5, 2);
        assert_eq!(admit(&l, 1, 7), Ok(()));
        assert_eq!(admit(&l, 1, 8), Err(Refusal::ClientLimit));
        assert_eq!(admit(&l, 0, 8), Ok(()));
        assert_eq!(admit(&l, 0, 9), Ok(()));
        assert_eq!(admit(&l, 0, 10), Err(Refusal::Full));
        // A reserve larger than the total keeps one connection per client.
        let l = limits(4, 2, 9);
        assert_eq!(admit(&l, 0, 3), Ok(()));
        assert_eq!(admit(&l, 1, 0), Err(Refusal::ClientLimit));
    }

    #[test]
    fn the_default_limits_keep_room_for_others() {
        let l = Limits::default();
        assert!(l.per_client > 0 && l.per_client * 4 <= l.max_connections);
        assert!(l.reserved < l.max_connections);
        assert!(l.header_timeout <= Duration::from_secs(2));
    }

    #[test]
    fn one_address_flooding_leaves_the_others_their_slots() {
        let l = limits(20, 4, 4);
        let mut c = Clients::default();
        let (attacker, probe) = (ip("127.0.0.2"), ip("127.0.0.3"));
        let refused = (0..150)
            .filter(|_| c.try_add(&l, attacker).is_err())
            .count();
        assert_eq!((refused, c.open_from(attacker), c.total()), (146, 4, 4));
        for _ in 0..4 {
            assert_eq!(c.try_add(&l, probe), Ok(()));
        }
        assert_eq!(c.try_add(&l, probe), Err(Refusal::ClientLimit));
        // Releasing gives the slots back and forgets a client that holds none.
        for _ in 0..4 {
            c.remove(attacker);
        }
        assert_eq!((c.open_from(attacker), c.total()), (0, 4));
        assert!(!c.open.contains_key(&attacker));
        assert_eq!(c.try_add(&l, attacker), Ok(()));
        // Removing what was never added changes nothing.
        c.remove(ip("10.0.0.1"));
        assert_eq!(c.total(), 5);
    }

    #[test]
    fn many_addresses_still_leave_the_reserve_to_new_ones() {
        let l = limits(20, 4, 4);
        let mut c = Clients::default();
        for i in 0..10u8 {
            let a = IpAddr::from([10, 0, 0, i]);
            while c.try_add(&l, a).is_ok() {}
        }
        // 16 unreserved slots taken by the first four addresses, then one each for four more.
        assert_eq!(c.total(), 20);
        let mut c = Clients::default();
        for i in 0..4u8 {
            let a = IpAddr::from([10, 0, 0, i]);
            while c.try_add(&l, a).is_ok() {}
        }
        assert_eq!(c.total(), 16);
        assert_eq!(c.try_add(&l, ip("10.0.0.1")), Err(Refusal::ClientLimit));
        assert_eq!(c.try_add(&l, ip("127.0.0.3")), Ok(()));
    }

    #[test]
    fn ipv6_counts_by_slash_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(client_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            client_key(ip("2001:db8:1:2:bbbb::9")),
            client_key(ip("2001:db8:1:2:aaaa::1"))
        );
        assert_ne!(
            client_key(ip("2001:db8:1:3::1")),
            client_key(ip("2001:db8:1:2::1"))
        );
        assert_eq!(client_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(client_key(ip("192.0.2.7")), ip("192.0.2.7"));
        let l = limits(10, 2, 0);
        let mut c = Clients::default();
        assert_eq!(c.try_add(&l, ip("2001:db8::1")), Ok(()));
        assert_eq!(c.try_add(&l, ip("2001:db8::2")), Ok(()));
        assert_eq!(c.try_add(&l, ip("2001:db8::3")), Err(Refusal::ClientLimit));
    }
}
