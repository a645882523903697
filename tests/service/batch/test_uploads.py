"""Batch uploads: received a bounded number at a time, spooled and checked in bounded memory."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
import tracemalloc
from pathlib import Path

import httpx
import pytest

from bench.hostile import child_pids
from service.batch.intake import (
    CheckerStopped,
    InputChecker,
    InputLimits,
    InputRefused,
    check_input,
)
from service.batch.requests import BatchInputError, NotUtf8
from tests.support.servers import free_port, start_server, stop, wait_ready

BOUNDARY = "xcboundary"


def multipart_head(size: int) -> bytes:
    """The start of a multipart POST /batches whose file part will be `size` bytes."""
    part = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="q.jsonl"\r\n'
        "Content-Type: application/x-ndjson\r\n\r\n"
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    return (
        f"POST /batches HTTP/1.1\r\nHost: test\r\nContent-Type: multipart/form-data; "
        f"boundary={BOUNDARY}\r\nContent-Length: {len(part) + size + len(tail)}\r\n\r\n"
    ).encode() + part


@pytest.mark.slow
def test_uploads_beyond_the_bound_are_429_while_one_trickles_in(
    demo_bundle: Path, tmp_path: Path
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = start_server(demo_bundle, port, tmp_path / "stderr.log", max_concurrent_uploads="1")
    try:
        wait_ready(process, base, tmp_path / "stderr.log")
        line = json.dumps({"custom_id": "slow", "query": "cordless drill"}).encode() + b"\n"
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(multipart_head(len(line)) + line[:10])  # ... and then nothing, for now
        time.sleep(0.5)
        one = {"requests": [{"custom_id": "a", "query": "x"}]}
        refused = httpx.post(f"{base}/batches", json=one)
        assert refused.status_code == 429, refused.text
        assert refused.json()["detail"][0]["type"] == "too_many_uploads"
        assert int(refused.headers["Retry-After"]) >= 1
        assert httpx.post(f"{base}/search", json={"query": "drill"}).status_code == 200
        slow.sendall(line[10:] + f"\r\n--{BOUNDARY}--\r\n".encode())
        answer = slow.recv(65536).decode()
        slow.close()
        assert answer.startswith("HTTP/1.1 201"), answer[:200]
        again = httpx.post(f"{base}/batches", json=one)
        assert again.status_code == 201, again.text
    finally:
        stop(process)


LIMITS = InputLimits(max_lines=1_000_000, max_query_chars=512, max_k=1000, default_k=10)


def write_jsonl(path: Path, lines: int, query: str = "cordless drill " * 30) -> Path:
    with path.open("wb") as handle:
        for i in range(lines):
            handle.write(json.dumps({"custom_id": f"q{i}", "query": query}).encode() + b"\n")
    return path


def test_an_upload_is_checked_and_stored_in_bounded_memory(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "upload.jsonl", 40_000)
    size = source.stat().st_size
    tracemalloc.start()
    try:
        total = check_input(source, tmp_path / "input.jsonl", LIMITS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == 40_000
    assert len((tmp_path / "input.jsonl").read_bytes().splitlines()) == 40_000
    assert size > 15_000_000 and peak < size / 4, f"peak {peak} bytes for {size} bytes"


def children() -> set[int]:
    """This process's child processes that are pool workers (not multiprocessing's resource
    tracker, which the first spawned pool starts beside them)."""
    return {pid for pid in child_pids(os.getpid()) if b"spawn_main" in _cmdline(pid)}


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_refusals_come_back_whole_from_the_checker_process(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"custom_id": "a", "query": "x"}\n{"custom_id": "a", "query": "y"}\n')
    not_utf8 = tmp_path / "latin1.jsonl"
    not_utf8.write_bytes(b'{"custom_id": "a", "query": "caf\xe9"}\n')
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    checker = InputChecker(workers=1)

    async def scenario() -> None:
        with pytest.raises(BatchInputError) as lines:
            await checker.check(bad, tmp_path / "out", LIMITS)
        assert lines.value.problems == ["line 2: custom_id: 'a' repeats line 1"]
        assert lines.value.bad_lines == 1
        with pytest.raises(NotUtf8) as utf8:
            await checker.check(not_utf8, tmp_path / "out", LIMITS)
        assert utf8.value.offset == not_utf8.read_bytes().index(b"\xe9")
        with pytest.raises(InputRefused) as refused:
            await checker.check(empty, tmp_path / "out", LIMITS)
        assert (refused.value.code, refused.value.problem) == ("empty", "has no requests")

    try:
        asyncio.run(scenario())
    finally:
        checker.close()


def test_a_checker_process_killed_mid_check_fails_that_upload_only(tmp_path: Path) -> None:
    large = write_jsonl(tmp_path / "large.jsonl", 200_000)
    small = write_jsonl(tmp_path / "small.jsonl", 3)
    checker = InputChecker(workers=1, niceness=7)
    before = children()

    async def scenario() -> None:
        checking = asyncio.ensure_future(checker.check(large, tmp_path / "large.out", LIMITS))
        deadline = time.monotonic() + 30
        while not (children() - before) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # well into the check
        (pid,) = children() - before
        niceness = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])
        assert niceness == 7  # searches get the CPU first
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(CheckerStopped):
            await checking
        assert await checker.check(small, tmp_path / "small.out", LIMITS) == 3

    try:
        asyncio.run(scenario())
    finally:
        checker.close()


def test_a_dead_checker_is_a_503_with_retry_after_not_a_500() -> None:
    from fastapi import HTTPException

    from service.batch.routes import _refusal

    answer = _refusal(CheckerStopped("the input checker stopped before it finished"), "file")
    assert isinstance(answer, HTTPException) and answer.status_code == 503
    assert "input checker stopped" in answer.detail[0]["msg"]
    assert int(answer.headers["Retry-After"]) >= 1


ORPHAN_SCRIPT = """
import asyncio, os, sys
from pathlib import Path
from bench.hostile import child_pids
from service.batch.intake import InputChecker, InputLimits
source = Path(sys.argv[1])
source.write_text('{"custom_id": "a", "query": "drill"}\\n')
limits = InputLimits(max_lines=10, max_query_chars=512, max_k=1000, default_k=10)
checker = InputChecker(workers=1)
asyncio.run(checker.check(source, source.with_suffix(".out"), limits))
print(" ".join(map(str, child_pids(os.getpid()))))
sys.stdout.flush()
os.kill(os.getpid(), 9)  # a server killed with SIGKILL: its pool is never shut down
"""


def test_a_checker_whose_server_was_killed_exits_by_itself(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.support.paths import REPO

    # Popen, not run: an orphaned checker would hold the pipe open, and run() waits for EOF.
    server = subprocess.Popen(
        [sys.executable, "-c", ORPHAN_SCRIPT, str(tmp_path / "in.jsonl")],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    checkers = [int(pid) for pid in server.stdout.readline().split()]
    assert server.wait(timeout=60) == -signal.SIGKILL
    assert checkers, "the checker process was not started"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(map(_running, checkers)):
        time.sleep(0.1)
    alive = [pid for pid in checkers if _running(pid)]
    for pid in alive:  # do not leave them behind if the assertion fails
        os.kill(pid, signal.SIGKILL)
    assert not alive, f"checker processes outlived their killed server: {alive}"


def _running(pid: int) -> bool:
    """Whether process `pid` exists and has not exited (an exited orphan may linger as a
    zombie until init reaps it)."""
    try:
        return "\tZ" not in Path(f"/proc/{pid}/status").read_text().split("State:")[1][:4]
    except (OSError, IndexError):
        return False
