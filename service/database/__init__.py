"""Where durable state lives: SQLite files for one process, PostgreSQL for a fleet of replicas.

`open_database` picks the engine: `XC_DATABASE_URL=postgresql://...` gives every replica one
shared database (psycopg 3 with a connection pool); without it each store keeps its own SQLite
file in `XC_DATA_DIR`, the embedded default. The catalog store and the batch-job store write the
same SQL to either (`Transaction` spells the few differences); `migrations` brings a database's
schema to the version the code expects when a store opens.
"""

from __future__ import annotations

from pathlib import Path

from service.database.base import Database, Listener, Transaction
from service.database.migrations import Migration, migrate

__all__ = ["Database", "Listener", "Migration", "Transaction", "migrate", "open_database"]


def open_database(url: str | None, sqlite_path: Path, *, pool_size: int = 4) -> Database:
    """PostgreSQL at `url` when one is given, else the SQLite file `sqlite_path`."""
    if url:
        from service.database.postgres import PostgresDatabase

        return PostgresDatabase(url, pool_size=pool_size)
    from service.database.sqlite import SQLiteDatabase

    return SQLiteDatabase(sqlite_path)
