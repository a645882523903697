"""The loaded model behind the API: a verified bundle, its query encoder, ASTRA and MACH.

`SearchEngine.search` is blocking (ONNX Runtime and FAISS release the GIL); the app runs it off
the event loop. Evaluation uses the same object, so offline metrics measure what is served.

ASTRA with a lexical ranker (a bundle whose ASTRA section has `lexical`, weight λ > 0) ranks the
union of the ANN index's candidates and BM25's (`service.lexical`) by cosine + λ·bm25 / max, where
max is the query's best BM25 score among them: the BM25 term lies in [0, λ] whatever the query's
length. Hybrid fuses ASTRA and MACH over the union of their candidates (and BM25's): each
candidate gets both exact scores, ASTRA's (a cosine in [-1, 1], plus the lexical term) and
MACH's mean bucket log-probability over the R repetitions (in (-inf, 0]), and is ranked by
(1 - w)·astra + w·mach.

`catalog` (None outside the service) is a snapshot of the products added, retitled or deleted
through the API since the bundle was built (`service.catalog`); when set, each model's
retrieval and the titles of its results go through it.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from service.bundle import Bundle, Manifest, load_bundle
from service.device import NO_GPU, DevicePlan, cupy_module, plan_devices, resolve_device
from service.encoder import QueryEncoder
from service.lexical import LexicalIndex, Matches
from service.mach import MachModel
from service.retrieval import AnnIndex

if TYPE_CHECKING:
    from service.catalog import CatalogView

log = logging.getLogger(__name__)

WARM_QUERIES = ["cordless drill", "white paint 1 gal", "led light bulb 60w", "garden hose"]
# Candidates each retriever (ANN index, BM25, MACH) contributes to a fused ranking (or k, when
# k is larger).
FUSION_CANDIDATES = 100
# Beside BM25 the index only proposes candidates, each rescored exactly: it is read shallower and
# with a quarter of its HNSW search effort (Home Depot dev: nDCG@10 0.4384 against 0.4394 for
# 100 candidates at full effort, at half the retrieval time; docs/TUNING.md).
LEXICAL_ANN_CANDIDATES = 30
LEXICAL_ANN_EFFORT = 0.25
# Queries whose candidates' vectors `inner_products` gathers at once.
GATHER_ROWS = 16


def _unique_per_row(labels: np.ndarray) -> np.ndarray:
    """Each row's labels with repeats (and -1 padding) replaced by -1, order not kept."""
    ordered = np.sort(labels, axis=1)
    repeat = np.zeros_like(ordered, dtype=bool)
    repeat[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    return np.where(repeat | (ordered < 0), -1, ordered)


def inner_products(vectors: np.ndarray, matrix: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """vectors[i] · matrix[labels[i, j]] for every (i, j): [n, c].

    Gathers the rows a few queries at a time, so the gathered block stays in cache instead of
    materialising [n, c, d] (200 MB for 1,024 queries × 130 candidates × 384 floats).
    """
    scores = np.empty(labels.shape, dtype=np.float32)
    for start in range(0, len(labels), GATHER_ROWS):
        stop = start + GATHER_ROWS
        block = matrix[labels[start:stop]]
        scores[start:stop] = np.einsum("nd,ncd->nc", vectors[start:stop], block)
    return scores


def top_k(scores: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best (score, label) pairs of each row, best first; -1 labels never win."""
    scores = np.where(labels >= 0, scores, -np.inf)
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(-scores, part, axis=1).argsort(axis=1, kind="stable")
    best = np.take_along_axis(part, order, axis=1)
    out_scores = np.take_along_axis(scores, best, axis=1).astype(np.float32)
    out_labels = np.where(np.isfinite(out_scores), np.take_along_axis(labels, best, axis=1), -1)
    return out_scores, out_labels.astype(np.int64)


@dataclass(frozen=True)
class Hit:
    """One retrieved product."""

    label: int
    id: str
    title: str
    score: float


class SearchEngine:
    """Answers top-k queries for every model kind the bundle holds."""

    def __init__(
        self,
        bundle: Bundle,
        encoder: QueryEncoder,
        index: AnnIndex | None,
        mach: MachModel | None = None,
        hybrid_weight: float | None = None,
        devices: DevicePlan | None = None,
        lexical_weight: float | None = None,
    ) -> None:
        self.bundle = bundle
        self.devices = devices or plan_devices("cpu", NO_GPU)
        self.manifest: Manifest = bundle.manifest
        self.encoder = encoder
        self.index = index
        self.mach = mach
        self.kinds: list[str] = self.manifest.models
        self.default_model: str = self.manifest.default_model
        if hybrid_weight is None and self.manifest.mach is not None:
            hybrid_weight = self.manifest.mach.hybrid_weight
        self.hybrid_weight = 0.5 if hybrid_weight is None else hybrid_weight
        self.lexical = bundle.lexical
        lexical_spec = self.manifest.astra.lexical if self.manifest.astra else None
        if lexical_weight is None:
            lexical_weight = lexical_spec.weight if lexical_spec else 0.0
        self.lexical_weight = lexical_weight if self.lexical is not None else 0.0
        self.catalog: CatalogView | None = None

    def with_catalog(self, catalog: CatalogView) -> SearchEngine:
        """A copy of this engine answering over `catalog`; the models are shared, not copied."""
        engine = copy.copy(self)
        engine.catalog = catalog
        return engine

    @property
    def version(self) -> str:
        """What answers carry: the bundle version, `+c<n>` after n catalog changes."""
        version = self.manifest.version
        return version if self.catalog is None else self.catalog.served_version(version)

    @classmethod
    def load(
        cls,
        bundle_dir: str | Path,
        threads: int = 0,
        device: str = "auto",
        hybrid_weight: float | None = None,
        precision: str = "fp32",
        lexical_weight: float | None = None,
    ) -> SearchEngine:
        """Verify and load a bundle; raises `BundleError` naming the bad file.

        `device` (auto | cpu | cuda) places each part (see `service.device`); `precision` picks
        the query encoder: fp32, or the bundle's optional int8 copy. The weights default to the
        bundle's; `lexical_weight=0` serves ASTRA from its index alone.
        """
        bundle = load_bundle(bundle_dir)
        manifest = bundle.manifest
        plan = resolve_device(device)
        providers = plan.encoder_providers
        encoder = QueryEncoder(bundle.path, manifest.encoder, threads, providers, precision)
        index = None
        if manifest.astra:
            spec = manifest.astra.index
            index = AnnIndex.read(
                bundle.file(spec.file), spec, manifest.labels.count, manifest.encoder.dim
            )
            if plan.faiss_gpu:
                index.to_gpu()
        mach = None
        if manifest.mach:
            xp = cupy_module() if plan.cupy_gpu else None
            mach = MachModel(
                bundle.path,
                manifest.mach,
                manifest.labels.count,
                bundle.mach_idf,
                threads,
                providers,
                xp,
            )
        log.info(
            "bundle loaded",
            extra={
                "bundle": manifest.name,
                "version": manifest.version,
                "kinds": manifest.kinds,
                "labels": manifest.labels.count,
                "encoder_providers": encoder.providers,
                "encoder_precision": precision,
                "index": index.device_kind if index else None,
                "mach_decode": plan.describe()["mach_decode"] if mach else None,
                "lexical": bundle.lexical is not None,
            },
        )
        return cls(bundle, encoder, index, mach, hybrid_weight, plan, lexical_weight)

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

    def rank(
        self, queries: list[str], k: int, model: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, label ids) [n, k] of one model; label -1 pads a short row."""
        return self.rank_encoded(self.encoder.encode(queries), queries, k, model)

    def rank_encoded(
        self, vectors: np.ndarray, queries: list[str], k: int, model: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """`rank` for queries already embedded by `self.encoder` (the batcher encodes once)."""
        chosen = self.resolve_model(model)
        if chosen == "mach":
            assert self.mach is not None
            return self._mach_top(self.mach.bucket_scores(vectors, queries), k)
        lexical = self.lexical_weight > 0
        if chosen == "astra" and not lexical:
            return self._astra_top(vectors, k)
        return self._fused(vectors, queries, k, lexical, chosen == "hybrid")

    # --- retrieval through the catalog snapshot, when there is one ----------------------------

    def _astra_top(
        self, vectors: np.ndarray, k: int, effort: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray]:
        assert self.index is not None
        if self.catalog is None:
            return self.index.search(vectors, k, effort)
        return self.catalog.astra_top(self.index, vectors, k, effort)

    def _mach_top(self, bucket_scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        assert self.mach is not None
        if self.catalog is None:
            return self.mach.decode(bucket_scores, k)
        return self.catalog.mach_top(self.mach, bucket_scores, k)

    def _astra_scores(self, vectors: np.ndarray, labels: np.ndarray) -> np.ndarray:
        classifiers = self.bundle.classifiers
        assert classifiers is not None
        if self.catalog is None:
            return inner_products(vectors, classifiers, labels)
        return self.catalog.astra_scores(classifiers, vectors, labels)

    def _mach_labels(self, labels: np.ndarray) -> np.ndarray:
        return labels if self.catalog is None else self.catalog.mach_labels(labels)

    def _lexical_top(self, matches: list[Matches], k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.catalog is None:
            return LexicalIndex.top(matches, k)
        return self.catalog.lexical_top(matches, k)

    def _lexical_scores(self, matches: list[Matches], labels: np.ndarray) -> np.ndarray:
        if self.catalog is None:
            return LexicalIndex.pair_scores(matches, labels)
        assert self.lexical is not None
        return self.catalog.lexical_scores(self.lexical, matches, labels)

    def _fused(
        self, vectors: np.ndarray, queries: list[str], k: int, lexical: bool, hybrid: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """ASTRA with its lexical ranker, or hybrid (with or without it): every retriever's
        candidates, each ranked by the exact fused score (see the module docstring)."""
        assert self.index is not None and self.bundle.classifiers is not None
        depth = max(k, FUSION_CANDIDATES)
        if lexical:
            assert self.lexical is not None
            matches = self.lexical.match(queries)
            ann_depth = max(k, LEXICAL_ANN_CANDIDATES)
            pools = [
                self._astra_top(vectors, ann_depth, LEXICAL_ANN_EFFORT)[1],
                self._lexical_top(matches, depth)[1],
            ]
        else:
            pools = [self._astra_top(vectors, depth)[1]]
        if hybrid:
            assert self.mach is not None
            bucket_scores = self.mach.bucket_scores(vectors, queries)
            pools.append(self._mach_top(bucket_scores, depth)[1])
        labels = _unique_per_row(np.concatenate(pools, axis=1))
        safe = np.maximum(labels, 0)
        scores = self._astra_scores(vectors, safe)
        if lexical:
            bm25 = np.where(labels >= 0, self._lexical_scores(matches, safe), 0.0)
            best = bm25.max(axis=1, keepdims=True)
            scores = scores + self.lexical_weight * bm25 / np.where(best > 0, best, 1.0)
        if hybrid and self.hybrid_weight > 0:  # at w = 0, 0·(-inf) would be nan, not 0
            mach_scores = self.mach.decoder.rescore(bucket_scores, self._mach_labels(safe))
            mach = mach_scores / self.mach.spec.reps
            scores = (1.0 - self.hybrid_weight) * scores + self.hybrid_weight * mach
        return top_k(scores, labels, k)

    def search(self, queries: list[str], k: int, model: str | None = None) -> list[list[Hit]]:
        """Top-k products for each query, best first."""
        return self.hits(*self.rank(queries, k, model))

    def hits(self, scores: np.ndarray, labels: np.ndarray) -> list[list[Hit]]:
        """Ranked (scores, label ids) rows as products; -1 padding is dropped."""
        titles, ids = self.bundle.label_titles, self.bundle.label_ids
        if self.catalog is not None:
            return self.catalog.hits(ids, titles, scores, labels)
        return [
            [
                Hit(int(label), ids[label], titles[label], float(score))
                for score, label in zip(row_scores, row_labels, strict=True)
                if label >= 0
            ]
            for row_scores, row_labels in zip(scores, labels, strict=True)
        ]


def search_grouped(
    engine: SearchEngine, vectors: np.ndarray, texts: list[str], wants: list[tuple[str, int]]
) -> list[list[Hit]]:
    """Hits of each embedded text under its own (model, k), one retrieval per distinct pair.

    The batcher and the offline scorer both encode a mixed batch once and answer it with this.
    """
    hits: list[list[Hit]] = [[] for _ in texts]
    groups: dict[tuple[str, int], list[int]] = {}
    for row, want in enumerate(wants):
        groups.setdefault(want, []).append(row)
    for (model, k), rows in groups.items():
        ranked = engine.rank_encoded(vectors[rows], [texts[r] for r in rows], k, model)
        for row, found in zip(rows, engine.hits(*ranked), strict=True):
            hits[row] = found
    return hits
