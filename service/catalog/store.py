"""Catalog changes made through the API, made durable as one ordered log per bundle name.

Per bundle name there is a change counter (the catalog version: change n of the log is version
n) and one row per product changed since the bundle was built: its latest title (NULL once
deleted), the version of the change that last touched it and, when a model needs one, the
title's embedding with the name of the encoder that made it, so a replica applies a change, and
a restart re-applies them all, without re-embedding. Rows hold states, not deltas, and name
products by their external id, so they apply on top of any version of the bundle with that name.

The log is ordered by a compare-and-set on the counter (`commit(expected=...)`): a writer that
is behind gets `VersionConflict`, catches up and tries again, so versions are committed in
order and a reader's one statement sees every change up to some version and none after. A
replica catches up with `changes(after=v)`: the states of the products changed after v, whose
newest row carries the newest version. On PostgreSQL a commit also notifies `CHANNEL`, which
wakes the other replicas (`service.catalog.follower`).

Every write is one transaction, durable before it is answered (SQLite `synchronous=FULL`, or
PostgreSQL's commit). A write that fails (a full disk, a database that is down) is rolled back
and raised as `StoreUnavailable` saying what failed; nothing of it is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.database import Database, Listener, Migration, migrate, open_database

SQLITE_FILE = "catalog.sqlite3"
CHANNEL = "xc_catalog"
WHAT = "the catalog"

MIGRATIONS = (
    Migration(
        version=1,
        sqlite=(
            "CREATE TABLE IF NOT EXISTS catalog_products (bundle TEXT NOT NULL, id TEXT NOT NULL, "
            "title TEXT, vector BLOB, encoder TEXT, version INTEGER NOT NULL, "
            "PRIMARY KEY (bundle, id))",
            "CREATE TABLE IF NOT EXISTS catalog_versions (bundle TEXT PRIMARY KEY, "
            "version INTEGER)",
        ),
        postgresql=(
            "CREATE TABLE IF NOT EXISTS catalog_products (bundle TEXT NOT NULL, id TEXT NOT NULL, "
            "title TEXT, vector BYTEA, encoder TEXT, version BIGINT NOT NULL, "
            "PRIMARY KEY (bundle, id))",
            "CREATE TABLE IF NOT EXISTS catalog_versions (bundle TEXT PRIMARY KEY, "
            "version BIGINT NOT NULL)",
        ),
    ),
    Migration(
        version=2,
        sqlite=(
            "CREATE INDEX IF NOT EXISTS catalog_products_by_version "
            "ON catalog_products (bundle, version)",
        ),
        postgresql=(
            "CREATE INDEX IF NOT EXISTS catalog_products_by_version "
            "ON catalog_products (bundle, version)",
        ),
    ),
)


class VersionConflict(Exception):
    """Another change was committed since the version the writer planned against."""


@dataclass(kw_only=True, frozen=True)
class ProductState:
    """A product's state as changed through the API.

    `title` None means deleted. `vector` is the title's embedding by the encoder named
    `encoder` (None when no model needed one, or the row was stored without it).
    """

    id: str
    title: str | None
    vector: np.ndarray | None = None
    encoder: str | None = None


class CatalogStore:
    """Catalog changes keyed by bundle name, in PostgreSQL (`database_url`) or in
    `<data_dir>/catalog.sqlite3`."""

    def __init__(self, data_dir: Path, database_url: str | None = None) -> None:
        self.database: Database = open_database(database_url, data_dir / SQLITE_FILE)
        try:
            migrate(self.database, "catalog", MIGRATIONS)
        except BaseException:
            self.database.close()
            raise

    def close(self) -> None:
        """Close the database."""
        self.database.close()

    def listen(self) -> Listener:
        """Wakes when another replica committed a change."""
        return self.database.listen(CHANNEL)

    def changes(self, bundle: str, after: int = 0) -> tuple[int, list[ProductState]]:
        """The states of the products of `bundle` changed after version `after`, oldest change
        first, and the version they bring the catalog to (`after` when there are none)."""
        with self.database.transaction(WHAT) as tx:
            rows = tx.query(
                "SELECT id, title, vector, encoder, version FROM catalog_products "
                "WHERE bundle = ? AND version > ? ORDER BY version, id",
                (bundle, after),
            )
        states = [
            ProductState(
                id=id_,
                title=title,
                vector=None if blob is None else np.frombuffer(blob, np.float32),
                encoder=encoder,
            )
            for id_, title, blob, encoder, _ in rows
        ]
        return (rows[-1][4] if rows else after), states

    def version(self, bundle: str) -> int:
        """The latest catalog version of `bundle` (0 before its first change)."""
        with self.database.transaction(WHAT) as tx:
            found = tx.query("SELECT version FROM catalog_versions WHERE bundle = ?", (bundle,))
        return found[0][0] if found else 0

    def commit(self, bundle: str, states: list[ProductState], expected: int) -> int:
        """Record `states` as change `expected + 1` of `bundle`; returns that version.
        `VersionConflict` when the latest version is no longer `expected`."""
        version = expected + 1
        with self.database.transaction(WHAT) as tx:
            if expected == 0:
                moved = tx.execute(
                    "INSERT INTO catalog_versions (bundle, version) VALUES (?, 1) "
                    "ON CONFLICT (bundle) DO NOTHING",
                    (bundle,),
                )
            else:
                moved = tx.execute(
                    "UPDATE catalog_versions SET version = ? WHERE bundle = ? AND version = ?",
                    (version, bundle, expected),
                )
            if moved != 1:
                raise VersionConflict(f"{bundle}: version {expected} is no longer the latest")
            tx.execute_many(
                "INSERT INTO catalog_products (bundle, id, title, vector, encoder, version) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (bundle, id) DO UPDATE SET "
                "title = excluded.title, vector = excluded.vector, encoder = excluded.encoder, "
                "version = excluded.version",
                [(bundle, *_columns(state), version) for state in states],
            )
            tx.notify(CHANNEL, f"{bundle} {version}")
        return version

    def save_vectors(self, bundle: str, states: list[ProductState]) -> None:
        """Store embeddings made at load time (another encoder's were stale); no new version."""
        with self.database.transaction(WHAT) as tx:
            tx.execute_many(
                "UPDATE catalog_products SET vector = ?, encoder = ? WHERE bundle = ? AND id = ?",
                [(*_columns(state)[2:], bundle, state.id) for state in states],
            )


def _columns(state: ProductState) -> tuple[str, str | None, bytes | None, str | None]:
    """(id, title, vector bytes, encoder) of a state, as stored."""
    vector = None if state.vector is None else np.asarray(state.vector, np.float32).tobytes()
    return state.id, state.title, vector, state.encoder
