#!/usr/bin/env bash
# Benchmark harness: varta-collector side by side with varta-watch 0.2.0.
#
#   bench/run.sh [ingest|stall-latency|fleet|idle|scrape|profile …]
#
# No argument runs ingest, stall-latency, fleet and idle (~12 minutes on
# 2 cores). Each scenario alternates the two collectors, REPS times, and
# writes bench/results/<scenario>.md (medians) plus the raw rows in
# bench/results/<scenario>.tsv. All traffic stays on loopback.
#
# Environment knobs (defaults in brackets): REPS [3], INGEST_SECS [5],
# STALL_BIG_INTERVAL [100ms], STALL_MIXED_INTERVAL [1s], FLEET_SECS [60], IDLE_SECS [35], IDLE_REPS [REPS],
# STALL_CASES [uds-256 udp-4096 udp-100000 udp-100000-mixed], PROFILE_TRANSPORT [udp], VW_READ_TIMEOUT_MS [1] (varta-watch's UDS poll timeout; 1 ms is the most
# favourable setting for its UDP listener and stall latency), KEEP=1 keeps
# the scratch directory, SKIP_BUILD=1 BIN=DIR uses already built binaries,
# RESULTS=DIR writes the results elsewhere (A/B runs).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
RESULTS=${RESULTS:-$HERE/results}
REPS=${REPS:-3}
INGEST_SECS=${INGEST_SECS:-5}
STALL_BIG_INTERVAL=${STALL_BIG_INTERVAL:-100ms}
STALL_MIXED_INTERVAL=${STALL_MIXED_INTERVAL:-1s}
FLEET_SECS=${FLEET_SECS:-60}
IDLE_SECS=${IDLE_SECS:-35}
IDLE_REPS=${IDLE_REPS:-$REPS}
VW_READ_TIMEOUT_MS=${VW_READ_TIMEOUT_MS:-1}
UDP_PORT=${UDP_PORT:-19444}
PROM_PORT=${PROM_PORT:-19446}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${BIN:-$TARGET_DIR/release}
COLL=$BIN/varta-collector
LOAD=$BIN/varta-load
TOOL=$BIN/varta-bench-tool
# Stall threshold for both collectors; scenarios where agents beat once a
# second use 5 s so that a normal beat gap is never a stall. The stall
# cases take STALL_THRESHOLD_MS [1000] (e.g. 2000 with STALL_BIG_INTERVAL=1s).
THRESHOLD_MS=${STALL_THRESHOLD_MS:-1000}

WORK=$(mktemp -d /tmp/varta-bench.XXXXXX)
CHILDREN=()

cleanup() {
    local p
    for p in "${CHILDREN[@]}"; do
        kill -KILL "$p" 2>/dev/null || true
    done
    if [[ "${KEEP:-0}" == 1 ]]; then
        echo "scratch kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '>> %s\n' "$*" >&2; }

# ---------------------------------------------------------------- setup

build() {
    if [[ "${SKIP_BUILD:-0}" == 1 ]]; then return; fi
    log "building release binaries"
    (cd "$ROOT" && cargo build --release -p varta-collector -p varta-bench)
}

find_varta_watch() {
    local c
    for c in "${VARTA_WATCH:-}" "$HERE/.cache/varta-watch/bin/varta-watch" "$ROOT/.cache/varta-watch/bin/varta-watch"; do
        if [[ -n "$c" && -x "$c" ]] && "$c" --help 2>&1 | grep -q -- '--master-key-file'; then
            VW=$c
            return
        fi
    done
    log "installing varta-watch 0.2.0 into $HERE/.cache/varta-watch"
    cargo install varta-watch --version 0.2.0 --locked \
        --features prometheus-exporter,secure-udp,unsafe-plaintext-udp \
        --root "$HERE/.cache/varta-watch" ||
        cargo install varta-watch --version 0.2.0 \
            --features prometheus-exporter,secure-udp,unsafe-plaintext-udp \
            --root "$HERE/.cache/varta-watch"
    VW=$HERE/.cache/varta-watch/bin/varta-watch
}

make_secret() { # 64 hex chars, mode 0600
    (umask 077 && od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$1")
}

# ---------------------------------------------------------------- helpers

udp_rcvbuf_errors() {
    awk '/^Udp:/ { n++; if (n == 1) { for (i = 2; i <= NF; i++) if ($i == "RcvbufErrors") c = i }
                   else if (n == 2) print $c }' /proc/net/snmp
}

# CPU time of every live thread of a process, in ns (schedstat: ns resolution,
# unlike the 10 ms ticks of /proc/<pid>/stat utime + stime).
# (%.0f, not %d: mawk clamps %d to 2^31 − 1.)
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{ s += $1 } END { printf "%.0f\n", s }'; }
status_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }

wait_for() { # wait_for SECONDS COMMAND… — poll until COMMAND succeeds
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        if ((SECONDS > deadline)); then
            log "timed out waiting for: $*"
            return 1
        fi
        sleep 0.05
    done
}

