//! Issue 13 item 1, several listeners, on in-process fakes: a replica listener spreads over the
//! streaming replicas and never hands out the primary, a promoted replica leaves its set at once
//! and its sessions there end by `on-marked-down`, the fallback to the primary, and one check per
//! node per interval however many listeners there are.

mod common;

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use common::{connect, Cluster, FakeDb, FakePatroni, Mode};

#[allow(non_snake_case)]
fn SECS(n: u64) -> Duration {
    Duration::from_secs(n)
}

const PRIMARY: Mode = Mode::Primary { timeline: 1 };

/// A primary port and a replica port (`balance`, `fallback` as given).
fn listeners(replica: &str) -> String {
    format!(
        "[[listen]]\nname = \"rw\"\nbind = \"127.0.0.1:0\"\n\
         [[listen]]\nname = \"ro\"\nbind = \"127.0.0.1:0\"\nrole = \"replica\"\n{replica}\n\
         [check]\ninter = \"1s\"\n"
    )
}

fn members(c: &Cluster) -> Vec<usize> {
    c.shared().current().sets[0].members.to_vec()
}

#[tokio::test(start_paused = true)]
async fn a_replica_listener_spreads_over_the_replicas_and_never_the_primary() {
    let c = Cluster::start(vec![PRIMARY, Mode::Replica, Mode::Replica], &listeners("")).await;
    c.wait_for(SECS(10), "both replicas admitted", |c| {
        members(c) == [1, 2] && c.primary() == Some(0)
    })
    .await;
    let ro = c.set_addrs[0];
    // leastconn: with every session held open, they alternate.
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(connect(ro).await.expect("connected").0);
    }
    held.sort();
    assert_eq!(held.iter().filter(|n| *n == "node1").count(), 5, "{held:?}");
    assert_eq!(held.iter().filter(|n| *n == "node2").count(), 5, "{held:?}");
    assert_eq!(c.nodes[0].db.accepted.load(SeqCst), 0, "never the primary");
    // The primary port is unchanged.
    assert_eq!(connect(c.addr).await.expect("connected").0, "node0");
}

#[tokio::test(start_paused = true)]
async fn a_promoted_replica_leaves_at_once_and_its_replica_sessions_end_at_fall() {
    // "sessions on a replica that gets promoted ... end by the same on-marked-down rule as
    // HAProxy"; "a new connection is never sent to a node that is not in recovery".
    let c = Cluster::start(
        vec![PRIMARY, Mode::Replica, Mode::Replica],
        &listeners("balance = \"roundrobin\""),
    )
    .await;
    c.wait_for(SECS(10), "both replicas admitted", |c| members(c) == [1, 2])
        .await;
    let ro = c.set_addrs[0];
    let mut on_node1 = None;
    for _ in 0..2 {
        let (node, client) = connect(ro).await.expect("connected");
        if node == "node1" {
            on_node1 = Some(client);
        }
    }
    let mut on_node1 = on_node1.expect("roundrobin reached node1");
    c.nodes[1].rest.set(Mode::Primary { timeline: 2 });
    c.nodes[0].rest.set(Mode::Replica);
    c.wait_for(SECS(5), "node1 out of the replica set", |c| {
        members(c) == [2]
    })
    .await;
    assert!(on_node1.alive().await, "one answer does not cut, fall does");
    for _ in 0..6 {
        assert_eq!(connect(ro).await.expect("connected").0, "node2");
    }
    // Three failed answers (fall) later, its replica sessions are closed.
    assert!(on_node1.closed_within(SECS(10)).await);
    // And the primary port moved to node1 (the higher timeline).
    c.wait_for(SECS(10), "node1 routed", |c| c.primary() == Some(1))
        .await;
}

#[tokio::test(start_paused = true)]
async fn with_no_replica_the_fallback_sends_reads_to_the_primary() {
    let starting = Mode::Raw(
        "HTTP/1.0 503 Service Unavailable\r\n\r\n{\"state\": \"starting\", \"role\": \"replica\"}"
            .into(),
    );
    let c = Cluster::start(
        vec![PRIMARY, starting.clone(), starting],
        &listeners("fallback = \"primary\""),
    )
    .await;
    c.wait_for(SECS(10), "node0 routed", |c| c.primary() == Some(0))
        .await;
    assert!(members(&c).is_empty());
    assert_eq!(connect(c.set_addrs[0]).await.expect("connected").0, "node0");
}

