"""MACH end to end: hash family, n-gram features, head training, shards, ONNX parity, serving.

The bundles are trained through the real CLI on the demo catalog, small enough for CI.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from service.bundle import BundleError, load_bundle, read_manifest, write_manifest
from service.mach.features import NgramFeaturizer, fit_idf, term_ids
from service.mach.hash import MERSENNE_61, HashFamily, smallest_prime_at_least
from service.search.engine import SearchEngine
from tests.support.configs import SMALL_MACH
from training.__main__ import main, parse_reps
from training.data import load_dataset
from training.mach.heads import MachConfig, MachHead, MachHeads


def _train_mach(data: Path, out: Path, *extra: str) -> None:
    args = ["train", "--model", "mach", "--data", str(data), "--out", str(out), *SMALL_MACH]
    assert main([*args, *extra]) == 0


@pytest.fixture(scope="module")
def mach_bundle(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MACH-only bundle on the base encoder."""
    out = tmp_path_factory.mktemp("mach") / "demo-mach"
    _train_mach(demo_data, out)
    return out


@pytest.fixture(scope="module")
def both_bundle(demo_bundle_both: Path) -> Path:
    """ASTRA + MACH on the ASTRA bundle's encoder (so hybrid is available)."""
    return demo_bundle_both


# --- hash family -------------------------------------------------------------------------------


def test_hash_family_matches_big_integer_arithmetic() -> None:
    family = HashFamily(seed=11, reps=3, buckets=97)
    a, b = family.coefficients()
    table = family.bucket_table(5000)
    for r in range(3):
        for j in [0, 1, 2, 999, 4096, 4999]:
            assert table[r, j] == ((a[r] * j + b[r]) % MERSENNE_61) % 97


def test_hash_family_is_exact_for_large_label_ids() -> None:
    from service.mach.hash import _fold, _mulmod

    family = HashFamily(seed=3, reps=4, buckets=1000)
    a, b = family.coefficients()
    labels = np.array([2**32 - 1, 2**31 + 12345, 3_000_000_000, 123], dtype=np.uint64)
    for r in range(4):
        got = _fold(_mulmod(a[r], labels) + np.uint64(b[r]))
        expected = [(a[r] * int(j) + b[r]) % MERSENNE_61 for j in labels]
        assert [int(x) for x in got] == expected


def test_hash_family_is_seeded_and_spreads_labels() -> None:
    first = HashFamily(seed=5, reps=2, buckets=64).bucket_table(6400)
    assert np.array_equal(first, HashFamily(seed=5, reps=2, buckets=64).bucket_table(6400))
    assert not np.array_equal(first, HashFamily(seed=6, reps=2, buckets=64).bucket_table(6400))
    assert not np.array_equal(first[0], first[1])
    counts = np.bincount(first[0], minlength=64)
    assert counts.min() > 50 and counts.max() < 150
    part = HashFamily(seed=5, reps=2, buckets=64).bucket_table(6400, range(1, 2))
    assert np.array_equal(part[0], first[1])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"reps": 0}, "reps"), ({"buckets": 1}, "buckets"), ({"prime": 9}, "prime")],
)
def test_hash_family_rejects_bad_parameters(kwargs: dict, field: str) -> None:
    params = {"seed": 0, "reps": 2, "buckets": 8, **kwargs}
    with pytest.raises(ValueError, match=field):
        HashFamily(**params)


# --- n-gram features ---------------------------------------------------------------------------


def test_term_ids_are_stable_and_cover_bigrams() -> None:
    ids = term_ids("Cordless Drill drill", 1 << 16, 2)
    assert len(ids) == 3 + 2  # three words, two bigrams
    assert ids[1] == ids[2]  # "drill" twice, case folded
    assert all(1 <= i < 1 << 16 for i in ids)
    assert ids == term_ids("cordless drill DRILL", 1 << 16, 2)


def test_featurizer_rows_are_tfidf_unit_length_and_capped() -> None:
    texts = ["red drill", "blue drill", "green drill", "red paint can", ""]
    idf = fit_idf(texts, 1024, 2)
    assert idf[0] == 0.0
    drill = term_ids("drill", 1024, 1)[0]
    red = term_ids("red", 1024, 1)[0]
    can = term_ids("can", 1024, 1)[0]
    assert idf[can] > idf[red] > idf[drill]  # rarer terms weigh more
    featurizer = NgramFeaturizer(dim=1024, ngram_max=2, max_terms=3, idf=idf)
    ids, weights = featurizer.transform(["red red drill", "", "red paint can now"])
    assert ids.shape == weights.shape and ids.shape[1] == 3
    norms = np.linalg.norm(weights, axis=1)
    assert norms[0] == pytest.approx(1.0) and norms[2] == pytest.approx(1.0)
    assert np.all(ids[1] == 0) and np.all(weights[1] == 0)
    assert np.count_nonzero(ids[2]) == 3  # 4 words + 3 bigrams capped at the 3 heaviest


