"""Request and response bodies of the HTTP API, and the one error shape every failure uses.

Every non-2xx answer is an `ErrorResponse`: `{"detail": [{"loc", "msg", "type"}, ...]}`, the
shape FastAPI uses for validation errors, so generic FastAPI clients understand it. `loc` says
where the problem is (`["body", "k"]`), `msg` is a sentence that starts with the field name and
states the limit (`"k: must be <= 1000"`), `type` is a stable machine-readable code.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

ModelName = Literal["astra", "mach", "hybrid"]

# Control characters a pasted query may legitimately contain; every other one is rejected.
ALLOWED_CONTROL_CHARS = frozenset("\t\n")


def _check_query_text(query: str) -> str:
    """Reject control characters other than tab and newline.

    They mean nothing to a search and usually come from a broken client; rejecting them keeps
    them out of the tokenizer and the logs. (Lone surrogates never get here: pydantic rejects
    strings that are not valid Unicode.)
    """
    for position, char in enumerate(query):
        if unicodedata.category(char) == "Cc" and char not in ALLOWED_CONTROL_CHARS:
            raise PydanticCustomError(
                "query_control_character",
                "must not contain control characters other than tab and newline "
                "(found {char} at position {position})",
                {"char": f"U+{ord(char):04X}", "position": position},
            )
    return query


# The query after pydantic's own checks (strip, then length), plus the character checks.
QueryText = Annotated[str, AfterValidator(_check_query_text)]


def search_request_model(
    max_query_chars: int = 512, max_k: int = 1000, default_k: int = 10
) -> type[BaseModel]:
    """Build the `/search` request model with the configured limits.

    The limits come from `Settings`, so they are bound when the app is built; building the
    model here (rather than checking limits in the route) keeps the validation, the error
    messages and the OpenAPI schema in agreement.
    """

    class SearchRequest(BaseModel):
        """One search: a free-text query, how many products to return, and which model."""

        model_config = ConfigDict(extra="forbid", strict=True, str_strip_whitespace=True)
        # What each field accepts, in words: appended to type errors so they state the limit.
        field_limits: ClassVar[dict[str, str]] = {
            "query": f"a string of 1 to {max_query_chars} characters",
            "k": f"an integer from 1 to {max_k}",
            "model": "one of 'astra', 'mach', 'hybrid', or null",
        }

        query: QueryText = Field(
            min_length=1,
            max_length=max_query_chars,
            description=(
                "Free text, trimmed of surrounding whitespace; must not be empty, must be at "
                f"most {max_query_chars} characters, and must not contain control characters "
                "other than tab and newline."
            ),
            examples=["cordless drill"],
        )
        k: int = Field(
            default=default_k,
            ge=1,
            le=max_k,
            description=f"How many products to return (1 to {max_k}).",
        )
        model: ModelName | None = Field(
            default=None,
            description=(
                "Which model answers: `astra` (encoder + ANN over classifier vectors), `mach` "
                "(hashed bucket classifiers), or `hybrid`. Absent or null: the bundle's default. "
                "A model the bundle does not hold is answered 404."
            ),
        )

    return SearchRequest


# Imported for its type and its defaults; the app builds its own from the settings.
SearchRequest = search_request_model()


class SearchResult(BaseModel):
    """One product, best first."""

    id: str = Field(description="External product id (line i of the bundle's label ids).")
    title: str = Field(description="Product title (line i of the bundle's label titles).")
    score: float = Field(description="Model score; higher is better, comparable within a model.")


class SearchResponse(BaseModel):
    """The top-k products for one query."""

    results: list[SearchResult] = Field(
        description="At most k products sorted by score, best first (fewer if the catalog is "
        "smaller than k)."
    )
    model: str = Field(description="The model that answered.")
    took_ms: float = Field(description="Server-side time spent answering, in milliseconds.")


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


class HealthResponse(BaseModel):
    """Liveness: the process is up and answering HTTP."""

    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    """Readiness: the bundle is loaded and warmed, and which bundle it is."""

    status: Literal["ready"] = "ready"
    bundle: str = Field(description="Bundle name from its manifest.")
    version: str = Field(description="Bundle version from its manifest.")
    models: list[str] = Field(description="Models this bundle can answer with.")
    default_model: str = Field(description="Model used when a request names none.")
    labels: int = Field(description="Number of products in the catalog.")


def error_response(
    loc: Iterable[str | int], msg: str, type_: str
) -> dict[str, list[dict[str, Any]]]:
    """A one-problem `ErrorResponse` body, ready to serialise."""
    return {"detail": [{"loc": list(loc), "msg": msg, "type": type_}]}


def _field_name(loc: Iterable[str | int]) -> str:
    """`("body", "k")` -> `"k"`; the body itself -> `"body"`."""
    parts = [str(part) for part in loc]
    if parts and parts[0] in {"body", "query", "path", "header", "cookie"}:
        parts = parts[1:] or parts
    return ".".join(parts) or "body"


def _describe(error: Mapping[str, Any], field: str, limits: Mapping[str, str]) -> str:
    """The text after `<field>: ` for one pydantic error, naming the limit where there is one."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    expected = f" ({limits[field]})" if field in limits else ""
    if kind == "missing":
        return f"is required{expected}"
    if kind == "extra_forbidden":
        return f"is not a known field (allowed: {', '.join(limits) or 'none'})"
    if kind == "greater_than_equal":
        return f"must be >= {ctx['ge']}"
    if kind == "less_than_equal":
        return f"must be <= {ctx['le']}"
    if kind == "string_too_short":
        return "must not be empty or whitespace only"
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']} characters after trimming whitespace"
    if kind == "literal_error" and field in limits:
        return f"must be {limits[field]}"
    if field == "body" and kind in {"model_type", "model_attributes_type", "dict_type"}:
        return f"must be a JSON object with the fields {', '.join(limits) or '(none)'}"
    if kind.startswith("query_"):  # our own checks already say what is allowed
        return str(error["msg"])
    return f"{error['msg']}{expected}"


def validation_details(
    errors: Iterable[Mapping[str, Any]], limits: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """Turn pydantic/FastAPI validation errors into `ErrorDetail` dicts with readable messages.

    `limits` maps each body field to what it accepts, in words (a request model's
    `field_limits`); it is appended to type errors. `input` and `ctx` are dropped: echoing a
    rejected megabyte query back helps nobody.
    """
    limits = limits or {}
    details = []
    for error in errors:
        loc = list(error.get("loc", ()))
        if error["type"] == "json_invalid":
            # FastAPI puts the character offset where the field name would be.
            position = loc[1] if len(loc) > 1 else "?"
            reason = (error.get("ctx") or {}).get("error", "malformed")
            details.append(
                {
                    "loc": ["body"],
                    "msg": f"body: is not valid JSON ({reason} at position {position})",
                    "type": "json_invalid",
                }
            )
            continue
        field = _field_name(loc)
        details.append(
            {
                "loc": loc,
                "msg": f"{field}: {_describe(error, field, limits)}",
                "type": error["type"],
            }
        )
    return details