#[tokio::test(start_paused = true)]
async fn one_check_per_node_per_interval_feeds_every_listener() {
    // "One check connection per node per interval feeds every listener, however many there are".
    let three = format!(
        "{}[[listen]]\nname = \"any\"\nbind = \"127.0.0.1:0\"\nrole = \"any\"\n",
        listeners("").replace("[check]\ninter = \"1s\"\n", "")
    ) + "[check]\ninter = \"1s\"\n";
    let c = Cluster::start(vec![PRIMARY, Mode::Replica, Mode::Replica], &three).await;
    c.wait_for(SECS(10), "both sets filled", |c| {
        let s = c.shared().current();
        s.sets.len() == 2 && s.sets[0].members.len() == 2 && s.sets[1].members.len() == 3
    })
    .await;
    let before: Vec<usize> = c.nodes.iter().map(|n| n.rest.checks.load(SeqCst)).collect();
    tokio::time::sleep(SECS(10)).await;
    for (i, n) in c.nodes.iter().enumerate() {
        let checks = n.rest.checks.load(SeqCst) - before[i];
        // At `inter` = 1 s: 10 in 10 s (one more if a check straddles the window's edges).
        assert!(
            (10..=11).contains(&checks),
            "node{i}: {checks} checks in 10 s"
        );
    }
}

