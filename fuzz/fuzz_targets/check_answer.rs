//! The health check's reading of a REST answer (status line, headers, body), as bytes arrive.
//! Needs `health::check::parse_answer` (hardening work, not yet merged on every branch).
#![no_main]

use libfuzzer_sys::fuzz_target;
use patroni_proxy::health::check::parse_answer;

fuzz_target!(|data: &[u8]| {
    // Byte 0: whether the peer has closed, and whether the check wants the body (GET vs HEAD/OPTIONS);
    // bytes 1-2: the expected status. The rest is what was read from the socket.
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Some((status, answer)) = rest.split_first_chunk::<2>() else {
        return;
    };
    let closed = flags & 1 != 0;
    let expect_body = flags & 2 != 0;
    let expect_status = u16::from_be_bytes(*status);
    let _ = parse_answer(answer, closed, expect_status, expect_body);
    // Every prefix is a moment of the same answer arriving: none may panic either.
    for cut in [
        0,
        answer.len() / 3,
        answer.len() / 2,
        answer.len().saturating_sub(1),
    ] {
        if let Some(prefix) = answer.get(..cut) {
            let _ = parse_answer(prefix, false, expect_status, expect_body);
        }
    }
});
