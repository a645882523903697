"""The one top-k: best score first, ties by the lower label id, empty slots (-1) last, [n, k]."""

from __future__ import annotations

import numpy as np
import pytest

from service.ranking import Hit, hits_of, merge_top_k, result_records, top_k


def reference(scores: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The rule by brute force: sort each row in full by (real first, score desc, label asc)."""
    n = scores.shape[0]
    out_scores = np.full((n, k), -np.inf, np.float32)
    out_labels = np.full((n, k), -1, np.int64)
    for row in range(n):
        entries = sorted(
            zip(scores[row].tolist(), labels[row].tolist(), strict=True),
            key=lambda e: (e[1] < 0, -e[0] if e[1] >= 0 else 0.0, e[1]),
        )[:k]
        for j, (score, label) in enumerate(entries):
            if label >= 0:
                out_scores[row, j], out_labels[row, j] = score, label
    return out_scores, out_labels


@pytest.mark.parametrize("n", [1, 7])
@pytest.mark.parametrize("c, k", [(50, 10), (12, 12), (5, 9), (300, 100)])
def test_top_k_follows_the_rule_with_ties_and_empty_slots(n: int, c: int, k: int) -> None:
    rng = np.random.default_rng(n * 1000 + c + k)
    for _ in range(20):
        scores = np.round(rng.standard_normal((n, c)) * 2) / 2  # coarse: many exact ties
        scores = scores.astype(np.float32)
        labels = np.stack([rng.permutation(10_000)[:c] for _ in range(n)]).astype(np.int64)
        labels[rng.random((n, c)) < 0.15] = -1
        want_scores, want_labels = reference(scores, labels, k)
        got_scores, got_labels = top_k(scores, labels, k)
        assert got_scores.shape == got_labels.shape == (n, k)
        np.testing.assert_array_equal(got_labels, want_labels)
        np.testing.assert_array_equal(got_scores, want_scores)


def test_real_labels_scoring_minus_infinity_still_rank_after_finite_ones() -> None:
    scores = np.array([[-np.inf, 0.5, -np.inf, 0.0]], np.float32)
    labels = np.array([[7, 3, 2, -1]])
    got_scores, got_labels = top_k(scores, labels, 4)
    assert got_labels.tolist() == [[3, 2, 7, -1]]
    assert got_scores.tolist() == [[0.5, -np.inf, -np.inf, -np.inf]]


def test_top_k_refuses_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="scores and labels"):
        top_k(np.zeros((2, 3)), np.zeros((2, 4), np.int64), 1)


def test_merging_disjoint_ranked_lists_equals_one_top_k_over_their_union() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=(6, 9)).astype(np.float32)  # ties across the lists
    labels = np.tile(rng.permutation(9), (6, 1))
    labels[1, 7:] = -1  # empty slots in the second list
    whole = top_k(scores, labels, 5)
    parts = [top_k(scores[:, :4], labels[:, :4], 4), top_k(scores[:, 4:], labels[:, 4:], 5)]
    merged = merge_top_k(parts, 5)
    np.testing.assert_array_equal(merged[1], whole[1])
    np.testing.assert_array_equal(merged[0], whole[0])


def test_hits_drop_empty_slots_and_records_are_the_answer_shape() -> None:
    scores = np.array([[0.9, 0.4, -np.inf]], np.float32)
    labels = np.array([[1, 0, -1]])
    [hits] = hits_of(["a", "b"], ["Alpha", "Beta"], scores, labels)
    assert hits == [
        Hit(label=1, id="b", title="Beta", score=pytest.approx(0.9)),
        Hit(label=0, id="a", title="Alpha", score=pytest.approx(0.4)),
    ]
    assert result_records(hits)[0] == {"id": "b", "title": "Beta", "score": pytest.approx(0.9)}
