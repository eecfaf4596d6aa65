#!/usr/bin/env bash
# hcc vs the numpy baseline users write today (../shared/bench/lowrank_numpy.py): factorize
# every MatMul weight of gpt2-small-random.onnx and its embedding at rank 64, end to end
# (load, factorize, rewrite, save), side by side, REPS times interleaved. Reports median wall
# time, peak RSS, and the mean relative reconstruction error of both outputs.
# Usage: bash bench/lowrank.sh [REPS]   (after cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/.."
REPS="${1:-3}"
M="${HCC_MODELS:-$HOME/.cache/hcc-models}"
PY="$M/venv/bin/python"
IN="$M/gpt2-small-random.onnx"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load: $(cut -d' ' -f1-3 /proc/loadavg)"
for i in $(seq "$REPS"); do
  /usr/bin/time -f "hcc %e %M" target/release/hcc compile -q --no-fidelity -p bench/rank64.hcp "$IN" -o "$OUT/h.onnx" --report "$OUT/h.json" 2>>"$OUT/times"
  /usr/bin/time -f "numpy %e %M" "$PY" ../shared/bench/lowrank_numpy.py "$IN" "$OUT/n.onnx" --rank 64 --embeddings >"$OUT/n.json" 2>>"$OUT/times.np" || true
  grep numpy "$OUT/times.np" | tail -1 >>"$OUT/times"
done
"$PY" - "$OUT" "$IN" <<'PY'
import json, sys, statistics, numpy as np, onnx
from onnx import numpy_helper
out, src = sys.argv[1], sys.argv[2]
rows = [l.split() for l in open(f"{out}/times") if l.split()[0] in ("hcc", "numpy")]
def med(tool, i): return statistics.median(float(r[i]) for r in rows if r[0] == tool)
h, n = med("hcc", 1), med("numpy", 1)
print(f"| tool | median wall s | peak RSS MB |\n|---|---|---|")
print(f"| hcc | {h:.2f} | {med('hcc', 2)/1024:.0f} |\n| numpy | {n:.2f} | {med('numpy', 2)/1024:.0f} |")
print(f"speedup (numpy / hcc): {n/h:.2f}x")
rep = json.load(open(f"{out}/h.json"))
he = [s["rel_error"] for s in rep["sites"] if not s["shared"]]
orig = {t.name: numpy_helper.to_array(t) for t in onnx.load(src).graph.initializer}
nm = {t.name: numpy_helper.to_array(t) for t in onnx.load(f"{out}/n.onnx").graph.initializer}
ne = []
for name, w in orig.items():
    if f"{name}.lr_a" in nm:
        a, b = nm[f"{name}.lr_a"], nm[f"{name}.lr_b"]
        ne.append(float(np.linalg.norm(w - a @ b) / np.linalg.norm(w)))
print(f"mean relative reconstruction error: hcc {np.mean(he):.5f} over {len(he)} matrices, numpy {np.mean(ne):.5f} over {len(ne)}")
print(f"params after: hcc {rep['params_after']:,}, numpy {json.load(open(f'{out}/n.json'))['params_after']:,}")
PY
