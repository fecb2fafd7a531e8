//! The range and watch readers against what etcd's gateway sends, what it may send in a bad
//! moment, and what it never sends: arbitrary bytes (property tests, bounded to stay fast).

use super::*;
use proptest::prelude::*;

const PREFIX: &str = "/db/postgres/";

fn b64(s: &str) -> String {
    B64.encode(s)
}

fn put(key: &str, value: &str, rev: u64) -> String {
    format!(
        r#"{{"result":{{"header":{{"cluster_id":"1","revision":"{rev}"}},"events":[{{"kv":{{"key":"{}","create_revision":"2","mod_revision":"{rev}","version":"3","value":"{}","lease":"7587"}}}}]}}}}"#,
        b64(key),
        b64(value)
    ) + "\n"
}

fn delete(key: &str, rev: u64) -> String {
    format!(
        r#"{{"result":{{"header":{{"revision":"{rev}"}},"events":[{{"type":"DELETE","kv":{{"key":"{}","mod_revision":"{rev}"}}}}]}}}}"#,
        b64(key)
    ) + "\n"
}

fn progress(rev: u64) -> String {
    format!(
        r#"{{"result":{{"header":{{"cluster_id":"1","member_id":"2","revision":"{rev}","raft_term":"3"}}}}}}"#
    ) + "\n"
}

fn leader(name: Option<&str>, rev: u64) -> Change {
    Change::Leader {
        leader: name.map(str::to_string),
        revision: Some(rev),
    }
}

/// A stream of every kind of message, and the changes it must give.
fn valid_stream() -> (String, Vec<Change>) {
    let created = r#"{"result":{"header":{"revision":"5"},"created":true}}"#.to_string() + "\n";
    let text = [
        created,
        put("/db/postgres/leader", "postgresql0", 6),
        put("/db/postgres/members/postgresql1", "{}", 7),
        progress(9),
        put(
            "/db/postgres/failover",
            r#"{"leader":"postgresql0","member":"postgresql1"}"#,
            10,
        ),
        delete("/db/postgres/leader", 11),
        put("/db/postgres/failover", "{}", 12),
    ]
    .concat();
    let changes = vec![
        Change::Progress { revision: 5 },
        leader(Some("postgresql0"), 6),
        Change::Progress { revision: 6 },
        Change::Progress { revision: 7 },
        Change::Progress { revision: 9 },
        Change::Failover {
            immediate: true,
            revision: Some(10),
        },
        Change::Progress { revision: 10 },
        leader(None, 11),
        Change::Progress { revision: 11 },
        Change::Failover {
            immediate: false,
            revision: Some(12),
        },
        Change::Progress { revision: 12 },
    ];
    (text, changes)
}

#[test]
fn a_range_answer_gives_the_leader_the_failover_request_and_revisions() {
    let body = format!(
        r#"{{"header":{{"revision":"42"}},"kvs":[
            {{"key":"{}","value":"{}","mod_revision":"40"}},
            {{"key":"{}","value":"{}","mod_revision":"17"}},
            {{"key":"{}","value":"{}","mod_revision":"41"}}],"count":"3"}}"#,
        b64("/db/postgres/failover"),
        b64(r#"{"member":"postgresql1"}"#),
        b64("/db/postgres/history"),
        b64("[[1,25165984,\"no recovery target specified\"]]"),
        b64("/db/postgres/leader"),
        b64("postgresql0"),
    );
    assert_eq!(
        parse_range(body.as_bytes(), PREFIX),
        Ok(Keys {
            leader: Some("postgresql0".into()),
            failover: true,
            revision: 42,
            mod_revision: 41,
            leader_lease: None,
        })
    );
    // No keys at all: etcd leaves `kvs` out.
    assert_eq!(
        parse_range(br#"{"header":{"revision":"3"}}"#, PREFIX),
        Ok(Keys {
            revision: 3,
            ..Keys::default()
        })
    );
}

