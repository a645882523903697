"""Dynamic micro-batching: concurrent searches share one encoder call and one retrieval call.

Requests are admitted into a bounded queue (counted in queries) from the event loop, which
never runs a model. Worker threads take what is queued, up to `max_batch` queries, optionally
waiting up to `max_wait_s` for more, and run the batch through the one query path
(`service.search.pipeline`): token limits, tokenize, encode once, then retrieve once per
(model, k). Batches form on their own under load, because queries
arrive while a worker is busy; a lone query on an idle server runs at once (with max_wait 0).

Each job carries the engine it was admitted with, so a reload that swaps the engine mid-flight
never answers a request with a mix of two bundle versions. Admission refuses work that would
overflow the queue (`Overloaded`, answered 429); at run time a job whose deadline passed or
whose client went away is dropped before inference.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from service.metrics import ServiceMetrics
from service.ranking import Hit
from service.search.engine import SearchEngine
from service.search.pipeline import QueryGroup, QueryTooLong, answer_groups

log = logging.getLogger(__name__)

# Weight of the newest batch in the moving average of throughput behind `Retry-After`.
THROUGHPUT_SMOOTHING = 0.2


class Overloaded(Exception):
    """The queue cannot take the job; retry after `retry_after_s` seconds."""

    def __init__(self, queued: int, limit: int, retry_after_s: int) -> None:
        super().__init__(f"queue: {queued} queries waiting, limit {limit}")
        self.queued = queued
        self.limit = limit
        self.retry_after_s = retry_after_s


class Dropped(Exception):
    """An admitted job was not run: its deadline passed, or the server is shutting down."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Answer:
    """A job's result: hits per query, and seconds per stage of the batch that ran it."""

    hits: list[list[Hit]]
    stages: dict[str, float]


@dataclass(kw_only=True)
class SearchJob:
    """One search request's queries waiting for a model call (not an offline batch job:
    those are `service.batch.store.BatchJobRecord`)."""

    engine: SearchEngine
    queries: list[str]
    k: int
    model: str
    deadline: float  # time.monotonic() after which the job is not started
    future: asyncio.Future[Answer]
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.monotonic)
    abandoned: bool = False  # set from the event loop when the client disconnects

    def settle(self, answer: Answer | None = None, error: BaseException | None = None) -> None:
        """Resolve the future from any thread (a future already done is left alone)."""

        def resolve() -> None:
            if self.future.done():
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(answer)

        # A closed loop raises RuntimeError: nobody is waiting for the answer any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(resolve)


