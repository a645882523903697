"""Timed ranking, the same way for every method the quality benchmark compares.

A method is given as `rank(start, stop)`, which returns the label ids of points start..stop-1,
best first ([stop - start, <= depth], -1 pads). `rank_all` ranks every point in batches and
reports the wall seconds (the batched throughput); `single_query_ms` ranks points one at a
time (the latency one query sees). Only numpy and tqdm are needed, so the peer libraries' own
environment (`python -m bench.peers`) times its models with this same code.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from tqdm.auto import tqdm

RankRange = Callable[[int, int], np.ndarray]


def rank_all(
    rank: RankRange, num_points: int, depth: int, batch_size: int, desc: str = "rank"
) -> tuple[np.ndarray, float]:
    """Ranked label ids of all points [num_points, depth] (-1 padded) and the wall seconds."""
    ranked = np.full((num_points, depth), -1, dtype=np.int64)
    started = time.perf_counter()
    for start in tqdm(range(0, num_points, batch_size), desc=desc, unit="batch", leave=False):
        stop = min(start + batch_size, num_points)
        found = np.asarray(rank(start, stop))[:, :depth]
        ranked[start:stop, : found.shape[1]] = found
    return ranked, time.perf_counter() - started


def single_query_ms(rank: RankRange, count: int, desc: str = "single queries") -> list[float]:
    """Wall milliseconds of ranking each of the first `count` points alone, after one warm-up."""
    if count > 0:
        rank(0, 1)
    times = []
    for i in tqdm(range(count), desc=desc, unit="query", leave=False):
        started = time.perf_counter()
        rank(i, i + 1)
        times.append(1000.0 * (time.perf_counter() - started))
    return times
