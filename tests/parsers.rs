//! Property tests for every parser that reads bytes from outside: the PostgreSQL startup messages
//! (`pgwire`), Patroni's REST body (`patroni`), the TOML config and `import-haproxy`. They are the
//! `cargo test` counterpart of the fuzz targets in `fuzz/` (docs/testing.md, "Fuzzing"): no panic on
//! arbitrary input, results that stay within the input (nothing framed or read past the bytes
//! given), and on well-formed input built by a strategy, the same verdict as the hand-written cases.
//! Each property runs 256 small cases, so the whole file takes a few seconds.

use std::time::Duration;

use patroni_proxy::config::Config;
use patroni_proxy::health::patroni::PatroniInfo;
use patroni_proxy::import;
use patroni_proxy::pgwire::{self, FirstMessage};
use proptest::prelude::*;

fn bounded() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL wire protocol
// ---------------------------------------------------------------------------------------------

/// A typed message: type byte, big-endian length (itself included), body.
fn typed(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![kind];
    m.extend_from_slice(&u32::try_from(body.len() + 4).unwrap().to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// Frames `buf` the way the session's startup inspection does; every frame must lie inside `buf`.
fn frame_all(buf: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while let Ok(Some((_, len))) = pgwire::frame(&buf[at..]) {
        assert!(
            (5..=buf.len() - at).contains(&len),
            "framed {len} of {}",
            buf.len() - at
        );
        out.push(&buf[at..at + len]);
        at += len;
    }
    (out, at)
}

/// A NUL-free C string of PostgreSQL's startup parameters and fields.
fn cstr() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(1u8..=255, 0..24)
}

#[derive(Debug, Clone)]
enum First {
    Ssl,
    GssEnc,
    Cancel(u32, u32),
    Startup(u16, Vec<(Vec<u8>, Vec<u8>)>),
}

fn first_message() -> impl Strategy<Value = First> {
    prop_oneof![
        Just(First::Ssl),
        Just(First::GssEnc),
        (any::<u32>(), any::<u32>()).prop_map(|(p, k)| First::Cancel(p, k)),
        (any::<u16>(), prop::collection::vec((cstr(), cstr()), 0..8))
            .prop_map(|(minor, params)| First::Startup(minor, params)),
    ]
}

/// The bytes of a first message and what `classify` must call it.
fn encode_first(m: &First) -> (Vec<u8>, FirstMessage) {
    let untyped = |code: u32, rest: &[u8]| {
        let mut b = u32::try_from(8 + rest.len())
            .unwrap()
            .to_be_bytes()
            .to_vec();
        b.extend_from_slice(&code.to_be_bytes());
        b.extend_from_slice(rest);
        b
    };
    match m {
        First::Ssl => (untyped(80_877_103, &[]), FirstMessage::SslRequest),
        First::GssEnc => (untyped(80_877_104, &[]), FirstMessage::GssEncRequest),
        First::Cancel(pid, key) => {
            let mut rest = pid.to_be_bytes().to_vec();
            rest.extend_from_slice(&key.to_be_bytes());
            (untyped(80_877_102, &rest), FirstMessage::CancelRequest)
        }
        First::Startup(minor, params) => {
            let mut rest = Vec::new();
            for (k, v) in params {
                rest.extend_from_slice(k);
                rest.push(0);
                rest.extend_from_slice(v);
                rest.push(0);
            }
            rest.push(0);
            let b = untyped(3 << 16 | u32::from(*minor), &rest);
            let len = b.len();
            (b, FirstMessage::Startup { len })
        }
    }
}

proptest! {
    #![proptest_config(bounded())]

    #[test]
    fn pgwire_never_panics_nor_reads_past_the_buffer(buf in prop::collection::vec(any::<u8>(), 0..512)) {
        if let FirstMessage::Startup { len } = pgwire::classify(&buf) {
            prop_assert!((9..=pgwire::MAX_STARTUP).contains(&len));
        }
        if let Some(code) = pgwire::sqlstate(&buf) {
            prop_assert!(code.len() < buf.len());
        }
        if let Some((name, value)) = pgwire::parameter_status(&buf) {
            prop_assert!(name.len() + value.len() < buf.len());
        }
        for msg in frame_all(&buf).0 {
            let _ = pgwire::sqlstate(msg);
            let _ = pgwire::parameter_status(msg);
        }
    }

    #[test]
    fn classify_names_every_well_formed_first_message(
        m in first_message(),
        tail in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let (mut bytes, expected) = encode_first(&m);
        // Only the header decides; what follows (the next message, pipelined) changes nothing.
        bytes.extend_from_slice(&tail);
        prop_assert_eq!(pgwire::classify(&bytes), expected);
        for cut in 0..8 {
            prop_assert_eq!(pgwire::classify(&bytes[..cut]), FirstMessage::Incomplete);
        }
    }

    #[test]
    fn frame_recovers_exactly_the_messages_sent_at_any_split(
        msgs in prop::collection::vec((any::<u8>(), prop::collection::vec(any::<u8>(), 0..64)), 0..8),
        split in any::<prop::sample::Index>(),
    ) {
        let sent: Vec<Vec<u8>> = msgs.iter().map(|(k, b)| typed(*k, b)).collect();
        let stream = sent.concat();
        // Two reads cut anywhere: frame what has arrived, keep the rest, as startup() does.
        let cut = split.index(stream.len() + 1);
        let mut buf = stream[..cut].to_vec();
        let (first, used) = frame_all(&buf);
        let mut got: Vec<Vec<u8>> = first.into_iter().map(<[u8]>::to_vec).collect();
        buf.drain(..used);
        buf.extend_from_slice(&stream[cut..]);
        let (rest, used) = frame_all(&buf);
        got.extend(rest.into_iter().map(<[u8]>::to_vec));
        prop_assert_eq!(used, buf.len(), "nothing left over once everything has arrived");
        prop_assert_eq!(got, sent);
    }

    #[test]
    fn sqlstate_and_parameter_status_read_what_was_written(
        code in "[0-9A-Z]{5}",
        message in "[^\0]{0,40}",
        name in cstr(),
        value in cstr(),
    ) {
        let e = pgwire::error_response(&code, &message);
        prop_assert_eq!(pgwire::frame(&e), Ok(Some((b'E', e.len()))));
        prop_assert_eq!(pgwire::frame(&e[..e.len() - 1]), Ok(None), "one byte short");
        prop_assert_eq!(pgwire::sqlstate(&e), Some(code.as_str()));
        let mut body = name.clone();
        body.push(0);
        body.extend_from_slice(&value);
        body.push(0);
        let s = typed(b'S', &body);
        prop_assert_eq!(pgwire::parameter_status(&s), Some((&name[..], &value[..])));
    }
}

// ---------------------------------------------------------------------------------------------
// Patroni's REST body
// ---------------------------------------------------------------------------------------------

fn role() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("master".to_string()),
        Just("primary".to_string()),
        Just("replica".to_string()),
        Just("standby_leader".to_string()),
        Just("demoted".to_string()),
        "\\PC{0,12}",
    ]
}

