#!/usr/bin/env bash
# Runs every check CI runs: formatting, lints, the release-independent build
# of all binaries, and the whole test suite (unit, property, CLI and
# end-to-end tests against the real binaries). Installs nothing system-wide:
# everything it needs comes from crates.io through cargo.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Integration tests drive the real binaries; build them first.
cargo build --workspace --bins --locked
cargo test --workspace --locked
