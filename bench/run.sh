#!/usr/bin/env bash
# tollgate's load benchmark: the source of truth for BENCHMARKS.md.
#
#   bash bench/run.sh                 # everything (about 6 minutes after the build)
#   PIN=pinned bash bench/run.sh      # only the pinned layout (or PIN=unpinned)
#
# What it does, for each CPU layout ("pinned": the gateway alone on CPU 0, the stub and
# the load generator on CPU 1; "unpinned": no affinity, everything shares both cores):
#   1. starts `stub` (a zero-latency OpenAI-compatible upstream) and `tollgate serve` in
#      front of it (virtual key auth, pricing, the SQLite ledger with batched durability);
#   2. records the gateway's idle RSS (VmRSS once /healthz answers);
#   3. measures direct-to-stub and through-the-gateway latency with `load`:
#        - open loop at RATE req/s (latency from each request's scheduled send time),
#        - closed loop at CONC connections,
#        - closed loop at MAXCONC connections (max throughput);
#      overhead = gateway percentile - direct percentile;
#   4. records the gateway's peak RSS (VmHWM), stops it (SIGTERM drains the ledger) and
#      checks that the ledger holds one row per request the gateway answered;
# then runs the ledger write-rate bench (batched, strict) and its naive baseline.
# Prints a markdown report and writes it to bench/results/latest.md (OUT=...).
#
# Knobs (environment): DURATION (s, measured per run), WARMUP (s), RATE, CONC, MAXCONC,
# POOL (open-loop connection pool), PIN (both|pinned|unpinned), LEDGER_ROWS,
# STRICT_ROWS, STRICT_PRODUCERS, NAIVE_ROWS, OUT, NO_BUILD=1, GATEWAY_BIN (another
# tollgate binary to measure, e.g. a copy of an older build for an A/B comparison),
# STORE (sqlite, the default, or postgres: the gateway's store in a fresh schema of
# $PG_URL, default postgres://postgres@127.0.0.1:5432/test, dropped afterwards),
# LEDGER_BENCH=0 (skip the ledger write-rate benches).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
DURATION=${DURATION:-15}
WARMUP=${WARMUP:-3}
RATE=${RATE:-1000}
CONC=${CONC:-16}
MAXCONC=${MAXCONC:-64}
POOL=${POOL:-32}
PIN=${PIN:-both}
LEDGER_ROWS=${LEDGER_ROWS:-500000}
STRICT_ROWS=${STRICT_ROWS:-100000}
STRICT_PRODUCERS=${STRICT_PRODUCERS:-256}
NAIVE_ROWS=${NAIVE_ROWS:-20000}
OUT=${OUT:-bench/results/latest.md}

log() { echo "[bench] $*" >&2; }

if [[ -z "${NO_BUILD:-}" ]]; then
    log "building release binaries"
    cargo build --release -p tollgate -p tollgate-bench >&2
fi
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
BIN="$TARGET_DIR/release"
for b in tollgate stub load ledger; do
    [[ -x "$BIN/$b" ]] || { log "missing $BIN/$b"; exit 1; }
done
GATEWAY_BIN=${GATEWAY_BIN:-$BIN/tollgate}

WORK=$(mktemp -d -t tollgate-bench.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]:-}"; do
        [[ -n "$p" ]] && kill "$p" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    local p
    for p in $(seq 18400 18999); do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return
        fi
    done
    return 1
}

proc_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
# CPU time (user + system, all threads) a process has used, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))

# One `load` run against the server process PID; writes $WORK/<name>.json, adding the
# server's CPU time per request (every request of the run, warm-up included).
load() {
    local name=$1 pid=$2
    shift 2
    log "run: $name"
    local before after
    before=$(cpu_ticks "$pid")
    $LOAD_PIN "$BIN/load" --json --label "$name" --duration "$DURATION" --warmup "$WARMUP" "$@" \
        >"$WORK/$name.raw.json"
    after=$(cpu_ticks "$pid")
    jq --argjson ticks "$((after - before))" --argjson tick_us "$TICK_US" \
        '. + {server_cpu_us_per_req: (($ticks * $tick_us) / ([.ok_total + .non_2xx_total + .transport_errors_total, 1] | max) | . * 10 | round / 10)}' \
        "$WORK/$name.raw.json" >"$WORK/$name.json"
    rm "$WORK/$name.raw.json"
}

