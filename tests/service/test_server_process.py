"""The service as a real process: `python -m service` over HTTP, SIGTERM, a corrupted bundle."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.bundle import read_manifest
from service.device import probe_capabilities
from tests.support.paths import REPO
from tests.support.servers import (
    clean_env,
    free_port,
    start_server,
    stop,
    wait_ready,
)

pytestmark = pytest.mark.slow


def log_lines(stderr_path: Path) -> list[dict[str, Any]]:
    """Every stderr line parsed as JSON (fails the test if one is not)."""
    lines = stderr_path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def metric(base: str, name: str, **labels: str) -> float:
    """One sample from the live server's /metrics (0 when the series does not exist yet)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    series = f"{name}{{{wanted}}}" if labels else name
    for line in httpx.get(f"{base}/metrics", timeout=5).text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    """Poll until `condition()` holds."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_serves_over_http_and_stops_on_sigterm(demo_bundle: Path, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    stderr_path = tmp_path / "stderr.log"
    process = start_server(demo_bundle, port, stderr_path)
    try:
        wait_ready(process, base, stderr_path)
        ready = httpx.get(f"{base}/readyz", timeout=5).json()
        assert ready["bundle"] == read_manifest(demo_bundle).name

        response = httpx.post(
            f"{base}/search",
            json={"query": "cordless drill", "k": 5},
            headers={"X-Request-Id": "process-test-1"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        assert len(response.json()["results"]) == 5
        assert response.headers["x-request-id"] == "process-test-1"

        invalid = httpx.post(f"{base}/search", json={"query": "drill", "k": 0}, timeout=30)
        assert invalid.status_code == 422
        assert invalid.json()["detail"][0]["msg"] == "k: must be >= 1"

        process.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught.
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        stop(process)

    lines = log_lines(stderr_path)
    assert {"ts", "level", "logger", "msg", "request_id"} <= set(lines[0])
    access = [line for line in lines if line["logger"] == "service.access"]
    [search_line] = [line for line in access if line["request_id"] == "process-test-1"]
    assert (search_line["method"], search_line["path"], search_line["status"]) == (
        "POST",
        "/search",
        200,
    )
    assert search_line["duration_ms"] > 0
    assert any(line["msg"] == "ready" for line in lines)
    assert any("Finished server process" in line["msg"] for line in lines)


def test_sigterm_lets_queued_requests_finish(demo_bundle: Path, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    stderr_path = tmp_path / "stderr.log"
    # Batches wait 0.9 s to fill, so the requests are still queued when SIGTERM arrives.
    process = start_server(demo_bundle, port, stderr_path, max_wait_ms="900")
    try:
        wait_ready(process, base, stderr_path)
        with ThreadPoolExecutor(max_workers=6) as pool:
            pending = [
                pool.submit(httpx.post, f"{base}/search", json={"query": f"drill {i}"}, timeout=60)
                for i in range(6)
            ]
            wait_for(lambda: metric(base, "xc_queue_depth") == 6, "6 queued queries")
            process.send_signal(signal.SIGTERM)
            responses = [future.result() for future in pending]
        assert [r.status_code for r in responses] == [200] * 6
        assert all(len(r.json()["results"]) == 10 for r in responses)
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        stop(process)


def test_a_client_that_gives_up_is_never_run(demo_bundle: Path, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    stderr_path = tmp_path / "stderr.log"
    process = start_server(demo_bundle, port, stderr_path, max_wait_ms="800")
    try:
        wait_ready(process, base, stderr_path)
        calls = metric(base, "xc_batch_queries_count")
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{base}/search", json={"query": "drill"}, timeout=0.2)
        wait_for(
            lambda: metric(base, "xc_dropped_total", reason="disconnected") == 1,
            "the abandoned request to be dropped",
        )
        assert metric(base, "xc_batch_queries_count") == calls
        assert httpx.post(f"{base}/search", json={"query": "drill"}, timeout=30).status_code == 200
    finally:
        stop(process)
    statuses = [line.get("status") for line in log_lines(stderr_path) if line.get("path")]
    assert 499 in statuses  # the access log records the abandoned request


def test_sighup_reloads_the_bundle_an_alias_points_to(
    demo_bundle: Path, demo_bundle_v2: Path, tmp_path: Path
) -> None:
    alias = tmp_path / "current"
    alias.symlink_to(demo_bundle)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    stderr_path = tmp_path / "stderr.log"
    process = start_server(alias, port, stderr_path)
    try:
        wait_ready(process, base, stderr_path)

        def served_version() -> str:
            return httpx.get(f"{base}/v1/models", timeout=5).json()["data"][0]["version"]

        assert served_version() == read_manifest(demo_bundle).version
        staged = tmp_path / "current.new"
        staged.symlink_to(demo_bundle_v2)
        staged.replace(alias)  # the atomic alias switch
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: served_version() == "v2", "the reload to version v2")
        answer = httpx.post(f"{base}/search", json={"query": "drill"}, timeout=30).json()
        assert answer["version"] == "v2"
        assert all(hit["title"].startswith("v2 ") for hit in answer["results"])
        assert process.poll() is None
    finally:
        stop(process)
    assert any(line["msg"] == "reloaded" for line in log_lines(stderr_path))


def test_corrupted_bundle_exits_nonzero_naming_the_file(demo_bundle: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(demo_bundle, broken)
    encoder = broken / read_manifest(demo_bundle).encoder.file
    data = bytearray(encoder.read_bytes())
    data[len(data) // 2] ^= 0xFF
    encoder.write_bytes(bytes(data))

    stderr_path = tmp_path / "stderr.log"
    process = start_server(broken, free_port(), stderr_path)
    try:
        code = process.wait(timeout=120)
    finally:
        stop(process)
    stderr = stderr_path.read_text(encoding="utf-8")
    assert code == 1, stderr
    assert str(encoder) in stderr
    [error] = [line for line in log_lines(stderr_path) if line["level"] == "error"]
    assert error["msg"].startswith("bundle failed to load: ")
    assert encoder.name in error["msg"] and "sha256" in error["msg"]


@pytest.mark.skipif(
    probe_capabilities().onnxruntime_cuda, reason="this machine can run the encoder on CUDA"
)
def test_cuda_without_a_gpu_exits_nonzero_saying_what_to_install(
    demo_bundle: Path, tmp_path: Path
) -> None:
    stderr_path = tmp_path / "stderr.log"
    process = start_server(demo_bundle, free_port(), stderr_path, device="cuda")
    try:
        code = process.wait(timeout=120)
    finally:
        stop(process)
    assert code == 1, stderr_path.read_text(encoding="utf-8")
    [error] = [line for line in log_lines(stderr_path) if line["level"] == "error"]
    assert error["msg"].startswith("device not available: XC_DEVICE=cuda")
    assert "gpu extra" in error["msg"] and error["device"] == "cuda"


def test_serving_never_imports_torch(demo_bundle: Path) -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from fastapi.testclient import TestClient
        import service.__main__, service.openapi
        from service.app import create_app
        from service.settings import Settings

        with TestClient(create_app(Settings(bundle=sys.argv[1]))) as client:
            deadline = time.monotonic() + 180
            while client.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "not ready"
                time.sleep(0.05)
            assert client.post("/search", json={"query": "drill"}).status_code == 200
        loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
        assert not loaded, loaded
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(demo_bundle)],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
