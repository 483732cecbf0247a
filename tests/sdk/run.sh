#!/usr/bin/env bash
# Compatibility tests: the official OpenAI Python SDK against a real tollgate binary.
#
#   bash tests/sdk/run.sh [pytest args...]
#
# SDK_VENV      virtualenv to create/use (default: .venv-sdk in the repo root)
# TOLLGATE_BIN  tollgate binary to test; when unset, `cargo build -p tollgate` is run
#               and target/debug/tollgate is used
# PYTHON        interpreter for creating the venv (default: python3)
#
# Exits with pytest's exit code.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

venv="${SDK_VENV:-$root/.venv-sdk}"
if [ ! -x "$venv/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"

if [ -z "${TOLLGATE_BIN:-}" ]; then
    cargo build --quiet -p tollgate
    export TOLLGATE_BIN="$root/target/debug/tollgate"
fi

set +e
"$venv/bin/python" -m pytest -q -p no:cacheprovider "$here" "$@"
code=$?
set -e
exit "$code"
