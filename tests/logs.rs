//! Issue 15 item 4, logs, read from the built binary's stderr: `log.format = "json"` gives one
//! JSON object per line with the documented field names, `log.sessions = true` one `tcplog` line
//! per session whose values match what the client did (its port, its bytes, the backend port
//! `/sessions.json` showed), and the text format is as before.

mod common;

use std::time::Duration;

use common::binary::{Extra, Proxy, Stderr};
use common::{startup_message, FakePatroni, FakePg, Mode, PgMode};
use serde_json::{Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The fields of the session line, as docs/operations.md lists them.
const SESSION_FIELDS: [&str; 11] = [
    "client_addr",
    "client_port",
    "listener",
    "server",
    "backend_port",
    "time_queue_ms",
    "time_connect_ms",
    "time_total_ms",
    "bytes_from_client",
    "bytes_from_server",
    "termination",
];

/// Every stderr line so far, each parsed as a JSON object (a line that is not one fails the test).
fn parsed(p: &Proxy) -> Vec<Map<String, Value>> {
    p.log
        .lock()
        .unwrap()
        .iter()
        .map(|l| match serde_json::from_str(l) {
            Ok(Value::Object(m)) => m,
            other => panic!("not a JSON object: {l:?} ({other:?})"),
        })
        .collect()
}

/// A session through the proxy: the startup, `payload` echoed back, then a close. Returns the
/// client's port and the bytes it sent and received, and the backend port `/sessions.json` listed
/// for it while it was open.
async fn one_session(p: &Proxy, payload: usize) -> (u16, u64, u64, u64) {
    let mut s = TcpStream::connect(p.listen).await.unwrap();
    let port = s.local_addr().unwrap().port();
    let startup = startup_message("app");
    s.write_all(&startup).await.unwrap();
    // The fake's startup answer ends with ReadyForQuery, `Z` of length 5.
    let mut answer = Vec::new();
    let mut chunk = [0u8; 512];
    while !answer.ends_with(&[b'Z', 0, 0, 0, 5, b'I']) {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("the startup answer")
            .unwrap();
        assert!(n > 0, "closed during the startup: {answer:?}");
        answer.extend_from_slice(&chunk[..n]);
    }
    let data = vec![b'x'; payload];
    s.write_all(&data).await.unwrap();
    let mut echoed = vec![0u8; payload];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echoed))
        .await
        .expect("the echo")
        .unwrap();
    let backend = backend_port_of(p, port).await;
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("the close")
        .unwrap();
    assert!(rest.is_empty());
    let sent = (startup.len() + payload) as u64;
    let received = (answer.len() + payload) as u64;
    (port, sent, received, backend)
}

/// The backend port `/sessions.json` shows for the session of client port `port`.
async fn backend_port_of(p: &Proxy, port: u16) -> u64 {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let body = p.get_ok("/sessions.json", Duration::from_secs(5)).await;
        let v: Value = serde_json::from_str(&body).unwrap();
        let found = v["sessions"].as_array().and_then(|a| {
            a.iter()
                .find(|e| e["client_port"] == port)
                .and_then(|e| e["backend_port"].as_u64())
        });
        if let Some(b) = found {
            return b;
        }
        assert!(
            Instant::now() < until,
            "session {port} never listed: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for the session line of client port `port` (text or JSON: the substring given).
async fn wait_line(p: &Proxy, needle: &str) -> String {
    p.wait_logged(needle, Duration::from_secs(5)).await;
    let log = p.log.lock().unwrap();
    log.iter().find(|l| l.contains(needle)).unwrap().clone()
}

#[tokio::test]
async fn json_lines_parse_and_the_session_line_has_every_field_right() {
    let pg = FakePg::start(PgMode::Primary).await;
    let rest = FakePatroni::start(Mode::Primary { timeline: 1 }).await;
    let extra = Extra {
        log: "format = \"json\"\nsessions = true",
        ..Extra::default()
    };
    let p = Proxy::start(pg.addr, rest.addr, extra, Stderr::Read, &[]);
    p.wait_routed().await;
    let (port, sent, received, backend) = one_session(&p, 3000).await;
    wait_line(&p, &format!("\"client_port\":{port},")).await;

    let lines = parsed(&p);
    // The start-up line, a state change, debug lines (RUST_LOG includes them): every one an object
    // that opens with the four documented keys, in order.
    assert!(lines.len() >= 3, "{lines:?}");
    for l in &lines {
        let keys: Vec<&str> = l.keys().map(String::as_str).collect();
        for k in ["timestamp", "level", "target", "message"] {
            assert!(keys.contains(&k), "{k} missing: {l:?}");
        }
        let ts = l["timestamp"].as_str().unwrap();
        assert!(
            ts.ends_with('Z') && ts.len() == 27,
            "not RFC 3339 UTC: {ts}"
        );
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&l["level"].as_str().unwrap()),
            "{l:?}"
        );
    }
    let started = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .unwrap()
                .starts_with("patroni-proxy started")
        })
        .expect("the start-up line");
    assert_eq!(started["listen"], p.listen.to_string());
    assert_eq!(started["servers"], 1);

    let session = lines
        .iter()
        .find(|l| l["target"] == "patroni_proxy::session" && l["client_port"] == port)
        .unwrap();
    for k in SESSION_FIELDS {
        assert!(session.contains_key(k), "{k} missing: {session:?}");
    }
    assert_eq!(session["level"], "INFO");
    assert_eq!(session["message"], "session");
    assert_eq!(session["client_addr"], "127.0.0.1");
    assert_eq!(session["listener"], "postgres");
    assert_eq!(session["server"], "pg0");
    assert_eq!(session["backend_port"], backend);
    assert_eq!(session["termination"], "--");
    assert_eq!(session["bytes_from_client"], sent);
    assert_eq!(session["bytes_from_server"], received);
    let ms = |k: &str| session[k].as_i64().unwrap();
    assert!(
        ms("time_queue_ms") >= 0 && ms("time_connect_ms") >= 0,
        "{session:?}"
    );
    assert!(
        ms("time_total_ms") >= ms("time_queue_ms") + ms("time_connect_ms"),
        "{session:?}"
    );
    let log = p.log.lock().unwrap().join("\n");
    assert!(!log.contains('\u{1b}'), "{log}");
}

