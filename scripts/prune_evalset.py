"""Build the pruning evaluation set: long, tool-heavy coding-agent conversations in which
one fact is stated once early on (in a tool output, or in an early user or assistant
message) and the final user question needs it.

    python3 scripts/prune_evalset.py            # writes data/prune/eval.jsonl (200 lines)
    python3 scripts/prune_evalset.py -n 50 OUT  # fewer, elsewhere

Each line: {"id", "kind", "messages" (OpenAI chat format: system, user, assistant with
tool_calls, tool), "fact" (the string the answer needs), "question", "tokens_est"}.
The fact sits in the first fifth of the conversation; conversations are 5k–50k tokens;
distractors (the same kind of line about other environments, services, releases) are
spread through the rest, and some files are read twice. The fact string occurs exactly
once before the final question (checked). Deterministic: a fixed seed, no other input.
"""

import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "data" / "prune" / "eval.jsonl"

WORDS = ("account invoice ledger payment refund order customer session token cache queue "
         "worker batch retry timeout schema record handler request response client server "
         "config parser router metric report export import signal event stream buffer "
         "channel socket upstream price budget tenant quota limit window counter").split()
MODULES = "billing payments auth search catalog shipping inventory notify audit gateway".split()
ENVS = ["staging", "production", "development", "qa", "sandbox", "preview"]
SERVICES = ["orders", "ledger", "avatars", "exports", "backups", "invoices", "thumbnails"]
REGIONS = ["eu-west-1", "us-east-2", "ap-southeast-2", "eu-central-1", "us-west-2", "sa-east-1"]
PEOPLE = ["Priya Raman", "Tomasz Wojcik", "Amara Okafor", "Lucas Moreau", "Yuki Tanaka",
          "Sofia Lindqvist", "Diego Alvarez", "Hannah Becker"]
FLAGS = ["new_checkout", "bulk_refunds", "smart_retry", "ledger_v2", "async_exports"]

SYSTEM = ("You are a senior software engineer working as an autonomous coding agent in the "
          "repository of an e-commerce platform. Use the tools to read files, search the code, "
          "run the tests and inspect logs. Think step by step, keep changes minimal, and when "
          "the user asks a question answer it precisely from what you have seen in this session.")


def ident(r):
    return "_".join(r.sample(WORDS, 2))


def code_file(r, lines):
    out = []
    for i in range(lines):
        k = r.random()
        if k < 0.15:
            out.append(f"def {ident(r)}({ident(r)}, {ident(r)}={r.randint(1, 999)}):")
        elif k < 0.25:
            out.append(f"    # {r.choice(WORDS)} {r.choice(WORDS)} {r.choice(WORDS)} handling")
        elif k < 0.35:
            out.append(f"    if {ident(r)} is None or {ident(r)} > {r.randint(1, 999)}:")
        else:
            out.append(f"    {ident(r)} = {ident(r)}({ident(r)}, {r.choice(WORDS)}={r.randint(0, 999)})")
    return "\n".join(out)


def log_lines(r, lines):
    lv = ["INFO", "INFO", "INFO", "DEBUG", "WARN"]
    return "\n".join(
        f"2026-11-{r.randint(1, 28):02d}T{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}Z "
        f"{r.choice(lv)} {r.choice(MODULES)}: {r.choice(WORDS)} {r.choice(WORDS)} took {r.randint(1, 999)}ms"
        for _ in range(lines))


def test_output(r, lines):
    out = [f"tests/test_{r.choice(MODULES)}.py::test_{ident(r)} PASSED" for _ in range(lines)]
    out.append(f"==== {lines} passed, 0 failed in {r.randint(1, 99)}.{r.randint(0, 9)}s ====")
    return "\n".join(out)


def grep_output(r, lines):
    return "\n".join(
        f"src/{r.choice(MODULES)}/{r.choice(WORDS)}.py:{r.randint(1, 999)}:    {ident(r)} = {ident(r)}()"
        for _ in range(lines))


def hexid(r, n):
    return "".join(r.choice("0123456789abcdef") for _ in range(n))


def upper_id(r, n):
    return "".join(r.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(n))


