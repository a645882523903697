"""Ranking primitives every model shares: the one top-k (and its merge of disjoint lists),
exact inner products, and `Hit`.

**The ranking rule.** Every ranked list the service produces (ASTRA, MACH's decoders, BM25,
hybrid, the catalog overlay) comes out of `top_k`: best score first and, between equal scores,
the lower label id first. Label -1 marks an empty slot; it never outranks a real label, and a
row with fewer than k real labels is padded with label -1 and score -inf, so every answer is
exactly [n, k]. One rule means one answer for one query, whichever path ranked it.

`Hit` is a ranked product, and `result_records` is the one conversion of hits into the answer
shape (`{"id", "title", "score"}`) that the HTTP API and the batch output files share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Queries whose candidates' vectors `inner_products` gathers at once.
GATHER_ROWS = 16


@dataclass(kw_only=True, slots=True)
class Hit:
    """One retrieved product. Never changed once made; not declared frozen because a frozen
    dataclass costs twice as much to make, and a 256-query answer at k = 100 makes 25,600."""

    label: int
    id: str
    title: str
    score: float
    explain: dict[str, Any] | None = None  # the signals behind `score`, when asked for


def result_records(hits: Sequence[Hit]) -> list[dict[str, Any]]:
    """Hits as the answer shape: `{"id", "title", "score"}` each (and `explain` where the
    request asked for it), best first."""
    return [
        {"id": hit.id, "title": hit.title, "score": hit.score}
        if hit.explain is None
        else {"id": hit.id, "title": hit.title, "score": hit.score, "explain": hit.explain}
        for hit in hits
    ]


def hits_of(
    ids: Sequence[str], titles: Sequence[str], scores: np.ndarray, labels: np.ndarray
) -> list[list[Hit]]:
    """Ranked (scores, labels) rows as products named by `ids` and `titles`; -1 is dropped."""
    # Plain Python numbers first: indexing numpy scalars one by one costs 3x more.
    return [
        [
            Hit(label=label, id=ids[label], title=titles[label], score=score)
            for score, label in zip(row_scores, row_labels, strict=True)
            if label >= 0
        ]
        for row_scores, row_labels in zip(scores.tolist(), labels.tolist(), strict=True)
    ]


def top_k(scores: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best (score, label) pairs of each row of [n, c], by the module's ranking rule.

    Returns (float32 [n, k], int64 [n, k]), best first. Labels < 0 are empty slots: they never
    win and come back as -1 with score -inf. A real label keeps its id whatever its score
    (MACH's zero-probability labels score -inf and still rank, after every finite score).

    A partial sort picks each row's k best; the rows where it had to choose among labels tied
    at the k-th score (it chooses arbitrarily) are sorted in full by the rule instead.
    """
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.ndim != 2 or scores.shape != labels.shape:
        raise ValueError(
            f"scores and labels: expected one [n, c] shape, got {scores.shape} and {labels.shape}"
        )
    n, c = scores.shape
    kk = min(k, c)
    empty = labels < 0
    keyed = scores
    if empty.any():
        keyed = np.where(empty, -np.inf, scores)
        labels = np.where(empty, -1, labels)  # any negative id is one empty slot
    out_scores = np.full((n, k), -np.inf, dtype=np.float32)
    out_labels = np.full((n, k), -1, dtype=np.int64)
    if n == 1:  # one query (each BM25 row, a single search): the same steps on 1-D arrays
        pick = _best_of_row(keyed[0], labels[0], kk)
        out_scores[0, :kk], out_labels[0, :kk] = keyed[0, pick], labels[0, pick]
        return out_scores, out_labels
    rows = np.arange(n)[:, None]
    if kk < c:
        pick = np.argpartition(-keyed, kk - 1, axis=1)[:, :kk]
        kth = keyed[rows, pick].min(axis=1)
        tied = np.flatnonzero(np.count_nonzero(keyed >= kth[:, None], axis=1) > kk)
    else:
        pick, tied = np.broadcast_to(np.arange(c), (n, c)), np.empty(0, np.intp)
    order = np.lexsort((labels[rows, pick], -keyed[rows, pick], empty[rows, pick]), axis=1)
    pick = pick[rows, order]
    if tied.size:
        full = np.lexsort((labels[tied], -keyed[tied], empty[tied]), axis=1)[:, :kk]
        pick = pick.copy()
        pick[tied] = full
    out_scores[:, :kk], out_labels[:, :kk] = keyed[rows, pick], labels[rows, pick]
    return out_scores, out_labels


def merge_top_k(
    ranked: Sequence[tuple[np.ndarray, np.ndarray]], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The k best of several ranked lists per row, by the ranking rule: each list is (scores,
    labels) [n, c_i] over the same n rows, and no label is in two lists (two indexes over
    disjoint products)."""
    scores = np.concatenate([found[0] for found in ranked], axis=1)
    return top_k(scores, np.concatenate([found[1] for found in ranked], axis=1), k)


def _best_of_row(keyed: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Positions of one row's k best (k <= its length), in the rule's order (empty slots, -1
    with score -inf, after every real label)."""
    if k < keyed.size:
        pick = np.argpartition(-keyed, k - 1)[:k]
        at_least = keyed >= keyed[pick].min()
        if np.count_nonzero(at_least) > k:
            # Ties at the k-th score: every label scoring at least that competes, by the rule.
            pick = np.flatnonzero(at_least)
    else:
        pick = np.arange(keyed.size)
    picked = labels[pick]
    return pick[np.lexsort((picked, -keyed[pick], picked < 0))][:k]


def unique_per_row(labels: np.ndarray) -> np.ndarray:
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