# ours_config FILE RECEIVER_YAML CAPACITY BEATS(true/false) EVENTS
# With OURS_PROM=1 the prometheus exporter serves 127.0.0.1:$PROM_PORT
# (token $WORK/prom.token, as varta-watch's endpoint in start_vw).
ours_config() {
    local prom_def="" prom_ref=""
    if [[ "${OURS_PROM:-0}" == 1 ]]; then
        prom_def="  prometheus: { endpoint: \"127.0.0.1:$PROM_PORT\", bearer_token_file: $WORK/prom.token, rate_limit: { rate: 100, burst: 100 }, max_agent_series: 1000000 }"
        prom_ref=", prometheus"
    fi
    # With OURS_STORAGE=1 the tracker keeps its agents in a file_storage
    # extension, checkpointing every second (the `storage` scenario).
    local storage="" extensions="" service_extensions=""
    if [[ "${OURS_STORAGE:-0}" == 1 ]]; then
        rm -rf "$WORK/state"
        storage=", storage: file_storage, checkpoint_interval: 1s"
        extensions="extensions: { file_storage: { directory: $WORK/state } }"
        service_extensions="  extensions: [file_storage]"
    fi
    cat >"$1" <<EOF
receivers:
  vlp/bench: $2
processors:
  ratelimit: { per_agent_min_interval: "0", global_rate: 0 }
  tracker: { threshold: ${THRESHOLD_MS}ms, capacity: $3${OURS_TRACKER_EXTRA:-}$storage }
exporters:
  file: { path: $5, beats: $4 }
$prom_def
$extensions
service:
$service_extensions
  pipelines:
    liveness: { receivers: [vlp/bench], processors: [ratelimit, tracker], exporters: [file$prom_ref], queue_batches: 4096 }
  telemetry: { logs: { level: info, format: json } }
EOF
}

# receiver_yaml TRANSPORT → the vlp/bench receiver for our collector
receiver_yaml() {
    case $1 in
    uds) echo "{ transport: uds, path: $WORK/ours.sock, recv_buffer_bytes: 8388608 }" ;;
    udp) echo "{ transport: udp, endpoint: \"127.0.0.1:$UDP_PORT\", accept_unauthenticated: true, recv_buffer_bytes: 8388608 }" ;;
    secure-shared) echo "{ transport: secure_udp, endpoint: \"127.0.0.1:$UDP_PORT\", key_files: [$WORK/shared.key], recv_buffer_bytes: 8388608, max_senders: 1100000 }" ;;
    secure-master) echo "{ transport: secure_udp, endpoint: \"127.0.0.1:$UDP_PORT\", master_key_file: $WORK/master.key, recv_buffer_bytes: 8388608, max_senders: 1100000 }" ;;
    esac
}

# vw_transport_args TRANSPORT → varta-watch flags for that listener
vw_transport_args() {
    case $1 in
    uds) ;;
    udp) echo "--udp-port $UDP_PORT --udp-bind-addr 127.0.0.1 --i-accept-plaintext-udp" ;;
    secure-shared) echo "--udp-port $UDP_PORT --udp-bind-addr 127.0.0.1 --key-file $WORK/shared.key" ;;
    secure-master) echo "--udp-port $UDP_PORT --udp-bind-addr 127.0.0.1 --master-key-file $WORK/master.key" ;;
    esac
}

target_for() { # target_for IMPL TRANSPORT
    local sock=$1
    [[ $1 == ours* ]] && sock=ours # ours-storage: the same collector binary and socket
    if [[ $2 == uds ]]; then echo "$WORK/$sock.sock"; else echo "127.0.0.1:$UDP_PORT"; fi
}

key_for() {
    case $1 in
    secure-shared) echo "--key-file $WORK/shared.key" ;;
    secure-master) echo "--key-file $WORK/master.key" ;;
    esac
}

CPID=
# start_ours TRANSPORT CAPACITY BEATS EVENTS
start_ours() {
    rm -f "$WORK/ours.sock" "$4"
    ours_config "$WORK/ours.yaml" "$(receiver_yaml "$1")" "$2" "$3" "$4"
    "$COLL" --config "$WORK/ours.yaml" 2>"$WORK/ours.log" &
    CPID=$!
    CHILDREN+=("$CPID")
    wait_for 20 grep -q '"collector started"' "$WORK/ours.log" || { cat "$WORK/ours.log" >&2; return 1; }
}

stop_ours() {
    kill -TERM "$CPID"
    wait "$CPID" || true
    "$TOOL" stats --log "$WORK/ours.log" >"$WORK/ours.stats"
}

# ours_stat NAME-REGEX [COMPONENT-REGEX] → sum of matching counters
ours_stat() {
    awk -F'\t' -v n="$1" -v c="${2:-.}" '$2 ~ n && $1 ~ c { s += $4 } END { print s + 0 }' "$WORK/ours.stats"
}

# start_vw TRANSPORT READ_TIMEOUT_MS EXTRA_ARGS…
start_vw() {
    local transport=$1 rt=$2
    shift 2
    rm -f "$WORK/vw.sock"
    # shellcheck disable=SC2046
    "$VW" --socket "$WORK/vw.sock" --threshold-ms "$THRESHOLD_MS" --tracker-capacity 4096 \
        --max-beat-rate 0 --global-beat-rate 0 --read-timeout-ms "$rt" --uds-rcvbuf-bytes 8388608 \
        --prom-addr "127.0.0.1:$PROM_PORT" --prom-token-file "$WORK/prom.token" \
        $(vw_transport_args "$transport") "$@" >"$WORK/vw.out" 2>"$WORK/vw.log" &
    CPID=$!
    CHILDREN+=("$CPID")
    wait_for 20 test -S "$WORK/vw.sock" || { cat "$WORK/vw.log" >&2; return 1; }
    sleep 0.2
}

stop_vw() {
    curl -s --max-time 5 -H "Authorization: Bearer $(cat "$WORK/prom.token")" \
        "http://127.0.0.1:$PROM_PORT/metrics" >"$WORK/vw.metrics" || true
    kill -TERM "$CPID"
    wait "$CPID" || true
    "$TOOL" prom --file "$WORK/vw.metrics" >"$WORK/vw.stats"
}

vw_stat() { awk -F'\t' -v n="$1" '$1 ~ n { s += $2 } END { printf "%d\n", s + 0 }' "$WORK/vw.stats"; }

