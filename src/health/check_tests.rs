//! Unit tests of [`super`]: the answer parser's rules, each quoting the rule it checks.

use super::*;

#[test]
fn default_request_is_the_request_line_only() {
    // haproxy-semantics.md §1.1: `OPTIONS / HTTP/1.0\r\n\r\n`, no headers. We default to GET
    // (same answer from Patroni, plus the JSON body).
    let spec = CheckSpec::new(
        "OPTIONS",
        "/",
        "HTTP/1.0",
        200,
        Duration::from_secs(3),
        Duration::from_secs(5),
    );
    assert_eq!(spec.request, b"OPTIONS / HTTP/1.0\r\n\r\n");
    assert_eq!(spec.request.len(), 22);
}

#[test]
fn head_parsing_needs_the_blank_line() {
    assert!(parse_head(b"HTTP/1.0 200 OK\r\n").unwrap().is_none());
    let h = parse_head(b"HTTP/1.0 503 Service Unavailable\r\n\r\n{")
        .unwrap()
        .unwrap();
    assert_eq!(
        (h.code, h.reason.as_str(), h.body_start),
        (503, "Service Unavailable", 36)
    );
    assert!(parse_head(b"garbage\r\n\r\n").is_err());
}

fn done(p: Parse) -> Verdict {
    match p {
        Parse::Done(v) => v,
        Parse::NeedMore => panic!("needs more"),
    }
}

#[test]
fn the_answer_is_complete_only_with_its_body() {
    let primary = br#"{"state": "running", "role": "primary", "timeline": 4}"#;
    let mut a = format!(
        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n",
        primary.len()
    )
    .into_bytes();
    assert_eq!(parse_answer(&a, false, 200, true), Parse::NeedMore);
    a.extend_from_slice(primary);
    let v = done(parse_answer(&a, false, 200, true));
    assert_eq!((v.status, v.code), (CheckStatus::L7OK, Some(200)));
    assert_eq!(v.patroni.unwrap().timeline, Some(4));
    // Without a length the body ends with the connection.
    let b = [&b"HTTP/1.0 200 OK\r\n\r\n"[..], primary].concat();
    assert_eq!(parse_answer(&b, false, 200, true), Parse::NeedMore);
    assert_eq!(
        done(parse_answer(&b, true, 200, true)).status,
        CheckStatus::L7OK
    );
    // A status-only check (HEAD, OPTIONS) follows the status line alone, as HAProxy.
    let v = done(parse_answer(b"HTTP/1.0 200 OK\r\n\r\n", false, 200, false));
    assert_eq!((v.status, v.patroni), (CheckStatus::L7OK, None));
}

#[test]
fn an_unreadable_200_confirms_nothing() {
    // Issue 11 item 10: a 200 whose body is unreadable, not JSON or over the cap was a primary.
    for (bytes, closed, info) in [
        (
            &b"HTTP/1.0 200 OK\r\n\r\nnot json"[..],
            true,
            "body is not Patroni's status: not a JSON object",
        ),
        (
            b"HTTP/1.0 200 OK\r\n\r\n[1]",
            true,
            "body is not Patroni's status: not a JSON object",
        ),
        (
            b"HTTP/1.0 200 OK\r\n\r\n{\"state\":\"running\"}",
            true,
            "body is not Patroni's status: no role",
        ),
        (
            b"HTTP/1.0 200 OK\r\nContent-Length: 10\r\n\r\n{}",
            true,
            "incomplete body",
        ),
        (
            b"HTTP/1.0 200 OK\r\nContent-Length: 65537\r\n\r\n{}",
            false,
            "body over 64 KiB",
        ),
        // Issue 11 item 1: overflowed `body_start + n` and panicked.
        (
            b"HTTP/1.0 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\n",
            false,
            "body over 64 KiB",
        ),
    ] {
        let v = done(parse_answer(bytes, closed, 200, true));
        assert_eq!(
            v.status,
            CheckStatus::L7RSP,
            "{}",
            String::from_utf8_lossy(bytes)
        );
        assert_eq!(v.info.as_deref(), Some(info));
    }
    let big = [
        &b"HTTP/1.0 200 OK\r\n\r\n"[..],
        &vec![b' '; MAX_RESPONSE + 1],
    ]
    .concat();
    assert_eq!(
        done(parse_answer(&big, false, 200, true)).info.as_deref(),
        Some("body over 64 KiB")
    );
    let v = done(parse_answer(
        b"HTTP/1.0 200 OK\r\nContent-Length: x\r\n\r\n",
        false,
        200,
        true,
    ));
    assert_eq!(
        (v.status, v.info.as_deref()),
        (CheckStatus::L7RSP, Some("invalid Content-Length"))
    );
}

#[test]
fn a_wrong_status_stays_a_wrong_status_whatever_the_body() {
    let v = done(parse_answer(
        b"HTTP/1.0 503 Service Unavailable\r\n\r\ngarbage",
        true,
        200,
        true,
    ));
    assert_eq!(
        (v.status, v.code, v.info.as_deref()),
        (CheckStatus::L7STS, Some(503), Some("Service Unavailable"))
    );
    let replica = [
        &b"HTTP/1.0 503 X\r\n\r\n"[..],
        br#"{"role": "replica", "state": "running"}"#,
    ]
    .concat();
    let v = done(parse_answer(&replica, true, 200, true));
    assert_eq!(v.patroni.unwrap().role.as_deref(), Some("replica"));
    // `timeout check` with only a wrong status line read: still a wrong status.
    assert_eq!(
        timed_out(b"HTTP/1.0 503 X\r\n\r\n{", 200).status,
        CheckStatus::L7STS
    );
    assert_eq!(
        timed_out(b"HTTP/1.0 200 OK\r\n\r\n{", 200).status,
        CheckStatus::L7TOUT
    );
    assert_eq!(timed_out(b"", 200).status, CheckStatus::L7TOUT);
}

#[test]
fn summary_matches_haproxy_lastchk() {
    let r = CheckResult {
        status: CheckStatus::L7STS,
        code: Some(503),
        duration: Duration::from_millis(2),
        info: Some("Service Unavailable".into()),
        patroni: None,
        finished_at: SystemTime::now(),
    };
    assert_eq!(r.summary(), "L7STS/503 in 2ms");
    let r = CheckResult {
        status: CheckStatus::L4CON,
        code: None,
        ..r
    };
    assert_eq!(r.summary(), "L4CON in 2ms");
}
