"""The catalog as changed through the API, laid over a bundle's products without retraining.

`PUT /products` adds products or changes their titles and `DELETE /products/{id}` removes them
(`service.catalog_routes`); this module applies those changes to a loaded engine:

* A **new product** (an id the bundle lacks) is embedded from its title by the bundle's query
  encoder, as ASTRA does for products that had no training query, and searched in a side index
  (exact inner product over the overlay's vectors) whose top-k is merged with the main index's.
* A **trained product whose title changes** keeps its id. Its classifier vector describes the
  old product, so ASTRA hides it and serves the new title's text vector from the side index;
  MACH keeps the label (it was trained for that id) and shows the new title. PUT-ting the
  bundle's own title back restores the trained vector.
* A **deleted product** is dropped from every model's results; the main index and MACH are
  read deeper to still return k products.
* **BM25** (ASTRA's lexical ranker, when the bundle has one) retrieves from the bundle's titles
  less hidden products; new and retitled products enter the ranking through the side index and
  are scored against their current title with the bundle's BM25 statistics.
* **MACH** ranks only the labels it was trained on: new products never appear in its results
  and its answers say so (`notice`). **Hybrid** takes new products from the ASTRA side; their
  MACH term is borrowed from their anchor, the trained product whose classifier vector is
  nearest to their text vector, so they compete on ASTRA's cosine with neighbours of the same
  MACH support.

Each change builds a new immutable `CatalogView`. The registry swaps in a shallow copy of the
engine bound to it (`SearchEngine.with_catalog`), so one request ranks and titles its results
with one snapshot and the micro-batcher's workers need no lock. Changes are written to the
`CatalogStore` before they are applied, and re-applied when a bundle of the same name is loaded
(restart or hot reload), from the stored vectors when the encoder is the same.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.catalog_store import CatalogStore, ProductState
from service.encoder import QueryEncoder, encoder_file
from service.engine import Hit, SearchEngine, inner_products, top_k
from service.lexical import LexicalIndex, Matches
from service.mach import MachModel
from service.retrieval import AnnIndex
from service.schemas import CatalogInfo

log = logging.getLogger(__name__)

# Titles embedded per encoder call.
EMBED_BATCH = 256
# Dead side-index slots (old vectors of changed or deleted products) are dropped once they
# outnumber the live ones and this many.
COMPACT_MIN_DEAD = 1024
INITIAL_SLOTS = 64


class UnknownProduct(Exception):
    """No product has this id (or it was deleted)."""


@dataclass(frozen=True)
class UpsertResult:
    """What a PUT did: products created, retitled and left as they were; the catalog version."""

    created: int
    updated: int
    unchanged: int
    version: int


def served_version(bundle_version: str, catalog_version: int) -> str:
    """What answers carry: the bundle version, plus `+c<n>` after n catalog changes."""
    return bundle_version if catalog_version == 0 else f"{bundle_version}+c{catalog_version}"


def encoder_key(engine: SearchEngine) -> str:
    """The sha256 of the encoder file the engine runs: vectors made by another one are stale."""
    manifest = engine.manifest
    return manifest.files[encoder_file(manifest.encoder, engine.encoder.precision)].sha256


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


def _merge(
    first: tuple[np.ndarray, np.ndarray], second: tuple[np.ndarray, np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The top-k of two ranked lists per row (their labels are disjoint)."""
    scores = np.concatenate([first[0], second[0]], axis=1)
    return top_k(scores, np.concatenate([first[1], second[1]], axis=1), k)


