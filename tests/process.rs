//! Issue 11, the defects only a whole process shows: a check answer that left a zombie serving
//! nothing, signals, a blocked stderr, running out of file descriptors. Each test runs the built
//! `patroni-proxy` binary against in-process fakes on loopback.

mod common;

use std::time::Duration;

use common::binary::{Extra, Proxy, Stderr};
use common::{pg_startup, startup_message, FakePatroni, FakePg, Mode, PgMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

#[tokio::test]
async fn a_huge_content_length_neither_panics_nor_stops_serving() {
    // Issue 11 item 1: `Content-Length: 18446744073709551615` overflowed `body_start + n`, panicked
    // the checker, and the supervisor closed the listeners while the process stayed alive serving
    // nothing. Now it is an invalid answer (L7RSP), and the proxy goes on.
    let pg = FakePg::start(PgMode::Primary).await;
    let rest = FakePatroni::start(Mode::Raw(
        "HTTP/1.0 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\n{}".into(),
    ))
    .await;
    let mut p = Proxy::start(pg.addr, rest.addr, Extra::default(), Stderr::Read, &[]);
    p.get_ok("/healthz", Duration::from_secs(10)).await;
    let until = Instant::now() + Duration::from_secs(10);
    while rest.checks.load(std::sync::atomic::Ordering::SeqCst) < 5 {
        assert!(Instant::now() < until);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(p.child.try_wait().unwrap().is_none(), "the process exited");
    let body = p.get_ok("/stats.json", Duration::from_secs(2)).await;
    assert!(
        body.contains("L7RSP") && body.contains("body over 64 KiB"),
        "{body}"
    );
    assert!(
        TcpStream::connect(p.listen).await.is_ok(),
        "the primary port still listens"
    );
    assert!(!p.logged("panicked"));
}

#[tokio::test]
async fn sighup_reloads_and_never_ends_the_process() {
    // Issue 11 item 9: "SIGHUP ends the process without a drain"; issue 15 item 1: it reloads.
    let pg = FakePg::start(PgMode::Primary).await;
    let rest = FakePatroni::start(Mode::Primary { timeline: 1 }).await;
    let mut p = Proxy::start(pg.addr, rest.addr, Extra::default(), Stderr::Read, &[]);
    p.wait_routed().await;
    p.signal("HUP");
    p.wait_logged("Configuration reloaded", Duration::from_secs(5))
        .await;
    assert!(p.exited(Duration::ZERO).await.is_none());
    assert!(pg_startup(p.listen, false).await.is_ok(), "still serving");
}

#[tokio::test]
async fn a_second_stop_signal_closes_everything_at_once() {
    // Issue 11 item 9: "a second SIGTERM/SIGINT during the drain closes everything at once".
    let pg = FakePg::start(PgMode::Primary).await;
    let rest = FakePatroni::start(Mode::Primary { timeline: 1 }).await;
    let mut p = Proxy::start(
        pg.addr,
        rest.addr,
        Extra {
            global: "shutdown_grace = \"60s\"",
            ..Extra::default()
        },
        Stderr::Read,
        &[],
    );
    p.wait_routed().await;
    // A relaying session keeps the drain going for the whole grace period.
    let mut s = TcpStream::connect(p.listen).await.unwrap();
    s.write_all(&startup_message("app")).await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    p.signal("TERM");
    p.wait_logged("draining sessions", Duration::from_secs(5))
        .await;
    assert!(
        p.exited(Duration::from_millis(300)).await.is_none(),
        "drains first"
    );
    let t = Instant::now();
    p.signal("INT");
    let status = p
        .exited(Duration::from_secs(5))
        .await
        .expect("exited at once");
    assert!(status.success(), "{status:?}");
    assert!(t.elapsed() < Duration::from_secs(5));
    let mut rest_of = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut rest_of)).await;
}

