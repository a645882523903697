"""ASTRA's lexical ranker: BM25 over the titles, its bundle file and its fusion with the cosine."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import bm25s
import numpy as np
import pytest

from service.astra.lexical import Analyzer, LexicalIndex, normalise_units
from service.bundle import LEXICAL_FILE, BundleError, read_manifest, write_manifest
from service.search.engine import SearchEngine
from tests.support.paths import HOMEDEPOT, requires_shared_data

TITLES = [
    "DeWalt 20V Max Cordless Drill Driver Kit",
    "Milwaukee M18 Cordless Hammer Drill, Bare Tool",
    "Behr Premium Plus White Interior Paint, 1 gal.",
    "Glidden White Exterior Paint and Primer, 5 gal.",
    "Husky 1/2 in. Drive Socket Set (40-Piece)",
    "2 in. x 4 in. x 8 ft. Stud Lumber",
    "White Vinyl Fence Post Cap 4 in. x 4 in.",
    "Cordless Leaf Blower with Drills of Drills",
]
QUERIES = ["cordless drill", "white paint 5 gal", "2 x 4 stud", "drill drill socket", "zzz"]


def reference_scores(index: LexicalIndex, titles: list[str], queries: list[str]) -> np.ndarray:
    """bm25s (Lucene variant, k1 1.5, b 0.75) on the same terms: [queries, titles]."""
    analyzer = Analyzer()
    retriever = bm25s.BM25(k1=index.k1, b=index.b, method="lucene")
    retriever.index([analyzer.terms(t) for t in titles], show_progress=False)
    vocab = retriever.vocab_dict
    rows = []
    for query in queries:
        known = [t for t in analyzer.terms(query) if t in vocab]
        rows.append(retriever.get_scores(known) if known else np.zeros(len(titles)))
    return np.array(rows)


def test_terms_are_lowercased_stemmed_words_without_stop_words() -> None:
    text = "The Drills, for 1/2-in. PIPES and Fittings"
    assert Analyzer(1).terms(text) == ["drill", "1", "2", "pipe", "fit"]
    assert Analyzer().terms(text) == ["drill", "1_2", "inch", "pipe", "fit"]  # version 2


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("2x4x8 Stud", "2 x 4 x 8 stud"),
        ("20v Drill", "20 volt  drill"),
        ("20-Volt drill", "20 volt  drill"),
        ("3/4 in. pipe", "3_4 inch  pipe"),
        ('3/4" pipe', "3_4 inch  pipe"),
        ("10 ft. hose", "10 ft. hose"),  # feet, amps, pounds: measured, left out
        ("60w bulb", "60 watt  bulb"),
        ("5 Gal. paint", "5 gal  paint"),
        ("15-amp breaker", "15-amp breaker"),
        ("50 lb. bag", "50 lb. bag"),
        ("12 oz. can", "12 oz  can"),
        ("4 way switch", "4 way switch"),  # w followed by a letter: a word, not watts
        ("m18 fuel", "m18 fuel"),
    ],
)
def test_units_are_spelled_one_way(text: str, normalised: str) -> None:
    assert normalise_units(text) == normalised
    assert Analyzer().terms(text) == Analyzer().terms(normalised)  # one function, both sides


def test_old_postings_keep_their_analyzer(tmp_path: Path) -> None:
    index = LexicalIndex.build(TITLES, analyzer_version=1)
    index.save(tmp_path / LEXICAL_FILE)
    loaded = LexicalIndex.load(tmp_path / LEXICAL_FILE, len(TITLES), index.k1, index.b, index.avgdl)
    assert loaded.analyzer.version == 1  # the manifest's default: postings before version 2
    assert LexicalIndex.build(TITLES).analyzer.version == 3


def test_scores_match_bm25s_on_the_same_terms() -> None:
    index = LexicalIndex.build(TITLES)
    expected = reference_scores(index, TITLES, QUERIES)
    matches = index.match(QUERIES)
    all_labels = np.tile(np.arange(len(TITLES)), (len(QUERIES), 1))
    np.testing.assert_allclose(index.pair_scores(matches, all_labels), expected, atol=1e-5)
    for q, match in enumerate(matches):
        np.testing.assert_allclose(index.title_scores(match.rows, TITLES), expected[q], atol=1e-5)
        assert (np.diff(match.labels) > 0).all() and (match.scores > 0).all()
    scores, labels = index.top(matches, 3)
    for q in range(len(QUERIES)):
        want = np.sort(expected[q][expected[q] > 0])[::-1][:3]
        np.testing.assert_allclose(scores[q][: len(want)], want, atol=1e-5)
        np.testing.assert_allclose(expected[q][labels[q][: len(want)]], want, atol=1e-5)
        assert (labels[q][len(want) :] == -1).all()  # no term matched: no candidate
    assert (labels[QUERIES.index("zzz")] == -1).all()


def test_a_repeated_query_term_counts_twice() -> None:
    index = LexicalIndex.build(TITLES)
    once, twice = index.match(["socket", "socket socket"])
    labels = np.arange(len(TITLES))[None, :]
    single = index.pair_scores([once], labels)
    assert single.max() > 0
    np.testing.assert_allclose(index.pair_scores([twice], labels), 2 * single, rtol=1e-6)


def test_fields_weigh_term_frequency_and_length_bm25f_style() -> None:
    titles = ["Cordless Drill", "Hammer Drill", "Claw Hammer"]
    brands = ["Ridgeline", "Ironbark", "Ridgeline"]
    one = LexicalIndex.build(titles, fields=[(1.0, titles)])
    plain = LexicalIndex.build(titles)
    np.testing.assert_array_equal(one.terms, plain.terms)
    for name in ("idf", "weights"):
        np.testing.assert_allclose(getattr(one, name), getattr(plain, name), rtol=1e-6)
    index = LexicalIndex.build(titles, fields=[(1.0, titles), (2.0, brands)])
    labels = np.arange(3)[None, :]
    (brand,) = index.match(["ridgeline"])
    scores = index.pair_scores([brand], labels)[0]
    assert scores[0] > 0 and scores[2] > 0 and scores[1] == 0  # the brand field is searched
    # The weighted length: "Ridgeline" counts twice in labels 0 and 2, so tf 2 of length 4.
    k1, b, avgdl = index.k1, index.b, index.avgdl
    assert avgdl == pytest.approx((4 + 4 + 4) / 3)
    idf = float(np.log1p((3 - 2 + 0.5) / (2 + 0.5)))
    expected = idf * 2 / (2 + k1 * (1 - b + b * 4 / avgdl))
    assert scores[0] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="one text per label"):
        LexicalIndex.build(titles, fields=[(1.0, titles), (1.0, brands[:2])])
    with pytest.raises(ValueError, match="> 0"):
        LexicalIndex.build(titles, fields=[(0.0, titles)])


def test_saved_index_loads_back_equal(tmp_path: Path) -> None:
    index = LexicalIndex.build(TITLES)
    index.save(tmp_path / LEXICAL_FILE)
    loaded = LexicalIndex.load(tmp_path / LEXICAL_FILE, len(TITLES), index.k1, index.b, index.avgdl)
    for name in ("terms", "idf", "indptr", "labels", "weights"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(index, name))
    with pytest.raises(ValueError, match=r"outside 0\.\.2"):
        LexicalIndex.load(tmp_path / LEXICAL_FILE, 3, index.k1, index.b, index.avgdl)


@requires_shared_data
def test_home_depot_bm25_agrees_with_bm25s_on_real_queries() -> None:
    from training.data import load_dataset

    dataset = load_dataset(HOMEDEPOT)
    queries = dataset.split("dev").texts[:200]
    index = LexicalIndex.build(dataset.label_titles, analyzer_version=2)  # bm25s: no speller
    expected = reference_scores(index, dataset.label_titles, queries)
    scores, labels = index.top(index.match(queries), 10)
    found = labels >= 0
    reference = np.take_along_axis(expected, np.maximum(labels, 0), axis=1)
    np.testing.assert_allclose(np.where(found, scores, 0), np.where(found, reference, 0), atol=1e-4)
    np.testing.assert_allclose(scores[:, 0], expected.max(axis=1), atol=1e-4)


# ----------------------------------------------------------------------------- in a bundle


def test_trained_bundle_has_a_dev_tuned_lexical_ranker(demo_bundle: Path) -> None:
    manifest = read_manifest(demo_bundle)
    assert manifest.astra is not None and manifest.astra.lexical is not None
    trials = manifest.metrics["dev_by_model"]["astra"]["lexical_weight_trials"]
    best = max(trials, key=lambda w: trials[w])
    assert float(best) == manifest.astra.lexical.weight
    assert manifest.metrics["dev_by_model"]["astra"]["nDCG@10"] == trials[best]


def test_engine_scores_are_cosine_plus_weighted_normalised_bm25(demo_bundle: Path) -> None:
    engine = SearchEngine.load(demo_bundle)
    lexical, weight = engine.lexical, engine.lexical_weight
    assert lexical is not None and weight > 0
    queries = ["cordless drill 18v", "white paint", "garden hose 50 ft", "qqqq xyzzy"]
    vectors = engine.encoder.encode(queries)
    scores, labels = engine.rank(queries, 10)
    matches = lexical.match(queries)
    best = lexical.top(matches, 1)[0][:, :1]
    cosine = np.einsum("nd,nkd->nk", vectors, engine.bundle.classifiers[labels])
    bm25 = lexical.pair_scores(matches, labels)
    expected = cosine + weight * bm25 / np.where(best > 0, best, 1.0)
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    # No query term is indexed: the index alone ranks it.
    _, index_labels = engine.index.search(vectors[3:], 10)
    assert labels[3].tolist() == index_labels[0].tolist()


def test_weight_zero_serves_the_index_alone(demo_bundle: Path) -> None:
    engine = SearchEngine.load(demo_bundle, lexical_weight=0.0)
    queries = ["cordless drill", "white paint 1 gal"]
    assert engine.lexical_weight == 0.0
    _, labels = engine.rank(queries, 10)
    np.testing.assert_array_equal(
        labels, engine.index.search(engine.encoder.encode(queries), 10)[1]
    )


def test_bm25_candidates_enter_the_ranking(demo_bundle: Path) -> None:
    """Under a dominant weight the top product is BM25's best, wherever the index put it."""
    engine = SearchEngine.load(demo_bundle, lexical_weight=10.0)
    titles = engine.bundle.label_titles
    queries = titles[::37][:8]
    lexical_scores, lexical_labels = engine.lexical.top(engine.lexical.match(queries), 2)
    clear = lexical_scores[:, 0] > lexical_scores[:, 1] * 1.2  # no near tie at the top
    assert clear.sum() >= 4
    _, labels = engine.rank(queries, 1)
    assert labels[clear, 0].tolist() == lexical_labels[clear, 0].tolist()


