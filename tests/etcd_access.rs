//! How the etcd watch reaches etcd, against an in-process fake of etcd's v3 JSON gateway that
//! knows leases, authentication and compaction, served over plain TCP or TLS: several endpoints
//! with one dead, the leader's lease read with the key, a compacted watch restarted on the same
//! endpoint, a watch that etcd ends at once retried ever more slowly, user/password
//! authentication with a token etcd forgets, and TLS with a test CA (server and client
//! certificates). The fake's JSON has the shapes captured from etcd 3.4 (see src/dcs/answers.rs);
//! `etcd.rs` covers the watch's reading of the keys, the real etcd is in `etcd_real.rs`.

mod common;
#[path = "etcd_access/gateway.rs"]
mod gateway;

use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Cluster, Mode};
use gateway::{Gateway, Pki};
use patroni_proxy::config::Etcd;
use patroni_proxy::dcs::{self, LeaderLease, Lease, Signal, Status};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const SECS: fn(u64) -> Duration = Duration::from_secs;
const LEADER: &str = "/db/postgres/leader";

/// An `[etcd]` section over these endpoints (URLs or addresses), with `extra` keys.
fn section(endpoints: &[String], extra: &str) -> String {
    let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "[etcd]\nendpoints = [{}]\nnamespace = \"/db/\"\nscope = \"postgres\"\n{extra}",
        list.join(", ")
    )
}

/// The watch alone, as the supervisor runs it, with its signals collected.
struct Watch {
    signals: Arc<Mutex<Vec<Signal>>>,
    status: Arc<Status>,
    stop: CancellationToken,
}

impl Watch {
    fn start(endpoints: &[String], extra: &str) -> Self {
        let text = section(endpoints, extra);
        let table: toml::Table = toml::from_str(&text).unwrap();
        let cfg: Etcd = table["etcd"].clone().try_into().unwrap();
        let signals = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(Status::new(Some(&cfg)));
        let stop = CancellationToken::new();
        let sink = dcs::Sink {
            signal: Box::new({
                let signals = signals.clone();
                move |s| signals.lock().unwrap().push(s)
            }),
            status: status.clone(),
        };
        tokio::spawn(dcs::watch(cfg, sink, stop.clone()));
        Self {
            signals,
            status,
            stop,
        }
    }

    fn leases(&self) -> Vec<LeaderLease> {
        let s = self.signals.lock().unwrap();
        s.iter()
            .filter_map(|s| match s {
                Signal::Lease(l) => Some(l.clone()),
                _ => None,
            })
            .collect()
    }