#[tokio::test]
async fn each_listener_has_its_csv_section_json_entry_and_metrics() {
    // Issue 13 item 4: "the CSV has its FRONTEND/servers/BACKEND rows per listener, metrics carry
    // a bounded listener label".
    let c = Cluster::start(
        vec![PRIMARY, Mode::Replica, Mode::Replica],
        &listeners("").replace("inter = \"1s\"", "inter = \"100ms\""),
    )
    .await;
    c.wait_for(SECS(10), "both replicas admitted", |c| members(c) == [1, 2])
        .await;
    let (_node, _held) = connect(c.set_addrs[0]).await.expect("connected");
    let (code, csv) = common::binary::get(c.stats, "/;csv").await.expect("csv");
    assert_eq!(code, 200);
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    let ro: Vec<(&str, &str)> = (rows.iter())
        .filter(|r| r[0] == "ro")
        .map(|r| (r[1], r[17]))
        .collect();
    assert_eq!(
        ro,
        [
            ("FRONTEND", "OPEN"),
            ("node0", "DOWN"),
            ("node1", "UP"),
            ("node2", "UP"),
            ("BACKEND", "UP")
        ],
        "{csv}"
    );
    let (_, json) = common::binary::get(c.stats, "/stats.json")
        .await
        .expect("json");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let l = &v["listeners"][0];
    assert_eq!(l["name"], "ro");
    assert_eq!(l["role"], "replica");
    assert_eq!(l["members"], serde_json::json!(["node1", "node2"]));
    assert_eq!(l["out"][0][0], "node0");
    assert_eq!(l["out"][0][1], "role is primary");
    assert_eq!(l["frontend"]["scur"], 1);
    let (_, metrics) = common::binary::get(c.stats, "/metrics")
        .await
        .expect("metrics");
    for line in [
        "patroni_proxy_listener_member{listener=\"ro\",server=\"node0\"} 0",
        "patroni_proxy_listener_member{listener=\"ro\",server=\"node1\"} 1",
        "patroni_proxy_listener_sessions_current{listener=\"ro\"} 1",
        "patroni_proxy_listener_sessions_total{listener=\"ro\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
}

#[tokio::test]
async fn the_dashboard_has_a_section_per_listener() {
    let c = Cluster::start(
        vec![PRIMARY, Mode::Replica, Mode::Replica],
        &listeners("").replace("inter = \"1s\"", "inter = \"100ms\""),
    )
    .await;
    c.wait_for(SECS(10), "both replicas admitted", |c| members(c) == [1, 2])
        .await;
    let (_, page) = common::binary::get(c.stats, "/").await.expect("the page");
    assert!(
        page.contains("<section class=\"listener\" data-listener=\"ro\">"),
        "{page}"
    );
    assert!(page.contains("members: node1, node2"), "{page}");
    assert!(page.contains("no: role is primary"), "{page}");
    let (_, data) = common::binary::get(c.stats, "/dashboard/data.json")
        .await
        .expect("data");
    let v: serde_json::Value = serde_json::from_str(&data).unwrap();
    assert!(v["listeners_html"]
        .as_str()
        .unwrap()
        .contains("data-listener=\"ro\""));
}

#[tokio::test(start_paused = true)]
async fn every_bind_of_the_primary_port_routes_to_the_one_primary_and_follows_it() {
    // Issue 13: `bind` forms "several binds" on the read-write section (a frontend with
    // `bind :5000` and `bind 127.0.0.1:6000`): each address is the same primary listener.
    let c = Cluster::start(
        vec![PRIMARY, Mode::Replica, Mode::Replica],
        "[listen]\nbind = [\"127.0.0.1:0\", \"127.0.0.2:0\"]\n[check]\ninter = \"1s\"\n",
    )
    .await;
    c.wait_for(SECS(10), "node0 routed", |c| c.primary() == Some(0))
        .await;
    let second = c.more_addrs[0];
    let (node, mut on_second) = connect(second).await.expect("connected");
    assert_eq!(node, "node0");
    assert_eq!(connect(c.addr).await.expect("connected").0, "node0");
    // A new primary: the sessions of every bind end (on-marked-down), new ones go to node1.
    c.nodes[0].rest.set(Mode::Replica);
    c.nodes[1].rest.set(Mode::Primary { timeline: 2 });
    c.wait_for(SECS(10), "node1 routed", |c| c.primary() == Some(1))
        .await;
    assert!(on_second.closed_within(SECS(10)).await);
    assert_eq!(connect(second).await.expect("connected").0, "node1");
}

#[tokio::test(start_paused = true)]
async fn a_sync_listener_takes_the_synchronous_standby_and_an_async_one_the_others() {
    // Patroni's `/sync` and `/async` from the one GET answer (`sync_standby: true`), as
    // vitabaks/autobase's replicas_sync and replicas_async ports route (corpus file 02).
    let sync = Mode::Raw(
        "HTTP/1.0 503 Service Unavailable\r\n\r\n{\"state\": \"running\", \"role\": \"replica\", \
         \"timeline\": 1, \"replication_state\": \"streaming\", \"sync_standby\": true}"
            .into(),
    );
    let c = Cluster::start(
        vec![PRIMARY, sync, Mode::Replica],
        "[[listen]]\nname = \"rw\"\nbind = \"127.0.0.1:0\"\n\
         [[listen]]\nname = \"sync\"\nbind = \"127.0.0.1:0\"\nrole = \"sync\"\n\
         [[listen]]\nname = \"async\"\nbind = \"127.0.0.1:0\"\nrole = \"async\"\n\
         [check]\ninter = \"1s\"\n",
    )
    .await;
    let sets = |c: &Cluster| -> Vec<Vec<usize>> {
        (c.shared().current().sets.iter())
            .map(|s| s.members.to_vec())
            .collect()
    };
    c.wait_for(SECS(10), "each standby in its set", |c| {
        sets(c) == [vec![1], vec![2]]
    })
    .await;
    assert_eq!(connect(c.set_addrs[0]).await.expect("connected").0, "node1");
    assert_eq!(connect(c.set_addrs[1]).await.expect("connected").0, "node2");
    // The synchronous standby changes: each set follows at the next checks.
    c.nodes[1].rest.set(Mode::Replica);
    c.nodes[2].rest.set(Mode::Raw(
        "HTTP/1.0 503 Service Unavailable\r\n\r\n{\"state\": \"running\", \"role\": \"replica\", \
         \"timeline\": 1, \"replication_state\": \"streaming\", \"sync_standby\": true}"
            .into(),
    ));
    c.wait_for(SECS(20), "the sets swapped", |c| {
        sets(c) == [vec![2], vec![1]]
    })
    .await;
}

#[tokio::test]
async fn a_second_primary_port_on_postgresqls_own_port_follows_the_one_primary() {
    // Issue 13: Pigsty's services (corpus file 03): the same nodes through pgbouncer (the servers'
    // port) and PostgreSQL itself (`server_port`). One check per node, one routed primary; the
    // second port's sessions end with the primary port's.
    let mut rest = Vec::new();
    let mut toml = String::from(
        "[global]\nthreads = 1\nshutdown_grace = \"1s\"\n[check]\ninter = \"200ms\"\n\
         [[listen]]\nname = \"rw\"\nbind = \"127.0.0.1:0\"\n",
    );
    let (mut bouncer_port, mut pg_port) = (0, 0);
    let mut dbs = Vec::new();
    for i in 0..2 {
        let mode = match i {
            0 => PRIMARY,
            _ => Mode::Replica,
        };
        rest.push(FakePatroni::start(mode).await);
        let host = format!("127.0.0.4{}", i + 1);
        let bouncer =
            FakeDb::start_at(&format!("{host}:{bouncer_port}"), &format!("bouncer{i}")).await;
        let pg = FakeDb::start_at(&format!("{host}:{pg_port}"), &format!("pg{i}")).await;
        (bouncer_port, pg_port) = (bouncer.addr.port(), pg.addr.port());
        toml.push_str(&format!(
            "[[server]]\nname = \"node{i}\"\naddress = \"{host}:{bouncer_port}\"\n\
             check_addr = \"127.0.0.1\"\ncheck_port = {}\n",
            rest[i].addr.port()
        ));
        dbs.push((bouncer, pg));
    }
    toml.push_str(&format!(
        "[[listen]]\nname = \"rw-direct\"\nbind = \"127.0.0.2:0\"\nserver_port = {pg_port}\n"
    ));
    let config = std::sync::Arc::new(patroni_proxy::config::Config::from_toml(&toml).unwrap());
    let rw_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let direct_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (rw, direct) = (rw_l.local_addr().unwrap(), direct_l.local_addr().unwrap());
    let running = patroni_proxy::supervisor::start(
        config,
        patroni_proxy::supervisor::Listeners {
            proxy: rw_l,
            proxy_more: Vec::new(),
            stats: None,
            sets: vec![(0, direct_l)],
        },
    );
    let shared = running.shared.clone();
    let until = |f: Box<dyn Fn() -> bool>| async move {
        let deadline = tokio::time::Instant::now() + SECS(10);
        while !f() {
            assert!(tokio::time::Instant::now() < deadline, "timed out");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let s = shared.clone();
    until(Box::new(move || {
        s.current().primary == Some(0) && *s.current().sets[0].members == [0]
    }))
    .await;
    let (node, mut on_rw) = connect(rw).await.expect("a session");
    assert_eq!(node, "bouncer0");
    let (node, mut on_direct) = connect(direct).await.expect("a session");
    assert_eq!(node, "pg0");
    // A switchover: both ports move to node1 at once; both old sessions end.
    rest[0].set(Mode::Replica);
    rest[1].set(Mode::Primary { timeline: 2 });
    let s = shared.clone();
    until(Box::new(move || s.current().primary == Some(1))).await;
    assert!(on_rw.closed_within(SECS(5)).await);
    // Cut with the primary port's, not `fall` checks later by its own counter.
    assert!(on_direct.closed_within(Duration::from_millis(100)).await);
    assert_eq!(connect(direct).await.expect("a session").0, "pg1");
    assert_eq!(connect(rw).await.expect("a session").0, "bouncer1");
    assert_eq!(
        dbs[1].1.accepted.load(SeqCst),
        1,
        "pg1 only after the switchover"
    );
    // One check per node feeds both ports: 2 nodes, never a second checker per node.
    assert_eq!(shared.current().nodes.len(), 2);
    running.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn global_maxconn_counts_the_sessions_of_every_listener() {
    // haproxy-semantics.md §2.4: `global maxconn` is the process's limit: at it, no listener
    // accepts; a freed slot serves the waiting client, whichever listener it came to.
    let c = Cluster::start(
        vec![PRIMARY, Mode::Replica],
        &format!("[global]\nmaxconn = 2\n{}", listeners("")),
    )
    .await;
    c.wait_for(SECS(10), "routed", |c| {
        c.primary() == Some(0) && members(c) == [1]
    })
    .await;
    let (_, first) = connect(c.addr).await.unwrap();
    let (_, _second) = connect(c.set_addrs[0]).await.unwrap();
    let ro = c.set_addrs[0];
    let third = tokio::spawn(async move { connect(ro).await.map(|(n, _)| n) });
    tokio::time::sleep(SECS(20)).await;
    assert!(
        !third.is_finished(),
        "the replica port waits too at the global limit"
    );
    drop(first);
    assert_eq!(third.await.unwrap().as_deref(), Some("node1"));
}
