"""The batch worker and the job store, on SQLite and on PostgreSQL: status changes are
compare-and-set, chunks are claimed once under a lease, and each answer is written once."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from service.batch import chunks
from service.batch.requests import parse_requests
from service.batch.store import JobStore
from service.batch.worker import YIELD_EVERY, YIELD_MAX_WAIT_S, BatchWorker
from service.search.engine import SearchEngine


@pytest.fixture
def store(tmp_path: Path, database_url: str | None) -> JobStore:
    opened = JobStore(tmp_path, database_url)
    yield opened
    opened.close()


def requests(count: int) -> list:
    lines = [json.dumps({"custom_id": f"q{i}", "query": "cordless drill"}) for i in range(count)]
    return parse_requests(lines)


def answer(held: chunks.Claim, store: JobStore, token: str = "t") -> list[dict]:
    """Write the held chunk's 'answers' (its custom_ids) as a worker would."""
    with store.input_path(held.job_id).open("rb") as handle:
        handle.seek(held.start)
        lines = handle.read(held.stop - held.start).splitlines()
    records = [
        {"custom_id": json.loads(line)["custom_id"], "response": {}, "error": None}
        for line in lines
    ]
    chunks.write_answers(chunks.chunk_path(store, held.job_id, held.index), records, token)
    return records


def output_ids(store: JobStore, job_id: str) -> list[str]:
    return [json.loads(line)["custom_id"] for line in store.output_lines(job_id)]


def test_transition_is_compare_and_set(store: JobStore) -> None:
    job = store.create(requests(3))
    assert store.transition(job.id, "in_progress", allowed_from=("validating",))
    assert not store.transition(job.id, "in_progress", allowed_from=("validating",))
    assert store.cancel(job.id).status == "cancelling"
    done = {"completed": 3, "failed": 0}
    assert not store.transition(job.id, "completed", allowed_from=("in_progress",), **done)
    assert store.transition(job.id, "cancelled", allowed_from=("cancelling",))
    assert store.get(job.id).status == "cancelled"
    assert not store.transition(job.id, "failed", allowed_from=("in_progress", "cancelling"))
    assert store.get(job.id).status == "cancelled"


def test_chunks_are_claimed_once_and_a_lost_lease_is_fenced(store: JobStore) -> None:
    job = store.create(requests(10))
    first = chunks.claim(store, "a", lease_s=30, chunk_size=4)
    second = chunks.claim(store, "b", lease_s=30, chunk_size=4)
    assert (first.index, second.index) == (0, 1)  # planned into 3 chunks: 4, 4, 2 lines
    assert store.get(job.id).status == "in_progress"
    stale = chunks.claim(store, "c", lease_s=-1, chunk_size=4)  # a lease already run out
    assert stale.index == 2
    taken = chunks.claim(store, "d", lease_s=30, chunk_size=4)
    assert taken.index == 2 and taken.owner == "d"  # "c" died: "d" takes its chunk over
    assert chunks.claim(store, "e", lease_s=30, chunk_size=4) is None
    assert not chunks.renew(store, stale, 30)
    answer(stale, store, "c")  # the stale holder still writes: the same lines, same place
    assert not chunks.finish(store, stale, 2, 0)  # ... but may not mark the chunk done
    for held in (first, second, taken):
        assert chunks.finish(store, held, len(answer(held, store, held.owner)), 0)
    finished = store.get(job.id)
    assert finished.status == "completed" and finished.completed == 10
    assert output_ids(store, job.id) == [f"q{i}" for i in range(10)]


