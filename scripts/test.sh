#!/usr/bin/env bash
# Run every test: the Rust workspace (unit, property, integration, crash tests) and the
# official-SDK compatibility tests (Python, installed into a local venv).
# PostgreSQL/Redis tests run when TOLLGATE_TEST_POSTGRES_URL / TOLLGATE_TEST_REDIS_URL
# are set (.ci/run sets them) and say they were skipped otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace
cargo build -p tollgate
if [ -f tests/sdk/run.sh ]; then
  TOLLGATE_BIN="${TOLLGATE_BIN:-$PWD/target/debug/tollgate}" bash tests/sdk/run.sh
fi
