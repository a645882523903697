"""What the stores need from a database: transactions, the SQL differences, and notifications.

A store writes its SQL once, with `?` placeholders and the upsert syntax both engines accept
(`INSERT ... ON CONFLICT ... DO UPDATE`); `Transaction.skip_locked` is the one clause only
PostgreSQL has (a row another replica holds is skipped, not waited for). Every database error,
a lost connection included, leaves the transaction rolled back and is raised as
`StoreUnavailable` saying what failed, in words a client can be shown.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any

Row = tuple[Any, ...]


class Transaction(ABC):
    """One open transaction: statements run in it commit together or not at all."""

    dialect: str

    @abstractmethod
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run one statement; the rows it returns (none for a write)."""

    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; the number of rows it changed."""

    @abstractmethod
    def execute_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement once per parameter row."""

    def skip_locked(self, table: str) -> str:
        """The clause that locks the rows a SELECT picks from `table`, skipping rows another
        transaction holds (PostgreSQL); SQLite's transactions are serial, so it needs none."""
        return ""

    def notify(self, channel: str, payload: str) -> None:
        """Tell the listeners of `channel` once this transaction commits (PostgreSQL only:
        SQLite serves one process, which already knows)."""
        return None


class Listener(ABC):
    """Wakes a replica when another one has changed something (`Transaction.notify`)."""

    @abstractmethod
    def wait(self, timeout_s: float) -> bool:
        """Block up to `timeout_s`; True when a notification came (or the connection was lost
        and made again, so a change may have been missed: catch up either way)."""

    @abstractmethod
    def close(self) -> None:
        """Stop listening."""


class Database(ABC):
    """A connection (SQLite) or a pool of them (PostgreSQL) that stores open transactions on."""

    dialect: str
    # Where the data lives, for the log (never a password).
    where: str

    @abstractmethod
    def transaction(self, what: str) -> AbstractContextManager[Transaction]:
        """One transaction, committed at the end of the block; anything raised rolls it back.
        A database failure is raised as `StoreUnavailable` naming `what` ("the catalog")."""

    @abstractmethod
    def listen(self, channel: str) -> Listener:
        """A listener for the notifications of `channel`."""

    @abstractmethod
    def close(self) -> None:
        """Close every connection."""


def rows_of(cursor: Any) -> list[Row]:
    """The rows a cursor holds ([] after a statement that returns none)."""
    return list(cursor.fetchall()) if cursor.description is not None else []
