#!/usr/bin/env bash
# Compatibility tests with the official Anthropic SDK and boto3 (bedrock-runtime),
# in a local venv. Needs the tollgate binary ($TOLLGATE_BIN, default target/debug/tollgate).
set -euo pipefail
cd "$(dirname "$0")"
VENV="${SDK_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q -r requirements-native.txt
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider test_anthropic_sdk.py test_boto3_bedrock.py "$@"
