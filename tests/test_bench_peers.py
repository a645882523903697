"""Tests for bench.peers_cooking: the Omikuji file writer, prediction scoring, and a tiny run."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from bench.peers_cooking import (
    BONSAI,
    MACH,
    PARABEL,
    TRAIN_SPLIT,
    acceptance,
    feature_pairs,
    mach_train_command,
    main,
    markdown_table,
    omikuji_results,
    plot_bars,
    ranked_from_predictions,
    stdout_to_stderr,
    write_xc_file,
)
from training.data import Split, XCDataset
from training.evaluate import EvalSet
from training.metrics import METRIC_NAMES


def _labels(*rows: tuple[int, ...]) -> list[np.ndarray]:
    return [np.array(r, dtype=np.int64) for r in rows]


def test_write_xc_file_skips_label_less_points_and_writes_featureless_ones_bare(
    tmp_path: Path,
) -> None:
    # Row 1 has no feature, row 2 no label; columns of row 0 are given out of order.
    features = sp.csr_matrix(
        (np.array([0.25, 0.5, 1.0, 0.3]), np.array([2, 0, 0, 1]), np.array([0, 2, 2, 3, 4])),
        shape=(4, 3),
    )
    path = tmp_path / "trn.txt"
    written = write_xc_file(path, features, _labels((0, 2), (1,), (), (1,)), num_labels=5)
    assert written == 3
    assert path.read_text() == "3 3 5\n0,2 0:0.5 2:0.25\n1\n1 1:0.3\n"
    assert not any(line.endswith(" ") for line in path.read_text().splitlines())


def test_write_xc_file_refuses_mismatched_rows(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2 feature rows but 1 label arrays"):
        write_xc_file(tmp_path / "x.txt", sp.csr_matrix((2, 3)), _labels((0,)), num_labels=1)


def test_ranked_from_predictions_pads_with_minus_one_and_cuts_at_depth() -> None:
    predictions = [[(4, 0.9), (1, 0.5)], [], [(0, 0.9), (1, 0.8), (2, 0.7), (3, 0.6)]]
    ranked = ranked_from_predictions(predictions, num_points=4, depth=3)
    assert ranked.dtype == np.int64
    assert ranked.tolist() == [[4, 1, -1], [-1, -1, -1], [0, 1, 2], [-1, -1, -1]]
    with pytest.raises(ValueError, match="more prediction lists"):
        ranked_from_predictions(predictions, num_points=2, depth=3)


def test_feature_pairs_of_a_sparse_row() -> None:
    row = sp.csr_matrix(np.array([[0.0, 0.5, 0.0, 0.25]]))
    assert feature_pairs(row) == [(1, 0.5), (3, 0.25)]
    assert feature_pairs(sp.csr_matrix((1, 4))) == []


def test_stdout_to_stderr_moves_native_writes_and_restores(capfd: pytest.CaptureFixture) -> None:
    with stdout_to_stderr():
        os.write(1, b"native log line\n")
    os.write(1, b"table\n")
    out, err = capfd.readouterr()
    assert (out, err) == ("table\n", "native log line\n")


def test_acceptance_compares_mach_with_bonsai_on_p1_and_p5() -> None:
    bonsai = {"P@1": 0.70, "P@5": 0.30}
    assert acceptance({MACH: {"P@1": 0.71, "P@5": 0.30}, BONSAI: bonsai})["met"] is True
    verdict = acceptance({MACH: {"P@1": 0.71, "P@5": 0.29}, BONSAI: bonsai})
    assert verdict["met"] is False
    assert verdict["mach_minus_bonsai"]["P@5"] == pytest.approx(-0.01)
    assert acceptance({BONSAI: bonsai}) == {}


def test_mach_command_trains_on_trn_and_passes_flags_through() -> None:
    command = mach_train_command(Path("d"), Path("models/b"), ["--epochs", "3"], Path("models/a"))
    assert command[1:] == [
        "-m",
        "training",
        "train",
        "--model",
        "mach",
        "--data",
        "d",
        "--out",
        "models/b",
        "--train-split",
        TRAIN_SPLIT,
        "--encoder-from",
        "models/a",
        "--epochs",
        "3",
    ]


def test_main_refuses_a_mach_arg_that_changes_the_split() -> None:
    with pytest.raises(SystemExit):
        main(["--mach-arg=--train-split train"])


def _tiny_dataset(seed: int = 0) -> XCDataset:
    """Six labels, each with its own words; queries mix a label's words with shared noise."""
    rng = np.random.default_rng(seed)
    vocab = {lab: [f"w{lab}x{j}" for j in range(5)] for lab in range(6)}
    noise = [f"common{j}" for j in range(10)]

    def split(n: int) -> Split:
        texts, labels = [], []
        for _ in range(n):
            lab = int(rng.integers(6))
            words = [*rng.choice(vocab[lab], 3), *rng.choice(noise, 2)]
            texts.append(" ".join(rng.permutation(words)))
            labels.append(np.array([lab], dtype=np.int64))
        texts.append("")  # a query with no known word, so no feature
        labels.append(np.array([0], dtype=np.int64))
        return Split(texts, labels, [np.ones(len(x), np.float32) for x in labels])

    titles = [f"label {lab}" for lab in range(6)]
    return XCDataset("tiny", titles, titles, trn=split(240), tst=split(60))


def test_omikuji_trains_and_scores_a_tiny_dataset_end_to_end(tmp_path: Path) -> None:
    dataset = _tiny_dataset()
    points = EvalSet.of(dataset, "tst")
    results, settings = omikuji_results(dataset, points, threads=1, beam_size=10)
    assert set(results) == {BONSAI, PARABEL}
    assert settings["train_points"] == 241
    assert settings["hyper_params"][BONSAI]["cluster_k"] == 100
    assert settings["hyper_params"][BONSAI]["max_depth"] == 3
    assert settings["hyper_params"][BONSAI]["cluster_balanced"] is False
    assert settings["hyper_params"][PARABEL]["linear_loss_type"] == "hinge"
    for metrics in results.values():
        assert metrics["points"] == 61
        assert metrics["P@1"] >= 0.9  # the featureless query is the only one it may miss
        assert metrics["train_seconds"] >= metrics["model_train_seconds"] > 0
    table = markdown_table(results)
    assert table.splitlines()[0].count("|") == len(METRIC_NAMES) + 4
    png = plot_bars(results, "tiny", tmp_path / "peers.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
