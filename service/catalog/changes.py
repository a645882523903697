"""Catalog changes as the API makes them: ordered, stored, then applied to every loaded engine.

`Catalogs` holds the store (`service.catalog.store`), the overlay of every loaded engine
(`service.catalog.overlay`) and the lock that orders this process's changes. A change is
planned against the latest stored version (the overlay first catches up with what other
replicas committed), written to the store with a compare-and-set on that version (another
replica that got there first makes it catch up and plan again), and only then applied. The
stored changes of a bundle name are re-applied when a bundle of that name is loaded (restart or
hot reload), and `sync` applies what other replicas committed since (`service.catalog.follower`
calls it when notified), from the stored vectors when the encoder is the same. A change the
store refuses (`StoreUnavailable`: a full disk, a database that is down) is applied to no
overlay, so the catalog in memory is what is stored. The registry then swaps in a shallow copy
of the engine bound to the new snapshot (`SearchEngine.with_catalog`), so requests in flight
keep the snapshot they were admitted with.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from service.catalog.overlay import CatalogOverlay
from service.catalog.store import CatalogStore, ProductState, VersionConflict
from service.search.engine import SearchEngine
from service.storage import StoreUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

# Compare-and-set attempts of one change before the store is called busy (each loses only to a
# change another replica committed meanwhile, so this many in a row means a storm of writers).
COMMIT_ATTEMPTS = 20


class UnknownProduct(Exception):
    """No product has this id (or it was deleted)."""


class CatalogFull(Exception):
    """A PUT would make more products differ from the bundle than the configured cap."""

    def __init__(self, changes: int, limit: int) -> None:
        super().__init__(f"{changes} changed products, limit {limit}")
        self.changes = changes
        self.limit = limit


@dataclass(kw_only=True, frozen=True)
class UpsertResult:
    """What a PUT did: products created, retitled and left as they were; the catalog version."""

    created: int
    updated: int
    unchanged: int
    version: int


class Catalogs:
    """The store, the overlay of every loaded engine, and the lock that orders all changes.

    An overlay lives as long as its engine's bundle: PUT and DELETE apply to every overlay of
    the bundle name (during a hot reload both the old and the new engine get the change). At
    most `max_changes` products may differ from the bundle (each costs memory and search time
    in every overlay); a PUT beyond is refused (`CatalogFull`), a DELETE never is.
    """

    def __init__(
        self, data_dir: Path, max_changes: int | None = None, database_url: str | None = None
    ) -> None:
        self.data_dir = data_dir
        self.database_url = database_url
        self.max_changes = max_changes
        self.store: CatalogStore | None = None
        self._lock = threading.Lock()
        self._overlays: dict[int, CatalogOverlay] = {}

    def open(self) -> None:
        """Open the store (blocking: the app's lifespan runs it in a thread)."""
        self.store = CatalogStore(self.data_dir, self.database_url)

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
            version, states = store.changes(name)
            overlay = CatalogOverlay(engine)
            states, embedded = overlay.with_vectors(states)
            if embedded:
                log.info("catalog: re-embedded %d stored titles", len(embedded))
                try:  # a cache: without it the next start embeds them again
                    store.save_vectors(name, embedded)
                except StoreUnavailable as exc:
                    log.warning("catalog: re-embedded titles not stored: %s", exc)
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

    def _catch_up(self, name: str) -> bool:
        """Apply to every overlay of bundle `name` the changes stored after its version (other
        replicas' changes); True if there were any. Called under the lock."""
        overlays = [overlay for overlay in self._overlays.values() if overlay.name == name]
        if not overlays:
            return False
        after = min(overlay.version for overlay in overlays)
        version, states = self._store().changes(name, after)
        if version == after:
            return False
        states = overlays[0].with_vectors(states)[0]
        for overlay in overlays:
            overlay.apply(states, version)
        return True

    def sync(self) -> bool:
        """Catch every loaded bundle up with the changes other replicas stored (blocking);
        True if any was applied. `StoreUnavailable` when the store cannot be read."""
        with self._lock:
            names = {overlay.name for overlay in self._overlays.values()}
            return any([self._catch_up(name) for name in sorted(names)])

    def _record(self, overlay: CatalogOverlay, states: list[ProductState]) -> int:
        """Store `states` as the version after the overlay's and apply them to every overlay of
        the bundle name. `VersionConflict` when another replica committed first."""
        version = self._store().commit(overlay.name, states, expected=overlay.version)
        for other in list(self._overlays.values()):
            if other.name == overlay.name:
                other.apply(other.with_vectors(states)[0], version)
        return version

    def _change(self, engine: SearchEngine, change: Callable[[CatalogOverlay], T]) -> T:
        """Run `change(overlay)` under the lock on an overlay caught up with the store, again
        after each `VersionConflict` (another replica's change landed first)."""
        overlay = self._overlay(engine)
        with self._lock:
            for _ in range(COMMIT_ATTEMPTS):
                self._catch_up(overlay.name)
                try:
                    return change(overlay)
                except VersionConflict:
                    continue
        raise StoreUnavailable(f"{COMMIT_ATTEMPTS} changes by other replicas landed first")

    def upsert(self, engine: SearchEngine, products: list[tuple[str, str]]) -> UpsertResult:
        """Create or retitle products (id, title) of the engine's catalog (blocking)."""

        def change(overlay: CatalogOverlay) -> UpsertResult:
            states, created, updated = overlay.plan(products)
            unchanged = len(products) - len(states)
            if not states:
                return UpsertResult(
                    created=0, updated=0, unchanged=unchanged, version=overlay.version
                )
            changes = overlay.changes_after(states)
            if self.max_changes is not None and changes > self.max_changes:
                raise CatalogFull(changes, self.max_changes)
            states, _ = overlay.with_vectors(states)
            version = self._record(overlay, states)
            return UpsertResult(
                created=created, updated=updated, unchanged=unchanged, version=version
            )

        return self._change(engine, change)

    def delete(self, engine: SearchEngine, product: str) -> int:
        """Delete a product; returns the new catalog version. `UnknownProduct` if absent."""

        def change(overlay: CatalogOverlay) -> int:
            if overlay.title_of(product) is None:
                raise UnknownProduct(product)
            return self._record(overlay, [ProductState(id=product, title=None)])

        return self._change(engine, change)
