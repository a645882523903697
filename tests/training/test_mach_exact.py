"""Int8 MACH heads rescored by the fp32 output layer (`service.mach.exact`), on random heads.

Random weights make the decoded top 10 flat (many near-equal labels), the harsh case for int8:
without the exact rows int8 keeps about 0.98 of fp32's top 10 (`bench.mach_heads`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from service.device import open_session
from service.mach.decode import MachDecoder
from service.mach.exact import ExactLayer, MachScores, refined_rescore, refined_top
from service.mach.hash import HashFamily
from service.mach.model import HEADS_OUTPUT, HIDDEN_OUTPUT
from training.mach.bundle import export_heads
from training.mach.heads import MachConfig, MachHead, MachHeads
from training.quantize import quantize_heads, write_exact_layer

DIM, REPS, BUCKETS, HIDDEN, LABELS = 32, 8, 4096, 16, 100_000  # B large: bias behind an Unsqueeze


@pytest.fixture(scope="module")
def heads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fp32 heads, their int8 copy and the exact rows, in one directory."""
    work = tmp_path_factory.mktemp("exact")
    config = MachConfig(repetitions=REPS, buckets=BUCKETS, hidden=HIDDEN, ngram_dim=0, seed=0)
    torch.manual_seed(0)
    model = MachHeads([MachHead(DIM, config) for _ in range(REPS)], "bce").eval()
    export_heads(model, DIM, work / "heads.onnx")
    quantize_heads(work / "heads.onnx", work / "heads.int8.onnx", REPS)
    write_exact_layer(work / "heads.onnx", work / "rows.npy", REPS, BUCKETS)
    return work


def _run(path: Path, queries: np.ndarray, outputs: list[str]) -> list[np.ndarray]:
    session = open_session(path, threads=1)
    empty = np.zeros((len(queries), 1))
    feeds = {
        "embedding": queries,
        "ngram_ids": empty.astype(np.int64),
        "ngram_weights": empty.astype(np.float32),
    }
    return session.run(outputs, {i.name: feeds[i.name] for i in session.get_inputs()})


def _queries(n: int = 60) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((n, DIM), dtype=np.float32)


def test_exact_rows_reproduce_the_fp32_heads(heads: Path) -> None:
    queries = _queries(8)
    (want,) = _run(heads / "heads.onnx", queries, [HEADS_OUTPUT])
    _, hidden = _run(heads / "heads.int8.onnx", queries, [HEADS_OUTPUT, HIDDEN_OUTPUT])
    layer = ExactLayer(heads / "rows.npy", REPS, BUCKETS, HIDDEN)
    every = np.broadcast_to(np.arange(BUCKETS), (REPS, BUCKETS))
    for q in range(len(queries)):
        got = layer.log_probs(hidden[:, q, :], every)  # the int8 copy's hidden is fp32's
        np.testing.assert_allclose(got, want[q], rtol=1e-5, atol=1e-5)


def test_int8_refined_by_the_exact_rows_answers_as_fp32(heads: Path) -> None:
    queries = _queries()
    (fp32,) = _run(heads / "heads.onnx", queries, [HEADS_OUTPUT])
    int8, hidden = _run(heads / "heads.int8.onnx", queries, [HEADS_OUTPUT, HIDDEN_OUTPUT])
    family = HashFamily.for_labels(seed=0, reps=REPS, buckets=BUCKETS, num_labels=LABELS)
    decoder = MachDecoder.computed(family, LABELS)
    layer = ExactLayer(heads / "rows.npy", REPS, BUCKETS, HIDDEN)
    scores = MachScores(int8, np.ascontiguousarray(hidden.transpose(1, 0, 2)))
    want_vals, want_ids = decoder.fast(fp32, 10, 8)
    _, plain_ids = decoder.fast(int8, 10, 8)
    vals, ids = refined_top(decoder, layer, scores, 10, 8)

    def recall(got: np.ndarray) -> float:
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(want_ids, got, strict=True)])

    assert recall(plain_ids) < 1.0  # int8 alone moves some labels: the test can tell
    assert recall(ids) >= 0.99
    same = ids == want_ids
    np.testing.assert_allclose(vals[same], want_vals[same], rtol=1e-5, atol=1e-5)
    # Rescoring given labels (the hybrid's path) gives fp32's exact scores; -1 scores -inf.
    labels = np.concatenate([want_ids[:, :5], np.full((len(queries), 1), -1)], axis=1)
    got = refined_rescore(decoder, layer, scores, labels)
    np.testing.assert_allclose(got[:, :5], decoder.rescore(fp32, labels[:, :5]), rtol=1e-5)
    assert np.isneginf(got[:, 5]).all()


