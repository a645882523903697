"""Optional API key: a bearer token on data and admin routes when `XC_API_KEY` is set.

Health, readiness and metrics stay open so probes and scrapers need no secret. The key is
compared in constant time; a missing or wrong token is a 401 naming the Authorization header.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import Request, Security, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.api.errors import ERROR_BODY, api_error
from service.api.state import state_of

# The token is needed only when the server has a key: the contract lists "no security" as an
# alternative (FastAPI appends this to the bearer scheme the dependency declares).
OPTIONAL_AUTH: dict[str, Any] = {"security": [{}]}
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {
        **ERROR_BODY,
        "description": "The server has an API key and the bearer token is missing or wrong.",
    },
}

bearer_scheme = HTTPBearer(
    auto_error=False,
    description="Required on /search, /v1/models, /products, /batches and /admin/* when the "
    "server has XC_API_KEY.",
)


async def require_api_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
) -> None:
    """401 unless the request carries the configured key as a bearer token (no key: open)."""
    key = state_of(request).settings.api_key
    if key is None:
        return
    if credentials is None:
        msg = "authorization: a bearer token is required (Authorization: Bearer <key>)"
        code = "missing_token"
    elif secrets.compare_digest(credentials.credentials.encode(), key.get_secret_value().encode()):
        return
    else:
        msg, code = "authorization: the bearer token is not valid", "invalid_token"
    raise api_error(
        status.HTTP_401_UNAUTHORIZED,
        ["header", "authorization"],
        msg,
        code,
        headers={"WWW-Authenticate": "Bearer"},
    )
