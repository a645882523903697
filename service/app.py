"""The FastAPI application: search, model description, hot reload, health and metrics.

`create_app` builds one app per `Settings`. Its lifespan starts the micro-batcher and loads the
bundle in a worker thread, returning at once, so the server listens (and `/healthz` answers)
while a large bundle loads; `/readyz` and `/search` answer 503 until the engine is warmed. A
bundle that cannot be loaded at start-up is fatal: the error is logged and `on_fatal` is called
(`python -m service` uses it to stop the server and exit non-zero).

`/search` never runs a model on the event loop: it admits the request into the batcher
(`service.batcher`) and awaits the answer, watching for the client to go away meanwhile.

Every error answer has the `ErrorResponse` shape (see `service.schemas`).

No `from __future__ import annotations` here: the `/search` route is annotated with a request
model built from the settings, which FastAPI can only resolve when annotations are evaluated.
"""

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, HTTPException, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.admission import ShedWhenFull
from service.auth import AUTH_RESPONSES, OPTIONAL_AUTH, require_api_key
from service.batch.routes import make_batch_router
from service.batch.store import JobStore
from service.batch.worker import BatchWorker
from service.batcher import Answer, Dropped, Job, MicroBatcher, Overloaded, QueryTooLong
from service.bundle import BundleError
from service.catalog import Catalogs
from service.catalog_routes import make_catalog_router, products_max_body_bytes
from service.device import DeviceError
from service.engine import Hit, SearchEngine
from service.errors import (
    ERROR_BODY,
    BodyLimitMiddleware,
    api_error,
    http_error_handler,
    internal_error_body,
    validation_error_handler,
)
from service.logs import RequestContextMiddleware
from service.metrics import CONTENT_TYPE, ServiceMetrics
from service.registry import EngineRegistry, ReloadInProgress
from service.schemas import (
    BatchSearchResponse,
    HealthResponse,
    ModelsResponse,
    QueryResults,
    ReadyResponse,
    ReloadRequest,
    ReloadResponse,
    SearchResponse,
    SearchResult,
    search_request_model,
)
from service.settings import Settings, get_settings

log = logging.getLogger(__name__)

# 256 queries of 512 characters, every one \u-escaped (6 bytes), fit with room to spare.
SEARCH_MAX_BODY_BYTES = 1024 * 1024
RELOAD_MAX_BODY_BYTES = 16 * 1024
SEARCH_PAGE = Path(__file__).resolve().parent / "static" / "index.html"
# Seconds a client is told to wait before retrying while the bundle loads.
RETRY_AFTER_S = 5
# Status for a request whose client disconnected before the answer (nginx's convention).
CLIENT_CLOSED_REQUEST = 499

DESCRIPTION = """\
Top-k product search over a catalog of up to tens of millions of products, answered by
extreme-classification models loaded from a model bundle: **ASTRA** (a text encoder plus
approximate maximum-inner-product search over one learned classifier vector per product) and
**MACH** (hashed bucket classifiers decoded with a count-min sketch).

* `POST /search` returns the top-k products for a `query`, or for each of up to 256 `queries`.
  Concurrent requests are micro-batched into shared model calls.
* `GET /v1/models` describes the loaded bundle: version, models, label count, dimensions,
  index parameters.
* `PUT /products` adds products or changes their titles (embedded with the bundle's encoder,
  searchable as soon as it answers) and `DELETE /products/{id}` removes one from all results;
  changes persist per bundle name and show as `+c<n>` in the answers' version.
* `POST /admin/reload` (or SIGHUP) loads a bundle version, warms it and swaps it in atomically;
  a bundle that fails to load is refused and the old one keeps serving.
* `GET /healthz` is liveness: 200 as soon as the process serves HTTP.
* `GET /readyz` is readiness: 503 while the bundle loads, 200 (with the bundle's name and
  version) once it is loaded and warmed.
* `GET /metrics` is Prometheus text: per-stage latency histograms, batch sizes, queue depth,
  answers by status, rejected and dropped requests, the bundle version.

**Overload.** Admitted queries wait in a bounded queue; when it is full the answer is 429 with
`Retry-After`. A query still queued when the server's deadline passes is dropped (429 too),
and so is one whose client disconnected.

**Auth.** When the server has an API key, `/search`, `/v1/models`, `/products`, `/batches`
and `/admin/*` require
`Authorization: Bearer <key>` (401 otherwise); health, readiness and metrics stay open.

**Errors.** Every non-2xx answer has one shape, `ErrorResponse`:
`{"detail": [{"loc": ["body", "k"], "msg": "k: must be <= 1000", "type": "less_than_equal"}]}`.
`msg` starts with the field it is about and states the limit; `type` is a stable code.
Bad input is a 4xx (400 unparseable body, 401 missing key, 404 model not in the bundle, 413
body too large, 422 invalid field, 429 overloaded); 500 means a server fault, 503 not ready yet
(see `Retry-After`).

**Request ids.** Send `X-Request-Id` (1-128 printable ASCII characters) to tag a request, or
let the server generate one; it is echoed in the `X-Request-Id` response header, appears on
every log line about the request, and is quoted in 500 answers.
"""

