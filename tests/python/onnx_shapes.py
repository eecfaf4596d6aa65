"""Print what onnx and onnxruntime say about the types and shapes of a model's values, as JSON.

Usage: python onnx_shapes.py MODEL.onnx

Prints one JSON object:
  {"opset": N,
   "symbols": [dim params of the graph inputs],
   "values": {name: [elem_type code, dims or null]},
   "runs": [{"bind": {symbol: size}, "shapes": {name: [ints]}}, ...]}

"values" is what onnx.shape_inference.infer_shapes(model, data_prop=True) gives every graph
input, output, value_info entry and initializer: each dim is an int (known), a string (a symbol;
onnx invents "unk__N" ones) or null (unknown); dims is null when the rank is unknown.

"runs" are the actual shapes of every node output when onnxruntime runs the model (no graph
optimizations) with its input symbols bound to small distinct sizes, twice with different sizes.
Integer inputs are fed ones (valid token ids and attention masks), float inputs zeros.
"""

import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, shape_inference

BINDINGS = [[2, 5, 3, 7], [3, 7, 2, 5]]


def dims_of(tensor_type):
    if not tensor_type.HasField("shape"):
        return None
    out = []
    for d in tensor_type.shape.dim:
        if d.HasField("dim_value"):
            out.append(d.dim_value)
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def runtime_shapes(model, symbols, sizes):
    bind = {s: sizes[i % len(sizes)] for i, s in enumerate(symbols)}
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for node in m.graph.node:
        for o in node.output:
            if o and o not in have:
                m.graph.output.append(onnx.ValueInfoProto(name=o))
                have.add(o)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    init_names = {i.name for i in m.graph.initializer}
    feeds = {}
    for i in m.graph.input:
        if i.name in init_names:
            continue
        t = i.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else bind.get(d.dim_param, 1) for d in t.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(t.elem_type)
        if t.elem_type in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16):
            feeds[i.name] = np.zeros(shape, dtype=dtype)
        else:
            feeds[i.name] = np.ones(shape, dtype=dtype)
    names = [o.name for o in sess.get_outputs()]
    outs = sess.run(names, feeds)
    return {"bind": bind, "shapes": {n: list(np.shape(v)) for n, v in zip(names, outs)}}


def main():
    path = sys.argv[1]
    model = onnx.load(path)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    inferred = shape_inference.infer_shapes(model, data_prop=True)
    g = inferred.graph
    init_names = {i.name for i in g.initializer}
    symbols = sorted(
        {
            d.dim_param
            for i in g.input
            if i.name not in init_names
            for d in i.type.tensor_type.shape.dim
            if d.HasField("dim_param")
        }
    )
    values = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.type.HasField("tensor_type"):
            t = vi.type.tensor_type
            values[vi.name] = [t.elem_type, dims_of(t)]
    for init in g.initializer:
        values[init.name] = [init.data_type, list(init.dims)]
    runs = [runtime_shapes(model, symbols, sizes) for sizes in BINDINGS]
    json.dump({"opset": opset, "symbols": symbols, "values": values, "runs": runs}, sys.stdout)


if __name__ == "__main__":
    main()
