"""The learned ranker: trained into a demo bundle by `python -m training ranker`, served in the
formula's place, computed by one feature function for training and serving, verified like
every bundle file, and absent or switched off the formula answers as before."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from service.astra.lexical import LexicalIndex
from service.bundle import BundleError, load_bundle, read_manifest, write_manifest
from service.search.engine import SearchEngine
from service.search.ranker import FEATURES, Candidates, candidate_features
from service.search.snapshot import AS_BUILT
from service.settings import Settings
from tests.support.client import serve
from training.__main__ import main
from training.data import load_dataset
from training.ranker import POPULARITY_FILE, RANKER_FILE, collect

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ranked(demo_bundle: Path, demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo bundle with a learned ranker trained into it."""
    out = tmp_path_factory.mktemp("ranker") / "demo"
    shutil.copytree(demo_bundle, out)
    assert main(["ranker", "--bundle", str(out), "--data", str(demo_data)]) == 0
    return out


def test_the_ranker_is_listed_with_what_it_scored(ranked: Path) -> None:
    manifest = read_manifest(ranked)
    spec = manifest.astra.ranker
    assert spec is not None and spec.file == RANKER_FILE and spec.popularity == POPULARITY_FILE
    assert {RANKER_FILE, POPULARITY_FILE} <= set(manifest.files)
    assert spec.features == list(FEATURES) and spec.trained_on == "dev" and spec.queries > 50
    metrics = spec.metrics
    assert set(metrics["formula"]) == set(metrics["cross_validated"]) == {"nDCG@10", "P@1", "P@5"}
    from training.ranker import GROUPS

    assert [step["features"] for step in metrics["ablation"]] == [name for name, _ in GROUPS]
    assert metrics["ablation"][-1]["dev_cv"] == metrics["cross_validated"]


def test_the_ranker_answers_in_the_formulas_place(ranked: Path, demo_data: Path) -> None:
    learned = SearchEngine.load(ranked)
    formula = SearchEngine.load(ranked, ranker="off")
    plain = SearchEngine.load(ranked, lexical_weight=0.0)
    assert learned.ranker is not None and formula.ranker is None and plain.ranker is None
    texts = load_dataset(demo_data).split("dev").texts[:80]
    got = learned.rank(texts, 10)
    want = formula.rank(texts, 10)
    assert (got[1] != want[1]).any()  # it reorders
    # Its score is the ranker's: the same candidates scored through the feature function.
    vectors = learned.encoder.encode(texts[:5])
    found, _ = learned.candidates(vectors, texts[:5], 10, True, False)
    scores = learned.ranker.score(learned.features(found), found.labels)
    best = np.sort(np.where(found.labels >= 0, scores, -np.inf), axis=1)[:, ::-1][:, :10]
    np.testing.assert_allclose(got[0][:5], best, rtol=1e-5)


def test_training_and_serving_compute_the_same_features(ranked: Path, demo_data: Path) -> None:
    engine = SearchEngine.load(ranked, precision="auto", encoder_size="auto")
    texts = load_dataset(demo_data).split("dev").texts[:20]
    labels, features, _ = collect(engine, texts, engine.ranker.popularity, batch=7)
    for i, text in enumerate(texts):  # one at a time, as a single search is served
        found, _ = engine.candidates(engine.encoder.encode([text]), [text], 10, True, False)
        served = engine.features(found)[0]
        mine, theirs = labels[i] >= 0, found.labels[0] >= 0
        order, served_order = np.argsort(labels[i][mine]), np.argsort(found.labels[0][theirs])
        np.testing.assert_array_equal(labels[i][mine][order], found.labels[0][theirs][served_order])
        np.testing.assert_allclose(
            features[i][mine][order], served[theirs][served_order], rtol=1e-4, atol=1e-5
        )


def test_term_features_count_what_the_title_holds() -> None:
    lexical = LexicalIndex.build(["white interior paint 1 gal", "cordless drill 20v", "red paint"])
    matches = lexical.match(["white paint 1 gal"])
    found = Candidates(
        labels=np.array([[0, 2, 1, -1]]),
        astra=np.array([[0.9, 0.5, 0.1, 0.0]], np.float32),
        bm25=np.stack([lexical.pair_scores(matches, np.array([[0, 2, 1, 0]]))[0]]).astype(
            np.float32
        )
        * np.array([1, 1, 1, 0], np.float32),
        from_index=np.array([[True, False, True, False]]),
        from_lexical=np.array([[True, True, False, False]]),
        matches=matches,
    )
    features = candidate_features(found, lexical, AS_BUILT, np.array([2.0, 0.0, 1.0], np.float32))
    column = {name: features[0, :, i] for i, name in enumerate(FEATURES)}
    # query terms: white, paint, 1, gal (4); numbers: 1
    np.testing.assert_array_equal(column["terms_matched"], [4, 1, 0, 0])
    np.testing.assert_allclose(column["term_coverage"], [1.0, 0.25, 0.0, 0.0])
    np.testing.assert_array_equal(column["numbers_matched"], [1, 0, 0, 0])
    np.testing.assert_array_equal(column["query_numbers"], [1, 1, 1, 0])
    np.testing.assert_array_equal(column["title_terms"], [5, 2, 4, 0])  # 20v: 20 volt
    np.testing.assert_array_equal(column["popularity"], [2.0, 1.0, 0.0, 0.0])
    np.testing.assert_array_equal(column["astra_rank"][:3], [0, 1, 2])
    assert column["idf_coverage"][0] == pytest.approx(1.0) and 0 < column["idf_coverage"][1] < 1
    assert not features[0, 3].any()  # padding is all zeros


