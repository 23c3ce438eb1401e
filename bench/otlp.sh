#!/usr/bin/env bash
# OTLP exporter benchmarks (loopback only, nothing else needed but rotel):
#
#   bench/otlp.sh [latency] [latency-http] [ingest] [ingest-uds] [memory]   (default: latency ingest)
#
# latency: 1,000 simulated UDP agents beat every 100 ms; 10 % of them stop
#   after 2 s (threshold 1 s), i.e. 100 stalls detected together per run. rotel (a real OTLP/gRPC receiver, installed
#   by scripts/install-peers.sh) prints every span it receives; its stdout
#   is stamped with the wall clock per line as it arrives. Latency of a
#   stall = (rotel printed the span's "End time" line) − (the span's end
#   time = the collector's detection instant, in wall-clock ns). REPS runs,
#   p50/p99 over all stalls of all runs.
# ingest: flat-out plain-UDP ingest (1,000 agents, 5 s) with the file
#   exporter only ("off") vs file + otlp to rotel, traces and metrics on,
#   metrics every 1 s with per-agent points ("on"); alternated REPS times;
#   median accepted beats/s of each.
#
# ingest-uds: UDS ingest (4 sender processes flat out, 5 s), file exporter
#   only vs file + prometheus scraped every 2 s + otlp + otlphttp (metrics
#   every 1 s, per-agent points), alternated REPS times in one run.
# latency-http: the same as latency, exporting with `otlphttp` (protobuf) to rotel's
#   OTLP/HTTP port.
# memory: AGENTS (50,000 by default; list several, e.g. "50000 500000")
#   simulated UDP agents beating once a second for 25 s; collector RSS
#   growth per tracked agent ((VmRSS at the end − VmRSS before the load) /
#   agents) with exporters: file only; file + prometheus scraped every 2 s;
#   file + otlp (metrics every 5 s, per-agent points) + otlphttp to rotel;
#   all of them. Every variant in one run, one after the other. Also the
#   peak growth (highest VmRSS sampled every 0.5 s during the load).
#
# Knobs: REPS [3], SKIP_BUILD=1, AGENTS, ROTEL (a rotel-agent to use instead of
# installing one with scripts/install-peers.sh). Results go to bench/results/otlp.md.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
REPS=${REPS:-3}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release
WORK=$(mktemp -d /tmp/varta-otlp-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
log() { printf '>> %s\n' "$*" >&2; }

scenarios=("$@")
[[ ${#scenarios[@]} -eq 0 ]] && scenarios=(latency ingest)
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    log "building release binaries"
    (cd "$ROOT" && cargo build -q --release -p varta-collector -p varta-bench)
fi
# A rotel the caller already has (e.g. from /tmp/peers.env) is used as is;
# only without one does the installer run.
if [[ -z ${ROTEL:-} || ! -x $ROTEL ]]; then
    eval "$("$ROOT/scripts/install-peers.sh" | grep '^ROTEL=')"
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_rotel() { # start_rotel GRPC_PORT OUTFILE [HTTP_PORT]
    local http
    http=${3:-$(free_port)}
    # Stamp every line with the wall clock when it is read (rotel flushes per
    # line). rotel writes into the stamper rather than a pipe, so that `$!`
    # is rotel's pid: killing it ends the stamper too (at end of input).
    NO_COLOR=1 "$ROTEL" start --otlp-grpc-endpoint "127.0.0.1:$1" --otlp-http-endpoint "127.0.0.1:$http" \
        --exporter blackhole --debug-log traces --debug-log-verbosity detailed \
        > >(python3 -u -c 'import sys, time
for line in sys.stdin:
    sys.stdout.write(f"{time.time_ns()} {line}"); sys.stdout.flush()' >"$2") 2>&1 &
    PIDS+=($!)
    for _ in $(seq 200); do grep -q "Starting Rotel" "$2" 2>/dev/null && return; sleep 0.05; done
    echo "rotel did not start" >&2
    exit 1
}

config() { # config UDP_PORT OTLP_PORT|"" [http]
    local otlp="" list="[file]"
    if [[ -n $2 && ${3:-} == http ]]; then
        otlp="  otlphttp:\n    endpoint: http://127.0.0.1:$2\n    metrics: { interval: 1s }\n"
        list="[file, otlphttp]"
    elif [[ -n $2 ]]; then
        otlp="  otlp:\n    endpoint: http://127.0.0.1:$2\n    metrics: { interval: 1s }\n"
        list="[file, otlp]"
    fi
    printf "receivers:\n  vlp/r:\n    transport: udp\n    endpoint: \"127.0.0.1:$1\"\n    accept_unauthenticated: true\n    recv_buffer_bytes: 8388608\nprocessors:\n  tracker: { threshold: 1s, capacity: 100000 }\nexporters:\n  file: { path: $WORK/e.tsv, beats: false }\n$otlp\nservice:\n  pipelines:\n    l: { receivers: [vlp/r], processors: [tracker], exporters: $list, queue_batches: 4096 }\n  telemetry: { logs: { format: json } }\n" >"$WORK/c.yaml"
}

pct() { # pct P < sorted numbers
    awk -v p="$1" '{ v[NR] = $1 } END { if (NR == 0) { print "n/a"; exit } i = int((NR - 1) * p / 100) + 1; print v[i] }'
}

latency() { # latency [http]
    : >"$WORK/lat.txt"
    for rep in $(seq "$REPS"); do
        local grpc http udp cp
        grpc=$(free_port) http=$(free_port) udp=$(free_port)
        start_rotel "$grpc" "$WORK/rotel.out" "$http"
        if [[ ${1:-} == http ]]; then config "$udp" "$http" http; else config "$udp" "$grpc"; fi
        "$BIN/varta-collector" --config "$WORK/c.yaml" 2>"$WORK/coll.log" &
        cp=$!
        sleep 0.5
        "$BIN/varta-load" --transport udp --target "127.0.0.1:$udp" --agents 1000 --interval 100ms \
            --duration 4500ms --stop-fraction 0.1 --stop-after 2s >/dev/null 2>>"$WORK/load.log"
        # Stop before the other 900 agents (silent once the load ends) stall.
        kill -TERM "$cp"
        wait "$cp" || true
        kill "${PIDS[-1]}" 2>/dev/null || true
        # For each varta.stall span: the stamp of its "End time:" line minus the end time.
        awk '/Name           : varta.stall$/ { want = 1 } /Name           : varta.stall.resolved/ { want = 0 }
             want && /End time: / { printf "%d\n", ($1 - $4) / 1000; want = 0 }' "$WORK/rotel.out" >>"$WORK/lat.txt"
        log "latency rep $rep: $(grep -c . "$WORK/lat.txt") stall spans so far"
    done
    local n p50 p99 max
    n=$(grep -c . "$WORK/lat.txt")
    p50=$(sort -n "$WORK/lat.txt" | pct 50)
    p99=$(sort -n "$WORK/lat.txt" | pct 99)
    max=$(sort -n "$WORK/lat.txt" | tail -1)
    printf '| detection → span printed by rotel (%s) | %s stalls (%s runs × 100) | p50 %s µs | p99 %s µs | max %s µs |\n' \
        "${1:-grpc}" "$n" "$REPS" "$p50" "$p99" "$max" | tee -a "$HERE/results/otlp.md"
}

ingest_once() { # ingest_once on|off → accepted beats/s
    local udp grpc="" cp acc
    udp=$(free_port)
    if [[ $1 == on ]]; then
        grpc=$(free_port)
        start_rotel "$grpc" "$WORK/rotel-ingest.out"
    fi
    config "$udp" "$grpc"
    "$BIN/varta-collector" --config "$WORK/c.yaml" 2>"$WORK/coll.log" &
    cp=$!
    sleep 0.5
    "$BIN/varta-load" --transport udp --target "127.0.0.1:$udp" --agents 1000 --rate 0 --on-full drop \
        --duration 5s >/dev/null 2>>"$WORK/load.log"
    kill -TERM "$cp"
    wait "$cp" || true
    [[ $1 == on ]] && kill "${PIDS[-1]}" 2>/dev/null || true
    acc=$(grep '"beats_accepted"' "$WORK/coll.log" | grep -o '"value":[0-9]*' | tail -1 | cut -d: -f2)
    echo $(( ${acc:-0} / 5 ))
}

ingest() {
    local on=() off=() a b
    for rep in $(seq "$REPS"); do
        a=$(ingest_once off) b=$(ingest_once on)
        off+=("$a") on+=("$b")
        log "ingest rep $rep: off $a/s, on $b/s"
    done
    local mon moff
    moff=$(printf '%s\n' "${off[@]}" | sort -n | pct 50)
    mon=$(printf '%s\n' "${on[@]}" | sort -n | pct 50)
    printf '| UDP ingest, 1,000 agents flat out | OTLP off %s beats/s | OTLP on %s beats/s | on/off %s | runs: off %s; on %s |\n' \
        "$moff" "$mon" "$(awk -v a="$mon" -v b="$moff" 'BEGIN { printf "%.3f", a / b }')" "${off[*]}" "${on[*]}" |
        tee -a "$HERE/results/otlp.md"
}

ingest_uds_once() { # ingest_uds_once on|off → accepted beats/s (UDS, 4 sender processes flat out)
    local grpc http prom cp acc extra="" exporters="[file]" scraper=""
    grpc=$(free_port) http=$(free_port) prom=$(free_port)
    if [[ $1 == on ]]; then
        start_rotel "$grpc" "$WORK/rotel-uds.out" "$http"
        extra="  prometheus:\n    endpoint: 127.0.0.1:$prom\n    auth: none\n    rate_limit: { rate: 1000, burst: 1000 }\n  otlp:\n    endpoint: http://127.0.0.1:$grpc\n    metrics: { interval: 1s }\n  otlphttp:\n    endpoint: http://127.0.0.1:$http\n    metrics: { interval: 1s }\n"
        exporters="[file, prometheus, otlp, otlphttp]"
    fi
    printf "receivers:\n  vlp/r:\n    transport: uds\n    path: $WORK/u.sock\n    recv_buffer_bytes: 8388608\nprocessors:\n  tracker: { threshold: 1s, capacity: 100000 }\nexporters:\n  file: { path: $WORK/e.tsv, beats: false }\n$extra\nservice:\n  pipelines:\n    l: { receivers: [vlp/r], processors: [tracker], exporters: $exporters, queue_batches: 4096 }\n  telemetry: { logs: { format: json } }\n" >"$WORK/u.yaml"
    "$BIN/varta-collector" --config "$WORK/u.yaml" 2>"$WORK/coll-uds.log" &
    cp=$!
    sleep 0.5
    if [[ $1 == on ]]; then
        (while kill -0 "$cp" 2>/dev/null; do curl -s -o /dev/null "http://127.0.0.1:$prom/metrics"; sleep 2; done) &
        scraper=$!
    fi
    "$BIN/varta-load" --transport uds --target "$WORK/u.sock" --agents 4 --rate 0 --on-full drop \
        --duration 5s >/dev/null 2>>"$WORK/load.log"
    [[ -n $scraper ]] && kill "$scraper" 2>/dev/null || true
    kill -TERM "$cp"
    wait "$cp" || true
    [[ $1 == on ]] && kill "${PIDS[-1]}" 2>/dev/null || true
    acc=$(grep '"beats_accepted"' "$WORK/coll-uds.log" | grep -o '"value":[0-9]*' | tail -1 | cut -d: -f2)
    echo $(( ${acc:-0} / 5 ))
}

ingest_uds() {
    local on=() off=() a b
    for rep in $(seq "$REPS"); do
        a=$(ingest_uds_once off) b=$(ingest_uds_once on)
        off+=("$a") on+=("$b")
        log "uds ingest rep $rep: file only $a/s, + prometheus scraped + otlp + otlphttp $b/s"
    done
    local mon moff
    moff=$(printf '%s\n' "${off[@]}" | sort -n | pct 50)
    mon=$(printf '%s\n' "${on[@]}" | sort -n | pct 50)
    printf '| UDS ingest, 4 senders flat out | file only %s beats/s | + prometheus (scraped every 2 s) + otlp + otlphttp %s beats/s | on/off %s | runs: off %s; on %s |\n' \
        "$moff" "$mon" "$(awk -v a="$mon" -v b="$moff" 'BEGIN { printf "%.3f", a / b }')" "${off[*]}" "${on[*]}" |
        tee -a "$HERE/results/otlp.md"
}

rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }

memory_once() { # memory_once AGENTS VARIANT → bytes per agent
    local agents=$1 variant=$2 udp grpc http prom cp before after exporters="[file]" extra=""
    udp=$(free_port) grpc=$(free_port) http=$(free_port) prom=$(free_port)
    case $variant in
    prometheus | all)
        extra+="  prometheus:\n    endpoint: 127.0.0.1:$prom\n    auth: none\n    max_agent_series: 1000000\n    rate_limit: { rate: 1000, burst: 1000 }\n"
        ;;&
    otlp | all)
        start_rotel "$grpc" "$WORK/rotel-mem.out" "$http"
        extra+="  otlp:\n    endpoint: http://127.0.0.1:$grpc\n    metrics: { interval: 5s }\n  otlphttp:\n    endpoint: http://127.0.0.1:$http\n    metrics: { interval: 5s }\n"
        ;;
    esac
    case $variant in
    file) exporters="[file]" ;;
    prometheus) exporters="[file, prometheus]" ;;
    otlp) exporters="[file, otlp, otlphttp]" ;;
    all) exporters="[file, prometheus, otlp, otlphttp]" ;;
    esac
    printf "receivers:\n  vlp/r:\n    transport: udp\n    endpoint: \"127.0.0.1:$udp\"\n    accept_unauthenticated: true\n    recv_buffer_bytes: 33554432\nprocessors:\n  tracker: { threshold: 30s, capacity: 1100000 }\nexporters:\n  file: { path: $WORK/e.tsv, beats: false }\n$extra\nservice:\n  pipelines:\n    l: { receivers: [vlp/r], processors: [tracker], exporters: $exporters, queue_batches: 8192 }\n  telemetry: { logs: { format: json } }\n" >"$WORK/m.yaml"
    "$BIN/varta-collector" --config "$WORK/m.yaml" 2>"$WORK/coll-mem.log" &
    cp=$!
    sleep 1
    before=$(rss_kib "$cp")
    local scraper=""
    if [[ $variant == prometheus || $variant == all ]]; then
        (while kill -0 "$cp" 2>/dev/null; do curl -s -o /dev/null "http://127.0.0.1:$prom/metrics"; sleep 2; done) &
        scraper=$!
    fi
    # RSS every 0.5 s during the load: exports and scrapes come and go, so
    # the end value alone depends on where in their cycles it falls.
    (peak=0; while kill -0 "$cp" 2>/dev/null; do r=$(rss_kib "$cp" 2>/dev/null || echo 0)
        ((${r:-0} > peak)) && peak=$r && echo "$peak" >"$WORK/peak"; sleep 0.5; done) &
    local sampler=$!
    "$BIN/varta-load" --transport udp --target "127.0.0.1:$udp" --agents "$agents" --interval 1s \
        --duration 25s --on-full wait >/dev/null 2>>"$WORK/load.log"
    after=$(rss_kib "$cp")
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    local peak
    peak=$(cat "$WORK/peak" 2>/dev/null || echo "$after")
    ((after > peak)) && peak=$after
    rm -f "$WORK/peak"
    [[ -n $scraper ]] && kill "$scraper" 2>/dev/null || true
    kill -TERM "$cp"
    wait "$cp" || true
    [[ $variant == otlp || $variant == all ]] && kill "${PIDS[-1]}" 2>/dev/null || true
    local tracked
    tracked=$(grep '"agents_tracked"' "$WORK/coll-mem.log" | grep -o '"value":[0-9]*' | tail -1 | cut -d: -f2)
    echo $(( (after - before) * 1024 / ${tracked:-1} )) "$tracked" $(( (peak - before) * 1024 / ${tracked:-1} ))
}