#[test]
fn a_bad_range_answer_is_refused_with_what_is_wrong() {
    let big = vec![b' '; MAX_RANGE + 1];
    let e = parse_range(&big, PREFIX).unwrap_err();
    assert_eq!(e.to_string(), "range answer over 1 MiB");
    assert_eq!(e.reason(), "oversized");
    for (body, want) in [
        (&br#"{"kvs":[]}"#[..], "range answer without a revision"),
        (br#"{"header":{"revision":"-1"}}"#, "range answer without a revision"),
        (
            br#"{"header":{"revision":"99999999999999999999999"}}"#,
            "range answer without a revision",
        ),
        (
            br#"{"header":{"revision":"1"},"kvs":[{"key":"%%%"}]}"#,
            "a key is not base64",
        ),
        (
            br#"{"header":{"revision":"1"},"kvs":[{"key":"L2RiL3Bvc3RncmVzL2xlYWRlcg==","value":"!"}]}"#,
            "a value is not base64",
        ),
    ] {
        assert_eq!(parse_range(body, PREFIX).unwrap_err().to_string(), want);
    }
    for body in [
        &b""[..],
        b"<html>",
        b"[]",
        br#"{"header":{"revision":1e30}}"#,
        br#"{"header":{"revision":"1"},"kvs":{}}"#,
        br#"{"header":"x"}"#,
    ] {
        let e = parse_range(body, PREFIX).unwrap_err();
        assert!(matches!(e, DcsError::RangeNotJson(_)), "{e}");
        assert_eq!(e.reason(), "invalid");
    }
}

#[test]
fn a_stream_split_at_every_byte_gives_the_same_changes() {
    let (text, want) = valid_stream();
    let bytes = text.as_bytes();
    assert_eq!(WatchDecoder::new(PREFIX).feed(bytes), Ok(want.clone()));
    for cut in 0..=bytes.len() {
        let mut d = WatchDecoder::new(PREFIX);
        let mut got = d.feed(&bytes[..cut]).unwrap();
        got.extend(d.feed(&bytes[cut..]).unwrap());
        assert_eq!(got, want, "cut at {cut}");
        assert_eq!(d.buffered(), 0);
    }
    // One byte at a time.
    let mut d = WatchDecoder::new(PREFIX);
    let got: Vec<Change> = bytes
        .iter()
        .flat_map(|b| d.feed(std::slice::from_ref(b)).unwrap())
        .collect();
    assert_eq!(got, want);
}

#[test]
fn progress_notifications_and_blank_lines_only_show_liveness() {
    let mut d = WatchDecoder::new(PREFIX);
    let text = progress(77) + "\n\r\n" + r#"{"result":{}}"# + "\r\n";
    assert_eq!(
        d.feed(text.as_bytes()),
        Ok(vec![
            Change::Progress { revision: 77 },
            Change::Progress { revision: 0 }
        ])
    );
    // Other keys of the cluster are not changes, but their message still shows the revision.
    assert_eq!(
        d.feed(put("/db/postgres/leader2", "x", 78).as_bytes()),
        Ok(vec![Change::Progress { revision: 78 }])
    );
    assert_eq!(
        d.feed(put("/db/other/leader", "x", 79).as_bytes()),
        Ok(vec![Change::Progress { revision: 79 }])
    );
}

#[test]
fn cancellation_compaction_and_errors_end_the_watch() {
    for (line, want) in [
        (
            r#"{"result":{"header":{"revision":"9"},"canceled":true,"cancel_reason":"etcdserver: no leader"}}"#,
            DcsError::Canceled("etcdserver: no leader".into()),
        ),
        (
            r#"{"result":{"header":{"revision":"9"},"compact_revision":"5","canceled":true}}"#,
            DcsError::Compacted(5),
        ),
        (
            r#"{"result":{"canceled":true}}"#,
            DcsError::Canceled("no reason given".into()),
        ),
        (
            r#"{"error":{"grpc_code":14,"http_code":503,"message":"rpc error: code = Unavailable desc = transport is closing","http_status":"Service Unavailable"}}"#,
            DcsError::WatchError(
                "rpc error: code = Unavailable desc = transport is closing".into(),
            ),
        ),
        (
            r#"{"error":"gone"}"#,
            DcsError::WatchError(r#""gone""#.into()),
        ),
    ] {
        let mut d = WatchDecoder::new(PREFIX);
        let e = d.feed(format!("{line}\n").as_bytes()).unwrap_err();
        let reason = if matches!(want, DcsError::Compacted(_)) {
            "compacted"
        } else {
            "canceled"
        };
        assert_eq!(e, want);
        assert_eq!(e.reason(), reason);
        assert_eq!(d.feed(progress(1).as_bytes()), Err(DcsError::Broken));
    }
}

#[test]
fn garbage_lines_end_the_watch_with_what_is_wrong() {
    let long_string = format!(r#"{{"result":{{"events":"{}"}}}}"#, "x".repeat(5000));
    for line in [
        "not json",
        "{}",
        "[1,2,3]",
        "\"text\"",
        "42",
        r#"{"result":{"events":[{"kv":{"key":"%%%"}}]}}"#,
        r#"{"result":{"header":{"revision":1e400}}}"#,
        r#"{"result":{"events":{}}}"#,
        r#"{"result":{"canceled":"yes"}}"#,
        &long_string,
        &"[".repeat(10_000),
    ] {
        let mut d = WatchDecoder::new(PREFIX);
        let e = d.feed(format!("{line}\n").as_bytes()).unwrap_err();
        assert_eq!(e.reason(), "invalid", "{line:.40}: {e}");
        // A quoted megabyte would flood the log.
        assert!(e.to_string().len() < 300, "{e}");
    }
    // Bytes that are not UTF-8 in a value are shown, not refused.
    let value = B64.encode(b"postgres\xff1");
    let line = format!(
        r#"{{"result":{{"events":[{{"kv":{{"key":"{}","value":"{value}"}}}}]}}}}"#,
        b64("/db/postgres/leader")
    );
    assert_eq!(
        WatchDecoder::new(PREFIX).feed(format!("{line}\n").as_bytes()),
        Ok(vec![
            Change::Leader {
                leader: Some("postgres\u{fffd}1".into()),
                revision: None
            },
            Change::Progress { revision: 0 }
        ])
    );
}

#[test]
fn a_line_without_end_is_refused_at_the_cap_and_memory_stays_bounded() {
    // 8 MiB without a newline, in 64 KiB chunks, as a hostile or broken gateway would send.
    let chunk = vec![b'x'; 64 << 10];
    let mut d = WatchDecoder::new(PREFIX);
    let mut fed = 0usize;
    let e = loop {
        match d.feed(&chunk) {
            Ok(changes) => assert!(changes.is_empty()),
            Err(e) => break e,
        }
        fed += chunk.len();
        assert!(d.buffered() <= MAX_WATCH_LINE, "{} held", d.buffered());
        assert!(fed <= 8 << 20, "never refused");
    };
    assert_eq!(e.to_string(), "watch message longer than 1 MiB");
    assert_eq!(e.reason(), "oversized");
    assert!(fed <= MAX_WATCH_LINE, "refused only after {fed} bytes");
    assert_eq!(d.buffered(), 0, "the partial line is dropped");
    assert_eq!(d.feed(b"\n"), Err(DcsError::Broken));
}

#[test]
fn the_cap_counts_a_whole_line_whether_it_arrives_at_once_or_in_pieces() {
    let line = progress(1);
    let len = line.len() - 1; // without its newline
    let mut d = WatchDecoder::with_max_line(PREFIX, len);
    assert_eq!(
        d.feed(line.as_bytes()),
        Ok(vec![Change::Progress { revision: 1 }])
    );
    let mut d = WatchDecoder::with_max_line(PREFIX, len - 1);
    assert_eq!(d.feed(line.as_bytes()), Err(DcsError::LineTooLong(len - 1)));
    let mut d = WatchDecoder::with_max_line(PREFIX, len - 1);
    assert_eq!(d.feed(&line.as_bytes()[..len - 1]), Ok(vec![]));
    assert_eq!(d.buffered(), len - 1);
    assert_eq!(
        d.feed(&line.as_bytes()[len - 1..]),
        Err(DcsError::LineTooLong(len - 1))
    );
}

#[test]
fn scheduled_switchovers_are_not_immediate() {
    assert!(is_immediate(Some(
        r#"{"leader":"postgresql0","member":"postgresql1"}"#
    )));
    assert!(!is_immediate(Some(
        r#"{"leader":"postgresql0","scheduled_at":"2026-11-25T22:00:00+00:00"}"#
    )));
    assert!(!is_immediate(None));
}

#[test]
fn a_cleared_failover_key_is_no_request() {
    // Patroni does not delete the key after a switchover: it writes `{}` (seen on the real
    // cluster, tests/e2e/). Read as a request, it left the watch believing a switchover was
    // pending forever, so the next real request changed nothing and went unnoticed.
    assert!(!is_immediate(Some("{}")));
    assert!(!is_immediate(Some("")));
    assert!(!is_immediate(Some(r#"{"leader":"","member":null}"#)));
    assert!(is_immediate(Some(r#"{"member":"postgresql1"}"#)));
    // Patroni's legacy "leader:candidate" form.
    assert!(is_immediate(Some("postgresql0:postgresql1")));
}

/// Splits `bytes` at the given cut points (each taken modulo the length, sorted).
fn split<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    at.sort_unstable();
    let mut parts = Vec::new();
    let mut from = 0;
    for a in at {
        parts.push(&bytes[from..a]);
        from = a;
    }
    parts.push(&bytes[from..]);
    parts
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn feeding_anything_never_panics_and_holds_at_most_the_cap(
        chunks in prop::collection::vec(
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..64),
                // Near-valid input: JSON-ish bytes with line ends.
                "[{}\\[\\]\":,a-z0-9 \n]{0,64}".prop_map(String::into_bytes),
            ],
            0..32,
        ),
        cap in 1usize..128,
    ) {
        let mut d = WatchDecoder::with_max_line(PREFIX, cap);
        for c in &chunks {
            let _ = d.feed(c);
            prop_assert!(d.buffered() <= cap);
        }
    }

    #[test]
    fn a_valid_stream_split_anywhere_gives_the_same_changes(
        cuts in prop::collection::vec(any::<usize>(), 0..24),
    ) {
        let (text, want) = valid_stream();
        let mut d = WatchDecoder::new(PREFIX);
        let mut got = Vec::new();
        for part in split(text.as_bytes(), &cuts) {
            got.extend(d.feed(part).unwrap());
        }
        prop_assert_eq!(got, want);
    }

    #[test]
    fn parse_range_never_panics(body in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_range(&body, PREFIX);
    }
}

// Captured from etcd 3.4.23 through its gateway (`curl -X POST http://127.0.0.25:2379/v3/...`)
// after Patroni-like writes: a leader key with a lease, a cleared failover key.
const REAL_RANGE: &str = r#"{"header":{"cluster_id":"7787459613783441930","member_id":"2402861812076439189","revision":"3","raft_term":"2"},"kvs":[{"key":"L2RiL3Bvc3RncmVzL2ZhaWxvdmVy","create_revision":"3","mod_revision":"3","version":"1","value":"e30="},{"key":"L2RiL3Bvc3RncmVzL2xlYWRlcg==","create_revision":"2","mod_revision":"2","version":"1","value":"cG9zdGdyZXNxbDA=","lease":"7391992716809808648"}],"count":"2"}"#;

#[test]
fn the_leader_keys_lease_is_read_with_it() {
    // Issue 14 item 3: "when reading the leader key, also read its lease's remaining TTL (with
    // the lease id from the key's `lease` field)".
    assert_eq!(
        parse_range(REAL_RANGE.as_bytes(), PREFIX),
        Ok(Keys {
            leader: Some("postgresql0".into()),
            failover: false,
            revision: 3,
            mod_revision: 3,
            leader_lease: Some(7391992716809808648),
        })
    );
    // The lease revoked: the key went with it (captured after /v3/lease/revoke).
    let after = r#"{"header":{"cluster_id":"7787459613783441930","member_id":"2402861812076439189","revision":"4","raft_term":"2"},"kvs":[{"key":"L2RiL3Bvc3RncmVzL2ZhaWxvdmVy","create_revision":"3","mod_revision":"3","version":"1","value":"e30="}],"count":"1"}"#;
    let keys = parse_range(after.as_bytes(), PREFIX).unwrap();
    assert_eq!((keys.leader, keys.leader_lease), (None, None));
}

#[test]
fn a_compacted_or_unauthenticated_watch_keeps_its_endpoint() {
    // Captured from etcd 3.4.23: a watch from a compacted revision, and one with a token etcd
    // does not know. Both are fixed on the same endpoint (a fresh read, a new token); any other
    // failure moves to the next endpoint.
    let compacted = r#"{"result":{"header":{"cluster_id":"7787459613783441930","member_id":"2402861812076439189","raft_term":"2"},"canceled":true,"compact_revision":"4"}}"#;
    let e = WatchDecoder::new(PREFIX)
        .feed(format!("{compacted}\n").as_bytes())
        .unwrap_err();
    assert_eq!(e, DcsError::Compacted(4));
    assert!(e.stays());
    let unauthenticated = r#"{"result":{"header":{"cluster_id":"7787459613783441930","member_id":"2402861812076439189","revision":"4","raft_term":"2"},"watch_id":"-1","created":true,"canceled":true,"cancel_reason":"rpc error: code = Unauthenticated desc = etcdserver: invalid auth token"}}"#;
    let e = WatchDecoder::new(PREFIX)
        .feed(format!("{unauthenticated}\n").as_bytes())
        .unwrap_err();
    assert!(matches!(e, DcsError::Auth(_)), "{e:?}");
    assert!(e.stays());
    assert_eq!(e.reason(), "auth");
    let no_leader = DcsError::Canceled("etcdserver: no leader".into());
    assert!(!no_leader.stays());
    assert!(!DcsError::Closed.stays());
}

#[test]
fn the_shared_clusters_keys_read_as_patroni_wrote_them() {
    // Captured read-only from the shared cluster's etcd (127.0.0.21, etcd 3.4, Patroni 4.1.5,
    // fast profile ttl 20) after two failovers: history and initialize between the two keys, no
    // failover key, the leader key with its lease.
    const SHARED: &str = r#"{"header":{"cluster_id":"13674968475109074175","member_id":"409246840924747667","revision":"136","raft_term":"3"},"kvs":[{"key":"L2RiL3Bvc3RncmVzL2hpc3Rvcnk=","create_revision":"97","mod_revision":"113","version":"2","value":"W1sxLDY3NjA0ODE2LCJubyByZWNvdmVyeSB0YXJnZXQgc3BlY2lmaWVkIiwiMjAyNi0xMi0wMlQxMDowNTo1OS44MTM4MzgrMDA6MDAiLCJwb3N0Z3Jlc3FsMiJdLFsyLDY3NjA2NzkyLCJubyByZWNvdmVyeSB0YXJnZXQgc3BlY2lmaWVkIiwiMjAyNi0xMi0wMlQxMDowOToyOS44MjU4NDUrMDA6MDAiLCJwb3N0Z3Jlc3FsMiJdXQ=="},{"key":"L2RiL3Bvc3RncmVzL2luaXRpYWxpemU=","create_revision":"5","mod_revision":"12","version":"2","value":"NzcxNDY0MjI2NDY4NTEyNDgwOA=="},{"key":"L2RiL3Bvc3RncmVzL2xlYWRlcg==","create_revision":"110","mod_revision":"110","version":"1","value":"cG9zdGdyZXNxbDI=","lease":"4004722847464439045"}],"count":"3"}"#;
    assert_eq!(
        parse_range(SHARED.as_bytes(), PREFIX),
        Ok(Keys {
            leader: Some("postgresql2".into()),
            failover: false,
            revision: 136,
            mod_revision: 113,
            leader_lease: Some(4004722847464439045),
        })
    );
}
