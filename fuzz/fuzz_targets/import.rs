//! `import-haproxy`: any text gets a config or an error naming the line, and a config it produces
//! is one that `check` accepts (the generated `proxy.toml` loads back as the same config).
#![no_main]

use libfuzzer_sys::fuzz_target;
use patroni_proxy::config::Config;
use patroni_proxy::import;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // No environment: `${VAR}` without a default is an error, never a panic.
    let Ok(imported) = import::convert(text, &|_| None) else {
        return;
    };
    // Prints, whatever the listeners (tests/parsers.rs checks it reads back).
    let _ = import::to_toml(&imported.file, &imported.notes, "fuzz.cfg");
    let Ok(config) = import::import(text) else {
        return;
    };
    let toml = import::to_toml(&config.to_file(), &imported.notes, "fuzz.cfg");
    match Config::from_toml(&toml) {
        Ok(back) => assert_eq!(
            back, config,
            "the generated proxy.toml loads as another config"
        ),
        Err(e) => panic!("import-haproxy wrote a proxy.toml that does not load: {e}\n{toml}"),
    }
});
