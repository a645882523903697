"""The micro-batcher on its own: batches form under load, limits hold, nothing mixes or leaks.

The engine here is a small stand-in that records every model call and can be held at a gate,
so each test controls exactly when a batch runs; the real engine is exercised through the API
in test_serving.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest

from service.metrics import ServiceMetrics
from service.ranking import Hit
from service.search.batcher import Answer, Dropped, MicroBatcher, Overloaded, SearchJob
from service.search.pipeline import QueryTooLong


class RecordingEncoder:
    """Counts tokens as words; records each embedding call; may hold calls at a gate."""

    def __init__(self, gate: threading.Event | None, fail: bool = False) -> None:
        self.gate = gate
        self.fail = fail
        self.calls: list[list[str]] = []
        self.entered = threading.Event()

    def tokenize(self, texts: list[str]) -> list[list[str]]:
        return [text.split() for text in texts]

    def token_counts(self, token_ids: list[list[str]]) -> list[int]:
        return [len(tokens) for tokens in token_ids]

    def embed(self, token_ids: list[list[str]]) -> np.ndarray:
        self.calls.append([" ".join(tokens) for tokens in token_ids])
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10), "test gate never opened"
        if self.fail:
            raise RuntimeError("encoder exploded")
        return np.arange(len(token_ids), dtype=np.float32)[:, None]


class StandInEngine:
    """Answers each query with k hits titled by the query and tagged with the engine's name."""

    def __init__(self, name: str, gate: threading.Event | None = None, fail: bool = False):
        self.name = name
        self.encoder = RecordingEncoder(gate, fail)
        self._texts: list[str] = []

    def rank_encoded(
        self, vectors: np.ndarray, queries: list[str], k: int, model: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        first = len(self._texts)
        self._texts.extend(f"{model}:{query}" for query in queries)
        labels = np.repeat(np.arange(first, first + len(queries))[:, None], k, axis=1)
        return np.zeros(labels.shape, np.float32), labels

    def hits(self, scores: np.ndarray, labels: np.ndarray) -> list[list[Hit]]:
        return [
            [Hit(label=int(x), id=self.name, title=self._texts[int(x)], score=0.0) for x in row]
            for row in labels
        ]


def make_batcher(**overrides: Any) -> MicroBatcher:
    options = {
        "max_batch": 64,
        "max_wait_s": 0.0,
        "max_queue": 64,
        "max_query_tokens": 8,
        "workers": 1,
        "metrics": ServiceMetrics(),
    }
    return MicroBatcher(**{**options, **overrides})


def make_job(
    engine: Any, queries: list[str], k: int = 3, model: str = "astra", **kw: Any
) -> SearchJob:
    loop = asyncio.get_running_loop()
    deadline = kw.pop("deadline", time.monotonic() + 10)
    return SearchJob(
        engine=engine,
        queries=queries,
        k=k,
        model=model,
        deadline=deadline,
        future=loop.create_future(),
        loop=loop,
        **kw,
    )


async def answers(*jobs: SearchJob) -> list[Answer | BaseException]:
    return list(
        await asyncio.wait_for(
            asyncio.gather(*(job.future for job in jobs), return_exceptions=True), 10
        )
    )


async def until(event: threading.Event) -> None:
    assert await asyncio.to_thread(event.wait, 10)


def titles(answer: Answer | BaseException) -> list[list[str]]:
    assert isinstance(answer, Answer), answer
    return [[hit.title for hit in hits] for hits in answer.hits]


def test_requests_arriving_while_the_model_is_busy_share_the_next_call() -> None:
    async def scenario() -> None:
        gate = threading.Event()
        engine = StandInEngine("a", gate)
        batcher = make_batcher()
        batcher.start()
        first = make_job(engine, ["q0"])
        batcher.submit(first)
        await until(engine.encoder.entered)
        rest = [make_job(engine, [f"q{i}"]) for i in range(1, 6)]
        for job in rest:
            batcher.submit(job)
        assert batcher.queued == 5
        gate.set()
        results = await answers(first, *rest)
        batcher.stop()
        assert engine.encoder.calls == [["q0"], ["q1", "q2", "q3", "q4", "q5"]]
        for i, result in enumerate(results):
            assert titles(result) == [[f"astra:q{i}"] * 3]

    asyncio.run(scenario())


def test_a_batch_never_exceeds_max_batch_queries() -> None:
    async def scenario() -> None:
        gate = threading.Event()
        engine = StandInEngine("a", gate)
        batcher = make_batcher(max_batch=3)
        batcher.start()
        jobs = [make_job(engine, ["x"])]
        batcher.submit(jobs[0])
        await until(engine.encoder.entered)
        for size in (2, 1, 2, 5):  # the 5-query job runs as slices of 3 and 2
            job = make_job(engine, [f"q{size}"] * size)
            jobs.append(job)
            batcher.submit(job)
        gate.set()
        results = await answers(*jobs)
        batcher.stop()
        assert [len(call) for call in engine.encoder.calls] == [1, 3, 2, 3, 2]
        assert titles(results[-1]) == [["astra:q5"] * 3] * 5

    asyncio.run(scenario())


class GatedBigEncoder(RecordingEncoder):
    """Holds only the calls that embed a query starting with "big" at the gate."""

    def embed(self, token_ids: list[list[str]]) -> np.ndarray:
        self.calls.append([" ".join(tokens) for tokens in token_ids])
        if any(tokens and tokens[0].startswith("big") for tokens in token_ids):
            self.entered.set()
            assert self.gate is not None and self.gate.wait(10), "test gate never opened"
        return np.arange(len(token_ids), dtype=np.float32)[:, None]


def test_a_large_request_runs_as_slices_in_order_holding_one_worker() -> None:
    async def scenario() -> None:
        gate = threading.Event()
        engine = StandInEngine("a")
        engine.encoder = GatedBigEncoder(gate)
        batcher = make_batcher(max_batch=2, workers=2)
        batcher.start()
        big = make_job(engine, [f"big{i}" for i in range(5)])
        batcher.submit(big)
        await until(engine.encoder.entered)
        small = make_job(engine, ["small"])
        batcher.submit(small)
        # The second worker answers the small request while the large one is held.
        (result,) = await answers(small)
        assert titles(result) == [["astra:small"] * 3]
        assert not big.future.done()
        gate.set()
        (result,) = await answers(big)
        batcher.stop()
        assert titles(result) == [[f"astra:big{i}"] * 3 for i in range(5)]
        big_calls = [call for call in engine.encoder.calls if call[0].startswith("big")]
        assert big_calls == [["big0", "big1"], ["big2", "big3"], ["big4"]]
        assert isinstance(result, Answer) and result.stages["queue"] >= 0

    asyncio.run(scenario())


def test_a_query_over_the_token_limit_in_a_later_slice_names_its_place_in_the_request() -> None:
    async def scenario() -> None:
        engine = StandInEngine("a")
        batcher = make_batcher(max_batch=2, max_query_tokens=3)
        batcher.start()
        bad = make_job(engine, ["a", "b", "c", "one two three four", "e", "f"])
        batcher.submit(bad)
        (result,) = await answers(bad)
        after = make_job(engine, ["g"])
        batcher.submit(after)
        await answers(after)
        batcher.stop()
        assert isinstance(result, QueryTooLong)
        assert (result.position, result.tokens, result.limit) == (3, 4, 3)
        assert engine.encoder.calls == [["a", "b"], ["g"]]  # the rest of it never runs
        assert batcher.queued == 0

    asyncio.run(scenario())


def test_a_started_request_is_not_dropped_for_its_deadline_between_slices() -> None:
    async def scenario() -> None:
        gate = threading.Event()
        engine = StandInEngine("a", gate)
        batcher = make_batcher(max_batch=1)
        batcher.start()
        job = make_job(engine, ["x", "y"], deadline=time.monotonic() + 0.05)
        batcher.submit(job)
        await until(engine.encoder.entered)
        await asyncio.sleep(0.1)  # past the deadline while its first slice runs
        gate.set()
        (result,) = await answers(job)
        batcher.stop()
        assert titles(result) == [["astra:x"] * 3, ["astra:y"] * 3]

    asyncio.run(scenario())


def test_max_wait_gathers_queries_that_arrive_a_little_later() -> None:
    async def scenario() -> None:
        engine = StandInEngine("a")
        batcher = make_batcher(max_wait_s=0.3)
        batcher.start()
        first = make_job(engine, ["early"])
        batcher.submit(first)
        await asyncio.sleep(0.05)
        second = make_job(engine, ["late"])
        batcher.submit(second)
        await answers(first, second)
        batcher.stop()
        assert engine.encoder.calls == [["early", "late"]]

    asyncio.run(scenario())


def test_a_full_queue_refuses_with_a_retry_hint() -> None:
    async def scenario() -> None:
        gate = threading.Event()
        engine = StandInEngine("a", gate)
        metrics = ServiceMetrics()
        batcher = make_batcher(max_queue=4, metrics=metrics)
        batcher.start()
        running = make_job(engine, ["running"])
        batcher.submit(running)
        await until(engine.encoder.entered)
        admitted = [make_job(engine, ["a", "b", "c"]), make_job(engine, ["d"])]
        for job in admitted:
            batcher.submit(job)
        with pytest.raises(Overloaded) as refused:
            batcher.submit(make_job(engine, ["e"]))
        assert (refused.value.queued, refused.value.limit) == (4, 4)
        assert refused.value.retry_after_s >= 1
        assert metrics.registry.get_sample_value("xc_queue_depth") == 4
        gate.set()
        results = await answers(running, *admitted)
        assert all(isinstance(result, Answer) for result in results)
        batcher.submit(make_job(engine, ["e"]))  # room again once the queue drained
        batcher.stop()

    asyncio.run(scenario())


def test_the_last_places_of_the_queue_are_kept_for_small_requests() -> None:
    async def scenario() -> None:
        gate = threading.Event()
        engine = StandInEngine("a", gate)
        batcher = make_batcher(max_queue=8, max_batch=2, reserved_for_small=2)
        batcher.start()
        running = make_job(engine, ["running"])
        batcher.submit(running)
        await until(engine.encoder.entered)
        large = make_job(engine, ["a", "b", "c", "d"])
        batcher.submit(large)  # 4 of the 6 places large requests may take
        with pytest.raises(Overloaded) as refused:
            batcher.submit(make_job(engine, ["e", "f", "g"]))
        assert (refused.value.queued, refused.value.limit) == (4, 6)
        small = [make_job(engine, ["h", "i"]), make_job(engine, ["j"]), make_job(engine, ["k"])]
        for job in small:  # small requests may fill the queue to the end
            batcher.submit(job)
        with pytest.raises(Overloaded):
            batcher.submit(make_job(engine, ["l"]))
        gate.set()
        results = await answers(running, large, *small)
        batcher.stop()
        assert all(isinstance(result, Answer) for result in results)

    asyncio.run(scenario())


def test_waiting_for_idle_returns_once_searches_are_done() -> None:
    async def scenario() -> None:
        gate = threading.Event()
        engine = StandInEngine("a", gate)
        batcher = make_batcher()
        batcher.start()
        assert batcher.wait_until_idle(0.01)
        job = make_job(engine, ["busy"])
        batcher.submit(job)
        await until(engine.encoder.entered)
        assert not batcher.wait_until_idle(0.05)  # a search is running: not idle
        waiter = asyncio.ensure_future(asyncio.to_thread(batcher.wait_until_idle, 10))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        gate.set()
        assert await waiter
        await answers(job)
        batcher.stop()

    asyncio.run(scenario())


def test_expired_and_abandoned_jobs_are_dropped_before_inference() -> None:
    async def scenario() -> None:
        gate = threading.Event()
        engine = StandInEngine("a", gate)
        metrics = ServiceMetrics()
        batcher = make_batcher(metrics=metrics)
        batcher.start()
        blocker = make_job(engine, ["blocker"])
        batcher.submit(blocker)
        await until(engine.encoder.entered)
        expired = make_job(engine, ["expired"], deadline=time.monotonic() + 0.01)
        abandoned = make_job(engine, ["abandoned"])
        kept = make_job(engine, ["kept"])
        for job in (expired, abandoned, kept):
            batcher.submit(job)
        abandoned.abandoned = True
        await asyncio.sleep(0.05)
        gate.set()
        results = await answers(blocker, expired, kept)
        batcher.stop()
        assert isinstance(results[1], Dropped) and results[1].reason == "deadline"
        assert "request_timeout" in str(results[1])
        assert titles(results[2]) == [["astra:kept"] * 3]
        assert engine.encoder.calls == [["blocker"], ["kept"]]
        assert not abandoned.future.done()  # nobody waits for it; it is simply not run
        sample = metrics.registry.get_sample_value
        assert sample("xc_dropped_total", {"reason": "deadline"}) == 1
        assert sample("xc_dropped_total", {"reason": "disconnected"}) == 1

    asyncio.run(scenario())


def test_jobs_admitted_with_different_engines_are_answered_by_their_own() -> None:
    async def scenario() -> None:
        gate = threading.Event()
        old, new = StandInEngine("old", gate), StandInEngine("new")
        batcher = make_batcher()
        batcher.start()
        blocker = make_job(old, ["blocker"])
        batcher.submit(blocker)
        await until(old.encoder.entered)
        jobs = [make_job(engine, [f"q{i}"]) for i, engine in enumerate([old, new, old, new])]
        for job in jobs:
            batcher.submit(job)
        gate.set()
        results = await answers(*jobs)
        batcher.stop()
        for job, result in zip(jobs, results, strict=True):
            assert isinstance(result, Answer)
            assert {hit.id for hits in result.hits for hit in hits} == {job.engine.name}
        assert old.encoder.calls == [["blocker"], ["q0", "q2"]]
        assert new.encoder.calls == [["q1", "q3"]]

    asyncio.run(scenario())


def test_one_call_serves_different_models_and_k() -> None:
    async def scenario() -> None:
        gate = threading.Event()
        engine = StandInEngine("a", gate)
        batcher = make_batcher()
        batcher.start()
        blocker = make_job(engine, ["blocker"])
        batcher.submit(blocker)
        await until(engine.encoder.entered)
        jobs = [
            make_job(engine, ["x", "y"], k=2, model="astra"),
            make_job(engine, ["z"], k=5, model="mach"),
            make_job(engine, ["w"], k=2, model="astra"),
        ]
        for job in jobs:
            batcher.submit(job)
        gate.set()
        results = await answers(*jobs)
        batcher.stop()
        assert engine.encoder.calls[1] == ["x", "y", "z", "w"]
        assert titles(results[0]) == [["astra:x"] * 2, ["astra:y"] * 2]
        assert titles(results[1]) == [["mach:z"] * 5]
        assert titles(results[2]) == [["astra:w"] * 2]

    asyncio.run(scenario())


def test_a_query_over_the_token_limit_fails_only_its_own_request() -> None:
    async def scenario() -> None:
        engine = StandInEngine("a")
        batcher = make_batcher(max_query_tokens=3)
        batcher.start()
        bad = make_job(engine, ["fine", "one two three four"])
        good = make_job(engine, ["one two three"])
        batcher.submit(bad)
        batcher.submit(good)
        results = await answers(bad, good)
        batcher.stop()
        assert isinstance(results[0], QueryTooLong)
        assert (results[0].position, results[0].tokens, results[0].limit) == (1, 4, 3)
        assert titles(results[1]) == [["astra:one two three"] * 3]
        assert ["fine", "one two three four"] not in engine.encoder.calls

    asyncio.run(scenario())


def test_a_failing_model_call_fails_its_batch_and_the_worker_goes_on() -> None:
    async def scenario() -> None:
        broken, healthy = StandInEngine("broken", fail=True), StandInEngine("ok")
        batcher = make_batcher()
        batcher.start()
        doomed = make_job(broken, ["q"])
        batcher.submit(doomed)
        (result,) = await answers(doomed)
        assert isinstance(result, RuntimeError)
        fine = make_job(healthy, ["q"])
        batcher.submit(fine)
        (result,) = await answers(fine)
        batcher.stop()
        assert titles(result) == [["astra:q"] * 3]

    asyncio.run(scenario())


def test_stop_fails_what_is_queued_and_refuses_new_work() -> None:
    async def scenario() -> None:
        gate = threading.Event()
        engine = StandInEngine("a", gate)
        batcher = make_batcher()
        batcher.start()
        running = make_job(engine, ["running"])
        batcher.submit(running)
        await until(engine.encoder.entered)
        queued = make_job(engine, ["queued"])
        batcher.submit(queued)
        stopper = asyncio.create_task(asyncio.to_thread(batcher.stop))
        await asyncio.sleep(0.05)
        gate.set()  # the running batch finishes; the queued one never runs
        await stopper
        results = await answers(running, queued)
        assert isinstance(results[0], Answer)
        assert isinstance(results[1], Dropped) and results[1].reason == "shutdown"
        with pytest.raises(Dropped):
            batcher.submit(make_job(engine, ["late"]))

    asyncio.run(scenario())


def test_a_full_queue_is_refused_before_the_body_is_read() -> None:
    from starlette.responses import JSONResponse

    from service.api.admission import ShedWhenFull

    async def scenario() -> None:
        gate = threading.Event()
        engine = StandInEngine("a", gate)
        batcher = make_batcher(max_queue=1)
        batcher.start()
        assert batcher.full() is None
        running = make_job(engine, ["running"])
        batcher.submit(running)
        await until(engine.encoder.entered)
        queued = make_job(engine, ["queued"])
        batcher.submit(queued)
        full = batcher.full()
        assert full is not None and (full.queued, full.limit) == (1, 1)

        reached: list[str] = []

        async def downstream(scope: Any, receive: Any, send: Any) -> None:
            reached.append(scope["path"])

        def refuse(overloaded: Overloaded) -> JSONResponse:
            return JSONResponse({"limit": overloaded.limit}, status_code=429)

        shed = ShedWhenFull(downstream, batcher=batcher, path="/search", refuse=refuse)
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        async def receive() -> dict[str, Any]:
            raise AssertionError("the body of a refused request must not be read")

        await shed({"type": "http", "method": "POST", "path": "/search"}, receive, send)
        assert sent[0]["status"] == 429 and reached == []
        await shed({"type": "http", "method": "GET", "path": "/metrics"}, receive, send)
        assert reached == ["/metrics"]  # other routes are never shed
        gate.set()
        await answers(running, queued)
        assert batcher.full() is None
        await shed({"type": "http", "method": "POST", "path": "/search"}, receive, send)
        assert reached == ["/metrics", "/search"]
        batcher.stop()

    asyncio.run(scenario())
