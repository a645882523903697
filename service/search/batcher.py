"""Dynamic micro-batching: concurrent searches share one encoder call and one retrieval call.

Requests are admitted into a bounded queue (counted in queries) from the event loop, which
never runs a model. Worker threads take what is queued, up to `max_batch` queries, optionally
waiting up to `max_wait_s` for more, and run the batch through the one query path
(`service.search.pipeline`): token limits, tokenize, encode once, then retrieve once per
(model, k). Batches form on their own under load, because queries arrive while a worker is
busy; a lone query on an idle server runs at once (with max_wait 0). A request larger than a
batch runs as slices, one at a time, taking turns with the requests queued behind it: a
256-query request holds one worker, never all of them.

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
    those are `service.batch.store.BatchJobRecord`).

    A job larger than a batch runs as slices of at most `max_batch` queries, one slice at a
    time; the fields after `abandoned` are the batcher's record of that (kept under its lock)."""

    engine: SearchEngine
    queries: list[str]
    k: int
    model: str
    deadline: float  # time.monotonic() after which the job is not started
    future: asyncio.Future[Answer]
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.monotonic)
    explain: bool = False  # attach each result's signals (`service.search.explain`)
    abandoned: bool = False  # set from the event loop when the client disconnects
    taken: int = 0  # queries handed to workers so far
    in_flight: bool = False  # a slice of this job is being run
    ended: bool = False  # answered, refused or dropped: nothing more of it runs
    started: float | None = None  # time.monotonic() when its first slice started
    hits: list[list[Hit]] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def untaken(self) -> int:
        """Queries not yet handed to a worker."""
        return len(self.queries) - self.taken

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


@dataclass(frozen=True)
class Slice:
    """Queries `start:end` of a job, run in one model call with other jobs' slices."""

    job: SearchJob
    start: int
    end: int

    @property
    def queries(self) -> list[str]:
        return self.job.queries[self.start : self.end]