json() { "$TOOL" json --file "$1" --key "$2"; }
med() { "$TOOL" median "$@"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0 || a == "nan" || b == "nan") print "–"; else printf "%.2f×\n", a / b }'; }

# col FILE KEY-COLS… VALUE-COL → values of VALUE-COL in rows whose first columns match
col() {
    local file=$1 a=$2 b=$3 c=$4
    awk -F'\t' -v a="$a" -v b="$b" -v c="$c" '$1 == a && $2 == b && $3 != "paced" { print $c }' "$file"
}

header() { # header SCENARIO TITLE
    {
        echo "### $2"
        echo
        echo "Machine: $(nproc) cores, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo), Linux $(uname -r)."
        echo "Command: \`bench/run.sh $1\` (REPS=$REPS; medians of alternating runs). $(date -u +%Y-%m-%dT%H:%MZ)."
        echo
    } >"$RESULTS/$1.md"
}

# ---------------------------------------------------------------- ingest

ingest_once() { # ingest_once IMPL TRANSPORT REP [RATE]
    local impl=$1 t=$2 rep=$3 rate=${4:-0} agents=1000 k0 k1 rep_json=$WORK/load.json on_full=drop
    # UDS: two blocking senders (back-pressure, nothing dropped), as an agent SDK would send.
    [[ $t == uds ]] && agents=2 && on_full=wait
    k0=$(udp_rcvbuf_errors)
    case $impl in
    ours) OURS_STORAGE=0 start_ours "$t" 1000000 false "$WORK/ours.events" ;;
    ours-storage) OURS_STORAGE=1 start_ours "$t" 1000000 false "$WORK/ours.events" ;;
    *) start_vw "$t" "$VW_READ_TIMEOUT_MS" ;;
    esac
    local c0 c1
    c0=$(cpu_ns "$CPID")
    # shellcheck disable=SC2046
    "$LOAD" --transport "$t" --target "$(target_for "$impl" "$t")" --agents "$agents" --rate "$rate" --on-full "$on_full" \
        --duration "${INGEST_SECS}s" --report "$rep_json" $(key_for "$t") 2>>"$WORK/load.log"
    sleep 0.5
    c1=$(cpu_ns "$CPID")
    local accepted counted
    if [[ $impl == ours* ]]; then
        stop_ours
        accepted=$(ours_stat '^beats_accepted$' pipelines)
        counted=$(ours_stat 'full|drop|refus|limited|capacity|decode|auth|replay|mismatch|conflict|stale|evict' '.')
    else
        stop_vw
        accepted=$(vw_stat '^varta_beats_total$')
        counted=$(vw_stat 'rate_limited_total|capacity_exceeded|decode_errors_total|auth_failures|decrypt_failures|truncated|replay|nonce|conflict|cross_namespace|pid_above|dropped')
    fi
    k1=$(udp_rcvbuf_errors)
    local sent eagain secs kernel unacc
    sent=$(json "$rep_json" sent)
    eagain=$(json "$rep_json" refused)
    secs=$(json "$rep_json" duration_s)
    kernel=$((k1 - k0))
    unacc=$((sent - accepted - counted - kernel))
    printf '%s\t%s\t%s\t%.0f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$impl" "$rep" \
        "$(awk -v a="$accepted" -v s="$secs" 'BEGIN { print a / s }')" \
        "$sent" "$accepted" "$eagain" "$kernel" "$counted" "$unacc" \
        "$(awk -v d=$((c1 - c0)) -v s="$secs" 'BEGIN { printf "%.1f", 100 * d / 1e9 / s }')" \
        "$(awk -v d=$((c1 - c0)) -v a="$accepted" 'BEGIN { if (a > 0) printf "%.0f", d / a; else print "nan" }')" \
        >>"${INGEST_TSV:-$RESULTS/ingest.tsv}"
    log "ingest $t $impl rep $rep: accepted=$accepted sent=$sent eagain=$eagain kernel_drops=$kernel counted=$counted unaccounted=$unacc"
}