_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}}
SEARCH_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {**ERROR_BODY, "description": "The body is not valid JSON (or not UTF-8)."},
    **AUTH_RESPONSES,
    404: {**ERROR_BODY, "description": "The requested model is not in the loaded bundle."},
    413: {**ERROR_BODY, "description": f"The body is larger than {SEARCH_MAX_BODY_BYTES} bytes."},
    422: {
        **ERROR_BODY,
        "description": "A field is missing, of the wrong type, or out of range "
        "(including a query over the token limit).",
    },
    429: {
        **ERROR_BODY,
        "headers": _RETRY_AFTER,
        "description": "Overloaded: the queue is full, or "
        "the query waited past the server's deadline. Retry after `Retry-After` seconds.",
    },
    500: {**ERROR_BODY, "description": "Server fault; `msg` quotes the request id."},
    503: {
        **ERROR_BODY,
        "headers": _RETRY_AFTER,
        "description": "The bundle is not loaded yet (or "
        "failed to load), or the server is shutting down.",
    },
}
RELOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: SEARCH_RESPONSES[400],
    **AUTH_RESPONSES,
    409: {**ERROR_BODY, "description": "Another reload is still running."},
    413: {**ERROR_BODY, "description": f"The body is larger than {RELOAD_MAX_BODY_BYTES} bytes."},
    422: {
        **ERROR_BODY,
        "description": "The body is invalid, or the bundle was refused (the message "
        "says why); the old bundle keeps serving.",
    },
}


def api_version() -> str:
    """The distribution's version, used as the OpenAPI document's version."""
    try:
        return version("xc-search")
    except PackageNotFoundError:
        return "0.0.0"


# --- lifespan: load the engine in the background, run the batcher ------------------------


async def load_first_engine(
    registry: EngineRegistry, on_fatal: Callable[[], None] | None = None
) -> None:
    """Load and warm the configured bundle in worker threads, then serve it.

    Runs as a background task so the event loop keeps serving `/healthz` meanwhile. Any
    failure is fatal for the service: it is logged, kept for `/readyz`, and `on_fatal` runs.
    """
    start = time.perf_counter()
    log.info("loading bundle", extra={"bundle": str(registry.settings.bundle)})
    try:
        await registry.load_initial()
    except Exception as exc:
        if isinstance(exc, BundleError):
            log.error(
                "bundle failed to load: %s", exc, extra={"bundle": str(registry.settings.bundle)}
            )
        elif isinstance(exc, DeviceError):
            log.error("device not available: %s", exc, extra={"device": registry.settings.device})
        else:
            log.exception("engine failed to start: %s", exc)
        if on_fatal is not None:
            on_fatal()
        return
    engine = registry.engine
    assert engine is not None
    log.info(
        "ready",
        extra={
            "bundle": engine.manifest.name,
            "version": engine.manifest.version,
            "models": engine.kinds,
            "load_s": round(time.perf_counter() - start, 3),
        },
    )


def _reload_on_sighup(registry: EngineRegistry) -> Callable[[], None]:
    """The SIGHUP handler: reload the current bundle path in the background."""
    tasks: set[asyncio.Task[Any]] = set()

    async def reload() -> None:
        with contextlib.suppress(Exception):  # reload() logs the refusal itself
            await registry.reload()

    def handle() -> None:
        log.info("SIGHUP: reloading the bundle")
        task = asyncio.get_running_loop().create_task(reload())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    return handle


