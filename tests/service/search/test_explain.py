"""`explain`: each result's signals, and contributions that add up to its score, for every
model; through the engine and over HTTP."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.search.engine import SearchEngine
from service.search.explain import explain_hits
from service.settings import Settings
from tests.support.client import serve

QUERIES = ["cordless drill 20v", "white interior paint", "garden hose 50 ft"]


def _explained(engine: SearchEngine, model: str, k: int = 5) -> list:
    vectors = engine.encoder.encode(QUERIES)
    hits = engine.hits(*engine.rank_encoded(vectors, QUERIES, k, model))
    explain_hits(engine, vectors, QUERIES, k, model, hits)
    return hits


def assert_adds_up(hit: object) -> None:
    parts = hit.explain["contributions"]
    assert sum(parts.values()) == pytest.approx(hit.score, rel=1e-5, abs=1e-5), hit.explain


@pytest.mark.parametrize(
    ("model", "ranked_by", "parts"),
    [
        ("astra", "formula", {"astra", "lexical"}),
        ("hybrid", "hybrid", {"astra", "lexical", "mach"}),
        ("mach", "mach", {"mach"}),
    ],
)
def test_contributions_add_up_to_the_score(
    demo_bundle_both: Path, model: str, ranked_by: str, parts: set[str]
) -> None:
    engine = SearchEngine.load(demo_bundle_both, ranker="off")
    for row in _explained(engine, model):
        assert row
        for hit in row:
            assert hit.explain["ranked_by"] == ranked_by
            assert set(hit.explain["contributions"]) == parts
            assert_adds_up(hit)


def test_the_index_alone_is_its_classifier_score(demo_bundle: Path) -> None:
    engine = SearchEngine.load(demo_bundle, lexical_weight=0.0)
    for hit in _explained(engine, "astra")[0]:
        assert hit.explain["contributions"] == {"astra": hit.score}


def test_the_formula_shows_what_it_read(demo_bundle: Path) -> None:
    engine = SearchEngine.load(demo_bundle, ranker="off")
    best = _explained(engine, "astra")[0][0].explain
    signals, parts = best["signals"], best["contributions"]
    assert signals["bm25_best"] >= signals["bm25"] >= 0
    assert parts["astra"] == pytest.approx(signals["astra"])
    weight = engine.lexical_weight
    assert parts["lexical"] == pytest.approx(weight * signals["bm25"] / signals["bm25_best"])


def test_explain_over_http(demo_bundle: Path, tmp_path: Path) -> None:
    with serve(Settings(bundle=demo_bundle, data_dir=tmp_path / "data")) as client:
        plain = client.post("/search", json={"query": QUERIES[0], "k": 3}).json()
        assert all("explain" not in result for result in plain["results"])
        body = {"queries": QUERIES[:2], "k": 3, "explain": True}
        answer = client.post("/search", json=body)
        assert answer.status_code == 200, answer.text
        for group in answer.json()["responses"]:
            for result in group["results"]:
                parts = result["explain"]["contributions"]
                assert np.isclose(sum(parts.values()), result["score"], rtol=1e-5, atol=1e-5)
        # the same query again, explained: not a cache hit that would drop the explanation
        again = client.post("/search", json={"query": QUERIES[0], "k": 3, "explain": True})
        assert all("explain" in result for result in again.json()["results"])
        bad = client.post("/search", json={"query": "drill", "explain": "yes"})
        assert bad.status_code == 422 and "explain" in bad.text and "true or false" in bad.text
