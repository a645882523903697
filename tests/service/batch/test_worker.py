"""Job status changes are compare-and-set: a cancel is never undone by the worker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.batch.requests import parse_requests
from service.batch.store import JobStore
from service.batch.worker import BatchWorker
from service.search.engine import SearchEngine


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path)


def requests(count: int) -> list:
    lines = [json.dumps({"custom_id": f"q{i}", "query": "cordless drill"}) for i in range(count)]
    return parse_requests(lines)


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


def test_a_cancel_after_the_worker_read_the_job_is_not_undone(
    demo_bundle: Path, store: JobStore
) -> None:
    engine = SearchEngine.load(demo_bundle)
    worker = BatchWorker(store=store, engine=lambda: engine, chunk_size=4, max_query_tokens=128)
    job = store.create(requests(10))
    read = store.next_runnable()  # the worker reads the job (validating) ...
    assert read is not None and read.id == job.id and read.status == "validating"
    assert store.cancel(job.id).status == "cancelled"  # ... and the cancel lands now
    worker._run(read, engine)
    after = store.get(job.id)
    assert after.status == "cancelled" and after.completed == 0
    assert not store.output_path(job.id).exists()


def test_finished_jobs_past_their_retention_are_deleted_with_their_files(store: JobStore) -> None:
    from datetime import UTC, datetime, timedelta

    done, running = store.create(requests(2)), store.create(requests(2))
    assert store.transition(done.id, "in_progress", allowed_from=("validating",))
    assert store.transition(done.id, "completed", allowed_from=("in_progress",))
    assert store.transition(running.id, "in_progress", allowed_from=("validating",))
    assert store.expire(datetime.now(UTC) - timedelta(days=1)) == []  # too young
    assert store.expire(datetime.now(UTC) + timedelta(days=1)) == [done.id]
    assert store.get(done.id) is None and not store.job_dir(done.id).exists()
    assert store.get(running.id) is not None and store.job_dir(running.id).exists()
    assert not store.delete(running.id)  # a running job is never deleted


def test_the_worker_waits_for_searches_before_each_model_call(
    demo_bundle: Path, store: JobStore
) -> None:
    from service.batch.worker import YIELD_EVERY, YIELD_MAX_WAIT_S

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
    worker._run(store.next_runnable(), engine)
    assert store.get(job.id).status == "completed"
    assert waits == [YIELD_MAX_WAIT_S] * 3  # before each of the three model calls
    assert len(store.output_path(job.id).read_bytes().splitlines()) == total
