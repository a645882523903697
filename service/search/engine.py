"""The loaded model behind the API: a verified bundle, its query encoder, ASTRA and MACH.

`SearchEngine.rank` is blocking (ONNX Runtime and FAISS release the GIL); the service runs it
off the event loop, through `service.search.pipeline`. Evaluation uses the same object, so
offline metrics measure what is served.

ASTRA with a lexical ranker (a bundle whose ASTRA section has `lexical`, weight λ > 0) ranks the
union of the ANN index's candidates and BM25's (`service.astra.lexical`) by cosine + λ·bm25 / max,
where max is the query's best BM25 score among them: the BM25 term lies in [0, λ] whatever the
query's length. Hybrid fuses ASTRA and MACH over the union of their candidates (and BM25's):
each candidate gets both exact scores, ASTRA's (a cosine in [-1, 1], plus the lexical term) and
MACH's mean bucket log-probability over the R repetitions (in (-inf, 0]), and is ranked by
(1 - w)·astra + w·mach. Every list is cut by `service.ranking.top_k`.

`catalog` is the catalog the engine ranks over (`service.search.snapshot`): the bundle's products
as built, or, in the service, a snapshot with the changes made through the API since; each
model's retrieval and the titles of its results go through it.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from service.astra.index import AnnIndex
from service.astra.lexical import LexicalIndex, Matches
from service.bundle import Bundle, BundleError, Manifest, load_bundle
from service.device import NO_GPU, DevicePlan, cupy_module, plan_devices, resolve_device
from service.mach.exact import MachScores
from service.mach.model import MachModel
from service.ranking import Hit, top_k, unique_per_row
from service.search.encoder import QueryEncoder
from service.search.ranker import Candidates, LearnedRanker, candidate_features
from service.search.snapshot import AS_BUILT, CatalogSnapshot

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


class SearchEngine:
    """Answers top-k queries for every model the bundle holds (`models`: its kinds, plus hybrid
    when it holds both)."""

    def __init__(
        self,
        *,
        bundle: Bundle,
        encoder: QueryEncoder,
        index: AnnIndex | None = None,
        lexical: LexicalIndex | None = None,
        mach: MachModel | None = None,
        ranker: LearnedRanker | None = None,
        hybrid_weight: float | None = None,
        lexical_weight: float | None = None,
        devices: DevicePlan | None = None,
    ) -> None:
        self.bundle = bundle
        self.devices = devices or plan_devices("cpu", NO_GPU)
        self.manifest: Manifest = bundle.manifest
        self.encoder = encoder
        self.index = index
        self.mach = mach
        self.models: list[str] = self.manifest.models
        self.default_model: str = self.manifest.default_model
        if hybrid_weight is None and self.manifest.mach is not None:
            hybrid_weight = self.manifest.mach.hybrid_weight
        self.hybrid_weight = 0.5 if hybrid_weight is None else hybrid_weight
        self.lexical = lexical
        lexical_spec = self.manifest.astra.lexical if self.manifest.astra else None
        if lexical_weight is None:
            lexical_weight = lexical_spec.weight if lexical_spec else 0.0
        self.lexical_weight = lexical_weight if self.lexical is not None else 0.0
        # The learned ranker ranks the lexical ranker's candidates in the formula's place.
        self.ranker = ranker if self.lexical_weight > 0 else None
        self.catalog: CatalogSnapshot = AS_BUILT

    def with_catalog(self, catalog: CatalogSnapshot) -> SearchEngine:
        """A copy of this engine answering over `catalog`; the models are shared, not copied."""
        engine = copy.copy(self)
        engine.catalog = catalog
        return engine

    @property
    def version(self) -> str:
        """What answers carry: the bundle version, `+c<n>` after n catalog changes."""
        return self.catalog.served_version(self.manifest.version)

    @classmethod
    def load(
        cls,
        bundle_dir: str | Path,
        *,
        threads: int = 0,
        device: str = "auto",
        hybrid_weight: float | None = None,
        precision: str = "fp32",
        lexical_weight: float | None = None,
        mach_precision: str = "auto",
        encoder_size: str = "full",
        ranker: str = "auto",
    ) -> SearchEngine:
        """Verify and load a bundle; raises `BundleError` naming the bad file.

        `device` (auto | cpu | cuda) places each part (see `service.device`); `encoder_size`
        picks the query encoder: full, the bundle's optional student with fewer layers, or auto
        (the student where the bundle's check says it costs at most 0.005 nDCG@10);
        `precision` picks fp32, the encoder's optional int8 copy, or auto (int8 where the
        bundle's check says it costs nothing; `mach_precision` picks fp32 or int8 heads, or auto:
        int8 where they are rescored exactly and large, see `service.mach.model`). The
        weights default to the bundle's; `lexical_weight=0` serves ASTRA from its index alone.
        `ranker` on ranks the lexical ranker's candidates with the bundle's learned ranker
        (`service.search.ranker`), off with the formula, auto with the ranker where its
        cross-validated dev nDCG@10 beat the formula's.
        """
        bundle = load_bundle(bundle_dir)
        manifest = bundle.manifest
        plan = resolve_device(device)
        providers = plan.encoder_providers
        encoder = _query_encoder(bundle, encoder_size, precision, threads, providers)
        index = lexical = mach = learned = None
        if manifest.astra:
            index, lexical, learned = _astra_parts(bundle, plan, ranker)
        if manifest.mach:
            mach = MachModel(
                bundle_dir=bundle.path,
                spec=manifest.mach,
                num_labels=manifest.labels.count,
                idf=bundle.mach_idf,
                threads=threads,
                providers=providers,
                xp=cupy_module() if plan.cupy_gpu else None,
                precision=mach_precision,
            )
        log.info(
            "bundle loaded",
            extra={
                "bundle": manifest.name,
                "version": manifest.version,
                "kinds": manifest.kinds,
                "labels": manifest.labels.count,
                "encoder_providers": encoder.providers,
                "encoder_precision": encoder.precision,
                "encoder_size": encoder.size,
                "mach_precision": mach.precision if mach else None,
                "index": index.device_kind if index else None,
                "mach_decode": plan.describe()["mach_decode"] if mach else None,
                "lexical": lexical is not None,
                "ranker": learned is not None,
            },
        )
        return cls(
            bundle=bundle,
            encoder=encoder,
            index=index,
            lexical=lexical,
            mach=mach,
            ranker=learned,
            hybrid_weight=hybrid_weight,
            lexical_weight=lexical_weight,
            devices=plan,
        )

    def warm(self) -> None:
        """Run a few queries through every model so the first request pays no start-up cost."""
        for model in self.models:
            self.search(WARM_QUERIES, k=10, model=model)
            self.search(WARM_QUERIES[:1], k=10, model=model)

    def resolve_model(self, model: str | None) -> str:
        """The model that answers a request; ValueError names the field when it is absent."""
        chosen = model or self.default_model
        if chosen not in self.models:
            available = ", ".join(self.models)
            raise ValueError(f"model: {chosen!r} is not in this bundle (available: {available})")
        return chosen

    def search(self, queries: list[str], k: int, model: str | None = None) -> list[list[Hit]]:
        """Top-k products for each query, best first."""
        return self.hits(*self.rank(queries, k, model))

    def rank(
        self, queries: list[str], k: int, model: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, label ids) [n, k] of one model; label -1 pads a short row."""
        return self.rank_encoded(self.encoder.encode(queries), queries, k, model)

    def rank_encoded(
        self, vectors: np.ndarray, queries: list[str], k: int, model: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """`rank` for queries already embedded by `self.encoder` (the pipeline encodes once)."""
        chosen = self.resolve_model(model)
        if chosen == "mach":
            assert self.mach is not None
            return self.catalog.mach_top(self.mach, self.mach.scores(vectors, queries), k)
        lexical = self.lexical_weight > 0
        if chosen == "astra" and not lexical:
            assert self.index is not None
            return self.catalog.astra_top(self.index, vectors, k)
        return self._fused(vectors, queries, k, lexical, chosen == "hybrid")

    def hits(self, scores: np.ndarray, labels: np.ndarray) -> list[list[Hit]]:
        """Ranked (scores, label ids) rows as products; -1 padding is dropped."""
        return self.catalog.hits(self.bundle.label_ids, self.bundle.label_titles, scores, labels)

    def _fused(
        self, vectors: np.ndarray, queries: list[str], k: int, lexical: bool, hybrid: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """ASTRA with its lexical ranker, or hybrid (with or without it): every retriever's
        candidates, each ranked by the exact fused score (see the module docstring), or by
        the learned ranker for ASTRA with the lexical ranker."""
        assert self.bundle.classifiers is not None
        found, mach_scores = self.candidates(vectors, queries, k, lexical, hybrid)
        labels, scores = found.labels, found.astra
        if lexical and not hybrid and self.ranker is not None:
            return top_k(self.ranker.score(self.features(found), labels), labels, k)
        if lexical:
            scores = self.lexical_formula(found)
        if hybrid and self.hybrid_weight > 0:  # at w = 0, 0·(-inf) would be nan, not 0
            mach = self.mach_term(found, mach_scores)
            scores = (1.0 - self.hybrid_weight) * scores + self.hybrid_weight * mach
        # A candidate MACH rules out (score -inf) is dropped, not ranked last.
        return top_k(scores, np.where(np.isfinite(scores), labels, -1), k)

    def candidates(
        self, vectors: np.ndarray, queries: list[str], k: int, lexical: bool, hybrid: bool
    ) -> tuple[Candidates, MachScores | None]:
        """The union of every retriever's candidates with their exact ASTRA and BM25 scores
        (and MACH's outputs, for hybrid): what the formula and the learned ranker rank."""
        assert self.index is not None and self.bundle.classifiers is not None
        catalog = self.catalog
        depth = max(k, FUSION_CANDIDATES)
        matches: list[Matches] = []
        if lexical:
            assert self.lexical is not None
            matches = self.lexical.match(queries)
            ann_depth = max(k, LEXICAL_ANN_CANDIDATES)
            pools = [
                catalog.astra_top(self.index, vectors, ann_depth, LEXICAL_ANN_EFFORT)[1],
                catalog.lexical_top(matches, depth)[1],
            ]
        else:
            pools = [catalog.astra_top(self.index, vectors, depth)[1]]
        mach_scores = None
        if hybrid:
            assert self.mach is not None
            mach_scores = self.mach.scores(vectors, queries)
            pools.append(catalog.mach_top(self.mach, mach_scores, depth)[1])
        labels = unique_per_row(np.concatenate(pools, axis=1))
        safe = np.maximum(labels, 0)
        bm25 = np.zeros(labels.shape, np.float32)
        if lexical:
            bm25 = np.where(labels >= 0, catalog.lexical_scores(self.lexical, matches, safe), 0.0)
        found = Candidates(
            labels=labels,
            astra=catalog.astra_scores(self.bundle.classifiers, vectors, safe),
            bm25=bm25.astype(np.float32),
            from_index=_member_of(labels, pools[0]),
            from_lexical=_member_of(labels, pools[1]) if lexical else np.zeros(labels.shape, bool),
            matches=matches,
        )
        return found, mach_scores

    def lexical_term(self, found: Candidates) -> np.ndarray:
        """The lexical ranker's term of each candidate: λ·bm25 / the query's best BM25."""
        best = found.bm25.max(axis=1, keepdims=True)
        return self.lexical_weight * found.bm25 / np.where(best > 0, best, 1.0)

    def lexical_formula(self, found: Candidates) -> np.ndarray:
        """The lexical ranker's formula: cosine + `lexical_term`."""
        return found.astra + self.lexical_term(found)

    def mach_term(self, found: Candidates, mach_scores: MachScores | None) -> np.ndarray:
        """MACH's score of each candidate in the hybrid: its mean bucket log-probability over
        the R repetitions (a new product scored as its anchor)."""
        assert self.mach is not None and mach_scores is not None
        labels = self.catalog.mach_labels(np.maximum(found.labels, 0))
        return self.mach.rescore(mach_scores, labels) / self.mach.spec.reps

    def features(self, found: Candidates, popularity: np.ndarray | None = None) -> np.ndarray:
        """The learned ranker's features of `found` (`service.search.ranker`), with the
        served ranker's popularity unless one is given (training has no ranker yet)."""
        assert self.lexical is not None
        if popularity is None:
            assert self.ranker is not None
            popularity = self.ranker.popularity
        return candidate_features(found, self.lexical, self.catalog, popularity)


def _member_of(labels: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """Whether each label [n, c] (>= 0) is in its row of `pool` [n, p]: bool [n, c]."""
    return np.stack([np.isin(row, got) for row, got in zip(labels, pool, strict=True)]) & (
        labels >= 0
    )


def _astra_parts(
    bundle: Bundle, plan: DevicePlan, ranker: str
) -> tuple[AnnIndex, LexicalIndex | None, LearnedRanker | None]:
    """ASTRA's index (on the GPU where the plan puts it), its lexical ranker and the learned
    ranker `ranker` (auto | on | off) asks for."""
    manifest = bundle.manifest
    assert manifest.astra is not None
    spec = manifest.astra.index
    index = AnnIndex.read(bundle.file(spec.file), spec, manifest.labels.count, manifest.encoder.dim)
    if plan.faiss_gpu:
        index.to_gpu()
    lexical = None
    if manifest.astra.lexical:
        lexical = LexicalIndex.read(bundle.path, manifest.astra.lexical, manifest.labels.count)
    return index, lexical, _learned_ranker(bundle, lexical, ranker)


def _learned_ranker(
    bundle: Bundle, lexical: LexicalIndex | None, setting: str
) -> LearnedRanker | None:
    """The bundle's learned ranker as `setting` (auto | on | off) asks; on without one is
    refused, naming the setting."""
    assert bundle.manifest.astra is not None
    spec = bundle.manifest.astra.ranker
    if setting == "on" and spec is None:
        raise BundleError(
            "this bundle has no learned ranker (`python -m training ranker`); "
            "serve with XC_RANKER=auto or off"
        )
    if spec is None or setting == "off" or (setting == "auto" and not spec.beats_formula):
        return None
    if lexical is None:
        raise BundleError("manifest astra.ranker needs astra.lexical (the candidates it ranks)")
    return LearnedRanker(bundle.path, spec, bundle.manifest.labels.count)


def _query_encoder(
    bundle: Bundle, size: str, precision: str, threads: int, providers: Sequence[str]
) -> QueryEncoder:
    """The bundle's query encoder of `size` at `precision`, `auto` resolved by the bundle's
    checks: the student where it costs little (`StudentCheck`), int8 where it costs nothing
    (`Int8Check`, of the encoder chosen)."""
    if size == "auto":
        size = bundle.manifest.encoder.default_size
    spec = bundle.manifest.encoder.sized(size)
    if precision == "auto":
        precision = spec.default_precision
    return QueryEncoder(
        bundle_dir=bundle.path,
        spec=spec,
        threads=threads,
        providers=providers,
        precision=precision,
        size=size,
    )
