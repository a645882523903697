"""One immutable snapshot of the catalog changes, as the engine's search reads it.

`CatalogView` implements `service.search.snapshot.CatalogSnapshot` over a bundle's products with
the changes made through the API (`service.catalog.overlay` builds it):

* A **new product** is searched in a side index (exact inner product over its title's
  embedding) whose top-k is merged with the main index's.
* A **trained product whose title changed** is hidden from ASTRA's main index and served from
  its new title's vector in the side index; MACH keeps the label and shows the new title.
* A **deleted product** is dropped from every model's results; the main index and MACH are
  read deeper to still return k products.
* **BM25** retrieves from the bundle's titles less hidden products; new and retitled products
  enter the ranking through the side index and are scored against their current title.
* **MACH** ranks only the labels it was trained on (answers say so, `notice`); **hybrid** lends
  a new product the MACH score of its anchor, the nearest trained product.

A request ranks and titles its results with one view, so the micro-batcher's workers need no
lock while changes go on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from service.astra.index import AnnIndex
from service.astra.lexical import LexicalIndex, Matches
from service.mach.exact import MachScores
from service.mach.model import MachModel
from service.ranking import Hit, hits_of, inner_products, merge_top_k, top_k


def served_version(bundle_version: str, catalog_version: int) -> str:
    """What answers carry: the bundle version, plus `+c<n>` after n catalog changes."""
    return bundle_version if catalog_version == 0 else f"{bundle_version}+c{catalog_version}"


def _without(
    search: Callable[[int], tuple[np.ndarray, np.ndarray]],
    k: int,
    excluded: np.ndarray,
    total: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of `search(depth)` with the labels in `excluded` dropped.

    Reads k + min(|excluded|, k) first and k + |excluded| (enough for any row) only when a row
    comes back short of k.
    """
    if excluded.size == 0:
        return search(k)
    enough = min(total, k + excluded.size)
    wanted = min(k, total - excluded.size)
    depth = min(enough, k + min(excluded.size, k))
    while True:
        scores, labels = search(depth)
        labels = np.where(np.isin(labels, excluded), -1, labels)
        if depth >= enough or (np.count_nonzero(labels >= 0, axis=1) >= wanted).all():
            return top_k(scores, labels, k)
        depth = enough


