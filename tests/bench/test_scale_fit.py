"""The fitted curves that carry an index's measured cost to a catalog size not built."""

from __future__ import annotations

import math

import pytest

from bench.report import _scale_extrapolated
from bench.scale_fit import extrapolate


def _size(labels: int, recall_at: dict[int, float]) -> dict:
    """A measured size whose HNSW costs follow known laws: build 1e-3·K^1.2 s, 100 + 600·K
    bytes, p50 = ef / 100 · log10 K ms."""
    sweep = [
        {
            "setting": {"ef_search": ef},
            "recall_at_10": recall,
            "latency_ms": {"p50": ef / 100 * math.log10(labels)},
        }
        for ef, recall in recall_at.items()
    ]
    row = {"type": "hnsw_sq8", "build_s": 1e-3 * labels**1.2, "bytes": 100 + 600 * labels}
    return {"labels": labels, "indexes": [{**row, "sweep": sweep}]}


def _recalls(labels: int) -> dict[int, float]:
    """Recall falling 0.04 per decade at ef 128, 0.01 at ef 512, from 1.0 at 10^5."""
    decades = math.log10(labels) - 5
    return {128: 1.0 - 0.04 * decades, 512: 1.0 - 0.01 * decades}


def test_the_fit_recovers_the_laws_the_measurements_follow() -> None:
    report = {"sizes": [_size(k, _recalls(k)) for k in (1_000_000, 2_000_000, 4_000_000)]}
    fit = extrapolate(report, "hnsw_sq8", 10_000_000, goal=0.95)
    assert fit is not None and fit["fitted_on"] == [1_000_000, 2_000_000, 4_000_000]
    assert fit["build_exponent"] == pytest.approx(1.2)
    assert fit["build_s"] == pytest.approx(1e-3 * 10_000_000**1.2, rel=1e-6)
    assert fit["bytes"] == pytest.approx(100 + 600 * 10_000_000)
    ef128, ef512 = fit["by_setting"]
    assert ef128["recall_at_10"] == pytest.approx(0.92)
    assert ef512["recall_at_10"] == pytest.approx(0.98)
    assert ef512["p50_ms"] == pytest.approx(5.12 * 7)
    # ef 128 falls below the goal at 10M; ef 512 is the first that reaches it.
    assert fit["first_reaching_goal"]["setting"] == {"ef_search": 512}
    assert extrapolate(report, "hnsw_sq8", 10_000_000, goal=0.99)["first_reaching_goal"] is None


def test_saturated_small_sizes_and_too_few_points_are_not_fitted() -> None:
    small = [_size(k, {128: 1.0, 512: 1.0}) for k in (20_000, 100_000)]
    one_large = {"sizes": [*small, _size(1_000_000, _recalls(1_000_000))]}
    assert extrapolate(one_large, "hnsw_sq8", 10_000_000) is None  # 20K and 100K are not fitted
    assert extrapolate(one_large, "hnsw", 10_000_000) is None  # not measured at all
    two_large = {"sizes": [*one_large["sizes"], _size(2_000_000, _recalls(2_000_000))]}
    fit = extrapolate(two_large, "hnsw_sq8", 10_000_000)
    assert fit is not None and fit["fitted_on"] == [1_000_000, 2_000_000]
    assert fit["by_setting"][0]["recall_at_10"] == pytest.approx(0.92)


def test_the_report_labels_the_fit_as_extrapolated() -> None:
    sizes = [_size(k, _recalls(k)) for k in (1_000_000, 2_000_000)]
    fit = extrapolate({"sizes": sizes}, "hnsw_sq8", 10_000_000)
    table = _scale_extrapolated([fit])
    assert "| 10,000,000 | hnsw_sq8 | 1,000,000, 2,000,000 |" in table
    assert "Extrapolated, not measured" in table and "ef_search=512" in table
