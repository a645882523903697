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

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)
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


def _without_default(schema: dict[str, Any]) -> None:
    """Document a field as optional without a `null` default its type does not allow."""
    schema.pop("default", None)


def bounded_query(max_chars: int) -> Any:
    """The query type every route and file format shares: 1..max_chars, no control characters.

    Whitespace is trimmed first by the models' `str_strip_whitespace`.
    """
    return Annotated[
        str,
        StringConstraints(min_length=1, max_length=max_chars),
        AfterValidator(_check_query_text),
    ]


def search_request_model(
    max_query_chars: int = 512, max_k: int = 1000, default_k: int = 10, max_queries: int = 256
) -> type[BaseModel]:
    """Build the `/search` request model with the configured limits.

    The limits come from `Settings`, so they are bound when the app is built; building the
    model here (rather than checking limits in the route) keeps the validation, the error
    messages and the OpenAPI schema in agreement.
    """
    query_limit = f"1 to {max_query_chars} characters after trimming whitespace"
    BoundedQuery = bounded_query(max_query_chars)

    class SearchRequest(BaseModel):
        """A search: one free-text `query` or a list of `queries`, k, and which model."""

        model_config = ConfigDict(
            extra="forbid",
            strict=True,
            str_strip_whitespace=True,
            # The contract states the rule the validator below enforces: one of the two fields.
            json_schema_extra={"oneOf": [{"required": ["query"]}, {"required": ["queries"]}]},
        )
        # What each field accepts, in words: appended to type errors so they state the limit.
        field_limits: ClassVar[dict[str, str]] = {
            "query": f"a string of {query_limit}",
            "queries": f"a list of 1 to {max_queries} strings, each of {query_limit}",
            "k": f"an integer from 1 to {max_k}",
            "model": "one of 'astra', 'mach', 'hybrid', or null",
        }

        # Not nullable: an explicit null is a type error; absent means `queries` is used.
        query: BoundedQuery = Field(  # type: ignore[assignment]
            default=None,
            json_schema_extra=_without_default,
            description=(
                "Free text, trimmed of surrounding whitespace; must not be empty, must be at "
                f"most {max_query_chars} characters, and must not contain control characters "
                "other than tab and newline. Give `query` or `queries`, not both."
            ),
            examples=["cordless drill"],
        )
        queries: list[BoundedQuery] = Field(  # type: ignore[assignment]
            default=None,
            json_schema_extra=_without_default,
            min_length=1,
            max_length=max_queries,
            description=(
                f"Up to {max_queries} queries answered in one call, each checked like `query`; "
                "the answer lists their results in the same order."
            ),
            examples=[["cordless drill", "white paint 1 gal"]],
        )
        k: int = Field(
            default=default_k,
            ge=1,
            le=max_k,
            description=f"How many products to return per query (1 to {max_k}).",
        )
        model: ModelName | None = Field(
            default=None,
            description=(
                "Which model answers: `astra` (encoder + ANN over classifier vectors), `mach` "
                "(hashed bucket classifiers), or `hybrid`. Absent or null: the bundle's default. "
                "A model the bundle does not hold is answered 404."
            ),
        )

        @model_validator(mode="after")
        def _one_of_query_or_queries(self) -> SearchRequest:
            # Reported at `query` (see `validation_details`): the field a client most likely meant.
            if self.query is None and self.queries is None:
                raise PydanticCustomError(
                    "query_missing",
                    "is required ({query}), unless queries is given",
                    {"query": SearchRequest.field_limits["query"]},
                )
            if self.query is not None and self.queries is not None:
                raise PydanticCustomError("query_and_queries", "give query or queries, not both")
            return self

        @property
        def texts(self) -> list[str]:
            """The request's queries as a list (one element for `query`)."""
            return [self.query] if self.query is not None else list(self.queries or [])

    return SearchRequest


# Imported for its type and its defaults; the app builds its own from the settings.
SearchRequest = search_request_model()


class SearchResult(BaseModel):
    """One product, best first."""

    id: str = Field(description="External product id (line i of the bundle's label ids).")
    title: str = Field(description="Product title (line i of the bundle's label titles).")
    score: float = Field(description="Model score; higher is better, comparable within a model.")


RESULTS_DESCRIPTION = (
    "At most k products sorted by score, best first (fewer if the catalog is smaller than k)."
)


class AnsweredBy(BaseModel):
    """Which model and bundle version answered, and how long the server took."""

    model: str = Field(description="The model that answered.")
    version: str = Field(
        description="Version of the bundle that answered (see /v1/models), plus `+c<n>` once the "
        "catalog has been changed n times through /products."
    )
    took_ms: float = Field(description="Server-side time spent answering, in milliseconds.")
    notice: str | None = Field(
        default=None,
        description="Set when the model cannot rank part of the catalog: mach ranks only the "
        "products it was trained on, so products added through PUT /products are never among its "
        "results (astra and hybrid rank them).",
    )


