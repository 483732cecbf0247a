"""Session fixtures: a simulated provider, a tollgate gateway in front of it, a key.

The processes are started by ``harness.running_gateway``: ``tollgate sim``, a config with
four deployments on the simulator and a route ``auto`` (gpt-4o-mini → gpt-4o), a key
created with ``tollgate keys --db LEDGER create --team t --agent sdk-agent --json``, and
``tollgate serve``, which must exit 0 on SIGTERM at the end of the session.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import httpx
import pytest

from harness import ledger_row, running_gateway

MASTER_KEY = "tg-sdk-test-master"
DEPLOYMENTS = ["gpt-4o-mini", "gpt-4o", "o3-mini", "text-embedding-3-small"]
ROUTE_THRESHOLD = 0.6


def _config(sim_base: str, listen: str, db: Path) -> str:
    out = [
        "[server]",
        f'listen = "{listen}"',
        "",
        "[ledger]",
        f'path = "{db.as_posix()}"',
        'durability = "batched"',
        "",
        "[[upstreams]]",
        'name = "sim"',
        'kind = "openai"',
        f'base_url = "{sim_base}"',
    ]
    for name in DEPLOYMENTS:
        out += ["", "[[deployments]]", f'name = "{name}"', 'upstream = "sim"', f'model = "{name}"']
    # A routed model name (test_openai_routing.py): light gpt-4o-mini, heavy gpt-4o.
    out += [
        "",
        "[[routes]]",
        'name = "auto"',
        'tiers = ["gpt-4o-mini", "gpt-4o"]',
        f"thresholds = [{ROUTE_THRESHOLD}]",
    ]
    return "\n".join(out) + "\n"


@dataclass
class Gateway:
    base: str  # http://127.0.0.1:PORT (no /v1)
    key: str  # the virtual key's secret
    key_id: str
    master_key: str
    admin: httpx.Client

    def row(self, request_id: str, ready: Optional[Callable[[dict], bool]] = None, timeout: float = 2.0) -> dict[str, Any]:
        """The ledger row of `request_id` (rows land in batches within milliseconds)."""
        return ledger_row(self.admin, request_id, ready, timeout)


@pytest.fixture(scope="session")
def gateway():
    with running_gateway(
        prefix="tollgate-sdk-",
        master_key=MASTER_KEY,
        agent="sdk-agent",
        config=_config,
        env={"RUST_LOG": os.environ.get("RUST_LOG", "info")},
    ) as (base, key, admin):
        yield Gateway(base=base, key=key["key"], key_id=key["id"], master_key=MASTER_KEY, admin=admin)


@pytest.fixture(scope="session")
def client(gateway):
    import openai

    c = openai.OpenAI(base_url=f"{gateway.base}/v1", api_key=gateway.key, max_retries=0, timeout=30)
    yield c
    c.close()
