"""Why a product ranked where it did: the signals behind each result's score (`explain`).

Like a search engine's explain API: for every result, `signals` holds the raw values the model
read and `contributions` the parts its score is the sum of, so a search engineer can see which
signal carried a product. The parts are recomputed through the engine's own candidate path
(`SearchEngine.candidates`), with the same depth as the ranking, so they add up to the returned
score (to float32 rounding):

- ASTRA from its index alone: `astra` (the classifier score);
- ASTRA with the lexical ranker's formula: `astra` + `lexical` (λ·BM25 / the query's best);
- ASTRA with the learned ranker: one part per feature and `bias`, SHAP values (TreeSHAP, from
  LightGBM's `pred_contrib` on the bundle's copy of the ranker in LightGBM's own format);
- hybrid: (1 - w)·`astra` + (1 - w)·`lexical` + w·`mach`;
- MACH: `mach` (the summed bucket log-probabilities).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from service.ranking import Hit
from service.search.engine import SearchEngine
from service.search.ranker import FEATURES


def explain_hits(
    engine: SearchEngine,
    vectors: np.ndarray,
    queries: list[str],
    k: int,
    model: str,
    hits: list[list[Hit]],
) -> None:
    """Attach an explanation to each hit of each query (in place)."""
    if model == "mach":
        for row in hits:
            for hit in row:
                hit.explain = _explanation("mach", {"mach": hit.score}, {"mach": hit.score})
        return
    lexical = engine.lexical_weight > 0
    hybrid = model == "hybrid"
    if not lexical and not hybrid:
        for row in hits:
            for hit in row:
                hit.explain = _explanation("index", {"astra": hit.score}, {"astra": hit.score})
        return
    found, mach_scores = engine.candidates(vectors, queries, k, lexical, hybrid)
    wanted = [[hit.label for hit in row] for row in hits]
    columns = [
        [int(np.flatnonzero(found.labels[q] == label)[0]) for label in row]
        for q, row in enumerate(wanted)
    ]
    if lexical and not hybrid and engine.ranker is not None:
        _explain_ranked(engine, engine.features(found), columns, hits)
        return
    best = found.bm25.max(axis=1)
    term = engine.lexical_term(found) if lexical else None
    mach = engine.mach_term(found, mach_scores) if hybrid else None
    weighted = hybrid and engine.hybrid_weight > 0  # the engine's rule: w = 0 leaves MACH out
    share = 1.0 - engine.hybrid_weight if weighted else 1.0
    for q, row in enumerate(hits):
        for hit, column in zip(row, columns[q], strict=True):
            astra = float(found.astra[q, column])
            signals: dict[str, float] = {"astra": astra}
            parts = {"astra": share * astra}
            if term is not None:
                signals |= {"bm25": float(found.bm25[q, column]), "bm25_best": float(best[q])}
                parts["lexical"] = share * float(term[q, column])
            if mach is not None:
                signals["mach"] = float(mach[q, column])
                if weighted:
                    parts["mach"] = engine.hybrid_weight * float(mach[q, column])
            hit.explain = _explanation("hybrid" if hybrid else "formula", signals, parts)


def _explain_ranked(
    engine: SearchEngine, features: np.ndarray, columns: list[list[int]], hits: list[list[Hit]]
) -> None:
    """The learned ranker's features as signals, its SHAP values as contributions."""
    assert engine.ranker is not None
    for q, row in enumerate(hits):
        if not row:
            continue
        chosen = features[q, columns[q]]
        contributions = engine.ranker.contributions(chosen)
        for i, hit in enumerate(row):
            signals = dict(zip(FEATURES, chosen[i].tolist(), strict=True))
            parts = None
            if contributions is not None:
                parts = dict(zip((*FEATURES, "bias"), contributions[i].tolist(), strict=True))
            hit.explain = _explanation("learned ranker", signals, parts)


def _explanation(
    ranked_by: str, signals: dict[str, float], parts: dict[str, float] | None
) -> dict[str, Any]:
    """The `explain` object of one result: what ranked it (index, formula, learned ranker,
    hybrid or mach), its signals and, where known, the contributions that sum to its score."""
    out: dict[str, Any] = {"ranked_by": ranked_by, "signals": signals}
    if parts is not None:
        out["contributions"] = parts
    return out
