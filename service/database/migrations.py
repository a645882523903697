"""Schema migrations: plain versioned SQL, applied in order when a store opens.

Each store (the catalog, the batch jobs) names its migrations; `schema_migrations` records
which of them a database has. Applying them is one transaction per migration, and on
PostgreSQL it first takes an advisory lock, so replicas that start together apply each one
exactly once. A migration is SQL per dialect (`BLOB` is `BYTEA` on PostgreSQL, SQLite's
`AUTOINCREMENT` is an identity column): a dozen statements in all, which is why this is plain
SQL rather than Alembic and SQLAlchemy, neither of which the service otherwise needs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from service.database.base import Database, Transaction

log = logging.getLogger(__name__)

# pg_advisory_xact_lock's key for "migrating" (any constant the stores agree on).
LOCK_KEY = 0x78_63_73_71  # "xcsq"


@dataclass(frozen=True)
class Migration:
    """Version `version` of `component`'s schema: its statements per dialect."""

    version: int
    sqlite: tuple[str, ...]
    postgresql: tuple[str, ...]

    def statements(self, dialect: str) -> tuple[str, ...]:
        return self.sqlite if dialect == "sqlite" else self.postgresql


def _applied(tx: Transaction, component: str) -> int:
    tx.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        "component TEXT NOT NULL, version INTEGER NOT NULL, PRIMARY KEY (component, version))"
    )
    rows = tx.query("SELECT MAX(version) FROM schema_migrations WHERE component = ?", (component,))
    return rows[0][0] or 0


def migrate(database: Database, component: str, migrations: tuple[Migration, ...]) -> int:
    """Apply the migrations of `component` the database lacks; returns its schema version."""
    what = f"the {component} schema"
    version = 0
    for migration in migrations:
        with database.transaction(what) as tx:
            if tx.dialect == "postgresql":
                tx.query("SELECT pg_advisory_xact_lock(?)", (LOCK_KEY,))
            version = _applied(tx, component)
            if migration.version <= version:
                continue
            for statement in migration.statements(tx.dialect):
                tx.execute(statement)
            tx.execute(
                "INSERT INTO schema_migrations (component, version) VALUES (?, ?)",
                (component, migration.version),
            )
            version = migration.version
            log.info(
                "schema migrated",
                extra={"component": component, "version": version, "database": database.where},
            )
    return version
