#!/usr/bin/env bash
# Set up on a fresh machine and run hcc on shipped examples:
# fetch the real models and the Python judge (onnx + onnxruntime), build hcc, inspect a model,
# compile one, and have onnx.checker and onnxruntime judge the output.
set -euo pipefail
cd "$(dirname "$0")"
export HCC_MODELS="${HCC_MODELS:-$HOME/.cache/hcc-models}"
PY="$HCC_MODELS/venv/bin/python"

bash ../shared/models/fetch.sh "$HCC_MODELS"
cargo build --release
HCC=target/release/hcc
mkdir -p out

echo "== hcc inspect (a GPT-2 whose LM head is stored as a transposed copy of the embedding)"
$HCC inspect "$HCC_MODELS/gpt2-tiny-untied-random.onnx"

echo "== hcc compile examples/mlp.onnxtxt (a model written in the ONNX textual syntax)"
$HCC compile examples/mlp.onnxtxt -o out/mlp.onnx
$HCC print out/mlp.onnx

echo "== exact clean-ups on a GPT-2 whose head is a stored transposed copy: bit-identical outputs"
$HCC compile "$HCC_MODELS/gpt2-tiny-untied-random.onnx" --pipeline cleanup -o out/gpt2-tiny-untied.clean.onnx --explain --max-misses 2
"$PY" tests/python/judge_run.py "$HCC_MODELS/gpt2-tiny-untied-random.onnx" out/gpt2-tiny-untied.clean.onnx --seq 8 --require-identical

echo "== compress SmolLM2-135M 2x (default pipeline), judged by onnx.checker and onnxruntime"
$HCC compile "$HCC_MODELS/smollm2-135m-f32.onnx" --ratio 2 -o out/smollm2.2x.onnx --report out/smollm2.2x.json
"$PY" tests/python/judge_check.py out/smollm2.2x.onnx
"$PY" tests/python/judge_run.py "$HCC_MODELS/smollm2-135m-f32.onnx" out/smollm2.2x.onnx --seq 8

echo "== calibrated: SmolLM2's linear layers shrunk 1.25x, whitened and refitted in sequence on Hamlet + Julius Caesar,"
echo "   ranks planned by each layer's measured sensitivity (210 model runs: a few minutes),"
echo "   judged on held-out Macbeth (perplexity and a greedy continuation in the report)"
$HCC compile "$HCC_MODELS/smollm2-135m-f32.onnx" --pipeline linear_compact --max-params 114329950 \
  --calib "$HCC_MODELS/text-calib.txt" --tokenizer "$HCC_MODELS/smollm2-tokenizer.json" --strategy sensitivity \
  --eval-text "$HCC_MODELS/text-eval.txt" -o out/smollm2.calibrated.onnx --report out/smollm2.calibrated.json
"$PY" tests/python/judge_check.py out/smollm2.calibrated.onnx