#[tokio::test]
async fn a_session_that_never_reached_a_server_says_so() {
    // No primary: the client is held for `hold_timeout`, then refused (SH).
    let pg = FakePg::start(PgMode::Primary).await;
    let rest = FakePatroni::start(Mode::Replica).await;
    let extra = Extra {
        listen: "hold_timeout = \"200ms\"",
        log: "format = \"json\"\nsessions = true",
        ..Extra::default()
    };
    let p = Proxy::start(pg.addr, rest.addr, extra, Stderr::Read, &[]);
    p.wait_logged("patroni-proxy started", Duration::from_secs(10))
        .await;
    let mut s = TcpStream::connect(p.listen).await.unwrap();
    let port = s.local_addr().unwrap().port();
    s.write_all(&startup_message("app")).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer))
        .await
        .expect("refused within hold_timeout")
        .unwrap();
    wait_line(&p, &format!("\"client_port\":{port},")).await;
    let lines = parsed(&p);
    let session = lines
        .iter()
        .find(|l| l.get("client_port") == Some(&port.into()))
        .unwrap();
    assert_eq!(session["termination"], "SH");
    assert_eq!(session["server"], "<NOSRV>");
    assert_eq!(session["backend_port"], 0);
    assert_eq!(session["time_queue_ms"], -1);
    assert_eq!(session["time_connect_ms"], -1);
    assert!(
        session["time_total_ms"].as_i64().unwrap() >= 200,
        "{session:?}"
    );
    assert_eq!(session["bytes_from_client"], startup_message("app").len());
    assert_eq!(session["bytes_from_server"], -1);
}

#[tokio::test]
async fn the_text_format_is_as_before_and_the_session_line_is_off_by_default() {
    let pg = FakePg::start(PgMode::Primary).await;
    let rest = FakePatroni::start(Mode::Primary { timeline: 1 }).await;
    // RUST_LOG=info: the session line of `log.sessions` is at info, the old one at debug.
    let p = Proxy::start_with_filter(pg.addr, rest.addr, Extra::default(), "info");
    p.wait_routed().await;
    one_session(&p, 10).await;
    // A session line with the option on, in text, for the same kind of session.
    let on = Proxy::start_with_filter(
        pg.addr,
        rest.addr,
        Extra {
            log: "sessions = true",
            ..Extra::default()
        },
        "info",
    );
    on.wait_routed().await;
    let (port_on, ..) = one_session(&on, 10).await;
    let line = wait_line(&on, &format!("client_port={port_on} ")).await;
    assert!(
        line.contains(" INFO patroni_proxy::session: session client_addr=127.0.0.1 "),
        "{line}"
    );
    assert!(
        line.contains(" server=\"pg0\"") || line.contains(" server=pg0"),
        "{line}"
    );
    assert!(
        line.ends_with(" termination=\"--\"") || line.ends_with(" termination=--"),
        "{line}"
    );

    // The text lines: a timestamp first, HAProxy's wording, never JSON; nothing per session.
    let log = p.log.lock().unwrap().clone();
    assert!(
        log.iter()
            .any(|l| l.contains("Routed primary of postgres is now pg0")),
        "{log:#?}"
    );
    for l in &log {
        assert!(!l.starts_with('{'), "{l}");
        assert!(
            l.get(..4)
                .is_some_and(|y| y.bytes().all(|b| b.is_ascii_digit())),
            "{l}"
        );
        assert!(!l.contains("patroni_proxy::session"), "{l}");
    }
}
