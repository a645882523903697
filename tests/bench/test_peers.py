"""Tests for bench.peers: the file and ranking helpers, and each peer library end to end.

Each peer is trained through the real worker (`python -m bench.peers` in a subprocess, with
`.venv-peers` when it exists, else this interpreter) on a small separable problem. A peer
whose library the interpreter cannot import is skipped with the reason.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from bench.peers import (
    PEERS,
    default_python,
    ranked_from_lists,
    ranked_from_scores,
    run_peer,
    write_problem,
    write_xc_file,
)


def _labels(*rows: tuple[int, ...], num_labels: int = 5) -> sp.csr_matrix:
    matrix = sp.lil_matrix((len(rows), num_labels), dtype=np.float32)
    for i, row in enumerate(rows):
        for label in row:
            matrix[i, label] = 1.0
    return matrix.tocsr()


def test_write_xc_file_sorts_features_and_writes_featureless_points_bare(tmp_path: Path) -> None:
    # Row 1 has no feature; the columns of row 0 are given out of order.
    features = sp.csr_matrix(
        (np.array([0.25, 0.5, 0.3]), np.array([2, 0, 1]), np.array([0, 2, 2, 3])), shape=(3, 3)
    )
    path = tmp_path / "trn.txt"
    write_xc_file(path, features, _labels((0, 2), (1,), (1,)))
    assert path.read_text() == "3 3 5\n0,2 0:0.5 2:0.25\n1\n1 1:0.3\n"


def test_write_xc_file_refuses_label_less_points_and_mismatched_rows(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="point 1 has no label"):
        write_xc_file(tmp_path / "x.txt", sp.csr_matrix((2, 3)), _labels((0,), ()))
    with pytest.raises(ValueError, match="2 feature rows but 1 label rows"):
        write_xc_file(tmp_path / "x.txt", sp.csr_matrix((2, 3)), _labels((0,)))


def test_ranked_from_lists_pads_cuts_and_reads_pairs() -> None:
    predictions = [[(4, 0.9), (1, 0.5)], [], [0, 1, 2, 3]]
    ranked = ranked_from_lists(predictions, num_points=4, depth=3)
    assert ranked.dtype == np.int64
    assert ranked.tolist() == [[4, 1, -1], [-1, -1, -1], [0, 1, 2], [-1, -1, -1]]
    with pytest.raises(ValueError, match="more prediction lists"):
        ranked_from_lists(predictions, num_points=2, depth=3)


def test_ranked_from_scores_orders_each_row_by_score() -> None:
    scores = sp.csr_matrix(np.array([[0.1, 0.0, 0.7, 0.3], [0.0, 0.0, 0.0, 0.0]]))
    assert ranked_from_scores(scores, depth=3).tolist() == [[2, 3, 0], [-1, -1, -1]]


def _separable_problem(seed: int = 0) -> tuple[sp.csr_matrix, sp.csr_matrix, sp.csr_matrix, list]:
    """Eight labels, five features each, plus shared noise features; one label per point."""
    rng = np.random.default_rng(seed)
    num_labels, own, noise = 8, 5, 10

    def points(n: int) -> tuple[sp.csr_matrix, list[int]]:
        labels = rng.integers(num_labels, size=n).tolist()
        rows = np.zeros((n, num_labels * own + noise), dtype=np.float32)
        for i, label in enumerate(labels):
            rows[i, label * own + rng.choice(own, 3, replace=False)] = 1.0
            rows[i, num_labels * own + rng.choice(noise, 2, replace=False)] = 1.0
        return sp.csr_matrix(rows / np.linalg.norm(rows, axis=1, keepdims=True)), labels

    train_x, train_labels = points(400)
    test_x, test_labels = points(60)
    return train_x, _labels(*[(lab,) for lab in train_labels], num_labels=8), test_x, test_labels


@pytest.mark.parametrize("key", sorted(PEERS))
def test_each_peer_learns_a_separable_problem_through_the_worker(key: str, tmp_path: Path) -> None:
    python = default_python()
    module = PEERS[key].kind.module
    if subprocess.run([str(python), "-c", f"import {module}"], capture_output=True).returncode:
        pytest.skip(f"{module} is not importable by {python} (`make bench` installs .venv-peers)")
    train_x, train_y, test_x, test_labels = _separable_problem()
    problem = write_problem(tmp_path / "problem", train_x, train_y, test_x)
    ranked, result = run_peer(key, problem, tmp_path / "out", depth=5, single_queries=7, threads=1)
    assert ranked.shape == (60, 5)
    assert ranked.min() >= -1 and ranked.max() < 8
    for row in ranked:
        found = row[row >= 0]
        assert len(set(found.tolist())) == len(found)  # no label twice in a row
    top1 = np.mean(ranked[:, 0] == np.array(test_labels))
    assert top1 >= 0.9, f"{key}: P@1 {top1:.2f} on a separable problem"
    assert result["train_seconds"] > 0 and result["batched_seconds"] > 0
    assert len(result["single_ms"]) == 7 and min(result["single_ms"]) > 0
    assert result["model_bytes"] > 0
    assert result["versions"][PEERS[key].kind.distribution]


def test_run_peer_reports_the_workers_failure(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="peer omikuji-bonsai failed"):
        run_peer("omikuji-bonsai", tmp_path / "absent", tmp_path / "out", 5, 1)
    with pytest.raises(ValueError, match="unknown peer"):
        run_peer("nope", tmp_path, tmp_path, 5, 1)
