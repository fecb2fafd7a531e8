//! The etcd watch against an in-process fake of etcd's v3 JSON gateway (`/v3/kv/range`, a streaming
//! `/v3/watch`): a leader-key change triggers an immediate re-check, a switchover request holds new
//! clients at once, and a broken watch is re-established. The real etcd is exercised by `e2e.rs`.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use common::{Cluster, Mode};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio::time::Instant;

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// A fake etcd: a key map with a revision, and a broadcast of change lines to open watches.
struct FakeEtcd {
    addr: SocketAddr,
    keys: Arc<Mutex<Vec<(String, String)>>>,
    revision: Arc<AtomicU64>,
    events: broadcast::Sender<String>,
    watches: Arc<AtomicU64>,
}

impl FakeEtcd {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (events, _) = broadcast::channel(64);
        let fake = Self {
            addr,
            keys: Default::default(),
            revision: Arc::new(AtomicU64::new(1)),
            events: events.clone(),
            watches: Default::default(),
        };
        let (keys, revision, watches) = (
            fake.keys.clone(),
            fake.revision.clone(),
            fake.watches.clone(),
        );
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                let (keys, revision, watches, events) = (
                    keys.clone(),
                    revision.clone(),
                    watches.clone(),
                    events.clone(),
                );
                tokio::spawn(async move {
                    serve(s, keys, revision, watches, events).await;
                });
            }
        });
        fake
    }

    fn put(&self, key: &str, value: &str) {
        let mut keys = self.keys.lock().unwrap();
        keys.retain(|(k, _)| k != key);
        keys.push((key.into(), value.into()));
        self.revision.fetch_add(1, SeqCst);
        let line = format!(
            r#"{{"result":{{"events":[{{"kv":{{"key":"{}","value":"{}"}}}}]}}}}"#,
            B64.encode(key),
            B64.encode(value)
        );
        let _ = self.events.send(line);
    }

    fn delete(&self, key: &str) {
        self.keys.lock().unwrap().retain(|(k, _)| k != key);
        self.revision.fetch_add(1, SeqCst);
        let line = format!(
            r#"{{"result":{{"events":[{{"type":"DELETE","kv":{{"key":"{}"}}}}]}}}}"#,
            B64.encode(key)
        );
        let _ = self.events.send(line);
    }

    /// Ends every open watch stream (as an etcd restart would).
    fn break_watches(&self) {
        let _ = self.events.send(String::new());
    }
}

