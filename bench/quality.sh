#!/usr/bin/env bash
# Planner strategies compared on the real models: uniform vs global at ratios 1.5, 2, 4,
# without calibration data. Fidelity: original vs compressed on seeded inputs (tract, seq 32,
# 2 samples): relative output error, cosine, top-1 agreement (LMs). Prints a markdown table.
# Usage: bash bench/quality.sh   (after cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/.."
M="${HCC_MODELS:-$HOME/.cache/hcc-models}"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
echo "| model | ratio | strategy | params after | output | rel error | cosine | top-1 |"
echo "|---|---|---|---|---|---|---|---|"
for model in smollm2-135m-f32 all-minilm-l6-v2-f32; do
  for ratio in 1.5 2 4; do
    for strategy in uniform global; do
      target/release/hcc compile -q "$M/$model.onnx" -o "$OUT/m.onnx" --ratio "$ratio" --strategy "$strategy" --report "$OUT/r.json"
      python3 - "$OUT/r.json" "$model" "$ratio" "$strategy" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for o in r["fidelity"]["outputs"]:
    t = o.get("top1_agreement")
    print(f"| {sys.argv[2]} | {sys.argv[3]} | {sys.argv[4]} | {r['params_after']:,} | {o['name']} | "
          f"{o['rel_error']:.4f} | {o['cosine']:.4f} | {'-' if t is None else f'{t:.3f}'} |")
PY
    done
  done
done