    fn failures(&self, reason: &str) -> u64 {
        self.status
            .counts()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| n)
    }

    async fn wait_for(&self, limit: Duration, what: &str, f: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + limit;
        while !f(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for: {what} (last error: {:?})",
                self.status.view().last_error
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn url(g: &Gateway) -> String {
    g.addr.to_string()
}

/// An address nothing listens on.
async fn dead_address() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a.to_string()
}

#[tokio::test(start_paused = true)]
async fn a_dead_endpoint_is_skipped_the_working_one_kept_and_shown() {
    // Issue 14 item 3: "several endpoints with failover (a 3-member etcd cluster)"; the brief:
    // "on connect error/timeout, move to the next; remember the one that works; expose it".
    let (b, c) = (Gateway::start().await, Gateway::start().await);
    for g in [&b, &c] {
        g.put(LEADER, "postgresql0", 0);
    }
    let dead = dead_address().await;
    let cluster = Cluster::start(
        vec![Mode::Primary { timeline: 1 }, Mode::Replica],
        &section(&[dead.clone(), url(&b), url(&c)], ""),
    )
    .await;
    let stats = &cluster.proxy.as_ref().unwrap().stats;
    cluster
        .wait_for(SECS(5), "watching the second endpoint", |_| {
            stats.etcd.in_use() == (Some(1), true)
        })
        .await;
    assert_eq!(b.count("/v3/watch"), 1);
    assert_eq!(
        c.count("/v3/kv/range"),
        0,
        "the third is not tried while the second works"
    );
    // It stays there: a minute of resyncs on the same endpoint.
    tokio::time::sleep(SECS(60)).await;
    assert_eq!((b.count("/v3/watch"), c.count("/v3/kv/range")), (1, 0));
    let render = || {
        stats.metrics.render(
            &patroni_proxy::stats::export::view(cluster.shared()),
            &stats.etcd,
        )
    };
    let text = render();
    assert!(text.contains("patroni_proxy_etcd_up 1"), "{text}");
    for (e, v) in [(&dead, 0), (&url(&b), 1), (&url(&c), 0)] {
        let series = format!("patroni_proxy_etcd_endpoint_in_use{{endpoint=\"{e}\"}} {v}");
        assert!(text.contains(&series), "{series} in\n{text}");
    }
    let view = stats.etcd.view();
    assert_eq!(view.endpoint.as_deref(), Some(url(&b).as_str()));
    assert_eq!(view.failures["unreachable"], 1, "the dead one, once");
    // The member being watched is killed: the watch moves to the next one within 2 s.
    b.kill();
    let t0 = Instant::now();
    cluster
        .wait_for(SECS(5), "watching the third endpoint", |_| {
            stats.etcd.in_use() == (Some(2), true)
        })
        .await;
    assert!(t0.elapsed() <= SECS(2), "moved after {:?}", t0.elapsed());
    let text = render();
    let series = format!(
        "patroni_proxy_etcd_endpoint_in_use{{endpoint=\"{}\"}} 1",
        url(&c)
    );
    assert!(text.contains(&series), "{text}");
}

#[tokio::test(start_paused = true)]
async fn the_leader_lease_is_read_with_the_key_on_every_resync() {
    // Issue 14 item 3: "lease TTL read with the key"; the brief: "re-read the keys every
    // `resync` interval and on every watch (re)start".
    let g = Gateway::start().await;
    g.grant(7391992716809808648, 27, 30);
    g.put(LEADER, "postgresql0", 7391992716809808648);
    let w = Watch::start(&[url(&g)], "resync = \"2s\"");
    let live = LeaderLease {
        leader: "postgresql0".into(),
        lease: Lease::Live {
            id: 7391992716809808648,
            remaining: SECS(27),
            granted: SECS(30),
        },
    };
    w.wait_for(SECS(5), "first lease", |w| !w.leases().is_empty())
        .await;
    assert_eq!(w.leases()[0], live);
    let ranges = g.count("/v3/kv/range");
    tokio::time::sleep(SECS(20)).await;
    let reads = g.count("/v3/kv/range") - ranges;
    assert!(
        (9..=11).contains(&reads),
        "{reads} re-reads in 20 s at resync 2s"
    );
    // Each re-read reads the lease too, and tells the owner even though nothing changed.
    assert!(w.leases().len() >= 10, "{}", w.leases().len());
    let view = w.status.view();
    assert_eq!(
        (view.leader.as_deref(), view.lease, view.lease_remaining_s),
        (Some("postgresql0"), Some("live"), Some(27))
    );
    // The lease lapses (Patroni stopped renewing it) while the key is still read: within one
    // resync the owner hears it.
    g.grant(7391992716809808648, -1, 30);
    tokio::time::sleep(SECS(3)).await;
    let last = w.leases().last().cloned().unwrap();
    assert_eq!(
        last.lease,
        Lease::Lapsed {
            id: 7391992716809808648
        }
    );
    // A new leader: its lease is read at once, not at the next resync.
    g.grant(99, 30, 30);
    let before = w.leases().len();
    g.put(LEADER, "postgresql1", 99);
    w.wait_for(Duration::from_millis(100), "new leader's lease", |w| {
        w.leases().len() > before
    })
    .await;
    assert_eq!(w.leases().last().unwrap().leader, "postgresql1");
}

#[tokio::test(start_paused = true)]
async fn a_compacted_watch_is_restarted_on_the_same_endpoint_from_the_current_revision() {
    // The brief: "handle a compacted revision (`compact_revision` in the watch response) by
    // re-reading and restarting the watch from the current revision".
    let (g, other) = (Gateway::start().await, Gateway::start().await);
    g.put(LEADER, "postgresql0", 0);
    g.s.compact_next.store(true, SeqCst);
    let w = Watch::start(&[url(&g), url(&other)], "");
    w.wait_for(SECS(5), "second watch", |_| g.count("/v3/watch") == 2)
        .await;
    assert_eq!(w.failures("compacted"), 1);
    assert_eq!(
        other.count("/v3/kv/range"),
        0,
        "the endpoint is not to blame"
    );
    assert_eq!(
        g.count("/v3/kv/range"),
        2,
        "read again before the new watch"
    );
    g.put(LEADER, "postgresql1", 0);
    let bodies = g.s.watch_bodies.lock().unwrap().clone();
    assert_eq!(bodies[0]["create_request"]["start_revision"], "3");
    assert_eq!(bodies[1]["create_request"]["start_revision"], "8");
    w.wait_for(SECS(1), "change seen", |w| {
        w.signals
            .lock()
            .unwrap()
            .contains(&Signal::Leader(Some("postgresql1".into())))
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_watch_etcd_ends_at_once_is_retried_ever_more_slowly() {
    // The brief: "A watch stream that ends or is cancelled is restarted with backoff, never a
    // tight loop." Both endpoints accept every watch and close it at once.
    let (a, b) = (Gateway::start().await, Gateway::start().await);
    for g in [&a, &b] {
        g.s.close_watches.store(true, SeqCst);
    }
    let w = Watch::start(&[url(&a), url(&b)], "");
    tokio::time::sleep(SECS(60)).await;
    let watches = a.count("/v3/watch") + b.count("/v3/watch");
    // 100 ms doubling to 5 s: 0.1+0.2+...+3.2 = 6.3 s for six, then one every 5 s.
    assert!((14..=18).contains(&watches), "{watches} watches in 60 s");
    assert_eq!(w.failures("closed") as usize, watches);
}

#[tokio::test(start_paused = true)]
async fn authentication_sends_the_token_and_renews_a_forgotten_one() {
    // Issue 14 item 3: "etcd v3 authentication (user/password)"; the brief: "`/v3/auth/authenticate`
    // gives a token sent in the `Authorization` header; re-authenticate on an invalid-token error".
    let g = Gateway::start().await;
    g.require_auth("patroni", "s3cret");
    g.grant(5, 30, 30);
    g.put(LEADER, "postgresql0", 5);
    let w = Watch::start(&[url(&g)], "username = \"patroni\"\npassword = \"s3cret\"");
    w.wait_for(SECS(5), "watching", |w| {
        w.status.in_use() == (Some(0), true)
    })
    .await;
    assert_eq!(g.count("/v3/auth/authenticate"), 1);
    // Every other request carried the token etcd handed out.
    for (path, token) in g.requests() {
        if path != "/v3/auth/authenticate" {
            assert_eq!(token.as_deref(), Some("VEZBmDjDcOQoxXzi.14"), "{path}");
        }
    }
    assert_eq!(w.leases().len(), 1);
    // etcd forgets its tokens (they expired): the next re-read is refused with "invalid auth
    // token": a new token, on the same endpoint, and the watch goes on.
    g.forget_tokens();
    // Within a resync period (5 s) and a backoff.
    w.wait_for(SECS(6), "watching again", |_| g.count("/v3/watch") == 2)
        .await;
    assert_eq!(g.count("/v3/auth/authenticate"), 2);
    assert_eq!(w.failures("auth"), 1);
    let last = g.requests().last().cloned().unwrap();
    assert_eq!(last.1.as_deref(), Some("VEZBmDjDcOQoxXzi.15"));
}

#[tokio::test(start_paused = true)]
async fn a_wrong_password_is_reported_by_key() {
    let g = Gateway::start().await;
    g.require_auth("patroni", "s3cret");
    let w = Watch::start(&[url(&g)], "username = \"patroni\"\npassword = \"wrong\"");
    w.wait_for(SECS(5), "refused", |w| w.failures("auth") >= 1)
        .await;
    let e = w.status.view().last_error.unwrap();
    assert!(
        e.contains("etcd.username") && e.contains("invalid user ID or password"),
        "{e}"
    );
    assert_eq!(g.count("/v3/kv/range"), 0, "nothing read without a token");
}

#[tokio::test]
async fn tls_with_the_configured_ca_and_a_client_certificate() {
    // Issue 14 item 3: "etcd ... TLS"; the brief: "`https://` endpoints with `ca_file`, optional
    // client `cert_file`/`key_file`". The fake requires a client certificate signed by the CA.
    let pki = Pki::new(true);
    let g = Gateway::start_with(Some(pki.server.clone())).await;
    g.put(LEADER, "postgresql0", 0);
    let https = format!("https://127.0.0.1:{}", g.addr.port());
    let w = Watch::start(
        std::slice::from_ref(&https),
        &format!(
            "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"",
            pki.file("ca.pem"),
            pki.file("client.pem"),
            pki.file("client.key")
        ),
    );
    w.wait_for(SECS(5), "watching over TLS", |w| {
        w.status.in_use() == (Some(0), true)
    })
    .await;
    assert!(w
        .signals
        .lock()
        .unwrap()
        .contains(&Signal::Leader(Some("postgresql0".into()))));
    // By name too, as in etcd's certificates.
    let by_name = Watch::start(
        &[format!("https://localhost:{}", g.addr.port())],
        &format!(
            "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"",
            pki.file("ca.pem"),
            pki.file("client.pem"),
            pki.file("client.key")
        ),
    );
    by_name
        .wait_for(SECS(5), "watching by name", |w| {
            w.status.in_use() == (Some(0), true)
        })
        .await;
}

// Real time: with a paused clock the runtime jumps forward whenever every task waits on a
// socket, and the TLS round trips then met the 3 s request timeout before their answer.
#[tokio::test]
async fn tls_refuses_a_server_the_ca_did_not_sign_and_a_missing_client_certificate() {
    let pki = Pki::new(true);
    let other = Pki::new(false);
    let g = Gateway::start_with(Some(pki.server.clone())).await;
    let https = format!("https://127.0.0.1:{}", g.addr.port());
    // Another CA: the server's certificate is not trusted.
    let w = Watch::start(
        std::slice::from_ref(&https),
        &format!("ca_file = \"{}\"", other.file("ca.pem")),
    );
    w.wait_for(SECS(5), "refused", |w| w.failures("unreachable") >= 1)
        .await;
    let e = w.status.view().last_error.unwrap();
    assert!(
        e.contains("certificate") || e.contains("UnknownIssuer"),
        "{e}"
    );
    assert_eq!(g.count("/v3/kv/range"), 0);
    // The right CA but no client certificate: the server refuses the handshake.
    let w = Watch::start(&[https], &format!("ca_file = \"{}\"", pki.file("ca.pem")));
    w.wait_for(SECS(5), "refused", |w| w.failures("unreachable") >= 1)
        .await;
    let e = w.status.view().last_error.unwrap();
    assert!(e.contains("CertificateRequired"), "{e}");
    assert_eq!(g.count("/v3/kv/range"), 0);
}

#[tokio::test(start_paused = true)]
async fn an_unreadable_certificate_file_names_its_key() {
    let w = Watch::start(
        &["https://127.0.0.1:2379".to_string()],
        "ca_file = \"/nonexistent/ca.pem\"",
    );
    w.wait_for(SECS(1), "disabled", |w| {
        w.status.view().last_error.is_some()
    })
    .await;
    let e = w.status.view().last_error.unwrap();
    assert!(
        e.contains("etcd.ca_file") && e.contains("/nonexistent/ca.pem"),
        "{e}"
    );
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("ca.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let cfg: toml::Table = toml::from_str(&section(
        &["https://127.0.0.1:2379".to_string()],
        &format!("ca_file = \"{}\"", junk.display()),
    ))
    .unwrap();
    let cfg: Etcd = cfg["etcd"].clone().try_into().unwrap();
    let e = dcs::client::Client::new(&cfg).err().unwrap();
    assert!(
        e.contains("etcd.ca_file") && e.contains("no PEM certificate"),
        "{e}"
    );
}

#[tokio::test(start_paused = true)]
async fn etcd_unreachable_with_a_failsafe_primary_keeps_routing_and_shows_the_flag() {
    // Issue 14 item 3: "etcd unreachable while the primary's REST answer shows failsafe active is
    // not a reason to stop routing." etcd dies; Patroni's failsafe mode keeps the primary (its
    // `/` stays 200 with `failsafe_mode_is_active`): the proxy keeps routing to it and its
    // sessions, for as long as the REST checks say so, and shows the flag.
    let g = Gateway::start().await;
    g.grant(5, 30, 30);
    g.put(LEADER, "postgresql0", 5);
    let failsafe = "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n\
        {\"state\": \"running\", \"role\": \"primary\", \"server_version\": 150018, \"timeline\": 1, \
        \"xlog\": {\"location\": 67108864}, \"cluster_unlocked\": true, \"failsafe_mode_is_active\": true, \
        \"dcs_last_seen\": 1796203921, \"patroni\": {\"version\": \"4.1.5\", \"scope\": \"postgres\"}}";
    let c = Cluster::start(
        vec![Mode::Primary { timeline: 1 }, Mode::Replica],
        &section(&[url(&g)], ""),
    )
    .await;
    let stats = &c.proxy.as_ref().unwrap().stats;
    c.wait_for(SECS(10), "node0 routed, watch open", |c| {
        c.primary() == Some(0) && stats.etcd.in_use() == (Some(0), true)
    })
    .await;
    let changes = c.shared().current().primary_changes;
    g.kill();
    c.nodes[0].rest.set(Mode::Raw(failsafe.into()));
    c.wait_for(SECS(10), "watch lost", |_| !stats.etcd.in_use().1)
        .await;
    // A minute without etcd: still routed, never in doubt, the flag shown.
    for _ in 0..60 {
        tokio::time::sleep(SECS(1)).await;
        assert_eq!(c.primary(), Some(0));
    }
    assert_eq!(c.shared().current().primary_changes, changes);
    let view = serde_json::to_value(patroni_proxy::stats::export::view(c.shared())).unwrap();
    let patroni = &view["servers"][0]["last_check"]["patroni"];
    assert_eq!(patroni["failsafe_mode_is_active"], true, "{patroni}");
    assert_eq!(patroni["cluster_unlocked"], true, "{patroni}");
    assert!(stats.etcd.view().failures["unreachable"] >= 1);
    // And when Patroni demotes it after all (a member stopped answering its failsafe POST), the
    // REST check says so and routing follows, etcd or not.
    c.nodes[0].rest.set(Mode::Replica);
    c.wait_for(SECS(10), "node0 no longer routed", |c| {
        c.primary().is_none()
    })
    .await;
}