# --- training, shards, export ------------------------------------------------------------------


def test_parse_reps() -> None:
    assert parse_reps(None, 16) == range(16)
    assert parse_reps("0-7", 16) == range(8)
    assert parse_reps("8-15", 16) == range(8, 16)
    assert parse_reps("3", 16) == range(3, 4)
    for bad in ["8-16", "x", "5-2"]:
        with pytest.raises(ValueError, match="reps"):
            parse_reps(bad, 16)


def test_stacked_heads_match_each_head() -> None:
    config = MachConfig(repetitions=3, buckets=8, hidden=5, ngram_dim=50)
    torch.manual_seed(0)
    heads = [MachHead(6, config).eval() for _ in range(3)]
    for head in heads:  # random ngram rows so the table path is exercised
        torch.nn.init.normal_(head.ngrams.weight)
    stacked = MachHeads(heads, "bce")
    emb = torch.randn(4, 6)
    ids = torch.tensor([[1, 2, 0], [3, 0, 0], [0, 0, 0], [4, 5, 6]])
    weights = torch.rand(4, 3) * (ids > 0)
    with torch.no_grad():
        out = stacked(emb, ids, weights)
        for r, head in enumerate(heads):
            expected = torch.nn.functional.logsigmoid(head(emb, ids, weights))
            torch.testing.assert_close(out[:, r], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss", ["bce", "softmax"])
def test_exported_heads_match_torch(loss: str, tmp_path: Path) -> None:
    """ONNX parity of the stacked heads, across batch sizes and n-gram row widths."""
    import onnxruntime as ort

    from training.mach.bundle import export_heads

    config = MachConfig(repetitions=3, buckets=16, hidden=8, ngram_dim=300, loss=loss)
    torch.manual_seed(1)
    heads = [MachHead(12, config).eval() for _ in range(3)]
    for head in heads:
        torch.nn.init.normal_(head.ngrams.weight, std=0.5)
    stacked = MachHeads(heads, loss).eval()
    export_heads(stacked, 12, tmp_path / "heads.onnx")
    session = ort.InferenceSession(str(tmp_path / "heads.onnx"))
    rng = np.random.default_rng(0)
    for n, width in [(1, 1), (5, 7), (33, 2)]:
        emb = rng.standard_normal((n, 12)).astype(np.float32)
        ids = rng.integers(0, 300, (n, width)).astype(np.int64)
        weights = rng.random((n, width)).astype(np.float32)
        (onnx_out,) = session.run(
            None, {"embedding": emb, "ngram_ids": ids, "ngram_weights": weights}
        )
        with torch.no_grad():
            torch_out = stacked(*(torch.from_numpy(x) for x in (emb, ids, weights))).numpy()
        assert onnx_out.shape == (n, 3, 16)
        np.testing.assert_allclose(onnx_out, torch_out, rtol=1e-4, atol=1e-5)
        if loss == "softmax":
            np.testing.assert_allclose(np.exp(onnx_out).sum(axis=2), 1.0, rtol=1e-5)


def test_mach_only_bundle_serves_log_probabilities(mach_bundle: Path) -> None:
    engine = SearchEngine.load(mach_bundle)
    assert engine.models == ["mach"] and engine.default_model == "mach"
    assert engine.mach is not None
    texts = ["cordless drill 18v", "white paint", "x"]
    scores = engine.mach.bucket_scores(engine.encoder.encode(texts), texts)
    assert scores.shape == (3, 4, 32)
    assert np.all(scores <= 0)  # log-sigmoid of the bucket logits
    hits = engine.search(texts, k=5)
    assert [len(h) for h in hits] == [5, 5, 5]


@pytest.mark.slow  # trains
@pytest.mark.parametrize("inputs", [["--ngram-dim", "0"], ["--no-use-embedding"]])
def test_heads_with_one_input_serve(inputs: list[str], demo_data: Path, tmp_path: Path) -> None:
    _train_mach(demo_data, tmp_path / "one", "--epochs", "2", *inputs)
    engine = SearchEngine.load(tmp_path / "one")
    assert [len(hits) for hits in engine.search(["drill", "hose"], k=3)] == [3, 3]


@pytest.mark.slow  # trains
def test_shards_merge_to_the_same_bundle(demo_data: Path, tmp_path: Path) -> None:
    whole, left, right, merged = (tmp_path / n for n in ["whole", "left", "right", "merged"])
    _train_mach(demo_data, whole)
    _train_mach(demo_data, left, "--reps", "0-1")
    _train_mach(demo_data, right, "--reps", "2-3")
    assert (left / "shard.json").is_file() and not (left / "manifest.json").exists()
    assert main(["merge", "--shards", str(right), str(left), "--out", str(merged)]) == 0
    texts = ["cordless drill", "garden hose 50 ft", "led bulb"]
    outputs = []
    for bundle in (whole, merged):
        engine = SearchEngine.load(bundle)
        assert engine.mach is not None
        outputs.append(engine.mach.bucket_scores(engine.encoder.encode(texts), texts))
    np.testing.assert_array_equal(outputs[0], outputs[1])
    assert read_manifest(merged).mach == read_manifest(whole).mach


@pytest.mark.slow  # trains
def test_merge_refuses_overlapping_or_missing_shards(demo_data: Path, tmp_path: Path) -> None:
    left, again = tmp_path / "left", tmp_path / "again"
    _train_mach(demo_data, left, "--reps", "0-1")
    shutil.copytree(left, again)
    assert main(["merge", "--shards", str(left), str(again), "--out", str(tmp_path / "m")]) == 2
    assert main(["merge", "--shards", str(left), "--out", str(tmp_path / "m")]) == 2
    assert not (tmp_path / "m").exists()


def test_mach_learns_the_demo_catalog(mach_bundle: Path, demo_data: Path) -> None:
    """Dev metrics recorded at training time beat chance by far (400 products)."""
    manifest = read_manifest(mach_bundle)
    dev = manifest.metrics["dev"]
    assert dev["P@1"] > 0.1 and dev["R@100"] > 0.5  # chance: P@1 0.0025, R@100 0.25
    assert manifest.training["mach"]["config"]["repetitions"] == 4
    assert (mach_bundle / "mach_training_curve.png").stat().st_size > 1000


# --- serving: astra, mach and hybrid on one encoder ----------------------------------------------


def test_bundle_with_both_models_answers_all_three(both_bundle: Path) -> None:
    manifest = read_manifest(both_bundle)
    assert manifest.kinds == ["astra", "mach"]
    assert 0.0 <= manifest.mach.hybrid_weight <= 1.0
    by_model = manifest.metrics["dev_by_model"]
    assert set(by_model) == {"astra", "mach", "hybrid"}
    assert manifest.default_model == max(by_model, key=lambda m: by_model[m]["nDCG@10"])
    assert by_model["hybrid"]["nDCG@10"] == max(by_model["hybrid"]["weight_trials"].values())
    engine = SearchEngine.load(both_bundle)
    assert engine.models == ["astra", "mach", "hybrid"]
    for model in engine.models:
        hits = engine.search(["cordless drill", "garden hose"], k=7, model=model)
        assert [len(h) for h in hits] == [7, 7]
        for row in hits:
            assert len({h.label for h in row}) == 7
            assert [h.score for h in row] == sorted((h.score for h in row), reverse=True)


def test_hybrid_weight_zero_and_one_follow_each_model(both_bundle: Path) -> None:
    queries = ["cordless drill", "white paint 1 gal", "garden hose"]
    astra_only = SearchEngine.load(both_bundle, hybrid_weight=0.0)
    mach_only = SearchEngine.load(both_bundle, hybrid_weight=1.0)
    _, astra = astra_only.rank(queries, 5, "astra")
    _, hybrid0 = astra_only.rank(queries, 5, "hybrid")
    np.testing.assert_array_equal(astra[:, 0], hybrid0[:, 0])
    _, mach = mach_only.rank(queries, 5, "mach")
    _, hybrid1 = mach_only.rank(queries, 5, "hybrid")
    np.testing.assert_array_equal(mach[:, 0], hybrid1[:, 0])


def test_evaluate_cli_takes_the_model(both_bundle: Path, demo_data: Path, capsys) -> None:
    for model, floor in [("mach", 0.1), ("hybrid", 0.3)]:
        args = ["evaluate", "--bundle", str(both_bundle), "--data", str(demo_data)]
        assert main([*args, "--model", model]) == 0
        metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert metrics["P@1"] > floor


def test_heads_can_be_retrained_in_place(
    both_bundle: Path, demo_data: Path, tmp_path: Path
) -> None:
    """`--encoder-from B --out B` (what `make run` does) replaces the heads, keeps ASTRA."""
    copy = tmp_path / "again"
    shutil.copytree(both_bundle, copy)
    _train_mach(demo_data, copy, "--encoder-from", str(copy), "--hidden", "8")
    manifest = read_manifest(copy)
    assert manifest.kinds == ["astra", "mach"] and manifest.mach.hidden == 8
    assert set(manifest.training) == {"astra", "mach"}
    assert "astra" not in manifest.training["astra"]
    load_bundle(copy)


def test_encoder_from_must_match_the_label_space(demo_bundle: Path, tmp_path: Path) -> None:
    from training.demo import generate_demo

    other = generate_demo(tmp_path / "other", num_products=120)
    args = ["train", "--model", "mach", "--data", str(other), "--out", str(tmp_path / "o")]
    assert main([*args, *SMALL_MACH, "--encoder-from", str(demo_bundle)]) == 2


def test_new_bundles_compute_membership_and_old_ones_still_load(
    mach_bundle: Path, tmp_path: Path
) -> None:
    manifest = json.loads((mach_bundle / "manifest.json").read_text())
    num_labels = len((mach_bundle / "label_ids.txt").read_text().splitlines())
    assert manifest["mach"]["hash_prime"] == smallest_prime_at_least(num_labels)
    engine = SearchEngine.load(mach_bundle)
    assert engine.mach.decoder.nbytes < 1024  # nothing per label
    copy = tmp_path / "copy"
    shutil.copytree(mach_bundle, copy)
    del manifest["mach"]["hash_prime"]  # as bundles before session 9 were written
    (copy / "manifest.json").write_text(json.dumps(manifest))
    old = SearchEngine.load(copy)
    assert old.mach.decoder.nbytes >= 8 * manifest["mach"]["reps"] * num_labels  # its table
    assert len(old.search(["drill"], 5, "mach")[0]) == 5
    manifest["mach"]["hash_prime"] = 7  # a prime, but fewer than K labels fit under it
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="hash_prime 7 does not fit"):
        SearchEngine.load(copy)


