#!/usr/bin/env bash
# Benchmark: `hcc convert` vs Python `onnx.save(onnx.load(path), out)` on the two ~500 MB models,
# and `hcc inspect` wall time; `cp` of the same file as the floor (the kernel's cost of writing
# that many bytes). Wall time and peak RSS from `/usr/bin/time -f '%e %M'`; REPS
# repetitions per tool, hcc and Python interleaved; medians; prints a markdown report.
#
# Usage: bash bench/convert.sh            (from the crate root; builds release first)
# Env:   HCC_MODELS   models folder (default ~/.cache/hcc-models), with venv/bin/python
#        REPS         repetitions (default 5)
#        MAX_LOAD     wait while the 1-minute load average is above this (default 1.0)
#        LOAD_TRIES   how many 60 s waits at most before measuring anyway (default 10)
#        NO_BUILD=1   use the existing target/release/hcc
#        BENCH_TMP    where outputs are written (default: a temp dir under /tmp; same disk
#                     for both tools)
set -euo pipefail

cd "$(dirname "$0")/.."
MODELS=${HCC_MODELS:-$HOME/.cache/hcc-models}
PY=$MODELS/venv/bin/python
REPS=${REPS:-5}
MAX_LOAD=${MAX_LOAD:-1.0}
LOAD_TRIES=${LOAD_TRIES:-10}
BENCH_MODELS=(smollm2-135m-f32.onnx gpt2-small-random.onnx)
HCC=target/release/hcc
TIME=/usr/bin/time

[ -x "$TIME" ] || { echo "error: $TIME (GNU time) is required" >&2; exit 1; }
[ -x "$PY" ] || { echo "error: judge venv python missing at $PY" >&2; exit 1; }
for m in "${BENCH_MODELS[@]}"; do
    [ -f "$MODELS/$m" ] || { echo "error: model $MODELS/$m missing (run ../shared/models/fetch.sh)" >&2; exit 1; }
done

if [ "${NO_BUILD:-0}" != 1 ]; then
    echo "building release..." >&2
    cargo build --release --quiet >&2
fi
[ -x "$HCC" ] || { echo "error: $HCC not built" >&2; exit 1; }

TMP=${BENCH_TMP:-$(mktemp -d /tmp/hcc-bench.XXXXXX)}
mkdir -p "$TMP"
trap 'rm -rf "$TMP"' EXIT

load1() { cut -d' ' -f1 /proc/loadavg; }
above() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a > b) }'; }

# Wait for a quiet machine.
tries=0
while above "$(load1)" "$MAX_LOAD" && [ "$tries" -lt "$LOAD_TRIES" ]; do
    echo "load $(load1) > $MAX_LOAD; waiting 60 s ($((tries + 1))/$LOAD_TRIES)" >&2
    sleep 60
    tries=$((tries + 1))
done
LOAD_START=$(uptime)

# Warm the page cache so that every timed run reads the input from memory.
for m in "${BENCH_MODELS[@]}"; do cat "$MODELS/$m" > /dev/null; done