# Each fact kind: (where, make) -> make(r) gives (statement, question, fact, distractor()).
def fact_db_port(r):
    env = r.choice(ENVS)
    port = str(r.randint(20000, 29999))
    others = [e for e in ENVS if e != env]
    return (f"{env.upper()}_DB_PORT={port}",
            f"Which port does the {env} database listen on?", port,
            lambda: f"{r.choice(others).upper()}_DB_PORT={r.randint(30000, 39999)}")


def fact_release_commit(r):
    rel = f"v{r.randint(2, 9)}.{r.randint(0, 30)}.{r.randint(0, 9)}"
    sha = hexid(r, 12)
    return (f"2026-11-03T09:12:44Z INFO deploy: release {rel} pinned to commit {sha}",
            f"Which commit is release {rel} pinned to?", sha,
            lambda: f"2026-11-0{r.randint(4, 9)}T10:00:00Z INFO deploy: release v1.{r.randint(0, 9)}.{r.randint(0, 9)} pinned to commit {hexid(r, 12)}")


def fact_bucket_region(r):
    svc = r.choice(SERVICES)
    region = r.choice(REGIONS)
    others = [s for s in SERVICES if s != svc]
    regions = [g for g in REGIONS if g != region]
    return (f'{{"bucket": "acme-{svc}", "region": "{region}", "versioning": true}}',
            f"In which region is the acme-{svc} bucket?", region,
            lambda: f'{{"bucket": "acme-{r.choice(others)}", "region": "{r.choice(regions)}", "versioning": false}}')


def fact_retry_budget(r):
    mod = r.choice(MODULES)
    n = str(r.randint(40000, 89999))
    others = [m for m in MODULES if m != mod]
    return (f"src/{mod}/settings.py:12: RETRY_BUDGET_MS = {n}",
            f"What is RETRY_BUDGET_MS set to in the {mod} module?", n,
            lambda: f"src/{r.choice(others)}/settings.py:12: RETRY_BUDGET_MS = {r.randint(1000, 9999)}")


def fact_flag_date(r):
    flag = r.choice(FLAGS)
    date = f"2027-{r.randint(1, 12):02d}-{r.randint(10, 28):02d}"
    others = [f for f in FLAGS if f != flag]
    return (f"The feature flag `{flag}` must stay disabled until {date} (legal review).",
            f"Until what date must the {flag} feature flag stay disabled?", date,
            lambda: f"The feature flag `{r.choice(others)}` was enabled for all tenants.")


def fact_test_expected(r):
    fn = ident(r)
    a = str(r.randint(10000, 19999))
    return (f"FAILED tests/test_ledger.py::test_{fn} - AssertionError: expected {a}, got {r.randint(20000, 29999)}",
            f"In the test run earlier, what value did test_{fn} expect?", a,
            lambda: f"tests/test_ledger.py::test_{ident(r)} PASSED")


def fact_migration(r):
    num = str(r.randint(4000, 4999))
    what = r.choice(["adds_refund_reason", "drops_legacy_tokens", "splits_invoice_lines"])
    return (f"migrations/{num}_{what}.sql",
            f"What is the number of the migration that {what.replace('_', ' ')}?", num,
            lambda: f"migrations/{r.randint(1000, 3999)}_{ident(r)}.sql")


def fact_oncall(r):
    who = r.choice(PEOPLE)
    return (f"Before you start: the on-call engineer this week is {who}; page them if the migration fails.",
            "Who did I say is the on-call engineer this week?", who,
            lambda: f"INFO notify: paged {r.choice(['the billing rota', 'the platform rota'])}")


def fact_ticket(r):
    t = f"SUP-{r.randint(100000, 999999)}"
    return (f"Also, the customer's ticket is {t}; reference it in the commit message.",
            "What ticket number should go in the commit message?", t,
            lambda: f"INFO support: ticket queue depth {r.randint(1, 99)}")


def fact_webhook(r):
    sec = f"whsec_{upper_id(r, 10)}"
    return (f"I noticed the payments webhook signing secret in the fixture is {sec}, which the tests reuse.",
            "What was the payments webhook signing secret you noticed in the fixture?", sec,
            lambda: f"WEBHOOK_URL=https://hooks.example.com/{r.choice(MODULES)}")


