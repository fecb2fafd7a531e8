//! Builds the kernel relay's BPF program (`bpf/relay.bpf.c`, docs/configuration.md "relay") with
//! clang into `$OUT_DIR`, where `src/sockmap` embeds it. Where no clang can target BPF (or the
//! libbpf headers are missing) the proxy is built without it: `cfg(kernel_relay)` is then unset,
//! `relay = "auto"` relays in user space and says why, and `relay = "kernel"` is refused at start.
//! `PATRONI_PROXY_CLANG` names another clang; `PATRONI_PROXY_NO_BPF=1` builds without the program.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const SOURCE: &str = "bpf/relay.bpf.c";

fn main() {
    println!("cargo::rustc-check-cfg=cfg(kernel_relay)");
    println!("cargo::rerun-if-changed={SOURCE}");
    println!("cargo::rerun-if-env-changed=PATRONI_PROXY_CLANG");
    println!("cargo::rerun-if-env-changed=PATRONI_PROXY_NO_BPF");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = out.join("relay.bpf.o");
    let why_not = if env::var_os("PATRONI_PROXY_NO_BPF").is_some_and(|v| v == "1") {
        Some("PATRONI_PROXY_NO_BPF=1".to_string())
    } else {
        compile(&object).err()
    };
    match why_not {
        None => println!("cargo::rustc-cfg=kernel_relay"),
        Some(why) => {
            // Installing clang and libbpf-dev later must rebuild with the program: a path that
            // does not exist makes cargo run this script again on every build until it does.
            println!("cargo::rerun-if-changed=/usr/bin/clang");
            println!("cargo::rerun-if-changed=/usr/include/bpf/bpf_helpers.h");
            println!("cargo::warning=built without the kernel relay (relay = \"auto\" relays in user space): {why}");
            println!("cargo::rustc-env=PATRONI_PROXY_NO_KERNEL_RELAY={why}");
        }
    }
}

fn compile(object: &std::path::Path) -> Result<(), String> {
    let clang = env::var("PATRONI_PROXY_CLANG").unwrap_or_else(|_| "clang".into());
    // The multiarch include directory holds <asm/types.h>, which <linux/bpf.h> needs; clang's
    // BPF target does not look there by itself.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let multiarch = match arch.as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        other => other,
    };
    let output = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-I/usr/include/{multiarch}"))
        .args(["-c", SOURCE, "-o"])
        .arg(object)
        .output()
        .map_err(|e| {
            format!("cannot run {clang}: {e} (Debian: apt-get install clang libbpf-dev)")
        })?;
    if output.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&output.stderr);
        let first = err.lines().next().unwrap_or("no message");
        Err(format!(
            "{clang} failed on {SOURCE}: {first} (Debian: apt-get install clang libbpf-dev)"
        ))
    }
}
