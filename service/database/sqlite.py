"""The embedded default: one SQLite file (WAL, `synchronous=FULL`), one connection per process.

Transactions are serial (a lock, then `BEGIN IMMEDIATE`), so a change is on disk before it is
answered and no two writers interleave. A failed COMMIT (a full disk) rolls back; a connection
that cannot roll back is opened again, so the next transaction starts clean.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from service.database.base import Database, Listener, Row, Transaction, rows_of
from service.storage import StoreUnavailable, reason


class SQLiteTransaction(Transaction):
    """A transaction on the process's one connection."""

    dialect = "sqlite"

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return rows_of(self._db.execute(sql, tuple(params)))

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._db.execute(sql, tuple(params)).rowcount

    def execute_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._db.executemany(sql, (tuple(row) for row in rows))


class Sleeper(Listener):
    """One process needs no notifications: waiting is sleeping."""

    def __init__(self) -> None:
        self._closed = threading.Event()

    def wait(self, timeout_s: float) -> bool:
        self._closed.wait(timeout_s)
        return False

    def close(self) -> None:
        self._closed.set()


class SQLiteDatabase(Database):
    """`path`, opened in WAL mode; every transaction takes the process-wide lock."""

    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.where = str(path)
        self._lock = threading.Lock()
        self._db = self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        return db

    @contextmanager
    def transaction(self, what: str) -> Iterator[Transaction]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                yield SQLiteTransaction(self._db)
                self._db.execute("COMMIT")
            except BaseException as exc:
                self._roll_back()
                if isinstance(exc, sqlite3.Error):
                    raise StoreUnavailable(reason(exc, what)) from exc
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

    def listen(self, channel: str) -> Listener:
        return Sleeper()

    def close(self) -> None:
        with self._lock:
            self._db.close()
