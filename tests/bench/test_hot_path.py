"""bench.hot_path: the Server-Timing split of a round trip, the variants, and its table."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bench.hot_path import MODEL_STAGES, ROWS, Variant, parse_server_timing, split_round_trip
from bench.report import render_hot_path


def test_server_timing_is_parsed_by_name_in_milliseconds() -> None:
    value = "tokenize;dur=0.040, queue;dur=0.050, search;dur=1.5, app;dur=1.700"
    assert parse_server_timing(value) == {
        "tokenize": 0.04,
        "queue": 0.05,
        "search": 1.5,
        "app": 1.7,
    }
    assert parse_server_timing('cache;desc="hit", app;dur=2') == {"app": 2.0}


def test_a_round_trip_is_split_into_parts_that_add_up() -> None:
    timing = {"app": 1.7, "search": 1.5, "tokenize": 0.05, "queue": 0.05, "encode": 0.8}
    rows = split_round_trip(2.0, timing)
    assert rows["outside the app"] == pytest.approx(0.3)
    assert rows["app outside the search"] == pytest.approx(0.2)
    assert rows["search outside the model"] == pytest.approx(0.6)  # no retrieve stage reported
    parts = sum(rows[name] for name in (*ROWS[1:], *MODEL_STAGES))
    assert parts == pytest.approx(rows["round trip"])


def test_variants_name_a_checkout_and_settings() -> None:
    variant = Variant.parse("student=.,XC_ENCODER_SIZE=student,XC_THREADS=2")
    assert variant.name == "student" and variant.directory == Path(".").resolve()
    assert variant.env == {"XC_ENCODER_SIZE": "student", "XC_THREADS": "2"}
    with pytest.raises(argparse.ArgumentTypeError, match="name=DIR"):
        Variant.parse("=.")


def test_the_table_has_a_column_per_variant_and_a_row_per_stage() -> None:
    summary = {name: {"p50": 0.1, "mean": 0.12} for name in (*ROWS, *MODEL_STAGES)}
    record = {
        "command": "python -m bench.hot_path --variant a=.",
        "date": "2026-12-06",
        "machine": {"cpu_count": 2},
        "load_average_before": [0.5, 0.4, 0.3],
        "requests": 2000,
        "variants": [
            {"name": "a", "env": {}, "summary": summary},
            {
                "name": "b",
                "env": {"XC_ENCODER_SIZE": "student"},
                "encoder": "student int8",
                "summary": summary,
            },
        ],
    }
    table = render_hot_path(record)
    assert "| stage (ms, p50 / mean) | a | b: student int8 (`XC_ENCODER_SIZE=student`) |" in table
    assert "| encode | 0.100 / 0.120 | 0.100 / 0.120 |" in table
    assert "2,000 requests per variant" in table and "hot_path.json" in table