# timed OUTFILE CMD... : appends "wall_s rss_kib" to OUTFILE; fails loudly if CMD fails.
timed() {
    local rec=$1; shift
    sync
    if ! "$TIME" -f '%e %M' -o "$TMP/t" "$@" > /dev/null 2> "$TMP/err"; then
        echo "error: command failed: $*" >&2; cat "$TMP/err" >&2; exit 1
    fi
    tail -n 1 "$TMP/t" >> "$rec"
}
median() { # FILE COLUMN
    sort -g -k"$2","$2" "$1" | awk -v c="$2" '{ v[NR] = $c } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
minmax() { sort -g -k"$2","$2" "$1" | awk -v c="$2" 'NR == 1 { lo = $c } { hi = $c } END { printf "%s–%s", lo, hi }'; }

PYSAVE='import sys, onnx; onnx.save(onnx.load(sys.argv[1]), sys.argv[2])'
for m in "${BENCH_MODELS[@]}"; do
    in=$MODELS/$m
    : > "$TMP/$m.hcc"; : > "$TMP/$m.py"; : > "$TMP/$m.insp"; : > "$TMP/$m.cp"
    for r in $(seq "$REPS"); do
        rm -f "$TMP/hcc.onnx" "$TMP/py.onnx" "$TMP/cp.onnx"
        timed "$TMP/$m.hcc" "$HCC" -q convert "$in" -o "$TMP/hcc.onnx"
        timed "$TMP/$m.py" "$PY" -c "$PYSAVE" "$in" "$TMP/py.onnx"
        timed "$TMP/$m.insp" "$HCC" inspect "$in"
        timed "$TMP/$m.cp" cp "$in" "$TMP/cp.onnx"
    done
    cmp -s "$in" "$TMP/hcc.onnx" && echo identical > "$TMP/$m.hcc.same" || echo DIFFERENT > "$TMP/$m.hcc.same"
    cmp -s "$in" "$TMP/py.onnx" && echo identical > "$TMP/$m.py.same" || echo different > "$TMP/$m.py.same"
    rm -f "$TMP/hcc.onnx" "$TMP/py.onnx" "$TMP/cp.onnx"
done
# Python's fixed cost: interpreter start + `import onnx`.
: > "$TMP/import"
for r in $(seq "$REPS"); do timed "$TMP/import" "$PY" -c 'import onnx'; done
LOAD_END=$(uptime)

echo "## hcc convert vs onnx.save(onnx.load()) — $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
echo "- machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM"
echo "- hcc: $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src 2>/dev/null || echo ' + uncommitted src changes'), $("$HCC" --version); python: $("$PY" -c 'import onnx, sys; print(sys.version.split()[0], "onnx", onnx.__version__)')"
echo "- load before: \`$LOAD_START\`"
echo "- load after:  \`$LOAD_END\`"
echo "- $REPS repetitions each, interleaved (hcc convert, python, hcc inspect, cp); input in page cache; \`sync\` before each run; medians (range)"
echo
echo "| model | file MB | hcc convert s | python s | speedup | hcc peak RSS MB | RSS / file | python peak RSS MB | python RSS / file | hcc inspect s | cp s (floor) | output = input |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
ok_speed=1; ok_rss=1; ok_insp=1
for m in "${BENCH_MODELS[@]}"; do
    size=$(stat -c %s "$MODELS/$m")
    mb=$(awk -v s="$size" 'BEGIN { printf "%.0f", s / 1e6 }')
    ht=$(median "$TMP/$m.hcc" 1); pt=$(median "$TMP/$m.py" 1); it=$(median "$TMP/$m.insp" 1)
    hr=$(median "$TMP/$m.hcc" 2); pr=$(median "$TMP/$m.py" 2)
    speed=$(awk -v a="$pt" -v b="$ht" 'BEGIN { printf "%.1f", (b > 0 ? a / b : 0) }')
    hrr=$(awk -v r="$hr" -v s="$size" 'BEGIN { printf "%.2f", r * 1024 / s }')
    prr=$(awk -v r="$pr" -v s="$size" 'BEGIN { printf "%.2f", r * 1024 / s }')
    printf '| %s | %s | %s (%s) | %s (%s) | %sx | %.0f | %s | %.0f | %s | %s (%s) | %s (%s) | hcc %s, python %s |\n' \
        "$m" "$mb" "$ht" "$(minmax "$TMP/$m.hcc" 1)" "$pt" "$(minmax "$TMP/$m.py" 1)" "$speed" \
        "$(awk -v r="$hr" 'BEGIN { print r / 1024 }')" "$hrr" "$(awk -v r="$pr" 'BEGIN { print r / 1024 }')" "$prr" \
        "$it" "$(minmax "$TMP/$m.insp" 1)" "$(median "$TMP/$m.cp" 1)" "$(minmax "$TMP/$m.cp" 1)" "$(cat "$TMP/$m.hcc.same")" "$(cat "$TMP/$m.py.same")"
    above 5 "$speed" && ok_speed=0
    above "$hrr" 1.2 && ok_rss=0
    above "$it" 0.5 && ok_insp=0
done
echo
echo "Python start + \`import onnx\` alone: $(median "$TMP/import" 1) s, $(awk -v r="$(median "$TMP/import" 2)" 'BEGIN { printf "%.0f", r / 1024 }') MB (included in the python column)."
echo
yn() { [ "$1" = 1 ] && echo met || echo "NOT met"; }
echo "| goal | result |"
echo "|---|---|"
echo "| hcc convert ≥ 5x faster than python | $(yn $ok_speed) |"
echo "| hcc peak RSS ≤ 1.2 x file size | $(yn $ok_rss) |"
echo "| hcc inspect < 0.5 s | $(yn $ok_insp) |"
