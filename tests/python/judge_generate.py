"""External judge for greedy generation: onnxruntime continues the same prompt token ids.

usage: judge_generate.py MODEL.onnx N ID [ID ...]
Prints the N generated token ids as a JSON list (argmax of the last position's logits, the
sequence grown one token per run, no KV cache).
"""
import json, sys
import numpy as np
import onnxruntime as ort

model, n = sys.argv[1], int(sys.argv[2])
ids = [int(x) for x in sys.argv[3:]]
sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
names = [i.name for i in sess.get_inputs()]
out = []
for _ in range(n):
    x = np.array(ids, dtype=np.int64)[None, :]
    feed = {}
    for name in names:
        if "input_ids" in name:
            feed[name] = x
        elif "mask" in name:
            feed[name] = np.ones_like(x)
        elif "position" in name:
            feed[name] = np.arange(x.shape[1], dtype=np.int64)[None, :]
    logits = sess.run(None, feed)[0]
    nxt = int(np.argmax(logits[0, -1]))
    ids.append(nxt)
    out.append(nxt)
print(json.dumps(out))
