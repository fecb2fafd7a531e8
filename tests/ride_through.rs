//! The REST outage ride-through end to end, in process and with exact timing: fake Patroni REST
//! APIs, echo databases and the fake etcd gateway with leases (`etcd_access/gateway.rs`). The
//! routed primary's REST API hangs while etcd shows its lease live and its port accepts: nothing
//! is cut; the lease lapsing or the leader key moving cuts its sessions at once. The decisions
//! themselves are unit-tested in `src/state/ride_tests.rs`; the real cluster in `e2e.rs`.

mod common;
// Only the plain-TCP part with leases is used here.
#[allow(dead_code)]
#[path = "etcd_access/gateway.rs"]
mod gateway;

use std::time::Duration;

use common::{connect, Cluster, Mode};
use gateway::Gateway;
use tokio::time::Instant;

const SECS: fn(u64) -> Duration = Duration::from_secs;
const LEADER: &str = "/db/postgres/leader";
const LEASE: u64 = 7391992716809808648;

/// Patroni 4.1's answer on the primary, with its member name (`patroni.name`).
fn primary_named(name: &str) -> Mode {
    Mode::Raw(format!(
        "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n\
         {{\"state\": \"running\", \"role\": \"primary\", \"timeline\": 2, \
         \"patroni\": {{\"version\": \"4.1.5\", \"scope\": \"postgres\", \"name\": \"{name}\"}}}}"
    ))
}

/// Node 0 the primary (member `node0`, holding the leader key with a live lease), 1 and 2
/// replicas; etcd re-read every 2 s.
async fn cluster(g: &Gateway, extra: &str) -> Cluster {
    g.grant(LEASE, 28, 30);
    g.put(LEADER, "node0", LEASE);
    let etcd = format!(
        "[etcd]\nendpoints = [\"{}\"]\nnamespace = \"/db/\"\nscope = \"postgres\"\nresync = \"2s\"\n{extra}",
        g.addr
    );
    let c = Cluster::start(
        vec![primary_named("node0"), Mode::Replica, Mode::Replica],
        &etcd,
    )
    .await;
    c.wait_for(SECS(10), "node0 routed and its lease read", |c| {
        let s = c.shared().current();
        s.primary == Some(0)
            && s.nodes[0].ride.learned.as_deref() == Some("node0")
            && s.dcs_leader
                .as_ref()
                .is_some_and(|d| d.member.as_deref() == Some("node0"))
    })
    .await;
    c
}

/// `patroni_proxy_rest_unreachable_leader_alive{server="node0"}` as `/metrics` shows it.
fn riding_metric(c: &Cluster) -> f64 {
    let stats = &c.proxy.as_ref().unwrap().stats;
    let text = stats
        .metrics
        .render(&patroni_proxy::stats::export::view(c.shared()), &stats.etcd);
    text.lines()
        .find_map(|l| {
            l.strip_prefix("patroni_proxy_rest_unreachable_leader_alive{server=\"node0\"} ")
        })
        .map(|v| v.trim().parse().unwrap())
        .expect("the series exists from start-up")
}

/// Node 0's REST API hangs until it is marked DOWN (3 checks of `timeout` 5 s, `inter` 3 s).
async fn hang_rest_until_down(c: &Cluster) {
    c.nodes[0].rest.set(Mode::Hang);
    c.wait_for(SECS(40), "node0 DOWN by its checks", |c| {
        !c.shared().current().nodes[0].counter.is_up()
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_hung_rest_api_with_a_live_lease_keeps_sessions_until_the_lease_lapses() {
    // docs/health-checking.md, "REST outage ride-through": no answer + its member holds a live
    // lease + its PostgreSQL port accepts = still routed, sessions kept; the lease lapsing ends
    // it at once (within a resync), faster than `fall`.
    let g = Gateway::start().await;
    let c = cluster(&g, "").await;
    let (node, mut client) = connect(c.addr).await.unwrap();
    assert_eq!(node, "node0");
    assert_eq!(riding_metric(&c), 0.0);
    hang_rest_until_down(&c).await;
    assert_eq!(c.primary(), Some(0), "still routed");
    assert!(client.alive().await, "its session was kept");
    assert_eq!(riding_metric(&c), 1.0);
    // A minute later (Patroni renewing: the lease re-granted at every resync), still so, and new
    // clients still reach it.
    for _ in 0..20 {
        g.grant(LEASE, 28, 30);
        tokio::time::sleep(SECS(3)).await;
    }
    assert_eq!(c.primary(), Some(0));
    assert!(client.alive().await);
    assert_eq!(connect(c.addr).await.unwrap().0, "node0");
    let events = c.shared().events.recent();
    assert!(
        events
            .iter()
            .any(|e| e.message.contains("still routed, its sessions kept")),
        "{events:?}"
    );
    // The lease lapses: cut within one resync (2 s) plus the read.
    g.grant(LEASE, -1, 30);
    let t0 = Instant::now();
    assert!(
        client.closed_within(SECS(4)).await,
        "cut once the lease lapsed"
    );
    assert!(t0.elapsed() <= SECS(3), "{:?}", t0.elapsed());
    assert_eq!(c.primary(), None);
    assert_eq!(riding_metric(&c), 0.0);
}

#[tokio::test(start_paused = true)]
async fn a_new_leader_key_owner_cuts_the_riding_primary_at_once() {
    let g = Gateway::start().await;
    let c = cluster(&g, "").await;
    let (_, mut client) = connect(c.addr).await.unwrap();
    hang_rest_until_down(&c).await;
    assert!(client.alive().await);
    g.grant(99, 30, 30);
    let t0 = Instant::now();
    g.put(LEADER, "node1", 99);
    assert!(client.closed_within(SECS(1)).await);
    assert!(
        t0.elapsed() < Duration::from_millis(100),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(c.primary(), None);
    // node1 is confirmed by its REST check before it gets any client.
    c.nodes[1].rest.set(primary_named("node1"));
    c.wait_for(SECS(2), "node1 routed", |c| c.primary() == Some(1))
        .await;
}

#[tokio::test(start_paused = true)]
async fn with_ride_through_off_a_hung_rest_api_cuts_at_fall_as_haproxy_does() {
    let g = Gateway::start().await;
    let c = cluster(&g, "ride_through = false\n").await;
    let (_, mut client) = connect(c.addr).await.unwrap();
    hang_rest_until_down(&c).await;
    assert!(client.closed_within(SECS(1)).await);
    assert_eq!(c.primary(), None);
    assert_eq!(riding_metric(&c), 0.0);
}
