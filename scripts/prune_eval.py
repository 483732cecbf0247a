"""Measure tollgate's pruning on the evaluation set: token reduction and the share of
conversations whose needed fact survives, against the recency baseline (the system
prompt and the last 40 messages).

    python3 scripts/prune_evalset.py                      # data/prune/eval.jsonl
    cargo build --release -p tollgate
    python3 scripts/prune_eval.py [--ratio 0.5 | --target-tokens N] [EVAL.jsonl]

Runs `tollgate prune` ($TOLLGATE_BIN, default target/release/tollgate) on the set with
`--stats` (o200k_base token counts before and after), and again on the recency baseline
with `--ratio 1` (nothing pruned: only its counts). A fact survives when its string is in
a message before the final question. Prints one line per method and exits 1 if the goal
(>= 50 % fewer tokens, >= 99 % facts kept) is missed.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(binary, path, extra, tmp):
    out = Path(tmp) / "out.jsonl"
    stats = Path(tmp) / "stats.jsonl"
    with out.open("w") as f:
        subprocess.run([binary, "prune", "--input", str(path), "--stats", str(stats), *extra],
                       stdout=f, check=True)
    pruned = [json.loads(line) for line in out.read_text().splitlines()]
    counts = [json.loads(line) for line in stats.read_text().splitlines()]
    return pruned, counts


def recency(messages, n=40):
    system = [m for m in messages if m["role"] == "system"]
    rest = [m for m in messages if m["role"] != "system"][-n:]
    # A tool result whose call was cut off would be invalid: drop leading results.
    while rest and rest[0]["role"] == "tool":
        rest.pop(0)
    return system + rest


def kept(messages, fact):
    return fact in json.dumps(messages[:-1])


def report(name, rows, pruned, counts):
    before = sum(c["tokens_before"] for c in counts)
    after = sum(c["tokens_after"] for c in counts)
    facts = sum(kept(p, r["fact"]) for p, r in zip(pruned, rows))
    reduction = 1 - after / before
    share = facts / len(rows)
    print(f"{name:<28} conversations={len(rows)} tokens_before={before} tokens_after={after} "
          f"reduction={reduction:.1%} facts_kept={facts}/{len(rows)} ({share:.1%})")
    return reduction, share


def main():
    args = sys.argv[1:]
    extra = ["--ratio", "0.5"]
    if args[:1] in (["--ratio"], ["--target-tokens"]):
        extra = args[:2]
        args = args[2:]
    path = Path(args[0]) if args else ROOT / "data" / "prune" / "eval.jsonl"
    binary = os.environ.get("TOLLGATE_BIN", str(ROOT / "target" / "release" / "tollgate"))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    with tempfile.TemporaryDirectory() as tmp:
        pruned, counts = run(binary, path, extra, tmp)
        base_in = Path(tmp) / "baseline.jsonl"
        base_in.write_text("".join(json.dumps({"messages": recency(r["messages"])}) + "\n" for r in rows))
        base_out, base_counts = run(binary, base_in, ["--ratio", "1"], tmp)
    # The baseline's "before" is the full conversation.
    for c, full in zip(base_counts, counts):
        c["tokens_before"] = full["tokens_before"]
    by_kind = {}
    for p, r in zip(pruned, rows):
        k = by_kind.setdefault(r["kind"], [0, 0])
        k[0] += kept(p, r["fact"])
        k[1] += 1
    red, share = report(f"tollgate prune {' '.join(extra)}", rows, pruned, counts)
    report("recency (system + last 40)", rows, base_out, base_counts)
    print("facts kept by kind: " + ", ".join(f"{k} {v[0]}/{v[1]}" for k, v in sorted(by_kind.items())))
    lost = [r["id"] for p, r in zip(pruned, rows) if not kept(p, r["fact"])]
    if lost:
        print("lost: " + " ".join(lost))
    ok = red >= 0.5 and share >= 0.99
    print("goal (>= 50% fewer tokens, >= 99% facts kept): " + ("met" if ok else "missed"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
