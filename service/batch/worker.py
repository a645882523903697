"""The background worker of the batch API: runs stored jobs one at a time, resumably.

It scores in chunks of its own size (`XC_BATCH_CHUNK`) with the engine being served, records
progress in the job store after every chunk, and checks for cancellation there. Searches come
first: before each model call (`YIELD_EVERY` requests) it waits while the micro-batcher has
searches queued or running. Stopped by a shutdown, it leaves the job `in_progress`; the next
start resumes it from its output file. It changes a job's status only by compare-and-set
(`JobStore.transition`): a cancel that lands after the worker read the job is never undone,
and `completed` never overwrites `cancelled`. Between jobs it deletes the finished ones older
than the retention (`XC_BATCH_RETENTION_DAYS`).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from service.batch.requests import parse_requests
from service.batch.scoring import Counts, score_to_file
from service.batch.store import RUNNABLE, BatchJobRecord, JobStore
from service.search.engine import SearchEngine
from service.storage import reason

log = logging.getLogger(__name__)

IDLE_POLL_S = 1.0
# How often finished jobs past their retention are looked for.
EXPIRY_EVERY_S = 600.0
# Requests scored per model call; before each, the worker waits while searches run, up to
# YIELD_MAX_WAIT_S (online searches come first; a busy server still makes batch progress).
YIELD_EVERY = 32
YIELD_MAX_WAIT_S = 0.5
# Statuses a failure may replace (never a terminal one).
LIVE = ("validating", "in_progress", "cancelling")


def client_error(exc: Exception) -> str:
    """Why a job failed, as its owner is told: what failed, never a server path (the log line
    has the full exception, under the job id)."""
    if isinstance(exc, OSError | sqlite3.Error):
        return f"scoring stopped: {reason(exc, 'the answers')}"
    return f"scoring failed ({type(exc).__name__}); the server log has the details under the job id"


class BatchWorker:
    """One thread that takes runnable jobs from the store and scores them."""

    def __init__(
        self,
        *,
        store: JobStore,
        engine: Callable[[], SearchEngine | None],
        chunk_size: int,
        max_query_tokens: int,
        retention: timedelta | None = None,
        searches_idle: Callable[[float], object] | None = None,
    ) -> None:
        self.store = store
        self.engine = engine
        self.chunk_size = chunk_size
        self.searches_idle = searches_idle
        self.max_query_tokens = max_query_tokens
        self.retention = retention
        self._next_expiry = 0.0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="batch-jobs", daemon=True)

    def start(self) -> None:
        """Start the worker thread."""
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop after the chunk being scored (the job resumes at the next start)."""
        self._stopping.set()
        with self.store.changed:
            self.store.changed.notify_all()
        self._thread.join(timeout_s)

    def _expire(self) -> None:
        """Every EXPIRY_EVERY_S, delete the finished jobs older than the retention."""
        if self.retention is None or time.monotonic() < self._next_expiry:
            return
        self._next_expiry = time.monotonic() + EXPIRY_EVERY_S
        expired = self.store.expire(datetime.now(UTC) - self.retention)
        if expired:
            log.info("batch jobs expired", extra={"jobs": len(expired)})

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._expire()
            job = self.store.next_runnable()
            engine = self.engine()
            if job is None or engine is None:
                with self.store.changed:
                    self.store.changed.wait(IDLE_POLL_S)
                continue
            try:
                self._run(job, engine)
            except Exception as exc:  # a broken job must not stop the worker
                log.exception("batch job failed: %s", exc, extra={"job": job.id})
                error = client_error(exc)
                self.store.transition(job.id, "failed", allowed_from=LIVE, error=error)

    def _yield_to_searches(self) -> None:
        """Wait while searches are queued or running (at most YIELD_MAX_WAIT_S, so a server
        that is never idle still scores a slice now and then)."""
        if self.searches_idle is not None:
            self.searches_idle(YIELD_MAX_WAIT_S)

    def _cancel_if_asked(self, job_id: str) -> bool:
        """End a job whose cancel was asked for (`cancelling`); True if it was."""
        return self.store.transition(job_id, "cancelled", allowed_from=("cancelling",))

    def _run(self, job: BatchJobRecord, engine: SearchEngine) -> None:
        if not self.store.transition(job.id, "in_progress", allowed_from=RUNNABLE):
            self._cancel_if_asked(job.id)  # cancelled or asked to stop since it was read
            return
        with self.store.input_path(job.id).open(encoding="utf-8") as lines:
            requests = parse_requests(lines, max_k=1_000_000, max_query_chars=1_000_000)

        def record(counts: Counts) -> bool:
            self.store.record_progress(job.id, counts.completed, counts.failed)
            current = self.store.get(job.id)
            return self._stopping.is_set() or (
                current is not None and current.status == "cancelling"
            )

        log.info("batch job started", extra={"job": job.id, "requests": len(requests)})
        counts = score_to_file(
            engine,
            requests,
            self.store.output_path(job.id),
            max_query_tokens=self.max_query_tokens,
            chunk_size=self.chunk_size,
            progress=False,
            stop_after_chunk=record,
            pace=self._yield_to_searches,
            slice_size=YIELD_EVERY,
        )
        if self._cancel_if_asked(job.id):
            return
        if counts.completed + counts.failed == counts.total and self.store.transition(
            job.id,
            "completed",
            allowed_from=("in_progress",),
            completed=counts.completed,
            failed=counts.failed,
        ):
            log.info("batch job completed", extra={"job": job.id, "failed": counts.failed})