@dataclass(kw_only=True, frozen=True, eq=False)
class CatalogView:
    """One immutable snapshot of the changes, as the engine's search reads it.

    Labels 0..K-1 are the bundle's products; K + s is the new product in side-index slot s.
    """

    version: int
    base_count: int
    hidden: np.ndarray  # sorted trained labels ASTRA's main index must not return
    deleted: np.ndarray  # sorted trained labels no model may return
    replaced_labels: np.ndarray  # sorted trained labels served from a side-index vector
    replaced_slots: np.ndarray  # ... and their slots
    titles: Mapping[int, str]  # new titles of trained products
    vectors: np.ndarray  # [m, d] side-index vectors by slot
    live: np.ndarray  # [m] whether a slot is current
    slot_labels: np.ndarray  # [m] the label each slot answers as
    anchors: np.ndarray  # [m] trained label lending a new product its MACH score
    slot_ids: Sequence[str]  # ids and titles by slot (append-only, read up to m)
    slot_titles: Sequence[str]
    added: int  # new products live
    changed: int  # trained products with a new title
    removed: int  # trained products deleted

    def served_version(self, bundle_version: str) -> str:
        """What answers carry: the bundle version, plus `+c<n>` after n catalog changes."""
        return served_version(bundle_version, self.version)

    def astra_top(
        self, index: AnnIndex, vectors: np.ndarray, k: int, effort: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """ASTRA's top-k: the main index less hidden products, merged with the side index's
        (`effort`: as `AnnIndex.search`)."""
        main = _without(
            lambda depth: index.search(vectors, depth, effort), k, self.hidden, self.base_count
        )
        if not self.live.any():
            return main
        scores = vectors @ self.vectors.T
        labels = np.broadcast_to(np.where(self.live, self.slot_labels, -1), scores.shape)
        return merge_top_k([main, top_k(scores, labels, k)], k)

    def mach_top(
        self, mach: MachModel, scores: MachScores, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """MACH's top-k over its trained labels, less deleted products."""
        return _without(lambda depth: mach.decode(scores, depth), k, self.deleted, self.base_count)

    def _slots(self, labels: np.ndarray) -> np.ndarray:
        """The side-index slot that scores each label for ASTRA (-1: its classifier vector)."""
        slots = np.where(labels >= self.base_count, labels - self.base_count, -1)
        if self.replaced_labels.size:
            at = np.minimum(
                np.searchsorted(self.replaced_labels, labels), self.replaced_labels.size - 1
            )
            found = self.replaced_labels[at] == labels
            slots = np.where(found, self.replaced_slots[at], slots)
        return slots

    def astra_scores(
        self, classifiers: np.ndarray, vectors: np.ndarray, labels: np.ndarray
    ) -> np.ndarray:
        """ASTRA's inner products [n, c] of queries with labels (>= 0), side vectors included."""
        scores = inner_products(vectors, classifiers, np.minimum(labels, self.base_count - 1))
        slots = self._slots(labels)
        rows, cols = np.nonzero(slots >= 0)
        if rows.size:
            side = self.vectors[slots[rows, cols]]
            scores[rows, cols] = np.einsum("nd,nd->n", vectors[rows], side)
        return scores

    def lexical_top(self, matches: list[Matches], k: int) -> tuple[np.ndarray, np.ndarray]:
        """BM25's top-k over the bundle's titles, less hidden products (the new and retitled
        ones are not indexed: they reach the lexical ranker through ASTRA's side index)."""
        return _without(
            lambda depth: LexicalIndex.top(matches, depth), k, self.hidden, self.base_count
        )

    def lexical_scores(
        self, lexical: LexicalIndex, matches: list[Matches], labels: np.ndarray
    ) -> np.ndarray:
        """BM25 scores [n, c] of queries with labels (>= 0), against each one's current title."""
        scores = LexicalIndex.pair_scores(matches, np.minimum(labels, self.base_count - 1))
        slots = self._slots(labels)
        for i in np.flatnonzero((slots >= 0).any(axis=1)):
            cols = np.flatnonzero(slots[i] >= 0)
            titles = [self.slot_titles[slot] for slot in slots[i, cols]]
            scores[i, cols] = lexical.title_scores(matches[i].rows, titles)
        return scores

    def title_rows(
        self, lexical: LexicalIndex, labels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Labels' (>= 0) current title terms as postings rows: (counts [c], rows)."""
        slots = self._slots(labels[None, :])[0]
        if not (slots >= 0).any():
            return lexical.rows_of_titles(labels)
        parts = [
            lexical.text_rows(self.slot_titles[slot])
            if slot >= 0
            else lexical.rows_of_titles(np.array([label]))[1]
            for label, slot in zip(labels.tolist(), slots.tolist(), strict=True)
        ]
        counts = np.array([len(part) for part in parts], np.int64)
        return counts, np.concatenate(parts).astype(np.int32)

    def mach_labels(self, labels: np.ndarray) -> np.ndarray:
        """The labels (>= 0) MACH scores in their place: a new product's anchor, else itself."""
        new = labels >= self.base_count
        if not new.any():
            return labels
        return np.where(new, self.anchors[np.where(new, labels - self.base_count, 0)], labels)

    def hits(
        self, ids: Sequence[str], titles: Sequence[str], scores: np.ndarray, labels: np.ndarray
    ) -> list[list[Hit]]:
        """Ranked rows as products, with the bundle's `ids` and `titles` and the changes."""
        if not self.titles and self.slot_labels.size == 0:
            return hits_of(ids, titles, scores, labels)  # no changes: the bundle's products
        base = self.base_count

        def hit(label: int, score: float) -> Hit:
            if label < base:
                title = self.titles.get(label, titles[label])
                return Hit(label=label, id=ids[label], title=title, score=score)
            slot = label - base
            return Hit(
                label=label, id=self.slot_ids[slot], title=self.slot_titles[slot], score=score
            )

        # Plain Python numbers first: indexing numpy scalars one by one costs 3x more.
        return [
            [
                hit(label, score)
                for score, label in zip(row_scores, row_labels, strict=True)
                if label >= 0
            ]
            for row_scores, row_labels in zip(scores.tolist(), labels.tolist(), strict=True)
        ]

    def notice(self, model: str, models: Sequence[str]) -> str | None:
        """What an answer of `model` (of a bundle with `models`) must say about products it
        cannot rank; None when there are none."""
        if model != "mach" or self.added == 0:
            return None
        others = "astra and hybrid rank them" if "astra" in models else "retrain to rank them"
        return (
            f"mach ranks only the {self.base_count} products it was trained on; the "
            f"{self.added} added since are not among its results ({others})"
        )
