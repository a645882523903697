"""The catalog changes applied to one loaded engine: each change builds a new `CatalogView`.

A new or retitled product is embedded from its title by the bundle's own query encoder, as
ASTRA does for products that had no training query, and appended to the side index (slots are
append-only, so older snapshots keep reading their own prefix; dead slots are compacted once
they dominate). New products get an anchor, the trained product whose classifier vector is
nearest, which lends them MACH's score in hybrid answers. `service.catalog.changes` orders the
changes and stores them before they are applied here.
"""

from __future__ import annotations

import numpy as np

from service.catalog.store import ProductState
from service.catalog.view import CatalogView
from service.search.encoder import QueryEncoder
from service.search.engine import SearchEngine

# Titles embedded per encoder call.
EMBED_BATCH = 256
# Dead side-index slots (old vectors of changed or deleted products) are dropped once they
# outnumber the live ones and this many.
COMPACT_MIN_DEAD = 1024
INITIAL_SLOTS = 64


def encoder_key(engine: SearchEngine) -> str:
    """The sha256 of the encoder file the engine runs: vectors made by another one are stale."""
    return engine.manifest.files[engine.encoder.file].sha256


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
        self._base_index: dict[str, int] | None = None  # built at the first change (`_base_label`)
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

    def _base_label(self, product: str) -> int | None:
        """The bundle's label of `product`, or None. The id → label map is built at the first
        catalog change, not at load: at 50M products it is gigabytes a read-only replica never
        needs."""
        if self._base_index is None:
            self._base_index = {product: label for label, product in enumerate(self._ids)}
        return self._base_index.get(product)

    def changes_after(self, states: list[ProductState]) -> int:
        """How many products would differ from the bundle's once `states` are applied (the
        overlay's size: what `XC_MAX_CATALOG_CHANGES` bounds)."""
        return len(self._states) + sum(state.id not in self._states for state in states)

    def title_of(self, product: str) -> str | None:
        """The product's current title (None: no such product, or deleted)."""
        if product in self._states:
            return self._states[product]
        label = self._base_label(product)
        return None if label is None else self._titles[label]

    def _needs_vector(self, state: ProductState) -> bool:
        """Whether ASTRA needs the title's embedding (not for the bundle's own title)."""
        if state.title is None or self._index is None:
            return False
        label = self._base_label(state.id)
        return label is None or self._titles[label] != state.title

    def plan(self, products: list[tuple[str, str]]) -> tuple[list[ProductState], int, int]:
        """The states a PUT of (id, title) pairs changes, and how many are created / updated."""
        changes, created = [], 0
        for product, title in products:
            current = self.title_of(product)
            if current == title:
                continue
            created += current is None
            changes.append(ProductState(id=product, title=title))
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
            states[i] = ProductState(
                id=states[i].id, title=states[i].title, vector=vector, encoder=self.encoder_key
            )
        return states, [states[i] for i in stale]

    def _apply_one(self, state: ProductState) -> None:
        product, title = state.id, state.title
        label = self._base_label(product)
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