def test_replicas_claiming_at_once_get_different_chunks(store: JobStore) -> None:
    store.create(requests(64))
    claimed: list[int] = []
    start = threading.Barrier(8)

    def replica(name: str) -> None:
        start.wait()
        while (held := chunks.claim(store, name, lease_s=30, chunk_size=4)) is not None:
            claimed.append(held.index)

    threads = [threading.Thread(target=replica, args=(f"r{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == list(range(16))


def test_a_cancel_ends_the_job_once_its_chunks_in_flight_are_done(store: JobStore) -> None:
    waiting = store.create(requests(4))
    assert store.cancel(waiting.id).status == "cancelled"  # never planned: ends at once
    job = store.create(requests(8))
    held = chunks.claim(store, "a", lease_s=30, chunk_size=4)
    assert held.job_id == job.id
    assert store.cancel(job.id).status == "cancelling"
    assert chunks.settle(store) == 0  # chunk 0 is still being scored
    assert chunks.claim(store, "b", lease_s=30, chunk_size=4) is None  # chunk 1 is not handed out
    answer(held, store)
    assert chunks.finish(store, held, 4, 0)
    assert chunks.settle(store) == 1
    ended = store.get(job.id)
    assert ended.status == "cancelled" and ended.completed == 4
    assert output_ids(store, job.id) == [f"q{i}" for i in range(4)]


def test_finished_jobs_past_their_retention_are_deleted_with_their_files(store: JobStore) -> None:
    done, running = store.create(requests(2)), store.create(requests(2))
    assert store.transition(done.id, "in_progress", allowed_from=("validating",))
    assert store.transition(done.id, "completed", allowed_from=("in_progress",))
    assert store.transition(running.id, "in_progress", allowed_from=("validating",))
    assert store.expire(datetime.now(UTC) - timedelta(days=1)) == []  # too young
    assert store.expire(datetime.now(UTC) + timedelta(days=1)) == [done.id]
    assert store.get(done.id) is None and not store.job_dir(done.id).exists()
    assert store.get(running.id) is not None and store.job_dir(running.id).exists()
    assert not store.delete(running.id)  # a running job is never deleted


def test_a_job_finished_by_an_older_version_keeps_its_output_file(store: JobStore) -> None:
    job = store.create(requests(1))
    legacy = store.job_dir(job.id) / "output.jsonl"
    legacy.write_text('{"custom_id": "q0", "response": null, "error": null}\n')
    assert output_ids(store, job.id) == ["q0"]


def test_the_worker_waits_for_searches_before_each_model_call(
    demo_bundle: Path, store: JobStore
) -> None:
    engine = SearchEngine.load(demo_bundle)
    waits: list[float] = []
    worker = BatchWorker(
        store=store,
        engine=lambda: engine,
        chunk_size=512,
        max_query_tokens=128,
        searches_idle=lambda timeout_s: waits.append(timeout_s),
    )
    total = 2 * YIELD_EVERY + 6
    job = store.create(requests(total))
    assert worker.run(worker.claim(), engine)
    assert store.get(job.id).status == "completed"
    assert waits == [YIELD_MAX_WAIT_S] * 3  # before each of the three model calls
    assert output_ids(store, job.id) == [f"q{i}" for i in range(total)]


def test_a_stopping_worker_gives_its_chunk_back(demo_bundle: Path, store: JobStore) -> None:
    engine = SearchEngine.load(demo_bundle)
    worker = BatchWorker(store=store, engine=lambda: engine, chunk_size=4, max_query_tokens=128)
    job = store.create(requests(8))
    held = worker.claim()
    worker._stopping.set()
    assert not worker.run(held, engine)
    again = chunks.claim(store, "other", lease_s=30, chunk_size=4)
    assert (again.job_id, again.index) == (job.id, held.index)  # at once, not after the lease
    assert not chunks.chunk_path(store, job.id, held.index).exists()


def test_a_job_left_running_by_a_version_without_chunks_is_planned_and_finished(
    tmp_path: Path,
) -> None:
    import sqlite3

    old = sqlite3.connect(tmp_path / "jobs.sqlite3")  # the schema before chunks, as it was
    old.execute(
        "CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, "
        "status TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL, "
        "total INTEGER NOT NULL, completed INTEGER NOT NULL DEFAULT 0, "
        "failed INTEGER NOT NULL DEFAULT 0, error TEXT)"
    )
    job_id = "batch_" + "0" * 32
    job_dir = tmp_path / "jobs" / job_id
    job_dir.mkdir(parents=True)
    lines = [json.dumps({"custom_id": f"q{i}", "query": "drill"}) for i in range(6)]
    (job_dir / "input.jsonl").write_text("".join(line + "\n" for line in lines))
    (job_dir / "output.jsonl").write_text(lines[0] + "\n")  # its partial output, to be redone
    old.execute(
        "INSERT INTO jobs (id, status, created_at, updated_at, total, completed) "
        "VALUES (?, 'in_progress', '2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00', 6, 1)",
        (job_id,),
    )
    old.commit()
    old.close()
    store = JobStore(tmp_path)  # migrates the schema
    try:
        held = chunks.claim(store, "a", lease_s=30, chunk_size=4)
        assert (held.job_id, held.index) == (job_id, 0)
        assert not (job_dir / "output.jsonl").exists()
        second = chunks.claim(store, "a", lease_s=30, chunk_size=4)
        for claimed in (held, second):
            assert chunks.finish(store, claimed, len(answer(claimed, store)), 0)
        done = store.get(job_id)
        assert done.status == "completed" and done.completed == 6  # counted afresh
        assert output_ids(store, job_id) == [f"q{i}" for i in range(6)]
    finally:
        store.close()