async fn serve(
    s: TcpStream,
    keys: Arc<Mutex<Vec<(String, String)>>>,
    revision: Arc<AtomicU64>,
    watches: Arc<AtomicU64>,
    events: broadcast::Sender<String>,
) {
    let mut r = BufReader::new(s);
    let mut line = String::new();
    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut len = 0;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).await.unwrap();
        if h == "\r\n" {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.unwrap();
    let mut s = r.into_inner();
    if path == "/v3/kv/range" {
        let kvs: Vec<String> = keys
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                format!(
                    r#"{{"key":"{}","value":"{}"}}"#,
                    B64.encode(k),
                    B64.encode(v)
                )
            })
            .collect();
        let json = format!(
            r#"{{"header":{{"revision":"{}"}},"kvs":[{}]}}"#,
            revision.load(SeqCst),
            kvs.join(",")
        );
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
            json.len()
        );
        let _ = s.write_all(resp.as_bytes()).await;
        return;
    }
    // /v3/watch: a chunked stream of JSON lines.
    let mut rx = events.subscribe();
    watches.fetch_add(1, SeqCst);
    let _ = s
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await;
    let created = "{\"result\":{\"created\":true}}\n";
    let _ = s
        .write_all(format!("{:x}\r\n{created}\r\n", created.len()).as_bytes())
        .await;
    while let Ok(line) = rx.recv().await {
        if line.is_empty() {
            return; // broken stream
        }
        let chunk = format!("{line}\n");
        if s.write_all(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

const LEADER: &str = "/db/postgres/leader";
const FAILOVER: &str = "/db/postgres/failover";

async fn cluster_with(etcd: &FakeEtcd) -> Cluster {
    let extra = format!(
        "[etcd]\nendpoints = [\"{}\"]\nnamespace = \"/db/\"\nscope = \"postgres\"\n",
        etcd.addr
    );
    Cluster::start(
        vec![Mode::Primary { timeline: 1 }, Mode::Replica, Mode::Replica],
        &extra,
    )
    .await
}

#[tokio::test(start_paused = true)]
async fn a_leader_key_change_rechecks_every_node_at_once() {
    // Issue 6 item 1: "watch Patroni's leader key ... and re-check at once on every change; the REST
    // check still confirms role and state before anything is routed."
    let etcd = FakeEtcd::start().await;
    etcd.put(LEADER, "postgresql0");
    let c = cluster_with(&etcd).await;
    c.wait_for(SECS(10), "node0 confirmed, watch open", |c| {
        c.primary() == Some(0) && !c.shared().current().fast && etcd.watches.load(SeqCst) == 1
    })
    .await;
    // Let the nodes settle into their 3 s `inter` sleeps.
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.nodes[0].rest.set(Mode::Replica);
    c.nodes[1].rest.set(Mode::Primary { timeline: 2 });
    let t0 = Instant::now();
    etcd.put(LEADER, "postgresql1");
    c.wait_for(SECS(5), "node1 routed", |c| c.primary() == Some(1))
        .await;
    let took = t0.elapsed();
    // rise 2 at failover_inter: two checks 200 ms apart, no wait for `inter` (3 s).
    assert!(
        took <= Duration::from_millis(450),
        "routed {took:?} after the leader key changed"
    );
}

#[tokio::test(start_paused = true)]
async fn a_switchover_request_holds_new_clients_until_it_ends() {
    // Issue 6 item 3: "Stop sending new connections to the outgoing primary as soon as there is
    // evidence it is leaving (... the leader key changing ...) and hold them for the incoming one."
    let etcd = FakeEtcd::start().await;
    etcd.put(LEADER, "postgresql0");
    let c = cluster_with(&etcd).await;
    c.wait_for(SECS(10), "node0 routed, watch open", |c| {
        c.primary() == Some(0) && etcd.watches.load(SeqCst) == 1
    })
    .await;
    etcd.put(
        FAILOVER,
        r#"{"leader":"postgresql0","member":"postgresql1"}"#,
    );
    c.wait_for(Duration::from_millis(50), "node0 leaving", |c| {
        c.primary().is_none()
    })
    .await;
    assert_eq!(
        c.status(0),
        "UP",
        "its REST still answers 200: only the DCS says it is leaving"
    );
    // A client arriving now is held, not sent to the leaving node.
    let addr = c.addr;
    let client = tokio::spawn(async move { common::outcome(addr).await });
    c.wait_for(SECS(1), "held", |c| {
        c.shared().frontend.holding.load(SeqCst) == 1
    })
    .await;
    // The switchover completes: node1 is the new primary.
    c.nodes[0].rest.set(Mode::Replica);
    c.nodes[1].rest.set(Mode::Primary { timeline: 2 });
    etcd.put(LEADER, "postgresql1");
    etcd.delete(FAILOVER);
    match client.await.unwrap() {
        common::Outcome::Node(n) => assert_eq!(n, "node1"),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.nodes[0].db.accepted.load(SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn scheduled_switchovers_do_not_hold_and_a_broken_watch_is_reopened() {
    let etcd = FakeEtcd::start().await;
    let c = cluster_with(&etcd).await;
    c.wait_for(SECS(10), "node0 routed, watch open", |c| {
        c.primary() == Some(0) && etcd.watches.load(SeqCst) == 1
    })
    .await;
    etcd.put(
        FAILOVER,
        r#"{"leader":"postgresql0","member":"postgresql1","scheduled_at":"2030-01-01T00:00:00+00:00"}"#,
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        c.primary(),
        Some(0),
        "a scheduled switchover is not imminent"
    );
    etcd.break_watches();
    c.wait_for(SECS(10), "watch reopened", |_| {
        etcd.watches.load(SeqCst) == 2
    })
    .await;
    // Still routing throughout: the watch only ever adds re-checks.
    assert_eq!(c.primary(), Some(0));
}
