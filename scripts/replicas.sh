#!/usr/bin/env bash
# Two gateway replicas on one PostgreSQL and one Redis, in front of the simulated
# provider: calls go to both, and either replica's CLI (report, tasks, budgets, export)
# shows both replicas' traffic. Then both replicas are stopped.
#
#   bash scripts/replicas.sh    # uses the local PostgreSQL and Redis
#
# PG_URL and REDIS_URL override the defaults below; TOLLGATE_BIN picks the binary
# (default: target/release/tollgate, built if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432/test}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
BIN=${TOLLGATE_BIN:-target/release/tollgate}
[ -x "$BIN" ] || cargo build --release -p tollgate
work=$(mktemp -d)
schema="tg_demo_$$"
prefix="tgdemo:$$"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# The simulated provider (prints its address).
"$BIN" sim --listen 127.0.0.1:0 --latency-ms 20 >"$work/sim.addr" &
pids+=($!)
for _ in $(seq 100); do [ -s "$work/sim.addr" ] && break; sleep 0.05; done
sim=$(grep -o '127.0.0.1:[0-9]*' "$work/sim.addr" | head -1)

export TOLLGATE_POSTGRES_URL=$PG_URL
export TOLLGATE_MASTER_KEY=replicas-demo-master-key
for n in 1 2; do
    cat >"$work/gw$n.toml" <<EOF
[server]
listen = "127.0.0.1:1808$n"
[ledger]
path = "$work/gw$n.db"        # only the spool lives here: rows wait in it while PostgreSQL is down
[store]
kind = "postgres"             # URL from TOLLGATE_POSTGRES_URL
schema = "$schema"
replica = "gw-$n"
[budgets]
counters = "redis"            # budgets, rate limits and the guard shared by both replicas
redis_url = "$REDIS_URL"
redis_prefix = "$prefix"
[[budgets.limits]]
scope = "org"
period = "day"
limit_usd = "5"
[[upstreams]]
name = "sim"
base_url = "http://$sim/v1"
[[deployments]]
name = "gpt-4o-mini"
upstream = "sim"
EOF
done
"$BIN" migrate --config "$work/gw1.toml"
key=$("$BIN" keys create --config "$work/gw1.toml" --agent support-bot --team support)
for n in 1 2; do
    "$BIN" serve --config "$work/gw$n.toml" >"$work/gw$n.log" 2>&1 &
    pids+=($!)
done
for n in 1 2; do
    for _ in $(seq 200); do
        curl -sf "http://127.0.0.1:1808$n/healthz" >/dev/null && break
        sleep 0.05
    done
done

# Ten calls to each replica.
for n in 1 2; do
    for i in $(seq 10); do
        curl -sf "http://127.0.0.1:1808$n/v1/chat/completions" \
            -H "authorization: Bearer $key" -H "x-tollgate-task: ticket-$n" \
            -H 'content-type: application/json' \
            -d "{\"model\":\"gpt-4o-mini\",\"max_tokens\":40,\"messages\":[{\"role\":\"user\",\"content\":\"question $i for replica $n\"}]}" \
            >/dev/null
    done
done
sleep 0.5   # the batched ledger writer flushes within its interval

echo "== report from replica 1's config: both replicas' calls =="
"$BIN" report --config "$work/gw1.toml" --since 1h --by task
echo "== budgets from replica 2's config: one shared budget =="
"$BIN" budgets --config "$work/gw2.toml" list
echo "== per-replica ledger sequences (gapless) =="
psql "$PG_URL" -Atc "SELECT replica_id, count(*), min(replica_seq), max(replica_seq) FROM $schema.ledger_ids GROUP BY 1 ORDER BY 1"
psql "$PG_URL" -qc "SET client_min_messages = warning; DROP SCHEMA $schema CASCADE" >/dev/null