class SearchResponse(AnsweredBy):
    """The top-k products for a `query`."""

    results: list[SearchResult] = Field(description=RESULTS_DESCRIPTION)


class QueryResults(BaseModel):
    """The top-k products for one of the `queries`."""

    query: str = Field(description="The query as it was searched (trimmed).")
    results: list[SearchResult] = Field(description=RESULTS_DESCRIPTION)


class BatchSearchResponse(AnsweredBy):
    """The top-k products for each of the `queries`, in request order."""

    responses: list[QueryResults] = Field(description="One entry per query, in request order.")


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
    # `queries.3` is an element of `queries`: its limit is stated with the list's.
    limit = limits.get(field.split(".")[0])
    expected = f" ({limit})" if limit else ""
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
    if kind == "literal_error" and limit:
        return f"must be {limit}"
    if field == "body" and kind in {"model_type", "model_attributes_type", "dict_type"}:
        return f"must be a JSON object with the fields {', '.join(limits) or '(none)'}"
    if kind == "too_short" and limit:
        return f"must be {limit}"
    if kind == "too_long":
        return f"must have at most {ctx['max_length']} items"
    if kind.startswith(("query_", "product_")):  # our own checks already say what is allowed
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
        if error["type"] in {"query_missing", "query_and_queries"}:
            loc = [*loc, "query"]  # a whole-body check, but about which query field to give
        field = _field_name(loc)
        details.append(
            {
                "loc": loc,
                "msg": f"{field}: {_describe(error, field, limits)}",
                "type": error["type"],
            }
        )
    return details


class EncoderInfo(BaseModel):
    """The query encoder of a bundle."""

    base_model: str = Field(description="Model the encoder was fine-tuned from.")
    dim: int = Field(description="Embedding dimension.")
    max_length: int = Field(description="Tokens per query the encoder reads (longer: truncated).")
    precision: str = Field(description="Weights in use: fp32, or the bundle's int8 copy.")
    providers: list[str] = Field(description="ONNX Runtime execution providers in use.")


class IndexInfo(BaseModel):
    """ASTRA's nearest-neighbour index over the classifier vectors."""

    type: str = Field(description="FAISS index kind: flat (exact) or hnsw.")
    metric: str = Field(description="Similarity the index ranks by.")
    params: dict[str, int] = Field(description="Index parameters (HNSW: M, ef_construction, ...).")


class LexicalInfo(BaseModel):
    """ASTRA's lexical ranker: BM25 over the titles, fused with the cosine."""

    weight: float = Field(
        description="BM25's weight in use (per-query normalised, beside the cosine); 0: off."
    )
    terms: int = Field(description="Distinct title terms indexed.")


class MachInfo(BaseModel):
    """MACH's hashed heads and how they are decoded."""

    repetitions: int = Field(description="Independent hashed classifiers (R).")
    buckets: int = Field(description="Buckets per classifier (B).")
    top_buckets: int = Field(description="Buckets per repetition the fast decoder opens.")
    hybrid_weight: float = Field(description="MACH's share of the hybrid score in use.")


class CatalogInfo(BaseModel):
    """Products added, retitled or deleted through the API since the bundle was built."""

    version: int = Field(
        description="Catalog changes so far (one per PUT or DELETE that changed something); kept "
        "per bundle name, across restarts and reloads."
    )
    served_version: str = Field(
        description="The version answers carry: the bundle version, plus `+c<n>` after n changes."
    )
    added: int = Field(description="New products (ids the bundle lacks) in the catalog.")
    changed: int = Field(description="The bundle's products serving a new title.")
    deleted: int = Field(description="The bundle's products deleted.")


class ModelInfo(BaseModel):
    """The loaded bundle: identity, models it answers with, and their parameters."""

    name: str = Field(description="Bundle name from its manifest.")
    version: str = Field(description="Bundle version; answers carry it.")
    created_at: str = Field(description="When the bundle was built (ISO 8601).")
    path: str = Field(description="Directory the bundle was loaded from.")
    loaded_at: str = Field(description="When this process loaded it (ISO 8601).")
    models: list[str] = Field(description="Models this bundle answers with.")
    default_model: str = Field(description="Model used when a request names none.")
    labels: int = Field(description="Products in the catalog.")
    encoder: EncoderInfo
    index: IndexInfo | None = Field(description="ASTRA's index (null without ASTRA).")
    lexical: LexicalInfo | None = Field(
        None, description="ASTRA's lexical ranker (null when the bundle has none)."
    )
    mach: MachInfo | None = Field(description="MACH's parameters (null without MACH).")
    devices: dict[str, str] = Field(
        description="Where each part runs (XC_DEVICE asked for; encoder provider, ASTRA index "
        "and MACH decoder in use)."
    )
    catalog: CatalogInfo | None = Field(
        description="Changes made through PUT/DELETE /products on top of the bundle's products."
    )


class ModelsResponse(BaseModel):
    """What this server is serving (one bundle at a time; a list so clients need not change)."""

    data: list[ModelInfo]


