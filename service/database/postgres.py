"""PostgreSQL for a fleet of replicas: psycopg 3 with a connection pool, LISTEN/NOTIFY.

Every replica opens a small pool on the same database (`XC_DATABASE_URL`). The pool opens its
connections in the background and makes them again after PostgreSQL restarts; while the server
is unreachable, a transaction waits at most `CONNECT_TIMEOUT_S` for a connection and then fails
as `StoreUnavailable` ("the database of the catalog is unreachable"), which the routes answer
503, while searches go on from what the replica already applied.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from service.database.base import Database, Listener, Row, Transaction, rows_of
from service.storage import StoreUnavailable

log = logging.getLogger(__name__)

# How long a transaction waits for a pooled connection (PostgreSQL down: answer 503 soon).
CONNECT_TIMEOUT_S = 2.0


def _sql(statement: str) -> str:
    """The stores write `?` placeholders (SQLite's); psycopg reads `%s`."""
    return statement.replace("?", "%s")


def reason(exc: Exception, what: str) -> str:
    """What failed, in words a client can be shown (no host, no password)."""
    if isinstance(exc, psycopg.OperationalError):  # the pool's timeouts included
        return f"the database of {what} is unreachable"
    return f"the database of {what} refused the change ({type(exc).__name__})"


class PostgresTransaction(Transaction):
    """A transaction on one pooled connection."""

    dialect = "postgresql"

    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        self._cursor = cursor

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return rows_of(self._cursor.execute(_sql(sql), tuple(params)))

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._cursor.execute(_sql(sql), tuple(params)).rowcount

    def execute_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._cursor.executemany(_sql(sql), [tuple(row) for row in rows])

    def skip_locked(self, table: str) -> str:
        return f" FOR UPDATE OF {table} SKIP LOCKED"

    def notify(self, channel: str, payload: str) -> None:
        self._cursor.execute("SELECT pg_notify(%s, %s)", (channel, payload))


class PostgresListener(Listener):
    """LISTEN on its own connection, made again when it is lost."""

    def __init__(self, url: str, channel: str) -> None:
        self.url = url
        self.channel = channel
        self._conn: psycopg.Connection[Any] | None = None

    def _connect(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        conn.execute(f'LISTEN "{self.channel}"')
        return conn

    def wait(self, timeout_s: float) -> bool:
        try:
            if self._conn is None:
                self._conn = self._connect()
                return True  # a notification may have been missed while not listening
            return any(True for _ in self._conn.notifies(timeout=timeout_s, stop_after=1))
        except psycopg.Error as exc:
            if self._conn is not None:
                log.warning("database notifications lost (%s)", type(exc).__name__)
            self.close()
            time.sleep(timeout_s)  # listen again after this long, not in a tight loop
            return False

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with suppress(psycopg.Error):
                conn.close()


class PostgresDatabase(Database):
    """A connection pool on `url`; transactions at READ COMMITTED."""

    dialect = "postgresql"

    def __init__(self, url: str, *, pool_size: int = 4) -> None:
        self.url = url
        params = conninfo_to_dict(url)
        self.where = f"postgresql://{params.get('host', 'localhost')}/{params.get('dbname', '')}"
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            open=False,
            timeout=CONNECT_TIMEOUT_S,
            kwargs={"connect_timeout": CONNECT_TIMEOUT_S},
            check=ConnectionPool.check_connection,
            name="xc",
        )
        self._pool.open(wait=False)

    @contextmanager
    def transaction(self, what: str) -> Iterator[Transaction]:
        try:
            with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cursor:
                yield PostgresTransaction(cursor)
        except psycopg.Error as exc:
            raise StoreUnavailable(reason(exc, what)) from exc

    def listen(self, channel: str) -> Listener:
        return PostgresListener(self.url, channel)

    def close(self) -> None:
        self._pool.close()
