"""The FastAPI application, wired: shared parts, middleware, error handlers, routes, lifespan.

`create_app` builds one app per `Settings`: the parts every route shares (`AppState`), the
middleware (request ids and access lines, body limits, early load shedding, CORS), the error
handlers that keep one error shape, and the routers of each feature (`service.api.*`,
`service.catalog.routes`, `service.batch.routes`). No route is defined here.

Its lifespan starts the micro-batcher and the batch-job worker and loads the bundle in a worker
thread, returning at once, so the server listens (and `/healthz` answers) while a large bundle
loads; `/readyz` and `/search` answer 503 until the engine is warmed. A bundle that cannot be
loaded at start-up is fatal: the error is logged and `on_fatal` is called (`python -m service`
uses it to stop the server and exit non-zero). SIGHUP reloads the bundle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any, TypeVar

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api import admin, ops
from service.api.admission import ShedWhenFull
from service.api.auth import admin_exposure
from service.api.docs import DESCRIPTION, TAGS, TITLE, api_version
from service.api.errors import (
    BodyLimitMiddleware,
    http_error_handler,
    internal_error_body,
    store_unavailable_handler,
    validation_error_handler,
)
from service.api.search import SEARCH_MAX_BODY_BYTES, make_search_router, shed_response
from service.api.state import AppState
from service.batch.intake import InputChecker
from service.batch.routes import make_batch_router
from service.batch.store import JobStore
from service.batch.worker import BatchWorker
from service.bundle import BundleError
from service.catalog.changes import Catalogs
from service.catalog.follower import CatalogFollower
from service.catalog.routes import make_catalog_router, products_max_body_bytes
from service.device import DeviceError
from service.logs import RequestContextMiddleware
from service.metrics import ServiceMetrics
from service.registry import EngineRegistry
from service.search.batcher import MicroBatcher
from service.search.cache import ResultCache
from service.settings import Settings, get_settings
from service.storage import StoreUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")
# How long a starting replica waits for its database (PostgreSQL may start after it). Its
# supervisor restarts it after that; shorter than compose's stop grace period (45 s), since a
# SIGTERM is only acted on once startup ends.
DATABASE_WAIT_S = 30.0

# Routes counted by their own path in `xc_requests`; the rest by prefix, or as "other".
COUNTED_PATHS = frozenset(
    {"/search", "/v1/models", "/admin/reload", "/healthz", "/readyz", "/metrics"}
)
COUNTED_PREFIXES = ("/batches", "/products")


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
            "models": engine.models,
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


def retention_of(settings: Settings) -> timedelta | None:
    """How long finished batch jobs are kept (None: until deleted)."""
    days = settings.batch_retention_days
    return timedelta(days=days) if days > 0 else None


def wait_for_database(open_store: Callable[[], T], wait_s: float = DATABASE_WAIT_S) -> T:
    """Open a store, trying again while its database cannot be reached (a fleet's replicas
    may start before PostgreSQL is ready), for up to `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return open_store()
        except StoreUnavailable as exc:
            if time.monotonic() >= deadline:
                raise
            log.warning("waiting for the database: %s", exc)
            time.sleep(1.0)


def make_lifespan(state: AppState, on_fatal: Callable[[], None] | None) -> Callable[[FastAPI], Any]:
    """The app's lifespan: start the batcher, the batch worker and the first load; stop them."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.batcher.start()
        settings, registry = state.settings, state.registry
        exposure = admin_exposure(settings)
        log.log(logging.WARNING if "disabled" in exposure else logging.INFO, exposure)
        store = await asyncio.to_thread(
            wait_for_database, lambda: JobStore(settings.data_dir, settings.database_dsn)
        )
        await asyncio.to_thread(wait_for_database, state.catalogs.open)
        jobs = BatchWorker(
            store=store,
            engine=lambda: registry.engine,
            chunk_size=settings.batch_chunk,
            max_query_tokens=settings.max_query_tokens,
            lease_s=settings.batch_lease_s,
            retention=retention_of(settings),
            searches_idle=state.batcher.wait_until_idle,
        )
        jobs.start()
        state.job_store = store
        loop = asyncio.get_running_loop()
        follower = CatalogFollower(
            state.catalogs,
            on_change=lambda: loop.call_soon_threadsafe(registry.refresh_catalog),
            poll_s=settings.catalog_poll_s,
        )
        follower.start()
        loader = asyncio.create_task(load_first_engine(registry, on_fatal))
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
            await asyncio.to_thread(state.batcher.stop)
            # A batch job stops after its chunk and resumes at the next start.
            await asyncio.to_thread(jobs.stop)
            await asyncio.to_thread(follower.stop)
            state.input_checker.close()
            store.close()
            state.catalogs.close()

    return lifespan


def _count_requests(metrics: ServiceMetrics) -> Callable[[str, str, int], None]:
    """`RequestContextMiddleware`'s hook: count each answer by route and status."""

    def count(method: str, path: str, status_code: int) -> None:
        route = next((p for p in COUNTED_PREFIXES if path.startswith(p)), "other")
        route = path if path in COUNTED_PATHS else route
        metrics.requests.labels(route, str(status_code)).inc()

    return count


def _add_middleware(app: FastAPI, state: AppState) -> None:
    """Added inner first: the request-context middleware wraps everything, 413s included."""
    settings = state.settings
    app.add_middleware(
        ShedWhenFull, batcher=state.batcher, path="/search", refuse=shed_response(state.metrics)
    )
    app.add_middleware(
        BodyLimitMiddleware,
        limits={
            "/search": SEARCH_MAX_BODY_BYTES,
            "/admin/reload": admin.RELOAD_MAX_BODY_BYTES,
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
        RequestContextMiddleware,
        internal_error=internal_error_body,
        on_response=_count_requests(state.metrics),
    )


def make_cache(settings: Settings, metrics: ServiceMetrics) -> ResultCache | None:
    """The result cache the settings ask for (None when XC_CACHE_ENTRIES or _BYTES is 0)."""
    if settings.cache_entries == 0 or settings.cache_bytes == 0:
        return None
    return ResultCache(
        settings.cache_entries,
        settings.cache_bytes,
        lookups=metrics.cache_lookups,
        size=metrics.cache_size,
    )


def create_app(
    settings: Settings | None = None, *, on_fatal: Callable[[], None] | None = None
) -> FastAPI:
    """Build the app for `settings` (default: the `XC_*` environment).

    `on_fatal` is called if the bundle cannot be loaded; without it the app stays up and
    answers 503 with the load error (which is what tests inspect).
    """
    settings = settings or get_settings()
    metrics = ServiceMetrics()
    catalogs = Catalogs(settings.data_dir, settings.max_catalog_changes, settings.database_dsn)
    cache = make_cache(settings, metrics)
    state = AppState(
        settings=settings,
        metrics=metrics,
        registry=EngineRegistry(settings, metrics, catalogs, cache),
        catalogs=catalogs,
        cache=cache,
        upload_slots=asyncio.Semaphore(settings.max_concurrent_uploads),
        input_checker=InputChecker(settings.max_concurrent_uploads),
        batcher=MicroBatcher(
            max_batch=settings.max_batch,
            max_wait_s=settings.max_wait_ms / 1000,
            max_queue=settings.max_queue,
            reserved_for_small=min(
                settings.max_batch, settings.max_queue - settings.max_batch_queries
            ),
            max_query_tokens=settings.max_query_tokens,
            workers=settings.batch_workers,
            metrics=metrics,
        ),
    )
    app = FastAPI(
        title=TITLE,
        version=api_version(),
        description=DESCRIPTION,
        lifespan=make_lifespan(state, on_fatal),
        openapi_tags=TAGS,
    )
    app.state.shared = state
    _add_middleware(app, state)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(StoreUnavailable, store_unavailable_handler)
    app.include_router(make_search_router(settings))
    app.include_router(admin.router)
    app.include_router(make_batch_router(settings))
    app.include_router(make_catalog_router(settings))
    app.include_router(ops.router)
    return app
