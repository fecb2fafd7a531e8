//! Issue 13: servers written with host names, "resolved when the proxy runs and re-resolved on a
//! schedule" (docs/configuration.md, Host names). The proxy here resolves through the system
//! resolver, with the name in `/etc/hosts` (tests never need DNS): the test writes the entry, moves
//! it to another address, and takes it out again at the end however it ends. It needs root (as
//! CI runs it) to write `/etc/hosts`.

mod common;

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use common::{connect, FakeDb, FakePatroni, Mode};
use patroni_proxy::config::Config;
use patroni_proxy::supervisor::{self, Listeners};
use tokio::net::TcpListener;

const NAME: &str = "pp-test-host-name-db";
const HOSTS: &str = "/etc/hosts";

/// The test's line in `/etc/hosts`, put back as it was when dropped.
struct HostsEntry {
    original: String,
}

impl HostsEntry {
    fn point(ip: &str) -> std::io::Result<Self> {
        let original = std::fs::read_to_string(HOSTS)?;
        let me = Self { original };
        me.set(ip)?;
        Ok(me)
    }

    /// Rewrites the file in place (it may be a bind mount, which a rename would not replace).
    fn set(&self, ip: &str) -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(HOSTS)?;
        writeln!(f, "{}{ip} {NAME}", self.original)
    }
}

impl Drop for HostsEntry {
    fn drop(&mut self) {
        let _ = std::fs::write(HOSTS, &self.original);
    }
}

async fn wait_for(limit: Duration, what: &str, f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_server_written_with_a_host_name_is_resolved_and_followed_to_its_new_address() {
    let entry = HostsEntry::point("127.0.0.31")
        .unwrap_or_else(|e| panic!("{HOSTS} must be writable (run as root, as CI does): {e}"));
    // The same ports on two addresses: only the name tells them apart.
    let rest_a = FakePatroni::start_at("127.0.0.31:0", Mode::Primary { timeline: 1 }).await;
    let rest_port = rest_a.addr.port();
    let db_a = FakeDb::start_at("127.0.0.31:0", "at-31").await;
    let db_port = db_a.addr.port();
    let rest_b = FakePatroni::start_at(
        &format!("127.0.0.32:{rest_port}"),
        Mode::Primary { timeline: 1 },
    )
    .await;
    let _db_b = FakeDb::start_at(&format!("127.0.0.32:{db_port}"), "at-32").await;

    let toml = format!(
        "[global]\nthreads = 1\nshutdown_grace = \"1s\"\n[check]\ninter = \"200ms\"\nresolve_interval = \"300ms\"\n\
         [[server]]\nname = \"a\"\naddress = \"{NAME}:{db_port}\"\ncheck_port = {rest_port}\n"
    );
    let config = Arc::new(Config::from_toml(&toml).unwrap());
    let proxy_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = proxy_l.local_addr().unwrap();
    let running = supervisor::start(
        config,
        Listeners {
            proxy: proxy_l,
            proxy_more: Vec::new(),
            stats: None,
            sets: Vec::new(),
        },
    );
    let shared = running.shared.clone();
    let address = || shared.current().nodes[0].address();
    wait_for(Duration::from_secs(10), "routed at 127.0.0.31", || {
        shared.current().primary == Some(0)
    })
    .await;
    assert_eq!(
        address(),
        Some(format!("127.0.0.31:{db_port}").parse().unwrap())
    );
    let (node, mut on_31) = connect(addr).await.expect("a session");
    assert_eq!(node, "at-31");
    assert_eq!(rest_b.checks.load(std::sync::atomic::Ordering::SeqCst), 0);

    // The name moves: the node starts over at the new address; the old session goes on.
    entry.set("127.0.0.32").unwrap();
    wait_for(Duration::from_secs(10), "re-resolved to 127.0.0.32", || {
        address() == Some(format!("127.0.0.32:{db_port}").parse().unwrap())
    })
    .await;
    wait_for(Duration::from_secs(10), "routed again", || {
        shared.current().primary == Some(0)
    })
    .await;
    assert!(
        rest_b.checks.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "a check at .32 confirmed it first"
    );
    assert_eq!(connect(addr).await.expect("a session").0, "at-32");
    assert!(
        on_31.alive().await,
        "the session to the old address continues"
    );
    drop(entry);
    running.shutdown().await.unwrap();
}