proptest! {
    #![proptest_config(bounded())]

    #[test]
    fn patroni_body_never_panics(body in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = PatroniInfo::parse(&body);
    }

    #[test]
    fn patroni_body_near_json_never_panics(body in "[{}\\[\\]\":,0-9a-z \\\\.eE+-]{0,128}") {
        let _ = PatroniInfo::parse(body.as_bytes());
    }

    #[test]
    fn patroni_fields_round_trip_and_master_reads_primary(
        role in prop::option::of(role()),
        state in prop::option::of("[a-z ]{0,16}"),
        timeline in prop::option::of(any::<u64>()),
        extra in prop::collection::btree_map("[a-z_]{1,12}", any::<i64>(), 0..4),
    ) {
        let mut obj = serde_json::Map::new();
        for (k, v) in &extra {
            obj.insert(k.clone(), (*v).into());
        }
        if let Some(r) = &role {
            obj.insert("role".into(), r.clone().into());
        }
        if let Some(s) = &state {
            obj.insert("state".into(), s.clone().into());
        }
        if let Some(t) = timeline {
            obj.insert("timeline".into(), t.into());
        }
        let body = serde_json::to_vec(&serde_json::Value::Object(obj)).unwrap();
        let info = PatroniInfo::parse(&body).expect("a JSON object parses");
        let expected_role = role.map(|r| if r == "master" { "primary".to_string() } else { r });
        prop_assert_eq!(info.role, expected_role);
        prop_assert_eq!(info.state, state);
        prop_assert_eq!(info.timeline, timeline);
    }
}

// ---------------------------------------------------------------------------------------------
// The TOML config
// ---------------------------------------------------------------------------------------------

