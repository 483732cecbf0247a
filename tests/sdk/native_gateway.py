"""A gateway for the Anthropic and boto3 compatibility tests: one simulated provider
that speaks all three formats, and tollgate in front of it with one deployment per
upstream format, so each SDK is tested natively and across formats.

The processes are started by ``harness.running_gateway``, as for conftest.py; here the
config has three upstreams on the simulator (``openai``, ``anthropic``, and ``bedrock``
SigV4-signed with dummy credentials), and the key is created through the config with
``TOLLGATE_MASTER_KEY`` set, so it also signs AWS SigV4 requests (its id is the access
key id, its secret the secret key).

The test modules import the ``native_gateway`` fixture from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any, Callable, Optional

import httpx
import pytest

from harness import ledger_row, running_gateway

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
        return ledger_row(self.admin, request_id, ready, timeout)

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
    with running_gateway(
        prefix="tollgate-sdk-native-",
        master_key=MASTER_KEY,
        agent="sdk-native",
        config=_config,
        env={
            "SIM_ANTHROPIC_KEY": "sk-ant-sim",
            "AWS_ACCESS_KEY_ID": "AKIDSIMULATOR",
            "AWS_SECRET_ACCESS_KEY": "simulator-secret",
        },
        keys_by_config=True,
        drop_env=("TOLLGATE_", "AWS_"),
    ) as (base, key, admin):
        yield NativeGateway(
            base=base,
            key=key["key"],
            key_id=key["id"],
            aws_access_key_id=key["aws_access_key_id"],
            aws_secret_access_key=key["aws_secret_access_key"],
            admin=admin,
        )
