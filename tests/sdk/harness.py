"""Process plumbing shared by the SDK fixtures (conftest.py, native_gateway.py).

``running_gateway`` starts everything as real processes from the tollgate binary
(``$TOLLGATE_BIN``, default ``target/debug/tollgate`` in the repo root), as a user would:

1. ``tollgate sim --listen 127.0.0.1:0`` (prints its base URL on its first line)
2. the caller's config (simulator URL, listen address, ledger path) in a temp dir
3. ``tollgate keys ... create --team t --agent AGENT --json`` with the master key set
4. ``tollgate serve --config FILE`` until /healthz answers 200
5. teardown: SIGTERM the gateway (it must drain and exit 0), stop the simulator
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def binary() -> Path:
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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Drain(threading.Thread):
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


def ledger_row(
    admin: httpx.Client,
    request_id: str,
    ready: Optional[Callable[[dict], bool]],
    timeout: float,
) -> dict[str, Any]:
    """The ledger row of `request_id` via the admin API; rows are written in batches
    (within milliseconds), so poll for up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        r = admin.get(f"/admin/requests/{request_id}")
        if r.status_code == 200:
            row = r.json()
            if ready is None or ready(row):
                return row
        elif r.status_code != 404:
            raise AssertionError(f"GET /admin/requests/{request_id}: {r.status_code} {r.text}")
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"no ledger row for {request_id} after {timeout}s "
                f"(last answer {r.status_code}: {r.text})"
            )
        time.sleep(0.02)


@contextlib.contextmanager
def running_gateway(
    *,
    prefix: str,
    master_key: str,
    agent: str,
    config: Callable[[str, str, Path], str],
    env: dict[str, str],
    keys_by_config: bool = False,
    drop_env: tuple[str, ...] = ("TOLLGATE_",),
) -> Iterator[tuple[str, dict[str, Any], httpx.Client]]:
    """Yields (base URL without /v1, the created key's JSON, an admin client).

    `config(sim_base_url, listen, ledger_path)` writes the gateway's config; `env` is
    added to the environment (from which variables starting with `drop_env` are
    removed); `keys_by_config` creates the key through the config (needed when the key
    must be sealed under the master key for SigV4) rather than the ledger path."""
    exe = binary()
    tmp = tempfile.TemporaryDirectory(prefix=prefix)
    tmpdir = Path(tmp.name)
    procs: list[subprocess.Popen] = []
    sim = subprocess.Popen(
        [str(exe), "sim", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    procs.append(sim)
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
        Drain(sim.stdout).start()
        Drain(sim.stderr).start()

        db = tmpdir / "ledger.db"
        port = free_port()
        config_file = tmpdir / "tollgate.toml"
        config_file.write_text(config(sim_base, f"127.0.0.1:{port}", db))

        child_env = {k: v for k, v in os.environ.items() if not k.startswith(drop_env)}
        child_env["TOLLGATE_MASTER_KEY"] = master_key
        child_env.update(env)

        keys = ["--config", str(config_file)] if keys_by_config else ["--db", str(db)]
        created = subprocess.run(
            [str(exe), "keys", *keys, "create", "--team", "t", "--agent", agent, "--json"],
            capture_output=True,
            text=True,
            env=child_env,
            timeout=30,
        )
        if created.returncode != 0:
            raise RuntimeError(f"keys create failed ({created.returncode}): {created.stderr}")
        key = json.loads(created.stdout)

        gw = subprocess.Popen(
            [str(exe), "serve", "--config", str(config_file)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env,
        )
        procs.append(gw)
        Drain(gw.stdout).start()
        gw_err = Drain(gw.stderr)
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

        admin = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {master_key}"}, timeout=10)
        try:
            yield base, key, admin
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
