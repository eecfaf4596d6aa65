"""External judge: do two models compute the same thing? Runs both in onnxruntime on the same
seeded inputs and compares every output.

Usage: python judge_run.py A.onnx B.onnx [B2.onnx ...] [--seed S] [--batch N] [--seq N]
                           [--vocab V] [--require-identical]

Inputs are built from A's graph inputs (initializers that are also listed as inputs are left
out), seeded by --seed (default 0):
  - symbolic dims: "batch"-like names or position 0 -> --batch (default 2), others -> --seq
    (default 16); fixed dims are kept;
  - the token-id input (int, named input_ids, else the first int input that is not a mask,
    token type or position input): uniform in [0, vocab), where vocab is the gathered dim (along
    the Gather's axis, 0 by default) of the first Gather table fed from it (followed through
    Cast/Identity/Reshape/(Un)Squeeze/Flatten,
    the table an initializer or Constant, possibly behind Identity/Cast), or --vocab;
  - *mask* inputs: ones; token_type / segment inputs: zeros; position inputs: arange(seq);
    other int inputs: zeros; bool inputs: true;
  - float inputs: standard normal, cast to the input's type.
Each B gets the inputs it declares, by name (all must be among A's). Sessions use the CPU
execution provider and default session options (default graph optimization level); they are
created one at a time and dropped after their run, so peak memory is about one model.

Prints one JSON object:
  {"a": PATH, "seed": S, "batch": N, "seq": N, "vocab": V or null,
   "inputs": {name: {"dtype": str, "shape": [..]}},
   "results": [{"b": PATH, "identical": bool, "missing_outputs": [names of A's outputs B lacks],
                "outputs": [{"name", "dtype_a", "dtype_b", "shape_a", "shape_b",
                             "identical", "max_abs_diff"}]}],
   "identical": bool}
"identical" means same dtype, same shape and the same bytes (so -0.0 vs 0.0 or two different
NaN payloads count as different). max_abs_diff is computed in float64 (null when shapes or
dtypes differ; NaN in the same place on both sides counts as 0, elsewhere as inf).

Exit status: 0; 1 with --require-identical when any output of any B is not bit-identical or
missing; 2 on usage errors or when no vocab can be found for a token-id input.
"""

import argparse
import json
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

ALIAS_OPS = {"Cast", "Identity", "Reshape", "Unsqueeze", "Squeeze", "Flatten"}


def value_infos(model):
    init = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in init]


def is_int(elem_type):
    return elem_type in (
        onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.INT16,
        onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.UINT16,
        onnx.TensorProto.UINT32, onnx.TensorProto.UINT64,
    )


def role(name, elem_type):
    n = name.lower()
    if elem_type == onnx.TensorProto.BOOL:
        return "bool"
    if not is_int(elem_type):
        return "float"
    if "mask" in n:
        return "mask"
    if "token_type" in n or "segment" in n:
        return "zeros"
    if "position" in n:
        return "positions"
    return "int"


def ids_input(inputs):
    ints = [i for i in inputs if role(i.name, i.type.tensor_type.elem_type) == "int"]
    for i in ints:
        if i.name == "input_ids":
            return i.name
    return ints[0].name if ints else None


def find_vocab(model, ids_name):
    """The gathered dim (axis, default 0) of the first Gather table that the token ids index."""
    g = model.graph
    init = {t.name: t for t in g.initializer}
    producer = {}
    for n in g.node:
        for o in n.output:
            producer[o] = n

    def table_dims(name, depth=0):
        if name in init:
            return list(init[name].dims)
        n = producer.get(name)
        if n is None or depth > 4:
            return None
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    return list(a.t.dims)
            return None
        if n.op_type in ("Identity", "Cast") and n.input:
            return table_dims(n.input[0], depth + 1)
        return None

    consumers = {}
    for n in g.node:
        for k, x in enumerate(n.input):
            consumers.setdefault(x, []).append((n, k))
    frontier, seen = [ids_name], {ids_name}
    while frontier:  # breadth first, in node order
        nxt = []
        for v in frontier:
            for n, k in consumers.get(v, []):
                if n.op_type == "Gather" and k == 1:
                    dims = table_dims(n.input[0])
                    axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
                    if dims and -len(dims) <= axis < len(dims):
                        return dims[axis]
                if n.op_type in ALIAS_OPS and k == 0:
                    for o in n.output:
                        if o not in seen:
                            seen.add(o)
                            nxt.append(o)
        frontier = nxt
    return None


