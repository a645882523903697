"""The background worker of the batch API: claims chunks of stored jobs and scores them.

Every replica runs one. It claims a chunk (`service.batch.chunks`: the oldest job's next chunk
nobody holds, planning new jobs on the way), scores it with the engine being served, writes its
answers and marks it done; a heartbeat thread renews its lease meanwhile. Searches come first:
before each model call (`YIELD_EVERY` requests) it waits while the micro-batcher has searches
queued or running. A chunk whose lease was lost is dropped (another replica has it); one being
scored at shutdown is given back, for this or another replica to claim. A cancelled job's chunks
are no longer claimed, and it ends once the chunks being scored are finished. A job whose
scoring raises fails, by compare-and-set (`JobStore.transition`): `failed` never overwrites
`cancelled`. Between chunks it deletes the finished jobs older than the retention
(`XC_BATCH_RETENTION_DAYS`).
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from service.batch import chunks
from service.batch.chunks import Claim
from service.batch.requests import BatchRequest, parse_requests
from service.batch.scoring import score_chunk
from service.batch.store import JobStore
from service.search.engine import SearchEngine
from service.storage import StoreUnavailable, reason

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


def worker_name() -> str:
    """This worker's name in chunk leases: host, process and a random part (unique per start)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Heartbeat:
    """Renews a held chunk's lease every third of it, in a thread; `lost` once it could not."""

    def __init__(self, store: JobStore, held: Claim, lease_s: float) -> None:
        self.store, self.held, self.lease_s = store, held, lease_s
        self.lost = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="batch-lease", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._done.wait(self.lease_s / 3):
            try:
                if not chunks.renew(self.store, self.held, self.lease_s):
                    self.lost.set()
                    return
            except StoreUnavailable as exc:  # it may come back before the lease runs out
                log.warning("batch lease not renewed: %s", exc, extra={"job": self.held.job_id})


class BatchWorker:
    """One thread that claims chunks of stored jobs and scores them."""

    def __init__(
        self,
        *,
        store: JobStore,
        engine: Callable[[], SearchEngine | None],
        chunk_size: int,
        max_query_tokens: int,
        lease_s: float = 30.0,
        retention: timedelta | None = None,
        searches_idle: Callable[[float], object] | None = None,
    ) -> None:
        self.store = store
        self.engine = engine
        self.chunk_size = chunk_size
        self.lease_s = lease_s
        self.searches_idle = searches_idle
        self.max_query_tokens = max_query_tokens
        self.retention = retention
        self.name = worker_name()
        self._next_expiry = 0.0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="batch-jobs", daemon=True)

    def start(self) -> None:
        """Start the worker thread."""
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop within one model call; the chunk being scored is given back."""
        self._stopping.set()
        self.store.notify_workers()
        self._thread.join(timeout_s)

    def _expire(self) -> None:
        """Every EXPIRY_EVERY_S, delete the finished jobs older than the retention."""
        if self.retention is None or time.monotonic() < self._next_expiry:
            return
        self._next_expiry = time.monotonic() + EXPIRY_EVERY_S
        expired = self.store.expire(datetime.now(UTC) - self.retention)
        if expired:
            log.info("batch jobs expired", extra={"jobs": len(expired)})

    def _idle(self) -> None:
        with self.store.changed:
            self.store.changed.wait(IDLE_POLL_S)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            engine = self.engine()
            try:
                self._expire()
                chunks.settle(self.store)
                held = None if engine is None else self.claim()
            except StoreUnavailable as exc:
                log.warning("batch jobs: %s", exc)
                held = None
            if held is None or engine is None:
                self._idle()
                continue
            try:
                self.run(held, engine)
            except StoreUnavailable as exc:  # not the job's fault: its lease runs out, and the
                log.warning("batch chunk not recorded: %s", exc)  # chunk is claimed again
                self._idle()
            except Exception as exc:  # a broken job must not stop the worker
                self._fail(held, exc)

    def claim(self) -> Claim | None:
        """The next chunk this worker should score (None when there is none)."""
        return chunks.claim(self.store, self.name, self.lease_s, self.chunk_size)

    def _fail(self, held: Claim, exc: Exception) -> None:
        log.exception("batch job failed: %s", exc, extra={"job": held.job_id})
        try:
            self.store.transition(held.job_id, "failed", allowed_from=LIVE, error=client_error(exc))
        except StoreUnavailable as stored:
            log.warning("batch job failure not recorded: %s", stored, extra={"job": held.job_id})

    def _requests(self, held: Claim) -> list[BatchRequest]:
        """The chunk's requests, read from its byte range of the input."""
        with self.store.input_path(held.job_id).open("rb") as handle:
            handle.seek(held.start)
            lines = handle.read(held.stop - held.start).decode("utf-8").splitlines()
        return parse_requests(lines, max_k=1_000_000, max_query_chars=1_000_000)

    def _score(self, requests: list[BatchRequest], engine: SearchEngine, beat: Heartbeat) -> Any:
        """The chunk's answers, a slice per model call; None if the worker stopped or lost the
        lease on the way."""
        records: list[dict[str, Any]] = []
        for first in range(0, len(requests), YIELD_EVERY):
            if self._stopping.is_set() or beat.lost.is_set():
                return None
            if self.searches_idle is not None:
                self.searches_idle(YIELD_MAX_WAIT_S)
            piece = requests[first : first + YIELD_EVERY]
            records += score_chunk(engine, piece, self.max_query_tokens)
        return records

    def run(self, held: Claim, engine: SearchEngine) -> bool:
        """Score a held chunk, write its answers and mark it done; False when it was given back
        (stopping) or lost to another worker."""
        requests = self._requests(held)
        with Heartbeat(self.store, held, self.lease_s) as beat:
            records = self._score(requests, engine, beat)
            if records is not None and not beat.lost.is_set():
                path = chunks.chunk_path(self.store, held.job_id, held.index)
                chunks.write_answers(path, records, self.name.replace(":", "-"))
        if records is None:
            if not beat.lost.is_set():
                chunks.release(self.store, held)
            return False
        failed = sum(record["error"] is not None for record in records)
        if not chunks.finish(self.store, held, len(records) - failed, failed):
            log.info("batch chunk lost to another worker", extra={"job": held.job_id})
            return False
        log.debug("batch chunk done", extra={"job": held.job_id, "chunk": held.index})
        return True
