"""Batch uploads: received a bounded number at a time, spooled and checked in bounded memory."""

from __future__ import annotations

import json
import socket
import time
import tracemalloc
from pathlib import Path
from tempfile import SpooledTemporaryFile

import httpx
import pytest

from service.batch.routes import _create_job
from service.batch.store import JobStore
from service.settings import Settings
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


def test_an_upload_is_checked_and_stored_in_bounded_memory(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "data")
    query = "cordless drill " * 30
    with SpooledTemporaryFile(max_size=1 << 20) as upload:  # what the form parser hands over
        for i in range(40_000):
            upload.write(json.dumps({"custom_id": f"q{i}", "query": query}).encode() + b"\n")
        size = upload.tell()
        tracemalloc.start()
        try:
            job = _create_job(store, upload, "file", Settings(data_dir=tmp_path / "data"))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert job.total == 40_000
    assert size > 15_000_000 and peak < size / 4, f"peak {peak} bytes for {size} bytes"