/// Lines of a config file mixing valid keys, bad values and TOML noise.
fn toml_line() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "maxconn",
        "threads",
        "shutdown_grace",
        "bind",
        "retries",
        "timeout_connect",
        "timeout_client",
        "hold_timeout",
        "inter",
        "fastinter",
        "rise",
        "fall",
        "timeout",
        "expect_status",
        "port",
        "method",
        "uri",
        "auth",
        "name",
        "address",
        "endpoints",
        "scope",
    ]);
    let value = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (
            0u64..=u64::MAX,
            prop::sample::select(vec!["ns", "ms", "s", "m", "h", "d", "y", "x"])
        )
            .prop_map(|(n, u)| format!("\"{n}{u}\"")),
        Just("\"1e19s\"".to_string()),
        Just("\"*:5000\"".to_string()),
        Just("\"127.0.0.1:0\"".to_string()),
        Just("[\"127.0.0.21:2379\"]".to_string()),
        "\"\\PC{0,12}\"",
        "\\PC{0,8}",
    ];
    let header = prop::sample::select(vec![
        "[global]",
        "[listen]",
        "[check]",
        "[stats]",
        "[etcd]",
        "[[server]]",
        "[x]",
    ]);
    prop_oneof![
        (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
        header.prop_map(str::to_string),
        "\\PC{0,16}",
    ]
}

proptest! {
    #![proptest_config(bounded())]

    #[test]
    fn config_never_panics_on_any_text(text in "\\PC{0,256}") {
        let _ = Config::from_toml(&text);
    }

    #[test]
    fn config_never_panics_on_config_like_text(lines in prop::collection::vec(toml_line(), 0..16)) {
        let text = lines.join("\n");
        let _ = Config::from_toml(&text);
    }

    #[test]
    fn config_reads_back_what_it_writes(
        // `check.inter`'s accepted range starts at 10 ms (config::limits).
        inter_ms in 10u64..=60_000,
        rise in 1u32..=10,
        fall in 1u32..=10,
        servers in 1usize..=5,
    ) {
        let mut text = format!("[check]\ninter = \"{inter_ms}ms\"\nrise = {rise}\nfall = {fall}\n");
        for i in 0..servers {
            text.push_str(&format!("[[server]]\nname = \"n{i}\"\naddress = \"127.0.0.{}:5432\"\n", i + 1));
        }
        let c = Config::from_toml(&text).expect("a plain valid config");
        prop_assert_eq!(c.check.inter, Duration::from_millis(inter_ms));
        prop_assert_eq!((c.check.rise.get(), c.check.fall.get()), (rise, fall));
        prop_assert_eq!(c.servers.len(), servers);
        let written = toml::to_string(&c.to_file()).unwrap();
        prop_assert_eq!(Config::from_toml(&written).expect("its own output loads"), c);
    }
}

// ---------------------------------------------------------------------------------------------
// import-haproxy
// ---------------------------------------------------------------------------------------------

/// Durations as HAProxy writes them. Numbers stay small here: large ones are the regression tests
/// below (they overflowed).
fn haproxy_time() -> impl Strategy<Value = String> {
    (
        1u64..=100_000,
        prop::sample::select(vec!["", "us", "ms", "s", "m", "h", "d"]),
    )
        .prop_map(|(n, u)| format!("{n}{u}"))
}

/// One directive line of a small HAProxy grammar: the template's directives with generated values,
/// misspelt ones and noise.
fn haproxy_line() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "global",
            "defaults",
            "listen postgres",
            "listen stats"
        ])
        .prop_map(str::to_string),
        (1u32..=1000).prop_map(|n| format!("    maxconn {n}")),
        (0u32..=10).prop_map(|n| format!("    retries {n}")),
        (
            prop::sample::select(vec![
                "client", "server", "connect", "check", "queue", "tunnel"
            ]),
            haproxy_time()
        )
            .prop_map(|(w, t)| format!("    timeout {w} {t}")),
        Just("    mode tcp".to_string()),
        Just("    mode http".to_string()),
        Just("    bind *:5000".to_string()),
        Just("    option httpchk".to_string()),
        Just("    option httpchk OPTIONS /master".to_string()),
        (100u16..=599).prop_map(|s| format!("    http-check expect status {s}")),
        (haproxy_time(), 1u32..=5, 1u32..=5).prop_map(|(t, r, f)| format!(
            "    default-server inter {t} fall {f} rise {r} on-marked-down shutdown-sessions"
        )),
        (1u8..=254, 1u16..=65535).prop_map(|(h, p)| format!(
            "    server pg{h} 127.0.0.{h}:5432 maxconn 100 check port {p}"
        )),
        Just("    stats enable".to_string()),
        Just("    stats uri /".to_string()),
        "    \\PC{0,24}",
        "[a-z -]{0,24}",
    ]
}

/// The shape of Patroni's haproxy.cfg template (tests/config/seed-haproxy.cfg, on loopback).
const TEMPLATE: &str = "global
    maxconn 100
defaults
    mode tcp
    retries 2
    timeout client 30m
    timeout connect 4s
    timeout server 30m
    timeout check 5s
