#!/usr/bin/env bash
# The project's test command: installs what a fresh Debian machine lacks, then checks format,
# lints and runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v turnserver >/dev/null 2>&1 || need+=(coturn)
# fog/tests/forward_send.rs: a Python http.server exposed to a peer, fetched with curl.
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v curl >/dev/null 2>&1 || need+=(curl)
# fog/tests/browser_rtc.rs: a web page in headless Chromium talks WebRTC to a fog node.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing: ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  else
    echo "missing ${need[*]} and cannot install them (need root and apt-get)" >&2
    exit 1
  fi
fi

rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
# The bench binary must at least run its quick mode, so its table cannot rot.
cargo run --locked -q -p fog-benches --bin fog-bench -- --quick
cargo run --locked -q -p fog-benches --bin fog-bench-nat -- --quick
cargo run --locked -q -p fog-benches --bin fog-bench-punch -- --quick
cargo run --locked -q -p fog-benches --bin fog-bench-relay -- --quick
cargo run --locked -q -p fog-benches --bin fog-bench-apps -- --quick
cargo run --locked -q -p fog-benches --bin fog-bench-transports -- --quick
cargo run --locked -q -p fog-benches --bin fog-bench-recovery -- --quick