# Runs one layout; leaves $WORK/<layout>-*.json and $WORK/<layout>-mem.json.
run_layout() {
    local layout=$1
    if [[ $layout == pinned ]]; then
        GW_PIN="taskset -c 0"
        LOAD_PIN="taskset -c 1"
    else
        GW_PIN=""
        LOAD_PIN=""
    fi
    local dir="$WORK/$layout"
    mkdir -p "$dir"

    $LOAD_PIN "$BIN/stub" --listen 127.0.0.1:0 >"$dir/stub.url" 2>"$dir/stub.log" &
    local stub_pid=$!
    PIDS+=("$stub_pid")
    for _ in $(seq 100); do [[ -s "$dir/stub.url" ]] && break; sleep 0.05; done
    local upstream
    upstream=$(head -1 "$dir/stub.url")
    [[ -n "$upstream" ]] || { log "the stub did not start"; exit 1; }

    local port
    port=$(free_port)
    local store_toml="" schema="tg_bench_gw_$$_$layout"
    if [[ "${STORE:-sqlite}" == postgres ]]; then
        store_toml="[store]
kind = \"postgres\"
schema = \"$schema\""
    fi
    cat >"$dir/tollgate.toml" <<EOF
[server]
listen = "127.0.0.1:$port"

[ledger]
path = "$dir/ledger.db"
durability = "batched"
$store_toml

[[upstreams]]
name = "stub"
kind = "openai"
base_url = "$upstream"

[[deployments]]
name = "gpt-4o-mini"
upstream = "stub"
model = "gpt-4o-mini"
EOF
    local key
    export TOLLGATE_POSTGRES_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432/test}
    if [[ "${STORE:-sqlite}" == postgres ]]; then
        key=$("$GATEWAY_BIN" keys create --config "$dir/tollgate.toml" --team bench --agent load 2>/dev/null)
    else
        key=$("$GATEWAY_BIN" keys create --db "$dir/ledger.db" --team bench --agent load 2>/dev/null)
    fi
    TOLLGATE_MASTER_KEY=bench-master-key TOLLGATE_LOG=warn \
        $GW_PIN "$GATEWAY_BIN" serve --config "$dir/tollgate.toml" 2>"$dir/gateway.log" &
    local gw_pid=$!
    PIDS+=("$gw_pid")
    local gw="http://127.0.0.1:$port"
    for _ in $(seq 200); do curl -fs "$gw/healthz" >/dev/null 2>&1 && break; sleep 0.05; done
    curl -fs "$gw/healthz" >/dev/null || { log "the gateway did not start"; cat "$dir/gateway.log" >&2; exit 1; }
    sleep 1
    local idle_kb
    idle_kb=$(proc_kb "$gw_pid" VmRSS)
    log "$layout: stub $upstream (pid $stub_pid), gateway $gw (pid $gw_pid), idle RSS ${idle_kb} kB"

    local direct="$upstream/chat/completions"
    local through="$gw/v1/chat/completions"
    # Direct and gateway runs alternate, so drift in the machine's load hits both.
    load "$layout-rate-direct" "$stub_pid" --url "$direct" --rate "$RATE" --concurrency "$POOL"
    load "$layout-rate-gateway" "$gw_pid" --url "$through" --key "$key" --rate "$RATE" --concurrency "$POOL"
    load "$layout-conc-direct" "$stub_pid" --url "$direct" --concurrency "$CONC"
    load "$layout-conc-gateway" "$gw_pid" --url "$through" --key "$key" --concurrency "$CONC"
    load "$layout-max-direct" "$stub_pid" --url "$direct" --concurrency "$MAXCONC"
    load "$layout-max-gateway" "$gw_pid" --url "$through" --key "$key" --concurrency "$MAXCONC"
    load "$layout-stream-gateway" "$gw_pid" --url "$through" --key "$key" --concurrency "$CONC" --stream

    local peak_kb after_kb
    peak_kb=$(proc_kb "$gw_pid" VmHWM)
    after_kb=$(proc_kb "$gw_pid" VmRSS)
    kill -TERM "$gw_pid"
    wait "$gw_pid" || true
    kill "$stub_pid" 2>/dev/null || true
    wait "$stub_pid" 2>/dev/null || true
    local rows answered
    if [[ "${STORE:-sqlite}" == postgres ]]; then
        rows=$(psql "$TOLLGATE_POSTGRES_URL" -Atc "SELECT count(*) FROM $schema.ledger")
        psql "$TOLLGATE_POSTGRES_URL" -qc "SET client_min_messages = warning; DROP SCHEMA $schema CASCADE" >/dev/null
    else
        rows=$("$BIN/ledger" count --db "$dir/ledger.db")
    fi
    # Every request the gateway answered (2xx or not) after authenticating makes one row.
    answered=$(jq -s '[.[] | .ok_total + .non_2xx_total] | add' "$WORK/$layout"-*-gateway.json)
    jq -n --arg layout "$layout" --argjson idle "$idle_kb" --argjson peak "$peak_kb" \
        --argjson after "$after_kb" --argjson rows "$rows" --argjson answered "$answered" \
        '{layout: $layout, idle_kb: $idle, peak_kb: $peak, after_kb: $after, rows: $rows, answered: $answered}' \
        >"$WORK/$layout-mem.json"
    log "$layout: peak RSS ${peak_kb} kB; ledger rows $rows for $answered answered requests"
}