class MicroBatcher:
    """A bounded queue of jobs and the worker threads that run them in batches."""

    def __init__(
        self,
        *,
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
        max_query_tokens: int,
        reserved_for_small: int = 0,
        workers: int,
        metrics: ServiceMetrics,
    ) -> None:
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        # Places at the end of the queue only requests of at most max_batch queries may take:
        # one client's 256-query requests cannot shut single queries out.
        self.reserved_for_small = max(0, reserved_for_small)
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
            for job in leftover:
                job.ended = True
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

    def wait_until_idle(self, timeout_s: float) -> bool:
        """Block until no search is queued or running (True), or `timeout_s` passes (False):
        offline batch scoring calls this before each model call, so searches go first."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self._stopping or (self._queued == 0 and self._running == 0), timeout_s
            )

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
            limit = self.max_queue
            if size > self.max_batch:
                limit -= self.reserved_for_small
            if self._queued + size > limit:
                raise Overloaded(self._queued, limit, self._retry_after_s())
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
            size = self._size(batch)
            start = time.perf_counter()
            me = threading.get_ident()
            self._busy_since[me] = time.monotonic()
            try:
                self._run(batch)
            except Exception as exc:  # a fault in one batch must not kill the worker
                log.exception("batch failed: %s", exc)
                for piece in batch:
                    self._end(piece.job, error=exc)
            finally:
                self._busy_since.pop(me, None)
                elapsed = time.perf_counter() - start
                with self._cond:
                    self._running -= size
                    for piece in batch:
                        piece.job.in_flight = False
                    if elapsed > 0:
                        rate = size / elapsed
                        self._throughput = (
                            rate
                            if self._throughput == 0
                            else (1 - THROUGHPUT_SMOOTHING) * self._throughput
                            + THROUGHPUT_SMOOTHING * rate
                        )
                    self._cond.notify_all()  # the rest of a sliced job may be taken now

    def _take(self) -> list[Slice] | None:
        """Block for the next batch (None: stop): what is queued, up to max_batch queries,
        optionally waiting up to max_wait for more."""
        with self._cond:
            batch: list[Slice] = []
            while not batch:
                if self._stopping:
                    return None
                self._gather(batch)
                if not batch:
                    self._cond.wait()
            ready_at = batch[0].job.enqueued + self.max_wait_s
            while self._size(batch) < self.max_batch and not self._stopping:
                remaining = ready_at - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
                self._gather(batch)
            size = self._size(batch)
            self._queued -= size
            self._running += size
            depth = self._queued
        self.metrics.queue_depth.set(depth)
        return batch

    @staticmethod
    def _size(batch: list[Slice]) -> int:
        return sum(piece.end - piece.start for piece in batch)

    def _gather(self, batch: list[Slice]) -> None:
        """Add queued work to `batch` in arrival order, up to max_batch queries (lock held).

        Fairness: a job larger than the room left is sliced only when the batch is empty,
        then sent to the back of the queue; a job with a slice running is passed over, so one
        large request holds at most one worker and small requests run beside it."""
        room = self.max_batch - self._size(batch)
        for job in list(self._jobs):
            if room <= 0:
                return
            if job.in_flight:
                continue
            if job.untaken > room and batch:
                return  # first come, first served: it leads the next batch
            count = min(job.untaken, room)
            batch.append(Slice(job, job.taken, job.taken + count))
            job.taken += count
            job.in_flight = True
            room -= count
            self._jobs.remove(job)
            if job.untaken:
                self._jobs.append(job)

    def _end(
        self, job: SearchJob, answer: Answer | None = None, error: BaseException | None = None
    ) -> None:
        """Answer or refuse a job and forget what of it is still queued."""
        with self._cond:
            if job.ended:
                return
            job.ended = True
            if job.untaken:
                self._jobs.remove(job)
                self._queued -= job.untaken
        if answer is not None or error is not None:
            job.settle(answer, error)

    def _live(self, batch: list[Slice]) -> list[Slice]:
        """The slices still worth running; the others' jobs are answered or forgotten here."""
        now = time.monotonic()
        live = []
        for piece in batch:
            job = piece.job
            if job.ended:
                continue
            if job.abandoned or job.future.cancelled():
                self.metrics.dropped.labels("disconnected").inc()
                self._end(job)
            elif job.started is None and now > job.deadline:
                self.metrics.dropped.labels("deadline").inc()
                waited_ms = round((now - job.enqueued) * 1000)
                message = f"request_timeout: queued {waited_ms} ms, past the server's deadline"
                self._end(job, error=Dropped("deadline", message))
            else:
                if job.started is None:
                    job.started = now
                live.append(piece)
        return live

    def _run(self, batch: list[Slice]) -> None:
        by_engine: dict[int, list[Slice]] = {}
        for piece in self._live(batch):
            by_engine.setdefault(id(piece.job.engine), []).append(piece)
        for pieces in by_engine.values():
            try:
                self._run_on_engine(pieces[0].job.engine, pieces)
            except Exception as exc:
                log.exception("batch failed: %s", exc)
                for piece in pieces:
                    self._end(piece.job, error=exc)

    def _run_on_engine(self, engine: SearchEngine, pieces: list[Slice]) -> None:
        groups = [
            QueryGroup(piece.queries, piece.job.model, piece.job.k, piece.job.explain)
            for piece in pieces
        ]
        answers = answer_groups(engine, groups, self.max_query_tokens)
        if answers.encoded:
            self.metrics.batch_queries.observe(answers.encoded)
        for piece, result in zip(pieces, answers.results, strict=True):
            job = piece.job
            if isinstance(result, QueryTooLong):
                position = piece.start + result.position
                self._end(job, error=QueryTooLong(position, result.tokens, result.limit))
                continue
            job.hits.extend(result)
            for stage, seconds in answers.stages.items():
                job.stages[stage] = job.stages.get(stage, 0.0) + seconds
            if len(job.hits) == len(job.queries):
                assert job.started is not None
                stages = {"queue": job.started - job.enqueued, **job.stages}
                self._end(job, Answer(job.hits, stages))
