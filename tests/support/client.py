"""The app in-process for tests: a ready TestClient (lifespan included) that fails on any 5xx,
and the check every error answer must pass."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

READY_TIMEOUT_S = 180


def _no_server_errors(response: httpx.Response) -> None:
    """httpx response hook: any 5xx from client input is a bug."""
    assert response.status_code < 500, f"{response.request.url}: {response.status_code}"


def _no_500(response: httpx.Response) -> None:
    """httpx response hook for tests that provoke 503s (a full disk): never a 500."""
    assert response.status_code != 500, f"{response.request.url}: 500 {response.text}"


def wait_ready(client: TestClient, timeout_s: float = READY_TIMEOUT_S) -> dict[str, Any]:
    """Poll /readyz until the bundle is loaded and warmed; return the ready body."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = client.get("/readyz")
        if response.status_code == 200:
            return response.json()
        assert response.status_code == 503, response.text
        assert response.json()["detail"][0]["type"] == "not_ready", response.text
        assert time.monotonic() < deadline, f"not ready after {timeout_s}s: {response.text}"
        time.sleep(0.05)


@contextmanager
def serve(settings: Settings, *, unavailable_ok: bool = False) -> Iterator[TestClient]:
    """A ready TestClient for `settings`, lifespan included, failing on any 5xx (on a 500 only,
    with `unavailable_ok`, for tests that make the server unable to work for a while)."""
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        hook = _no_500 if unavailable_ok else _no_server_errors
        client.event_hooks = {"request": [], "response": [hook]}
        yield client


def assert_error(response: httpx.Response, status: int, field: str, *fragments: str) -> None:
    """An ErrorResponse with `status` whose first message names `field` and each fragment."""
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, list) and detail, response.text
    for item in detail:
        assert set(item) == {"loc", "msg", "type"}, item
    msg = detail[0]["msg"]
    assert msg.startswith(f"{field}:"), msg
    for fragment in fragments:
        assert fragment in msg, msg
