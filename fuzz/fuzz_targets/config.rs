//! The TOML config file: parsing and validation must answer every text with a value or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use patroni_proxy::config::Config;

fuzz_target!(|data: &[u8]| {
    // A config file that is not UTF-8 is refused before parsing (`read_to_string`).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Config::from_toml(text);
});
