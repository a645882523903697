"""The result cache: bounded, least recently used out first, and never stale: a catalog change
or a reload moves the key, and a query the models read the same way shares one entry."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.ranking import Hit
from service.search.cache import ResultCache, answer_bytes, normalise
from service.search.engine import SearchEngine
from service.settings import Settings
from tests.support.client import serve


def hits(n: int, title: str = "t") -> list[Hit]:
    return [Hit(label=i, id=f"P{i}", title=title, score=1.0 / (i + 1)) for i in range(n)]


def key(query: str, version: str = "v1") -> tuple:
    return ResultCache.key(query, 10, "astra", "demo", version)


def test_entries_are_bounded_least_recently_used_out_first() -> None:
    cache = ResultCache(max_entries=2, max_bytes=1 << 20)
    cache.put(key("a"), hits(1))
    cache.put(key("b"), hits(1))
    assert cache.get(key("a")) is not None  # a is now the most recent
    cache.put(key("c"), hits(1))
    assert cache.get(key("b")) is None and cache.get(key("a")) is not None and len(cache) == 2


def test_bytes_are_bounded_and_an_answer_larger_than_the_cache_is_not_kept() -> None:
    one = answer_bytes("a", hits(10, "x" * 100))
    cache = ResultCache(max_entries=100, max_bytes=2 * one + 10)
    for query in "abc":
        cache.put(key(query), hits(10, "x" * 100))
    assert len(cache) == 2 and cache.bytes <= cache.max_bytes
    assert cache.get(key("a")) is None
    cache.put(key("huge"), hits(1, "x" * (3 * one)))
    assert cache.get(key("huge")) is None and len(cache) == 2
    cache.clear()
    assert len(cache) == 0 and cache.bytes == 0


def test_the_key_holds_the_normalised_query_and_the_version() -> None:
    assert normalise("  Cordless\tDRILL \n 20V ") == "cordless drill 20v"
    assert key("Cordless  Drill") == key("cordless drill")
    assert key("cordless drill", "v1+c1") != key("cordless drill", "v1")
    assert ResultCache.key("q", 5, "astra", "demo", "v") != ResultCache.key(
        "q", 10, "astra", "demo", "v"
    )


@pytest.mark.slow
def test_queries_with_one_key_get_the_same_answer_from_every_model(demo_bundle_both: Path) -> None:
    engine = SearchEngine.load(demo_bundle_both)
    variants = ["cordless drill 20V", "  CORDLESS   Drill\t20v ", "Cordless Drill 20v"]
    for model in engine.models:
        answers = engine.search(variants, k=10, model=model)
        assert len({normalise(v) for v in variants}) == 1
        assert all(
            [(h.id, h.score) for h in row] == [(h.id, h.score) for h in answers[0]]
            for row in answers
        ), model


def lookups(client, result: str) -> float:
    metrics = client.get("/metrics").text
    line = next(
        (
            row
            for row in metrics.splitlines()
            if row.startswith(f'xc_cache_lookups_total{{result="{result}"}}')
        ),
        None,
    )
    return float(line.split()[-1]) if line else 0.0


@pytest.mark.slow
def test_a_repeated_query_is_answered_from_the_cache_and_a_change_is_never_stale(
    demo_bundle: Path, tmp_path: Path
) -> None:
    title = "Zephyrine Quartz Teal Hedge Trimmer"
    with serve(Settings(bundle=demo_bundle, data_dir=tmp_path / "data")) as client:
        first = client.post("/search", json={"query": title, "k": 5}).json()
        assert lookups(client, "miss") == 1 and lookups(client, "hit") == 0
        again = client.post("/search", json={"query": f"  {title.upper()} ", "k": 5}).json()
        assert lookups(client, "hit") == 1 and again["results"] == first["results"]
        put = client.put("/products", json={"products": [{"id": "NEW-1", "title": title}]})
        assert put.status_code == 200
        after = client.post("/search", json={"query": title, "k": 5}).json()
        assert after["version"].endswith("+c1") and after["results"][0]["id"] == "NEW-1"
        assert lookups(client, "miss") == 2  # the new version's key was never cached
        both = client.post("/search", json={"queries": [title, "garden hose"], "k": 5}).json()
        assert both["responses"][0]["results"] == after["results"]
        assert lookups(client, "hit") == 2 and lookups(client, "miss") == 3
        too_long = client.post("/search", json={"queries": [title, "drill " * 200], "k": 5})
        assert too_long.status_code == 422
        assert too_long.json()["detail"][0]["loc"] == ["body", "queries", 1]  # not 0: 1 is cached


@pytest.mark.slow
def test_a_reload_empties_the_cache_and_the_cache_can_be_off(
    demo_bundle: Path, demo_bundle_v2: Path, tmp_path: Path
) -> None:
    settings = Settings(bundle=demo_bundle, models_root=demo_bundle.parent, data_dir=tmp_path / "d")
    with serve(settings) as client:
        client.post("/search", json={"query": "drill", "k": 5})
        assert client.app.state.shared.cache is not None and len(client.app.state.shared.cache) == 1
        reloaded = client.post("/admin/reload", json={"bundle": demo_bundle_v2.name})
        assert reloaded.status_code == 200, reloaded.text
        assert len(client.app.state.shared.cache) == 0
    off = Settings(bundle=demo_bundle, data_dir=tmp_path / "e", cache_entries=0)
    with serve(off) as client:
        for _ in range(2):
            assert client.post("/search", json={"query": "drill", "k": 5}).status_code == 200
        assert client.app.state.shared.cache is None
        assert lookups(client, "hit") == lookups(client, "miss") == 0
