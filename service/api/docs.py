"""What the OpenAPI contract says around the routes: the description, the tags, the version,
and the response entries several routes share.

`openapi.yaml` is generated from the app (`python -m service.openapi`), so this text is the
contract's prose; each route documents its own answers next to it.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from service.api.errors import ERROR_BODY

TITLE = "XC product search"

DESCRIPTION = """\
Top-k product search over a catalog of up to tens of millions of products, answered by
extreme-classification models loaded from a model bundle: **ASTRA** (a text encoder plus
approximate maximum-inner-product search over one learned classifier vector per product) and
**MACH** (hashed bucket classifiers decoded with a count-min sketch).

* `POST /search` returns the top-k products for a `query`, or for each of up to 256 `queries`.
  Concurrent requests are micro-batched into shared model calls.
* `GET /v1/models` describes the loaded bundle: version, models, label count, dimensions,
  index parameters.
* `PUT /products` adds products or changes their titles (embedded with the bundle's encoder,
  searchable as soon as it answers) and `DELETE /products/{id}` removes one from all results;
  changes persist per bundle name and show as `+c<n>` in the answers' version.
* `POST /admin/reload` (or SIGHUP) loads a bundle version, warms it and swaps it in atomically;
  a bundle that fails to load is refused and the old one keeps serving.
* `GET /healthz` is liveness: 200 as soon as the process serves HTTP.
* `GET /readyz` is readiness: 503 while the bundle loads, 200 (with the bundle's name and
  version) once it is loaded and warmed.
* `GET /metrics` is Prometheus text: per-stage latency histograms, batch sizes, queue depth,
  answers by status, rejected and dropped requests, the bundle version.

**Overload.** Admitted queries wait in a bounded queue; when it is full the answer is 429 with
`Retry-After`. A query still queued when the server's deadline passes is dropped (429 too),
and so is one whose client disconnected.

**Auth.** Two bearer keys (`Authorization: Bearer <key>`, 401 otherwise). The search key
(`XC_SEARCH_KEY`) guards `/search` and `/v1/models` when set; the admin key (`XC_ADMIN_KEY`)
guards `/products`, `/batches` and `/admin/*` and also opens the search routes. Without an admin
key the admin routes are open on a loopback-only server and disabled (403) on any other;
health, readiness and metrics stay open.

**Errors.** Every non-2xx answer has one shape, `ErrorResponse`:
`{"detail": [{"loc": ["body", "k"], "msg": "k: must be <= 1000", "type": "less_than_equal"}]}`.
`msg` starts with the field it is about and states the limit; `type` is a stable code.
Bad input is a 4xx (400 unparseable body, 401 missing key, 404 model not in the bundle, 413
body too large, 422 invalid field, 429 overloaded); 500 means a server fault, 503 not ready yet
(see `Retry-After`).

**Request ids.** Send `X-Request-Id` (1-128 printable ASCII characters) to tag a request, or
let the server generate one; it is echoed in the `X-Request-Id` response header, appears on
every log line about the request, and is quoted in 500 answers.
"""

TAGS = [
    {"name": "search", "description": "Top-k products for text queries."},
    {"name": "models", "description": "The loaded bundle, and swapping in a new one."},
    {"name": "batches", "description": "Durable offline scoring of JSONL request files."},
    {"name": "catalog", "description": "Products added, retitled or deleted live."},
    {"name": "operations", "description": "Liveness, readiness and metrics."},
]

RETRY_AFTER_HEADER = {
    "Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}
}
BAD_JSON: dict[str, Any] = {
    **ERROR_BODY,
    "description": "The body is not valid JSON (or not UTF-8).",
}
NOT_READY: dict[str, Any] = {
    **ERROR_BODY,
    "headers": RETRY_AFTER_HEADER,
    "description": "The bundle is not loaded yet (or failed to load), or the server is shutting "
    "down.",
}


def api_version() -> str:
    """The distribution's version, used as the OpenAPI document's version."""
    try:
        return version("xc-search")
    except PackageNotFoundError:
        return "0.0.0"
