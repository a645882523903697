"""JSON-lines logging with a request id on every line, and the middleware that sets that id.

Each log record becomes one JSON object per line on stderr: `ts`, `level`, `logger`, `msg`,
`request_id` (null outside a request) and any `extra={...}` fields. The request id comes from
the client's `X-Request-Id` header when it is sane, else a fresh uuid4; it is echoed in the
response so a client can quote it, and it tags every line logged while serving the request
(including lines logged from worker threads, which inherit the context).
"""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "X-Request-Id"
# W3C Server-Timing: the middleware's `app` entry, and the stages the search route adds.
SERVER_TIMING_HEADER = "server-timing"
MAX_REQUEST_ID_LENGTH = 128

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

access_log = logging.getLogger("service.access")
error_log = logging.getLogger("service.error")

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys()
) | {"message", "asctime", "color_message", "taskName"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object (ASCII-escaped, so any text is safe to write)."""

    def format(self, record: logging.LogRecord) -> str:
        """One line: the fixed keys, then the record's extras, then the traceback if any."""
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            # A record may carry its id (the access line does); else the current request's.
            "request_id": getattr(record, "request_id", None) or request_id_var.get(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and key not in payload:
                payload[key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record is emitted (test runners swap it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


_handler: logging.Handler | None = None


def configure_logging(level: str = "info") -> None:
    """Send every logger (ours, uvicorn's, the engine's) to stderr as JSON lines.

    Idempotent: a second call only changes the level, so there is never a duplicate handler.
    """
    global _handler
    root = logging.getLogger()
    if _handler is None:
        _handler = _StderrHandler()
        _handler.setFormatter(JsonFormatter())
        for existing in list(root.handlers):
            root.removeHandler(existing)
        root.addHandler(_handler)
        # uvicorn's loggers would otherwise keep handlers of their own when configured earlier.
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            logging.getLogger(name).handlers.clear()
            logging.getLogger(name).propagate = True
    root.setLevel(level.upper())


def valid_request_id(value: str) -> bool:
    """1 to 128 printable ASCII characters: safe to echo in a header and to log."""
    return 0 < len(value) <= MAX_REQUEST_ID_LENGTH and all(" " <= c <= "~" for c in value)


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if valid_request_id(text) else None
    return None


class RequestContextMiddleware:
    """Pure ASGI middleware: request id, one access line per request, last-resort 500.

    `on_response(method, path, status)` is called once per request after it is answered (the
    app counts answers by route and status with it).

        An exception that escapes the app is logged here with the request id and answered with
        `internal_error(request_id)` (a JSON body) so the client gets the id to report; it is not
        re-raised, so the server does not log it a second time without the id.
    """

    def __init__(
        self,
        app: ASGIApp,
        internal_error: Callable[[str], bytes],
        on_response: Callable[[str, str, int], None] | None = None,
    ) -> None:
        self.app = app
        self.internal_error = internal_error
        self.on_response = on_response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request inside its request-id context."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope) or uuid.uuid4().hex
        token = request_id_var.set(request_id)
        start = time.perf_counter()
        status = 500
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = request_id
                # The app's own time up to its answer (`Server-Timing`, W3C), beside any stages
                # the route reported: what the server added to the client's round trip.
                app_ms = (time.perf_counter() - start) * 1000
                headers.append(SERVER_TIMING_HEADER, f"app;dur={app_ms:.3f}")
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            error_log.exception(
                "unhandled error",
                extra={"request_id": request_id, "method": scope["method"], "path": scope["path"]},
            )
            if started:
                raise  # headers are gone; all the server can do is drop the connection
            await self._send_internal_error(send_with_id, request_id)
        finally:
            access_log.info(
                "%s %s %d",
                scope["method"],
                scope["path"],
                status,
                extra={
                    "request_id": request_id,
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round((time.perf_counter() - start) * 1000, 3),
                },
            )
            request_id_var.reset(token)
            if self.on_response is not None:
                self.on_response(scope["method"], scope["path"], status)

    async def _send_internal_error(self, send: Send, request_id: str) -> None:
        body = self.internal_error(request_id)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 500, "headers": headers})
        await send({"type": "http.response.body", "body": body})
