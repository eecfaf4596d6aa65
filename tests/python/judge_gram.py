"""External check of hcc's calibration statistics: onnxruntime computes XᵀX of the same
activations on the same token windows and compares with hcc's cache file.

usage: judge_gram.py MODEL.onnx TOKENIZER.json TEXT CACHE.safetensors SEQ_LEN CHUNKS
Prints the largest relative difference over all taps; exits 1 above 1e-4.
"""
import json, struct, sys
import numpy as np
import onnx, onnxruntime as ort
from tokenizers import Tokenizer

model, tok, text, cache, seq, chunks = sys.argv[1:7]
seq, chunks = int(seq), int(chunks)

# safetensors by hand (no extra dependency): u64 header length, JSON header, data.
raw = open(cache, "rb").read()
(n,) = struct.unpack("<Q", raw[:8])
header = json.loads(raw[8 : 8 + n])
data = raw[8 + n :]
taps = {k: v for k, v in header.items() if k != "__metadata__"}

m = onnx.load(model)
names = list(taps)
for t in names:
    m.graph.output.append(onnx.helper.make_empty_tensor_value_info(t))
sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
ids = Tokenizer.from_file(tok).encode(open(text).read(), add_special_tokens=False).ids
feeds_names = [i.name for i in sess.get_inputs()]
grams = {}
for c in range(chunks):
    w = np.array(ids[c * seq : (c + 1) * seq], dtype=np.int64)[None, :]
    feed = {}
    for name in feeds_names:
        if "input_ids" in name:
            feed[name] = w
        elif "mask" in name:
            feed[name] = np.ones_like(w)
        elif "position" in name:
            feed[name] = np.arange(seq, dtype=np.int64)[None, :]
    outs = sess.run(names, feed)
    for t, x in zip(names, outs):
        x = x.reshape(-1, x.shape[-1]).astype(np.float64)
        grams[t] = grams.get(t, 0) + x.T @ x
worst = 0.0
for t in names:
    info = taps[t]
    a, b = info["data_offsets"]
    packed = np.frombuffer(data[a:b], dtype="<f8")
    k = grams[t].shape[0]
    ours = np.zeros((k, k))
    ours[np.tril_indices(k)] = packed
    ours = ours + np.tril(ours, -1).T
    d = np.abs(ours - grams[t]).max() / np.abs(grams[t]).max()
    worst = max(worst, d)
print(f"{len(names)} taps, largest relative difference {worst:.3e}")
sys.exit(0 if worst < 1e-4 else 1)
