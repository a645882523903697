"""An index's cost carried to a catalog size too large to build here, from fitted curves.

At 10^7 labels an HNSW graph takes hours to build on 2 cores. What `bench.scale` measured at
smaller K is fitted and carried to the target size, and reported as an extrapolation, never as
a measurement:

- build seconds: a power law, s = a·K^b (least squares on log-log axes);
- bytes: linear in K (a fixed part plus bytes per label);
- recall@10 and p50 latency at each efSearch: linear in log10 K (at a fixed search depth HNSW
  loses about the same recall per decade of K, and walks about the same number of extra hops).

The efSearch suggested for the target K is the smallest whose fitted recall reaches the goal.
Only sizes from FIT_FROM_LABELS up are fitted (below it recall saturates at 1.0 for the deeper
settings, and a line through saturated points understates the loss per decade), and only the
settings measured at every fitted size.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

FIT_FROM_LABELS = 1_000_000


def _line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope and intercept of ys against xs."""
    slope, intercept = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(slope), float(intercept)


def measured_rows(report: dict[str, Any], index_type: str) -> list[tuple[int, dict[str, Any]]]:
    """(K, index row) of `bench.scale`'s JSON for every size that measured `index_type`, in the
    JSON's order (smallest K first)."""
    return [
        (size["labels"], index)
        for size in report["sizes"]
        for index in size["indexes"]
        if index["type"] == index_type
    ]


def extrapolate(
    report: dict[str, Any],
    index_type: str,
    target_labels: int,
    goal: float = 0.95,
    fit_from: int = FIT_FROM_LABELS,
) -> dict[str, Any] | None:
    """Fitted build time, memory, recall and latency of `index_type` at `target_labels`, from
    the sizes in `report` from `fit_from` up to below the target that measured it; None with
    fewer than two such sizes."""
    measured = measured_rows(report, index_type)
    rows = [(k, row) for k, row in measured if fit_from <= k < target_labels]
    if len(rows) < 2:
        return None
    ks = [k for k, _ in rows]
    logs = [math.log10(k) for k in ks]
    target_log = math.log10(target_labels)
    build_slope, build_intercept = _line(logs, [math.log10(row["build_s"]) for _, row in rows])
    bytes_slope, bytes_intercept = _line(ks, [row["bytes"] for _, row in rows])
    settings = [
        setting
        for setting in (entry["setting"] for entry in rows[-1][1]["sweep"])
        if all(any(e["setting"] == setting for e in row["sweep"]) for _, row in rows)
    ]
    by_setting = []
    for setting in settings:
        found = [next(e for e in row["sweep"] if e["setting"] == setting) for _, row in rows]
        recall = _line(logs, [e["recall_at_10"] for e in found])
        latency = _line(logs, [e["latency_ms"]["p50"] for e in found])
        by_setting.append(
            {
                "setting": setting,
                "recall_at_10": min(1.0, recall[0] * target_log + recall[1]),
                "recall_lost_per_decade": -recall[0],
                "p50_ms": latency[0] * target_log + latency[1],
            }
        )
    reaching = [row for row in by_setting if row["recall_at_10"] >= goal]
    return {
        "index": index_type,
        "labels": target_labels,
        "fitted_on": ks,
        "goal_recall_at_10": goal,
        "build_s": 10 ** (build_slope * target_log + build_intercept),
        "build_exponent": build_slope,
        "bytes": bytes_slope * target_labels + bytes_intercept,
        "by_setting": by_setting,
        "first_reaching_goal": reaching[0] if reaching else None,
    }
