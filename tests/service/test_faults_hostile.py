"""Hostile clients against a real server, one kind at a time, while a single-query client
probes: slow-loris bodies (its p99 stays within 5x of idle), large uploads over and over, and
256-query searches at k = 1000 (refused at once: over XC_MAX_RESULTS) and at k = 100. Never a
5xx, the server stays up, its memory under a stated bound."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support.servers import free_port, start_server, stop, wait_ready

pytestmark = pytest.mark.slow

PROBES = 300
MEMORY_BOUND_MB = 1500  # peak resident set of the server process (measured 270-1,140 MB)
RESPONSIVE_S = 0.5  # the probe's p99 under attack: answered, if slower
QUERIES = ["cordless drill", "white paint", "garden hose", "led bulb", "copper pipe", "drill bit"]


def probe(base: str, count: int) -> list[float]:
    """Seconds of `count` single-query searches, one after another (answered 200, or 429 when a
    heavy client fills the queue: an immediate answer either way)."""
    seconds = []
    with httpx.Client(base_url=base, timeout=30) as client:
        for i in range(count):
            start = time.perf_counter()
            response = client.post("/search", json={"query": QUERIES[i % len(QUERIES)], "k": 10})
            seconds.append(time.perf_counter() - start)
            assert response.status_code in (200, 429), response.text
    return seconds


def slow_loris(port: int, stop: threading.Event) -> None:
    """Open 20 connections that each send a body a byte at a time, forever."""
    sockets = []
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(
            b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n"
        )
        sockets.append(sock)
    while not stop.wait(0.5):
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.sendall(b" ")
    for sock in sockets:
        sock.close()


def uploads(base: str, stop: threading.Event, seen: dict[int, int]) -> None:
    """Upload a 12 MB JSONL batch again and again (the server takes 2 at a time)."""
    body = b"".join(
        json.dumps({"custom_id": f"u{i}", "query": "cordless drill " * 20}).encode() + b"\n"
        for i in range(35_000)
    )
    with httpx.Client(base_url=base, timeout=120) as client:
        while not stop.is_set():
            status = client.post("/batches", files={"file": ("u.jsonl", body)}).status_code
            seen[status] = seen.get(status, 0) + 1


def big_searches(base: str, stop: threading.Event, seen: dict[int, int]) -> None:
    """256 queries at k = 1000 (over XC_MAX_RESULTS: refused at once) and at k = 100 (the most
    one request may ask for), again and again."""
    queries = [f"{QUERIES[i % len(QUERIES)]} {i}" for i in range(256)]
    with httpx.Client(base_url=base, timeout=120) as client:
        while not stop.is_set():
            for k in (1000, 100):
                response = client.post("/search", json={"queries": queries, "k": k})
                seen[response.status_code] = seen.get(response.status_code, 0) + 1


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def attack(demo_bundle: Path, tmp_path: Path, kinds: list[str]) -> dict:
    """Idle p99 of the single-query probe, then its p99 while `kinds` of attackers run; the
    statuses the attackers saw, and the server's peak memory."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = start_server(demo_bundle, port, tmp_path / "stderr.log", request_timeout_ms="5000")
    stop_all, seen = threading.Event(), {}
    targets = {
        "loris": (slow_loris, (port, stop_all)),
        "uploads": (uploads, (base, stop_all, seen)),
        "big": (big_searches, (base, stop_all, seen)),
    }
    try:
        wait_ready(process, base, tmp_path / "stderr.log")
        probe(base, 50)  # warm
        idle = float(np.percentile(probe(base, PROBES), 99))
        attackers = [threading.Thread(target=targets[k][0], args=targets[k][1]) for k in kinds]
        for thread in attackers:
            thread.start()
        time.sleep(2)
        hostile = float(np.percentile(probe(base, PROBES), 99))
        stop_all.set()
        for thread in attackers:
            thread.join(timeout=180)
        peak = peak_rss_mb(process.pid)
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
    finally:
        stop_all.set()
        stop(process)
    print(f"{kinds}: p99 idle {idle * 1000:.1f} ms, hostile {hostile * 1000:.1f} ms, {peak:.0f} MB")
    return {"idle": idle, "hostile": hostile, "peak_mb": peak, "seen": seen}


def test_slow_loris_bodies_leave_single_queries_within_5x(
    demo_bundle: Path, tmp_path: Path
) -> None:
    found = attack(demo_bundle, tmp_path, ["loris"])
    assert found["hostile"] <= 5 * found["idle"], found
    assert found["peak_mb"] < MEMORY_BOUND_MB, found


def test_large_uploads_are_taken_two_at_a_time_never_a_5xx(
    demo_bundle: Path, tmp_path: Path
) -> None:
    # Not yet within 5x: the uploads' checks and the scoring of the accepted jobs share the two
    # cores with the probe (measured 34-96 ms p99 against 7-9 ms idle); bounded, never a 5xx.
    found = attack(demo_bundle, tmp_path, ["uploads"])
    assert found["seen"] and not [code for code in found["seen"] if code >= 500], found["seen"]
    assert found["hostile"] < RESPONSIVE_S, found
    assert found["peak_mb"] < MEMORY_BOUND_MB, found


def test_heavy_searches_are_refused_or_bounded_never_a_5xx(
    demo_bundle: Path, tmp_path: Path
) -> None:
    found = attack(demo_bundle, tmp_path, ["big"])
    seen = found["seen"]
    assert seen.get(422, 0) >= 1 and seen.get(200, 0) >= 1, seen  # k = 1000: refused, k = 100: ok
    assert not [code for code in seen if code >= 500], seen
    assert found["hostile"] < RESPONSIVE_S, found  # measured about 75-110 ms against 6-7 ms idle
    assert found["peak_mb"] < MEMORY_BOUND_MB, found
