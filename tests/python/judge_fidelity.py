"""External judge for `hcc eval`: the same fidelity metrics, computed with onnxruntime on inputs
that hcc generated (so both judges see identical inputs).

Usage: python judge_fidelity.py ORIGINAL.onnx COMPRESSED.onnx --inputs DIR [--vocab V]

DIR holds inputs.json ({"inputs": [{"name": NAME, "file": FILE.npy}, ...]}) and the .npy files
it names. Each model gets the inputs it declares, by name. For every output of ORIGINAL that
COMPRESSED also has (a: original, b: compressed, both in float64):
  rel_error      = ||a - b|| / ||a||   (0 when a == b)
  max_abs_diff   = max |a - b|
  cosine         = mean over the last-dim vectors of a.b / (|a||b|)  (1 for identical vectors)
  top1_agreement = fraction of last-dim vectors whose argmax agree, when the last dim is --vocab
Prints one JSON object: {"outputs": [{"name", "shape", "rel_error", "max_abs_diff", "cosine",
"top1_agreement" (or null)}], "missing_outputs": [...]}.
"""

import argparse
import json
import os
import sys

import numpy as np
import onnxruntime as ort


def run(path, feeds):
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    missing = [n for n in names if n not in feeds]
    if missing:
        print(f"judge_fidelity: {path} needs inputs {missing} not given", file=sys.stderr)
        sys.exit(2)
    outs = [o.name for o in sess.get_outputs()]
    vals = sess.run(outs, {n: feeds[n] for n in names})
    return dict(zip(outs, vals)), outs


def metrics(a, b, vocab):
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    d = np.abs(a - b)
    both_nan = np.isnan(a) & np.isnan(b)
    d[both_nan | (a == b)] = 0.0
    d[np.isnan(d)] = np.inf
    diff = float(np.sqrt((d * d).sum()))
    norm = float(np.sqrt((a * a).sum()))
    rel = 0.0 if diff == 0.0 else (diff / norm if norm > 0 else float("inf"))
    last = a.shape[-1] if a.ndim else 1
    u = a.reshape(-1, max(last, 1))
    v = b.reshape(-1, max(last, 1))
    uv = (u * v).sum(axis=1)
    uu = np.sqrt((u * u).sum(axis=1))
    vv = np.sqrt((v * v).sum(axis=1))
    same = (u == v).all(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where(same, 1.0, np.where((uu == 0) | (vv == 0), 0.0, uv / (uu * vv)))
    top1 = None
    if vocab is not None and a.ndim >= 2 and last == vocab:
        top1 = float((u.argmax(axis=1) == v.argmax(axis=1)).mean())
    return {
        "shape": list(a.shape),
        "rel_error": rel,
        "max_abs_diff": float(d.max()) if d.size else 0.0,
        "cosine": float(cos.mean()) if cos.size else 1.0,
        "top1_agreement": top1,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("original")
    p.add_argument("compressed")
    p.add_argument("--inputs", required=True)
    p.add_argument("--vocab", type=int, default=None)
    args = p.parse_args()

    with open(os.path.join(args.inputs, "inputs.json")) as f:
        manifest = json.load(f)
    feeds = {e["name"]: np.load(os.path.join(args.inputs, e["file"])) for e in manifest["inputs"]}

    ref, names = run(args.original, feeds)
    got, _ = run(args.compressed, feeds)
    outputs = []
    for n in names:
        if n in got:
            if ref[n].shape != got[n].shape:
                print(f"judge_fidelity: output {n}: shapes {ref[n].shape} vs {got[n].shape}", file=sys.stderr)
                return 1
            outputs.append({"name": n, **metrics(ref[n], got[n], args.vocab)})
    print(json.dumps({"outputs": outputs, "missing_outputs": [n for n in names if n not in got]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
