"""External judge for `hcc eval --text` on causal language models: the same perplexity,
computed with onnxruntime on the token ids hcc evaluated (written by `hcc eval --dump-ids`).

Usage: python judge_perplexity.py MODEL.onnx IDS.npy [--text FILE --tokenizer TOKENIZER.json]

IDS.npy: int64 [chunks, seq_len], one row per non-overlapping chunk. Each chunk runs once
(batch 1); the model gets input_ids, plus an attention mask of ones and position ids 0..n-1 when
it declares them. Loss = mean over chunks and positions t = 0..seq_len-2 of
-log softmax(logits[t])[ids[t+1]], in float64; perplexity = exp(loss).

With --text and --tokenizer, and when the `tokenizers` package is importable, the judge also
tokenizes the text itself (no special tokens) and reports whether its first chunks equal IDS
("ids_match"; null when it cannot check).

Prints one JSON object: {"perplexity", "loss", "chunks", "seq_len", "ids_match"}.
"""

import argparse
import json
import sys

import numpy as np
import onnxruntime as ort


def check_ids(ids, text_path, tokenizer_path):
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return None
    tok = Tokenizer.from_file(tokenizer_path)
    tok.no_padding()
    tok.no_truncation()
    with open(text_path, encoding="utf-8") as f:
        text = f.read()
    mine = np.array(tok.encode(text, add_special_tokens=False).ids, dtype=np.int64)
    chunks, n = ids.shape
    if mine.size < chunks * n:
        return False
    return bool(np.array_equal(mine[: chunks * n].reshape(chunks, n), ids))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("ids")
    ap.add_argument("--text")
    ap.add_argument("--tokenizer")
    args = ap.parse_args()

    ids = np.load(args.ids).astype(np.int64)
    if ids.ndim != 2 or ids.shape[1] < 2:
        print(f"judge_perplexity: {args.ids} has shape {ids.shape}", file=sys.stderr)
        sys.exit(2)
    chunks, n = ids.shape
    sess = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    logits_name = next(
        (o.name for o in sess.get_outputs() if o.name == "logits"), sess.get_outputs()[0].name
    )
    total = 0.0
    for row in ids:
        feeds = {}
        for i in sess.get_inputs():
            if i.name == "input_ids":
                feeds[i.name] = row[None, :]
            elif "mask" in i.name:
                feeds[i.name] = np.ones((1, n), dtype=np.int64)
            elif "position" in i.name:
                feeds[i.name] = np.arange(n, dtype=np.int64)[None, :]
            else:
                print(f"judge_perplexity: cannot fill input {i.name}", file=sys.stderr)
                sys.exit(2)
        (logits,) = sess.run([logits_name], feeds)
        z = logits[0, : n - 1].astype(np.float64)
        m = z.max(axis=-1, keepdims=True)
        lse = (m + np.log(np.exp(z - m).sum(axis=-1, keepdims=True)))[:, 0]
        total += float((lse - z[np.arange(n - 1), row[1:]]).sum())
    loss = total / (chunks * (n - 1))
    ids_match = None
    if args.text and args.tokenizer:
        ids_match = check_ids(ids, args.text, args.tokenizer)
    print(
        json.dumps(
            {
                "perplexity": float(np.exp(loss)),
                "loss": loss,
                "chunks": int(chunks),
                "seq_len": int(n),
                "ids_match": ids_match,
            }
        )
    )


if __name__ == "__main__":
    main()