scenario_ingest() {
    printf 'transport\timpl\trep\taccepted_per_s\tsent\taccepted\tsender_eagain\tkernel_drops\tcollector_drops\tunaccounted\tcollector_cpu_percent\tcpu_ns_per_beat\n' >"$RESULTS/ingest.tsv"
    local t rep
    for t in uds udp secure-shared secure-master; do
        for rep in $(seq "$REPS"); do
            ingest_once ours "$t" "$rep"
            ingest_once vw "$t" "$rep"
        done
        # Sustained check: ours paced at 90 % of its flat-out median must lose nothing.
        ingest_once ours "$t" paced "$(awk -v m="$(med $(col "$RESULTS/ingest.tsv" "$t" ours 4))" 'BEGIN { printf "%.0f", 0.9 * m }')"
    done
    header ingest "Ingest: flat-out senders, ${INGEST_SECS}s per run"
    {
        echo "Accepted beats/s = beats the collector accepted into its tracker ÷ send time (flat-out sender;"
        echo "UDS: 2 blocking sender processes, UDP/secure: 1 process simulating 1,000 agents, 64 frames per sendmmsg)."
        echo "Loss columns are medians per run: sender-seen EAGAIN (UDS), kernel UDP RcvbufErrors, collector-counted drops,"
        echo "and *unaccounted* = sent − accepted − kernel drops − collector drops (must be ≈ 0)."
        echo
        echo "*paced 90 %* = one more run of ours at 90 % of its median, sent / accepted / kernel drops (0 drops = sustainable)."
        echo "*CPU* = collector CPU time (all threads, schedstat) during the run as % of one core, and per accepted beat."
        echo
        echo "| transport | ours (beats/s) | varta-watch (beats/s) | ratio | ours CPU %, ns/beat | varta-watch CPU %, ns/beat | ours: EAGAIN / kernel / unaccounted | varta-watch: EAGAIN / kernel / unaccounted | ours paced 90 %: sent / accepted / kernel |"
        echo "|---|---:|---:|---:|---:|---:|---|---|---|"
        for t in uds udp secure-shared secure-master; do
            local o v
            o=$(med $(col "$RESULTS/ingest.tsv" "$t" ours 4))
            v=$(med $(col "$RESULTS/ingest.tsv" "$t" vw 4))
            printf '| %s | %.0f | %.0f | %s | %s %%, %s | %s %%, %s | %.0f / %.0f / %.0f | %.0f / %.0f / %.0f | %s |\n' "$t" "$o" "$v" "$(ratio "$o" "$v")" \
                "$(med $(col "$RESULTS/ingest.tsv" "$t" ours 11))" "$(med $(col "$RESULTS/ingest.tsv" "$t" ours 12))" \
                "$(med $(col "$RESULTS/ingest.tsv" "$t" vw 11))" "$(med $(col "$RESULTS/ingest.tsv" "$t" vw 12))" \
                "$(med $(col "$RESULTS/ingest.tsv" "$t" ours 7))" "$(med $(col "$RESULTS/ingest.tsv" "$t" ours 8))" \
                "$(med $(col "$RESULTS/ingest.tsv" "$t" ours 10))" \
                "$(med $(col "$RESULTS/ingest.tsv" "$t" vw 7))" "$(med $(col "$RESULTS/ingest.tsv" "$t" vw 8))" \
                "$(med $(col "$RESULTS/ingest.tsv" "$t" vw 10))" \
                "$(awk -F'\t' -v t="$t" '$1 == t && $3 == "paced" { printf "%s / %s / %s", $5, $6, $8 }' "$RESULTS/ingest.tsv")"
        done
    } >>"$RESULTS/ingest.md"
}

# ---------------------------------------------------------------- storage

# The per-beat cost of keeping agents across restarts: ours flat out with
# and without a file_storage checkpoint every second, alternating.
scenario_storage() {
    printf 'transport\timpl\trep\taccepted_per_s\tsent\taccepted\tsender_eagain\tkernel_drops\tcollector_drops\tunaccounted\tcollector_cpu_percent\tcpu_ns_per_beat\n' >"$RESULTS/storage.tsv"
    local t rep
    for t in uds udp; do
        for rep in $(seq "$REPS"); do
            INGEST_TSV=$RESULTS/storage.tsv ingest_once ours "$t" "$rep"
            INGEST_TSV=$RESULTS/storage.tsv ingest_once ours-storage "$t" "$rep"
        done
    done
    header storage "Storage: per-beat cost with a checkpoint every second, ${INGEST_SECS}s per run"
    {
        echo "Ours flat out (as in *ingest*), without and with \`storage: file_storage\`, \`checkpoint_interval: 1s\`."
        echo
        echo "| transport | without (beats/s) | with (beats/s) | with/without | without: ns/beat | with: ns/beat | with/without |"
        echo "|---|---:|---:|---:|---:|---:|---:|"
        for t in uds udp; do
            local a b na nb
            a=$(med $(col "$RESULTS/storage.tsv" "$t" ours 4))
            b=$(med $(col "$RESULTS/storage.tsv" "$t" ours-storage 4))
            na=$(med $(col "$RESULTS/storage.tsv" "$t" ours 12))
            nb=$(med $(col "$RESULTS/storage.tsv" "$t" ours-storage 12))
            printf '| %s | %.0f | %.0f | %s | %s | %s | %s |\n' "$t" "$a" "$b" "$(ratio "$b" "$a")" "$na" "$nb" "$(ratio "$nb" "$na")"
        done
    } >>"$RESULTS/storage.md"
}

# ---------------------------------------------------------------- stall latency

stall_once() { # stall_once IMPL CASE TRANSPORT AGENTS INTERVAL REP
    local impl=$1 case=$2 t=$3 agents=$4 interval=$5 rep=$6 ev k0 k1
    k0=$(udp_rcvbuf_errors)
    if [[ $impl == ours ]]; then
        ev=$WORK/ours.events
        start_ours "$t" 1100000 false "$ev"
    else
        ev=$WORK/vw.events
        rm -f "$ev"
        start_vw "$t" "$VW_READ_TIMEOUT_MS" --export-file "$ev"
    fi
    "$LOAD" --transport "$t" --target "$(target_for "$impl" "$t")" --agents "$agents" --interval "$interval" \
        --duration $((2500 + 2 * THRESHOLD_MS))ms --stop-fraction 0.1 --stop-after 2s --report "$WORK/load.json" 2>>"$WORK/load.log"
    if [[ $impl == ours ]]; then stop_ours; else stop_vw; fi
    k1=$(udp_rcvbuf_errors)
    local s
    s=$("$TOOL" stall --report "$WORK/load.json" --events "$ev" --threshold "${THRESHOLD_MS}ms")
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$case" "$impl" "$rep" "$s" "$(json "$WORK/load.json" achieved_rate)" \
        "$((k1 - k0))" >>"$RESULTS/stall-latency.tsv"
    log "stall $case $impl rep $rep: $s"
}