case "$PIN" in
    both) LAYOUTS=(pinned unpinned) ;;
    pinned | unpinned) LAYOUTS=("$PIN") ;;
    *) log "PIN must be both, pinned or unpinned"; exit 1 ;;
esac
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for l in "${LAYOUTS[@]}"; do run_layout "$l"; done

if [[ "${LEDGER_BENCH:-1}" != 0 ]]; then
log "ledger benches"
"$BIN/ledger" run --rows "$LEDGER_ROWS" --producers 4 --durability batched --json >"$WORK/ledger-batched.json"
# Stress: 1,000 long-running tasks interleaved (the (task, ts_ms) index's worst case).
"$BIN/ledger" run --rows "$LEDGER_ROWS" --producers 4 --durability batched --tasks 1000 --calls-per-task 500 \
    --json >"$WORK/ledger-batched-tasks.json"
"$BIN/ledger" run --rows "$STRICT_ROWS" --producers "$STRICT_PRODUCERS" --durability strict --json >"$WORK/ledger-strict.json"
"$BIN/ledger" naive --rows "$NAIVE_ROWS" --durability batched --json >"$WORK/ledger-naive.json"
"$BIN/ledger" naive --rows "$((NAIVE_ROWS / 10))" --durability strict --json >"$WORK/ledger-naive-strict.json"
fi
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- the report ------------------------------------------------------------------------
q() { jq -r "$2" "$WORK/$1.json"; }
us() { q "$1" ".latency_us.$2"; }
report() {
    echo "# tollgate benchmark results"
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%MZ); commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- crates bench 2>/dev/null || echo ' (+ local changes)')"
    echo "- machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(free -g | awk '/Mem:/ {print $2}') GiB RAM, Linux $(uname -r), $(rustc --version)"
    echo "- load average (1/5/15 min) before: $load_before; after: $load_after"
    echo "- each run: ${WARMUP} s warm-up (not recorded) + ${DURATION} s measured; latency in µs; gateway: key auth, pricing, ${STORE:-sqlite} store (ledger batched)"
    echo "- pinned: gateway \`taskset -c 0\`, stub and load generator \`taskset -c 1\`; unpinned: no affinity"
    echo
    echo "## Overhead at a fixed rate of $RATE req/s (open loop, latency from the scheduled send time, pool of $POOL connections)"
    echo
    echo "| layout | direct p50 | direct p99 | gateway p50 | gateway p90 | gateway p99 | gateway p99.9 | **overhead p50** | **overhead p99** | achieved req/s | errors |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for l in "${LAYOUTS[@]}"; do
        local d="$l-rate-direct" g="$l-rate-gateway"
        echo "| $l | $(us "$d" p50) | $(us "$d" p99) | $(us "$g" p50) | $(us "$g" p90) | $(us "$g" p99) | $(us "$g" p999) | **$(($(us "$g" p50) - $(us "$d" p50)))** | **$(($(us "$g" p99) - $(us "$d" p99)))** | $(q "$g" .rps) | $(q "$g" .errors) |"
    done
    echo
    echo "Service time (from the actual send) and the load generator's dispatch delay (schedule → send) at $RATE req/s:"
    echo
    echo "| layout | direct service p50 / p99 | gateway service p50 / p99 | service overhead p50 / p99 | dispatch delay p50 / p99 (gateway run) | gateway CPU µs/req |"
    echo "|---|---:|---:|---:|---:|---:|"
    for l in "${LAYOUTS[@]}"; do
        local d="$l-rate-direct" g="$l-rate-gateway"
        echo "| $l | $(q "$d" .service_us.p50) / $(q "$d" .service_us.p99) | $(q "$g" .service_us.p50) / $(q "$g" .service_us.p99) | $(($(q "$g" .service_us.p50) - $(q "$d" .service_us.p50))) / $(($(q "$g" .service_us.p99) - $(q "$d" .service_us.p99))) | $(q "$g" .dispatch_us.p50) / $(q "$g" .dispatch_us.p99) | $(q "$g" .server_cpu_us_per_req) |"
    done
    echo
    echo "## Fixed concurrency: $CONC connections (closed loop)"
    echo
    echo "| layout | direct req/s | direct p50 | direct p99 | gateway req/s | gateway p50 | gateway p99 | gateway p99.9 | overhead p50 | overhead p99 | gateway CPU µs/req | errors |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for l in "${LAYOUTS[@]}"; do
        local d="$l-conc-direct" g="$l-conc-gateway"
        echo "| $l | $(q "$d" .rps) | $(us "$d" p50) | $(us "$d" p99) | $(q "$g" .rps) | $(us "$g" p50) | $(us "$g" p99) | $(us "$g" p999) | $(($(us "$g" p50) - $(us "$d" p50))) | $(($(us "$g" p99) - $(us "$d" p99))) | $(q "$g" .server_cpu_us_per_req) | $(q "$g" .errors) |"
    done
    echo
    echo "## Max throughput: $MAXCONC connections (closed loop), and SSE streams at $CONC"
    echo
    echo "| layout | direct req/s | stub CPU µs/req | **gateway req/s** | gateway p50 | gateway p99 | gateway CPU µs/req | errors | gateway SSE req/s | SSE p50 | SSE p99 | SSE CPU µs/req | SSE errors |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for l in "${LAYOUTS[@]}"; do
        local d="$l-max-direct" g="$l-max-gateway" s="$l-stream-gateway"
        echo "| $l | $(q "$d" .rps) | $(q "$d" .server_cpu_us_per_req) | **$(q "$g" .rps)** | $(us "$g" p50) | $(us "$g" p99) | $(q "$g" .server_cpu_us_per_req) | $(q "$g" .errors) | $(q "$s" .rps) | $(us "$s" p50) | $(us "$s" p99) | $(q "$s" .server_cpu_us_per_req) | $(q "$s" .errors) |"
    done
    echo
    echo "CPU µs/req: the server process's user + system CPU time over the run (warm-up included, all threads: for the gateway that includes the ledger writer) divided by the requests it answered. Unlike req/s, it barely depends on what else the machine runs, so it is the figure to compare builds with."
    echo
    for l in "${LAYOUTS[@]}"; do
        local g="$l-max-gateway" d="$l-max-direct"
        local gw_cpu stub_cpu load_cpu
        gw_cpu=$(q "$g" .server_cpu_us_per_req)
        stub_cpu=$(q "$d" .server_cpu_us_per_req)
        load_cpu=$(q "$g" .client_cpu_us_per_req)
        echo "- $l, derived (not measured): one request through the gateway costs $gw_cpu µs of gateway CPU + $stub_cpu µs of stub + $load_cpu µs of load generator, so $(nproc) idle cores could carry about $(jq -n "$(nproc) * 1000000 / ($gw_cpu + $stub_cpu + $load_cpu) | floor") req/s if nothing else ran (and $(jq -n "1000000 / $gw_cpu | floor") req/s per core given to the gateway alone)."
    done
    echo
    echo "## Gateway memory and ledger completeness"
    echo
    echo "| layout | idle RSS (VmRSS after start) | peak RSS (VmHWM) | RSS after the runs | ledger rows | requests answered | match |"
    echo "|---|---:|---:|---:|---:|---:|---|"
    for l in "${LAYOUTS[@]}"; do
        local m="$l-mem"
        echo "| $l | $(q "$m" '(.idle_kb/1024*10|round/10|tostring) + " MiB"') | $(q "$m" '(.peak_kb/1024*10|round/10|tostring) + " MiB"') | $(q "$m" '(.after_kb/1024*10|round/10|tostring) + " MiB"') | $(q "$m" .rows) | $(q "$m" .answered) | $(q "$m" 'if .rows == .answered then "yes" else "**NO**" end') |"
    done
    [[ "${LEDGER_BENCH:-1}" != 0 ]] || { echo; echo "Raw JSON of every run: \`$OUT.json\`."; return; }
    echo
    echo "## Ledger sustained write rate (\`ledger\` bench, unpinned, $(df -h "${TMPDIR:-/tmp}" | awk 'NR==2 {print $1}') filesystem; batched = \`synchronous=NORMAL\`, strict = \`synchronous=FULL\`, WAL)"
    echo
    echo "| bench | rows | seconds | **rows/s** | commits | rows/commit |"
    echo "|---|---:|---:|---:|---:|---:|"
    for b in ledger-batched ledger-batched-tasks ledger-strict ledger-naive ledger-naive-strict; do
        echo "| $(q "$b" .bench) | $(q "$b" .rows) | $(q "$b" '.seconds*1000|round/1000') | **$(q "$b" .rows_per_s)** | $(q "$b" .commits) | $(q "$b" '.rows_per_commit*10|round/10') |"
    done
    echo
    echo "Raw JSON of every run: \`$OUT.json\`."
}

mkdir -p "$(dirname "$OUT")"
report | tee "$OUT"
jq -s '.' "$WORK"/*.json >"$OUT.json"
log "wrote $OUT and $OUT.json"
