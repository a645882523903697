"""Prometheus metrics of one app: stage latencies, batch sizes, queue depth, outcomes.

Each app owns its registry (tests build many apps in one process, and a registry shared
between them would mix their counts). `GET /metrics` renders it in the text exposition format.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Seconds, from 0.1 ms (a tokenizer call) to 5 s (a request stuck behind a long queue).
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075,
    0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
STAGES = ("queue", "tokenize", "encode", "retrieve", "total")

__all__ = ["CONTENT_TYPE", "STAGES", "ServiceMetrics"]


class ServiceMetrics:
    """The service's metrics, registered in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.stage_seconds = Histogram(
            "xc_stage_seconds",
            "Time a search request spent in each stage (total: arrival to answer).",
            ["stage", "model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_queries = Histogram(
            "xc_batch_queries",
            "Queries per model call gathered by the micro-batcher.",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "xc_queue_depth",
            "Queries admitted and waiting for a model call.",
            registry=self.registry,
        )
        self.requests = Counter(
            "xc_requests",
            "HTTP requests answered, by route and status code.",
            ["route", "status"],
            registry=self.registry,
        )
        self.cache_lookups = Counter(
            "xc_cache_lookups",
            "Result-cache lookups of a query's answer, by result (hit, miss).",
            ["result"],
            registry=self.registry,
        )
        self.cache_size = Gauge(
            "xc_cache_size",
            "What the result cache holds: entries, and bytes (estimated).",
            ["unit"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "xc_rejected",
            "Search requests refused at admission (429), by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.dropped = Counter(
            "xc_dropped",
            "Admitted search requests dropped before inference, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.reloads = Counter(
            "xc_reloads",
            "Bundle reloads attempted, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.model_info = Gauge(
            "xc_model_info",
            "The bundle being served (value 1; its identity in the labels).",
            ["bundle", "version", "models"],
            registry=self.registry,
        )

    def serving(self, bundle: str, version: str, models: list[str]) -> None:
        """Record which bundle answers from now on (the previous one's series is removed)."""
        self.model_info.clear()
        self.model_info.labels(bundle, version, ",".join(models)).set(1)

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)
