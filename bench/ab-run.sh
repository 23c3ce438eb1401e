#!/usr/bin/env bash
# A/B of two collector builds with bench/run.sh's own scenarios:
#
#   bench/ab-run.sh BASE_REV [SCENARIO...]      (default: ingest stall-latency)
#
# Builds BASE_REV in a temporary worktree and the working tree (release),
# then runs bench/run.sh ROUNDS [3] times per build, alternating base and
# new, REPS=1 per run (each run keeps varta-watch beside it as run.sh
# does). Raw results land in bench/results/ab/<base|new>-<round>/. Prints,
# per ingest transport, the best accepted beats/s and the least collector
# CPU per beat of each build, and per stall case the best p50 and p99
# lateness; "new/base" is the ratio (ingest: > 1 is faster; latency and
# CPU: < 1 is better). Best of the rounds, since the machine is noisy.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE=${1:?usage: bench/ab-run.sh BASE_REV [SCENARIO...]}
shift
if [[ $# -gt 0 ]]; then SCENARIOS=("$@"); else SCENARIOS=(ingest stall-latency); fi
ROUNDS=${ROUNDS:-3}
OUT=$ROOT/bench/results/ab
WT=$(mktemp -d)
cleanup() { git -C "$ROOT" worktree remove --force "$WT/tree" >/dev/null 2>&1 || true; rm -rf "$WT"; }
trap cleanup EXIT
git -C "$ROOT" worktree add -q "$WT/tree" "$BASE"
# BASE_TARGET keeps the base build between runs (a cargo target directory).
BASE_TARGET=${BASE_TARGET:-$WT/target}
(cd "$WT/tree" && CARGO_TARGET_DIR="$BASE_TARGET" cargo build -q --release --locked -p varta-collector -p varta-bench)
(cd "$ROOT" && cargo build -q --release --locked -p varta-collector -p varta-bench)
rm -rf "$OUT"
mkdir -p "$OUT"
for round in $(seq "$ROUNDS"); do
    for side in base new; do
        if [[ $side == base ]]; then bin=$BASE_TARGET/release; else bin=$ROOT/target/release; fi
        # The load generator and analysis tool are the working tree's for
        # both sides: only the collector differs.
        mkdir -p "$OUT/$side-$round" "$WT/bin-$side"
        cp "$bin/varta-collector" "$WT/bin-$side/"
        cp "$ROOT/target/release/varta-load" "$ROOT/target/release/varta-bench-tool" "$WT/bin-$side/"
        echo ">> round $round: $side" >&2
        REPS=1 SKIP_BUILD=1 BIN=$WT/bin-$side RESULTS=$OUT/$side-$round "$ROOT/bench/run.sh" "${SCENARIOS[@]}" >/dev/null
    done
done

best() { # best FILE_GLOB KEY_COLUMN KEY VALUE_COLUMN max|min
    awk -F'\t' -v k="$3" -v c="$4" -v how="$5" -v kc="$2" '
        FNR > 1 && $kc == k && $2 == "ours" && $3 != "paced" && $c != "nan" && $c != "" {
            if (n == 0 || (how == "max" && $c > b) || (how == "min" && $c < b)) b = $c; n++
        }
        END { if (n) print b; else print "nan" }' $1
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0 || a == "nan" || b == "nan") print "–"; else printf "%.3f\n", a / b }'; }

{
    echo "A/B against $BASE ($(git -C "$ROOT" rev-parse --short "$BASE")) — best of $ROUNDS alternating rounds, $(date -u +%F)"
    if [[ -f $OUT/new-1/ingest.tsv ]]; then
        echo
        echo "| ingest | base beats/s | new beats/s | new/base | base ns/beat | new ns/beat | new/base |"
        echo "|---|---:|---:|---:|---:|---:|---:|"
        for t in uds udp secure-shared secure-master; do
            b=$(best "$OUT/base-*/ingest.tsv" 1 "$t" 4 max) n=$(best "$OUT/new-*/ingest.tsv" 1 "$t" 4 max)
            bc=$(best "$OUT/base-*/ingest.tsv" 1 "$t" 12 min) nc=$(best "$OUT/new-*/ingest.tsv" 1 "$t" 12 min)
            echo "| $t | $b | $n | $(ratio "$n" "$b") | $bc | $nc | $(ratio "$nc" "$bc") |"
        done
    fi
    if [[ -f $OUT/new-1/stall-latency.tsv ]]; then
        echo
        echo "| stall case | base p50 (µs) | new p50 (µs) | new/base | base p99 (µs) | new p99 (µs) | new/base |"
        echo "|---|---:|---:|---:|---:|---:|---:|"
        for c in uds-256 udp-4096 udp-100000 udp-100000-mixed; do
            b=$(best "$OUT/base-*/stall-latency.tsv" 1 "$c" 8 min) n=$(best "$OUT/new-*/stall-latency.tsv" 1 "$c" 8 min)
            b9=$(best "$OUT/base-*/stall-latency.tsv" 1 "$c" 9 min) n9=$(best "$OUT/new-*/stall-latency.tsv" 1 "$c" 9 min)
            echo "| $c | $b | $n | $(ratio "$n" "$b") | $b9 | $n9 | $(ratio "$n9" "$b9") |"
        done
    fi
} | tee "$OUT/summary.md"