@dataclass(frozen=True, eq=False)
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

    def info(self, bundle_version: str) -> CatalogInfo:
        """What /v1/models says about the changes."""
        return CatalogInfo(
            version=self.version,
            served_version=self.served_version(bundle_version),
            added=self.added,
            changed=self.changed,
            deleted=self.removed,
        )

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
        return _merge(main, top_k(scores, labels, k), k)

    def mach_top(
        self, mach: MachModel, bucket_scores: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """MACH's top-k over its trained labels, less deleted products."""
        return _without(
            lambda depth: mach.decode(bucket_scores, depth), k, self.deleted, self.base_count
        )

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
        base = self.base_count

        def hit(label: int, score: float) -> Hit:
            if label < base:
                return Hit(label, ids[label], self.titles.get(label, titles[label]), score)
            slot = label - base
            return Hit(label, self.slot_ids[slot], self.slot_titles[slot], score)

        return [
            [
                hit(int(label), float(score))
                for score, label in zip(row_scores, row_labels, strict=True)
                if label >= 0
            ]
            for row_scores, row_labels in zip(scores, labels, strict=True)
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


class CatalogOverlay:
    """The changes applied to one loaded engine's products; `view` is the latest snapshot.

    `Catalogs` calls it under its lock; searches only read `view`.
    """

    def __init__(self, engine: SearchEngine) -> None:
        self.name = engine.manifest.name
        self.encoder_key = encoder_key(engine)
        self._ids = engine.bundle.label_ids
        self._titles = engine.bundle.label_titles
        self._encoder: QueryEncoder = engine.encoder
        self._index = engine.index
        self._anchored = engine.index is not None and engine.mach is not None
        self._base_count = engine.manifest.labels.count
        self._dim = engine.manifest.encoder.dim
        self._base_labels = {product: label for label, product in enumerate(self._ids)}
        self._states: dict[str, str | None] = {}  # products unlike the bundle's: title or deleted
        self._new: set[str] = set()  # ids of live new products
        self._new_titles: dict[int, str] = {}  # trained label -> its new title
        self._deleted: set[int] = set()  # trained labels deleted
        self._replaced: dict[int, int] = {}  # trained label -> slot of its new text vector
        self._slot_of: dict[str, int] = {}  # product id -> its live slot
        self._start_slots(INITIAL_SLOTS)
        self.version = 0
        self.view = self._snapshot()

    # --- side-index slots (append-only; old snapshots read only their own prefix) -----------

    def _start_slots(self, capacity: int) -> None:
        self._count = 0
        self._vectors = np.zeros((capacity, self._dim), np.float32)
        self._slot_labels = np.full(capacity, -1, np.int64)
        self._anchors = np.full(capacity, -1, np.int64)
        self._live = np.zeros(capacity, bool)
        self._slot_ids: list[str] = []
        self._slot_titles: list[str] = []

    def _grow(self) -> None:
        """Double the slot buffers (into new arrays: snapshots keep the old ones)."""
        capacity = 2 * len(self._live)
        for name in ("_vectors", "_slot_labels", "_anchors", "_live"):
            old = getattr(self, name)
            new = np.zeros((capacity, *old.shape[1:]), old.dtype)
            new[: self._count] = old[: self._count]
            setattr(self, name, new)

    def _append(self, product: str, title: str, vector: np.ndarray, label: int | None) -> int:
        if self._count == len(self._live):
            self._grow()
        slot = self._count
        self._vectors[slot] = vector
        self._slot_labels[slot] = self._base_count + slot if label is None else label
        self._anchors[slot] = -1 if label is None else label
        self._live[slot] = True
        self._slot_ids.append(product)
        self._slot_titles.append(title)
        self._count += 1
        return slot

    def _compact(self) -> None:
        """Drop dead slots once they dominate (renumbers slots; snapshots keep the old ones)."""
        count = self._count
        keep = np.flatnonzero(self._live[:count])
        if count - keep.size <= max(keep.size, COMPACT_MIN_DEAD):
            return
        renumber = np.full(count, -1, np.int64)
        renumber[keep] = np.arange(keep.size)
        labels = self._slot_labels[keep]
        new = labels >= self._base_count
        labels[new] = self._base_count + np.flatnonzero(new)
        kept = (self._vectors[keep], labels, self._anchors[keep], self._live[keep])
        ids = [self._slot_ids[slot] for slot in keep]
        titles = [self._slot_titles[slot] for slot in keep]
        self._start_slots(max(INITIAL_SLOTS, 2 * keep.size))
        for name, values in zip(
            ("_vectors", "_slot_labels", "_anchors", "_live"), kept, strict=True
        ):
            getattr(self, name)[: keep.size] = values
        self._count, self._slot_ids, self._slot_titles = int(keep.size), ids, titles
        self._slot_of = {product: int(renumber[s]) for product, s in self._slot_of.items()}
        self._replaced = {label: int(renumber[s]) for label, s in self._replaced.items()}

    # --- changes -------------------------------------------------------------------------

    def title_of(self, product: str) -> str | None:
        """The product's current title (None: no such product, or deleted)."""
        if product in self._states:
            return self._states[product]
        label = self._base_labels.get(product)
        return None if label is None else self._titles[label]

    def _needs_vector(self, state: ProductState) -> bool:
        """Whether ASTRA needs the title's embedding (not for the bundle's own title)."""
        if state.title is None or self._index is None:
            return False
        label = self._base_labels.get(state.id)
        return label is None or self._titles[label] != state.title

    def plan(self, products: list[tuple[str, str]]) -> tuple[list[ProductState], int, int]:
        """The states a PUT of (id, title) pairs changes, and how many are created / updated."""
        changes, created = [], 0
        for product, title in products:
            current = self.title_of(product)
            if current == title:
                continue
            created += current is None
            changes.append(ProductState(product, title))
        return changes, created, len(changes) - created

    def with_vectors(
        self, states: list[ProductState]
    ) -> tuple[list[ProductState], list[ProductState]]:
        """`states` with the embeddings ASTRA needs by this encoder; and those embedded here."""
        stale = [
            i
            for i, state in enumerate(states)
            if self._needs_vector(state)
            and (
                state.vector is None
                or state.encoder != self.encoder_key
                or state.vector.shape != (self._dim,)
            )
        ]
        if not stale:
            return states, []
        titles = [states[i].title or "" for i in stale]
        vectors = np.concatenate(
            [
                self._encoder.encode(titles[start : start + EMBED_BATCH])
                for start in range(0, len(titles), EMBED_BATCH)
            ]
        )
        states = list(states)
        for i, vector in zip(stale, vectors, strict=True):
            states[i] = ProductState(states[i].id, states[i].title, vector, self.encoder_key)
        return states, [states[i] for i in stale]

    def _apply_one(self, state: ProductState) -> None:
        product, title = state.id, state.title
        label = self._base_labels.get(product)
        old = self._slot_of.pop(product, None)
        if old is not None:
            self._live[old] = False
        self._states.pop(product, None)
        self._new.discard(product)
        if label is not None:
            self._replaced.pop(label, None)
            self._new_titles.pop(label, None)
            self._deleted.discard(label)
        if title is None:
            self._states[product] = None
            if label is not None:
                self._deleted.add(label)
            return
        if label is not None and self._titles[label] == title:
            return  # back to the bundle's own product
        self._states[product] = title
        if label is None:
            self._new.add(product)
        else:
            self._new_titles[label] = title
        if self._index is not None and state.vector is not None:
            slot = self._append(product, title, state.vector, label)
            self._slot_of[product] = slot
            if label is not None:
                self._replaced[label] = slot

    def apply(self, states: list[ProductState], version: int) -> None:
        """Apply states (with the vectors `with_vectors` adds) as catalog version `version`."""
        first = self._count
        for state in states:
            self._apply_one(state)
        pending = first + np.flatnonzero(self._anchors[first : self._count] < 0)
        if self._anchored and pending.size:
            assert self._index is not None
            _, nearest = self._index.search(self._vectors[pending], 1)
            self._anchors[pending] = nearest[:, 0]
        self._compact()
        self.version = version
        self.view = self._snapshot()

    def _snapshot(self) -> CatalogView:
        count = self._count
        replaced = sorted(self._replaced.items())
        return CatalogView(
            version=self.version,
            base_count=self._base_count,
            hidden=np.array(sorted(self._deleted | self._replaced.keys()), np.int64),
            deleted=np.array(sorted(self._deleted), np.int64),
            replaced_labels=np.array([label for label, _ in replaced], np.int64),
            replaced_slots=np.array([slot for _, slot in replaced], np.int64),
            titles=dict(self._new_titles),
            vectors=self._vectors[:count],
            live=self._live[:count].copy(),
            slot_labels=self._slot_labels[:count],
            anchors=self._anchors[:count],
            slot_ids=self._slot_ids,
            slot_titles=self._slot_titles,
            added=len(self._new),
            changed=len(self._new_titles),
            removed=len(self._deleted),
        )


class Catalogs:
    """The store, the overlay of every loaded engine, and the lock that orders all changes.

    An overlay lives as long as its engine's bundle: PUT and DELETE apply to every overlay of
    the bundle name (during a hot reload both the old and the new engine get the change).
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.store: CatalogStore | None = None
        self._lock = threading.Lock()
        self._overlays: dict[int, CatalogOverlay] = {}

    def open(self) -> None:
        """Open the store (blocking: the app's lifespan runs it in a thread)."""
        self.store = CatalogStore(self.data_dir)

    def close(self) -> None:
        """Close the store."""
        if self.store is not None:
            self.store.close()

    def _store(self) -> CatalogStore:
        if self.store is None:
            raise RuntimeError("the catalog store is not open")
        return self.store

    def attach(self, engine: SearchEngine) -> None:
        """Apply the stored changes of the engine's bundle name to it (blocking)."""
        store, name = self._store(), engine.manifest.name
        with self._lock:
            version, states = store.load(name)
            overlay = CatalogOverlay(engine)
            states, embedded = overlay.with_vectors(states)
            if embedded:
                log.info("catalog: re-embedded %d stored titles", len(embedded))
                store.save_vectors(name, embedded)
            overlay.apply(states, version)
            key = id(engine.bundle)
            self._overlays[key] = overlay
            weakref.finalize(engine.bundle, self._overlays.pop, key, None)
        engine.catalog = overlay.view
        view = overlay.view
        log.info(
            "catalog changes applied",
            extra={
                "bundle": name,
                "catalog_version": version,
                "added": view.added,
                "changed": view.changed,
                "deleted": view.removed,
            },
        )

    def _overlay(self, engine: SearchEngine) -> CatalogOverlay:
        overlay = self._overlays.get(id(engine.bundle))
        if overlay is None:
            raise RuntimeError("this engine has no catalog overlay (Catalogs.attach)")
        return overlay

    def latest(self, engine: SearchEngine) -> SearchEngine:
        """The engine bound to its overlay's latest snapshot (itself when it already is, or when
        it has no overlay)."""
        overlay = self._overlays.get(id(engine.bundle))
        if overlay is None or engine.catalog is overlay.view:
            return engine
        return engine.with_catalog(overlay.view)

    def _record(self, overlay: CatalogOverlay, states: list[ProductState]) -> int:
        """Store `states` as a new version and apply them to every overlay of the bundle name."""
        version = self._store().commit(overlay.name, states)
        for other in list(self._overlays.values()):
            if other.name == overlay.name:
                other.apply(other.with_vectors(states)[0], version)
        return version

    def upsert(self, engine: SearchEngine, products: list[tuple[str, str]]) -> UpsertResult:
        """Create or retitle products (id, title) of the engine's catalog (blocking)."""
        overlay = self._overlay(engine)
        with self._lock:
            states, created, updated = overlay.plan(products)
            unchanged = len(products) - len(states)
            if not states:
                return UpsertResult(0, 0, unchanged, overlay.version)
            states, _ = overlay.with_vectors(states)
            version = self._record(overlay, states)
        return UpsertResult(created, updated, unchanged, version)

    def delete(self, engine: SearchEngine, product: str) -> int:
        """Delete a product; returns the new catalog version. `UnknownProduct` if absent."""
        overlay = self._overlay(engine)
        with self._lock:
            if overlay.title_of(product) is None:
                raise UnknownProduct(product)
            return self._record(overlay, [ProductState(product, None)])