def make_lifespan(
    registry: EngineRegistry, batcher: MicroBatcher, on_fatal: Callable[[], None] | None
) -> Callable[[FastAPI], Any]:
    """The app's lifespan: start the batcher and the first load; stop both at shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        settings = registry.settings
        store = await asyncio.to_thread(JobStore, settings.data_dir)
        catalogs = registry.catalogs
        if catalogs is not None:
            await asyncio.to_thread(catalogs.open)
        jobs = BatchWorker(
            store, lambda: registry.engine, settings.batch_chunk, settings.max_query_tokens
        )
        jobs.start()
        app.state.job_store = store
        loader = asyncio.create_task(load_first_engine(registry, on_fatal))
        loop = asyncio.get_running_loop()
        # Only possible in the main thread of a POSIX process (not under a test client).
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            loop.add_signal_handler(signal.SIGHUP, _reload_on_sighup(registry))
        try:
            yield
        finally:
            with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
                loop.remove_signal_handler(signal.SIGHUP)
            # A load still running in its thread finishes there; nothing waits for its result.
            loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loader
            # In-flight requests are done (the server drained them); fail what never ran.
            await asyncio.to_thread(batcher.stop)
            # A batch job stops after its chunk and resumes at the next start.
            await asyncio.to_thread(jobs.stop)
            store.close()
            if catalogs is not None:
                catalogs.close()

    return lifespan


# --- dependencies -------------------------------------------------------------------------


async def get_engine(request: Request) -> SearchEngine:
    """The engine serving now, or a 503 telling the client to retry (or that loading failed).

    `async` although it never awaits: FastAPI runs plain `def` dependencies in a thread pool,
    a hop that costs more than the whole check. (The same holds for `require_api_key`.)
    """
    registry: EngineRegistry = request.app.state.registry
    engine = registry.engine
    if engine is not None:
        return engine
    if registry.load_error is not None:
        msg = f"not ready: the model bundle failed to load: {registry.load_error}"
        code = "bundle_error"
    else:
        msg, code = "not ready: the model bundle is still loading; retry shortly", "not_ready"
    headers = {"Retry-After": str(RETRY_AFTER_S)}
    raise api_error(status.HTTP_503_SERVICE_UNAVAILABLE, [], msg, code, headers)


EngineDep = Annotated[SearchEngine, Depends(get_engine)]
Authorized = [Depends(require_api_key)]


# --- search: admission, waiting, answers --------------------------------------------------


async def _client_disconnected(request: Request) -> None:
    """Return when the client closes the connection (the body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def wait_for_answer(job: Job, request: Request) -> Answer:
    """The job's answer; if the client goes away first, the job is abandoned (never run)."""
    watcher = asyncio.ensure_future(_client_disconnected(request))
    try:
        await asyncio.wait({job.future, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the server gave up on this request (shutdown timeout)
        job.abandoned = True
        raise
    finally:
        watcher.cancel()
    if job.future.done():
        return job.future.result()
    job.abandoned = True
    raise api_error(CLIENT_CLOSED_REQUEST, [], "client closed the request", "client_closed")


def _results(hits: list[Hit]) -> list[SearchResult]:
    return [SearchResult(id=hit.id, title=hit.title, score=hit.score) for hit in hits]


def _refusal(exc: Exception, batched: bool) -> Exception:
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
        msg = f"{field}: must be at most {exc.limit} tokens (has {exc.tokens})"
        return api_error(status.HTTP_422_UNPROCESSABLE_CONTENT, loc, msg, "query_too_many_tokens")
    if isinstance(exc, Dropped) and exc.reason == "deadline":
        headers = {"Retry-After": "1"}
        return api_error(status.HTTP_429_TOO_MANY_REQUESTS, [], str(exc), "deadline", headers)
    if isinstance(exc, Dropped):
        headers = {"Retry-After": str(RETRY_AFTER_S)}
        msg = f"not available: {exc}; retry shortly"
        return api_error(status.HTTP_503_SERVICE_UNAVAILABLE, [], msg, exc.reason, headers)
    return exc


# --- the app ------------------------------------------------------------------------------


def create_app(
    settings: Settings | None = None, *, on_fatal: Callable[[], None] | None = None
) -> FastAPI:
    """Build the app for `settings` (default: the `XC_*` environment).

    `on_fatal` is called if the bundle cannot be loaded; without it the app stays up and
    answers 503 with the load error (which is what tests inspect).
    """
    settings = settings or get_settings()
    SearchRequest = search_request_model(
        settings.max_query_chars, settings.max_k, settings.default_k, settings.max_batch_queries
    )
    metrics = ServiceMetrics()
    catalogs = Catalogs(settings.data_dir)
    registry = EngineRegistry(settings, metrics, catalogs)
    batcher = MicroBatcher(
        max_batch=settings.max_batch,
        max_wait_s=settings.max_wait_ms / 1000,
        max_queue=settings.max_queue,
        max_query_tokens=settings.max_query_tokens,
        workers=settings.batch_workers,
        metrics=metrics,
    )

    app = FastAPI(
        title="XC product search",
        version=api_version(),
        description=DESCRIPTION,
        lifespan=make_lifespan(registry, batcher, on_fatal),
        openapi_tags=[
            {"name": "search", "description": "Top-k products for text queries."},
            {"name": "models", "description": "The loaded bundle, and swapping in a new one."},
            {"name": "batches", "description": "Durable offline scoring of JSONL request files."},
            {"name": "catalog", "description": "Products added, retitled or deleted live."},
            {"name": "operations", "description": "Liveness, readiness and metrics."},
        ],
    )
    app.state.settings = settings
    app.state.registry = registry
    app.state.catalogs = catalogs
    app.state.batcher = batcher
    app.state.metrics = metrics
    known_paths = {"/search", "/v1/models", "/admin/reload", "/healthz", "/readyz", "/metrics"}

    def count_request(method: str, path: str, status_code: int) -> None:
        prefixes = ("/batches", "/products")
        route = next((p for p in prefixes if path.startswith(p)), "other")
        route = path if path in known_paths else route
        metrics.requests.labels(route, str(status_code)).inc()

    def shed(overloaded: Overloaded) -> JSONResponse:
        metrics.rejected.labels("queue_full").inc()
        refusal = _refusal(overloaded, batched=False)
        assert isinstance(refusal, HTTPException)
        return JSONResponse(
            {"detail": refusal.detail}, status_code=refusal.status_code, headers=refusal.headers
        )

    # Added inner first: the request-context middleware wraps everything, 413s included.
    app.add_middleware(ShedWhenFull, batcher=batcher, path="/search", refuse=shed)
    app.add_middleware(
        BodyLimitMiddleware,
        limits={
            "/search": SEARCH_MAX_BODY_BYTES,
            "/admin/reload": RELOAD_MAX_BODY_BYTES,
            "/batches": settings.max_batch_file_bytes,
            "/products": products_max_body_bytes(settings),
        },
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-Id"],
            expose_headers=["X-Request-Id", "Retry-After"],
        )
    app.add_middleware(
        RequestContextMiddleware, internal_error=internal_error_body, on_response=count_request
    )
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)

    @app.post(
        "/search",
        tags=["search"],
        summary="Top-k products for a query or a list of queries",
        operation_id="search",
        response_description="The top-k products of each query, best first.",
        response_model_exclude_none=True,  # `notice` only when there is one
        responses=SEARCH_RESPONSES,
        dependencies=Authorized,
        openapi_extra=OPTIONAL_AUTH,
    )
    async def search(
        body: SearchRequest, request: Request, engine: EngineDep
    ) -> SearchResponse | BatchSearchResponse:
        """Answer with the k best products of the requested model for each query."""
        start = time.perf_counter()
        try:
            model = engine.resolve_model(body.model)
        except ValueError as exc:
            raise api_error(
                status.HTTP_404_NOT_FOUND, ["body", "model"], str(exc), "model_not_found"
            ) from exc
        queries = body.texts
        loop = asyncio.get_running_loop()
        job = Job(
            engine=engine,
            queries=queries,
            k=body.k,
            model=model,
            deadline=time.monotonic() + settings.request_timeout_ms / 1000,
            future=loop.create_future(),
            loop=loop,
        )
        batched = body.queries is not None
        try:
            batcher.submit(job)
            answer = await wait_for_answer(job, request)
        except (Overloaded, Dropped, QueryTooLong) as exc:
            if isinstance(exc, Overloaded):
                metrics.rejected.labels("queue_full").inc()
            raise _refusal(exc, batched) from exc
        took = time.perf_counter() - start
        for stage, seconds in (*answer.stages.items(), ("total", took)):
            metrics.stage_seconds.labels(stage, model, engine.manifest.version).observe(seconds)
        took_ms = round(took * 1000, 3)
        version = engine.version  # with the catalog snapshot the answer was ranked with
        notice = engine.catalog.notice(model, engine.kinds) if engine.catalog else None
        if not batched:
            return SearchResponse(
                results=_results(answer.hits[0]),
                model=model,
                version=version,
                took_ms=took_ms,
                notice=notice,
            )
        return BatchSearchResponse(
            responses=[
                QueryResults(query=query, results=_results(hits))
                for query, hits in zip(queries, answer.hits, strict=True)
            ],
            model=model,
            version=version,
            took_ms=took_ms,
            notice=notice,
        )

    @app.get(
        "/v1/models",
        tags=["models"],
        summary="The loaded bundle",
        operation_id="models",
        response_description="The bundle being served and its parameters.",
        responses={**AUTH_RESPONSES, 503: SEARCH_RESPONSES[503]},
        dependencies=[*Authorized, Depends(get_engine)],
        openapi_extra=OPTIONAL_AUTH,
    )
    async def models() -> ModelsResponse:
        """Name, version, models, label count, encoder and index parameters of the bundle."""
        assert registry.served is not None  # get_engine answered 503 otherwise
        return ModelsResponse(data=[registry.served.info()])

    @app.post(
        "/admin/reload",
        tags=["models"],
        summary="Load a bundle version and swap it in",
        operation_id="reload",
        response_description="The bundle served before and the one served now.",
        responses=RELOAD_RESPONSES,
        dependencies=Authorized,
        openapi_extra=OPTIONAL_AUTH,
    )
    async def reload(body: Annotated[ReloadRequest | None, Body()] = None) -> ReloadResponse:
        """Load, warm and atomically swap in a bundle; refused bundles leave the old one."""
        path = Path(body.bundle) if body is not None and body.bundle is not None else None
        try:
            previous, current, took = await registry.reload(path)
        except ReloadInProgress as exc:
            raise api_error(status.HTTP_409_CONFLICT, [], str(exc), "reload_in_progress") from exc
        except Exception as exc:
            msg = f"bundle: refused, the old bundle keeps serving: {exc}"
            raise api_error(
                status.HTTP_422_UNPROCESSABLE_CONTENT, ["body", "bundle"], msg, "bundle_refused"
            ) from exc
        return ReloadResponse(
            previous=previous.info() if previous is not None else None,
            current=current.info(),
            load_s=round(took, 3),
        )

    app.include_router(make_batch_router(settings, settings.max_batch_file_bytes))
    app.include_router(make_catalog_router(settings, get_engine))

    @app.get("/", include_in_schema=False)
    async def search_page() -> FileResponse:
        """A search box over the API (static HTML, CSS and JS; no build step)."""
        return FileResponse(SEARCH_PAGE, media_type="text/html")

    @app.get(
        "/healthz",
        tags=["operations"],
        summary="Liveness",
        operation_id="healthz",
        response_description="The process is serving HTTP.",
    )
    async def healthz() -> HealthResponse:
        """200 whenever the process answers HTTP, loaded or not."""
        return HealthResponse()

    @app.get(
        "/readyz",
        tags=["operations"],
        summary="Readiness",
        operation_id="readyz",
        response_description="The bundle is loaded and warmed.",
        responses={503: {**ERROR_BODY, "description": "Still loading, or the bundle failed."}},
    )
    async def readyz(engine: EngineDep) -> ReadyResponse:
        """200 with the bundle's identity once it is loaded and warmed; 503 before."""
        manifest = engine.manifest
        return ReadyResponse(
            bundle=manifest.name,
            version=manifest.version,
            models=list(engine.kinds),
            default_model=engine.default_model,
            labels=manifest.labels.count,
        )

    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics",
        operation_id="metrics",
        response_class=Response,
        responses={
            200: {
                "content": {CONTENT_TYPE: {"schema": {"type": "string"}}},
                "description": "Metrics in the Prometheus text format.",
            }
        },
    )
    async def prometheus_metrics() -> Response:
        """Stage latencies, batch sizes, queue depth, answers by status, the bundle version."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return app