def test_exact_rows_of_the_wrong_shape_are_refused(heads: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"rows.npy: expected float32 rows \(8, 4096, 18\)"):
        ExactLayer(heads / "rows.npy", REPS, BUCKETS, HIDDEN + 1)
    np.save(tmp_path / "rows.npy", np.zeros((REPS, BUCKETS, HIDDEN + 1), np.float64))
    with pytest.raises(ValueError, match="got float64"):
        ExactLayer(tmp_path / "rows.npy", REPS, BUCKETS, HIDDEN)


def test_auto_serves_int8_only_where_it_is_rescored_and_large() -> None:
    from service.bundle import MachSpec
    from service.mach.model import AUTO_INT8_LAYER_BYTES, served_precision

    def spec(buckets: int, **files: str) -> MachSpec:
        return MachSpec(
            reps=16, buckets=buckets, hash_seed=0, hidden=128, loss="bce", top_buckets=10, **files
        )

    both = {"int8_heads": "h.int8.onnx", "exact_layer": "rows.npy"}
    large = AUTO_INT8_LAYER_BYTES // (4 * 16 * 128)  # B whose fp32 layer is the threshold
    assert served_precision(spec(large, **both), "auto") == "int8"
    assert served_precision(spec(large // 2, **both), "auto") == "fp32"  # 1M labels' shape
    assert served_precision(spec(large, int8_heads="h.int8.onnx"), "auto") == "fp32"
    assert served_precision(spec(large), "auto") == "fp32"
    assert served_precision(spec(large // 2, **both), "int8") == "int8"  # asked for: served
    assert served_precision(spec(large, **both), "fp32") == "fp32"


def test_heads_past_the_file_limit_keep_their_weights_beside_the_graph(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """50M labels make 2 GiB of fp32 heads, past ONNX's 2 GB file: they are exported with
    their weights in `<file>.data`, served, quantised and written as rows like the others."""
    import training.mach.bundle as mach_bundle

    config = MachConfig(repetitions=2, buckets=BUCKETS, hidden=HIDDEN, ngram_dim=0, seed=0)
    torch.manual_seed(0)
    model = MachHeads([MachHead(DIM, config) for _ in range(2)], "bce").eval()
    export_heads(model, DIM, tmp_path / "whole.onnx")
    monkeypatch.setattr(mach_bundle, "EXTERNAL_DATA_BYTES", 0)
    export_heads(model, DIM, tmp_path / "heads.onnx")
    side = tmp_path / "heads.onnx.data"
    assert side.stat().st_size > 0.9 * (tmp_path / "whole.onnx").stat().st_size
    assert (tmp_path / "heads.onnx").stat().st_size < 0.1 * side.stat().st_size
    queries = _queries(5)
    (want,) = _run(tmp_path / "whole.onnx", queries, [HEADS_OUTPUT])
    (got,) = _run(tmp_path / "heads.onnx", queries, [HEADS_OUTPUT])
    np.testing.assert_array_equal(got, want)
    # staged under a hidden name, as `quantize_mach_heads` does in a bundle
    quantize_heads(tmp_path / "heads.onnx", tmp_path / ".heads.int8.onnx.tmp", 2)
    (tmp_path / ".heads.int8.onnx.tmp").rename(tmp_path / "heads.int8.onnx")
    write_exact_layer(tmp_path / "heads.onnx", tmp_path / "rows.npy", 2, BUCKETS)
    _, hidden = _run(tmp_path / "heads.int8.onnx", queries, [HEADS_OUTPUT, HIDDEN_OUTPUT])
    layer = ExactLayer(tmp_path / "rows.npy", 2, BUCKETS, HIDDEN)
    every = np.broadcast_to(np.arange(BUCKETS), (2, BUCKETS))
    for q in range(len(queries)):
        got_q = layer.log_probs(hidden[:, q, :], every)
        np.testing.assert_allclose(got_q, want[q], rtol=1e-5, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "heads.int8.onnx",
        "heads.onnx",
        "heads.onnx.data",
        "rows.npy",
        "whole.onnx",
    ]
