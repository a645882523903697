"""The loaded model behind the API: a verified bundle, its query encoder and its ANN index.

`SearchEngine.search` is blocking (ONNX Runtime and FAISS release the GIL); the app runs it off
the event loop. Evaluation uses the same object, so offline metrics measure what is served.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.bundle import Bundle, Manifest, load_bundle
from service.encoder import QueryEncoder
from service.retrieval import AnnIndex

log = logging.getLogger(__name__)

WARM_QUERIES = ["cordless drill", "white paint 1 gal", "led light bulb 60w", "garden hose"]


@dataclass(frozen=True)
class Hit:
    """One retrieved product."""

    label: int
    id: str
    title: str
    score: float


class SearchEngine:
    """Answers top-k queries for every model kind the bundle holds."""

    def __init__(self, bundle: Bundle, encoder: QueryEncoder, index: AnnIndex | None) -> None:
        self.bundle = bundle
        self.manifest: Manifest = bundle.manifest
        self.encoder = encoder
        self.index = index
        self.kinds: list[str] = list(self.manifest.kinds)
        self.default_model: str = self.manifest.default_model

    @classmethod
    def load(cls, bundle_dir: str | Path, threads: int = 0, device: str = "auto") -> SearchEngine:
        """Verify and load a bundle; raises `BundleError` naming the bad file."""
        bundle = load_bundle(bundle_dir)
        manifest = bundle.manifest
        encoder = QueryEncoder(bundle.path, manifest.encoder, threads=threads, device=device)
        index = None
        if manifest.astra:
            spec = manifest.astra.index
            index = AnnIndex.read(
                bundle.file(spec.file), spec, manifest.labels.count, manifest.encoder.dim
            )
        log.info(
            "bundle loaded",
            extra={
                "bundle": manifest.name,
                "version": manifest.version,
                "kinds": manifest.kinds,
                "labels": manifest.labels.count,
                "encoder_providers": encoder.providers,
                "index": manifest.astra.index.type if manifest.astra else None,
            },
        )
        return cls(bundle, encoder, index)

    def warm(self) -> None:
        """Run a few queries through every model so the first request pays no start-up cost."""
        for model in self.kinds:
            self.search(WARM_QUERIES, k=10, model=model)
            self.search(WARM_QUERIES[:1], k=10, model=model)

    def resolve_model(self, model: str | None) -> str:
        """The model that answers a request; ValueError names the field when it is absent."""
        chosen = model or self.default_model
        if chosen not in self.kinds:
            available = ", ".join(self.kinds)
            raise ValueError(f"model: {chosen!r} is not in this bundle (available: {available})")
        return chosen

    def search_vectors(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """ASTRA retrieval for already-encoded queries -> (scores, label ids) [n, k]."""
        assert self.index is not None
        return self.index.search(vectors, k)

    def search(self, queries: list[str], k: int, model: str | None = None) -> list[list[Hit]]:
        """Top-k products for each query, best first."""
        self.resolve_model(model)
        scores, labels = self.search_vectors(self.encoder.encode(queries), k)
        titles, ids = self.bundle.label_titles, self.bundle.label_ids
        return [
            [
                Hit(int(label), ids[label], titles[label], float(score))
                for score, label in zip(row_scores, row_labels, strict=True)
                if label >= 0
            ]
            for row_scores, row_labels in zip(scores, labels, strict=True)
        ]