def test_int8_heads_are_added_listed_and_keep_the_top_10(
    mach_bundle: Path, demo_data: Path, tmp_path: Path
) -> None:
    import onnx

    from training.quantize import (
        EXACT_LAYER_FILE,
        INT8_HEADS_FILE,
        mach_int8_parity,
        quantize_mach_heads,
    )

    copy = tmp_path / "copy"
    shutil.copytree(mach_bundle, copy)
    with pytest.raises(BundleError, match="XC_MACH_PRECISION=fp32"):
        SearchEngine.load(copy, mach_precision="int8")  # no int8 heads yet
    quantize_mach_heads(copy)
    manifest = read_manifest(copy)
    assert manifest.mach.int8_heads == INT8_HEADS_FILE and INT8_HEADS_FILE in manifest.files
    graph = onnx.load(copy / INT8_HEADS_FILE).graph
    assert [node.op_type for node in graph.node].count("MatMulInteger") >= manifest.mach.reps
    int8_weights = sum(
        int(np.prod(init.dims))
        for init in graph.initializer
        if init.data_type == onnx.TensorProto.INT8
    )
    spec = manifest.mach
    assert int8_weights >= spec.reps * spec.hidden * spec.buckets  # the whole output layer
    int8 = SearchEngine.load(copy, mach_precision="int8")
    assert int8.mach.precision == "int8" and int8.mach.exact is not None
    assert manifest.mach.exact_layer == EXACT_LAYER_FILE and EXACT_LAYER_FILE in manifest.files
    texts = load_dataset(demo_data).split("dev").texts[:100]
    parity = mach_int8_parity(copy, texts)
    assert parity["queries"] == len(texts) and parity["recall_at_10"] >= 0.99, parity
    fp32 = SearchEngine.load(copy)
    _assert_same_answers(fp32, int8, texts, "mach")
    with (copy / EXACT_LAYER_FILE).open("r+b") as handle:
        handle.seek(-4, 2)
        handle.write(b"\0\0\0\0")
    with pytest.raises(BundleError, match=r"mach_out\.fp32\.npy"):
        load_bundle(copy)
    with (copy / INT8_HEADS_FILE).open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BundleError, match=r"mach_heads\.int8\.onnx"):
        load_bundle(copy)


