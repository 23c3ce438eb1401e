#!/usr/bin/env bash
# A/B ingest check of two collector builds (ours only, no varta-watch):
#   bench/ab.sh OLD_REV [TRANSPORT...]      (TRANSPORT: udp, uds; default both)
# Builds OLD_REV in a temporary worktree and the working tree, then
# alternates 5 s flat-out runs against each (2 rounds) and prints accepted
# beats/s and collector CPU per accepted beat (utime+stime from /proc).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OLD=${1:?usage: bench/ab.sh OLD_REV [udp|uds]...}
shift
TRANSPORTS=("${@:-udp uds}")
WT=$(mktemp -d)
cleanup() { git -C "$ROOT" worktree remove --force "$WT/tree" >/dev/null 2>&1 || true; rm -rf "$WT"; }
trap cleanup EXIT
git -C "$ROOT" worktree add -q "$WT/tree" "$OLD"
(cd "$WT/tree" && CARGO_TARGET_DIR="$WT/target" cargo build -q --release -p varta-collector -p varta-bench)
(cd "$ROOT" && cargo build -q --release -p varta-collector -p varta-bench)

run() { # run BIN_DIR TRANSPORT
    local bin=$1 t=$2 d port rcv tgt extra cp t0 t1 acc
    d=$(mktemp -d)
    port=$((20000 + RANDOM % 20000))
    case $t in
    udp)
        rcv="    transport: udp\n    endpoint: \"127.0.0.1:$port\"\n    accept_unauthenticated: true\n    recv_buffer_bytes: 8388608"
        tgt=127.0.0.1:$port extra=(--agents 1000 --on-full drop) ;;
    uds)
        rcv="    transport: uds\n    path: $d/s.sock\n    recv_buffer_bytes: 8388608"
        tgt=$d/s.sock extra=(--agents 2 --on-full wait) ;;
    esac
    printf "receivers:\n  vlp/r:\n$rcv\nprocessors:\n  tracker: { threshold: 5s, capacity: 100000 }\nexporters:\n  file: { path: $d/e.tsv, beats: false }\nservice:\n  pipelines:\n    l: { receivers: [vlp/r], processors: [tracker], exporters: [file], queue_batches: 4096 }\n  telemetry: { logs: { format: json } }\n" >"$d/c.yaml"
    "$bin/varta-collector" --config "$d/c.yaml" 2>"$d/log" &
    cp=$!
    sleep 0.5
    t0=$(awk '{print $14+$15}' "/proc/$cp/stat")
    "$bin/varta-load" --transport "$t" --target "$tgt" "${extra[@]}" --rate 0 --duration 5s >/dev/null 2>&1
    t1=$(awk '{print $14+$15}' "/proc/$cp/stat")
    kill -TERM "$cp"
    wait "$cp" || true
    acc=$(grep '"beats_accepted"' "$d/log" | grep -o '"value":[0-9]*' | tail -1 | cut -d: -f2)
    acc=${acc:-0}
    echo "$t $3 accepted/s=$((acc / 5)) collector_ns_per_beat=$(((t1 - t0) * 10000000 / (acc + 1)))"
    rm -rf "$d"
}

for round in 1 2; do
    for t in ${TRANSPORTS[*]}; do
        run "$WT/target/release" "$t" "old($OLD)"
        run "$ROOT/target/release" "$t" new
    done
done
