"""Catalog changes made through the API, made durable: one SQLite database (WAL) in the data dir.

Per bundle name there is a change counter (the catalog version) and one row per product changed
since the bundle was built: its latest title (NULL once deleted) and, when a model needs one,
the title's embedding with the name of the encoder that made it, so a restart re-applies the
changes without re-embedding. Rows hold states, not deltas, and name products by their
external id, so they apply on top of any version of the bundle with that name. Every write is
one transaction committed with `synchronous=FULL`: a change is on disk before it is answered.
A write that fails (a full disk, a busy database) is rolled back and raised as
`StoreUnavailable` saying what failed; nothing of it is kept, and the next write starts clean.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.storage import StoreUnavailable, reason

DATABASE = "catalog.sqlite3"
SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS catalog_products (
        bundle TEXT NOT NULL,
        id TEXT NOT NULL,
        title TEXT,
        vector BLOB,
        encoder TEXT,
        version INTEGER NOT NULL,
        PRIMARY KEY (bundle, id)
    )
    """,
    "CREATE TABLE IF NOT EXISTS catalog_versions (bundle TEXT PRIMARY KEY, version INTEGER)",
)


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
    """Catalog changes in `<data_dir>/catalog.sqlite3`, keyed by bundle name."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / DATABASE
        self._db = self._connect()
        for statement in SCHEMA:
            self._db.execute(statement)
        self._lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        return db

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def load(self, bundle: str) -> tuple[int, list[ProductState]]:
        """The catalog version of `bundle` and every product changed for it, oldest change first."""
        with self._lock:
            found = self._db.execute(
                "SELECT version FROM catalog_versions WHERE bundle = ?", (bundle,)
            ).fetchone()
            rows = self._db.execute(
                "SELECT id, title, vector, encoder FROM catalog_products WHERE bundle = ? "
                "ORDER BY version, id",
                (bundle,),
            ).fetchall()
        states = [
            ProductState(
                id=id_,
                title=title,
                vector=None if blob is None else np.frombuffer(blob, np.float32),
                encoder=encoder,
            )
            for id_, title, blob, encoder in rows
        ]
        return (found[0] if found else 0), states

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One transaction: committed, or rolled back whatever failed (the block or the COMMIT
        itself, e.g. on a full disk), so the next change starts clean. A database failure is
        raised as `StoreUnavailable` saying what failed."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                yield self._db
                self._db.execute("COMMIT")
            except BaseException as exc:
                self._roll_back()
                if isinstance(exc, sqlite3.Error):
                    raise StoreUnavailable(reason(exc, "the catalog")) from exc
                raise

    def _roll_back(self) -> None:
        """End an open transaction; a connection that cannot roll back is opened again."""
        if not self._db.in_transaction:
            return
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error:
            self._db.close()
            self._db = self._connect()

    def commit(self, bundle: str, states: list[ProductState]) -> int:
        """Record `states` as one change; returns the bundle's new catalog version."""
        with self._transaction() as db:
            found = db.execute(
                "SELECT version FROM catalog_versions WHERE bundle = ?", (bundle,)
            ).fetchone()
            version = (found[0] if found else 0) + 1
            db.execute(
                "INSERT OR REPLACE INTO catalog_versions (bundle, version) VALUES (?, ?)",
                (bundle, version),
            )
            db.executemany(
                "INSERT OR REPLACE INTO catalog_products "
                "(bundle, id, title, vector, encoder, version) VALUES (?, ?, ?, ?, ?, ?)",
                [(bundle, *_columns(state), version) for state in states],
            )
        return version

    def save_vectors(self, bundle: str, states: list[ProductState]) -> None:
        """Store embeddings made at load time (another encoder's were stale); no new version."""
        with self._transaction() as db:
            db.executemany(
                "UPDATE catalog_products SET vector = ?, encoder = ? WHERE bundle = ? AND id = ?",
                [(*_columns(state)[2:], bundle, state.id) for state in states],
            )


def _columns(state: ProductState) -> tuple[str, str | None, bytes | None, str | None]:
    """(id, title, vector bytes, encoder) of a state, as stored."""
    vector = None if state.vector is None else np.asarray(state.vector, np.float32).tobytes()
    return state.id, state.title, vector, state.encoder
