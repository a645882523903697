"""The FastAPI application: loads the bundle, serves `/search`, `/healthz` and `/readyz`.

`create_app` builds one app per `Settings`. Its lifespan starts loading the bundle in a worker
thread and returns at once, so the server listens (and `/healthz` answers) while a large bundle
loads; `/readyz` and `/search` answer 503 until the engine is loaded and warmed. A bundle that
cannot be loaded is fatal: the error is logged and `on_fatal` is called (`python -m service`
uses it to stop the server and exit non-zero).

Every error answer has the `ErrorResponse` shape (see `service.schemas`).

No `from __future__ import annotations` here: the `/search` route is annotated with a request
model built from the settings, which FastAPI can only resolve when annotations are evaluated.
"""

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.bundle import BundleError
from service.engine import SearchEngine
from service.logs import RequestContextMiddleware
from service.schemas import (
    ErrorResponse,
    HealthResponse,
    ReadyResponse,
    SearchResponse,
    SearchResult,
    error_response,
    search_request_model,
    validation_details,
)
from service.settings import Settings, get_settings

log = logging.getLogger(__name__)

# A query is at most a few KiB of JSON even fully \u-escaped; anything far bigger is not a search.
SEARCH_MAX_BODY_BYTES = 64 * 1024
# Seconds a client is told to wait before retrying while the bundle loads.
RETRY_AFTER_S = 5

DESCRIPTION = """\
Top-k product search over a catalog of up to tens of millions of products, answered by
extreme-classification models loaded from a model bundle: **ASTRA** (a text encoder plus
approximate maximum-inner-product search over one learned classifier vector per product) and
**MACH** (hashed bucket classifiers decoded with a count-min sketch).

* `POST /search` returns the top-k products for a query.
* `GET /healthz` is liveness: 200 as soon as the process serves HTTP.
* `GET /readyz` is readiness: 503 while the bundle loads, 200 (with the bundle's name and
  version) once it is loaded and warmed.

**Errors.** Every non-2xx answer has one shape, `ErrorResponse`:
`{"detail": [{"loc": ["body", "k"], "msg": "k: must be <= 1000", "type": "less_than_equal"}]}`.
`msg` starts with the field it is about and states the limit; `type` is a stable code.
Bad input is a 4xx (400 unparseable body, 404 model not in the bundle, 413 body too large,
422 invalid field); 500 means a server fault, 503 not ready yet (see `Retry-After`).

**Request ids.** Send `X-Request-Id` (1-128 printable ASCII characters) to tag a request, or
let the server generate one; it is echoed in the `X-Request-Id` response header, appears on
every log line about the request, and is quoted in 500 answers.
"""

_ERROR = {"model": ErrorResponse}
SEARCH_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {**_ERROR, "description": "The body is not valid JSON (or not UTF-8)."},
    404: {**_ERROR, "description": "The requested model is not in the loaded bundle."},
    413: {**_ERROR, "description": f"The body is larger than {SEARCH_MAX_BODY_BYTES} bytes."},
    422: {**_ERROR, "description": "A field is missing, of the wrong type, or out of range."},
    500: {**_ERROR, "description": "Server fault; `msg` quotes the request id."},
    503: {**_ERROR, "description": "The bundle is not loaded yet (or failed to load)."},
}


def api_version() -> str:
    """The distribution's version, used as the OpenAPI document's version."""
    try:
        return version("xc-search")
    except PackageNotFoundError:
        return "0.0.0"


# --- lifespan: load the engine in the background --------------------------------------------


async def load_engine(
    app: FastAPI, settings: Settings, on_fatal: Callable[[], None] | None = None
) -> None:
    """Load and warm the bundle in worker threads, then publish it on `app.state`.

    Runs as a background task so the event loop keeps serving `/healthz` meanwhile. Any
    failure is fatal for the service: it is logged, kept for `/readyz`, and `on_fatal` runs.
    """
    start = time.perf_counter()
    log.info("loading bundle", extra={"bundle": str(settings.bundle)})
    try:
        engine = await asyncio.to_thread(
            SearchEngine.load,
            settings.bundle,
            settings.threads,
            settings.device,
            settings.hybrid_weight,
        )
        await asyncio.to_thread(engine.warm)
    except Exception as exc:
        if isinstance(exc, BundleError):
            log.error("bundle failed to load: %s", exc, extra={"bundle": str(settings.bundle)})
        else:
            log.exception("engine failed to start: %s", exc)
        app.state.load_error = str(exc)
        if on_fatal is not None:
            on_fatal()
        return
    app.state.engine = engine
    log.info(
        "ready",
        extra={
            "bundle": engine.manifest.name,
            "version": engine.manifest.version,
            "models": engine.kinds,
            "load_s": round(time.perf_counter() - start, 3),
        },
    )


