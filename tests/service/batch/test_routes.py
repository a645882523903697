"""The batch API: lifecycle, bad files, limits, cancel, and a server killed with SIGKILL mid-job."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from training.data import load_dataset

pytestmark = pytest.mark.slow


@contextmanager
def serve(bundle: Path, data_dir: Path, **settings: Any) -> Iterator[TestClient]:
    app = create_app(Settings(bundle=bundle, data_dir=data_dir, **settings))
    with TestClient(app) as client:
        deadline = time.monotonic() + 120
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield client


def wait_status(get: Any, job_id: str, wanted: set[str], timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        job = get(f"/batches/{job_id}").json()
        if job["status"] in wanted:
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def jsonl(records: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


@pytest.fixture(scope="module")
def queries(demo_data: Path) -> list[str]:
    return load_dataset(demo_data).split("dev").texts


def test_lifecycle_json_and_upload(demo_bundle: Path, queries: list[str], tmp_path: Path) -> None:
    records = [{"custom_id": f"q{i}", "query": q, "k": 3} for i, q in enumerate(queries[:40])]
    records.append({"custom_id": "bad-model", "query": "drill", "model": "mach"})
    with serve(demo_bundle, tmp_path / "data") as client:
        created = client.post("/batches", json={"requests": records})
        assert created.status_code == 201, created.text
        job = created.json()
        assert job["id"].startswith("batch_") and job["object"] == "batch"
        assert job["status"] == "validating" and job["request_counts"]["total"] == 41
        done = wait_status(client.get, job["id"], {"completed"})
        assert done["request_counts"] == {"total": 41, "completed": 40, "failed": 1}

        output = client.get(f"/batches/{job['id']}/output")
        assert (
            output.status_code == 200 and output.headers["content-type"] == "application/x-ndjson"
        )
        answers = [json.loads(line) for line in output.text.splitlines()]
        assert [a["custom_id"] for a in answers] == [r["custom_id"] for r in records]
        for record, answer in zip(records[:40], answers, strict=False):
            online = client.post("/search", json={"query": record["query"], "k": 3}).json()
            assert [h["id"] for h in answer["response"]["results"]] == [
                h["id"] for h in online["results"]
            ]
        errors = client.get(f"/batches/{job['id']}/errors").text.splitlines()
        assert [json.loads(line)["custom_id"] for line in errors] == ["bad-model"]

        upload = client.post("/batches", files={"file": ("q.jsonl", jsonl(records[:5]))})
        assert upload.status_code == 201
        second = upload.json()["id"]
        wait_status(client.get, second, {"completed"})
        page = client.get("/batches", params={"limit": 1}).json()
        assert [j["id"] for j in page["data"]] == [second] and page["has_more"] is True
        rest = client.get("/batches", params={"after": page["last_id"]}).json()
        assert [j["id"] for j in rest["data"]] == [job["id"]] and rest["has_more"] is False


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        (b'{"custom_id": "a", "query": "x"}\nnot json\n', ["file: line 2: not valid JSON"]),
        (
            b'{"custom_id": "a", "query": "x"}\n{"custom_id": "a", "query": "y"}\n',
            ["file: line 2: custom_id: 'a' repeats line 1"],
        ),
        (b'{"query": "x"}\n{"custom_id": "b", "query": ""}\n', ["line 1: custom_id", "line 2"]),
        (b"\xff\xfe", ["file: must be UTF-8"]),
        (b"\n\n", ["file: has no requests"]),
    ],
)
def test_bad_files_are_refused_naming_the_lines(
    demo_bundle: Path, tmp_path: Path, content: bytes, fragments: list[str]
) -> None:
    with serve(demo_bundle, tmp_path / "data") as client:
        response = client.post("/batches", files={"file": ("q.jsonl", content)})
        assert response.status_code == 422, response.text
        messages = " | ".join(d["msg"] for d in response.json()["detail"])
        for fragment in fragments:
            assert fragment in messages
        assert client.get("/batches").json()["data"] == []  # nothing was created


def test_lines_the_json_parser_chokes_on_are_422_not_500(demo_bundle: Path, tmp_path: Path) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    huge = b'{"custom_id": "a", "query": "drill", "k": ' + b"9" * 5000 + b"}"
    repeated = b'{"custom_id": "b", "query": "drill", "custom_id": "c"}'
    with serve(demo_bundle, tmp_path / "data") as client:
        for line in (deep, huge, repeated):
            response = client.post("/batches", files={"file": ("q.jsonl", line + b"\n")})
            assert response.status_code == 422, response.text
            [detail] = response.json()["detail"]
            assert detail["loc"] == ["body", "file"] and detail["msg"].startswith("file: line 1: ")
        assert client.get("/batches").json()["data"] == []


def test_limits_and_unknown_jobs(demo_bundle: Path, tmp_path: Path) -> None:
    with serve(
        demo_bundle, tmp_path / "data", max_batch_lines=3, max_batch_file_bytes=2048
    ) as client:
        four = jsonl([{"custom_id": str(i), "query": "drill"} for i in range(4)])
        response = client.post("/batches", files={"file": ("q.jsonl", four)})
        assert response.status_code == 422
        assert response.json()["detail"][0]["msg"] == "file: has 4 requests, limit 3"
        big = client.post("/batches", files={"file": ("q.jsonl", b" " * 4096)})
        assert big.status_code == 413 and "2048 bytes" in big.json()["detail"][0]["msg"]
        plain = client.post("/batches", content=b"x", headers={"content-type": "text/plain"})
        assert plain.status_code == 415
        missing = client.get("/batches/batch_" + "0" * 32)
        assert missing.status_code == 404 and "batch_id" in missing.json()["detail"][0]["msg"]
        assert client.get("/batches/../../etc/passwd").status_code == 404
        assert client.get("/batches/not-an-id").status_code == 422


def test_a_finished_job_can_be_deleted_with_its_files(
    demo_bundle: Path, queries: list[str], tmp_path: Path
) -> None:
    records = [{"custom_id": f"q{i}", "query": queries[i % len(queries)]} for i in range(30)]
    with serve(demo_bundle, tmp_path / "data") as client:
        job = client.post("/batches", json={"requests": records}).json()["id"]
        deadline = time.monotonic() + 60
        while client.get(f"/batches/{job}").json()["status"] != "completed":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert (tmp_path / "data" / "jobs" / job).exists()
        deleted = client.delete(f"/batches/{job}")
        assert deleted.status_code == 200, deleted.text
        assert deleted.json() == {"id": job, "object": "batch.deleted", "deleted": True}
        assert not (tmp_path / "data" / "jobs" / job).exists()
        assert client.get(f"/batches/{job}").status_code == 404
        assert client.delete(f"/batches/{job}").status_code == 404


def test_cancel_stops_a_running_job(demo_bundle: Path, queries: list[str], tmp_path: Path) -> None:
    records = [{"custom_id": f"q{i}", "query": queries[i % len(queries)]} for i in range(4000)]
    with serve(demo_bundle, tmp_path / "data", batch_chunk=20) as client:
        job = client.post("/batches", json={"requests": records}).json()
        early = client.get(f"/batches/{job['id']}/output")
        assert early.status_code == 409 and "status:" in early.json()["detail"][0]["msg"]
        wait_status(client.get, job["id"], {"in_progress"})
        cancelling = client.post(f"/batches/{job['id']}/cancel").json()
        assert cancelling["status"] in {"cancelling", "cancelled"}
        done = wait_status(client.get, job["id"], {"cancelled"})
        answered = done["request_counts"]["completed"]
        assert 0 <= answered < 4000
        lines = client.get(f"/batches/{job['id']}/output").text.splitlines()
        assert [json.loads(line)["custom_id"] for line in lines] == [
            r["custom_id"] for r in records[: len(lines)]
        ]


def test_a_server_killed_mid_job_resumes_with_each_id_once(
    demo_bundle: Path, queries: list[str], tmp_path: Path
) -> None:
    from tests.support.servers import free_port, start_server, stop, wait_ready

    records = [{"custom_id": f"q{i}", "query": queries[i % len(queries)]} for i in range(3000)]
    data_dir = str(tmp_path / "data")

    def run_server(name: str) -> tuple[Any, str]:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log = tmp_path / f"{name}.log"
        process = start_server(demo_bundle, port, log, data_dir=data_dir, batch_chunk="25")
        wait_ready(process, base, log)
        return process, base

    process, base = run_server("first")
    try:
        client = httpx.Client(base_url=base, timeout=30)
        job = client.post("/batches", json={"requests": records}).json()
        reference = client.post("/batches", files={"file": ("q.jsonl", jsonl(records))}).json()
        deadline = time.monotonic() + 120
        while client.get(f"/batches/{job['id']}").json()["request_counts"]["completed"] < 100:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        stop(process)

    process, base = run_server("second")
    try:
        client = httpx.Client(base_url=base, timeout=30)
        interrupted = client.get(f"/batches/{job['id']}").json()
        assert interrupted["status"] == "in_progress"
        assert 0 < interrupted["request_counts"]["completed"] < 3000
        for job_id in (job["id"], reference["id"]):
            wait_status(client.get, job_id, {"completed"})
        resumed = client.get(f"/batches/{job['id']}/output").text.splitlines()
        whole = client.get(f"/batches/{reference['id']}/output").text.splitlines()
    finally:
        stop(process)
    resumed_answers = [json.loads(line) for line in resumed]
    assert [a["custom_id"] for a in resumed_answers] == [r["custom_id"] for r in records]
    for got, want in zip(resumed_answers, map(json.loads, whole), strict=True):
        assert [h["id"] for h in got["response"]["results"]] == [
            h["id"] for h in want["response"]["results"]
        ]
