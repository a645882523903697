"""What every route shares, held on the app: `AppState`, and the served engine as a dependency.

`create_app` builds one `AppState` (settings, metrics, the engine registry, the catalog changes
and the lock that serialises them, the micro-batcher; the batch-job store once the lifespan
has opened it) and keeps it on
`app.state`; routes reach it with `state_of(request)` and the served engine with `EngineDep`,
which answers 503 while the bundle loads (or after it failed to).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request, status

from service.api.errors import api_error
from service.batch.intake import InputChecker
from service.batch.store import JobStore
from service.catalog.changes import Catalogs
from service.metrics import ServiceMetrics
from service.registry import EngineRegistry
from service.search.batcher import MicroBatcher
from service.search.cache import ResultCache
from service.search.engine import SearchEngine
from service.settings import Settings

# Seconds a client is told to wait before retrying while the bundle loads.
RETRY_AFTER_S = 5


@dataclass(kw_only=True)
class AppState:
    """The app's shared parts (one per `create_app`)."""

    settings: Settings
    metrics: ServiceMetrics
    registry: EngineRegistry
    catalogs: Catalogs
    batcher: MicroBatcher
    upload_slots: asyncio.Semaphore  # batch uploads received at once
    input_checker: InputChecker  # checks them in processes of its own
    cache: ResultCache | None = None  # answers to repeated queries (None: XC_CACHE_ENTRIES=0)
    job_store: JobStore | None = None  # opened by the lifespan, in a worker thread
    # One catalog change at a time, holding at most one worker thread.
    catalog_writes: asyncio.Lock = field(default_factory=asyncio.Lock)


def state_of(request: Request) -> AppState:
    """The shared parts of the app serving `request`."""
    return request.app.state.shared


async def get_engine(request: Request) -> SearchEngine:
    """The engine serving now, or a 503 telling the client to retry (or that loading failed).

    `async` although it never awaits: FastAPI runs plain `def` dependencies in a thread pool,
    a hop that costs more than the whole check (the same holds for `service.api.auth`).
    """
    registry = state_of(request).registry
    engine = registry.engine
    if engine is not None:
        return engine
    if registry.load_error is not None:
        error = registry.shown_error(registry.load_error)
        msg = f"not ready: the model bundle failed to load: {error}"
        code = "bundle_error"
    else:
        msg, code = "not ready: the model bundle is still loading; retry shortly", "not_ready"
    headers = {"Retry-After": str(RETRY_AFTER_S)}
    raise api_error(status.HTTP_503_SERVICE_UNAVAILABLE, [], msg, code, headers)


EngineDep = Annotated[SearchEngine, Depends(get_engine)]