# Per-agent deadlines: 100,000 UDP agents in four loads from 127.0.0.1–4,
# whose thresholds differ by source rule (2 s default, 1.5 s, 2.5 s, 3 s).
# Lateness is measured against each stall line's own threshold. The agents
# beat every $STALL_MIXED_INTERVAL (1 s: 100,000 beats/s, well inside what
# the collector ingests over UDP here), so that what is measured is the
# scheduler, not a backlog: at 100 ms four senders on two cores outrun the
# collector, beats wait in the socket buffer and every stall is "late" by
# that queue (see BENCHMARKS.md, per-agent deadlines).
stall_mixed_once() { # stall_mixed_once REP
    local rep=$1 ev=$WORK/ours.events k0 k1 i pids=() reports=()
    k0=$(udp_rcvbuf_errors)
    THRESHOLD_MS=2000 OURS_TRACKER_EXTRA=", thresholds: [{ match: { source: 127.0.0.2 }, threshold: 1500ms }, { match: { source: 127.0.0.3 }, threshold: 2500ms }, { match: { source: 127.0.0.4 }, threshold: 3s }]" \
        start_ours udp 1100000 "${MIXED_BEATS:-false}" "$ev"
    for i in 1 2 3 4; do
        "$LOAD" --transport udp --target "$(target_for ours udp)" --bind "127.0.0.$i" --pid-base $((i * 100000)) \
            --agents 25000 --interval "$STALL_MIXED_INTERVAL" --duration 6s --stop-fraction 0.1 --stop-after 2s \
            --report "$WORK/load$i.json" 2>>"$WORK/load.log" &
        pids+=($!)
        reports+=("$WORK/load$i.json")
    done
    wait "${pids[@]}"
    stop_ours
    k1=$(udp_rcvbuf_errors)
    local s rate=0
    s=$("$TOOL" stall --report "${reports[@]}" --events "$ev" --threshold 1s)
    for i in 1 2 3 4; do
        rate=$(awk -v a="$rate" -v b="$(json "$WORK/load$i.json" achieved_rate)" 'BEGIN { printf "%.0f", a + b }')
    done
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' udp-100000-mixed ours "$rep" "$s" "$rate" "$((k1 - k0))" >>"$RESULTS/stall-latency.tsv"
    log "stall udp-100000-mixed ours rep $rep: $s"
}

# Whether STALL_CASES (default: every case) includes case $1.
stall_case() { [[ " ${STALL_CASES:-uds-256 udp-4096 udp-100000 udp-100000-mixed} " == *" $1 "* ]]; }

scenario_stall_latency() {
    printf 'case\timpl\trep\tstopped\tdetected\tfalse_stalls\tmin_us\tp50_us\tp99_us\tmax_us\torigin_ns\tsent_per_s\tkernel_drops\n' \
        >"$RESULTS/stall-latency.tsv"
    local rep
    for rep in $(seq "$REPS"); do
        if stall_case uds-256; then
            stall_once ours uds-256 uds 256 100ms "$rep"
            stall_once vw uds-256 uds 256 100ms "$rep"
        fi
        if stall_case udp-4096; then
            stall_once ours udp-4096 udp 4096 100ms "$rep"
            stall_once vw udp-4096 udp 4096 100ms "$rep"
        fi
        stall_case udp-100000 && stall_once ours udp-100000 udp 100000 "$STALL_BIG_INTERVAL" "$rep"
        stall_case udp-100000-mixed && stall_mixed_once "$rep"
    done
    header stall-latency "Stall detection latency (threshold 1 s, 10 % of agents stopped)"
    {
        echo "latency = stall event observer_ns − (CLOCK_MONOTONIC just before the sendmmsg carrying the last beat + its threshold), per stopped agent;"
        echo "udp-100000-mixed: four loads of 25,000 agents from 127.0.0.1–4 under thresholds of 2 s, 1.5 s, 2.5 s and 3 s (rules on source), beating every $STALL_MIXED_INTERVAL."
        echo "agents beat every 100 ms (udp-100000: every $STALL_BIG_INTERVAL). uds-256 uses 256 real sender processes."
        echo "varta-watch's event file counts from its own start; its origin is calibrated from its beat lines (see bench/src/analysis.rs)."
        echo "*false* = stall events for agents that never stopped (beats lost), *kernel* = UDP RcvbufErrors during the run."
        echo
        echo "| case | impl | detected/stopped | p50 (ms) | p99 (ms) | max (ms) | false stalls | kernel drops |"
        echo "|---|---|---:|---:|---:|---:|---:|---:|"
        local c i
        for c in uds-256 udp-4096 udp-100000 udp-100000-mixed; do
            for i in ours vw; do
                [[ -z "$(col "$RESULTS/stall-latency.tsv" "$c" "$i" 4)" ]] && continue
                printf '| %s | %s | %s/%s | %s | %s | %s | %s | %s |\n' "$c" "$([[ $i == vw ]] && echo varta-watch || echo ours)" \
                    "$(med $(col "$RESULTS/stall-latency.tsv" "$c" "$i" 5))" "$(med $(col "$RESULTS/stall-latency.tsv" "$c" "$i" 4))" \
                    "$(awk -v x="$(med $(col "$RESULTS/stall-latency.tsv" "$c" "$i" 8))" 'BEGIN { printf "%.3f", x / 1000 }')" \
                    "$(awk -v x="$(med $(col "$RESULTS/stall-latency.tsv" "$c" "$i" 9))" 'BEGIN { printf "%.3f", x / 1000 }')" \
                    "$(awk -v x="$(med $(col "$RESULTS/stall-latency.tsv" "$c" "$i" 10))" 'BEGIN { printf "%.3f", x / 1000 }')" \
                    "$(med $(col "$RESULTS/stall-latency.tsv" "$c" "$i" 6))" "$(med $(col "$RESULTS/stall-latency.tsv" "$c" "$i" 13))"
            done
        done
    } >>"$RESULTS/stall-latency.md"
}

# ---------------------------------------------------------------- fleet

