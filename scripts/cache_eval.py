"""Hit rate at a target false-hit rate for semantic-cache similarity scores.

    tollgate cache similarity --input data/cache/pairs.jsonl > scores.jsonl
    python scripts/cache_eval.py data/cache/pairs.jsonl scores.jsonl [--bow]

`threshold_for` picks the smallest threshold t such that, answering from the cache when
score >= t, at most the target share of negatives (different answer) would be hits. The
threshold is chosen on the dev split and the hit rate reported on the test split (and on
all pairs, and per kind of negative). `--bow` scores a bag-of-words cosine baseline
instead of reading a scores file.
"""

import json
import math
import re
import sys
from collections import Counter


def threshold_for(scores, labels, target):
    neg = sorted((s for s, l in zip(scores, labels) if l == 0), reverse=True)
    allowed = int(math.floor(target * len(neg)))
    # accept s >= t; the (allowed+1)-th highest negative must be rejected
    cut = neg[allowed] if allowed < len(neg) else -1.0
    return math.nextafter(cut, math.inf)


def hit_rate_at(scores, labels, thr):
    pos = [s for s, l in zip(scores, labels) if l == 1]
    return sum(s >= thr for s in pos) / max(1, len(pos))


def false_hit_rate_at(scores, labels, thr):
    neg = [s for s, l in zip(scores, labels) if l == 0]
    return sum(s >= thr for s in neg) / max(1, len(neg))


def bow(a, b):
    x, y = Counter(re.findall(r"\w+", a.lower())), Counter(re.findall(r"\w+", b.lower()))
    d = sum(x[k] * y[k] for k in x)
    n = math.sqrt(sum(v * v for v in x.values()) * sum(v * v for v in y.values()))
    return d / n if n else 0.0


def main():
    rows = [json.loads(line) for line in open(sys.argv[1])]
    if "--bow" in sys.argv:
        scores = [bow(r["cached"], r["query"]) for r in rows]
    else:
        scores = [json.loads(line)["score"] for line in open(sys.argv[2])]
    assert len(scores) == len(rows), "one score per pair"
    lab = [r["label"] for r in rows]

    def sub(pred):
        i = [k for k, r in enumerate(rows) if pred(r)]
        return [scores[k] for k in i], [lab[k] for k in i]

    dev_s, dev_l = sub(lambda r: r["split"] == "dev")
    test_s, test_l = sub(lambda r: r["split"] == "test")
    thr = threshold_for(dev_s, dev_l, 0.01)
    print(f"threshold (dev, <=1% false hits): {thr:.4f}")
    print(f"test: hit rate {hit_rate_at(test_s, test_l, thr):.3f}, false hits {false_hit_rate_at(test_s, test_l, thr):.4f}")
    t_all = threshold_for(scores, lab, 0.01)
    print(f"all pairs: hit rate at <=1% false hits {hit_rate_at(scores, lab, t_all):.3f} (threshold {t_all:.4f})")
    for kind in ["same-topic", "written-negative"]:
        s, l = sub(lambda r: r["label"] == 1 or r["kind"] == kind)
        t = threshold_for(s, l, 0.01)
        print(f"negatives '{kind}' only: hit rate at <=1% false hits {hit_rate_at(s, l, t):.3f} (threshold {t:.4f})")


if __name__ == "__main__":
    main()
