"""A throwaway PostgreSQL server for the fleet benchmark and the tests: the installed one.

pytest-postgresql's executor runs `pg_ctl` (through `bench/pg_ctl`, which becomes the
`postgres` user when run as root: PostgreSQL refuses to start as root) on a fresh data directory
and a free port, with fsync off (what is measured is the service's ordering and locking, not
the server's durability), and stops it at the end. `new_database` makes an empty database.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.server import free_port

WRAPPER = Path(__file__).with_name("pg_ctl")
SUPERUSER = "postgres"


def installed() -> bool:
    """Whether a PostgreSQL server is installed."""
    return shutil.which("pg_ctl") is not None or any(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")
    )


@contextmanager
def running_server(max_connections: int = 200) -> Iterator[str]:
    """Start a server; yields its URL without a database part (`new_database` adds one)."""
    from pytest_postgresql.executors.proc import PostgreSQLExecutor

    base = Path(tempfile.mkdtemp(prefix="xc-postgres-"))
    if os.geteuid() == 0:  # the server's user must write there
        shutil.chown(base, SUPERUSER, SUPERUSER)
    port = free_port()
    executor = PostgreSQLExecutor(
        executable=str(WRAPPER),
        host="127.0.0.1",
        port=port,
        datadir=str(base / "data"),
        unixsocketdir=str(base),
        logfile=str(base / "server.log"),
        startparams="-w",
        dbname="xc",
        user=SUPERUSER,
        postgres_options=f"-c max_connections={max_connections}",
    )
    executor.start()
    try:
        yield f"postgresql://{SUPERUSER}@127.0.0.1:{port}"
    finally:
        executor.stop()
        shutil.rmtree(base, ignore_errors=True)


def new_database(server: str) -> str:
    """A new empty database on `server`; its URL."""
    import psycopg

    name = f"xc_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{server}/{name}"