def test_damaged_postings_are_refused_naming_the_file(demo_bundle: Path, tmp_path: Path) -> None:
    bundle = Path(shutil.copytree(demo_bundle, tmp_path / "bundle"))
    with np.load(bundle / LEXICAL_FILE) as data:
        arrays = dict(data)
    arrays["labels"][0] = 10**6
    with open(bundle / LEXICAL_FILE, "wb") as handle:
        np.savez(handle, **arrays)
    manifest = json.loads((bundle / "manifest.json").read_text())
    write_manifest(
        bundle, {k: v for k, v in manifest.items() if k not in ("files", "format_version")}
    )
    with pytest.raises(BundleError, match=r"lexical\.npz: not a lexical index .*outside"):
        SearchEngine.load(bundle)


def test_cli_adds_the_ranker_to_a_bundle_built_without_one(
    demo_bundle: Path, demo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.__main__ import main
    from training.lexical import LEXICAL_WEIGHTS

    bundle = Path(shutil.copytree(demo_bundle, tmp_path / "bundle"))
    manifest = read_manifest(bundle).model_dump(exclude={"files", "format_version"})
    manifest["astra"]["lexical"] = None
    manifest["metrics"] = {}
    (bundle / LEXICAL_FILE).unlink()
    write_manifest(bundle, manifest)
    assert SearchEngine.load(bundle).lexical is None
    assert main(["lexical", "--bundle", str(bundle), "--data", str(demo_data)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    spec = read_manifest(bundle).astra.lexical
    assert spec is not None and spec.weight in LEXICAL_WEIGHTS
    assert report["lexical"]["weight"] == spec.weight
    trials = report["dev_by_model"]["astra"]["lexical_weight_trials"]
    assert set(trials) == {str(w) for w in LEXICAL_WEIGHTS}
    assert SearchEngine.load(bundle).lexical_weight == spec.weight


def test_cli_refuses_a_bundle_without_astra(
    demo_bundle_both: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.__main__ import main

    bundle = Path(shutil.copytree(demo_bundle_both, tmp_path / "bundle"))
    manifest = read_manifest(bundle).model_dump(exclude={"files", "format_version"})
    manifest.update(kinds=["mach"], default_model="mach", astra=None)
    write_manifest(bundle, manifest)
    assert main(["lexical", "--bundle", str(bundle)]) == 2
    assert "has no ASTRA section" in capsys.readouterr().err


def test_the_setting_overrides_the_bundles_weight(demo_bundle: Path) -> None:
    from service.settings import Settings
    from tests.support.client import serve

    bundled = read_manifest(demo_bundle).astra.lexical.weight
    for setting, served in ((None, bundled), (0.0, 0.0), (2.5, 2.5)):
        with serve(Settings(bundle=demo_bundle, lexical_weight=setting)) as app:
            [info] = app.get("/v1/models").json()["data"]
            assert info["lexical"]["weight"] == served and info["lexical"]["terms"] > 100
            engine = SearchEngine.load(demo_bundle, lexical_weight=served)
            [hits] = engine.search(["cordless drill"], 5)
            answer = app.post("/search", json={"query": "cordless drill", "k": 5}).json()
            assert [h["id"] for h in answer["results"]] == [h.id for h in hits]
    with pytest.raises(ValueError, match="lexical_weight"):
        Settings(bundle=demo_bundle, lexical_weight=11)


def test_hybrid_at_weight_zero_ranks_by_astras_fused_score(demo_bundle_both: Path) -> None:
    """w = 0 leaves ASTRA's score (cosine + lexical term) alone, even where MACH's is -inf."""
    engine = SearchEngine.load(demo_bundle_both, hybrid_weight=0.0)
    queries = ["cordless drill", "white paint 1 gal", "garden hose 50 ft", "qqqq"]
    scores, labels = engine.rank(queries, 20, "hybrid")
    assert (labels >= 0).all() and np.isfinite(scores).all()
    matches = engine.lexical.match(queries)
    best = engine.lexical.top(matches, 1)[0][:, :1]
    vectors = engine.encoder.encode(queries)
    cosine = np.einsum("nd,nkd->nk", vectors, engine.bundle.classifiers[labels])
    bm25 = engine.lexical.pair_scores(matches, labels) / np.where(best > 0, best, 1.0)
    np.testing.assert_allclose(scores, cosine + engine.lexical_weight * bm25, atol=1e-5)