def _assert_same_answers(
    fp32: SearchEngine, int8: SearchEngine, texts: list[str], model: str
) -> None:
    """int8's top 10 is fp32's (one label may differ per query) with fp32's scores."""
    pairs = zip(fp32.search(texts, 10, model), int8.search(texts, 10, model), strict=True)
    for want, got in pairs:
        scores = {hit.label: hit.score for hit in want}
        same = [(scores[hit.label], hit.score) for hit in got if hit.label in scores]
        assert len(same) >= min(9, len(want))
        np.testing.assert_allclose(*np.array(same).T, rtol=1e-4, atol=1e-4)


def test_int8_hybrid_rescores_its_candidates_exactly(
    both_bundle: Path, demo_data: Path, tmp_path: Path
) -> None:
    from training.quantize import quantize_mach_heads

    copy = tmp_path / "copy"
    shutil.copytree(both_bundle, copy)
    quantize_mach_heads(copy)
    texts = load_dataset(demo_data).split("dev").texts[:60]
    int8 = SearchEngine.load(copy, mach_precision="int8")
    assert int8.mach.exact is not None
    _assert_same_answers(SearchEngine.load(copy), int8, texts, "hybrid")


def test_int8_heads_without_their_hidden_output_are_refused_or_served_as_before(
    mach_bundle: Path, tmp_path: Path
) -> None:
    """Int8 heads quantised before the exact layer existed serve as they did (approximate);
    a manifest that pairs such heads with an exact layer is refused, saying how to rebuild."""
    from training.quantize import EXACT_LAYER_FILE, INT8_HEADS_FILE, quantize_matmuls

    copy = tmp_path / "copy"
    shutil.copytree(mach_bundle, copy)
    quantize_matmuls(copy / "mach_heads.onnx", copy / INT8_HEADS_FILE)  # no hidden output
    manifest = read_manifest(copy)
    fields = manifest.model_dump(exclude={"files", "format_version", "mach"})
    mach = manifest.mach.model_dump() | {"int8_heads": INT8_HEADS_FILE}
    write_manifest(copy, {**fields, "mach": mach})
    old = SearchEngine.load(copy, mach_precision="int8")
    assert old.mach.exact is None and len(old.search(["drill"], 5, "mach")[0]) == 5
    rows = np.zeros((manifest.mach.reps, manifest.mach.buckets, manifest.mach.hidden + 1))
    np.save(copy / EXACT_LAYER_FILE, rows.astype(np.float32))
    write_manifest(copy, {**fields, "mach": mach | {"exact_layer": EXACT_LAYER_FILE}})
    with pytest.raises(BundleError, match="no 'hidden' output; rebuild it with"):
        SearchEngine.load(copy, mach_precision="int8")


