"""External judge for `hcc print`: the textual syntax as onnx's own parser reads it.

Usage:
  python judge_text.py make OUT.onnx      write a small model that uses many syntax features
                                          (every constant has at most 16 elements, so
                                          `hcc print` elides none)
  python judge_text.py parse TEXT OUT.onnx
                                          parse TEXT with onnx.parser.parse_model, run the
                                          checker (full_check) on it and save it to OUT.onnx

Exits non-zero (with the parser's message) when the text does not parse or check.
"""

import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def make(out):
    rng = np.random.default_rng(0)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)
    inits = [
        numpy_helper.from_array(f(4, 4), "emb.weight"),          # dotted name: quoted in text
        numpy_helper.from_array(f(4, 4), "w"),
        numpy_helper.from_array(f(4), "b"),
        numpy_helper.from_array(np.array([2, 1, 1], dtype=np.int64), "split_sizes"),
        numpy_helper.from_array(np.array([0, 0, 2, 2], dtype=np.int64), "shape4"),
        numpy_helper.from_array(np.array(0.5, dtype=np.float32), "half"),
        numpy_helper.from_array(np.ones(4, dtype=np.float32), "ln.scale"),
        numpy_helper.from_array(np.array([-1.5, 0.0, 2.25], dtype=np.float64), "dbl"),
    ]
    nodes = [
        helper.make_node("Gather", ["emb.weight", "ids"], ["e"], name="embed"),
        helper.make_node("MatMul", ["e", "w"], ["mm"], name="proj"),
        helper.make_node("Add", ["mm", "b"], ["h"], name="bias"),
        helper.make_node("LayerNormalization", ["h", "ln.scale"], ["ln"], name="ln", axis=-1, epsilon=1e-5),
        helper.make_node("Split", ["ln", "split_sizes"], ["s0", "s1", "s2"], name="split", axis=-1),
        helper.make_node("Mul", ["s0", "half"], ["s0h"], name="scale"),
        helper.make_node("Concat", ["s0h", "s1", "s2"], ["cat"], name="cat", axis=-1),
        helper.make_node("Reshape", ["cat", "shape4"], ["r"], name="reshape"),
        helper.make_node("Transpose", ["r"], ["t"], name="perm", perm=[0, 2, 1, 3]),
        helper.make_node("Softmax", ["t"], ["probs"], name="softmax", axis=-1),
        helper.make_node("Constant", [], ["k"], name="const", value=numpy_helper.from_array(np.array([3], dtype=np.int64))),
        helper.make_node("ReduceMax", ["probs"], ["rs"], name="reduce", keepdims=0),
        helper.make_node("Cast", ["rs"], ["rs_d"], name="cast", to=TensorProto.DOUBLE),
        helper.make_node("Add", ["rs_d", "dbl"], ["out_d"], name="add.d"),
        helper.make_node("ArgMax", ["h"], ["am"], name="argmax", axis=-1, keepdims=1),
        helper.make_node("Add", ["am", "k"], ["am3"], name="add_k"),
    ]
    g = helper.make_graph(
        nodes, "small",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 2, "seq", 2]),
         helper.make_tensor_value_info("out_d", TensorProto.DOUBLE, [3]),
         helper.make_tensor_value_info("am3", TensorProto.INT64, ["batch", "seq", 1])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="judge_text")
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, out)


def parse(text_path, out):
    m = onnx.parser.parse_model(open(text_path, encoding="utf-8").read())
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, out)


def main(argv):
    if len(argv) == 2 and argv[0] == "make":
        make(argv[1])
    elif len(argv) == 3 and argv[0] == "parse":
        parse(argv[1], argv[2])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
