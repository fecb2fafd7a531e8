//! Patroni's REST body (`role`, `state`, `timeline`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use patroni_proxy::health::patroni::PatroniInfo;

fuzz_target!(|data: &[u8]| {
    if let Some(info) = PatroniInfo::parse(data) {
        assert_ne!(
            info.role.as_deref(),
            Some("master"),
            "`master` reads as `primary`"
        );
    }
});
