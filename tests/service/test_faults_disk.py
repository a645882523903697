"""A full disk under XC_DATA_DIR, for real (a small tmpfs that fills up): catalog changes and
batch jobs are refused with 503 saying what failed, nothing accepted before is lost, search keeps
answering, and everything works again by itself once space returns."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from service.settings import Settings
from tests.support.client import assert_error, serve
from tests.support.disk import fill, small_filesystem

pytestmark = pytest.mark.slow


def catalog(client) -> dict:
    return client.get("/v1/models").json()["data"][0]["catalog"]


def products(prefix: str, count: int) -> dict:
    return {
        "products": [{"id": f"{prefix}-{i}", "title": f"{prefix} drill {i}"} for i in range(count)]
    }


def test_a_full_disk_refuses_catalog_changes_and_recovers(
    demo_bundle: Path, tmp_path: Path
) -> None:
    with small_filesystem(tmp_path / "disk", size_mib=8) as data:
        settings = Settings(bundle=demo_bundle, data_dir=data)
        with serve(settings, unavailable_ok=True) as client:
            assert client.put("/products", json=products("KEEP", 3)).status_code == 200
            filler = fill(data)
            for _ in range(3):  # refused every time, never a 500, nothing half applied
                refused = client.put("/products", json=products("LOST", 300))
                assert_error(refused, 503, "catalog", "disk that holds the catalog is full")
                assert refused.headers["Retry-After"]
                assert catalog(client)["version"] == 1 and catalog(client)["added"] == 3
            gone = client.delete("/products/KEEP-0")
            assert_error(gone, 503, "catalog", "nothing changed")
            answer = client.post(
                "/search", json={"query": "KEEP drill 1", "k": 3, "model": "astra"}
            )
            assert answer.status_code == 200 and answer.json()["version"].endswith("+c1")
            filler.unlink()
            assert client.put("/products", json=products("BACK", 2)).status_code == 200
            assert catalog(client)["version"] == 2
        with serve(settings) as restarted:  # every acknowledged change is on disk
            info = catalog(restarted)
            assert (info["version"], info["added"]) == (2, 5)
            hits = restarted.post("/search", json={"query": "LOST drill 1", "k": 20}).json()
            assert not [hit for hit in hits["results"] if hit["id"].startswith("LOST")]


def test_a_full_disk_refuses_batch_jobs_and_recovers(demo_bundle: Path, tmp_path: Path) -> None:
    lines = b"".join(
        f'{{"custom_id": "q{i}", "query": "cordless drill {i}"}}\n'.encode() for i in range(50)
    )
    with (
        small_filesystem(tmp_path / "disk", size_mib=8) as data,
        serve(Settings(bundle=demo_bundle, data_dir=data), unavailable_ok=True) as client,
    ):
        filler = fill(data)
        refused = client.post("/batches", files={"file": ("q.jsonl", lines)})
        assert_error(refused, 503, "batch", "disk that holds the batch job is full")
        assert str(data) not in refused.text
        assert client.get("/batches").json()["data"] == []
        assert not list((data / "jobs").iterdir())  # no half-written job left behind
        filler.unlink()
        created = client.post("/batches", files={"file": ("q.jsonl", lines)})
        assert created.status_code == 201, created.text
        job = created.json()["id"]
        deadline = time.monotonic() + 120
        while client.get(f"/batches/{job}").json()["status"] != "completed":
            assert time.monotonic() < deadline
            time.sleep(0.1)
