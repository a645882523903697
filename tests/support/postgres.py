"""A real PostgreSQL server for the tests: the installed one, started once per session
(`bench.postgres`), and a fresh database per test.

Without an installed server the tests that need one are skipped, unless
`XC_TESTS_NEED_POSTGRES=1` (`make test` sets it, after installing the server), where they fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from bench.postgres import installed, new_database, running_server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL of a running server (no database part); stopped at the end of the session."""
    if not installed():
        if os.environ.get("XC_TESTS_NEED_POSTGRES") == "1":
            pytest.fail("PostgreSQL is not installed (make test installs it)")
        pytest.skip("PostgreSQL is not installed (make test installs it)")
    with running_server() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """A fresh database for one test."""
    return new_database(postgres_server)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    """Each store test runs twice: on SQLite (None: the file in the data dir) and on a fresh
    PostgreSQL database."""
    if request.param == "sqlite":
        return None
    return new_database(request.getfixturevalue("postgres_server"))