def test_a_tampered_ranker_is_refused(ranked: Path, tmp_path: Path) -> None:
    for name in (RANKER_FILE, POPULARITY_FILE):
        copy = tmp_path / name
        shutil.copytree(ranked, copy)
        with (copy / name).open("ab") as handle:
            handle.write(b"\0")
        with pytest.raises(BundleError, match=name.replace(".", r"\.")):
            load_bundle(copy)


def test_a_ranker_for_other_features_is_refused(ranked: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(ranked, copy)
    manifest = read_manifest(copy)
    fields = manifest.model_dump(exclude={"files", "format_version"})
    fields["astra"]["ranker"]["features"] = [*FEATURES[:-1], "clicks"]
    write_manifest(copy, fields)
    with pytest.raises(BundleError, match="retrain it with `python -m training ranker`"):
        SearchEngine.load(copy)
    assert SearchEngine.load(copy, ranker="off").ranker is None  # the formula still serves


def test_a_bundle_fitted_on_all_the_data_cannot_train_one(
    ranked: Path, demo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(ranked, copy)
    manifest = read_manifest(copy)
    fields = manifest.model_dump(exclude={"files", "format_version"})
    fields["training"]["split"] = "trn"
    write_manifest(copy, fields)
    assert main(["ranker", "--bundle", str(copy), "--data", str(demo_data)]) == 2
    assert "dev is inside its training split" in capsys.readouterr().err


def test_the_server_serves_it_and_new_products_through_it(ranked: Path, tmp_path: Path) -> None:
    title = "Zephyrine Quartz 18-Volt Brushless Hedge Trimmer Kit in Teal"
    with serve(Settings(bundle=ranked, data_dir=tmp_path / "data")) as client:
        info = client.get("/v1/models").json()["data"][0]
        assert info["lexical"]["ranker"] is True
        answer = client.put("/products", json={"products": [{"id": "NEW-1", "title": title}]})
        assert answer.status_code == 200, answer.text
        results = client.post("/search", json={"query": title, "k": 5}).json()["results"]
        assert results[0]["id"] == "NEW-1"
    with serve(Settings(bundle=ranked, data_dir=tmp_path / "off", ranker="off")) as client:
        assert client.get("/v1/models").json()["data"][0]["lexical"]["ranker"] is False
    assert json.loads((ranked / "manifest.json").read_text())["astra"]["ranker"]


def test_auto_serves_it_only_where_it_beat_the_formula(
    ranked: Path, demo_bundle: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(ranked, copy)
    manifest = read_manifest(copy)
    assert manifest.astra.ranker.beats_formula  # the demo's: 3 x 2-fold CV against the formula
    fields = manifest.model_dump(exclude={"files", "format_version"})
    metrics = fields["astra"]["ranker"]["metrics"]
    metrics["cross_validated"]["nDCG@10"] = metrics["formula"]["nDCG@10"]  # no better
    write_manifest(copy, fields)
    assert SearchEngine.load(copy).ranker is None  # auto
    assert SearchEngine.load(copy, ranker="on").ranker is not None
    with pytest.raises(BundleError, match="XC_RANKER=auto or off"):
        SearchEngine.load(demo_bundle, ranker="on")
    assert SearchEngine.load(demo_bundle).ranker is None  # a bundle without one: the formula


def test_ranked_astra_becomes_the_default_where_it_beats_it_on_dev(
    demo_bundle_both: Path, demo_data: Path, tmp_path: Path
) -> None:
    from training.ranker import _default_to_ranked_astra

    copy = tmp_path / "both"
    shutil.copytree(demo_bundle_both, copy)
    assert read_manifest(copy).default_model == "hybrid"
    assert main(["ranker", "--bundle", str(copy), "--data", str(demo_data)]) == 0
    manifest = read_manifest(copy)
    spec = manifest.astra.ranker
    hybrid = manifest.metrics["dev_by_model"]["hybrid"]["nDCG@10"]
    better = spec.beats_formula and spec.metrics["cross_validated"]["nDCG@10"] > hybrid
    assert manifest.default_model == ("astra" if better else "hybrid")
    for hybrid_ndcg, expected in ((0.0, "astra"), (0.999, "hybrid")):
        fields = manifest.model_dump(exclude={"files", "format_version"})
        fields["default_model"] = "hybrid"
        fields["metrics"]["dev_by_model"]["hybrid"]["nDCG@10"] = hybrid_ndcg
        write_manifest(copy, fields)
        _default_to_ranked_astra(copy, spec)
        assert read_manifest(copy).default_model == expected


def test_rebuilding_the_postings_drops_the_ranker_they_fed(ranked: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(ranked, copy)
    assert main(["lexical", "--bundle", str(copy)]) == 0
    manifest = read_manifest(copy)
    assert manifest.astra.ranker is None and manifest.astra.lexical.analyzer == 3
    assert not (copy / RANKER_FILE).exists() and RANKER_FILE not in manifest.files
    assert SearchEngine.load(copy).ranker is None


def test_the_rankers_explanation_adds_up_to_its_score(ranked: Path, demo_data: Path) -> None:
    from service.search.explain import explain_hits

    engine = SearchEngine.load(ranked)
    texts = load_dataset(demo_data).split("dev").texts[:10]
    vectors = engine.encoder.encode(texts)
    hits = engine.hits(*engine.rank_encoded(vectors, texts, 5, "astra"))
    explain_hits(engine, vectors, texts, 5, "astra", hits)
    for row in hits:
        for hit in row:
            assert hit.explain["ranked_by"] == "learned ranker"
            assert set(hit.explain["signals"]) == set(FEATURES)
            parts = hit.explain["contributions"]
            assert set(parts) == {*FEATURES, "bias"}
            assert sum(parts.values()) == pytest.approx(hit.score, rel=1e-4, abs=1e-4)


def test_dev_figures_never_come_from_the_ranker_that_learned_on_dev(
    ranked: Path, demo_bundle: Path, demo_data: Path
) -> None:
    """Tuning a bundle that has a ranker (MACH added on its encoder, say) tunes the formula: the
    ranker scored on its own training queries would win every trial."""
    from training.evaluate import evaluate_bundle

    dataset = load_dataset(demo_data)
    on_dev = evaluate_bundle(ranked, dataset, "dev", "astra")
    assert on_dev["nDCG@10"] == pytest.approx(
        evaluate_bundle(demo_bundle, dataset, "dev")["nDCG@10"]
    )
    served = SearchEngine.load(ranked)  # the service does serve it: dev is not its data
    assert served.ranker is not None
    on_tst = evaluate_bundle(ranked, dataset, "tst", "astra")
    formula = evaluate_bundle(ranked, dataset, "tst", "astra", ranker="off")
    assert on_tst["nDCG@10"] != pytest.approx(formula["nDCG@10"])  # elsewhere it ranks


def test_mach_added_to_a_ranked_bundle_keeps_the_ranked_default_where_it_wins(
    ranked: Path, demo_data: Path, tmp_path: Path
) -> None:
    from tests.support.configs import SMALL_MACH

    out = tmp_path / "both"
    args = ["train", "--model", "mach", "--data", str(demo_data), "--out", str(out)]
    assert main([*args, *SMALL_MACH, "--encoder-from", str(ranked)]) == 0
    manifest = read_manifest(out)
    spec = manifest.astra.ranker
    assert spec is not None and spec.beats_formula
    by_model = manifest.metrics["dev_by_model"]
    best_formula = max(by_model, key=lambda m: by_model[m]["nDCG@10"])
    ranked_wins = spec.metrics["cross_validated"]["nDCG@10"] > by_model[best_formula]["nDCG@10"]
    assert manifest.default_model == ("astra" if ranked_wins else best_formula)
    assert manifest.metrics["weights"]["default_model"] == manifest.default_model


def test_folds_with_stacked_rows_learn_from_all_of_them_and_never_from_the_held_fold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`cross_validated_scores` with `extra`: every fit sees every stacked row and only the
    other fold of the scored queries; scores keep the queries' own width."""
    from training import ranker as learned

    rng = np.random.default_rng(0)
    labels = np.arange(40 * 3).reshape(40, 3)  # 40 queries, 3 candidates each, all distinct
    extra_labels = 1000 + np.arange(10 * 5).reshape(10, 5)  # wider: 5 candidates
    extra = learned.RankerRows(
        extra_labels, rng.random((10, 5, 2)), rng.integers(0, 2, (10, 5)).astype(np.int32)
    )
    seen: list[set[int]] = []

    class Model:
        def predict(self, flat: np.ndarray) -> np.ndarray:
            return flat[:, 0]

    def fake_fit(features, levels, fit_labels, gains, params):
        assert features.shape[1] == 5 and fit_labels.shape[1] == 5  # one width for both
        seen.append({int(x) for x in fit_labels.ravel() if x >= 0})
        return Model()

    monkeypatch.setattr(learned, "fit", fake_fit)
    features = rng.random((40, 3, 2))
    levels = np.zeros((40, 3), np.int32)
    rows = learned.RankerRows(labels, features, levels)
    runs = learned.cross_validated_scores(rows, [0.0, 1.0], {}, extra)
    assert len(seen) == 2 * len(learned.SEEDS)
    stacked = set(extra_labels.ravel().tolist())
    for i, (run, seed) in enumerate(zip(runs, learned.SEEDS, strict=True)):
        assert run.shape == labels.shape
        np.testing.assert_array_equal(run, features[..., 0])
        fold = np.random.default_rng(seed).permutation(40) % 2
        for held, learned_from in zip((0, 1), seen[2 * i : 2 * i + 2], strict=True):
            assert stacked <= learned_from
            assert not set(labels[fold == held].ravel().tolist()) & learned_from
            assert set(labels[fold != held].ravel().tolist()) <= learned_from


@pytest.fixture(scope="module")
def half_bundles(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The demo recipe fitted on each half of train alone (train-a, then train-b), a few steps
    each: the tests check which queries each helper scores, not how well."""
    from tests.support.configs import demo_train_args

    halves = []
    for half in ("train-a", "train-b"):
        out = tmp_path_factory.mktemp("half") / f"demo-{half}"
        args = demo_train_args(
            demo_data, out, "--batch-size", "32", "--train-split", half, "--max-steps", "6"
        )
        assert main(args) == 0
        halves.append(out)
    return halves


def test_a_ranker_also_learns_from_the_halves_its_helper_bundles_score(
    ranked: Path, half_bundles: list[Path], demo_data: Path, tmp_path: Path
) -> None:
    from training.evaluate import EvalSet

    dataset = load_dataset(demo_data)
    args = ["ranker", "--data", str(demo_data)]
    served = []
    for helpers in (half_bundles[:1], half_bundles):
        out = tmp_path / f"stacked-{len(helpers)}"
        shutil.copytree(ranked, out)
        assert main([*args, "--bundle", str(out), "--stack-from", *map(str, helpers)]) == 0
        spec = read_manifest(out).astra.ranker
        # each helper scores the half it was not fitted on
        assert [stacked.split for stacked in spec.stacked] == ["train-b", "train-a"][: len(helpers)]
        for stacked, helper in zip(spec.stacked, helpers, strict=True):
            fitted = read_manifest(helper)
            assert (stacked.name, stacked.version) == (fitted.name, fitted.version)
            assert stacked.queries == len(EvalSet.of(dataset, stacked.split).texts)
        assert set(spec.metrics["dev_only"]) == {"nDCG@10", "P@1", "P@5"}
        dev_alone = read_manifest(ranked).astra.ranker.metrics["cross_validated"]
        assert spec.metrics["dev_only"] == dev_alone
        served.append((out / RANKER_FILE).read_bytes())
        engine = SearchEngine.load(out, ranker="on")
        assert engine.ranker is not None and engine.search(["cordless drill"], 5)[0]
    # more rows, another model each time: not the ranker that learned from dev alone
    assert len({*served, (ranked / RANKER_FILE).read_bytes()}) == 3


def test_two_helpers_for_the_same_half_are_refused(
    ranked: Path, half_bundles: list[Path], demo_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["ranker", "--bundle", str(ranked), "--data", str(demo_data), "--stack-from"]
    assert main([*args, str(half_bundles[0]), str(half_bundles[0])]) == 2
    assert "give one bundle fitted on each half of train" in capsys.readouterr().err


def test_a_manifest_naming_one_helper_as_an_object_still_loads() -> None:
    from service.bundle import RankerSpec

    helper = {"bundle": "h", "name": "h", "version": "1", "split": "train-b", "queries": 3}
    base = {"file": "r", "popularity": "p", "features": [], "trained_on": "dev", "queries": 1}
    base |= {"params": {}}
    assert RankerSpec.model_validate(base | {"stacked": helper}).stacked[0].split == "train-b"
    assert RankerSpec.model_validate(base | {"stacked": None}).stacked == []
    assert RankerSpec.model_validate(base).stacked == []


def test_a_helper_fitted_on_all_of_train_is_refused(
    ranked: Path,
    demo_bundle: Path,
    demo_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "stacked"
    shutil.copytree(ranked, out)
    args = ["ranker", "--bundle", str(out), "--data", str(demo_data)]
    assert main([*args, "--stack-from", str(demo_bundle)]) == 2
    assert (
        "was fitted on 'train'; give a bundle fitted on one half of train"
        in capsys.readouterr().err
    )