def make_lifespan(
    settings: Settings, on_fatal: Callable[[], None] | None
) -> Callable[[FastAPI], Any]:
    """The app's lifespan: start loading at start-up, stop waiting for it at shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.engine = None
        app.state.load_error = None
        loader = asyncio.create_task(load_engine(app, settings, on_fatal))
        try:
            yield
        finally:
            # A load still running in its thread finishes there; nothing waits for its result.
            loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loader

    return lifespan


# --- request body size ----------------------------------------------------------------------


def body_too_large(limit: int) -> HTTPException:
    """The 413 for a body over `limit` bytes, in the `ErrorResponse` shape."""
    detail = error_response(["body"], f"body: must be at most {limit} bytes", "body_too_large")
    return HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, detail=detail["detail"])


class BodyLimitMiddleware:
    """Refuse request bodies over a per-path byte limit before they are buffered.

    A declared `Content-Length` over the limit is answered at once; a chunked body is counted
    as it arrives and the read fails with the same 413. (Starlette's own limiter answers plain
    text when the length is declared, which would break the one error shape.)
    """

    def __init__(self, app: ASGIApp, limits: Mapping[str, int]) -> None:
        self.app = app
        self.limits = dict(limits)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on with a byte-counting `receive`, or answer 413."""
        limit = self.limits.get(scope.get("path", "")) if scope["type"] == "http" else None
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            exc = body_too_large(limit)
            response = JSONResponse({"detail": exc.detail}, status_code=exc.status_code)
            await response(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise body_too_large(limit)
            return message

        await self.app(scope, counting_receive, send)


# --- dependencies -------------------------------------------------------------------------


def get_engine(request: Request) -> SearchEngine:
    """The loaded engine, or a 503 telling the client to retry (or that loading failed)."""
    engine: SearchEngine | None = getattr(request.app.state, "engine", None)
    if engine is not None:
        return engine
    load_error = getattr(request.app.state, "load_error", None)
    if load_error is not None:
        detail = error_response(
            [], f"not ready: the model bundle failed to load: {load_error}", "bundle_error"
        )
    else:
        detail = error_response(
            [], "not ready: the model bundle is still loading; retry shortly", "not_ready"
        )
    raise HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        detail=detail["detail"],
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


EngineDep = Annotated[SearchEngine, Depends(get_engine)]


# --- error handlers -----------------------------------------------------------------------


def _body_field_limits(request: Request) -> Mapping[str, str]:
    """What each body field of the matched route accepts (its model's `field_limits`)."""
    body_field = getattr(request.scope.get("route"), "body_field", None)
    model = getattr(getattr(body_field, "field_info", None), "annotation", None)
    return getattr(model, "field_limits", {})


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """422 for invalid fields, 400 for a body that is not JSON; messages name field and limit."""
    assert isinstance(exc, RequestValidationError)
    details = validation_details(exc.errors(), _body_field_limits(request))
    malformed = all(detail["type"] == "json_invalid" for detail in details)
    code = status.HTTP_400_BAD_REQUEST if malformed else status.HTTP_422_UNPROCESSABLE_CONTENT
    return JSONResponse({"detail": details}, status_code=code)


def _http_error_detail(request: Request, exc: StarletteHTTPException) -> list[dict[str, Any]]:
    """Our own `detail` lists pass through; Starlette's plain strings get a loc and a code."""
    if isinstance(exc.detail, list):
        return exc.detail
    path, method = request.url.path, request.method
    if exc.status_code == status.HTTP_404_NOT_FOUND:
        return error_response(["path"], f"path: {path} does not exist", "not_found")["detail"]
    if exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
        allowed = (exc.headers or {}).get("Allow", "")
        msg = f"method: {method} is not allowed on {path} (allowed: {allowed})"
        return error_response(["method"], msg, "method_not_allowed")["detail"]
    if exc.status_code == status.HTTP_400_BAD_REQUEST:
        # FastAPI's answer when the JSON parser fails other than on syntax: bytes that are not
        # UTF-8, nesting too deep, an integer with thousands of digits.
        msg = "body: could not be parsed as JSON (it must be UTF-8 JSON of modest size and depth)"
        return error_response(["body"], msg, "body_unreadable")["detail"]
    return error_response([], str(exc.detail), f"http_{exc.status_code}")["detail"]


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Every `HTTPException` (ours and Starlette's) answered in the `ErrorResponse` shape."""
    assert isinstance(exc, StarletteHTTPException)
    return JSONResponse(
        {"detail": _http_error_detail(request, exc)},
        status_code=exc.status_code,
        headers=exc.headers,
    )


def internal_error_body(request_id: str) -> bytes:
    """The 500 body: no internals, just the id the client can quote."""
    msg = f"internal server error: quote request id {request_id} when reporting it"
    return json.dumps(error_response([], msg, "internal_error")).encode()


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
        settings.max_query_chars, settings.max_k, settings.default_k
    )

    app = FastAPI(
        title="XC product search",
        version=api_version(),
        description=DESCRIPTION,
        lifespan=make_lifespan(settings, on_fatal),
        openapi_tags=[
            {"name": "search", "description": "Top-k products for a text query."},
            {"name": "operations", "description": "Liveness and readiness probes."},
        ],
    )
    # Added inner first: the request-context middleware wraps everything, 413s included.
    app.add_middleware(BodyLimitMiddleware, limits={"/search": SEARCH_MAX_BODY_BYTES})
    app.add_middleware(RequestContextMiddleware, internal_error=internal_error_body)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)

    @app.post(
        "/search",
        tags=["search"],
        summary="Top-k products for a query",
        operation_id="search",
        response_description="The top-k products, best first.",
        responses=SEARCH_RESPONSES,
    )
    async def search(body: SearchRequest, engine: EngineDep) -> SearchResponse:
        """Encode the query and return the k best products of the requested model."""
        start = time.perf_counter()
        try:
            model = engine.resolve_model(body.model)
        except ValueError as exc:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND,
                detail=error_response(["body", "model"], str(exc), "model_not_found")["detail"],
            ) from exc
        hits = (await run_in_threadpool(engine.search, [body.query], body.k, model))[0]
        return SearchResponse(
            results=[SearchResult(id=hit.id, title=hit.title, score=hit.score) for hit in hits],
            model=model,
            took_ms=round((time.perf_counter() - start) * 1000, 3),
        )

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
        responses={503: {**_ERROR, "description": "Still loading, or the bundle failed."}},
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

    return app