class MicroBatcher:
    """A bounded queue of jobs and the worker threads that run them in batches."""

    def __init__(
        self,
        *,
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
        max_query_tokens: int,
        workers: int,
        metrics: ServiceMetrics,
    ) -> None:
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.max_query_tokens = max_query_tokens
        self.metrics = metrics
        self._jobs: deque[SearchJob] = deque()
        self._queued = 0  # queries in self._jobs
        self._running = 0  # queries taken by workers and not yet answered
        self._throughput = 0.0  # queries per second, moving average over batches
        self._cond = threading.Condition()
        self._stopping = False
        self._busy_since: dict[int, float] = {}  # worker thread -> when its batch started
        self._threads = [
            threading.Thread(target=self._work, name=f"batcher-{i}", daemon=True)
            for i in range(workers)
        ]

    def start(self) -> None:
        """Start the worker threads."""
        for thread in self._threads:
            thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Let the running batches finish, fail what is still queued, and join the workers."""
        with self._cond:
            self._stopping = True
            leftover = list(self._jobs)
            self._jobs.clear()
            self._queued = 0
            self._cond.notify_all()
        self.metrics.queue_depth.set(0)
        for job in leftover:
            self.metrics.dropped.labels("shutdown").inc()
            job.settle(error=Dropped("shutdown", "the server is shutting down"))
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout_s)

    def stalled_s(self) -> float:
        """How long the longest-running batch has run (0 when every worker is idle): a worker
        stuck in a model call shows here, and `/readyz` reports it."""
        started = list(self._busy_since.values())
        return time.monotonic() - min(started) if started else 0.0

    @property
    def queued(self) -> int:
        """Queries admitted and not yet taken by a worker."""
        return self._queued

    def full(self) -> Overloaded | None:
        """The refusal a request would get now because the queue is full (None: room left)."""
        queued = self._queued
        if queued < self.max_queue:
            return None
        return Overloaded(queued, self.max_queue, self._retry_after_s())

    def submit(self, job: SearchJob) -> None:
        """Admit a job, or raise `Overloaded` when its queries would overflow the queue."""
        size = len(job.queries)
        with self._cond:
            if self._stopping:
                raise Dropped("shutdown", "the server is shutting down")
            if self._queued + size > self.max_queue:
                raise Overloaded(self._queued, self.max_queue, self._retry_after_s())
            self._jobs.append(job)
            self._queued += size
            depth = self._queued
            self._cond.notify()
        self.metrics.queue_depth.set(depth)

    def _retry_after_s(self) -> int:
        """Whole seconds until the work ahead is likely done (at least 1)."""
        ahead = self._queued + self._running
        if self._throughput <= 0:
            return 1
        return max(1, math.ceil(ahead / self._throughput))

    # --- worker side ------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            size = sum(len(job.queries) for job in batch)
            start = time.perf_counter()
            me = threading.get_ident()
            self._busy_since[me] = time.monotonic()
            try:
                self._run(batch)
            except Exception as exc:  # a fault in one batch must not kill the worker
                log.exception("batch failed: %s", exc)
                for job in batch:
                    job.settle(error=exc)
            finally:
                self._busy_since.pop(me, None)
                elapsed = time.perf_counter() - start
                with self._cond:
                    self._running -= size
                    if elapsed > 0:
                        rate = size / elapsed
                        self._throughput = (
                            rate
                            if self._throughput == 0
                            else (1 - THROUGHPUT_SMOOTHING) * self._throughput
                            + THROUGHPUT_SMOOTHING * rate
                        )

    def _take(self) -> list[SearchJob] | None:
        """Block for the next batch: what is queued, up to max_batch queries (None: stop)."""
        with self._cond:
            while not self._jobs and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            batch = [self._jobs.popleft()]
            size = len(batch[0].queries)
            ready_at = batch[0].enqueued + self.max_wait_s
            while size < self.max_batch:
                if self._jobs:
                    if size + len(self._jobs[0].queries) > self.max_batch:
                        break
                    job = self._jobs.popleft()
                    batch.append(job)
                    size += len(job.queries)
                    continue
                remaining = ready_at - time.monotonic()
                if remaining <= 0 or self._stopping:
                    break
                self._cond.wait(remaining)
            self._queued -= size
            self._running += size
            depth = self._queued
        self.metrics.queue_depth.set(depth)
        return batch

    def _live(self, batch: list[SearchJob]) -> list[SearchJob]:
        """The jobs still worth running; the others are answered or forgotten here."""
        now = time.monotonic()
        live = []
        for job in batch:
            if job.abandoned or job.future.cancelled():
                self.metrics.dropped.labels("disconnected").inc()
            elif now > job.deadline:
                self.metrics.dropped.labels("deadline").inc()
                waited_ms = round((now - job.enqueued) * 1000)
                job.settle(
                    error=Dropped(
                        "deadline",
                        f"request_timeout: queued {waited_ms} ms, past the server's deadline",
                    )
                )
            else:
                live.append(job)
        return live

    def _run(self, batch: list[SearchJob]) -> None:
        live = self._live(batch)
        queue_s = {id(job): time.monotonic() - job.enqueued for job in live}
        by_engine: dict[int, list[SearchJob]] = {}
        for job in live:
            by_engine.setdefault(id(job.engine), []).append(job)
        for jobs in by_engine.values():
            try:
                self._run_on_engine(jobs[0].engine, jobs, queue_s)
            except Exception as exc:
                log.exception("batch failed: %s", exc)
                for job in jobs:
                    job.settle(error=exc)

    def _run_on_engine(
        self, engine: SearchEngine, jobs: list[SearchJob], queue_s: dict[int, float]
    ) -> None:
        groups = [QueryGroup(job.queries, job.model, job.k) for job in jobs]
        answers = answer_groups(engine, groups, self.max_query_tokens)
        if answers.encoded:
            self.metrics.batch_queries.observe(answers.encoded)
        for job, result in zip(jobs, answers.results, strict=True):
            if isinstance(result, QueryTooLong):
                job.settle(error=result)
            else:
                job.settle(Answer(result, {"queue": queue_s[id(job)], **answers.stages}))
