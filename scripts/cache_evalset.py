"""Build the semantic-cache evaluation pairs from the hand-written question files.

    python scripts/cache_evalset.py            # writes data/cache/pairs.jsonl

Input: data/cache/questions-*.txt ("## domain / topic", "Q[src]:", "P:", "N:" lines; see
the files' headers). Output: one JSON object per line,
{"cached", "query", "label" (1 = same answer, 0 = different answer), "kind", "domain",
"topic", "split"}. Positives: (question, paraphrase) and (paraphrase, paraphrase) of one
question. Negatives, all of them hard (same topic, a different answer): a question or one
of its paraphrases against its written hard negative, and against another question (or
paraphrase of one) of the same topic. `split` (dev/test) is decided per source question
by a hash, so a question and its paraphrases never straddle the split; a pair of two
questions takes the split of the cached one. Deterministic: no randomness but a fixed
seed.
"""

import hashlib
import json
import random
import re
import sys
from itertools import combinations
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "cache"
NEG_PER_POS = 3.5


def parse():
    items = []
    for path in sorted(DATA.glob("questions-*.txt")):
        domain = topic = None
        cur = None
        for n, line in enumerate(path.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("# "):
                continue
            if line.startswith("## "):
                domain, topic = [s.strip() for s in line[3:].split("/")]
                continue
            m = re.match(r"^(Q\[([\w-]+)\]|P|N):\s*(.+)$", line)
            if not m:
                sys.exit(f"{path.name}:{n}: cannot parse {line!r}")
            tag, src, text = m.group(1), m.group(2), m.group(3)
            if tag.startswith("Q"):
                cur = {"q": text, "src": src, "p": [], "n": [], "domain": domain, "topic": topic}
                items.append(cur)
            elif tag == "P":
                cur["p"].append(text)
            else:
                cur["n"].append(text)
    return items


def split_of(text):
    return "dev" if hashlib.sha256(text.encode()).digest()[0] % 2 == 0 else "test"


def main():
    items = parse()
    rng = random.Random(20261203)
    pos, neg_written, neg_topic = [], [], []
    by_topic = {}
    for it in items:
        by_topic.setdefault((it["domain"], it["topic"]), []).append(it)
    for it in items:
        meta = {"domain": it["domain"], "topic": it["topic"], "split": split_of(it["q"])}
        for p in it["p"]:
            pos.append({"cached": it["q"], "query": p, "label": 1, "kind": "paraphrase", **meta})
        for a, b in combinations(it["p"], 2):
            pos.append({"cached": a, "query": b, "label": 1, "kind": "paraphrase-pair", **meta})
        texts = [it["q"]] + it["p"]
        for nq in it["n"]:
            for t in texts:
                neg_written.append(
                    {"cached": t, "query": nq, "label": 0, "kind": "written-negative", **meta}
                )
    for (domain, topic), group in by_topic.items():
        for a in group:
            meta = {"domain": domain, "topic": topic, "split": split_of(a["q"])}
            for b in group:
                if a is b or b["q"] in a["n"] or a["q"] in b["n"]:
                    continue  # the written negatives already pair these two
                for ta in [a["q"]] + a["p"]:
                    for tb in [b["q"]] + b["p"]:
                        neg_topic.append(
                            {"cached": ta, "query": tb, "label": 0, "kind": "same-topic", **meta}
                        )
    want = int(NEG_PER_POS * len(pos)) - len(neg_written)
    rng.shuffle(neg_topic)
    rows = pos + neg_written + neg_topic[: max(0, want)]
    seen = set()
    out = []
    for r in rows:
        k = (r["cached"], r["query"])
        if k in seen or r["cached"] == r["query"]:
            continue
        seen.add(k)
        out.append(r)
    with open(DATA / "pairs.jsonl", "w") as f:
        for r in out:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    npos = sum(r["label"] for r in out)
    print(
        f"questions {len(items)}, pairs {len(out)}: positives {npos}, negatives {len(out) - npos}"
        f" (written {len(neg_written)}), topics {len(by_topic)}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
