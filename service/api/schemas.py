"""Request and response bodies of the search, model, reload and health routes.

Query texts are `service.validation.bounded_query`, the one type every door shares. The bodies
of the catalog and batch routes live with their features (`service.catalog.schemas`,
`service.batch.schemas`); the one error shape every failure uses is in `service.api.errors`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from service.validation import ModelName, bounded_query


def _without_default(schema: dict[str, Any]) -> None:
    """Document a field as optional without a `null` default its type does not allow."""
    schema.pop("default", None)


class _SearchRequestRules(BaseModel):
    """What every `/search` body shares, whatever its limits: the one-of rule and `texts`."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        str_strip_whitespace=True,
        # The contract states the rule the validator below enforces: one of the two fields.
        json_schema_extra={"oneOf": [{"required": ["query"]}, {"required": ["queries"]}]},
    )
    field_limits: ClassVar[dict[str, str]] = {}
    query: str | None
    queries: list[str] | None
    k: int
    model: ModelName | None
    explain: bool

    @model_validator(mode="after")
    def _one_of_query_or_queries(self) -> _SearchRequestRules:
        # Reported at `query` (see `validation_details`): the field a client most likely meant.
        if self.query is None and self.queries is None:
            raise PydanticCustomError(
                "query_missing",
                "is required ({query}), unless queries is given",
                {"query": type(self).field_limits["query"]},
            )
        if self.query is not None and self.queries is not None:
            raise PydanticCustomError("query_and_queries", "give query or queries, not both")
        return self

    @property
    def texts(self) -> list[str]:
        """The request's queries as a list (one element for `query`)."""
        return [self.query] if self.query is not None else list(self.queries or [])


def search_request_model(
    max_query_chars: int = 512, max_k: int = 1000, default_k: int = 10, max_queries: int = 256
) -> type[_SearchRequestRules]:
    """Build the `/search` request model with the configured limits.

    The limits come from `Settings`, so they are bound when the app is built; building the
    model here (rather than checking limits in the route) keeps the validation, the error
    messages and the OpenAPI schema in agreement.
    """
    query_limit = f"1 to {max_query_chars} characters after trimming whitespace"
    BoundedQuery = bounded_query(max_query_chars)

    class SearchRequest(_SearchRequestRules):
        """A search: one free-text `query` or a list of `queries`, k, and which model."""

        # What each field accepts, in words: appended to type errors so they state the limit.
        field_limits: ClassVar[dict[str, str]] = {
            "query": f"a string of {query_limit}",
            "queries": f"a list of 1 to {max_queries} strings, each of {query_limit}",
            "k": f"an integer from 1 to {max_k}",
            "model": "one of 'astra', 'mach', 'hybrid', or null",
            "explain": "true or false",
        }

        # Not nullable: an explicit null is a type error; absent means `queries` is used.
        query: BoundedQuery = Field(
            default=None,
            json_schema_extra=_without_default,
            description=(
                "Free text, trimmed of surrounding whitespace; must not be empty, must be at "
                f"most {max_query_chars} characters, and must not contain control characters "
                "other than tab and newline. Give `query` or `queries`, not both."
            ),
            examples=["cordless drill"],
        )
        queries: list[BoundedQuery] = Field(
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
        explain: bool = Field(
            default=False,
            description=(
                "Also return, for each result, `explain`: what ranked it (`ranked_by`), the "
                "`signals` it read and the `contributions` its score is the sum of (uncached)."
            ),
        )

    return SearchRequest


class Explanation(BaseModel):
    """Why a product ranked where it did (`"explain": true`; see `service.search.explain`)."""

    ranked_by: str = Field(
        description="What ranked it: index, formula, learned ranker, hybrid or mach."
    )
    signals: dict[str, float | None] = Field(description="The raw values the ranking read.")
    contributions: dict[str, float | None] | None = Field(
        None, description="The parts the score is the sum of (to float32 rounding)."
    )


class SearchResult(BaseModel):
    """One product, best first."""

    id: str = Field(description="External product id (line i of the bundle's label ids).")
    title: str = Field(description="Product title (line i of the bundle's label titles).")
    score: float = Field(description="Model score; higher is better, comparable within a model.")
    explain: Explanation | None = Field(
        None, description="Present when the request asked for `explain`."
    )


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


class EncoderInfo(BaseModel):
    """The query encoder of a bundle."""

    base_model: str = Field(description="Model the encoder was fine-tuned from.")
    dim: int = Field(description="Embedding dimension.")
    max_length: int = Field(description="Tokens per query the encoder reads (longer: truncated).")
    precision: str = Field(description="Weights in use: fp32, or the bundle's int8 copy.")
    size: str = Field(
        "full", description="full, or the bundle's student encoder with fewer layers."
    )
    providers: list[str] = Field(description="ONNX Runtime execution providers in use.")


class IndexInfo(BaseModel):
    """ASTRA's nearest-neighbour index over the classifier vectors."""

    type: str = Field(
        description=(
            "FAISS index kind: flat (exact), hnsw, hnsw_sq8, ivf_flat, ivf_pq or pq4_scan."
        )
    )
    metric: str = Field(description="Similarity the index ranks by.")
    params: dict[str, int] = Field(description="Index parameters (HNSW: M, ef_construction, ...).")


class LexicalInfo(BaseModel):
    """ASTRA's lexical ranker: BM25 over the titles, fused with the cosine."""

    weight: float = Field(
        description="BM25's weight in use (per-query normalised, beside the cosine); 0: off."
    )
    terms: int = Field(description="Distinct title terms indexed.")
    ranker: bool = Field(
        False,
        description="Whether the bundle's learned ranker ranks the candidates in the formula's "
        "place (XC_RANKER).",
    )


class MachInfo(BaseModel):
    """MACH's hashed heads and how they are decoded."""

    repetitions: int = Field(description="Independent hashed classifiers (R).")
    buckets: int = Field(description="Buckets per classifier (B).")
    top_buckets: int = Field(description="Buckets per repetition the fast decoder opens.")
    hybrid_weight: float = Field(description="MACH's share of the hybrid score in use.")
    precision: str = Field(
        "fp32",
        description="Heads in use: fp32, or the bundle's int8 copy (rescored by the fp32 rows "
        "where `exact` is true).",
    )
    exact: bool = Field(False, description="Whether int8 heads' answers are rescored exactly.")


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
    path: str = Field(
        description="The bundle's directory: its path under the models root (XC_MODELS_ROOT), "
        "or its name alone when it lies elsewhere (the server's file paths are not shown)."
    )
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
    field_limits: ClassVar[dict[str, str]] = {
        "bundle": "a bundle directory's path under the models root, or null"
    }

    bundle: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="The bundle directory's path under the server's models root "
        "(XC_MODELS_ROOT), e.g. `homedepot` or `releases/v2`: no absolute path, no `..`, and "
        "nothing it or its files resolve to outside the root (symlinks are followed and "
        "checked). A symlink inside the root used as an alias can be pointed at a new version "
        "and reloaded. Absent or null: reload the bundle being served.",
    )


class ReloadResponse(BaseModel):
    """The outcome of a reload: the bundle served before and the one served now."""

    previous: ModelInfo | None = Field(description="The bundle served before (null if none).")
    current: ModelInfo
    load_s: float = Field(description="Seconds spent loading and warming the new bundle.")
