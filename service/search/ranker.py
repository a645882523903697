"""The learned ranker: LambdaMART over every signal the retrievers already produce.

ASTRA with its lexical ranker ranks the union of the ANN index's and BM25's candidates by one
hand-shaped formula, cosine + λ·bm25/max (`service.search.engine`). A bundle may instead carry a
gradient-boosted ranker (LightGBM's `lambdarank`, trained by `python -m training ranker` on the
dev split's graded pairs; `training.ranker`), exported to ONNX and scored here by ONNX Runtime
(0.08 ms for 130 candidates against LightGBM's own 0.14 ms), from `FEATURES`:

- the scores: ASTRA's classifier score and its gap to the query's best, BM25 and its share of
  the query's best, each candidate's rank under both, and which retriever proposed it;
- term matching: how many of the query's distinct terms the title holds, that count over the
  query's terms and weighted by idf, how many of them are numbers (sizes, model numbers), the
  query's and the title's term counts;
- popularity: log(1 + the training queries the product is relevant to; 0 for new products).

`candidate_features` is the one place these are computed, for training and for serving alike.
The formula stays the fallback (`XC_RANKER=off`, or a bundle without a ranker).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.astra.lexical import LexicalIndex, Matches
from service.bundle import BundleError, RankerSpec
from service.device import open_session
from service.search.snapshot import CatalogSnapshot

FEATURES = (
    "astra",
    "astra_gap",
    "bm25",
    "bm25_share",
    "from_index",
    "from_lexical",
    "astra_rank",
    "bm25_rank",
    "popularity",
    "terms_matched",
    "term_coverage",
    "idf_coverage",
    "query_terms",
    "title_terms",
    "numbers_matched",
    "query_numbers",
)


@dataclass(frozen=True)
class Candidates:
    """One batch's fused candidates and their signals, before anything ranks them.

    `labels` int64 [n, c] (-1 pads a row), `astra` and `bm25` float32 [n, c] their exact
    scores, `from_index` / `from_lexical` bool [n, c] which retriever proposed each, `matches`
    each query's BM25 matches (its terms as postings rows).
    """

    labels: np.ndarray
    astra: np.ndarray
    bm25: np.ndarray
    from_index: np.ndarray
    from_lexical: np.ndarray
    matches: list[Matches]


def _ranks(scores: np.ndarray) -> np.ndarray:
    """0 for each row's best score, 1 for the next, ... (float32 [n, c])."""
    return np.argsort(np.argsort(-scores, axis=1, kind="stable"), axis=1).astype(np.float32)


def candidate_features(
    found: Candidates,
    lexical: LexicalIndex,
    catalog: CatalogSnapshot,
    popularity: np.ndarray,
) -> np.ndarray:
    """`FEATURES` float32 [n, c, F] of each candidate (padding rows are zeros)."""
    labels = found.labels
    n, c = labels.shape
    valid = labels >= 0
    safe = np.maximum(labels, 0)
    astra = np.where(valid, found.astra, -np.inf)
    best_astra = astra.max(axis=1, keepdims=True)
    best_bm25 = found.bm25.max(axis=1, keepdims=True)
    out = np.zeros((n, c, len(FEATURES)), np.float32)
    out[..., 0] = found.astra
    out[..., 1] = found.astra - np.where(np.isfinite(best_astra), best_astra, 0.0)
    out[..., 2] = found.bm25
    out[..., 3] = found.bm25 / np.where(best_bm25 > 0, best_bm25, 1.0)
    out[..., 4] = found.from_index
    out[..., 5] = found.from_lexical
    out[..., 6] = _ranks(astra)
    out[..., 7] = _ranks(np.where(valid, found.bm25, -np.inf))
    known = safe < len(popularity)  # products added since the bundle: no training queries
    out[..., 8] = np.where(known, popularity[np.minimum(safe, len(popularity) - 1)], 0.0)
    for i in range(n):
        out[i, :, 9:] = _term_features(found.matches[i].rows, lexical, catalog, safe[i])
    out[~valid] = 0.0
    return out


