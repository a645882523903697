"""The one error shape of the HTTP API, the messages that fill it, and the handlers that keep it.

Every non-2xx answer is an `ErrorResponse`: `{"detail": [{"loc", "msg", "type"}, ...]}`, the
shape FastAPI uses for validation errors, so generic FastAPI clients understand it. `loc` says
where the problem is (`["body", "k"]`), `msg` is a sentence that starts with the field name and
states the limit (`"k: must be <= 1000"`), `type` is a stable machine-readable code.

Validation errors become 422 (400 for a body that is not JSON) with messages naming the field
and its limit (`validation_details`, also used for batch input lines), Starlette's own
404/405/400 get a `loc` and a stable code, a body over its route's limit is a 413 before it is
buffered, and a server fault quotes the request id.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.validation import validation_details


class ErrorDetail(BaseModel):
    """One problem with a request (or, for 5xx, with the server)."""

    loc: list[str | int] = Field(
        description='Where the problem is, e.g. ["body", "k"]; empty when not about the request.'
    )
    msg: str = Field(description="Human-readable; names the field and the limit it breaks.")
    type: str = Field(description="Stable machine-readable code, e.g. less_than_equal.")


class ErrorResponse(BaseModel):
    """The body of every non-2xx answer."""

    detail: list[ErrorDetail]


def error_response(
    loc: Iterable[str | int], msg: str, type_: str
) -> dict[str, list[dict[str, Any]]]:
    """A one-problem `ErrorResponse` body, ready to serialise."""
    return {"detail": [{"loc": list(loc), "msg": msg, "type": type_}]}


# The OpenAPI entry of every documented error answer (add a "description").
ERROR_BODY: dict[str, Any] = {"model": ErrorResponse}


def api_error(
    code: int, loc: list[str | int], msg: str, type_: str, headers: dict[str, str] | None = None
) -> HTTPException:
    """An `HTTPException` whose answer is a one-problem `ErrorResponse`."""
    return HTTPException(code, detail=error_response(loc, msg, type_)["detail"], headers=headers)


def body_too_large(limit: int) -> HTTPException:
    """The 413 for a body over `limit` bytes, in the `ErrorResponse` shape."""
    msg = f"body: must be at most {limit} bytes"
    return api_error(status.HTTP_413_CONTENT_TOO_LARGE, ["body"], msg, "body_too_large")


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


# Seconds a client is asked to wait when the job or catalog store cannot be reached.
STORE_RETRY_AFTER_S = 5


async def store_unavailable_handler(request: Request, exc: Exception) -> JSONResponse:
    """503 when a durable store could not be read or written (PostgreSQL down, a full disk):
    what failed, never where; searches are unaffected."""
    msg = f"{exc}; nothing was changed, retry later"
    return JSONResponse(
        error_response([], msg, "store_unavailable"),
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": str(STORE_RETRY_AFTER_S)},
    )


def internal_error_body(request_id: str) -> bytes:
    """The 500 body: no internals, just the id the client can quote."""
    msg = f"internal server error: quote request id {request_id} when reporting it"
    return json.dumps(error_response([], msg, "internal_error")).encode()
