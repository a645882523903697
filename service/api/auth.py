"""Two bearer keys, two scopes: what a search client may do, and what changes the server.

* **Search scope** (`/search`, `/v1/models`, the search page's calls): open unless
  `XC_SEARCH_KEY` (or the legacy `XC_API_KEY`) is set; then that key, or the admin key, is
  needed.
* **Admin scope** (`PUT/DELETE /products`, `POST /admin/reload`, every `/batches` route): needs
  `XC_ADMIN_KEY` (or `XC_API_KEY`) when one is set. With neither, the admin routes are open only
  to a server listening on loopback (`XC_HOST` 127.0.0.1, ::1 or localhost); a server listening
  beyond it answers them 403, saying how to enable them, and says so in its log at start
  (`admin_exposure`). A search key never opens the admin scope.

Health, readiness and metrics stay open so probes and scrapers need no secret. Keys are
compared in constant time; a missing or wrong token is a 401 naming the Authorization header.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import Request, Security, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from service.api.errors import ERROR_BODY, api_error
from service.api.state import state_of
from service.settings import Settings

# A token is needed only when the server has a key: the contract lists "no security" as an
# alternative (FastAPI appends this to the bearer scheme the dependency declares).
OPTIONAL_AUTH: dict[str, Any] = {"security": [{}]}
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {
        **ERROR_BODY,
        "description": "The server has a key for this route and the bearer token is missing "
        "or wrong.",
    },
}
ADMIN_RESPONSES: dict[int | str, dict[str, Any]] = {
    **AUTH_RESPONSES,
    403: {
        **ERROR_BODY,
        "description": "Admin routes are disabled: the server listens beyond loopback and has "
        "no admin key (XC_ADMIN_KEY).",
    },
}

search_scheme = HTTPBearer(
    scheme_name="SearchKey",
    auto_error=False,
    description="XC_SEARCH_KEY (or XC_ADMIN_KEY, or the legacy XC_API_KEY): required on /search "
    "and /v1/models when the server has one.",
)
admin_scheme = HTTPBearer(
    scheme_name="AdminKey",
    auto_error=False,
    description="XC_ADMIN_KEY (or the legacy XC_API_KEY): required on /products, /batches and "
    "/admin/* when the server has one; without one they are open on loopback only.",
)
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def on_loopback(settings: Settings) -> bool:
    """Whether the server listens only where no other machine can reach it."""
    return settings.host in LOOPBACK_HOSTS or settings.host.startswith("127.")


def admin_exposure(settings: Settings) -> str:
    """How the admin routes are exposed, in one sentence for the start-up log."""
    if settings.admin_key is not None or settings.api_key is not None:
        return "admin routes need the admin key (XC_ADMIN_KEY or XC_API_KEY)"
    if on_loopback(settings):
        return f"admin routes are open: {settings.host} is loopback and no admin key is set"
    return (
        f"admin routes are disabled: the server listens on {settings.host}, beyond loopback, "
        "and no admin key is set (set XC_ADMIN_KEY to enable them)"
    )


def _matches(credentials: HTTPAuthorizationCredentials | None, keys: list[SecretStr]) -> bool:
    token = credentials.credentials.encode() if credentials is not None else b""
    found = False
    for key in keys:  # compare with every key, so the time says nothing about which matched
        found |= secrets.compare_digest(token, key.get_secret_value().encode())
    return credentials is not None and found


def _unauthorized(credentials: HTTPAuthorizationCredentials | None) -> Exception:
    if credentials is None:
        msg = "authorization: a bearer token is required (Authorization: Bearer <key>)"
        code = "missing_token"
    else:
        msg, code = "authorization: the bearer token is not valid", "invalid_token"
    return api_error(
        status.HTTP_401_UNAUTHORIZED,
        ["header", "authorization"],
        msg,
        code,
        headers={"WWW-Authenticate": "Bearer"},
    )


async def require_search_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(search_scheme)],
) -> None:
    """401 unless the request carries a key of the search scope (no search key: open)."""
    settings = state_of(request).settings
    own = settings.search_key or settings.api_key
    if own is None:
        return
    keys = [key for key in (own, settings.admin_key, settings.api_key) if key is not None]
    if not _matches(credentials, keys):
        raise _unauthorized(credentials)


async def require_admin_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(admin_scheme)],
) -> None:
    """401 unless the request carries the admin key; 403 when the admin routes are disabled
    (no admin key, listening beyond loopback); open on loopback without a key."""
    settings = state_of(request).settings
    key = settings.admin_key or settings.api_key
    if key is None:
        if on_loopback(settings):
            return
        raise api_error(
            status.HTTP_403_FORBIDDEN,
            [],
            admin_exposure(settings),
            "admin_disabled",
        )
    if not _matches(credentials, [key]):
        raise _unauthorized(credentials)
