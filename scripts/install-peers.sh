#!/usr/bin/env bash
# Installs the real third-party peers the tests talk to, when missing:
#   - Debian `prometheus` (prometheus 2.x + promtool), with service start-up
#     suppressed so nothing listens on 0.0.0.0:9090 afterwards;
#   - Debian `systemd` for `systemd-analyze verify` (no service is started);
#   - PyPI `rotel==0.0.1a15` (an OTLP receiver; its `rotel-agent` binary ships
#     inside the wheel) and `kubernetes-validate==1.37.0` (offline manifest
#     validation) in a virtualenv under the cargo target directory;
#   - a minimal OpenTelemetry Collector (integration/peers/otelcol, built
#     from the Collector's Go modules) and Jaeger v2
#     (integration/peers/jaeger) into <target>/peers/ with Go (needs `go`
#     1.26 and the Go module proxy; Go's module and build caches make every
#     build after the first fast).
# Idempotent and quiet when everything is present. Prints only the
# `NAME=path` assignments on stdout (for `eval`); messages go to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "install-peers: $*" >&2; }
sudo_if_needed() { if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi; }

# Installs a Debian package, refreshing the package lists once if the
# first try fails (a fresh machine may have none).
deb_install() { # package
    local apt=(sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300)
    "${apt[@]}" install -y --no-install-recommends "$1" >&2 ||
        { "${apt[@]}" update >&2 && "${apt[@]}" install -y --no-install-recommends "$1" >&2; }
}

if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
    say "installing Debian package prometheus"
    # Keep maintainer scripts from starting the packaged service.
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' | sudo_if_needed tee "$policy" >/dev/null
        sudo_if_needed chmod 755 "$policy"
        created_policy=1
        # Removed however the install ends.
        trap 'sudo_if_needed rm -f "$policy"' EXIT
    fi
    deb_install prometheus
    if [[ $created_policy == 1 ]]; then
        sudo_if_needed rm -f "$policy"
        trap - EXIT
    fi
    # Without systemd nothing was started; with it, make sure nothing runs.
    if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
        sudo_if_needed systemctl stop prometheus || true
    fi
fi

if ! command -v systemd-analyze >/dev/null; then
    say "installing Debian package systemd (for systemd-analyze)"
    deb_install systemd
fi

# The evidence tests refuse a process a real debugger holds: strace.
if ! command -v strace >/dev/null; then
    say "installing Debian package strace (a tracer for the evidence tests)"
    deb_install strace
fi

venv=${CARGO_TARGET_DIR:-$PWD/target}/peers/venv
rotel=$venv/lib/python3*/site-packages/rotel/rotel-agent
# shellcheck disable=SC2086
if ! ls $rotel >/dev/null 2>&1; then
    say "installing rotel==0.0.1a15 into $venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install -q --disable-pip-version-check rotel==0.0.1a15 >&2
fi
# shellcheck disable=SC2086
rotel=$(ls $rotel)
if [[ ! -x $venv/bin/kubernetes-validate ]]; then
    say "installing kubernetes-validate==1.37.0 into $venv"
    "$venv/bin/pip" install -q --disable-pip-version-check kubernetes-validate==1.37.0 >&2
fi

# Go peers: each a module of its own (the Collector's and Jaeger's
# dependency versions never meet); lean builds (-trimpath, no symbols).
peers=${CARGO_TARGET_DIR:-$PWD/target}/peers
peers=$(mkdir -p "$peers" && cd "$peers" && pwd)
# The peers are built once per target directory, so Go's build cache (over
# 1 GB for the Collector and Jaeger) is only dead weight on a CI disk afterwards:
# unless the caller chose a GOCACHE, build in a throwaway one and drop it.
if [[ -z ${GOCACHE:-} ]]; then
    export GOCACHE=$peers/.gocache
    trap 'rm -rf "$GOCACHE"' EXIT
fi
go_peer() { # name package-in-module
    # Rebuilt whenever its module's sources change (a stamp of their hash).
    local stamp
    stamp=$(find "integration/peers/$1" -maxdepth 1 -type f \( -name 'go.*' -o -name '*.go' \) -print0 |
        sort -z | xargs -0 cat | sha256sum | cut -d' ' -f1)
    if [[ ! -x $peers/$1 || $(cat "$peers/$1.stamp" 2>/dev/null) != "$stamp" ]]; then
        command -v go >/dev/null || { say "go is needed to build $1 (Go 1.26)"; exit 1; }
        say "building $1 (Go; the first build downloads and compiles its modules)"
        (cd "integration/peers/$1" && go build -trimpath -ldflags='-s -w' -o "$peers/$1.tmp" "$2") >&2
        mv "$peers/$1.tmp" "$peers/$1"
        echo "$stamp" >"$peers/$1.stamp"
    fi
}
go_peer otelcol .
go_peer jaeger github.com/jaegertracing/jaeger/cmd/jaeger

echo "PROMETHEUS=$(command -v prometheus)"
echo "PROMTOOL=$(command -v promtool)"
echo "ROTEL=$rotel"
echo "SYSTEMD_ANALYZE=$(command -v systemd-analyze)"
echo "KUBERNETES_VALIDATE=$venv/bin/kubernetes-validate"
echo "OTELCOL=$peers/otelcol"
echo "JAEGER=$peers/jaeger"
