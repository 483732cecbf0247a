#!/usr/bin/env python3
"""Independent reference implementation of tollgate's router scorer, in plain Python 3.

It re-implements, from the spec in crates/tollgate-domain/src/routing/{features,model}.rs
and without sharing code, the featuriser (normalise, window, tokenise, hash) and the
model file reader, and writes the test vectors the Rust tests check
(crates/tollgate-domain/data/router-test-vectors.json):

    python3 scripts/router_ref.py crates/tollgate-domain/data/router-default.bin \
        > crates/tollgate-domain/data/router-test-vectors.json

Regenerate the vectors whenever the default model is retrained.
"""
from __future__ import annotations

import json
import math
import struct
import sys

MASK64 = (1 << 64) - 1
FNV_OFFSET, FNV_PRIME = 0xCBF29CE484222325, 0x100000001B3


def fnv1a64(data: bytes) -> int:
    h = FNV_OFFSET
    for b in data:
        h = ((h ^ b) * FNV_PRIME) & MASK64
    return h


def splitmix_fin(x: int) -> int:
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & MASK64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & MASK64


def is_word(b: int) -> bool:
    return 48 <= b <= 57 or 65 <= b <= 90 or 97 <= b <= 122 or b >= 128


WS = b" \t\r\n\x0b\x0c"


def strip_tail(d: bytes) -> bytes:
    d = d.rstrip(WS)
    if d.endswith(b"Answer:"):
        d = d[:-7].rstrip(WS)
    return d


def windows(d: bytes, head: int, tail: int):
    if len(d) <= head + tail:
        return d, b"", False

    def splits(i):
        return 0 < i < len(d) and is_word(d[i - 1]) and is_word(d[i])

    end = head
    while splits(end) and head - end < min(64, head):
        end -= 1
    if splits(end):
        end = head
    base = len(d) - tail
    start = base
    while splits(start) and start - base < min(64, tail):
        start += 1
    if splits(start):
        start = base
    return d[:end], d[start:], d[start - 1] == 10


def normalise(seg: bytes, line_start: bool) -> bytes:
    lines = seg.split(b"\n")
    out = []
    for k, ln in enumerate(lines):
        at_start = line_start if k == 0 else True
        if at_start and len(ln) >= 3 and 65 <= ln[0] <= 74 and ln[1:3] in (b". ", b") "):
            ln = ln[3:]
        out.append(ln)
    return b"\n".join(out)


def tokens(seg: bytes):
    toks, cur = [], None
    for b in seg:
        if is_word(b):
            if cur is None:
                cur = bytearray()
            if len(cur) < 32:
                cur.append(b + 32 if 65 <= b <= 90 else b)
        elif cur is not None:
            toks.append(bytes(cur))
            cur = None
    if cur is not None:
        toks.append(bytes(cur))
    return toks


def featurise(text: str, bits: int, head: int, tail: int):
    """-> (distinct buckets in first-seen order, token count)"""
    mask = (1 << bits) - 1
    h, t, tail_ls = windows(strip_tail(text.encode("utf-8")), head, tail)
    seen, order, ntok = set(), [], 0
    for seg in (normalise(h, True), normalise(t, tail_ls)):
        prev = None
        for tok in tokens(seg):
            ntok += 1
            hu = fnv1a64(b"w" + tok)
            keys = [hu & mask]
            if prev is not None:
                keys.append(splitmix_fin(prev ^ rotl(hu, 32)) & mask)
            prev = hu
            for k in keys:
                if k not in seen:
                    seen.add(k)
                    order.append(k)
    return order, ntok