listen stats
    mode http
    bind *:7000
    stats enable
    stats uri /
listen postgres
    bind *:5000
    option httpchk
    http-check expect status 200
    default-server inter 3s fall 3 rise 2 on-marked-down shutdown-sessions
    server pg1 127.0.0.11:5432 maxconn 100 check port 8008
    server pg2 127.0.0.12:5432 maxconn 100 check port 8008
";

proptest! {
    #![proptest_config(bounded())]

    #[test]
    fn import_never_panics_on_any_text(text in "\\PC{0,256}") {
        let _ = import::import(&text);
    }

    #[test]
    fn import_of_haproxy_like_text_never_panics_and_writes_a_loadable_toml(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<bool>(), haproxy_line()), 0..6),
    ) {
        // The Patroni template with lines replaced or inserted: near enough to import often.
        let mut lines: Vec<String> = TEMPLATE.lines().map(str::to_string).collect();
        for (at, replace, line) in edits {
            let i = at.index(lines.len());
            if replace {
                lines[i] = line;
            } else {
                lines.insert(i, line);
            }
        }
        let text = lines.join("\n");
        if let Ok(i) = import::convert(&text, &|_| None) {
            let toml = import::to_toml(&i.file, &i.notes, "generated.cfg");
            let back: patroni_proxy::config::FileConfig = toml::from_str(&toml).expect("TOML");
            prop_assert_eq!(&back, &i.file);
            if let Ok(c) = import::import(&text) {
                prop_assert_eq!(Config::from_toml(&toml).expect("import writes what check accepts"), c);
            }
        }
    }

    #[test]
    fn import_carries_over_the_template_values(
        maxconn in 1u32..=1000,
        retries in 0u32..=10,
        connect_s in 1u64..=60,
        inter_ms in 100u64..=10_000,
        rise in 1u32..=5,
        fall in 1u32..=5,
        servers in 1u8..=5,
    ) {
        let mut text = format!(
            "global\n    maxconn {maxconn}\ndefaults\n    mode tcp\n    retries {retries}\n    \
             timeout connect {connect_s}s\nlisten postgres\n    bind *:5000\n    option httpchk\n    \
             http-check expect status 200\n    default-server inter {inter_ms}ms fall {fall} rise {rise}\n"
        );
        for h in 1..=servers {
            text.push_str(&format!("    server pg{h} 127.0.0.{h}:5432 maxconn 100 check port 8008\n"));
        }
        let c = import::import(&text).expect("the template's shape imports");
        prop_assert_eq!(c.global.maxconn.get(), maxconn);
        prop_assert_eq!(c.listen.retries, retries);
        prop_assert_eq!(c.listen.timeout_connect, Duration::from_secs(connect_s));
        prop_assert_eq!(c.check.inter, Duration::from_millis(inter_ms));
        prop_assert_eq!((c.check.rise.get(), c.check.fall.get()), (rise, fall));
        prop_assert_eq!(c.servers.len(), usize::from(servers));
    }
}

// ---------------------------------------------------------------------------------------------
// Crashes found by the fuzz targets, with their exact (minimised) bytes
// ---------------------------------------------------------------------------------------------

/// `import` target, 10-minute run (after 3.1 M executions): a time in minutes above `u64::MAX / 60`
/// overflowed `n * 60` in `haproxy_duration` (a panic with overflow checks, a silently wrapped
/// timeout without: hardening issue item 12). It must be an error naming the line.
#[test]
fn fuzz_import_a_time_in_minutes_past_u64_is_an_error() {
    let text = "global\n  \n\ndefaults\n    log global\n   mode tcp\n    timeout t 4888888888888888888m 888\0rver";
    let e = import::import(text).expect_err("an impossible duration");
    assert_eq!(e.line, 7, "{e}");
    assert!(e.directive.starts_with("timeout"), "{e}");
}

proptest! {
    #![proptest_config(bounded())]

    /// The same class as the crash above, over every unit and the whole `u64` range.
    #[test]
    fn import_times_of_any_size_are_a_duration_or_an_error(
        n in any::<u64>(),
        unit in prop::sample::select(vec!["", "us", "ms", "s", "m", "h", "d"]),
        directive in prop::sample::select(vec!["timeout connect", "timeout check", "default-server inter"]),
    ) {
        let text = match directive {
            "default-server inter" => TEMPLATE.replacen(
                "default-server inter 3s",
                &format!("default-server inter {n}{unit}"),
                1,
            ),
            _ => TEMPLATE.replacen("timeout check 5s", &format!("{directive} {n}{unit}"), 1),
        };
        let _ = import::import(&text);
    }
}