def make_inputs(model, args):
    rng = np.random.default_rng(args.seed)
    inputs = value_infos(model)
    ids = ids_input(inputs)
    vocab = args.vocab
    if ids is not None and vocab is None:
        vocab = find_vocab(model, ids)
        if vocab is None:
            print(f"judge_run: no Gather table fed from '{ids}'; pass --vocab", file=sys.stderr)
            sys.exit(2)
    feeds = {}
    for i in inputs:
        tt = i.type.tensor_type
        shape = []
        for k, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                shape.append(d.dim_value)
            elif "batch" in d.dim_param.lower() or (k == 0 and "seq" not in d.dim_param.lower()):
                shape.append(args.batch)
            else:
                shape.append(args.seq)
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        r = role(i.name, tt.elem_type)
        if r == "float":
            x = rng.standard_normal(shape).astype(dtype)
        elif r == "bool" or r == "mask":
            x = np.ones(shape, dtype=dtype)
        elif r == "positions":
            x = np.broadcast_to(np.arange(shape[-1] if shape else 1), shape).astype(dtype)
        elif r == "int" and i.name == ids:
            x = rng.integers(0, vocab, size=shape).astype(dtype)
        else:
            x = np.zeros(shape, dtype=dtype)
        feeds[i.name] = np.ascontiguousarray(x)
    return feeds, vocab


def run(path, feeds):
    so = ort.SessionOptions()
    sess = ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    extra = [n for n in names if n not in feeds]
    if extra:
        print(f"judge_run: {path} has inputs {extra} that the first model lacks", file=sys.stderr)
        sys.exit(2)
    outs = [o.name for o in sess.get_outputs()]
    vals = sess.run(outs, {n: feeds[n] for n in names})
    del sess
    return dict(zip(outs, vals)), outs


def max_abs_diff(a, b):
    if a.shape != b.shape or a.dtype != b.dtype:
        return None
    if a.size == 0:
        return 0.0
    if a.dtype == np.bool_:
        return float(np.count_nonzero(a != b) > 0)
    x, y = a.astype(np.float64), b.astype(np.float64)
    d = np.abs(x - y)
    if np.issubdtype(a.dtype, np.floating):
        both_nan = np.isnan(x) & np.isnan(y)
        d[both_nan] = 0.0
        d[np.isnan(d)] = np.inf  # NaN on one side only; also inf - inf
        same_inf = np.isinf(x) & (x == y)
        d[same_inf] = 0.0
    return float(d.max())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a")
    p.add_argument("b", nargs="+")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=16)
    p.add_argument("--vocab", type=int, default=None)
    p.add_argument("--require-identical", action="store_true")
    args = p.parse_args()

    model_a = onnx.load(args.a, load_external_data=False)
    feeds, vocab = make_inputs(model_a, args)
    del model_a

    t = time.perf_counter()
    ref, ref_names = run(args.a, feeds)
    timings = {args.a: round(time.perf_counter() - t, 3)}
    results = []
    for b in args.b:
        t = time.perf_counter()
        got, _ = run(b, feeds)
        timings[b] = round(time.perf_counter() - t, 3)
        outs = []
        for name in ref_names:
            if name not in got:
                continue
            x, y = ref[name], got[name]
            same = x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
            outs.append({
                "name": name,
                "dtype_a": str(x.dtype), "dtype_b": str(y.dtype),
                "shape_a": list(x.shape), "shape_b": list(y.shape),
                "identical": bool(same),
                "max_abs_diff": max_abs_diff(x, y),
            })
        missing = [n for n in ref_names if n not in got]
        results.append({
            "b": b,
            "identical": not missing and all(o["identical"] for o in outs),
            "missing_outputs": missing,
            "outputs": outs,
        })
    report = {
        "a": args.a, "seed": args.seed, "batch": args.batch, "seq": args.seq, "vocab": vocab,
        "inputs": {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in feeds.items()},
        "results": results,
        "identical": all(r["identical"] for r in results),
        "seconds": timings,
    }
    print(json.dumps(report, indent=1))
    if args.require_identical and not report["identical"]:
        bad = [(r["b"], [o["name"] for o in r["outputs"] if not o["identical"]] + r["missing_outputs"])
               for r in results if not r["identical"]]
        print(f"judge_run: outputs differ from {args.a}: {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
