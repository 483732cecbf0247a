#!/usr/bin/env bash
# Where the gateway's CPU goes: samples it with `perf record -e cpu-clock` (a software
# clock: this VM has no hardware counters) while `load` drives it, then sorts the samples
# into categories (kernel TCP, malloc, hyper server, reqwest client, JSON, URL parsing,
# the ledger writer thread, ...).
#
#   bash bench/profile.sh                                   # 64 connections, closed loop
#   bash bench/profile.sh --rate 1000 --concurrency 32      # a fixed rate
#
# Layout as bench/run.sh's "pinned": the gateway on CPU 0, the stub and load on CPU 1.
# Needs release binaries (bash bench/run.sh builds them), perf and python3.
# Knobs: SECONDS_PROFILED (default 5), KEEP=1 keeps the perf data in the printed folder.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
BIN="$TARGET_DIR/release"
LOAD_ARGS=("$@")
[[ ${#LOAD_ARGS[@]} -gt 0 ]] || LOAD_ARGS=(--concurrency 64)
SECS=${SECONDS_PROFILED:-5}

WORK=$(mktemp -d -t tollgate-profile.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]:-}"; do [[ -n "$p" ]] && kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [[ -n "${KEEP:-}" ]] || rm -rf "$WORK"
}
trap cleanup EXIT

taskset -c 1 "$BIN/stub" >"$WORK/stub.url" &
PIDS+=($!)
for _ in $(seq 100); do [[ -s "$WORK/stub.url" ]] && break; sleep 0.05; done
port=18700
while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
cat >"$WORK/tollgate.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
[ledger]
path = "$WORK/ledger.db"
durability = "batched"
[[upstreams]]
name = "stub"
kind = "openai"
base_url = "$(head -1 "$WORK/stub.url")"
[[deployments]]
name = "gpt-4o-mini"
upstream = "stub"
model = "gpt-4o-mini"
EOF
key=$("$BIN/tollgate" keys create --db "$WORK/ledger.db" --team bench --agent load 2>/dev/null)
TOLLGATE_LOG=warn taskset -c 0 "$BIN/tollgate" serve --config "$WORK/tollgate.toml" 2>"$WORK/gateway.log" &
gw=$!
PIDS+=("$gw")
for _ in $(seq 200); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break; sleep 0.05; done

taskset -c 1 "$BIN/load" --url "http://127.0.0.1:$port/v1/chat/completions" --key "$key" \
    --warmup 2 --duration $((SECS + 3)) "${LOAD_ARGS[@]}" >"$WORK/load.txt" &
load_pid=$!
sleep 3
perf record -q -e cpu-clock -F 4000 --call-graph dwarf,16384 -p "$gw" -o "$WORK/perf.data" -- sleep "$SECS" 2>/dev/null
wait "$load_pid"
cat "$WORK/load.txt"
perf script -i "$WORK/perf.data" 2>/dev/null >"$WORK/stacks.txt"

python3 - "$WORK/stacks.txt" <<'PY'
import collections, re, sys
# A sample goes to the first category that matches: kernel paths by any frame of the
# stack (the syscall it is in), user-space leaf categories from the leaf up, then the
# first owning library from the leaf up.
KERNEL = [
    ("kernel: TCP send (loopback: also runs the receiver side and wakes it)", r"^(tcp_sendmsg|do_writev|__sys_sendto)$"),
    ("kernel: TCP receive", r"^(tcp_recvmsg|__sys_recvfrom|sock_recvmsg)$"),
    ("kernel: epoll wait, scheduler, futex wake-ups", r"^(do_epoll_wait|__schedule|do_futex|schedule)$"),
]
LEAF = [
    ("malloc/free (glibc)", r"(^|[^a-z])(malloc|_int_malloc|_int_free|cfree|__libc_free|__GI___libc_free|realloc|tcache_get|malloc_consolidate|unlink_chunk)"),
    ("memcpy/memmove", r"memcpy|memmove"),
    ("kernel: other (interrupts, timers, ...)", r"^(asm_|.*_irq|.*irq_|finish_task_switch|do_syscall_64|entry_SYSCALL)"),
    ("URL parsing (inside reqwest)", r"^url::|idna::"),
    ("JSON parse/serialize (serde_json)", r"serde_json"),
    ("SHA-256 of the key", r"sha2::"),
]
OWNER = [
    ("tollgate handler code (proxy, meter, pricing, auth)", r"tollgate_"),
    ("reqwest / hyper client (upstream side)", r"reqwest|hyper_util::client|hyper::client|role::Client|UpgradeableConnection"),
    ("axum / hyper server (client side)", r"axum|hyper::proto|hyper::server|tower::"),
    ("tokio runtime", r"tokio::"),
]
counts, total, threads = collections.Counter(), 0, collections.Counter()
for block in open(sys.argv[1]).read().split("\n\n"):
    lines = block.strip().split("\n")
    if len(lines) < 2:
        continue
    total += 1
    comm = lines[0].split()[0]
    threads[comm] += 1
    if comm == "tollgate-ledger":
        counts["ledger writer thread (SQLite)"] += 1
        continue
    frames = [re.sub(r"\+0x[0-9a-f]+.*$", "", l.strip().split(" ", 1)[1]) for l in lines[1:] if " " in l.strip()]
    got = next((n for n, rx in KERNEL if any(re.search(rx, f) for f in frames)), None)
    got = got or next((n for f in frames for n, rx in LEAF if re.search(rx, f)), None)
    got = got or next((n for f in frames for n, rx in OWNER if re.search(rx, f)), None)
    counts[got or "other"] += 1
print(f"\n{total} samples; by thread: {dict(threads)}\n")
print("| where the gateway's CPU time goes | share |\n|---|---:|")
for name, n in counts.most_common():
    print(f"| {name} | {100 * n / total:.1f}% |")
PY
[[ -z "${KEEP:-}" ]] || echo "perf data kept in $WORK" >&2
