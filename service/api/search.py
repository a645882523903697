"""`POST /search`: admit the request into the micro-batcher, await its answer, shape the reply.

The route never runs a model on the event loop: it takes what it can from the result cache
(`service.search.cache`), admits the other queries into the batcher (`service.search.batcher`)
as one `SearchJob` and awaits the answer (then cached), watching for the
client to go away meanwhile (the job is then abandoned, never run). Refusals (queue full,
deadline passed, shutting down, a query over the token limit) are answered in the one error
shape, with `Retry-After` where retrying helps.

No `from __future__ import annotations`: the route's body model is built from the settings,
and FastAPI can only resolve it when annotations are evaluated.
"""

import asyncio
import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.responses import JSONResponse, Response
from pydantic_core import to_json

from service.api.auth import AUTH_RESPONSES, OPTIONAL_AUTH, require_search_key
from service.api.docs import BAD_JSON, NOT_READY, RETRY_AFTER_HEADER
from service.api.errors import ERROR_BODY, api_error
from service.api.routing import api_router
from service.api.schemas import BatchSearchResponse, SearchResponse, search_request_model
from service.api.state import RETRY_AFTER_S, EngineDep, state_of
from service.logs import SERVER_TIMING_HEADER
from service.metrics import ServiceMetrics
from service.ranking import Hit, result_records
from service.search.batcher import Answer, Dropped, Overloaded, SearchJob
from service.search.cache import CacheKey, ResultCache
from service.search.engine import SearchEngine
from service.search.pipeline import QueryTooLong
from service.settings import Settings

# 256 queries of 512 characters, every one \u-escaped (6 bytes), fit with room to spare.
SEARCH_MAX_BODY_BYTES = 1024 * 1024
# Answers with at least this many results are serialised off the event loop, this many queries
# at a time.
RENDER_ON_LOOP_RESULTS = 1000
RENDER_PIECE = 16
# Status for a request whose client disconnected before the answer (nginx's convention).
CLIENT_CLOSED_REQUEST = 499

SEARCH_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: BAD_JSON,
    **AUTH_RESPONSES,
    404: {**ERROR_BODY, "description": "The requested model is not in the loaded bundle."},
    413: {**ERROR_BODY, "description": f"The body is larger than {SEARCH_MAX_BODY_BYTES} bytes."},
    422: {
        **ERROR_BODY,
        "description": "A field is missing, of the wrong type, or out of range (including a "
        "query over the token limit, and queries × k over XC_MAX_RESULTS).",
    },
    429: {
        **ERROR_BODY,
        "headers": RETRY_AFTER_HEADER,
        "description": "Overloaded: the queue is full, or "
        "the query waited past the server's deadline. Retry after `Retry-After` seconds.",
    },
    500: {**ERROR_BODY, "description": "Server fault; `msg` quotes the request id."},
    503: NOT_READY,
}


