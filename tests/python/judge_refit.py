"""External check of hcc's sequential refit: onnxruntime runs the original and the refitted
model on the same token windows and measures, at every refitted site, how far the compressed
model's layer output is from the original's, ‖Y − Ŷ‖_F / ‖Y‖_F over all tokens. hcc's report
claims this number for each site (`rel_error` of a site with `refit_from`).

usage: judge_refit.py ORIGINAL.onnx COMPRESSED.onnx REPORT.json TOKENIZER.json TEXT SEQ_LEN CHUNKS
Prints the largest difference between the measured and reported errors; exits 1 above 1e-3
(relative to the error) or when a refitted site's output cannot be found.
"""
import json, sys
import numpy as np
import onnx, onnxruntime as ort
from tokenizers import Tokenizer

orig, comp, report, tok, text, seq, chunks = sys.argv[1:8]
seq, chunks = int(seq), int(chunks)
rep = json.load(open(report))
sites = [s for s in rep["sites"] if s.get("refit_from") is not None]
if not sites:
    print("no refitted site in the report")
    sys.exit(1)

# The site's output: the output of the original's node that reads the constant.
om = onnx.load(orig)
outputs = {}
for node in om.graph.node:
    for s in sites:
        if s["constant"] in node.input:
            outputs[s["constant"]] = node.output[0]
missing = [s["constant"] for s in sites if s["constant"] not in outputs]
if missing:
    print(f"no node reads {missing}")
    sys.exit(1)
names = sorted(set(outputs.values()))


def session(path):
    m = onnx.load(path)
    for t in names:
        m.graph.output.append(onnx.helper.make_empty_tensor_value_info(t))
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])


so, sc = session(orig), session(comp)
ids = Tokenizer.from_file(tok).encode(open(text).read(), add_special_tokens=False).ids
num = {t: 0.0 for t in names}
den = {t: 0.0 for t in names}
for c in range(chunks):
    w = np.array(ids[c * seq : (c + 1) * seq], dtype=np.int64)[None, :]
    feed = {}
    for i in so.get_inputs():
        if "input_ids" in i.name:
            feed[i.name] = w
        elif "mask" in i.name:
            feed[i.name] = np.ones_like(w)
        elif "position" in i.name:
            feed[i.name] = np.arange(seq, dtype=np.int64)[None, :]
    a = so.run(names, feed)
    b = sc.run(names, feed)
    for t, y, yh in zip(names, a, b):
        y, yh = y.astype(np.float64), yh.astype(np.float64)
        num[t] += ((y - yh) ** 2).sum()
        den[t] += (y**2).sum()
worst = 0.0
for s in sites:
    t = outputs[s["constant"]]
    measured = (num[t] / den[t]) ** 0.5
    d = abs(measured - s["rel_error"]) / max(measured, 1e-12)
    worst = max(worst, d)
print(f"{len(sites)} refitted sites, largest relative difference {worst:.3e}")
sys.exit(0 if worst < 1e-3 else 1)
