"""The catalog an engine ranks over, as the engine sees it: a small protocol and its plain case.

The engine retrieves, rescores and names products only through a `CatalogSnapshot`, so it
knows nothing of how catalog changes are stored or applied. `AS_BUILT` is the bundle's own
products, unchanged: what offline evaluation and the batch CLI rank over. The service binds
`service.catalog.view.CatalogView` instead, a snapshot with the products added, retitled and
deleted through `PUT/DELETE /products` laid over the bundle's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from service.astra.index import AnnIndex
from service.astra.lexical import LexicalIndex, Matches
from service.mach.exact import MachScores
from service.mach.model import MachModel
from service.ranking import Hit, hits_of, inner_products

Ranked = tuple[np.ndarray, np.ndarray]  # (scores, labels) [n, k], best first


class CatalogSnapshot(Protocol):
    """What the engine asks of the catalog it ranks over (see `AsBuilt` for each method)."""

    def served_version(self, bundle_version: str) -> str: ...

    def astra_top(
        self, index: AnnIndex, vectors: np.ndarray, k: int, effort: float = 1.0
    ) -> Ranked: ...

    def mach_top(self, mach: MachModel, scores: MachScores, k: int) -> Ranked: ...

    def lexical_top(self, matches: list[Matches], k: int) -> Ranked: ...

    def astra_scores(
        self, classifiers: np.ndarray, vectors: np.ndarray, labels: np.ndarray
    ) -> np.ndarray: ...

    def lexical_scores(
        self, lexical: LexicalIndex, matches: list[Matches], labels: np.ndarray
    ) -> np.ndarray: ...

    def mach_labels(self, labels: np.ndarray) -> np.ndarray: ...

    def title_rows(
        self, lexical: LexicalIndex, labels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def hits(
        self, ids: Sequence[str], titles: Sequence[str], scores: np.ndarray, labels: np.ndarray
    ) -> list[list[Hit]]: ...

    def notice(self, model: str, models: Sequence[str]) -> str | None: ...


class AsBuilt:
    """The bundle's products exactly as trained: every method is the model's own."""

    def served_version(self, bundle_version: str) -> str:
        """What answers carry: the bundle version."""
        return bundle_version

    def astra_top(
        self, index: AnnIndex, vectors: np.ndarray, k: int, effort: float = 1.0
    ) -> Ranked:
        """ASTRA's top-k from the index (`effort`: as `AnnIndex.search`)."""
        return index.search(vectors, k, effort)

    def mach_top(self, mach: MachModel, scores: MachScores, k: int) -> Ranked:
        """MACH's top-k, decoded from the heads' scores."""
        return mach.decode(scores, k)

    def lexical_top(self, matches: list[Matches], k: int) -> Ranked:
        """BM25's top-k over the titles."""
        return LexicalIndex.top(matches, k)

    def astra_scores(
        self, classifiers: np.ndarray, vectors: np.ndarray, labels: np.ndarray
    ) -> np.ndarray:
        """ASTRA's exact inner products [n, c] of queries with labels (>= 0)."""
        return inner_products(vectors, classifiers, labels)

    def lexical_scores(
        self, lexical: LexicalIndex, matches: list[Matches], labels: np.ndarray
    ) -> np.ndarray:
        """BM25 scores [n, c] of queries with labels (>= 0)."""
        return LexicalIndex.pair_scores(matches, labels)

    def title_rows(
        self, lexical: LexicalIndex, labels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Labels' (>= 0) title terms as postings rows (`LexicalIndex.rows_of_titles`)."""
        return lexical.rows_of_titles(labels)

    def mach_labels(self, labels: np.ndarray) -> np.ndarray:
        """The labels MACH scores in their place: themselves."""
        return labels

    def hits(
        self, ids: Sequence[str], titles: Sequence[str], scores: np.ndarray, labels: np.ndarray
    ) -> list[list[Hit]]:
        """Ranked rows as the bundle's products."""
        return hits_of(ids, titles, scores, labels)

    def notice(self, model: str, models: Sequence[str]) -> str | None:
        """Nothing to say: every model ranks every product."""
        return None


AS_BUILT = AsBuilt()
