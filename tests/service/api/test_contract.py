"""Contract tests: the committed `openapi.yaml` against a real `python -m service` process.

Why: `openapi.yaml` is what clients code against, and it is generated from the FastAPI app, so
a handler, middleware or error handler that answers outside what the app declares (a status
code, a body shape or a content type the contract does not list, or a 5xx for bad input) never
shows up in it. These tests load the schema from the committed file (not from the live
server's /openapi.json), so they also catch a stale file, and run schemathesis over every
operation it documents against a real server process serving the demo bundle: positive cases
(data that fits the schema) and negative ones (data that breaks it), from the examples,
coverage and fuzzing phases, each checked for

* no 5xx answer (`not_a_server_error`),
* invalid input rejected with a 4xx, never accepted (`negative_data_rejection`),
* a documented status code (`status_code_conformance`),
* a documented content type (`content_type_conformance`),
* a body that matches the documented schema (`response_schema_conformance`).

The contract runs three times: against a server with no key, and against one with a search key
and an admin key, once sending the admin key and once a wrong key (issue 18: zero 5xx with and
without keys).

The example count is bounded for CI on 2 CPU cores: the requests take about 15 s in all (most
of it valid /admin/reload calls, each warming a bundle), on top of the server's start and the
session's demo bundle training (tests/conftest.py), which dominate the file's runtime.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case, CheckFunction
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.paths import REPO
from tests.support.servers import free_port, start_server, stop, wait_ready

pytestmark = pytest.mark.slow

# Hypothesis writes caches to ./.hypothesis/ even with no example database (from collection on,
# so a fixture is too late); keep them out of the working tree unless the caller chose a place.
os.environ.setdefault(
    "HYPOTHESIS_STORAGE_DIRECTORY", str(Path(tempfile.gettempdir()) / "xc-search-hypothesis")
)

# Generated cases per operation in the fuzzing phase (positive and negative together); the
# coverage phase adds its own boundary and invalid-input cases on top.
MAX_EXAMPLES = 100
# The keyed runs repeat the contract against a server with both keys set, with fewer cases.
KEYED_MAX_EXAMPLES = 30
SEARCH_KEY, ADMIN_KEY = "contract-search-key", "contract-admin-key"
KEYED_RUN = settings(
    max_examples=KEYED_MAX_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
REQUEST_TIMEOUT_S = 30
STOP_TIMEOUT_S = 60

CHECKS: list[CheckFunction] = [
    not_a_server_error,
    negative_data_rejection,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]

CONFIG = schemathesis.Config.from_dict(
    {
        # Positive and negative data. Schemathesis adds no token of its own: each test sends
        # the one its server needs (none, the admin key, or a wrong one).
        "generation": {"mode": "all", "with-security-parameters": False},
        # Invalid input must be refused with a 4xx, whichever one the contract documents for it
        # (413 for an oversized body, too); a 5xx fails `not_a_server_error` instead.
        "checks": {"negative_data_rejection": {"expected-statuses": ["4XX", "5XX"]}},
    }
)
schema = schemathesis.openapi.from_path(REPO / "openapi.yaml", config=CONFIG)


@dataclass(frozen=True)
class LiveServer:
    """A running server: where it answers, and where its JSON log goes."""

    base_url: str
    log_path: Path

    def error_lines(self, last: int = 5) -> list[str]:
        """The last error-level log lines (a 5xx's traceback is there, by request id)."""
        errors = []
        for line in self.log_path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("level") in ("error", "critical"):
                errors.append(line)
        return errors[-last:]


@contextmanager
def running_server(
    bundle: Path, tmp_path_factory: pytest.TempPathFactory, **settings: str
) -> Iterator[LiveServer]:
    """`python -m service` on `bundle` with only the given XC_* settings, until SIGTERM."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("contract") / "stderr.log"
    process = start_server(bundle, port, log_path, **settings)
    try:
        wait_ready(process, base, log_path)
        yield LiveServer(base_url=base, log_path=log_path)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=STOP_TIMEOUT_S)
    finally:
        stop(process)


@pytest.fixture(scope="module")
def live_server(
    demo_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """The demo bundle served with no key."""
    with running_server(demo_bundle, tmp_path_factory) as server:
        yield server


@pytest.fixture(scope="module")
def keyed_server(
    demo_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """The demo bundle served with a search key and an admin key."""
    keys = {"search_key": SEARCH_KEY, "admin_key": ADMIN_KEY}
    with running_server(demo_bundle, tmp_path_factory, **keys) as server:
        yield server


def check_case(case: Case, server: LiveServer, headers: dict[str, str] | None = None) -> None:
    """Call the server with the case and check the answer against the contract."""
    base_url = server.base_url
    response = case.call(base_url=base_url, timeout=REQUEST_TIMEOUT_S, headers=headers)
    # A text/plain body (Prometheus exposition format) has no JSON schema to conform to.
    skipped = (
        [response_schema_conformance] if documented_as_text(case, response.status_code) else []
    )
    try:
        case.validate_response(
            response,
            checks=[check for check in CHECKS if check not in skipped],
            transport_kwargs={"base_url": base_url, "timeout": REQUEST_TIMEOUT_S},
        )
    except Exception:
        # Shown with the failure: the server-side cause of a 5xx.
        if errors := server.error_lines():
            print("server errors:", *errors, sep="\n")
        raise


def documented_as_text(case: Case, status_code: int) -> bool:
    """Whether the contract documents this answer as text/plain only (e.g. /metrics' 200)."""
    responses: dict[str, Any] = case.operation.definition.raw.get("responses", {})
    response = responses.get(str(status_code)) or responses.get(f"{status_code // 100}XX") or {}
    media_types = list(response.get("content") or {})
    return bool(media_types) and all(media.startswith("text/plain") for media in media_types)


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_server_honours_committed_contract(case: Case, live_server: LiveServer) -> None:
    """Every generated request gets a documented status, content type and body; never a 5xx."""
    check_case(case, live_server)


@schema.parametrize()
@KEYED_RUN
def test_keyed_server_honours_the_contract_with_the_admin_key(
    case: Case, keyed_server: LiveServer
) -> None:
    """With both keys set and the admin key sent, the same promises (issue 18: with keys)."""
    check_case(case, keyed_server, {"Authorization": f"Bearer {ADMIN_KEY}"})


@schema.parametrize()
@KEYED_RUN
def test_keyed_server_honours_the_contract_without_a_key(
    case: Case, keyed_server: LiveServer
) -> None:
    """With both keys set and a wrong one sent: guarded routes are a documented 401, open ones
    answer as usual, never a 5xx."""
    check_case(case, keyed_server, {"Authorization": f"Bearer {SEARCH_KEY}-wrong"})
