"""Session fixtures: a simulated provider, a tollgate gateway in front of it, a key.

Everything runs as real processes from the tollgate binary (``$TOLLGATE_BIN``, default
``target/debug/tollgate`` in the repo root), exactly as a user would run them:

1. ``tollgate sim --listen 127.0.0.1:0``      (prints its base URL on the first line)
2. a config file with four deployments on the simulator and a route `auto`
   (gpt-4o-mini → gpt-4o), ledger in a temp dir
3. ``tollgate keys --db LEDGER create --team t --agent sdk-agent --json`` (``--db``
   belongs to ``keys``, not to ``create``)
4. ``tollgate serve --config FILE`` with ``TOLLGATE_MASTER_KEY`` set, until /healthz is 200
5. teardown: SIGTERM the gateway (it must exit 0), stop the simulator
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
from pathlib import Path
from typing import Any, Callable, Optional

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
MASTER_KEY = "tg-sdk-test-master"
DEPLOYMENTS = ["gpt-4o-mini", "gpt-4o", "o3-mini", "text-embedding-3-small"]
ROUTE_THRESHOLD = 0.6


def _binary() -> Path:
    p = Path(os.environ.get("TOLLGATE_BIN", "target/debug/tollgate"))
    if not p.is_absolute():
        p = REPO_ROOT / p
    if not p.exists():
        pytest.exit(
            f"tollgate binary not found at {p}; build it with `cargo build -p tollgate` "
            "or set TOLLGATE_BIN",
            returncode=2,
        )
    return p


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Drain(threading.Thread):
    """Collects a child's output in the background so its pipe never fills up."""

    def __init__(self, stream) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.lines: list[str] = []

    def run(self) -> None:
        for line in iter(self.stream.readline, ""):
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)


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
        """The ledger row of `request_id` via the admin API; rows are written in batches
        (within milliseconds), so poll for up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            r = self.admin.get(f"/admin/requests/{request_id}")
            last = r
            if r.status_code == 200:
                row = r.json()
                if ready is None or ready(row):
                    return row
            elif r.status_code != 404:
                raise AssertionError(f"GET /admin/requests/{request_id}: {r.status_code} {r.text}")
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"no ledger row for {request_id} after {timeout}s "
                    f"(last answer {last.status_code}: {last.text})"
                )
            time.sleep(0.02)


@pytest.fixture(scope="session")
def gateway():
    binary = _binary()
    tmp = tempfile.TemporaryDirectory(prefix="tollgate-sdk-")
    tmpdir = Path(tmp.name)
    procs: list[subprocess.Popen] = []

    sim = subprocess.Popen(
        [str(binary), "sim", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    procs.append(sim)
    gw = None
    gw_err = None
    try:
        first: list[str] = []
        reader = threading.Thread(target=lambda: first.append(sim.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout=30)
        sim_base = first[0].strip() if first else ""
        if not sim_base.startswith("http://"):
            sim.kill()
            raise RuntimeError(f"tollgate sim did not print its base URL: {sim_base!r}; stderr: {sim.communicate()[1]}")
        # Nothing more is read from the simulator; drain its pipes anyway.
        _Drain(sim.stdout).start()
        _Drain(sim.stderr).start()

        db = tmpdir / "ledger.db"
        port = _free_port()
        config = tmpdir / "tollgate.toml"
        config.write_text(_config(sim_base, f"127.0.0.1:{port}", db))

        env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
        env["TOLLGATE_MASTER_KEY"] = MASTER_KEY
        env.setdefault("RUST_LOG", "info")

        created = subprocess.run(
            [str(binary), "keys", "--db", str(db), "create", "--team", "t", "--agent", "sdk-agent", "--json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
        if created.returncode != 0:
            raise RuntimeError(f"keys create failed ({created.returncode}): {created.stderr}")
        key = json.loads(created.stdout)

        gw = subprocess.Popen(
            [str(binary), "serve", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
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
            yield Gateway(base=base, key=key["key"], key_id=key["id"], master_key=MASTER_KEY, admin=admin)
        finally:
            admin.close()

        # Graceful shutdown: SIGTERM, then the gateway drains and must exit 0.
        gw.send_signal(signal.SIGTERM)
        try:
            code = gw.wait(timeout=30)
        except subprocess.TimeoutExpired:
            gw.kill()
            gw.wait()
            raise AssertionError(f"tollgate serve did not exit within 30 s of SIGTERM:\n{gw_err.text()}")
        assert code == 0, f"tollgate serve exited with {code} after SIGTERM:\n{gw_err.text()}"
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.kill()
                p.wait()
        tmp.cleanup()


@pytest.fixture(scope="session")
def client(gateway):
    import openai

    c = openai.OpenAI(base_url=f"{gateway.base}/v1", api_key=gateway.key, max_retries=0, timeout=30)
    yield c
    c.close()
