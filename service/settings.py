"""Service settings: one `Settings` object read from `XC_*` environment variables.

Every knob the service has lives here, validated once at start-up so a typo in the
environment fails fast with a message naming the variable instead of surfacing later.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LogLevel = Literal["critical", "error", "warning", "info", "debug"]

# Ceilings for the request limits: well above what a search box needs, low enough that one
# request cannot tie up the encoder or the index for long.
MAX_QUERY_CHARS_CEILING = 10_000
MAX_K_CEILING = 10_000
MAX_QUERY_TOKENS_CEILING = 4096
MAX_BATCH_QUERIES_CEILING = 4096


class Settings(BaseSettings):
    """Runtime configuration; each field can be set with `XC_<FIELD>` (e.g. `XC_PORT=9000`)."""

    model_config = SettingsConfigDict(env_prefix="XC_", extra="forbid")

    bundle: Path = Field(Path("models/demo"), description="model bundle directory to serve")
    models_root: Path = Field(
        Path("models"),
        description="the only directory POST /admin/reload loads bundles from: a reload names a "
        "bundle by its path under it, and nothing outside it (symlinks included) is read",
    )
    host: str = Field("127.0.0.1", min_length=1, description="interface to listen on")
    port: int = Field(8000, ge=1, le=65535, description="TCP port to listen on")
    threads: int = Field(
        0,
        ge=0,
        le=1024,
        description="ONNX Runtime intra-op threads per batch worker (0 = CPU cores / workers)",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where the encoder and index run ('auto' = CUDA when available)"
    )
    encoder_precision: Literal["auto", "fp32", "int8"] = Field(
        "auto",
        description="query encoder: auto (the bundle's int8 copy where its dev nDCG@10 was "
        "within 0.003 of fp32's when it was made, else fp32), fp32, or int8 (faster)",
    )
    encoder_size: Literal["auto", "full", "student"] = Field(
        "auto",
        description="query encoder: auto (the bundle's student with fewer layers where its dev "
        "nDCG@10 was within 0.005 of the full encoder's when it was made, else full), full, or "
        "student (faster)",
    )
    mach_precision: Literal["auto", "fp32", "int8"] = Field(
        "auto",
        description="MACH heads: auto (the bundle's int8 copy where it has the fp32 rows that "
        "rescore it and an output layer of at least 64 MiB, else fp32), fp32, or int8",
    )
    ranker: Literal["auto", "on", "off"] = Field(
        "auto",
        description="ASTRA's lexical ranker: auto (the bundle's learned ranker where its "
        "cross-validated dev nDCG@10 beat the cosine + BM25 formula's, else the formula), on "
        "(the learned ranker), or off (the formula)",
    )
    log_level: LogLevel = Field("info", description="minimum level of the JSON log lines")
    max_query_chars: int = Field(
        512,
        ge=1,
        le=MAX_QUERY_CHARS_CEILING,
        description="longest accepted query, in characters after trimming whitespace",
    )
    max_k: int = Field(1000, ge=1, le=MAX_K_CEILING, description="largest accepted k")
    default_k: int = Field(10, ge=1, description="k when a request does not give one")
    hybrid_weight: float | None = Field(
        None, ge=0.0, le=1.0, description="MACH's share of the hybrid score (default: bundle's)"
    )
    lexical_weight: float | None = Field(
        None,
        ge=0.0,
        le=10.0,
        description="BM25's weight in ASTRA's lexical ranker (default: bundle's; 0 turns it off)",
    )
    max_query_tokens: int = Field(
        128,
        ge=1,
        le=MAX_QUERY_TOKENS_CEILING,
        description="longest accepted query in word-piece tokens (the encoder reads the first "
        "max_length of them)",
    )
    max_batch_queries: int = Field(
        256, ge=1, le=MAX_BATCH_QUERIES_CEILING, description="most queries in one request"
    )
    max_results: int = Field(
        25_600,
        ge=1,
        le=10_000_000,
        description="most results one /search request may ask for (queries × k): an answer of "
        "256 × 1,000 results takes the server a second of work to build and send",
    )
    cache_entries: int = Field(
        10_000,
        ge=0,
        le=10_000_000,
        description="answers to repeated queries kept in memory (least recently used out "
        "first; 0 turns the result cache off)",
    )
    cache_bytes: int = Field(
        64 * 1024 * 1024,
        ge=0,
        le=1 << 40,
        description="most memory the result cache may hold, in bytes (estimated)",
    )
    max_batch: int = Field(
        64, ge=1, le=4096, description="most queries the batcher gathers into one model call"
    )
    max_wait_ms: float = Field(
        0.0,
        ge=0.0,
        le=1000.0,
        description="how long a batch may wait for more queries before it runs (0: run as soon "
        "as the model is free; batches still form while it is busy)",
    )
    max_queue: int = Field(
        512,
        ge=1,
        le=1_000_000,
        description="queries waiting for the model before 429s start; requests larger than "
        "XC_MAX_BATCH may fill it only up to XC_MAX_QUEUE - XC_MAX_BATCH (at most down to "
        "XC_MAX_BATCH_QUERIES), keeping the rest for small ones",
    )
    batch_workers: int = Field(
        2,
        ge=1,
        le=64,
        description="threads that run batches side by side (each with XC_THREADS intra-op "
        "threads); two keep a CPU busy while the other batch is between model calls",
    )
    request_timeout_ms: float = Field(
        1000.0,
        gt=0.0,
        le=600_000.0,
        description="a query still queued this long after it arrived is dropped (answered 429)",
    )
    answer_timeout_s: float = Field(
        30.0,
        gt=0.0,
        le=3600.0,
        description="an admitted search not answered this long after it arrived is answered 503, "
        "and /readyz reports not ready while a model call has run this long (a stalled worker)",
    )
    keep_alive_s: float = Field(
        75.0,
        gt=0.0,
        le=3600.0,
        description="idle keep-alive connections are closed after this long (keep it above a "
        "load balancer's idle timeout, often 60 s, so it never reuses a closed connection)",
    )
    shutdown_timeout_s: float = Field(
        30.0, ge=0.0, le=3600.0, description="how long SIGTERM waits for in-flight requests"
    )
    data_dir: Path = Field(
        Path("data/service"),
        description="where batch-job files live, and the SQLite databases of catalog changes "
        "and batch jobs when XC_DATABASE_URL is unset",
    )
    database_url: SecretStr | None = Field(
        None,
        description="postgresql://user:password@host:port/db: keep catalog changes and batch "
        "jobs in PostgreSQL, shared by every replica (unset: SQLite files in XC_DATA_DIR, for "
        "one process); batch-job files stay in XC_DATA_DIR, which replicas must then share",
    )
    catalog_poll_s: float = Field(
        5.0,
        gt=0.0,
        le=3600.0,
        description="how often a replica catches up with catalog changes even without a "
        "notification (a missed one costs at most this long)",
    )
    batch_lease_s: float = Field(
        30.0,
        ge=3.0,
        le=3600.0,
        description="a replica holds a batch chunk this long between heartbeats (every third of "
        "it); a replica killed mid-chunk leaves it to another after at most this long",
    )
    batch_chunk: int = Field(
        512, ge=1, le=100_000, description="requests the batch worker scores per model call"
    )
    max_batch_file_bytes: int = Field(
        100 * 1024 * 1024, ge=1024, le=1 << 34, description="largest batch upload, in bytes"
    )
    max_concurrent_uploads: int = Field(
        2, ge=1, le=64, description="batch uploads received at once; more are answered 429"
    )
    max_batch_lines: int = Field(
        1_000_000, ge=1, le=100_000_000, description="most requests in one batch job"
    )
    batch_retention_days: float = Field(
        30.0,
        ge=0.0,
        le=36_500.0,
        description="finished batch jobs (and their files) are deleted this many days after "
        "they finished (0: kept until DELETE /batches/{id})",
    )
    max_upsert_products: int = Field(
        1000, ge=1, le=100_000, description="most products in one PUT /products"
    )
    max_catalog_changes: int = Field(
        100_000,
        ge=1,
        le=100_000_000,
        description="most products that may differ from the bundle (added or retitled through "
        "PUT /products) before a retrain folds them in; a PUT beyond is refused",
    )
    max_title_chars: int = Field(
        512, ge=1, le=MAX_QUERY_CHARS_CEILING, description="longest product title in PUT /products"
    )
    search_key: SecretStr | None = Field(
        None,
        description="bearer token required on /search and /v1/models when set (the admin key "
        "works there too); unset: those routes are open",
    )
    admin_key: SecretStr | None = Field(
        None,
        description="bearer token required on /products, /batches and /admin/* when set; unset: "
        "those routes are open on loopback and disabled (403) on any other XC_HOST",
    )
    api_key: SecretStr | None = Field(
        None,
        description="legacy single key: stands for XC_SEARCH_KEY and XC_ADMIN_KEY where those "
        "are unset",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="origins allowed by CORS (JSON list; empty = CORS off, '*' = any)",
    )

    @property
    def database_dsn(self) -> str | None:
        """XC_DATABASE_URL's value (None: the SQLite files in XC_DATA_DIR)."""
        return self.database_url.get_secret_value() if self.database_url else None

    @property
    def model_threads(self) -> int:
        """Intra-op threads per batch worker: as set, or the CPU cores shared among workers."""
        return self.threads or max(1, (os.cpu_count() or 1) // self.batch_workers)

    def engine_options(self) -> dict[str, Any]:
        """The keywords of `SearchEngine.load` these settings choose (all but `threads`): the
        server, the batch CLI and its Ray actors load bundles with exactly these."""
        return {
            "device": self.device,
            "hybrid_weight": self.hybrid_weight,
            "precision": self.encoder_precision,
            "encoder_size": self.encoder_size,
            "lexical_weight": self.lexical_weight,
            "mach_precision": self.mach_precision,
            "ranker": self.ranker,
        }

    @field_validator("api_key", "search_key", "admin_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: Any) -> Any:
        """`XC_ADMIN_KEY=` (empty) means no key, not a key that is the empty string."""
        return None if value == "" else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_log_level(cls, value: Any) -> Any:
        """Accept `INFO` as well as `info` (uvicorn and the logging module use both)."""
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _limits_agree(self) -> Settings:
        """Limits that would make every request of some kind invalid are refused at start-up."""
        if self.default_k > self.max_k:
            raise ValueError(f"default_k ({self.default_k}) must be <= max_k ({self.max_k})")
        if self.max_results < self.max_k:
            raise ValueError(
                f"max_results ({self.max_results}) must be >= max_k ({self.max_k}): one query at "
                "the largest k would always be refused"
            )
        if self.max_batch_queries > self.max_queue:
            raise ValueError(
                f"max_batch_queries ({self.max_batch_queries}) must be <= max_queue "
                f"({self.max_queue}): a full request would never be admitted"
            )
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once (tests call `cache_clear`)."""
    return Settings()


def default_settings() -> Settings:
    """Settings with every field at its default, ignoring `XC_*` variables.

    Used where the output must not depend on the environment: the generated OpenAPI contract.
    """
    return Settings(**{name: field.default for name, field in Settings.model_fields.items()})