memory() {
    for n in ${AGENTS:-50000}; do
        local row="" file_b="" file_p=""
        for v in file prometheus otlp all; do
            read -r b tracked p < <(memory_once "$n" "$v")
            log "memory $n agents, $v: $b B/agent at the end, $p B/agent at the peak ($tracked tracked)"
            [[ $v == file ]] && file_b=$b file_p=$p
            row+=" $v $b B (peak $p B) |"
        done
        printf '| RSS growth per agent (at the end; peak during the load), %s UDP agents at 1 beat/s, 25 s |%s all/file %s (peak %s) |\n' "$n" "$row" \
            "$(awk -v a="$b" -v f="$file_b" 'BEGIN { printf "%.2f", a / f }')" \
            "$(awk -v a="$p" -v f="$file_p" 'BEGIN { printf "%.2f", a / f }')" | tee -a "$HERE/results/otlp.md"
    done
}

mkdir -p "$HERE/results"
printf '\n## bench/otlp.sh %s — %s, REPS=%s (memory: one run per variant), %s\n\n' "${scenarios[*]}" "$(date -u +%FT%TZ)" "$REPS" "$(git -C "$ROOT" rev-parse --short HEAD)" >>"$HERE/results/otlp.md"
for s in "${scenarios[@]}"; do
    case $s in
    latency) latency ;;
    latency-http) latency http ;;
    ingest) ingest ;;
    ingest-uds) ingest_uds ;;
    memory) memory ;;
    *) echo "unknown scenario $s (latency, latency-http, ingest, ingest-uds, memory)" >&2; exit 2 ;;
    esac
done