scenario_fleet() {
    printf 'metric\tvalue\n' >"$RESULTS/fleet.tsv"
    log "fleet: 100,000 agents at 1 beat/s for ${FLEET_SECS}s (ours; varta-watch tracks at most 4,096)"
    THRESHOLD_MS=5000
    local k0 t0 t1 k1
    k0=$(udp_rcvbuf_errors)
    start_ours udp 1100000 false "$WORK/ours.events"
    t0=$(cpu_ns "$CPID")
    "$LOAD" --transport udp --target "127.0.0.1:$UDP_PORT" --agents 100000 --interval 1s \
        --duration "${FLEET_SECS}s" --report "$WORK/load.json" 2>>"$WORK/load.log"
    t1=$(cpu_ns "$CPID")
    local hwm
    hwm=$(status_kb "$CPID" VmHWM)
    stop_ours
    k1=$(udp_rcvbuf_errors)
    local secs cpu
    secs=$(json "$WORK/load.json" duration_s)
    cpu=$(awk -v d=$((t1 - t0)) -v s="$secs" 'BEGIN { printf "%.2f", 100 * d / 1e9 / s }')
    {
        printf 'fleet_cpu_percent\t%s\n' "$cpu"
        printf 'fleet_peak_rss_kib\t%s\n' "$hwm"
        printf 'fleet_sent\t%s\n' "$(json "$WORK/load.json" sent)"
        printf 'fleet_accepted\t%s\n' "$(ours_stat '^beats_accepted$' pipelines)"
        printf 'fleet_stalls\t%s\n' "$(ours_stat '^stalls$' pipelines)"
        printf 'fleet_kernel_drops\t%s\n' "$((k1 - k0))"
    } >>"$RESULTS/fleet.tsv"

    log "fleet: 1,000,000 agents tracked (memory per agent)"
    start_ours udp 1100000 false "$WORK/ours.events"
    sleep 1
    local before after n
    before=$(status_kb "$CPID" VmRSS)
    "$LOAD" --transport udp --target "127.0.0.1:$UDP_PORT" --agents 1000000 --rate 200000 \
        --duration 5500ms --report "$WORK/load.json" 2>>"$WORK/load.log"
    sleep 1
    after=$(status_kb "$CPID" VmRSS)
    hwm=$(status_kb "$CPID" VmHWM)
    stop_ours
    n=$(ours_stat '^agents_tracked$' pipelines)
    {
        printf 'million_rss_before_kib\t%s\n' "$before"
        printf 'million_rss_after_kib\t%s\n' "$after"
        printf 'million_peak_rss_kib\t%s\n' "$hwm"
        printf 'million_agents_tracked\t%s\n' "$n"
        printf 'million_bytes_per_agent\t%s\n' "$(awk -v a="$after" -v b="$before" -v n="$n" 'BEGIN { if (n > 0) printf "%.0f", (a - b) * 1024 / n; else print "nan" }')"
    } >>"$RESULTS/fleet.tsv"
    THRESHOLD_MS=${STALL_THRESHOLD_MS:-1000}

    header fleet "Fleet: 100,000 agents at 1 beat/s; 1,000,000 agents tracked"
    {
        echo "varta-watch cannot take part: its tracker holds at most 4,096 agents (\"shard above 4,096\")."
        echo
        echo "| metric | ours | varta-watch |"
        echo "|---|---:|---|"
        awk -F'\t' 'NR > 1 { printf "| %s | %s | n/a |\n", $1, $2 }' "$RESULTS/fleet.tsv"
    } >>"$RESULTS/fleet.md"
}

# ---------------------------------------------------------------- scrape

# scrape_loop → scrapes the endpoint on $PROM_PORT once a second until killed
scrape_loop() {
    while :; do
        curl -s --max-time 5 -H "Authorization: Bearer $(cat "$WORK/prom.token")" \
            "http://127.0.0.1:$PROM_PORT/metrics" -o /dev/null || true
        sleep 1
    done
}

# scrape_ingest_once IMPL MODE TRANSPORT REP — MODE: off (no endpoint; ours only), idle (endpoint, never
# scraped), scraped (endpoint scraped every second)
scrape_ingest_once() {
    local impl=$1 mode=$2 t=$3 rep=$4 agents=1000 on_full=drop sp=
    [[ $t == uds ]] && agents=2 && on_full=wait
    if [[ $impl == ours ]]; then
        OURS_PROM=$([[ $mode == off ]] && echo 0 || echo 1) start_ours "$t" 1000000 false "$WORK/ours.events"
    else
        start_vw "$t" "$VW_READ_TIMEOUT_MS"
    fi
    if [[ $mode == scraped ]]; then
        scrape_loop &
        sp=$!
        CHILDREN+=("$sp")
    fi
    # shellcheck disable=SC2046
    "$LOAD" --transport "$t" --target "$(target_for "$impl" "$t")" --agents "$agents" --on-full "$on_full" \
        --duration "${INGEST_SECS}s" --report "$WORK/load.json" $(key_for "$t") 2>>"$WORK/load.log"
    if [[ -n $sp ]]; then kill "$sp" 2>/dev/null || true; fi
    sleep 0.5
    local accepted
    if [[ $impl == ours ]]; then
        stop_ours
        accepted=$(ours_stat '^beats_accepted$' pipelines)
    else
        stop_vw
        accepted=$(vw_stat '^varta_beats_total$')
    fi
    printf '%s\t%s\t%s\t%s\t%.0f\n' "$t" "$impl" "$mode" "$rep" \
        "$(awk -v a="$accepted" -v s="$(json "$WORK/load.json" duration_s)" 'BEGIN { print a / s }')" >>"$RESULTS/scrape.tsv"
    log "scrape-ingest $t $impl $mode rep $rep: accepted=$accepted"
}

