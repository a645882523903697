"""Routers whose JSON bodies are read strictly: a repeated key is refused, not merged.

FastAPI reads a JSON body with `json.loads`, which keeps the last of two equal keys, so a client
that sends `{"k": 5, "k": 500}` gets one of its values silently. Every router of the API is
made by `api_router`, whose routes read bodies with `service.validation.strict_json`: a repeated
key is a 422 naming it; nesting deeper than the parser goes, an integer too long to convert or
bytes that are not UTF-8 are a 400 naming the limit; invalid JSON is FastAPI's own 400, with
the position.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.routing import APIRoute

from service.api.errors import api_error
from service.validation import DuplicateKey, JsonRefused, strict_json


def json_refusal(exc: JsonRefused) -> HTTPException:
    """The answer to a body `strict_json` refused: 422 for a repeated key, 400 otherwise."""
    if isinstance(exc, DuplicateKey):
        code = status.HTTP_422_UNPROCESSABLE_CONTENT
        return api_error(code, ["body"], f"body: {exc}", "duplicate_key")
    invalid = isinstance(exc.__cause__, json.JSONDecodeError)
    kind = "json_invalid" if invalid else "body_unreadable"
    return api_error(status.HTTP_400_BAD_REQUEST, ["body"], f"body: {exc}", kind)


class StrictJsonRequest(Request):
    """A request whose `json()` is `strict_json`, answering refusals in the one error shape."""

    async def json(self) -> Any:
        """The body as JSON (read once)."""
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = strict_json(body)
            except JsonRefused as exc:
                if isinstance(exc.__cause__, json.JSONDecodeError):
                    raise exc.__cause__ from None  # FastAPI answers it: 400, with the position
                raise json_refusal(exc) from exc
        return self._json


class StrictJsonRoute(APIRoute):
    """A route that hands its endpoint a `StrictJsonRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictJsonRequest(request.scope, request.receive))

        return strict


def api_router(**options: Any) -> APIRouter:
    """An `APIRouter` (same options) whose routes read JSON bodies strictly."""
    return APIRouter(route_class=StrictJsonRoute, **options)
