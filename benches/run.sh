#!/usr/bin/env bash
# The one benchmark command (docs/benchmarks.md): installs what is missing, builds the release proxy,
# and runs direct / HAProxy / patroni-proxy side by side on loopback.
#   bash benches/run.sh                 # full run (4 rounds)
#   bash benches/run.sh --quick         # 2 short rounds, for iterating
#   bash benches/run.sh --json out.json --rounds 6 --secs 10 --rows pgbench16,pingpong
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
# clang and libbpf-dev build the kernel relay's BPF program (the `relay = "kernel"` column).
for p in haproxy iperf3 postgresql-15 postgresql-contrib util-linux clang libbpf-dev; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    if [ "$(id -u)" != 0 ]; then
        echo "benches/run.sh: missing packages ${missing[*]}; run as root or install them" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The binary users run, built as `cargo build --release` (and the package) builds it. The one that
# `cargo bench` builds for the harness has the dev-dependencies' features unified in (proptest turns
# on regex-syntax's Unicode tables: +0.4 MB of text and data, +0.4 MiB idle RSS), so it is not used.
cargo build --release --locked --bin patroni-proxy
mkdir -p target/bench
cp "${CARGO_TARGET_DIR:-target}/release/patroni-proxy" target/bench/patroni-proxy
exec cargo bench --bench compare -- --proxy target/bench/patroni-proxy "$@"
