"""A gateway for the Anthropic and boto3 compatibility tests: one simulated provider
that speaks all three formats, and tollgate in front of it with one deployment per
upstream format, so each SDK is tested natively and across formats.

Like conftest.py, everything runs as real processes from the tollgate binary
(``$TOLLGATE_BIN``, default ``target/debug/tollgate``):

1. ``tollgate sim --listen 127.0.0.1:0`` (prints its base URL)
2. a config with three upstreams on the simulator: ``openai``, ``anthropic`` and
   ``bedrock`` (SigV4-signed with dummy credentials), ledger in a temp dir
3. ``tollgate keys create --json`` with ``TOLLGATE_MASTER_KEY`` set, so the key also
   signs AWS SigV4 requests (its id is the access key id, its secret the secret key)
4. ``tollgate serve``; teardown: SIGTERM (must exit 0)

The test modules import the ``native_gateway`` fixture from here.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any, Callable, Optional

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
MASTER_KEY = "tg-sdk-native-master"

# Deployment name -> (upstream, model).
OPENAI_MODEL = "gpt-4o-mini"
CLAUDE_MODEL = "claude-haiku-4-5"
NOVA_MODEL = "us.amazon.nova-2-lite-v1:0"

# USD per token, from the embedded catalog (checked against the ledger's own figure).
PRICES = {
    OPENAI_MODEL: {"input": "0.15e-6", "output": "0.6e-6", "cache_read": "0.075e-6"},
    CLAUDE_MODEL: {
        "input": "1e-6",
        "output": "5e-6",
        "cache_read": "0.1e-6",
        "cache_write_5m": "1.25e-6",
        "cache_write_1h": "2e-6",
    },
    NOVA_MODEL: {"input": "0.33e-6", "output": "2.75e-6", "cache_read": "0.0825e-6", "cache_write_5m": "0.33e-6"},
}


def expected_cost(model: str, usage: dict[str, int]) -> Decimal:
    """Σ tokens × rate, rounded up to the nano-dollar, as tollgate charges."""
    p = PRICES[model]
    total = Decimal(0)
    for field in ("input", "cache_read", "cache_write_5m", "cache_write_1h", "output"):
        n = usage.get(field, 0)
        if n:
            total += Decimal(n) * Decimal(p.get(field, p["input"]))
    return total.quantize(Decimal("0.000000001"), rounding=ROUND_CEILING)


def _binary() -> Path:
    p = Path(os.environ.get("TOLLGATE_BIN", "target/debug/tollgate"))
    if not p.is_absolute():
        p = REPO_ROOT / p
    if not p.exists():
        pytest.exit(f"tollgate binary not found at {p}; build it with `cargo build -p tollgate`", returncode=2)
    return p


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Drain(threading.Thread):
    def __init__(self, stream) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.lines: list[str] = []

    def run(self) -> None:
        for line in iter(self.stream.readline, ""):
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)


def _config(sim_v1: str, listen: str, db: Path) -> str:
    origin = sim_v1.removesuffix("/v1")
    return f"""
[server]
listen = "{listen}"

[ledger]
path = "{db.as_posix()}"

[[upstreams]]
name = "sim-openai"
kind = "openai"
base_url = "{sim_v1}"

[[upstreams]]
name = "sim-anthropic"
kind = "anthropic"
base_url = "{sim_v1}"
api_key_env = "SIM_ANTHROPIC_KEY"

[[upstreams]]
name = "sim-bedrock"
kind = "bedrock"
base_url = "{origin}"
region = "us-east-1"

[[deployments]]
name = "{OPENAI_MODEL}"
upstream = "sim-openai"

[[deployments]]
name = "{CLAUDE_MODEL}"
upstream = "sim-anthropic"

[[deployments]]
name = "{NOVA_MODEL}"
upstream = "sim-bedrock"
"""


@dataclass
class NativeGateway:
    base: str
    key: str
    key_id: str
    aws_access_key_id: str
    aws_secret_access_key: str
    admin: httpx.Client

    def row(self, request_id: str, ready: Optional[Callable[[dict], bool]] = None, timeout: float = 3.0) -> dict[str, Any]:
        """The ledger row of `request_id` (rows land in batches within milliseconds)."""
        deadline = time.monotonic() + timeout
        while True:
            r = self.admin.get(f"/admin/requests/{request_id}")
            if r.status_code == 200 and (ready is None or ready(r.json())):
                return r.json()
            if r.status_code not in (200, 404):
                raise AssertionError(f"GET /admin/requests/{request_id}: {r.status_code} {r.text}")
            if time.monotonic() >= deadline:
                raise AssertionError(f"no ledger row for {request_id}: {r.status_code} {r.text}")
            time.sleep(0.02)

    def assert_cost(self, request_id: str, model: str) -> dict[str, Any]:
        """The row is reported, priced, and its cost is exactly its usage × the catalog."""
        row = self.row(request_id)
        assert row["usage_source"] == "reported", row
        assert row["priced"], row
        assert Decimal(row["cost_usd"]) == expected_cost(model, row["usage"]), row
        assert Decimal(row["cost_usd"]) > 0
        return row


@pytest.fixture(scope="session")
def native_gateway():
    binary = _binary()
    tmp = tempfile.TemporaryDirectory(prefix="tollgate-sdk-native-")
    tmpdir = Path(tmp.name)
    procs: list[subprocess.Popen] = []
    sim = subprocess.Popen([str(binary), "sim", "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs.append(sim)
    try:
        sim_base = sim.stdout.readline().strip()
        if not sim_base.startswith("http://"):
            raise RuntimeError(f"tollgate sim printed {sim_base!r}")
        _Drain(sim.stdout).start()
        _Drain(sim.stderr).start()

        db = tmpdir / "ledger.db"
        port = _free_port()
        config = tmpdir / "tollgate.toml"
        config.write_text(_config(sim_base, f"127.0.0.1:{port}", db))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TOLLGATE_", "AWS_"))}
        env.update(
            TOLLGATE_MASTER_KEY=MASTER_KEY,
            SIM_ANTHROPIC_KEY="sk-ant-sim",
            AWS_ACCESS_KEY_ID="AKIDSIMULATOR",
            AWS_SECRET_ACCESS_KEY="simulator-secret",
        )
        created = subprocess.run(
            [str(binary), "keys", "--config", str(config), "create", "--team", "t", "--agent", "sdk-native", "--json"],
            capture_output=True, text=True, env=env, timeout=30,
        )
        if created.returncode != 0:
            raise RuntimeError(f"keys create failed: {created.stderr}")
        key = json.loads(created.stdout)

        gw = subprocess.Popen([str(binary), "serve", "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        procs.append(gw)
        _Drain(gw.stdout).start()
        gw_err = _Drain(gw.stderr)
        gw_err.start()
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            if gw.poll() is not None:
                raise RuntimeError(f"tollgate serve exited with {gw.returncode}:\n{gw_err.text()}")
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"tollgate serve not healthy after 30 s:\n{gw_err.text()}")
            time.sleep(0.05)
        admin = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=10)
        try:
            yield NativeGateway(
                base=base,
                key=key["key"],
                key_id=key["id"],
                aws_access_key_id=key["aws_access_key_id"],
                aws_secret_access_key=key["aws_secret_access_key"],
                admin=admin,
            )
        finally:
            admin.close()
        gw.send_signal(signal.SIGTERM)
        code = gw.wait(timeout=30)
        assert code == 0, f"tollgate serve exited with {code}:\n{gw_err.text()}"
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.kill()
                p.wait()
        tmp.cleanup()