#[tokio::test]
async fn held_clients_are_answered_when_the_drain_begins() {
    // Issue 11 item 9: "held clients end within shutdown_grace". With the checks stopped no
    // primary can be confirmed for them, so they are answered 57P03 at once.
    let pg = FakePg::start(PgMode::Primary).await;
    let rest = FakePatroni::start(Mode::Replica).await;
    let mut p = Proxy::start(
        pg.addr,
        rest.addr,
        Extra {
            global: "shutdown_grace = \"20s\"",
            listen: "hold_timeout = \"60s\"",
            ..Extra::default()
        },
        Stderr::Read,
        &[],
    );
    p.get_ok("/healthz", Duration::from_secs(10)).await;
    let listen = p.listen;
    let client = tokio::spawn(async move { pg_startup(listen, false).await });
    let until = Instant::now() + Duration::from_secs(5);
    while !p
        .get_ok("/stats.json", Duration::from_secs(2))
        .await
        .contains("\"holding\":1")
    {
        assert!(Instant::now() < until, "the client was never held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = Instant::now();
    p.signal("TERM");
    let answer = tokio::time::timeout(Duration::from_secs(5), client)
        .await
        .expect("answered before the grace period")
        .unwrap();
    let Err(common::Outcome::PgError(code, message)) = answer else {
        panic!("{answer:?}");
    };
    assert_eq!(code, "57P03", "{message}");
    assert!(message.contains("shutting down"), "{message}");
    assert!(p.exited(Duration::from_secs(5)).await.is_some());
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_blocked_stderr_does_not_stall_the_proxy() {
    // Issue 11 item 4: logging was synchronous; a stderr pipe nobody reads stalled the whole
    // runtime (state owner, checks, stats, sessions). Lines are now dropped and counted.
    let pg = FakePg::start(PgMode::Primary).await;
    let rest = FakePatroni::start(Mode::Primary { timeline: 1 }).await;
    let p = Proxy::start(pg.addr, rest.addr, Extra::default(), Stderr::Blocked, &[]);
    p.wait_routed().await;
    // One debug line per session: far more than the pipe's 64 KiB.
    let listen = p.listen;
    for _ in 0..40 {
        let batch: Vec<_> = (0..100)
            .map(|_| {
                tokio::spawn(async move {
                    let mut s = TcpStream::connect(listen).await.unwrap();
                    s.write_all(&startup_message("app")).await.unwrap();
                    let mut b = [0u8; 1];
                    tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut b))
                        .await
                        .is_ok()
                })
            })
            .collect();
        for served in batch {
            assert!(served.await.unwrap(), "a session was not served within 2 s");
        }
    }
    // Still serving at once, and says how many lines it dropped.
    let t = Instant::now();
    assert!(pg_startup(listen, false).await.is_ok());
    let metrics = p.get_ok("/metrics", Duration::from_secs(2)).await;
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let dropped: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("patroni_proxy_log_lines_dropped_total "))
        .expect("the metric")
        .trim()
        .parse()
        .unwrap();
    assert!(dropped > 0.0, "{dropped}");
}

#[tokio::test]
async fn no_colour_codes_when_stderr_is_not_a_terminal() {
    // Issue 11 item 4: "no ANSI colour codes when stderr is not a terminal".
    let pg = FakePg::start(PgMode::Primary).await;
    let rest = FakePatroni::start(Mode::Primary { timeline: 1 }).await;
    let p = Proxy::start(pg.addr, rest.addr, Extra::default(), Stderr::Read, &[]);
    p.wait_logged("is now pg0", Duration::from_secs(10)).await;
    let log = p.log.lock().unwrap().join("\n");
    assert!(!log.contains('\u{1b}'), "{log}");
}

#[tokio::test]
async fn running_out_of_descriptors_is_never_blamed_on_the_server() {
    // Issue 11 item 6: EMFILE during a check became L4CON, so the primary was marked DOWN and its
    // sessions cut. Run under `prlimit --nofile`, then open sessions until the proxy runs out.
    // With `maxconn = 1` every session but one waits in the queue holding only its client socket,
    // so the proxy fills its last descriptor whatever number it started with: with two per
    // session (client and server) an odd count left one free, and checks ran in it.
    let pg = FakePg::start(PgMode::Primary).await;
    let rest = FakePatroni::start(Mode::Primary { timeline: 1 }).await;
    let extra = Extra {
        listen: "timeout_queue = \"60s\"",
        server: "maxconn = 1",
        ..Extra::default()
    };
    let p = Proxy::start(
        pg.addr,
        rest.addr,
        extra,
        Stderr::Read,
        &["prlimit", "--nofile=48:48"],
    );
    p.wait_routed().await;
    let mut sessions = Vec::new();
    let until = Instant::now() + Duration::from_secs(20);
    // More checks in a row could not run than `fall` (3) failures would need to mark it DOWN.
    while p.count("health check not run") < 5 {
        assert!(
            Instant::now() < until,
            "never ran out: {} sessions",
            sessions.len()
        );
        if sessions.len() < 80 {
            if let Ok(mut s) = TcpStream::connect(p.listen).await {
                let _ = s.write_all(&startup_message("app")).await;
                sessions.push(s);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(sessions);
    let body = p.get_ok("/stats.json", Duration::from_secs(10)).await;
    assert!(body.contains("\"routed_primary\":true"), "{body}");
    assert!(
        body.contains("\"chkdown\":0") && body.contains("\"chkfail\":0"),
        "{body}"
    );
    assert!(!body.contains("L4CON"), "{body}");
    let metrics = p.get_ok("/metrics", Duration::from_secs(2)).await;
    assert!(
        metrics.lines().any(
            |l| l.starts_with("patroni_proxy_local_resource_errors_total ") && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
}