def _term_features(
    query_rows: np.ndarray, lexical: LexicalIndex, catalog: CatalogSnapshot, labels: np.ndarray
) -> np.ndarray:
    """terms_matched .. query_numbers [c, 7] of one query's candidate labels."""
    terms = np.unique(query_rows)
    counts, title_rows = catalog.title_rows(lexical, labels)
    hit = np.isin(title_rows, terms)
    owner = np.repeat(np.arange(len(labels)), counts)
    matched = np.bincount(owner, weights=hit, minlength=len(labels))
    idf = lexical.idf[title_rows] * hit
    idf_matched = np.bincount(owner, weights=idf, minlength=len(labels))
    numbers = np.bincount(owner, weights=hit & lexical.numeric[title_rows], minlength=len(labels))
    query_terms = len(terms)
    idf_total = float(lexical.idf[terms].sum()) if query_terms else 0.0
    out = np.empty((len(labels), 7), np.float32)
    out[:, 0] = matched
    out[:, 1] = matched / max(query_terms, 1)
    out[:, 2] = idf_matched / idf_total if idf_total > 0 else 0.0
    out[:, 3] = query_terms
    out[:, 4] = counts
    out[:, 5] = numbers
    out[:, 6] = int(lexical.numeric[terms].sum()) if query_terms else 0
    return out


RANKER_INPUT = "features"


class LearnedRanker:
    """A bundle's ranker (ONNX) and the per-product popularity it reads."""

    def __init__(self, bundle_dir: Path, spec: RankerSpec, num_labels: int) -> None:
        if tuple(spec.features) != FEATURES:
            raise BundleError(
                f"manifest astra.ranker.features {spec.features} are not the features this "
                f"service computes {list(FEATURES)}; retrain it with `python -m training ranker`"
            )
        path = bundle_dir / spec.file
        self.session = open_session(path, threads=1)  # BundleError names a file it cannot load
        inputs = self.session.get_inputs()
        if [node.name for node in inputs] != [RANKER_INPUT] or inputs[0].shape[1] != len(FEATURES):
            raise BundleError(f"{path}: expected one input {RANKER_INPUT!r} [n, {len(FEATURES)}]")
        popularity = np.load(bundle_dir / spec.popularity, allow_pickle=False)
        if popularity.shape != (num_labels,) or popularity.dtype != np.float32:
            raise BundleError(
                f"{bundle_dir / spec.popularity}: expected float32 [{num_labels}], "
                f"got {popularity.dtype} {popularity.shape}"
            )
        self.spec = spec
        self.popularity = popularity
        self._bundle_dir = bundle_dir
        self._explainer: object | None = None  # LightGBM's booster, loaded on the first explain
        self._lock = threading.Lock()

    def contributions(self, features: np.ndarray) -> np.ndarray | None:
        """SHAP values [m, F + 1] (each feature's, then the bias) of candidates `features`
        [m, F], which add up to their scores; None where the bundle has no LightGBM copy."""
        if self.spec.explain_file is None:
            return None
        with self._lock:
            if self._explainer is None:
                import lightgbm  # only for explanations: scoring runs on ONNX Runtime

                path = self._bundle_dir / self.spec.explain_file
                self._explainer = lightgbm.Booster(model_file=str(path))
        booster = self._explainer
        return np.asarray(booster.predict(features, pred_contrib=True), np.float64)  # type: ignore[attr-defined]

    def score(self, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """The ranker's scores float32 [n, c] of candidates `features` [n, c, F]; -inf pads."""
        n, c, width = features.shape
        (flat,) = self.session.run(None, {RANKER_INPUT: features.reshape(n * c, width)})
        return np.where(labels >= 0, flat.reshape(n, c), -np.inf).astype(np.float32)
