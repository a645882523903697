"""Cheap load shedding: refuse a search with 429 before its body is parsed when the queue is full.

Under overload most of a request's cost on the event loop is reading, parsing and validating
its body; a request that will be refused anyway should not pay it, or the loop itself becomes
the bottleneck and admitted requests wait behind refused ones. The batcher still checks
admission exactly (`MicroBatcher.submit`), since a request that passes here may find the queue
full by the time its body is parsed.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from service.search.batcher import MicroBatcher, Overloaded


class ShedWhenFull:
    """Pure ASGI middleware: POST `path` gets `refuse(overloaded)` while the queue is full."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        batcher: MicroBatcher,
        path: str,
        refuse: Callable[[Overloaded], JSONResponse],
    ) -> None:
        self.app = app
        self.batcher = batcher
        self.path = path
        self.refuse = refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, unless it is a search arriving while the queue is full."""
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == self.path:
            overloaded = self.batcher.full()
            if overloaded is not None:
                await self.refuse(overloaded)(scope, receive, send)
                return
        await self.app(scope, receive, send)
