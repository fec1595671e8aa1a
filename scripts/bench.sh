#!/usr/bin/env bash
# Release build of fog and fog-bench, then the full bench (the table in README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p fog --bin fog -p fog-benches --bin fog-bench
exec target/release/fog-bench "$@"
