//! The PostgreSQL side: a client's first message and the server's startup replies, read the way
//! `proxy::session::startup()` reads them (frame message by message, then look inside each).
#![no_main]

use libfuzzer_sys::fuzz_target;
use patroni_proxy::pgwire::{self, FirstMessage};

fuzz_target!(|data: &[u8]| {
    // Client side: whatever the first message says its length is, it is a claim, not a slice bound.
    if let FirstMessage::Startup { len } = pgwire::classify(data) {
        assert!((9..=pgwire::MAX_STARTUP).contains(&len));
    }
    let _ = pgwire::sqlstate(data);
    let _ = pgwire::parameter_status(data);

    // Server side: the startup inspection's loop over everything read so far.
    let mut inspected = 0usize;
    loop {
        let rest = &data[inspected..];
        let (_kind, len) = match pgwire::frame(rest) {
            Ok(Some(f)) => f,
            Ok(None) | Err(pgwire::NotPostgres) => break,
        };
        assert!(
            len >= 5,
            "a framed message has at least its type byte and length"
        );
        assert!(
            len <= rest.len(),
            "framed {len} bytes out of {}",
            rest.len()
        );
        let msg = &rest[..len];
        if let Some(code) = pgwire::sqlstate(msg) {
            let _ = pgwire::is_server_leaving(code);
        }
        let _ = pgwire::parameter_status(msg);
        inspected += len;
    }
});