class ReloadRequest(BaseModel):
    """Which bundle directory to load; absent or null reloads the one being served."""

    model_config = ConfigDict(extra="forbid", strict=True)
    field_limits: ClassVar[dict[str, str]] = {"bundle": "a bundle directory path, or null"}

    bundle: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="Bundle directory on the server. Point it (or a symlink used as an alias) "
        "at a new version and reload; null reloads the current path.",
    )


class ReloadResponse(BaseModel):
    """The outcome of a reload: the bundle served before and the one served now."""

    previous: ModelInfo | None = Field(description="The bundle served before (null if none).")
    current: ModelInfo
    load_s: float = Field(description="Seconds spent loading and warming the new bundle.")


class RequestCounts(BaseModel):
    """How many of a batch job's requests are done."""

    total: int
    completed: int = Field(description="Answered with results.")
    failed: int = Field(description="Answered with an error (see the job's errors file).")


class BatchJob(BaseModel):
    """A batch job: its status and progress."""

    id: str
    object: Literal["batch"] = "batch"
    status: Literal["validating", "in_progress", "cancelling", "completed", "failed", "cancelled"]
    created_at: str
    updated_at: str
    request_counts: RequestCounts
    error: str | None = Field(description="Why the job failed (null unless status is failed).")


class BatchList(BaseModel):
    """A page of batch jobs, newest first."""

    object: Literal["list"] = "list"
    data: list[BatchJob]
    has_more: bool
    last_id: str | None = Field(description="Pass as `after` to get the next page.")


class BatchCreate(BaseModel):
    """Batch requests as JSON (the alternative to a multipart JSONL upload in field `file`)."""

    model_config = ConfigDict(extra="forbid")
    requests: list[dict[str, Any]] = Field(
        min_length=1,
        description='Each `{"custom_id", "query", "k"?, "model"?}`, checked like a JSONL line.',
    )


# --- catalog changes: PUT /products, DELETE /products/{id} --------------------------------

PRODUCT_ID_MAX_CHARS = 128


def _check_product_id(product_id: str) -> str:
    """Reject whitespace and control characters: ids are keys, typed into URLs and files."""
    for position, char in enumerate(product_id):
        if char.isspace() or unicodedata.category(char) == "Cc":
            raise PydanticCustomError(
                "product_id_character",
                "must be 1 to {limit} characters without whitespace or control characters "
                "(found {char} at position {position})",
                {"limit": PRODUCT_ID_MAX_CHARS, "char": f"U+{ord(char):04X}", "position": position},
            )
    return product_id


ProductId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=PRODUCT_ID_MAX_CHARS, strip_whitespace=False),
    AfterValidator(_check_product_id),
]


def products_request_model(max_products: int = 1000, max_title_chars: int = 512) -> type[BaseModel]:
    """Build the `PUT /products` body model with the configured limits (see `Settings`)."""
    Title = bounded_query(max_title_chars)
    id_limit = f"1 to {PRODUCT_ID_MAX_CHARS} characters without whitespace or control characters"
    title_limit = f"1 to {max_title_chars} characters after trimming whitespace"

    class Product(BaseModel):
        """A product to create, or to give a new title."""

        model_config = ConfigDict(extra="forbid", strict=True, str_strip_whitespace=True)

        id: ProductId = Field(
            description="External product id: one of the bundle's (changes its title) or a new "
            f"one (adds a product); {id_limit}.",
            examples=["D101996"],
        )
        title: Title = Field(  # type: ignore[valid-type]
            description=f"Product title, embedded by the bundle's encoder; {title_limit}, no "
            "control characters other than tab and newline.",
            examples=["Cedar Lane 20-Volt Cordless Drill Driver Kit in Blue"],
        )

    class ProductsUpsert(BaseModel):
        """Products to create or retitle, each id at most once."""

        model_config = ConfigDict(extra="forbid", strict=True)
        field_limits: ClassVar[dict[str, str]] = {
            "products": f"a list of 1 to {max_products} objects with id ({id_limit}) and title "
            f"({title_limit}), each id at most once",
        }

        products: list[Product] = Field(
            min_length=1,
            max_length=max_products,
            description=f"1 to {max_products} products; searchable as soon as the answer arrives.",
        )

    return ProductsUpsert


class ProductsUpserted(BaseModel):
    """What a PUT /products changed, and the catalog version it made."""

    created: int = Field(description="Products that did not exist (or had been deleted).")
    updated: int = Field(description="Products whose title changed.")
    unchanged: int = Field(description="Products that already had this title (nothing done).")
    catalog_version: int = Field(description="Catalog changes so far (unchanged if none).")
    version: str = Field(description="The version answers carry from now on.")
    took_ms: float = Field(description="Server-side time, embedding included, in milliseconds.")


class ProductDeleted(BaseModel):
    """A deleted product, and the catalog version its deletion made."""

    id: str = Field(description="The deleted product's id.")
    catalog_version: int = Field(description="Catalog changes so far.")
    version: str = Field(description="The version answers carry from now on.")
