"""Tests for training.ranking_metrics: hand-worked examples, edge cases and a brute-force
cross-check."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from training.ranking_metrics import METRIC_NAMES, evaluate, inverse_propensities, parse_metric

# 1 / log2(3), the rank-2 discount, worked by hand: ln 3 / ln 2 = 1.098612 / 0.693147 = 1.584963.
D2 = 0.630930


def _arr(*labels: int) -> np.ndarray:
    return np.array(labels, dtype=np.int64)


def test_precision_recall_and_binary_ndcg_by_hand() -> None:
    # Point 0: y = {1, 2, 3}, ranking 1 5 2 7 3 -> hits at ranks 1, 3, 5.
    #   P@1 = 1, P@3 = 2/3, P@5 = 3/5; R@3 = 2/3, R@5 = 1.
    #   DCG@3 = 1/log2(2) + 1/log2(4) = 1.5; IDCG@3 = 1 + 0.630930 + 0.5 = 2.130930
    #   nDCG@3 = 1.5 / 2.130930 = 0.703918.
    # Point 1: y = {4}, ranking 0 4 -1 -1 -1 -> hit at rank 2.
    #   P@1 = 0, P@3 = 1/3, P@5 = 1/5; R@3 = R@5 = 1.
    #   DCG@3 = 1/log2(3) = 0.630930; IDCG@3 over min(3, 1) = 1 gain = 1 -> nDCG@3 = 0.630930.
    # Means: P@1 0.5, P@3 0.5, P@5 0.4, R@3 5/6, R@5 1, nDCG@3 (0.703918 + 0.630930)/2 = 0.667424.
    ranked = np.array([[1, 5, 2, 7, 3], [0, 4, -1, -1, -1]])
    truth = [_arr(1, 2, 3), _arr(4)]
    got = evaluate(ranked, truth, metrics=["P@1", "P@3", "P@5", "R@3", "R@5", "nDCG@3"])
    assert got["P@1"] == pytest.approx(0.5)
    assert got["P@3"] == pytest.approx(0.5)
    assert got["P@5"] == pytest.approx(0.4)
    assert got["R@3"] == pytest.approx(5 / 6)
    assert got["R@5"] == pytest.approx(1.0)
    assert got["nDCG@3"] == pytest.approx(0.667424, abs=1e-5)
    assert got["points"] == 2
    assert isinstance(got["points"], int)


def test_graded_ndcg_by_hand() -> None:
    # y = {10: gain 3, 20: gain 1}; ranking 20 30 10.
    # DCG@3 = 1/log2(2) + 0/log2(3) + 3/log2(4) = 1 + 1.5 = 2.5
    # IDCG@3 = 3/log2(2) + 1/log2(3) = 3 + 0.630930 = 3.630930 -> nDCG@3 = 0.688529.
    # DCG@1 = 1, IDCG@1 = 3 -> nDCG@1 = 1/3.
    ranked = np.array([[20, 30, 10]])
    truth = [_arr(10, 20)]
    gains = [np.array([3.0, 1.0])]
    got = evaluate(ranked, truth, gains=gains, metrics=["nDCG@1", "nDCG@3", "P@3"])
    assert got["nDCG@3"] == pytest.approx(0.688529, abs=1e-5)
    assert got["nDCG@1"] == pytest.approx(1 / 3)
    assert got["P@3"] == pytest.approx(2 / 3)  # P ignores gains
    binary = evaluate(ranked, truth, metrics=["nDCG@3"])
    # Binary: DCG = 1 + 0.5 = 1.5, IDCG = 1 + 0.630930 -> 0.919721.
    assert binary["nDCG@3"] == pytest.approx(0.919721, abs=1e-5)


def test_psp_is_a_ratio_of_means_by_hand() -> None:
    # Inverse propensities of labels 0..4: 1, 2, 4, 1, 8.
    # A: y = {2, 4}, ranking 2 0 1 -> hit label 2 (invp 4) at rank 1.
    # B: y = {1},    ranking 0 3 1 -> hit label 1 (invp 2) at rank 3.
    # PSP@3: numerators 4/3 and 2/3 (mean 1); best: A top-2 invp of y = 8 + 4 = 12 -> 12/3 = 4,
    #        B 2/3 (mean 7/3) -> PSP@3 = 1 / (7/3) = 3/7 = 0.428571.
    #        (A mean of per-point ratios would give (1/3 + 1)/2 = 2/3 instead.)
    # PSP@1: numerators 4 and 0; best 8 and 2 -> 4 / 10 = 0.4.
    invp = np.array([1.0, 2.0, 4.0, 1.0, 8.0])
    ranked = np.array([[2, 0, 1], [0, 3, 1]])
    truth = [_arr(2, 4), _arr(1)]
    got = evaluate(ranked, truth, inv_propensity=invp, metrics=["PSP@1", "PSP@3"])
    assert got["PSP@3"] == pytest.approx(3 / 7)
    assert got["PSP@1"] == pytest.approx(0.4)


def test_perfect_ranking_scores_one_everywhere() -> None:
    rng = np.random.default_rng(3)
    truth = [rng.choice(50, size=rng.integers(1, 6), replace=False) for _ in range(30)]
    ranked = np.full((30, 10), -1)
    for i, t in enumerate(truth):
        ranked[i, : t.size] = t
    invp = rng.uniform(1.0, 5.0, 50)
    got = evaluate(ranked, truth, inv_propensity=invp, metrics=["nDCG@5", "PSP@5", "R@10"])
    assert got["nDCG@5"] == pytest.approx(1.0)
    assert got["PSP@5"] == pytest.approx(1.0)
    assert got["R@10"] == pytest.approx(1.0)


def test_padding_never_matches_and_repeats_count_once() -> None:
    # y = {3}; ranking -1 3 -1: P@3 = 1/3, nDCG@3 = (1/log2(3)) / 1 = 0.630930.
    got = evaluate(np.array([[-1, 3, -1]]), [_arr(3)], metrics=["P@3", "nDCG@3"])
    assert got["P@3"] == pytest.approx(1 / 3)
    assert got["nDCG@3"] == pytest.approx(D2, abs=1e-5)
    # A label repeated in a row is one hit (at its first rank): P@3 = 1/3, not 1.
    got = evaluate(np.array([[5, 3, 3, 3]]), [_arr(3)], metrics=["P@3", "R@3", "nDCG@3"])
    assert got["P@3"] == pytest.approx(1 / 3)
    assert got["R@3"] == pytest.approx(1.0)
    assert got["nDCG@3"] == pytest.approx(D2, abs=1e-5)
    # An all-padding row scores 0.
    assert evaluate(np.full((1, 3), -1), [_arr(0)], metrics=["P@1"])["P@1"] == 0.0


def test_points_without_positives_are_skipped() -> None:
    ranked = np.array([[1, 2], [1, 2], [7, 8]])
    truth = [_arr(1), _arr(), _arr(8)]
    # Points 0 and 2 count: P@1 = (1 + 0)/2 = 0.5, R@2 = (1 + 1)/2 = 1.
    got = evaluate(ranked, truth, metrics=["P@1", "R@2"])
    assert got == {"P@1": 0.5, "R@2": 1.0, "points": 2}
    alone = evaluate(ranked[[0, 2]], [truth[0], truth[2]], metrics=["P@1", "R@2"])
    assert alone == got
    empty = evaluate(ranked, [_arr(), _arr(), _arr()], metrics=["P@1"])
    assert empty == {"P@1": 0.0, "points": 0}


def test_fewer_columns_than_k_count_as_misses() -> None:
    # y = {1, 2}, only two predictions 1 2: P@5 = 2/5, R@10 = 1, nDCG@5 = 1 (IDCG over 2 gains).
    got = evaluate(np.array([[1, 2]]), [_arr(1, 2)], metrics=["P@5", "R@10", "nDCG@5"])
    assert got["P@5"] == pytest.approx(0.4)
    assert got["R@10"] == pytest.approx(1.0)
    assert got["nDCG@5"] == pytest.approx(1.0)


def test_metric_names_parse_generically() -> None:
    assert parse_metric("P@10") == ("P", 10)
    assert parse_metric("nDCG@2") == ("nDCG", 2)
    assert parse_metric("PSP@100") == ("PSP", 100)
    for bad in ("P@0", "MAP@5", "p@5", "P@", "P5", "nDCG@-1", "R@1.5", "P@05x"):
        with pytest.raises(ValueError):
            parse_metric(bad)
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate(np.array([[0]]), [_arr(0)], metrics=["MRR@10"])


def test_default_metrics_and_psp_omitted_without_propensities() -> None:
    ranked = np.array([[0, 1, 2]])
    truth = [_arr(0)]
    plain = evaluate(ranked, truth)
    assert set(plain) == {m for m in METRIC_NAMES if not m.startswith("PSP")} | {"points"}
    full = evaluate(ranked, truth, inv_propensity=np.ones(3))
    assert set(full) == set(METRIC_NAMES) | {"points"}
    assert full["PSP@5"] == pytest.approx(1.0)


def test_input_validation() -> None:
    with pytest.raises(ValueError):
        evaluate(np.array([0, 1]), [_arr(0), _arr(1)])  # not 2-D
    with pytest.raises(ValueError):
        evaluate(np.array([[0, 1]]), [_arr(0), _arr(1)])  # rows != points
    with pytest.raises(ValueError):
        evaluate(np.array([[0, 1]]), [_arr(0, 1)], gains=[np.array([1.0])])  # misaligned gains
    with pytest.raises(ValueError):
        evaluate(np.array([[0, 1]]), [_arr(5)], inv_propensity=np.ones(3), metrics=["PSP@1"])


def _reference(
    ranked: np.ndarray, truth: list[np.ndarray], gains: list[np.ndarray], invp: np.ndarray, k: int
) -> dict[str, float]:
    """Per-point loop straight from the definitions, for the cross-check below."""
    p, r, ndcg, psp_num, psp_den = [], [], [], [], []
    for row, labels, g in zip(ranked, truth, gains, strict=True):
        if len(labels) == 0:
            continue
        gain = dict(zip(labels.tolist(), g.tolist(), strict=True))
        top = [int(x) for x in row[:k]]
        seen: set[int] = set()
        hits = []
        for x in top:
            hits.append(x >= 0 and x in gain and x not in seen)
            seen.add(x)
        p.append(sum(hits) / k)
        r.append(sum(hits) / len(gain))
        found = [(i, x) for i, (x, h) in enumerate(zip(top, hits, strict=True)) if h]
        dcg = sum(gain[x] / math.log2(i + 2) for i, x in found)
        ideal = sorted(gain.values(), reverse=True)[:k]
        idcg = sum(v / math.log2(i + 2) for i, v in enumerate(ideal))
        ndcg.append(dcg / idcg if idcg > 0 else 0.0)
        psp_num.append(sum(invp[x] for _, x in found) / k)
        psp_den.append(sum(sorted((invp[x] for x in gain), reverse=True)[:k]) / k)
    return {
        f"P@{k}": float(np.mean(p)),
        f"R@{k}": float(np.mean(r)),
        f"nDCG@{k}": float(np.mean(ndcg)),
        f"PSP@{k}": float(np.mean(psp_num) / np.mean(psp_den)),
    }


def test_matches_a_per_point_reference_on_random_rankings() -> None:
    rng = np.random.default_rng(7)
    num_labels, n = 40, 60
    ranked = rng.integers(-1, num_labels, size=(n, 8))
    truth = [rng.choice(num_labels, size=rng.integers(0, 7), replace=False) for _ in range(n)]
    gains = [rng.integers(0, 4, size=t.size).astype(float) for t in truth]
    invp = rng.uniform(1.0, 6.0, num_labels)
    for k in (1, 3, 5, 12):
        want = _reference(ranked, truth, gains, invp, k)
        got = evaluate(ranked, truth, gains=gains, inv_propensity=invp, metrics=list(want))
        for name, value in want.items():
            assert got[name] == pytest.approx(value, abs=1e-12), name


def test_fast_enough_for_ten_thousand_points_at_k_100() -> None:
    rng = np.random.default_rng(0)
    n, k, num_labels = 10_000, 100, 50_000
    ranked = rng.integers(0, num_labels, size=(n, k))
    truth = [rng.choice(num_labels, size=5, replace=False) for _ in range(n)]
    invp = inverse_propensities(np.zeros(num_labels), n, 0.55, 1.5)
    start = time.perf_counter()
    got = evaluate(ranked, truth, inv_propensity=invp)
    assert time.perf_counter() - start < 2.0
    assert got["points"] == n


def test_inverse_propensity_worked_value() -> None:
    # N = 100, A = 0.55, B = 1.5, N_l = 3:
    #   ln 100 - 1 = 4.605170 - 1 = 3.605170
    #   (B + 1)^A = 2.5^0.55 = exp(0.55 * 0.916291) = exp(0.503960) = 1.655263
    #   (N_l + B)^-A = 4.5^-0.55 = exp(-0.55 * 1.504077) = exp(-0.827242) = 0.437253
    #   1/p = 1 + 3.605170 * 1.655263 * 0.437253 = 1 + 2.609311 = 3.609311
    # N_l = 0: 1 + 3.605170 * (2.5 / 1.5)^0.55 = 1 + 3.605170 * exp(0.55 * 0.510826)
    #        = 1 + 3.605170 * 1.324378 = 5.774608
    invp = inverse_propensities(np.array([3, 0, 1000]), 100, 0.55, 1.5)
    assert invp[0] == pytest.approx(3.609311, rel=1e-5)
    assert invp[1] == pytest.approx(5.774608, rel=1e-4)
    # Rarer labels weigh more; very frequent ones approach 1.
    assert invp[1] > invp[0] > invp[2] > 1.0
    with pytest.raises(ValueError):
        inverse_propensities(np.array([1]), 0, 0.55, 1.5)
