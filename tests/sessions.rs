//! `/sessions.json` and `/sessions` (issue 16, client attribution) over real HTTP against
//! in-process fakes: sessions opened through the proxy are listed with the client's own port, their
//! server, the proxy's local port towards PostgreSQL (the port the fake database saw as its peer),
//! bytes and state; clients held for want of a primary, queued, connecting or starting are listed
//! as such; the list is bounded and says so; an ended session leaves it. Real time.

mod common;

use std::time::Duration;

use common::{client_of, startup_message, Client, Cluster, Mode, PgMode};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const PRIMARY: Mode = Mode::Primary { timeline: 1 };
const FAST: &str = "[check]\ninter = \"100ms\"\n";
const LIMIT: Duration = Duration::from_secs(10);

async fn sessions(c: &Cluster, query: &str) -> Value {
    let r = reqwest::get(format!("http://{}/sessions.json{query}", c.stats))
        .await
        .expect("stats answered");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    r.json().await.unwrap()
}

/// The entry of the session whose client port is `port`, if listed.
fn entry(s: &Value, port: u16) -> Option<Value> {
    s["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["client_port"] == port)
        .cloned()
}

/// Polls `/sessions.json` until `ok` holds for the entry of client port `port` (`None`: absent).
async fn until(c: &Cluster, port: u16, what: &str, ok: impl Fn(Option<&Value>) -> bool) -> Value {
    let deadline = Instant::now() + LIMIT;
    loop {
        let s = sessions(c, "").await;
        if ok(entry(&s, port).as_ref()) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {s}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn settled(modes: Vec<Mode>) -> Cluster {
    let c = Cluster::start(modes, FAST).await;
    c.wait_for(LIMIT, "node0 routed", |c| c.primary() == Some(0))
        .await;
    c
}

/// A session through the proxy, greeted by `node`, with one echoed line.
async fn open(c: &Cluster, node: &str) -> (u16, Client) {
    let s = TcpStream::connect(c.addr).await.unwrap();
    let port = s.local_addr().unwrap().port();
    let (greeted_by, mut client) = client_of(s).await.expect("a session");
    assert_eq!(greeted_by, node);
    client.0.get_mut().write_all(b"ping\n").await.unwrap();
    let mut line = String::new();
    client.0.read_line(&mut line).await.unwrap();
    assert_eq!(line, "ping\n");
    (port, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relaying_sessions_are_listed_with_ports_server_and_bytes_until_they_end() {
    let c = settled(vec![PRIMARY, Mode::Replica]).await;
    let (port_a, a) = open(&c, "node0").await;
    let (port_b, _b) = open(&c, "node0").await;
    // "NODE node0\n" and the echoed "ping\n" went out; "ping\n" came in. The bytes out are counted
    // once the client's ACK is back, hence the poll.
    let out = ("NODE node0\n".len() + 5) as u64;
    let s = until(&c, port_a, "session a relaying with its bytes", |e| {
        e.is_some_and(|e| e["bytes_out"] == out)
    })
    .await;
    let e = entry(&s, port_a).unwrap();
    assert_eq!(e["state"], "relaying");
    assert_eq!(e["client_addr"], "127.0.0.1");
    assert_eq!(e["listener"], c.shared().config().listen.name.as_str());
    assert_eq!(e["server"], "node0");
    assert_eq!(e["bytes_in"], 5);
    assert!(e["age_s"].as_f64().unwrap() >= 0.0, "{e}");
    // The proxy's local port towards the database is the peer port the database saw.
    let peers: Vec<u16> = c.nodes[0]
        .db
        .peers
        .lock()
        .unwrap()
        .iter()
        .map(|p| p.port())
        .collect();
    let backend_a = e["backend_port"].as_u64().unwrap() as u16;
    let backend_b = entry(&s, port_b).unwrap()["backend_port"].as_u64().unwrap() as u16;
    assert_eq!(peers.len(), 2, "{peers:?}");
    assert!(peers.contains(&backend_a) && peers.contains(&backend_b));
    assert_ne!(backend_a, backend_b);
    assert_eq!(
        (s["total"].as_u64(), s["truncated"].as_bool()),
        (Some(2), Some(false))
    );
    assert_eq!(s["limit"], 1000);

    // The page lists the same, without JavaScript.
    let page = reqwest::get(format!("http://{}/sessions", c.stats))
        .await
        .unwrap();
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let page = page.text().await.unwrap();
    assert!(page.contains(&format!("<td>{port_a}</td>")), "{page}");
    assert!(page.contains(&format!("<td>{backend_b}</td>")), "{page}");
    assert!(page.contains("2 open sessions."), "{page}");
    assert!(!page.contains("<script"));
    let dashboard = reqwest::get(format!("http://{}/", c.stats))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        dashboard.contains("<a href=\"/sessions\">"),
        "the dashboard links to it"
    );

    // An ended session leaves the list; the other stays.
    // While it ends, its client socket may no longer have a peer address (the entry is then
    // listed without a port), so "gone" is the total going down, not the port missing.
    drop(a);
    let deadline = Instant::now() + LIMIT;
    let s = loop {
        let s = sessions(&c, "").await;
        if s["total"] == 1 {
            break s;
        }
        assert!(Instant::now() < deadline, "session a never left: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(entry(&s, port_a).is_none(), "{s}");
    assert!(entry(&s, port_b).is_some(), "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_client_is_listed_as_holding_then_relaying() {
    // Replicas only: no primary, so the client is held.
    let c = Cluster::start(vec![Mode::Replica, Mode::Replica], FAST).await;
    let s = TcpStream::connect(c.addr).await.unwrap();
    let port = s.local_addr().unwrap().port();
    let held = until(&c, port, "the client holding", |e| {
        e.is_some_and(|e| e["state"] == "holding")
    })
    .await;
    let e = entry(&held, port).unwrap();
    assert_eq!(e["server"], Value::Null);
    assert_eq!(e["backend_port"], Value::Null);
    assert_eq!(e["bytes_in"], Value::Null);
    assert_eq!(e["client_addr"], "127.0.0.1");
    // A primary appears: the held client is released to it and relays.
    c.nodes[1].rest.set(PRIMARY);
    let (greeted_by, _client) = client_of(s).await.expect("released");
    assert_eq!(greeted_by, "node1");
    let s = until(&c, port, "the client relaying", |e| {
        e.is_some_and(|e| e["state"] == "relaying")
    })
    .await;
    assert_eq!(entry(&s, port).unwrap()["server"], "node1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_is_bounded_and_reports_the_total() {
    let c = settled(vec![PRIMARY]).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(open(&c, "node0").await);
    }
    let s = sessions(&c, "?limit=2").await;
    assert_eq!(s["sessions"].as_array().unwrap().len(), 2, "{s}");
    assert_eq!(
        (s["total"].as_u64(), s["truncated"].as_bool()),
        (Some(3), Some(true))
    );
    assert_eq!(s["limit"], 2);
    // The cap holds whatever is asked.
    let s = sessions(&c, "?limit=5000").await;
    assert_eq!(
        (s["limit"].as_u64(), s["truncated"].as_bool()),
        (Some(1000), Some(false))
    );
    assert_eq!(s["sessions"].as_array().unwrap().len(), 3);
    let page = reqwest::get(format!("http://{}/sessions?limit=1", c.stats))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("3 open sessions; the first 1 are listed."),
        "{page}"
    );
    // A limit that is not a number is said to be wrong, not silently replaced.
    for path in ["/sessions.json?limit=ten", "/sessions?limit=-1"] {
        let r = reqwest::get(format!("http://{}{path}", c.stats))
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{path}");
        let body = r.text().await.unwrap();
        assert!(body.starts_with("limit must be a whole number"), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_waiting_for_a_server_slot_is_listed_as_queued() {
    let c = Cluster::start_custom(vec![PRIMARY], FAST, "maxconn = 1", &[]).await;
    c.wait_for(LIMIT, "node0 routed", |c| c.primary() == Some(0))
        .await;
    let (_first_port, _first) = open(&c, "node0").await;
    let s = TcpStream::connect(c.addr).await.unwrap();
    let port = s.local_addr().unwrap().port();
    let listed = until(&c, port, "the second client queued", |e| {
        e.is_some_and(|e| e["state"] == "queued")
    })
    .await;
    let e = entry(&listed, port).unwrap();
    assert_eq!(e["server"], "node0");
    assert_eq!(e["backend_port"], Value::Null);
    assert_eq!(listed["total"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_startup_gets_no_answer_is_listed_as_starting() {
    // PostgreSQL accepts and never answers the startup: the session stays in the inspection.
    let (c, _pgs) = Cluster::start_pg(vec![(PRIMARY, PgMode::Silent)], FAST).await;
    c.wait_for(LIMIT, "node0 routed", |c| c.primary() == Some(0))
        .await;
    let mut s = TcpStream::connect(c.addr).await.unwrap();
    let port = s.local_addr().unwrap().port();
    s.write_all(&startup_message("app")).await.unwrap();
    let listed = until(&c, port, "the client starting", |e| {
        e.is_some_and(|e| e["state"] == "starting")
    })
    .await;
    assert_eq!(entry(&listed, port).unwrap()["server"], "node0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_server_refuses_the_connection_is_listed_as_connecting() {
    // node0's PostgreSQL port refuses: the session retries (1 s apart) while listed as connecting.
    let c = Cluster::start_custom(vec![PRIMARY], FAST, "", &[0]).await;
    c.wait_for(LIMIT, "node0 routed", |c| c.primary() == Some(0))
        .await;
    let s = TcpStream::connect(c.addr).await.unwrap();
    let port = s.local_addr().unwrap().port();
    let listed = until(&c, port, "the client connecting", |e| {
        e.is_some_and(|e| e["state"] == "connecting" && e["server"] == "node0")
    })
    .await;
    assert_eq!(entry(&listed, port).unwrap()["backend_port"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_listeners_sessions_are_listed_under_its_name() {
    // A primary port and a replica port (issue 13): the view lists the sessions of both, each
    // with the listener it came in on.
    let c = Cluster::start(
        vec![PRIMARY, Mode::Replica],
        "[[listen]]\nname = \"rw\"\nbind = \"127.0.0.1:0\"\n\
         [[listen]]\nname = \"ro\"\nbind = \"127.0.0.1:0\"\nrole = \"replica\"\n\
         [check]\ninter = \"100ms\"\n",
    )
    .await;
    c.wait_for(LIMIT, "node0 routed, node1 in the replica set", |c| {
        c.primary() == Some(0) && c.shared().current().sets[0].members.to_vec() == [1]
    })
    .await;
    let (rw_port, _rw) = open(&c, "node0").await;
    let ro = TcpStream::connect(c.set_addrs[0]).await.unwrap();
    let ro_port = ro.local_addr().unwrap().port();
    let (greeted_by, _ro) = client_of(ro).await.expect("a replica session");
    assert_eq!(greeted_by, "node1");
    let s = until(&c, ro_port, "the replica session relaying", |e| {
        e.is_some_and(|e| e["state"] == "relaying")
    })
    .await;
    let (rw, ro) = (entry(&s, rw_port).unwrap(), entry(&s, ro_port).unwrap());
    assert_eq!(
        (&rw["listener"], &rw["server"]),
        (&"rw".into(), &"node0".into())
    );
    assert_eq!(
        (&ro["listener"], &ro["server"]),
        (&"ro".into(), &"node1".into())
    );
    assert_eq!(s["total"], 2, "{s}");
}
