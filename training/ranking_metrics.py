"""Ranking metrics for extreme classification: the one implementation used everywhere.

Inputs: `ranked[i]` holds the predicted label ids of point i, best first (-1 pads and never
matches; a label repeated in a row counts only at its first rank); `truth[i]` holds the positive
label ids y_i of point i and `gains[i]` their aligned gains (all 1 when not given). Points with
no positive label are skipped; the result's "points" is the number evaluated. Columns missing
from `ranked` (fewer than k) count as misses. With hit_r = [l_r in y_i]:

- P@k    = (1/k) * sum_{r<=k} hit_r                                   (always divides by k)
- R@k    = (1/|y|) * sum_{r<=k} hit_r
- nDCG@k = DCG@k / IDCG@k, DCG@k = sum_{r<=k} gain(l_r) / log2(r + 1) with gain 0 off y;
           IDCG@k is the DCG of the min(k, |y|) largest gains of y in decreasing order
           (a point whose IDCG is 0 scores 0).
- PSP@k  = mean_i[(1/k) sum_{r<=k} hit_r * invp(l_r)] / mean_i[(1/k) * the sum of the
           min(k, |y|) largest invp(l) over l in y] -- the ratio of means of pyxclib, which
           makes a perfect ranking score exactly 1. Omitted when no propensities are given.

P, R and nDCG are means over the evaluated points. Names parse as `<P|nDCG|PSP|R>@<k>`, so
any k can be asked for. Inverse propensities follow Jain et al. (KDD 2016):
1/p_l = 1 + (ln N - 1) * (B + 1)^A * (N_l + B)^(-A), N points, N_l positives of label l.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

METRIC_NAMES: tuple[str, ...] = ("P@1", "P@3", "P@5", "nDCG@5", "nDCG@10", "PSP@5", "R@10", "R@100")
METRIC_KINDS: tuple[str, ...] = ("P", "nDCG", "PSP", "R")

_NAME_RE = re.compile(r"(P|nDCG|PSP|R)@([1-9][0-9]*)")


def parse_metric(name: str) -> tuple[str, int]:
    """Split a metric name such as "nDCG@10" into its kind and k; ValueError if unknown."""
    match = _NAME_RE.fullmatch(name)
    if match is None:
        raise ValueError(
            f"unknown metric {name!r}: expected <kind>@<k> with kind in {', '.join(METRIC_KINDS)}"
            " and k >= 1"
        )
    return match.group(1), int(match.group(2))


def inverse_propensities(label_freq: np.ndarray, num_points: int, a: float, b: float) -> np.ndarray:
    """Inverse propensity 1/p_l per label (Jain et al. 2016), used to weight PSP@k.

    1/p_l = 1 + (ln N - 1) * (B + 1)^A * (N_l + B)^(-A), where N = `num_points` and N_l =
    `label_freq[l]`; rare labels get large weights so tail hits count for more.
    """
    if num_points < 1:
        raise ValueError(f"num_points must be >= 1, got {num_points}")
    freq = np.asarray(label_freq, dtype=np.float64)
    if freq.size and freq.min() < 0:
        raise ValueError("label frequencies must be >= 0")
    c = (math.log(num_points) - 1.0) * (b + 1.0) ** a
    return 1.0 + c * (freq + b) ** (-a)


def _rank_within_point(point: np.ndarray, num_points: int) -> np.ndarray:
    """For entries grouped by point (sorted), each entry's 0-based position inside its group."""
    counts = np.bincount(point, minlength=num_points)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    return np.arange(point.size) - starts[point]


def _sorted_desc(point: np.ndarray, values: np.ndarray, num_points: int) -> tuple[np.ndarray, ...]:
    """Entries regrouped by point with values decreasing: (point, 0-based rank, value)."""
    order = np.lexsort((-values, point))
    pt = point[order]
    return pt, _rank_within_point(pt, num_points), values[order]


@dataclass(kw_only=True, frozen=True)
class _Truth:
    """The evaluated points' positives as sorted (point, label) pairs with their gains
    (a label given twice keeps its largest gain), and each point's count of positives."""

    point: np.ndarray
    label: np.ndarray
    gain: np.ndarray
    count: np.ndarray


def _truth(
    truth_arrays: list[np.ndarray],
    keep: np.ndarray,
    sizes: np.ndarray,
    gains: Sequence[np.ndarray] | None,
) -> _Truth:
    """The positives of the kept points, checked (ids >= 0, one gain per label, gains >= 0)."""
    m = int(keep.size)
    t_pt = np.repeat(np.arange(m, dtype=np.int64), sizes[keep])
    t_lab = np.concatenate([truth_arrays[i] for i in keep])
    if t_lab.min() < 0:
        raise ValueError("truth label ids must be >= 0")
    if gains is None:
        t_gain = np.ones(t_lab.size, dtype=np.float64)
    else:
        gain_arrays = [np.asarray(gains[i], dtype=np.float64).ravel() for i in keep]
        for i, g in zip(keep, gain_arrays, strict=True):
            if g.size != sizes[i]:
                raise ValueError(f"gains[{i}] has {g.size} entries but truth[{i}] has {sizes[i]}")
        t_gain = np.concatenate(gain_arrays)
        if t_gain.min() < 0:
            raise ValueError("gains must be >= 0")
    order = np.lexsort((-t_gain, t_lab, t_pt))
    t_pt, t_lab, t_gain = t_pt[order], t_lab[order], t_gain[order]
    first = np.ones(t_lab.size, dtype=bool)
    first[1:] = (t_pt[1:] != t_pt[:-1]) | (t_lab[1:] != t_lab[:-1])
    t_pt, t_lab, t_gain = t_pt[first], t_lab[first], t_gain[first]
    return _Truth(
        point=t_pt,
        label=t_lab,
        gain=t_gain,
        count=np.bincount(t_pt, minlength=m).astype(np.float64),
    )