# scrape_size_once IMPL AGENTS — scrape latency and body size with AGENTS tracked (1 beat/s each)
scrape_size_once() {
    local impl=$1 n=$2 tok lp
    tok="Authorization: Bearer $(cat "$WORK/prom.token")"
    THRESHOLD_MS=5000
    if [[ $impl == ours ]]; then
        OURS_PROM=1 start_ours udp 1100000 false "$WORK/ours.events"
    else
        start_vw udp "$VW_READ_TIMEOUT_MS"
    fi
    "$LOAD" --transport udp --target "127.0.0.1:$UDP_PORT" --agents "$n" --interval 1s \
        --duration 16s --report "$WORK/load.json" 2>>"$WORK/load.log" &
    lp=$!
    sleep 6
    local i
    for i in 1 2 3 4 5 6 7; do
        curl -s --max-time 30 -H "$tok" "http://127.0.0.1:$PROM_PORT/metrics" -o /dev/null \
            -w "$impl\t$n\tplain\t%{time_total}\t%{size_download}\n" >>"$RESULTS/scrape-size.tsv"
        curl -s --max-time 30 -H "$tok" -H 'Accept-Encoding: gzip' "http://127.0.0.1:$PROM_PORT/metrics" -o /dev/null \
            -w "$impl\t$n\tgzip\t%{time_total}\t%{size_download}\n" >>"$RESULTS/scrape-size.tsv"
        sleep 0.5
    done
    wait "$lp" || true
    local tracked
    if [[ $impl == ours ]]; then
        stop_ours
        tracked=$(ours_stat '^agents_tracked$' pipelines)
    else
        stop_vw
        tracked=$(vw_stat '^varta_watch_pids_tracked$')
    fi
    printf '%s\t%s\ttracked\t%s\t0\n' "$impl" "$n" "$tracked" >>"$RESULTS/scrape-size.tsv"
    THRESHOLD_MS=${STALL_THRESHOLD_MS:-1000}
}

# scrape_col T IMPL MODE → accepted/s values of that row set
scrape_col() { awk -F'\t' -v t="$1" -v i="$2" -v m="$3" '$1 == t && $2 == i && $3 == m { print $5 }' "$RESULTS/scrape.tsv"; }
# size_col IMPL N ENC FIELD(4 ms | 5 bytes)
size_col() {
    awk -F'\t' -v i="$1" -v n="$2" -v e="$3" -v f="$4" '$1 == i && $2 == n && $3 == e { print (f == 4 ? $4 * 1000 : $5) }' \
        "$RESULTS/scrape-size.tsv"
}

scenario_scrape() {
    printf 'transport\timpl\tmode\trep\taccepted_per_s\n' >"$RESULTS/scrape.tsv"
    printf 'impl\tagents\tencoding\tseconds\tbytes\n' >"$RESULTS/scrape-size.tsv"
    local t rep n impl
    for t in uds udp; do
        for rep in $(seq "$REPS"); do
            scrape_ingest_once ours off "$t" "$rep"
            scrape_ingest_once ours idle "$t" "$rep"
            scrape_ingest_once ours scraped "$t" "$rep"
            scrape_ingest_once vw idle "$t" "$rep"
            scrape_ingest_once vw scraped "$t" "$rep"
        done
    done
    for n in 10000 100000; do
        scrape_size_once ours "$n"
        scrape_size_once vw "$n"
    done
    header scrape "Prometheus endpoint: ingest while scraped, scrape latency and size"
    {
        echo "Ingest: flat-out senders for ${INGEST_SECS}s (as in the ingest scenario); *off* = ours without a"
        echo "prometheus exporter, *idle* = endpoint configured but never scraped, *scraped* = scraped once a second"
        echo "(curl, bearer token, every agent's series). varta-watch always runs its endpoint."
        echo
        echo "| transport | ours off | ours idle | ours scraped | scraped vs off | varta-watch idle | varta-watch scraped | scraped vs idle |"
        echo "|---|---:|---:|---:|---:|---:|---:|---:|"
        for t in uds udp; do
            local off idle scr vi vs
            off=$(med $(scrape_col "$t" ours off))
            idle=$(med $(scrape_col "$t" ours idle))
            scr=$(med $(scrape_col "$t" ours scraped))
            vi=$(med $(scrape_col "$t" vw idle))
            vs=$(med $(scrape_col "$t" vw scraped))
            printf '| %s | %.0f | %.0f | %.0f | %s | %.0f | %.0f | %s |\n' "$t" "$off" "$idle" "$scr" "$(ratio "$scr" "$off")" \
                "$vi" "$vs" "$(ratio "$vs" "$vi")"
        done
        echo
        echo "Scrape latency (curl time_total, median of 7) and body size with N simulated agents beating once a second"
        echo "over UDP (varta-watch tracks at most 4,096 agents; its rows show what it serves at that cap)."
        echo
        echo "| agents sent | impl | agents tracked | plain: latency, size | gzip: latency, size |"
        echo "|---:|---|---:|---|---|"
        for n in 10000 100000; do
            for impl in ours vw; do
                printf '| %s | %s | %s | %.1f ms, %.0f B | %.1f ms, %.0f B |\n' "$n" "$impl" \
                    "$(awk -F'\t' -v i="$impl" -v n="$n" '$1 == i && $2 == n && $3 == "tracked" { print $4 }' "$RESULTS/scrape-size.tsv")" \
                    "$(med $(size_col "$impl" "$n" plain 4))" "$(med $(size_col "$impl" "$n" plain 5))" \
                    "$(med $(size_col "$impl" "$n" gzip 4))" "$(med $(size_col "$impl" "$n" gzip 5))"
            done
        done
    } >>"$RESULTS/scrape.md"
}