async def _client_disconnected(request: Request) -> None:
    """Return when the client closes the connection (the body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def wait_for_answer(job: SearchJob, request: Request, timeout_s: float) -> Answer:
    """The job's answer; if the client goes away first, the job is abandoned (never run); if no
    answer comes within `timeout_s` (a stalled worker), 503."""
    watcher = asyncio.ensure_future(_client_disconnected(request))
    try:
        await asyncio.wait(
            {job.future, watcher}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
    except asyncio.CancelledError:  # the server gave up on this request (shutdown timeout)
        job.abandoned = True
        raise
    finally:
        watcher.cancel()
    if job.future.done():
        return job.future.result()
    job.abandoned = True
    if watcher.done() and not watcher.cancelled():
        raise api_error(CLIENT_CLOSED_REQUEST, [], "client closed the request", "client_closed")
    msg = f"not available: the model did not answer within {timeout_s:g} s; retry shortly"
    headers = {"Retry-After": str(RETRY_AFTER_S)}
    raise api_error(status.HTTP_503_SERVICE_UNAVAILABLE, [], msg, "stalled", headers)


def refusal(exc: Exception, batched: bool) -> Exception:
    """The HTTP answer for a job the batcher would not or could not run."""
    if isinstance(exc, Overloaded):
        msg = (
            f"queue: the server is at capacity ({exc.queued} queries waiting, limit "
            f"{exc.limit}); retry after {exc.retry_after_s} s"
        )
        headers = {"Retry-After": str(exc.retry_after_s)}
        return api_error(status.HTTP_429_TOO_MANY_REQUESTS, [], msg, "overloaded", headers)
    if isinstance(exc, QueryTooLong):
        loc: list[str | int] = ["body", "queries", exc.position] if batched else ["body", "query"]
        field = f"queries.{exc.position}" if batched else "query"
        msg = exc.message(field)
        return api_error(status.HTTP_422_UNPROCESSABLE_CONTENT, loc, msg, "query_too_many_tokens")
    if isinstance(exc, Dropped) and exc.reason == "deadline":
        headers = {"Retry-After": "1"}
        return api_error(status.HTTP_429_TOO_MANY_REQUESTS, [], str(exc), "deadline", headers)
    if isinstance(exc, Dropped):
        headers = {"Retry-After": str(RETRY_AFTER_S)}
        msg = f"not available: {exc}; retry shortly"
        return api_error(status.HTTP_503_SERVICE_UNAVAILABLE, [], msg, exc.reason, headers)
    return exc


def shed_response(metrics: ServiceMetrics) -> Callable[[Overloaded], JSONResponse]:
    """The answer `ShedWhenFull` gives a search arriving while the queue is full."""

    def shed(overloaded: Overloaded) -> JSONResponse:
        metrics.rejected.labels("queue_full").inc()
        exc = refusal(overloaded, batched=False)
        assert isinstance(exc, HTTPException)
        return JSONResponse(
            {"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
        )

    return shed


async def _run_model(
    request: Request,
    engine: SearchEngine,
    *,
    texts: list[str],
    k: int,
    model: str,
    explain: bool = False,
) -> Answer:
    """Admit `texts` into the batcher as one job and await its answer."""
    state = state_of(request)
    loop = asyncio.get_running_loop()
    job = SearchJob(
        engine=engine,
        queries=texts,
        k=k,
        model=model,
        explain=explain,
        deadline=time.monotonic() + state.settings.request_timeout_ms / 1000,
        future=loop.create_future(),
        loop=loop,
    )
    state.batcher.submit(job)
    return await wait_for_answer(job, request, state.settings.answer_timeout_s)


async def _hits(
    request: Request,
    engine: SearchEngine,
    *,
    texts: list[str],
    k: int,
    model: str,
    batched: bool,
    explain: bool,
) -> tuple[list[list[Hit]], dict[str, float]]:
    """Each query's hits, from the result cache where it has them and from the model for the
    rest (which are then cached); and the model call's stage times (none if all were cached).
    Explained answers are neither read from the cache nor written to it."""
    state = state_of(request)
    cache = None if explain else state.cache
    name, version = engine.manifest.name, engine.version
    keys: list[CacheKey] = []
    found: list[list[Hit] | None] = [None] * len(texts)
    if cache is not None:
        keys = [ResultCache.key(text, k, model, name, version) for text in texts]
        found = [cache.get(key) for key in keys]
    missing = [position for position, hits in enumerate(found) if hits is None]
    stages: dict[str, float] = {}
    if missing:
        try:
            texts_missing = [texts[p] for p in missing]
            answer = await _run_model(
                request, engine, texts=texts_missing, k=k, model=model, explain=explain
            )
        except (Overloaded, Dropped, QueryTooLong) as exc:
            if isinstance(exc, Overloaded):
                state.metrics.rejected.labels("queue_full").inc()
            if isinstance(exc, QueryTooLong):
                exc.position = missing[exc.position]  # its place in the request, not the job
            raise refusal(exc, batched) from exc
        for position, hits in zip(missing, answer.hits, strict=True):
            found[position] = hits
            if cache is not None:
                cache.put(keys[position], hits)
        stages = answer.stages
    return [hits or [] for hits in found], stages


async def answer_search(
    request: Request,
    engine: SearchEngine,
    *,
    texts: list[str],
    batched: bool,
    k: int,
    model: str | None,
    explain: bool = False,
) -> Response:
    """Admit the queries, await their hits and shape the reply (see the module docstring)."""
    start = time.perf_counter()
    state = state_of(request)
    limit = state.settings.max_results
    if len(texts) * k > limit:
        msg = (
            f"k: {len(texts)} queries × k {k} = {len(texts) * k} results, limit {limit} "
            "(XC_MAX_RESULTS); ask for fewer queries or a smaller k"
        )
        code = status.HTTP_422_UNPROCESSABLE_CONTENT
        raise api_error(code, ["body", "k"], msg, "too_many_results")
    try:
        chosen = engine.resolve_model(model)
    except ValueError as exc:
        raise api_error(
            status.HTTP_404_NOT_FOUND, ["body", "model"], str(exc), "model_not_found"
        ) from exc
    hits, stages = await _hits(
        request, engine, texts=texts, k=k, model=chosen, batched=batched, explain=explain
    )
    took = time.perf_counter() - start
    for stage, seconds in (*stages.items(), ("total", took)):
        state.metrics.stage_seconds.labels(stage, chosen, engine.manifest.version).observe(seconds)
    answered_by = {
        "model": chosen,
        "version": engine.version,  # with the catalog snapshot the answer was ranked with
        "took_ms": round(took * 1000, 3),
        "notice": engine.catalog.notice(chosen, engine.models),
    }
    if answered_by["notice"] is None:
        del answered_by["notice"]  # `notice` only when there is one
    queries = texts if batched else None
    if len(texts) * k < RENDER_ON_LOOP_RESULTS:
        response = render(queries, hits, answered_by)
    else:
        response = await asyncio.to_thread(render, queries, hits, answered_by)
    response.headers[SERVER_TIMING_HEADER] = server_timing({**stages, "search": took})
    return response


def server_timing(stages: dict[str, float]) -> str:
    """A `Server-Timing` header value (W3C): each stage's duration in milliseconds, so a
    browser's developer tools, a proxy or a benchmark can see where a request's time went."""
    return ", ".join(f"{stage};dur={seconds * 1000:.3f}" for stage, seconds in stages.items())


def render(
    queries: list[str] | None, hits: list[list[Hit]], answered_by: dict[str, Any]
) -> Response:
    """The answer as JSON bytes: a `SearchResponse` (`queries` None: one query) or a
    `BatchSearchResponse`.

    Written directly by pydantic-core's serialiser (17 ms for 25,600 results, against 60 ms
    for building and serialising the response models), `RENDER_PIECE` queries at a time with
    the interpreter lock let go in between, so a large answer never holds it for long.
    Non-finite scores (MACH's zero-probability labels) become null, as the models' serialiser
    writes them."""
    tail = to_json(answered_by)  # {"model": ..., ...}: never empty
    if queries is None:
        head = b'{"results":' + to_json(result_records(hits[0]), inf_nan_mode="null")
        return Response(head + b"," + tail[1:], media_type="application/json")
    pieces = []
    for start in range(0, len(queries), RENDER_PIECE):
        piece = [
            {"query": query, "results": result_records(found)}
            for query, found in zip(
                queries[start : start + RENDER_PIECE],
                hits[start : start + RENDER_PIECE],
                strict=True,
            )
        ]
        pieces.append(to_json(piece, inf_nan_mode="null")[1:-1])
        time.sleep(0)  # lets the event loop and the search workers take the interpreter
    body = b'{"responses":[' + b",".join(pieces) + b"]," + tail[1:]
    return Response(body, media_type="application/json")


def make_search_router(settings: Settings) -> APIRouter:
    """The `/search` route, its body model bound to the settings' limits."""
    SearchRequest = search_request_model(
        settings.max_query_chars, settings.max_k, settings.default_k, settings.max_batch_queries
    )
    router = api_router()

    @router.post(
        "/search",
        tags=["search"],
        summary="Top-k products for a query or a list of queries",
        operation_id="search",
        response_description="The top-k products of each query, best first.",
        response_model=SearchResponse | BatchSearchResponse,  # the answer `render` writes
        responses=SEARCH_RESPONSES,
        dependencies=[Depends(require_search_key)],
        openapi_extra=OPTIONAL_AUTH,
    )
    async def search(body: SearchRequest, request: Request, engine: EngineDep) -> Response:
        """Answer with the k best products of the requested model for each query."""
        batched = body.queries is not None
        return await answer_search(
            request,
            engine,
            texts=body.texts,
            batched=batched,
            k=body.k,
            model=body.model,
            explain=body.explain,
        )

    return router
