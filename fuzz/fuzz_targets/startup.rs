//! The startup inspector (`pgwire::startup::Inspector`) driven as the session drives it, over any
//! conversation: the input is cut into chunks that alternate between the client and the server
//! (lengths from the input itself), and a replay starts a second attempt with the same `Pending`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use patroni_proxy::pgwire::startup::{Inspector, Pending, Then};

fuzz_target!(|data: &[u8]| {
    let mut pending = Pending::default();
    let mut rest = data;
    for _attempt in 0..2 {
        let mut inspector = Inspector::new(&mut pending);
        let first = inspector.start();
        let mut then = first.then;
        let mut from_server = 0usize;
        let mut client_turn = true;
        while then == Then::Inspect {
            let Some((&n, tail)) = rest.split_first() else {
                break;
            };
            let (chunk, tail) = tail.split_at((n as usize).min(tail.len()));
            rest = tail;
            if client_turn {
                then = inspector.client(chunk);
            } else {
                from_server += chunk.len();
                let verdict = inspector.server(chunk);
                assert!(
                    verdict.pass.len() <= from_server,
                    "passes on {} bytes of {from_server} read",
                    verdict.pass.len()
                );
                then = verdict.then;
                if then == Then::Inspect {
                    inspector.passed_on();
                }
            }
            client_turn = !client_turn;
        }
        let _ = inspector.server_closed();
        if !matches!(then, Then::Replay(_)) {
            break;
        }
    }
});