class Model:
    def __init__(self, path: str):
        b = open(path, "rb").read()
        at = 0

        def take(fmt):
            nonlocal at
            v = struct.unpack_from("<" + fmt, b, at)
            at += struct.calcsize("<" + fmt)
            return v

        assert b[:8] == b"TGROUTER", "bad magic"
        at = 8
        (version,) = take("H")
        assert version == 1, version
        self.bits, self.min_tokens = take("BB")
        self.head, self.tail = take("II")
        self.scale, self.bias, self.quality_target, self.threshold = take("dddd")
        (npts,) = take("H")
        at += 24 * npts
        names = []
        for _ in range(2):
            (n,) = take("H")
            names.append(b[at:at + n].decode())
            at += n
        self.light, self.heavy = names
        (ndense,) = take("H")
        assert ndense == 0, "dense inputs are not implemented in this reference"
        (nmeta,) = take("I")
        at += nmeta
        self.q = struct.unpack_from("<%dh" % (1 << self.bits), b, at)
        assert at + 2 * (1 << self.bits) == len(b), "trailing bytes"

    def margin(self, text: str):
        ks, ntok = featurise(text, self.bits, self.head, self.tail)
        if not ks:
            return self.bias, ks, ntok
        s = sum(self.q[k] for k in ks)  # exact integer sum
        return self.bias + (float(s) * self.scale) / math.sqrt(float(len(ks))), ks, ntok

    def score(self, text: str) -> float:
        z, _, ntok = self.margin(text)
        if ntok < self.min_tokens:
            return 0.0
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


PROMPTS = [
    ("code", "Write a Rust function that parses an HTTP/1.1 request line and returns the method, path and version. Handle malformed input without panicking and add unit tests."),
    ("code-bug", "Why does this Python code raise KeyError?\n```python\nd = {}\nfor w in words:\n    d[w] += 1\n```"),
    ("math", "Let f(x) = x^3 - 6x^2 + 11x - 6. Find all real roots and prove there are no others. Then compute the integral of f from 0 to 3."),
    ("legal", "Under the GDPR, can a controller rely on legitimate interest to process employee location data collected from company phones? Analyse Articles 6(1)(f) and 88 and cite relevant case law."),
    ("architecture", "Design a multi-region active-active architecture for a payments ledger that must guarantee exactly-once settlement. Discuss consistency models, failure modes and how you would test them."),
    ("formatting", "Convert this list to a markdown table with columns Name and Age: Alice 30, Bob 25, Carol 41."),
    ("summary", "Summarize the following paragraph in one sentence: The city council met on Tuesday to discuss the new bike lanes. Several residents spoke in favour, citing safety, while shop owners worried about parking. The council will vote next month."),
    ("greeting", "hi"),
    ("two-words", "hello there"),
    ("empty", ""),
    ("unicode", "Übersetze bitte ins Französische: «Der schnelle braune Fuchs springt über den faulen Hund.» — danke! 🦊"),
    ("edge-format", "Which is larger?\r\nA. 2^10\r\nB) 10^3\nC. Supercalifragilisticexpialidocious-antidisestablishmentarianism\nD. {x; y}\n```\ncode\n```\nAnswer:  \n"),
    ("edge-digits", "Compute 123456789012345678901234567890123456789 * 42 / 7 = ? $5 + 10% <> 3"),
    ("gsm8k-like", "A train leaves at 3:15 pm and travels 240 km at 80 km/h, then 150 km at 60 km/h. At what time does it arrive?"),
]


def long_prompts():
    # Exercise the head/tail windows: > 4 KB, word boundaries near both cuts, an option
    # prefix right after the tail cut, and a 5 KB token-free run.
    base = "The committee reviewed clause %d of the agreement and noted its obligations.\n"
    text = "".join(base % i for i in range(80))
    yield "long-transcript", text + "A. Which obligations survive termination? Answer:"
    yield "long-one-word-runs", ("x" * 3000) + " middle " + ("y" * 3000)
    yield "long-punctuation", "Explain: " + ("-=" * 2600) + " why?"


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "crates/tollgate-domain/data/router-default.bin"
    m = Model(path)
    rows = [json.loads(l) for l in open("data/router/dev.jsonl")]
    picks = [(f"dev[{i}] {rows[i]['source']}", rows[i]["prompt"]) for i in range(0, len(rows), 149)]
    out = []
    for name, p in picks + PROMPTS + list(long_prompts()):
        z, ks, ntok = m.margin(p)
        v = {"name": name, "prompt": p, "tokens": ntok, "n_buckets": len(ks),
             "bucket_sum": sum(ks), "margin": z, "score": m.score(p)}
        if len(ks) <= 64:
            v["buckets"] = sorted(ks)
        out.append(v)
    json.dump({"model": path, "bits": m.bits, "tolerance": 1e-12, "vectors": out},
              sys.stdout, indent=1, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
