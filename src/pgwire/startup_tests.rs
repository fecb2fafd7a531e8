//! The startup inspector against real PostgreSQL 15 conversations (`tests/fixtures/pg15/`, with how
//! each was captured), each test quoting the rule of `startup.rs` it checks, and against arbitrary
//! bytes (property tests: it never panics and never passes on more than it was given).

use super::*;
use proptest::prelude::*;

macro_rules! capture {
    ($name:literal) => {
        include_str!(concat!("../../tests/fixtures/pg15/", $name, ".txt"))
    };
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Client(Vec<u8>),
    Server(Vec<u8>),
    Close,
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// A capture's conversation: `> hex` the client wrote, `< hex` the server's reads, `.` its close.
fn transcript(text: &str) -> Vec<Event> {
    text.lines()
        .filter_map(|l| match l.split_once(' ') {
            Some((">", h)) => Some(Event::Client(hex(h))),
            Some(("<", h)) => Some(Event::Server(hex(h))),
            _ if l == "." => Some(Event::Close),
            _ => None,
        })
        .collect()
}

/// Everything the server sent in a capture.
fn server_bytes(text: &str) -> Vec<u8> {
    transcript(text)
        .into_iter()
        .filter_map(|e| match e {
            Event::Server(b) => Some(b),
            _ => None,
        })
        .flatten()
        .collect()
}

/// The complete messages in `bytes`.
fn messages(mut bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Ok(Some((_, len))) = frame(bytes) {
        out.push(&bytes[..len]);
        bytes = &bytes[len..];
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// A verdict other than `Inspect`.
    Then(Then),
    Closed(Closed),
    /// The capture ended while the inspector still inspects.
    Open,
}

#[derive(Debug)]
struct Outcome {
    to_server: Vec<u8>,
    to_client: Vec<u8>,
    /// Writes to the client: one per server read that had something to pass on.
    client_writes: usize,
    end: End,
    /// What a replay would send, and whether one is still allowed.
    pending: Vec<u8>,
    committed: bool,
}

/// Plays a capture through the inspector the way `proxy::startup` drives it: the client's first
/// write arrives during a hold (in `Pending` before the attempt starts), and each server read is
/// fed whole, or cut in `pieces` as a slower network would deliver it.
fn play(events: &[Event], pieces: usize) -> Outcome {
    let mut pending = Pending::default();
    let mut events = events.iter();
    let mut rest = events.clone();
    if let Some(Event::Client(first)) = rest.next() {
        pending.push(first);
        events = rest;
    }
    let (mut to_server, mut to_client, mut client_writes) = (Vec::new(), Vec::new(), 0);
    let mut insp = Inspector::new(&mut pending);
    let v = insp.start();
    to_server.extend_from_slice(v.pass);
    let mut end = match v.then {
        Then::Inspect => End::Open,
        t => End::Then(t),
    };
    for e in events {
        if end != End::Open {
            break;
        }
        match e {
            Event::Client(b) => {
                to_server.extend_from_slice(b);
                if let t @ (Then::Relay | Then::Replay(_) | Then::Standby) = insp.client(b) {
                    end = End::Then(t);
                }
            }
            Event::Server(b) => {
                let size = b.len().div_ceil(pieces.max(1)).max(1);
                for (i, piece) in b.chunks(size).enumerate() {
                    let v = insp.server(piece);
                    if !v.pass.is_empty() {
                        to_client.extend_from_slice(v.pass);
                        client_writes += 1;
                    }
                    match v.then {
                        Then::Inspect => insp.passed_on(),
                        t => {
                            if t == Then::Relay {
                                // The rest of this read goes by the relay.
                                to_client.extend_from_slice(&b[(i + 1) * size..]);
                            }
                            end = End::Then(t);
                            break;
                        }
                    }
                }
            }
            Event::Close => end = End::Closed(insp.server_closed()),
        }
    }
    drop(insp);
    Outcome {
        to_server,
        to_client,
        client_writes,
        end,
        pending: pending.bytes().to_vec(),
        committed: pending.is_committed(),
    }
}

/// Plays a capture whole and byte by byte: the verdicts must not depend on how TCP cut it.
fn play_all_ways(text: &str) -> Outcome {
    let events = transcript(text);
    let whole = play(&events, 1);
    let bytewise = play(&events, usize::MAX);
    assert_eq!(
        whole.end, bytewise.end,
        "same verdict however the reads are cut"
    );
    assert_eq!(whole.to_client, bytewise.to_client, "same bytes passed on");
    assert_eq!(
        (whole.committed, &whole.pending),
        (bytewise.committed, &bytewise.pending)
    );
    whole
}

fn startup_message(text: &str) -> Vec<u8> {
    match transcript(text).into_iter().next() {
        Some(Event::Client(b)) => b,
        other => panic!("a capture starts with the client: {other:?}"),
    }
}

#[test]
fn ready_for_query_ends_the_inspection_in_one_write() {
    // "ReadyForQuery ... relay from here"; "all the complete ones read so far are passed on in one
    // write"; trust authentication with in_hot_standby = off is no refusal.
    let o = play_all_ways(capture!("trust_ok"));
    assert_eq!(o.end, End::Then(Then::Relay));
    assert_eq!(o.to_client, server_bytes(capture!("trust_ok")));
    assert_eq!(o.client_writes, 1, "the captured reply came in one read");
    assert_eq!(messages(&o.to_client).len(), 16, "R, 13 S, K, Z");
    assert!((o.committed, o.pending.is_empty()) == (true, true));
}

#[test]
fn a_standby_is_refused_after_what_came_before_its_in_hot_standby() {
    // "`in_hot_standby = on`: refuse, the server is a standby"; "the messages before the verdict,
    // exactly what a write per message would have sent". A real hot standby (pg_basebackup -R).
    let o = play_all_ways(capture!("standby_ok"));
    assert_eq!(o.end, End::Then(Then::Standby));
    let reply = server_bytes(capture!("standby_ok"));
    let msgs = messages(&reply);
    let at = msgs
        .iter()
        .position(|m| parameter_status(m) == Some((b"in_hot_standby", b"on")))
        .expect("PostgreSQL 15 reports in_hot_standby at startup");
    assert_eq!(o.to_client, msgs[..at].concat());
    assert!(
        o.committed,
        "AuthenticationOk came first: nothing to replay"
    );
}

#[test]
fn scram_commits_at_the_first_authentication_message() {
    // "The first Authentication message commits the client to this server: nothing is replayed
    // after." Each SASL step is passed on as it comes; the client's answers are not kept.
    let events = transcript(capture!("scram_ok"));
    let o = play_all_ways(capture!("scram_ok"));
    assert_eq!(o.end, End::Then(Then::Relay));
    assert_eq!(o.to_client, server_bytes(capture!("scram_ok")));
    assert_eq!(o.client_writes, 3);
    assert!(o.committed && o.pending.is_empty());
    let sent: Vec<u8> = events
        .iter()
        .filter_map(|e| match e {
            Event::Client(b) => Some(b.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(o.to_server, sent, "every client byte goes to the server");

    // Before the first answer, the StartupMessage is kept for a replay.
    let mut pending = Pending::default();
    pending.push(&startup_message(capture!("scram_ok")));
    let mut insp = Inspector::new(&mut pending);
    assert_eq!(insp.start().then, Then::Inspect);
    assert_eq!(insp.server_closed(), Closed::Vanished);
    let Some(Event::Server(sasl)) = events.get(1) else {
        panic!("AuthenticationSASL")
    };
    assert_eq!(insp.server(sasl).then, Then::Inspect);
    insp.passed_on();
    assert_eq!(insp.server_closed(), Closed::Aborted);
    drop(insp);
    assert!(pending.is_committed() && pending.bytes().is_empty());
}

#[test]
fn the_servers_own_refusals_are_passed_on_not_replayed() {
    // "Any other ErrorResponse is the server's answer to this client: passed on, and the session
    // ends by itself." A wrong password (28P01 after SASL), a pg_hba reject (28000 as the first
    // answer), a missing database (3D000 after AuthenticationOk).
    for text in [
        capture!("scram_wrong_password"),
        capture!("hba_reject"),
        capture!("no_database"),
    ] {
        let o = play_all_ways(text);
        assert_eq!(
            o.end,
            End::Then(Then::Relay),
            "{}",
            text.lines().nth(1).unwrap()
        );
        assert_eq!(o.to_client, server_bytes(text));
        assert!(o.committed, "never replayed");
    }
}

#[test]
fn cannot_connect_now_before_authentication_is_replayed() {
    // "57P01/57P02/57P03 before any Authentication message: the server is leaving, replay
    // elsewhere." Nothing reached the client, and the StartupMessage is still there to replay.
    for text in [capture!("shutting_down"), capture!("starting_up")] {
        let o = play_all_ways(text);
        assert_eq!(o.end, End::Then(Then::Replay(Leaving::CannotConnectNow)));
        assert!(o.to_client.is_empty());
        assert!(!o.committed);
        assert_eq!(o.pending, startup_message(text));
    }
}

/// The FATAL 57P01 of `pg_terminate_backend()` on an established session (PostgreSQL 15 sends
/// nothing at all to a client still authenticating, see `scram_fast_shutdown`).
fn admin_shutdown() -> Vec<u8> {
    let reply = server_bytes(capture!("terminated"));
    let msgs = messages(&reply);
    let e = msgs.last().expect("the FATAL");
    assert_eq!(sqlstate(e), Some("57P01"));
    e.to_vec()
}

/// Plays `trust_ok`'s StartupMessage against a made-up answer.
fn answer(reply: &[u8]) -> Outcome {
    let events = [
        Event::Client(startup_message(capture!("trust_ok"))),
        Event::Server(reply.to_vec()),
    ];
    let whole = play(&events, 1);
    let bytewise = play(&events, usize::MAX);
    assert_eq!(
        (whole.end, &whole.to_client),
        (bytewise.end, &bytewise.to_client)
    );
    whole
}

#[test]
fn admin_and_crash_shutdown_before_authentication_are_replayed() {
    // "57P01/57P02/57P03 before any Authentication message". The captured 57P01 FATAL, fed as a
    // first answer; 57P02 is that message with its code changed (PostgreSQL 15 never sends 57P02
    // as an ErrorResponse, only as a WARNING: see `crash_notice`).
    let e = admin_shutdown();
    assert_eq!(
        answer(&e).end,
        End::Then(Then::Replay(Leaving::AdminShutdown))
    );
    let crash = String::from_utf8_lossy(&e)
        .replace("C57P01", "C57P02")
        .into_bytes();
    assert_eq!(crash.len(), e.len());
    let o = answer(&crash);
    assert_eq!(o.end, End::Then(Then::Replay(Leaving::CrashShutdown)));
    assert!(o.to_client.is_empty() && !o.committed);
}

#[test]
fn leaving_after_authentication_began_is_the_clients_answer() {
    // "57P01/57P02/57P03 before any Authentication message" -- and only then: an AuthenticationOk
    // (captured) then the captured 57P01 FATAL, in one read, is passed on whole.
    let ok = messages(&server_bytes(capture!("trust_ok")))[0].to_vec();
    let reply = [ok, admin_shutdown()].concat();
    let o = answer(&reply);
    assert_eq!(o.end, End::Then(Then::Relay));
    assert_eq!(o.to_client, reply);
    assert!(o.committed);
}

#[test]
fn what_came_before_a_leaving_server_is_passed_on_first() {
    // "the messages before the verdict, exactly what a write per message would have sent": a
    // NoticeResponse (captured) then a 57P03 FATAL (captured) in one read.
    let notice = server_bytes(capture!("immediate_notice"));
    let notice = messages(&notice).last().expect("notice").to_vec();
    let fatal = server_bytes(capture!("shutting_down"));
    let o = answer(&[notice.clone(), fatal].concat());
    assert_eq!(o.end, End::Then(Then::Replay(Leaving::CannotConnectNow)));
    assert_eq!(o.to_client, notice);
}

#[test]
fn a_warning_then_a_close_is_an_answer_not_a_vanished_server() {
    // "A close before any byte of an answer to the StartupMessage is a server that vanished; after
    // one, it is that server's answer to this client." The WARNING 57P01/57P02 a backend sends as
    // it is killed (immediate shutdown, a crash elsewhere) is a NoticeResponse, not a verdict.
    for text in [capture!("immediate_notice"), capture!("crash_notice")] {
        let reply = server_bytes(text);
        let notice = messages(&reply).last().expect("notice").to_vec();
        let events = [
            Event::Client(startup_message(text)),
            Event::Server(notice.clone()),
            Event::Close,
        ];
        let o = play(&events, 1);
        assert_eq!(o.end, End::Closed(Closed::Aborted));
        assert_eq!(o.to_client, notice, "passed on as it came");
    }
}

#[test]
fn a_close_mid_authentication_is_not_a_vanished_server() {
    // "after one [byte of an answer], it is that server's answer to this client": PostgreSQL 15
    // stopped with -m fast while SCRAM waits for the client closes without a word.
    let o = play_all_ways(capture!("scram_fast_shutdown"));
    assert_eq!(o.end, End::Closed(Closed::Aborted));
    assert!(o.committed);
}

#[test]
fn a_close_before_any_answer_is_a_vanished_server() {
    // "A close before any byte of an answer to the StartupMessage is a server that vanished
    // (replay)" -- and before the StartupMessage, or during a negotiation, it is not.
    let startup = startup_message(capture!("trust_ok"));
    let o = play(&[Event::Client(startup.clone()), Event::Close], 1);
    assert_eq!(o.end, End::Closed(Closed::Vanished));
    assert_eq!((o.pending, o.committed), (startup.clone(), false));
    let half = play(&[Event::Client(startup[..9].to_vec()), Event::Close], 1);
    assert_eq!(half.end, End::Closed(Closed::Aborted));
    let ssl = startup_message(capture!("ssl_refused"));
    let negotiating = play(&[Event::Client(ssl), Event::Close], 1);
    assert_eq!(negotiating.end, End::Closed(Closed::Aborted));
    // A partial first message is already an answer.
    let reply = server_bytes(capture!("trust_ok"));
    let cut = play(
        &[
            Event::Client(startup),
            Event::Server(reply[..3].to_vec()),
            Event::Close,
        ],
        1,
    );
    assert_eq!(cut.end, End::Closed(Closed::Aborted));
    assert!(cut.to_client.is_empty());
}

#[test]
fn a_declined_encryption_request_is_passed_on_and_startup_follows() {
    // "A lone `N` declines encryption: passed on, and the StartupMessage follows in clear." To an
    // SSLRequest (ssl = off) and to a GSSENCRequest (where PostgreSQL does not offer GSS).
    for text in [capture!("ssl_refused"), capture!("gssenc_refused")] {
        let o = play_all_ways(text);
        assert_eq!(o.end, End::Then(Then::Relay));
        assert_eq!(o.to_client, server_bytes(text));
        assert_eq!(o.to_client[0], b'N');
        assert_eq!(o.client_writes, 2, "the N, then the whole startup answer");
    }
}

#[test]
fn after_a_declined_request_only_the_startup_message_is_replayable() {
    // What a replay sends after the `N` is the StartupMessage alone: the next server must not be
    // asked for encryption again, the client already has its answer.
    let events = transcript(capture!("ssl_refused"));
    let (Event::Client(request), Event::Server(n), Event::Client(startup)) =
        (&events[0], &events[1], &events[2])
    else {
        panic!("SSLRequest, N, StartupMessage");
    };
    let mut pending = Pending::default();
    pending.push(request);
    let mut insp = Inspector::new(&mut pending);
    assert_eq!(insp.start().then, Then::Inspect);
    let v = insp.server(n);
    assert_eq!((v.pass, v.then), (&b"N"[..], Then::Inspect));
    insp.passed_on();
    assert_eq!(insp.server_closed(), Closed::Aborted, "not a replay yet");
    assert_eq!(insp.client(startup), Then::Inspect);
    assert_eq!(insp.server_closed(), Closed::Vanished);
    drop(insp);
    assert_eq!(pending.bytes(), &startup[..]);
    assert!(!pending.is_committed());
}

#[test]
fn accepted_encryption_is_relayed_from_there() {
    // "Any other answer (`S`, `G`, ...) starts TLS or GSS: relayed from there on." `S` with a
    // self-signed certificate; `G`, which Debian's GSSAPI build answers over TCP.
    for (text, byte) in [(capture!("ssl_accepted"), b'S'), (capture!("gssenc"), b'G')] {
        let o = play_all_ways(text);
        assert_eq!(o.end, End::Then(Then::Relay));
        assert_eq!(o.to_client, [byte]);
        assert!(o.committed);
    }
}

#[test]
fn a_cancel_request_is_relayed_as_it_is() {
    // "a CancelRequest or anything that is not PostgreSQL is relayed as it is": PostgreSQL answers
    // it with nothing, and closes.
    let o = play_all_ways(capture!("cancel"));
    assert_eq!(o.end, End::Then(Then::Relay));
    assert_eq!(o.to_server, startup_message(capture!("cancel")));
    // Arriving in two pieces after the attempt started, it is relayed once it is recognised.
    let cancel = startup_message(capture!("cancel"));
    let mut pending = Pending::default();
    let mut insp = Inspector::new(&mut pending);
    assert_eq!(
        insp.start(),
        Verdict {
            pass: &[],
            then: Then::Inspect
        }
    );
    assert_eq!(insp.client(&cancel[..4]), Then::Inspect);
    assert_eq!(insp.client(&cancel[4..]), Then::Relay);
    assert_eq!(insp.client(b"more"), Then::Relay, "opaque from there");
}

#[test]
fn what_is_not_postgres_is_relayed() {
    // "bytes that are not PostgreSQL: relay from here" -- a client that is not PostgreSQL, a
    // server that speaks first, and a message with an impossible length.
    let o = play(&[Event::Client(b"GET / HTTP/1.1\r\n\r\n".to_vec())], 1);
    assert_eq!(o.end, End::Then(Then::Relay));
    let banner = play(&[Event::Server(b"SSH-2.0-OpenSSH\r\n".to_vec())], 1);
    assert_eq!(banner.end, End::Then(Then::Relay));
    assert_eq!(banner.to_client, b"SSH-2.0-OpenSSH\r\n");
    let mut reply = messages(&server_bytes(capture!("trust_ok")))[0].to_vec();
    reply.extend_from_slice(&[b'S', 0xff, 0xff, 0xff, 0xff, 0]);
    let o = answer(&reply);
    assert_eq!(o.end, End::Then(Then::Relay));
    assert_eq!(o.to_client, reply, "passed on whole, as the relay would");
}

#[test]
fn a_refusal_declines_encryption_then_answers_a_complete_startup() {
    // `proxy::hold` answers a client it cannot serve with an ErrorResponse of its own.
    let request = startup_message(capture!("ssl_refused"));
    let startup = startup_message(capture!("trust_ok"));
    let mut p = Pending::default();
    assert_eq!(p.refusal(), Refusal::NeedMore);
    p.push(&request);
    assert_eq!(p.refusal(), Refusal::Decline);
    p.push(&startup[..20]);
    p.decline();
    assert_eq!((p.refusal(), p.wants_more()), (Refusal::NeedMore, true));
    p.push(&startup[20..]);
    assert_eq!((p.refusal(), p.wants_more()), (Refusal::Answer, false));
    let mut cancel = Pending::default();
    cancel.push(&startup_message(capture!("cancel")));
    assert_eq!(cancel.refusal(), Refusal::Close);
}

/// Bounded: the inspector is cheap, but `cargo test` runs these on every change.
fn bounded() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(bounded())]

    #[test]
    fn never_panics_and_passes_on_only_what_it_was_given(
        first in prop::collection::vec(any::<u8>(), 0..64),
        steps in prop::collection::vec((any::<bool>(), prop::collection::vec(any::<u8>(), 0..96)), 0..12),
        real_start in any::<bool>(),
    ) {
        let mut pending = Pending::default();
        if real_start {
            pending.push(&startup_message(capture!("trust_ok")));
        }
        pending.push(&first);
        let mut insp = Inspector::new(&mut pending);
        let _ = insp.start();
        let (mut given, mut passed) = (0usize, 0usize);
        for (from_client, bytes) in &steps {
            if *from_client {
                let _ = insp.client(bytes);
            } else {
                given += bytes.len();
                let v = insp.server(bytes);
                passed += v.pass.len();
                prop_assert!(passed <= given, "passed on {passed} of {given}");
                insp.passed_on();
            }
            let _ = insp.server_closed();
        }
    }

    #[test]
    fn any_cut_of_a_real_reply_gives_the_same_verdict(cuts in prop::collection::vec(1usize..64, 1..40)) {
        let reply = server_bytes(capture!("standby_ok"));
        let mut pending = Pending::default();
        pending.push(&startup_message(capture!("standby_ok")));
        let mut insp = Inspector::new(&mut pending);
        let _ = insp.start();
        let (mut at, mut to_client, mut then) = (0, Vec::new(), Then::Inspect);
        for cut in cuts.iter().cycle() {
            if at >= reply.len() || then != Then::Inspect {
                break;
            }
            let end = (at + cut).min(reply.len());
            let v = insp.server(&reply[at..end]);
            to_client.extend_from_slice(v.pass);
            then = v.then;
            insp.passed_on();
            at = end;
        }
        prop_assert_eq!(then, Then::Standby);
        prop_assert_eq!(messages(&to_client).len(), 5);
    }
}

/// The verdict on a whole capture's server reply, for a listener wanting `want_standby`.
fn verdict_for(text: &str, want_standby: Option<bool>) -> Then {
    let mut pending = Pending::default();
    for e in transcript(text) {
        if let Event::Client(b) = e {
            pending.push(&b);
            break;
        }
    }
    let mut insp = Inspector::new(&mut pending).expecting(want_standby);
    let _ = insp.start();
    let reply = server_bytes(text);
    insp.server(&reply).then
}

#[test]
fn a_replica_listener_refuses_a_primary_and_takes_a_standby() {
    // Issue 13 item 1: "a new connection is never sent to a node that is not in recovery unless
    // the fallback says so": on a replica listener PostgreSQL's own `in_hot_standby = off` refuses,
    // `on` relays; an `any` listener takes either; the primary port keeps refusing a standby.
    assert_eq!(verdict_for(capture!("trust_ok"), Some(true)), Then::Standby);
    assert_eq!(verdict_for(capture!("standby_ok"), Some(true)), Then::Relay);
    assert_eq!(verdict_for(capture!("trust_ok"), None), Then::Relay);
    assert_eq!(verdict_for(capture!("standby_ok"), None), Then::Relay);
    assert_eq!(
        verdict_for(capture!("standby_ok"), Some(false)),
        Then::Standby
    );
}