# ---------------------------------------------------------------- idle

idle_once() { # idle_once IMPL REP
    local impl=$1 rep=$2 t0 t1
    if [[ $impl == ours ]]; then start_ours uds 1000000 false "$WORK/ours.events"; else start_vw uds 100; fi
    t0=$(cpu_ns "$CPID")
    "$LOAD" --transport uds --target "$(target_for "$impl" uds)" --agents 50 --interval 1s \
        --duration "${IDLE_SECS}s" --report "$WORK/load.json" 2>>"$WORK/load.log"
    t1=$(cpu_ns "$CPID")
    if [[ $impl == ours ]]; then stop_ours; else stop_vw; fi
    local secs
    secs=$(json "$WORK/load.json" duration_s)
    printf 'idle\t%s\t%s\t%s\t%s\t%s\n' "$impl" "$rep" "$(awk -v d=$((t1 - t0)) 'BEGIN { printf "%.2f", d / 1e6 }')" \
        "$(awk -v d=$((t1 - t0)) -v s="$secs" 'BEGIN { printf "%.4f", 100 * d / 1e9 / s }')" \
        "$(json "$WORK/load.json" sent)" >>"$RESULTS/idle.tsv"
    log "idle $impl rep $rep: $(((t1 - t0) / 1000000)) ms CPU in ${secs}s"
}

scenario_idle() {
    THRESHOLD_MS=5000
    printf 'case\timpl\trep\tcpu_ms\tcpu_percent\tsent\n' >"$RESULTS/idle.tsv"
    local rep
    for rep in $(seq "$IDLE_REPS"); do
        idle_once ours "$rep"
        idle_once vw "$rep"
    done
    header idle "Idle: 50 agents (real processes, UDS) at 1 beat/s for ${IDLE_SECS}s"
    {
        echo "Collector CPU time (sum of /proc/<pid>/task/*/schedstat run time, ns resolution); threshold 5 s."
        echo "varta-watch runs with its default 100 ms poll timeout here (its published idle figure is 0.0552 %)."
        echo
        echo "| metric | ours | varta-watch | ratio |"
        echo "|---|---:|---:|---:|"
        local o v
        o=$(med $(col "$RESULTS/idle.tsv" idle ours 4))
        v=$(med $(col "$RESULTS/idle.tsv" idle vw 4))
        printf '| CPU time (ms) | %s | %s | %s |\n' "$o" "$v" "$(ratio "$o" "$v")"
        o=$(med $(col "$RESULTS/idle.tsv" idle ours 5))
        v=$(med $(col "$RESULTS/idle.tsv" idle vw 5))
        printf '| CPU %% | %s | %s | %s |\n' "$o" "$v" "$(ratio "$o" "$v")"
    } >>"$RESULTS/idle.md"
    THRESHOLD_MS=${STALL_THRESHOLD_MS:-1000}
}

# ---------------------------------------------------------------- profile (optional)

scenario_profile() {
    command -v perf >/dev/null || { log "perf not installed (Debian: linux-perf)"; return 0; }
    local t=${PROFILE_TRANSPORT:-udp}
    start_ours "$t" 1000000 false "$WORK/ours.events"
    # cpu-clock: hardware counters are often unavailable in VMs.
    perf record -e cpu-clock -F 1999 -p "$CPID" -o "$WORK/perf.data" -- sleep 4 2>/dev/null &
    local pp=$!
    CHILDREN+=("$pp")
    # shellcheck disable=SC2046
    local agents=1000 on_full=drop
    [[ $t == uds ]] && agents=2 && on_full=wait
    "$LOAD" --transport "$t" --target "$(target_for ours "$t")" --agents "$agents" --on-full "$on_full" --rate 0 \
        --duration 5s $(key_for "$t") 2>>"$WORK/load.log"
    wait "$pp" || true
    stop_ours
    {
        echo "### Profile: $t ingest, flat out (perf record -e cpu-clock on the collector, self time)"
        echo
        echo '```'
        # (|| true: head closing the pipe early must not trip pipefail)
        perf report -i "$WORK/perf.data" --sort comm --stdio 2>/dev/null | grep -E '^ +[0-9.]+%' | head -8 || true
        echo
        perf report -i "$WORK/perf.data" --sort symbol --stdio 2>/dev/null | grep -E '^ +[0-9.]+%' | head -30 || true
        echo '```'
    } >"$RESULTS/profile-$t.md"
    cp "$RESULTS/profile-$t.md" "$RESULTS/profile.md"
}

# ---------------------------------------------------------------- main

main() {
    local scenarios=("$@")
    ((${#scenarios[@]})) || scenarios=(ingest stall-latency fleet idle)
    for s in "${scenarios[@]}"; do
        case $s in
        ingest | storage | stall-latency | fleet | idle | profile | scrape) ;;
        *)
            echo "unknown scenario: $s (ingest, storage, stall-latency, fleet, idle, scrape, profile)" >&2
            exit 2
            ;;
        esac
    done
    mkdir -p "$RESULTS"
    build
    find_varta_watch
    make_secret "$WORK/shared.key"
    make_secret "$WORK/master.key"
    make_secret "$WORK/prom.token"
    for s in "${scenarios[@]}"; do
        log "scenario $s"
        case $s in
        ingest) scenario_ingest ;;
        storage) scenario_storage ;;
        stall-latency) scenario_stall_latency ;;
        fleet) scenario_fleet ;;
        idle) scenario_idle ;;
        profile) scenario_profile ;;
        scrape) scenario_scrape ;;
        esac
        echo
        cat "$RESULTS/$s.md"
        echo
    done
}

main "$@"
