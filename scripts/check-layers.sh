#!/usr/bin/env bash
# The embedding façade with default features compiles no transport: none
# of tonic, hyper, rustls or prometheus is among its normal dependencies.
# The collector's list is checked to contain all four, so the check cannot
# pass because `cargo tree` printed nothing. Also checks that the
# exporters crate builds with each transport feature alone.
set -euo pipefail
cd "$(dirname "$0")/.."

transports='^(tonic|hyper|rustls|prometheus) '
deps() { cargo tree --locked -p "$1" -e normal --prefix none --format '{p}' | sort -u; }

collector=$(deps varta-collector | grep -E "$transports" | cut -d' ' -f1 | sort -u | tr '\n' ' ')
if [[ $collector != "hyper prometheus rustls tonic " ]]; then
    echo "check-layers: expected the collector to use hyper, prometheus, rustls and tonic; got: $collector" >&2
    exit 1
fi
embed=$(deps varta-embed | grep -E "$transports" || true)
if [[ -n $embed ]]; then
    echo "check-layers: varta-embed (default features) compiles a transport:" >&2
    echo "$embed" >&2
    for c in $(echo "$embed" | cut -d' ' -f1); do cargo tree --locked -p varta-embed -e normal -i "$c" >&2; done
    exit 1
fi
for features in "" otlp prometheus httpd; do
    cargo check --locked --quiet -p varta-exporters --no-default-features --features "$features"
done
echo "check-layers: varta-embed compiles none of tonic, hyper, rustls, prometheus; exporters builds with each feature alone" >&2