def test_tampered_heads_are_refused(mach_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(mach_bundle, copy)
    with (copy / "mach_heads.onnx").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BundleError, match=r"mach_heads\.onnx"):
        load_bundle(copy)
    shutil.rmtree(copy)
    shutil.copytree(mach_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["default_model"] = "astra"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="default_model"):
        load_bundle(copy)


def test_dataset_positives_reach_the_heads(demo_data: Path) -> None:
    """Bucket targets put every positive label's bucket on, and nothing else."""
    from training.mach.heads import BucketTargets

    dataset = load_dataset(demo_data)
    positives = dataset.split("train").positives(dataset.positive_min_weight)[:50]
    table = HashFamily(seed=0, reps=1, buckets=16).bucket_table(dataset.num_labels)[0]
    targets = BucketTargets.of(positives, table)
    dense = targets.dense(np.arange(len(positives)), 16).numpy()
    for row, labels in enumerate(positives):
        assert set(np.flatnonzero(dense[row])) == set(table[labels])


def test_http_search_answers_each_model(both_bundle: Path) -> None:
    from service.settings import Settings
    from tests.support.client import serve

    with serve(Settings(bundle=both_bundle)) as client:
        ready = client.get("/readyz").json()
        assert ready["models"] == ["astra", "mach", "hybrid"]
        assert ready["default_model"] == read_manifest(both_bundle).default_model
        for model in ["astra", "mach", "hybrid", None]:
            response = client.post("/search", json={"query": "drill", "k": 4, "model": model})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["model"] == (model or ready["default_model"])
            assert len(body["results"]) == 4
