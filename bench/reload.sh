#!/usr/bin/env bash
# Reloads under load: does anything get lost, and how long does a reload take?
#   bench/reload.sh [RELOADS] [RATE]      (defaults: 40 reloads, 100000 beats/s)
# A release collector takes 10,000 simulated UDP agents at RATE beats/s for
# the whole run while it is reloaded every 250 ms, alternating configurations
# that add/remove an exporter (the pipeline's processor parks and resumes,
# keeping its agents) and change `queue_batches` (the receiver pauses with
# its socket bound and is rewired to a new queue). Prints the sender's,
# the kernel's and the collector's counts, and reload durations (the
# collector's own `elapsed_ms`). Loopback only.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RELOADS=${1:-40}
RATE=${2:-100000}
(cd "$ROOT" && cargo build -q --release -p varta-collector -p varta-bench)
BIN=$ROOT/target/release
D=$(mktemp -d)
trap 'kill "${CP:-0}" 2>/dev/null || true; rm -rf "$D"' EXIT
PORT=$((20000 + RANDOM % 20000))
config() { # config EXTRA_EXPORTER QUEUE_BATCHES
    local exporters="file"
    [[ $1 == yes ]] && exporters="file, file/more"
    cat <<YAML
receivers:
  vlp/udp: { transport: udp, endpoint: "127.0.0.1:$PORT", accept_unauthenticated: true, recv_buffer_bytes: 8388608 }
processors:
  tracker: { threshold: 5s, capacity: 100000 }
exporters:
  file: { path: "$D/events.tsv", beats: false }
  file/more: { path: "$D/more.tsv", beats: false }
service:
  pid_file: "$D/pid"
  pipelines:
    l: { receivers: [vlp/udp], processors: [tracker], exporters: [$exporters], queue_batches: $2 }
  telemetry: { logs: { format: json } }
YAML
}
kernel_drops() {
    awk '/^Udp:/ { n++; if (n == 1) { for (i = 2; i <= NF; i++) if ($i == "RcvbufErrors") c = i }
                   else if (n == 2) print $c }' /proc/net/snmp
}
config no 4096 >"$D/c.yaml"
"$BIN/varta-collector" --config "$D/c.yaml" 2>"$D/log" &
CP=$!
sleep 0.5
k0=$(kernel_drops)
secs=$(awk -v r="$RELOADS" 'BEGIN { print int(r / 4) + 4 }')
"$BIN/varta-load" --transport udp --target "127.0.0.1:$PORT" --agents 10000 --rate "$RATE" \
    --duration "${secs}s" --report "$D/load.json" >/dev/null 2>&1 &
LP=$!
sleep 1
for i in $(seq 1 "$RELOADS"); do
    case $((i % 4)) in
    1) config yes 4096 ;;
    2) config yes 2048 ;;
    3) config no 2048 ;;
    0) config no 4096 ;;
    esac >"$D/c.yaml"
    kill -HUP "$CP"
    sleep 0.25
done
wait "$LP"
sleep 0.5
k1=$(kernel_drops)
kill -TERM "$CP"
wait "$CP" || true
# One value per counter-dump line (JSON logs); summed over components.
stat() { awk -v n="\"name\":\"$1\"" 'index($0, "varta::stats") && index($0, n) { if (match($0, /"value":[0-9]+/)) s += substr($0, RSTART + 8, RLENGTH - 8) } END { print s + 0 }' "$D/log"; }
json() { "$BIN/varta-bench-tool" json --file "$D/load.json" --key "$1"; }
sent=$(json sent)
refused=$(json refused)
accepted=$(stat beats_accepted)
queue_full=$(stat queue_full_beats)
outcomes=$(awk 'index($0, "reload finished") { if (match($0, /"outcome":"[a-z_]+"/)) print substr($0, RSTART + 11, RLENGTH - 12) }' "$D/log" | sort | uniq -c | tr '\n' ' ')
echo "reloads requested $RELOADS; outcomes: $outcomes"
echo "beats sent $sent (sender EAGAIN $refused), kernel drops $((k1 - k0)), queue_full $queue_full, accepted $accepted"
echo "unaccounted: $((sent - refused - (k1 - k0) - queue_full - accepted))"
awk 'index($0, "reload finished") { if (match($0, /"elapsed_ms":[0-9.]+/)) print substr($0, RSTART + 13, RLENGTH - 13) }' "$D/log" | sort -n |
    awk '{ a[NR] = $1 } END { if (NR) printf "reload elapsed_ms: p50 %.2f  p90 %.2f  max %.2f (n=%d)\n", a[int((NR + 1) / 2)], a[int(NR * 0.9 + 0.5)], a[NR], NR }'
