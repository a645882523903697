"""Whole ASTRA training steps over a catalog grown with synthetic distractors (a tiny run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.astra_train_scale import main, parse_args, run_size
from bench.report import render_astra_train_scale

pytestmark = pytest.mark.bench_run  # each test trains: make test-bench, not make test


def test_distractors_grow_the_label_space_not_the_trained_rows(demo_data: Path) -> None:
    args = parse_args(
        ["--data", str(demo_data), "--steps", "4", "--warmup", "1", "--refresh-every", "2"]
    )
    small = run_size(demo_data, 0, args)
    grown = run_size(demo_data, 3000, args)
    assert grown["labels"] == small["labels"] + 3000
    # Distractors are never positives: the rows trained (and the optimiser's state) stay.
    assert grown["trained_labels"] == small["trained_labels"] > 0
    assert len(grown["refresh_s"]) == 2 and grown["steps"] == 4
    assert grown["mining_index"]["type"] == grown["fixed_index"]["type"] == "flat"
    # the distractors' index is built once, at the first refresh, and timed apart
    assert grown["fixed_index_s"] > 0 and small["fixed_index_s"] > 0
    assert grown["peak_rss_bytes"] > grown["vector_bytes"] > small["vector_bytes"]


def test_each_size_runs_in_its_own_process_and_lands_in_the_json(
    demo_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "scale.json"
    argv = ["--data", str(demo_data), "--distractors", "0", "500", "--steps", "2"]
    assert main([*argv, "--warmup", "0", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert [run["distractors"] for run in record["runs"]] == [0, 500]
    assert record["command"].startswith("python -m bench.astra_train_scale")
    table = render_astra_train_scale(record)
    assert table.startswith("| labels L | of which distractors |") and "| flat / flat |" in table
    failed = {**record, "runs": [*record["runs"], {"distractors": 10**7, "exit_code": -9}]}
    assert "| did not finish: exit code -9 |" in render_astra_train_scale(failed)
