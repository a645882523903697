"""Hostile clients against a real server, one kind at a time, while a single-query client
probes (`bench.hostile`, on the demo bundle): slow-loris bodies, large uploads back to back,
256-query searches at k = 100, and 256-query searches at k = 1000 (refused at once: over
XC_MAX_RESULTS). For each: the probe's p99 within 5x its idle p99, never a 5xx, the server
healthy after, and its memory (with its upload checkers) under a stated bound."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.hostile import TRANSPORT_ERROR, measure

pytestmark = pytest.mark.slow

PROBES = 300
# Peak resident set of the server process plus its upload checkers (measured 350-700 MB).
MEMORY_BOUND_MB = 1500


def check(found: dict) -> None:
    assert found["hostile_p99_ms"] <= 5 * found["idle_p99_ms"], found
    assert not [code for code in found["probe_statuses"] if code >= 500], found
    assert not [code for code in found["attacker_statuses"] if code >= 500], found
    assert TRANSPORT_ERROR not in found["attacker_statuses"], found  # every request answered
    assert found["healthy_after"], found
    assert found["peak_rss_mb"] + found["children_peak_rss_mb"] < MEMORY_BOUND_MB, found


def test_slow_loris_bodies_leave_single_queries_within_5x(
    demo_bundle: Path, tmp_path: Path
) -> None:
    found = measure(demo_bundle, "loris", PROBES, tmp_path, {})
    check(found)
    assert found["attacker_statuses"] == {0: 20}  # every connection was held open


def test_large_uploads_leave_single_queries_within_5x(demo_bundle: Path, tmp_path: Path) -> None:
    found = measure(demo_bundle, "uploads", PROBES, tmp_path, {})
    check(found)
    assert found["attacker_statuses"].get(201, 0) >= 1, found  # uploads were taken


def test_256_query_searches_leave_single_queries_within_5x(
    demo_bundle: Path, tmp_path: Path
) -> None:
    found = measure(demo_bundle, "big", PROBES, tmp_path, {})
    check(found)
    assert found["attacker_statuses"].get(200, 0) >= 1, found
    assert found["probe_statuses"] == {200: PROBES}, found  # never shut out of the queue


def test_refused_256_x_1000_searches_leave_single_queries_within_5x(
    demo_bundle: Path, tmp_path: Path
) -> None:
    found = measure(demo_bundle, "refused", PROBES, tmp_path, {})
    check(found)
    assert set(found["attacker_statuses"]) == {422}, found  # over XC_MAX_RESULTS
