#!/usr/bin/env bash
# Runs every check CI runs: formatting, lints, the build of all binaries,
# and the whole test suite (unit, property, CLI and end-to-end tests against
# the real binaries and real peers). Installs the peers the end-to-end tests
# talk to when they are missing (Debian `prometheus` for prometheus and
# promtool, Debian `systemd` for systemd-analyze, Debian `strace` for the
# evidence tests, PyPI `rotel` and
# `kubernetes-validate` in a virtualenv under target/, an OpenTelemetry
# Collector and Jaeger built with Go into target/peers/): see
# scripts/install-peers.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

# A clean checkout builds everything once: incremental caches are dead
# weight there (they were 29 GB of a 64 GB dev target here, and CI ran out
# of space with them).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# Say up front how much room the run has, so a full disk reads as one.
df -h . | sed 's/^/disk: /' >&2

cargo fmt --all -- --check
./scripts/check-doc-links.sh
cargo clippy --workspace --all-targets --locked -- -D warnings
# The embedding façade compiles no transport; exporters build per feature.
./scripts/check-layers.sh
peers=$(./scripts/install-peers.sh)
eval "$peers"
export PROMETHEUS PROMTOOL ROTEL SYSTEMD_ANALYZE KUBERNETES_VALIDATE OTELCOL JAEGER
# Integration tests drive the real binaries (and the embedding example); build them first.
cargo build --workspace --bins --examples --locked
cargo test --workspace --locked
du -sh target | sed 's/^/target size: /' >&2
