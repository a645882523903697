"""Three real replicas on one PostgreSQL database: catalog changes through one are answered by
the others, a replica killed with SIGKILL mid-chunk leaves its batch job to the others with
every custom_id answered once, a replica restarted after missing notifications catches up, and
PostgreSQL going away stops changes (503) but not searches. (The scenario with more changes and
kills, timed, is `bench.fleet`.)"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import psycopg
import pytest

from bench.fleet import run, start_fleet
from bench.postgres import new_database
from bench.server import RestartableServer

pytestmark = pytest.mark.slow


def test_changes_reach_every_replica_and_killed_chunks_are_finished_once(
    demo_bundle: Path, postgres_server: str, tmp_path: Path
) -> None:
    tally = run(demo_bundle, changes=12, kills=3, requests=400, seed=1, work_dir=tmp_path)
    assert tally.changes == 12 and len(tally.propagation_ms) == 24 and tally.not_propagated == 0
    assert tally.kills >= 2 and tally.jobs_completed == tally.jobs_accepted == 3
    assert tally.answers_expected == tally.answers_written == 1200
    assert tally.answers_missing == tally.answers_duplicated == tally.answers_out_of_order == 0
    assert tally.server_errors == 0


def put(replica: RestartableServer, product: str, title: str) -> httpx.Response:
    body = {"products": [{"id": product, "title": title}]}
    return httpx.put(f"{replica.base}/products", json=body, timeout=30)


def search(replica: RestartableServer, query: str) -> dict:
    response = httpx.post(f"{replica.base}/search", json={"query": query, "k": 10}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_replica_restarted_after_missed_changes_catches_up(
    demo_bundle: Path, postgres_server: str, tmp_path: Path
) -> None:
    a, b = start_fleet(demo_bundle, new_database(postgres_server), tmp_path, count=2)
    try:
        b.kill()  # B misses every notification from here on
        for n in range(3):
            assert put(a, f"NEW-{n}", f"Quillwort {n} restart lantern").status_code == 200
        b.start()
        answer = search(b, "Quillwort 2 restart lantern")
        assert answer["version"].endswith("+c3")
        assert "NEW-2" in {hit["id"] for hit in answer["results"]}
        assert answer["results"] == search(a, "Quillwort 2 restart lantern")["results"]
    finally:
        a.kill()
        b.kill()


def _refuse_connections(database: str, refuse: bool) -> None:
    """PostgreSQL 'down' for `database`: new connections refused, open ones ended."""
    name = database.rsplit("/", 1)[1]
    admin = database.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {"false" if refuse else "true"}')
        if refuse:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )


def test_without_postgresql_searches_go_on_and_changes_answer_503(
    demo_bundle: Path, postgres_server: str, tmp_path: Path
) -> None:
    database = new_database(postgres_server)
    [a] = start_fleet(demo_bundle, database, tmp_path, count=1)
    try:
        assert put(a, "NEW-1", "Quillwort outage lantern").status_code == 200
        job = httpx.post(f"{a.base}/batches", json={"requests": [{"custom_id": "x", "query": "q"}]})
        _refuse_connections(database, refuse=True)
        answer = search(a, "Quillwort outage lantern")  # from the catalog applied before
        assert answer["version"].endswith("+c1")
        assert "NEW-1" in {hit["id"] for hit in answer["results"]}
        for response in (
            put(a, "NEW-2", "Quillwort second lantern"),
            httpx.delete(f"{a.base}/products/NEW-1", timeout=30),
            httpx.post(
                f"{a.base}/batches",
                json={"requests": [{"custom_id": "y", "query": "q"}]},
                timeout=30,
            ),
            httpx.get(f"{a.base}/batches/{job.json()['id']}", timeout=30),
            httpx.get(f"{a.base}/batches", timeout=30),
        ):
            assert response.status_code == 503, response.text
            assert "unreachable" in response.json()["detail"][0]["msg"], response.text
            assert response.headers["retry-after"]
        assert httpx.get(f"{a.base}/healthz", timeout=5).status_code == 200
        _refuse_connections(database, refuse=False)
        deadline = time.monotonic() + 30
        while (retry := put(a, "NEW-2", "Quillwort second lantern")).status_code == 503:
            assert time.monotonic() < deadline, retry.text
            time.sleep(0.5)
        assert retry.status_code == 200 and retry.json()["catalog_version"] == 2
    finally:
        a.kill()