TOOL_FACTS = [fact_db_port, fact_release_commit, fact_bucket_region, fact_retry_budget,
              fact_flag_date, fact_test_expected, fact_migration]
USER_FACTS = [fact_oncall, fact_ticket]
ASSISTANT_FACTS = [fact_webhook]


def tool_call(i, name, args):
    return {"id": f"call_{i:03d}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(args)}}


def conversation(idx):
    r = random.Random(1000 + idx)
    target = r.randint(5000, 50000)
    pool = r.choices([TOOL_FACTS, USER_FACTS, ASSISTANT_FACTS], weights=[7, 2, 1])[0]
    make = r.choice(pool)
    statement, question, fact, distractor = make(r)
    kind = make.__name__[5:]
    task_mod = r.choice(MODULES)
    msgs = [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"The {task_mod} service fails its nightly batch with a timeout. "
                                        f"Find the cause and fix it; run the tests before you finish."}]
    # Steps until the target size; the fact goes in the first fifth.
    steps = []
    chars = 0
    while chars < target * 4:
        # Mostly short outputs, now and then a long file dump.
        n = r.randint(4, 40) if r.random() < 0.85 else r.randint(80, 300)
        tool = r.choice(["read_file", "read_file", "grep", "run_tests", "read_logs"])
        steps.append((tool, n))
        chars += n * 55 + 320
    fact_step = r.randint(0, max(0, len(steps) // 5))
    files = {}
    for s, (tool, n) in enumerate(steps):
        i = s
        thought = r.choice(["Let me look at the next part.", "Checking the related code.",
                            "That did not explain it; searching further.", "Reading the logs around the failure."])
        if s == fact_step and pool is USER_FACTS:
            msgs.append({"role": "user", "content": statement})
        if s == fact_step and pool is ASSISTANT_FACTS:
            thought = statement + " " + thought
        if tool == "read_file":
            if files and r.random() < 0.2:
                path = r.choice(sorted(files))
                body = files[path]
            else:
                path = f"src/{r.choice(MODULES)}/{r.choice(WORDS)}.py"
                body = code_file(r, n)
                files[path] = body
            args = {"path": path}
        elif tool == "grep":
            args = {"pattern": ident(r)}
            body = grep_output(r, n)
        elif tool == "run_tests":
            args = {"path": "tests/"}
            body = test_output(r, n)
        else:
            args = {"service": task_mod, "lines": n}
            body = log_lines(r, n)
        lines = body.split("\n")
        if s == fact_step and pool is TOOL_FACTS:
            lines.insert(r.randint(0, len(lines)), statement)
        elif s > fact_step and r.random() < 0.35:
            lines.insert(r.randint(0, len(lines)), distractor())
        body = "\n".join(lines)
        msgs.append({"role": "assistant", "content": thought,
                     "tool_calls": [tool_call(i, tool, args)]})
        msgs.append({"role": "tool", "tool_call_id": f"call_{i:03d}", "content": body})
        if r.random() < 0.1:
            msgs.append({"role": "assistant", "content": "Progress so far: narrowed it down, continuing."})
            msgs.append({"role": "user", "content": "ok, continue"})
    msgs.append({"role": "assistant", "content": "I have found the cause: the batch size times the retry delay exceeds the job timeout. I lowered the batch size and the tests pass."})
    msgs.append({"role": "user", "content": f"Thanks. One more thing before you wrap up: {question}"})
    text = json.dumps(msgs[:-1])
    assert text.count(fact) == 1, (idx, fact, text.count(fact))
    return {"id": f"prune-{idx:03d}", "kind": kind, "messages": msgs, "fact": fact,
            "question": question, "tokens_est": len(text) // 4}


def main():
    args = sys.argv[1:]
    n = 200
    if args[:1] == ["-n"]:
        n = int(args[1])
        args = args[2:]
    out = Path(args[0]) if args else OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for i in range(n):
            f.write(json.dumps(conversation(i)) + "\n")
    print(f"wrote {n} conversations to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
