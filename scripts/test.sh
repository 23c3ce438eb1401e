#!/usr/bin/env bash
# Runs every check CI runs: formatting, lints, the release-independent build
# of all binaries, and the whole test suite (unit, property, CLI and
# end-to-end tests against the real binaries and real peers). The peers the
# tests talk to (rotel for OTLP) are installed by scripts/install-peers.sh
# when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Real third-party peers for the end-to-end tests (prints ROTEL=… etc.).
eval "$(scripts/install-peers.sh)"
export ROTEL

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Integration tests drive the real binaries; build them first.
cargo build --workspace --bins --locked
cargo test --workspace --locked
