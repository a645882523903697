"""Tests for bench.report: the quality table from a results JSON and the marked sections."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.report import (
    SECTIONS,
    headline_verdict,
    main,
    render_quality,
    replace_section,
    update,
)
from training.metrics import METRIC_NAMES


def _method(family: str, p1: float, ndcg10: float) -> dict[str, Any]:
    metrics = dict.fromkeys(METRIC_NAMES, 0.25) | {"P@1": p1, "nDCG@10": ndcg10, "points": 10}
    return {
        "family": family,
        "metrics": metrics,
        "train_seconds": 1234.5,
        "train_seconds_source": "manifest",
        "ms_per_query_batched": 1.234,
        "ms_per_query_single_p50": None,
        "model_mb": 87.04,
        "details": {"versions": {"omikuji": "0.5.2", "numpy": "1.26.4"}},
    }


def _record(ours_p1: float = 0.7) -> dict[str, Any]:
    return {
        "dataset": "cooking",
        "train_split": "trn",
        "eval_split": "tst",
        "headline": "P@1",
        "points": 10,
        "labels": 736,
        "peer_features": {
            "learnable_labels": 700,
            "eval_positives_learnable": 0.9512,
            "train_points": 100,
            "features": 5000,
        },
        "command": "python -m bench.quality --dataset cooking",
        "date": "2026-11-21T12:00:00+00:00",
        "machine": {
            "platform": "Linux",
            "cpu_count": 2,
            "python": "3.11.7",
            "load_average": [1.5],
            "load_average_at_end": [1.7],
        },
        "versions": {"numpy": "2.4.6", "libpecos": None},
        "notes": {"train_seconds": "how it was measured"},
        "builds": ["python -m training train --data d --out models/x --train-split trn"],
        "methods": {
            "hybrid": _method("ours", ours_p1, 0.75),
            "Omikuji": _method("peer", 0.71, 0.69),
        },
    }


def test_quality_table_has_a_row_per_method_the_best_in_bold_and_provenance() -> None:
    text = render_quality(_record(ours_p1=0.72))
    lines = text.splitlines()
    assert lines[0].startswith("| method | kind | P@1 |")
    assert lines[0].count("|") == len(METRIC_NAMES) + 7
    hybrid = next(line for line in lines if line.startswith("| hybrid |"))
    omikuji = next(line for line in lines if line.startswith("| Omikuji |"))
    assert "| **0.7200** |" in hybrid and "| **0.7500** |" in hybrid
    assert "| 1,234.5 | 1.23 | n/a | 87.0 |" in hybrid  # one decimal from 10 up, else two
    assert "| 0.7100 |" in omikuji and "| 0.6900 |" in omikuji
    assert "python -m bench.quality --dataset cooking" in text
    assert "omikuji 0.5.2" in text and "peers' interpreter: numpy 1.26.4" in text
    assert "libpecos" not in text  # not installed in the main interpreter: not listed
    assert "700 labels with a training positive (95.1 % of the evaluation" in text
    assert "- train s: how it was measured" in text
    assert "```bash\npython -m training train --data d --out models/x" in text


def test_verdict_says_whether_our_best_is_ahead_on_the_headline_metric() -> None:
    assert "is ahead of every other method" in headline_verdict(_record(ours_p1=0.72))
    behind = headline_verdict(_record(ours_p1=0.70))
    assert "is not ahead" in behind and "Omikuji (0.7100, +0.0100)" in behind


def test_replace_section_is_idempotent_and_leaves_the_rest_alone() -> None:
    text = "# B\n\nintro\n\n<!-- quality:cooking -->\nold table\n<!-- /quality:cooking -->\n\nend\n"
    once = replace_section(text, "quality:cooking", "new table\n")
    assert once == text.replace("old table", "new table")
    assert replace_section(once, "quality:cooking", "new table") == once
    with pytest.raises(ValueError, match="quality:homedepot"):
        replace_section(text, "quality:homedepot", "x")


def test_main_renders_marked_sections_from_json_and_skips_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    results = tmp_path / "results"
    results.mkdir()
    (results / SECTIONS["quality:cooking"][0]).write_text(json.dumps(_record()))
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text(
        "<!-- quality:cooking -->\n<!-- /quality:cooking -->\n"
        "<!-- quality:homedepot -->\nkept\n<!-- /quality:homedepot -->\n"
    )
    assert main(["--file", str(doc), "--results", str(results)]) == 0
    written = doc.read_text()
    assert "| hybrid | ours |" in written and "kept" in written
    assert "quality:homedepot" in capsys.readouterr().err
    again, updated, _ = update(written, results)
    assert again == written and updated == ["quality:cooking"]
