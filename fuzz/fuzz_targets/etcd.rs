//! etcd's JSON gateway: the range answer, and the watch stream fed in arbitrary chunks.
//! Needs `dcs::{parse_range, WatchDecoder}` (hardening work, not yet merged on every branch).
#![no_main]

use libfuzzer_sys::fuzz_target;
use patroni_proxy::dcs::{parse_range, WatchDecoder};

const PREFIX: &str = "/service/batman/";

fuzz_target!(|data: &[u8]| {
    let _ = parse_range(data, PREFIX);

    // Byte 0 says how many of the following bytes are chunk sizes (1-8); the sizes (1-256 bytes)
    // are used in turn to cut the rest, the way TCP segments cut a stream anywhere.
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 8) + 1;
    let Some((sizes, mut stream)) = rest.split_at_checked(n) else {
        return;
    };
    let mut decoder = WatchDecoder::new(PREFIX);
    for &size in sizes.iter().cycle() {
        if stream.is_empty() {
            break;
        }
        let (chunk, tail) = stream.split_at(stream.len().min(usize::from(size) + 1));
        stream = tail;
        if decoder.feed(chunk).is_err() {
            // A broken stream is abandoned: the watch reconnects.
            break;
        }
    }
});
