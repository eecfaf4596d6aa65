"""External judge: does the reference ONNX checker accept these models?

Usage: python judge_check.py [--no-full-check] MODEL.onnx [MODEL.onnx ...]

Runs onnx.checker.check_model(path, full_check=full_check) on each model. The path form is used for
every model: it is the one that works for models with external data (it also checks that each
external data location stays inside the model's folder) and for models over 2 GiB; for a plain
inline model it checks the same thing as the ModelProto form.

--no-full-check skips the shape-inference part. Use it only for models whose shape-feeding
constants (Unsqueeze axes, Split sizes, Reshape shapes) are stored as external data: onnx's
shape inference cannot read external tensors and fails on them ("Cannot parse data from
external tensors"), for onnx's own writer too (onnx.save(..., size_threshold=0)).

Prints one line per model, "ok PATH" or "FAIL PATH: message". Exits 1 if any model fails
(the messages also go to stderr), 2 on bad usage.
"""

import os
import sys

import onnx


def main(argv):
    full_check = True
    if argv and argv[0] == "--no-full-check":
        full_check, argv = False, argv[1:]
    if not argv or any(a.startswith("-") for a in argv):
        print(__doc__, file=sys.stderr)
        return 2
    failed = 0
    for path in argv:
        if not os.path.isfile(path):
            msg = f"FAIL {path}: no such file"
            print(msg)
            print(msg, file=sys.stderr)
            failed += 1
            continue
        try:
            onnx.checker.check_model(path, full_check=full_check)
        except Exception as e:  # ValidationError, InferenceError, DecodeError, OSError...
            msg = f"FAIL {path}: {type(e).__name__}: {e}"
            print(msg)
            print(msg, file=sys.stderr)
            failed += 1
            continue
        print(f"ok {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
