"""Real server processes for tests: `python -m service` on a free port, ready or stopped."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from bench.server import free_port
from tests.support.paths import REPO

__all__ = ["clean_env", "free_port", "start_server", "stop", "wait_ready"]

READY_TIMEOUT_S = 180


def clean_env() -> dict[str, str]:
    """This environment without XC_* settings, so only the flags configure the server."""
    return {name: value for name, value in os.environ.items() if not name.startswith("XC_")}


def start_server(
    bundle: Path, port: int, stderr_path: Path, **settings: str
) -> subprocess.Popen[bytes]:
    """`python -m service --bundle ... --port ...`, stderr (the JSON log) to a file.

    `settings` become `XC_*` variables (`max_wait_ms="300"` -> `XC_MAX_WAIT_MS=300`).
    """
    command = [sys.executable, "-m", "service", "--bundle", str(bundle), "--port", str(port)]
    settings.setdefault("data_dir", str(stderr_path.parent / "data"))  # batch jobs: per test
    env = {**clean_env(), **{f"XC_{name.upper()}": value for name, value in settings.items()}}
    with stderr_path.open("wb") as stderr:
        return subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr
        )


def wait_ready(process: subprocess.Popen[bytes], base: str, stderr_path: Path) -> None:
    """Poll /readyz until 200; /healthz must answer 200 whenever the server answers at all."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, stderr_path.read_text(encoding="utf-8")
        try:
            ready = httpx.get(f"{base}/readyz", timeout=5)
        except httpx.TransportError:
            time.sleep(0.1)
            continue
        if ready.status_code == 200:
            return
        assert ready.status_code == 503, ready.text
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
        time.sleep(0.1)
    pytest.fail(f"not ready after {READY_TIMEOUT_S}s:\n{stderr_path.read_text(encoding='utf-8')}")


def stop(process: subprocess.Popen[bytes]) -> None:
    """Make sure a server this test started is gone."""
    if process.poll() is None:
        process.kill()
        process.wait(timeout=30)
