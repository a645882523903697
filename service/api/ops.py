"""Operations: the search page, liveness, readiness and Prometheus metrics.

Health, readiness and metrics stay open when the server has an API key, so probes and scrapers
need no secret; the search page is static and calls the API itself.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import Request, Response, status
from fastapi.responses import FileResponse

from service.api.errors import ERROR_BODY, api_error
from service.api.routing import api_router
from service.api.schemas import HealthResponse, ReadyResponse
from service.api.state import RETRY_AFTER_S, EngineDep, state_of
from service.metrics import CONTENT_TYPE

SEARCH_PAGE = Path(__file__).resolve().parent / "static" / "index.html"

router = api_router()


@router.get("/", include_in_schema=False)
async def search_page() -> FileResponse:
    """A search box over the API (static HTML, CSS and JS; no build step)."""
    return FileResponse(SEARCH_PAGE, media_type="text/html")


@router.get(
    "/healthz",
    tags=["operations"],
    summary="Liveness",
    operation_id="healthz",
    response_description="The process is serving HTTP.",
)
async def healthz() -> HealthResponse:
    """200 whenever the process answers HTTP, loaded or not."""
    return HealthResponse()


@router.get(
    "/readyz",
    tags=["operations"],
    summary="Readiness",
    operation_id="readyz",
    response_description="The bundle is loaded and warmed.",
    responses={
        503: {
            **ERROR_BODY,
            "description": "Still loading, the bundle failed, or a model call has stalled.",
        }
    },
)
async def readyz(request: Request, engine: EngineDep) -> ReadyResponse:
    """200 with the bundle's identity once it is loaded and warmed and no model call has
    stalled; 503 otherwise."""
    state = state_of(request)
    stalled_s, limit = state.batcher.stalled_s(), state.settings.answer_timeout_s
    if stalled_s > limit:
        msg = f"not ready: a model call has run {stalled_s:.0f} s, over {limit:g} s (stalled)"
        headers = {"Retry-After": str(RETRY_AFTER_S)}
        raise api_error(status.HTTP_503_SERVICE_UNAVAILABLE, [], msg, "stalled", headers)
    manifest = engine.manifest
    return ReadyResponse(
        bundle=manifest.name,
        version=manifest.version,
        models=list(engine.models),
        default_model=engine.default_model,
        labels=manifest.labels.count,
    )


@router.get(
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
async def prometheus_metrics(request: Request) -> Response:
    """Stage latencies, batch sizes, queue depth, answers by status, the bundle version."""
    return Response(state_of(request).metrics.render(), media_type=CONTENT_TYPE)
