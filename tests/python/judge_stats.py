"""External judge for `hcc inspect`: what onnx itself says a model holds, as JSON.

Usage: python judge_stats.py MODEL.onnx [--transposed]

Loads the model without its external data (dims only) and prints:
  {"nodes": N, "ops": {op_type (domain::op for other domains): count},
   "initializers": N, "params": total elements of the initializers (sparse: their values),
   "bytes": total bytes at each dtype's item size (sparse: values plus indices),
   "by_dtype": {onnx dtype name: {"tensors", "params", "bytes"}},
   "inputs": [graph inputs that are not initializers], "outputs": [names],
   "largest": [name, bytes] of the largest initializer (ties: smallest name),
   "sizes": {initializer: bytes},
   "shared": {initializer: [reader op types, views followed as "Transpose->MatMul"]}
             for initializers with more than one reader (views: Transpose/Identity/Cast),
   "transposed": [[a, b], ...] (only with --transposed: 2-D pairs where b == a.T exactly,
                  each pair once, a first in initializer order; loads the data)}
"""

import json
import sys
from collections import Counter

import numpy as np
import onnx
from onnx import helper, numpy_helper

VIEWS = {"Transpose", "Identity", "Cast"}


def itemsize(elem_type):
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize


def main(argv):
    if not argv or argv[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    path, want_t = argv[0], "--transposed" in argv[1:]
    m = onnx.load(path, load_external_data=want_t)
    g = m.graph
    tensors = list(g.initializer) + [s.values for s in g.sparse_initializer]
    names = [t.name for t in g.initializer] + [s.values.name for s in g.sparse_initializer]
    by = {}
    for t in tensors:
        n = int(np.prod(t.dims, dtype=np.int64))
        d = by.setdefault(helper.tensor_dtype_to_string(t.data_type), {"tensors": 0, "params": 0, "bytes": 0})
        d["tensors"] += 1
        d["params"] += n
        d["bytes"] += n * itemsize(t.data_type)
    index_bytes = sum(int(np.prod(s.indices.dims, dtype=np.int64)) * itemsize(s.indices.data_type)
                      for s in g.sparse_initializer)
    sizes = sorted(((-int(np.prod(t.dims, dtype=np.int64)) * itemsize(t.data_type), nm)
                    for t, nm in zip(tensors, names)))
    ops = Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}" for n in g.node)

    consumers = {}
    for n in g.node:
        for k, x in enumerate(n.input):
            consumers.setdefault(x, []).append((n, k))

    def readers(v, prefix, depth):
        out = []
        for n, k in consumers.get(v, []):
            if n.op_type in VIEWS and k == 0 and depth < 4:
                sub = readers(n.output[0], f"{prefix}{n.op_type}->", depth + 1)
                if sub:
                    out += sub
                    continue
            out.append(prefix + n.op_type)
        return out

    shared = {}
    for nm in names:
        r = readers(nm, "", 0)
        if len(r) > 1:
            shared[nm] = r

    init_names = set(names)
    report = {
        "nodes": len(g.node),
        "ops": dict(ops),
        "initializers": len(tensors),
        "params": sum(d["params"] for d in by.values()),
        "bytes": sum(d["bytes"] for d in by.values()) + index_bytes,
        "by_dtype": by,
        "inputs": [i.name for i in g.input if i.name not in init_names],
        "outputs": [o.name for o in g.output],
        "largest": [sizes[0][1], -sizes[0][0]] if sizes else None,
        "sizes": {nm: int(np.prod(t.dims, dtype=np.int64)) * itemsize(t.data_type) for t, nm in zip(tensors, names)},
        "shared": shared,
    }
    if want_t:
        two = [(nm, numpy_helper.to_array(t)) for t, nm in zip(g.initializer, names) if len(t.dims) == 2]
        pairs = []
        for na, a in two:
            for nb, b in two:
                if nb != na and a.dtype == b.dtype and a.shape == b.shape[::-1] and np.array_equal(a.T, b):
                    if [nb, na] not in pairs:  # b == a.T implies a == b.T: list once
                        pairs.append([na, nb])
        report["transposed"] = pairs
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