def _hits(
    ranked: np.ndarray, keep: np.ndarray, depth: int, truth: _Truth
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, 0-based rank, matched truth entry) of every hit in the first `depth` columns of
    the kept rows; a label repeated in a row counts at its first rank only."""
    m = int(keep.size)
    preds = np.full((m, depth), -1, dtype=np.int64)
    cols = min(depth, ranked.shape[1])
    preds[:, :cols] = ranked[keep, :cols]
    valid = preds >= 0
    # Membership by searching the sorted keys point * span + label; predicted ids above every
    # truth id are clamped to span - 1, which no truth key uses.
    span = int(truth.label.max()) + 2
    p_lab = np.clip(preds, 0, span - 1)
    t_key = truth.point * span + truth.label
    p_key = np.arange(m, dtype=np.int64)[:, None] * span + p_lab
    pos = np.minimum(np.searchsorted(t_key, p_key), t_key.size - 1)
    hit = valid & (t_key[pos] == p_key)
    hit_row, hit_rank = np.nonzero(hit)
    hit_entry = pos[hit_row, hit_rank]
    # nonzero is row-major, so the first occurrence of each (row, truth entry) pair is its best
    # rank.
    _, first_hit = np.unique(hit_row * t_key.size + hit_entry, return_index=True)
    if first_hit.size != hit_row.size:
        first_hit.sort()
        hit_row, hit_rank, hit_entry = hit_row[first_hit], hit_rank[first_hit], hit_entry[first_hit]
    return hit_row, hit_rank, hit_entry


def _check_shapes(
    ranked: np.ndarray, truth: Sequence[np.ndarray], gains: Sequence[np.ndarray] | None
) -> None:
    if ranked.ndim != 2:
        raise ValueError(f"ranked must be 2-D [points, k], got shape {ranked.shape}")
    if ranked.size and not np.issubdtype(ranked.dtype, np.integer):
        raise ValueError(f"ranked must hold integer label ids, got dtype {ranked.dtype}")
    n = ranked.shape[0]
    if len(truth) != n:
        raise ValueError(f"ranked has {n} rows but truth has {len(truth)} points")
    if gains is not None and len(gains) != n:
        raise ValueError(f"gains has {len(gains)} points but truth has {n}")


def evaluate(
    ranked: np.ndarray,
    truth: Sequence[np.ndarray],
    gains: Sequence[np.ndarray] | None = None,
    inv_propensity: np.ndarray | None = None,
    metrics: Sequence[str] = METRIC_NAMES,
) -> dict[str, float]:
    """Score a ranking against the positive labels: P@k, nDCG@k, PSP@k and R@k by name.

    See the module docstring for the definitions. Returns {name: value} in the order asked
    (PSP names dropped when `inv_propensity` is None) plus "points", the number of points
    evaluated (an int). With no evaluable point every metric is 0.0.
    """
    specs = [(name, *parse_metric(name)) for name in metrics]
    if inv_propensity is None:
        specs = [s for s in specs if s[1] != "PSP"]
    ranked = np.asarray(ranked)
    _check_shapes(ranked, truth, gains)
    truth_arrays = [np.asarray(t, dtype=np.int64).ravel() for t in truth]
    sizes = np.array([t.size for t in truth_arrays], dtype=np.int64)
    keep = np.flatnonzero(sizes > 0)
    m = int(keep.size)
    result: dict[str, float] = {}
    if m == 0 or not specs:
        result = {name: 0.0 for name, _, _ in specs}
        result["points"] = m
        return result
    positives = _truth(truth_arrays, keep, sizes, gains)
    t_lab = positives.label
    depth = max(k for _, _, k in specs)
    hit_row, hit_rank, hit_entry = _hits(ranked, keep, depth, positives)
    discount = 1.0 / np.log2(np.arange(2, depth + 2, dtype=np.float64))
    kinds = {kind for _, kind, _ in specs}
    if "nDCG" in kinds:
        ideal_gain = _sorted_desc(positives.point, positives.gain, m)
    if "PSP" in kinds:
        invp = np.asarray(inv_propensity, dtype=np.float64).ravel()
        if t_lab.max() >= invp.size:
            raise ValueError(
                f"inv_propensity has {invp.size} labels but truth uses label {int(t_lab.max())}"
            )
        ideal_invp = _sorted_desc(positives.point, invp[t_lab], m)

    for name, kind, k in specs:
        top = hit_rank < k
        rows = hit_row[top]
        if kind == "P":
            value = rows.size / (m * k)
        elif kind == "R":
            value = float(np.sum(1.0 / positives.count[rows])) / m
        elif kind == "nDCG":
            gain = positives.gain[hit_entry[top]] * discount[hit_rank[top]]
            dcg = np.bincount(rows, weights=gain, minlength=m)
            pt, rank, val = ideal_gain
            best = rank < k
            idcg = np.bincount(pt[best], weights=val[best] * discount[rank[best]], minlength=m)
            safe = np.where(idcg > 0, idcg, 1.0)
            value = float(np.where(idcg > 0, dcg / safe, 0.0).mean())
        else:
            found = float(invp[t_lab[hit_entry[top]]].sum())
            pt, rank, val = ideal_invp
            ideal = float(val[rank < k].sum())
            value = found / ideal if ideal > 0 else 0.0
        result[name] = float(value)
    result["points"] = m
    return result
