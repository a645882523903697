"""Keeping the catalog fresh: PUT /products and DELETE /products/{id} on the demo bundles.

A new product must be found by a query for its title as soon as the PUT answers, a deleted one
must never appear again in any model's results, also after a hot reload and after the server
is killed and restarted, and every change must move the version answers carry.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.bundle import read_manifest
from service.catalog import overlay as catalog_module
from service.catalog.changes import Catalogs
from service.search.engine import SearchEngine
from service.settings import Settings
from tests.support.client import assert_error, serve

pytestmark = pytest.mark.slow

NEW_TITLE = "Zephyrine Quartz 18-Volt Brushless Hedge Trimmer Kit in Teal"
NEW_PRODUCT = {"id": "NEW-1", "title": NEW_TITLE}


def put(client: TestClient | httpx.Client, *products: dict[str, str], **kw: Any) -> httpx.Response:
    return client.put("/products", json={"products": list(products)}, **kw)


def ids(
    client: TestClient | httpx.Client, query: str, model: str | None = None, k: int = 10
) -> list[str]:
    body: dict[str, Any] = {"query": query, "k": k}
    if model is not None:
        body["model"] = model
    response = client.post("/search", json=body)
    assert response.status_code == 200, response.text
    return [hit["id"] for hit in response.json()["results"]]


def catalog_info(client: TestClient | httpx.Client) -> dict[str, Any]:
    return client.get("/v1/models").json()["data"][0]["catalog"]


@pytest.fixture
def both(demo_bundle_both: Path, tmp_path: Path) -> Iterator[TestClient]:
    """A server on the astra + mach demo bundle with its own catalog store."""
    with serve(Settings(bundle=demo_bundle_both, data_dir=tmp_path / "data")) as client:
        yield client


def lexical_weight(client: TestClient) -> float:
    """The weight of the served bundle's lexical ranker (the demo bundle has one)."""
    weight = client.get("/v1/models").json()["data"][0]["lexical"]["weight"]
    assert weight > 0
    return weight


def test_a_new_product_is_found_by_its_title_right_after_the_put(both: TestClient) -> None:
    assert all(NEW_PRODUCT["id"] not in ids(both, NEW_TITLE, m) for m in ("astra", "hybrid"))
    answer = put(both, NEW_PRODUCT)
    assert answer.status_code == 200, answer.text
    assert answer.json() | {"took_ms": 0, "version": ""} == {
        "created": 1,
        "updated": 0,
        "unchanged": 0,
        "catalog_version": 1,
        "version": "",
        "took_ms": 0,
    }
    for model in ("astra", "hybrid"):
        response = both.post("/search", json={"query": NEW_TITLE, "k": 5, "model": model}).json()
        assert [response["results"][0][key] for key in ("id", "title")] == ["NEW-1", NEW_TITLE]
        assert "notice" not in response
    [astra] = both.post("/search", json={"query": NEW_TITLE, "k": 1, "model": "astra"}).json()[
        "results"
    ]
    # Its own text vector (cosine 1) plus the lexical ranker's full weight: scored against its
    # title, which the bundle's BM25 index has never seen, it is the best lexical match.
    assert astra["score"] == pytest.approx(1.0 + lexical_weight(both), abs=1e-4)
    # MACH was never trained on it: never among its results, and the answer says so.
    mach = both.post("/search", json={"query": NEW_TITLE, "k": 1000, "model": "mach"}).json()
    assert "NEW-1" not in [hit["id"] for hit in mach["results"]]
    assert "mach ranks only the" in mach["notice"] and "1 added since" in mach["notice"]


def test_a_changed_title_is_served_and_the_old_vector_hidden(both: TestClient) -> None:
    def top(query: str, model: str, k: int = 1) -> list[dict[str, Any]]:
        body = {"query": query, "k": k, "model": model}
        return both.post("/search", json=body).json()["results"]

    # A product MACH ranks first (its ranking does not depend on titles, only on labels).
    [product] = top("cordless drill", "mach")
    [trained] = [hit for hit in top(product["title"], "astra", 400) if hit["id"] == product["id"]]
    new_title = "Moonlit Copper Watering Can with Brass Rose, 2 Gallon"
    assert product["id"] not in [hit["id"] for hit in top(new_title, "astra", 3)]
    answer = put(both, {"id": product["id"], "title": new_title}).json()
    assert (answer["created"], answer["updated"]) == (0, 1)
    [first] = top(new_title, "astra")  # its own text vector (cosine 1), the best BM25 match
    score = pytest.approx(1.0 + lexical_weight(both), abs=1e-4)
    assert first == {"id": product["id"], "title": new_title, "score": score}
    assert product["id"] in [hit["id"] for hit in top(new_title, "hybrid", 3)]
    # MACH keeps the label (it was trained on this product) and shows the new title.
    assert top("cordless drill", "mach") == [{**product, "title": new_title}]
    # ASTRA no longer scores it with its trained vector.
    [now] = [hit for hit in top(product["title"], "astra", 400) if hit["id"] == product["id"]]
    assert now["title"] == new_title and now["score"] != trained["score"]
    # The bundle's own title back: the trained vector serves again, with its old score.
    assert put(both, {"id": product["id"], "title": product["title"]}).json()["updated"] == 1
    [back] = [hit for hit in top(product["title"], "astra", 400) if hit["id"] == product["id"]]
    assert back == trained
    assert catalog_info(both)["changed"] == 0


def test_delete_hides_a_product_at_once_from_every_model(both: TestClient) -> None:
    assert put(both, NEW_PRODUCT).status_code == 200
    labels = both.get("/readyz").json()["labels"]
    trained = ids(both, "cordless drill", "mach", k=1)[0]
    for model in ("astra", "mach", "hybrid"):
        assert trained in ids(both, "cordless drill", model, k=labels + 10)
    for product in (trained, "NEW-1"):
        deleted = both.delete(f"/products/{product}")
        assert deleted.status_code == 200, deleted.text
        assert deleted.json()["id"] == product
    for model in ("astra", "mach", "hybrid"):
        everything = ids(both, "cordless drill", model, k=labels + 10)
        assert trained not in everything and "NEW-1" not in everything
        assert len(everything) == len(set(everything))
        if model != "mach":  # fast MACH decoding returns its top buckets' labels only
            assert len(everything) == labels - 1  # every other product is still found
        assert "NEW-1" not in ids(both, NEW_TITLE, model)
    assert_error(both.delete(f"/products/{trained}"), 404, "product_id", "no product")
    assert_error(both.delete("/products/never-was"), 404, "product_id", "never-was")
    # A deleted product put back is a product again.
    assert put(both, NEW_PRODUCT).json()["created"] == 1
    assert ids(both, NEW_TITLE, "astra", k=1) == ["NEW-1"]


def test_versions_count_changes(both: TestClient) -> None:
    bundle_version = both.get("/readyz").json()["version"]
    assert catalog_info(both) == {
        "version": 0,
        "served_version": bundle_version,
        "added": 0,
        "changed": 0,
        "deleted": 0,
    }
    assert both.post("/search", json={"query": "drill"}).json()["version"] == bundle_version
    first = put(both, NEW_PRODUCT, {"id": "NEW-2", "title": "Teal Garden Gnome"}).json()
    assert first["catalog_version"] == 1 and first["version"] == f"{bundle_version}+c1"
    same = put(both, NEW_PRODUCT).json()  # nothing changes: no new version
    assert (same["unchanged"], same["catalog_version"]) == (1, 1)
    assert both.delete("/products/NEW-2").json()["catalog_version"] == 2
    info = catalog_info(both)
    assert info == {
        "version": 2,
        "served_version": f"{bundle_version}+c2",
        "added": 1,
        "changed": 0,
        "deleted": 0,
    }
    answer = both.post("/search", json={"queries": ["drill", "hose"]}).json()
    assert answer["version"] == f"{bundle_version}+c2"


def test_searches_in_flight_while_products_stream_in(both: TestClient) -> None:
    stop = threading.Event()

    def search_until_stopped() -> list[int]:
        statuses = []
        while not stop.is_set():
            statuses.append(both.post("/search", json={"query": NEW_TITLE}).status_code)
        return statuses

    with ThreadPoolExecutor(max_workers=3) as pool:
        searches = [pool.submit(search_until_stopped) for _ in range(3)]
        for batch in range(5):
            products = [
                {"id": f"S{batch}-{i}", "title": f"{NEW_TITLE} {batch} {i}"} for i in range(20)
            ]
            assert put(both, *products).json()["created"] == 20
            assert both.delete(f"/products/S{batch}-0").status_code == 200
        stop.set()
        statuses = [status for future in searches for status in future.result()]
    assert statuses and set(statuses) == {200}
    assert catalog_info(both)["added"] == 5 * 19


BAD_UPSERTS: list[tuple[dict[str, Any], str, list[str]]] = [
    ({"products": []}, "products", ["1 to 3"]),
    ({"products": [{"id": f"p{i}", "title": "x"} for i in range(4)]}, "products", ["at most 3"]),
    ({"products": [{"id": "p", "title": "t" * 21}]}, "products.0.title", ["20 characters"]),
    ({"products": [{"id": "p", "title": "  "}]}, "products.0.title", ["empty"]),
    ({"products": [{"id": "p q", "title": "x"}]}, "products.0.id", ["whitespace", "128"]),
    ({"products": [{"id": "p" * 129, "title": "x"}]}, "products.0.id", ["128"]),
    ({"products": [{"id": "p"}]}, "products.0.title", ["required"]),
    ({"products": [{"id": 7, "title": "x"}]}, "products.0.id", ["string"]),
    (
        {"products": [{"id": "a", "title": "x"}, {"id": "a", "title": "y"}]},
        "products.1.id",
        ["repeats products.0.id"],
    ),
]


def test_bad_upserts_are_4xx_naming_the_field_and_limit(demo_bundle: Path, tmp_path: Path) -> None:
    settings = Settings(
        bundle=demo_bundle, data_dir=tmp_path / "data", max_upsert_products=3, max_title_chars=20
    )
    with serve(settings) as client:
        for body, field, fragments in BAD_UPSERTS:
            assert_error(client.put("/products", json=body), 422, field, *fragments)
        assert_error(client.delete("/products/" + "x" * 129), 422, "product_id", "128")
        big = client.put(
            "/products", content=b" " * 100_000, headers={"content-type": "application/json"}
        )
        assert_error(big, 413, "body", "bytes")
        assert catalog_info(client)["version"] == 0


def test_the_catalog_holds_at_most_its_configured_changes(
    demo_bundle: Path, tmp_path: Path
) -> None:
    settings = Settings(bundle=demo_bundle, data_dir=tmp_path / "data", max_catalog_changes=3)
    with serve(settings) as client:
        new = [{"id": f"CAP-{i}", "title": f"Capped drill {i}"} for i in range(4)]
        assert put(client, new[0], new[1]).status_code == 200
        retitled = {"id": "CAP-0", "title": "Capped drill, new title"}
        assert put(client, retitled, new[2]).status_code == 200  # a retitle adds no change
        refused = put(client, new[3])
        assert_error(refused, 422, "products", "limit 3", "XC_MAX_CATALOG_CHANGES", "retrain")
        assert refused.json()["detail"][0]["type"] == "catalog_full"
        assert catalog_info(client)["added"] == 3
        assert client.delete("/products/CAP-1").status_code == 200  # DELETE always works


def test_catalog_routes_need_the_api_key(demo_bundle: Path, tmp_path: Path) -> None:
    settings = Settings(bundle=demo_bundle, data_dir=tmp_path / "data", api_key="s3cret")
    with serve(settings) as client:
        assert_error(put(client, NEW_PRODUCT), 401, "authorization", "bearer token")
        assert_error(client.delete("/products/NEW-1"), 401, "authorization")
        auth = {"Authorization": "Bearer s3cret"}
        assert put(client, NEW_PRODUCT, headers=auth).status_code == 200
        assert client.delete("/products/NEW-1", headers=auth).status_code == 200


def test_a_hot_reload_keeps_the_changes_of_the_bundle_name(
    demo_bundle: Path, demo_bundle_v2: Path, tmp_path: Path
) -> None:
    settings = Settings(
        bundle=demo_bundle, data_dir=tmp_path / "data", models_root=demo_bundle.parent
    )
    with serve(settings) as client:
        deleted = ids(client, "cordless drill", "astra", k=1)[0]
        assert put(client, NEW_PRODUCT).status_code == 200
        assert client.delete(f"/products/{deleted}").status_code == 200
        reloaded = client.post("/admin/reload", json={"bundle": demo_bundle_v2.name})
        assert reloaded.status_code == 200, reloaded.text
        assert reloaded.json()["current"]["catalog"]["version"] == 2
        answer = client.post("/search", json={"query": NEW_TITLE, "k": 1000}).json()
        assert answer["version"] == "v2+c2"
        assert answer["results"][0]["id"] == "NEW-1"
        assert deleted not in [hit["id"] for hit in answer["results"]]
        assert answer["results"][1]["title"].startswith("v2 ")  # the new bundle's titles


def test_changes_survive_a_killed_server(demo_bundle: Path, tmp_path: Path) -> None:
    from tests.support.servers import free_port, start_server, stop, wait_ready

    data_dir = str(tmp_path / "data")

    def run_server(name: str) -> tuple[Any, httpx.Client]:
        port = free_port()
        log = tmp_path / f"{name}.log"
        process = start_server(demo_bundle, port, log, data_dir=data_dir)
        wait_ready(process, f"http://127.0.0.1:{port}", log)
        return process, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

    process, client = run_server("first")
    try:
        deleted = ids(client, "cordless drill", "astra", k=1)[0]
        assert put(client, NEW_PRODUCT).status_code == 200
        assert client.delete(f"/products/{deleted}").status_code == 200
        assert ids(client, NEW_TITLE, k=1) == ["NEW-1"]
        process.send_signal(signal.SIGKILL)  # no shutdown: what was answered is on disk
        process.wait(timeout=30)
    finally:
        stop(process)

    process, client = run_server("second")
    try:
        assert catalog_info(client) | {"served_version": ""} == {
            "version": 2,
            "served_version": "",
            "added": 1,
            "changed": 0,
            "deleted": 1,
        }
        assert ids(client, NEW_TITLE, k=1) == ["NEW-1"]
        everything = ids(client, "cordless drill", k=1000)
        assert deleted not in everything and "NEW-1" in everything
        assert_error(client.delete(f"/products/{deleted}"), 404, "product_id")
    finally:
        stop(process)


def test_side_index_compaction_keeps_answers(
    demo_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retitling one product many times leaves dead slots; compaction renumbers the live ones."""
    monkeypatch.setattr(catalog_module, "COMPACT_MIN_DEAD", 4)
    catalogs = Catalogs(tmp_path / "data")
    catalogs.open()
    engine = SearchEngine.load(demo_bundle)
    catalogs.attach(engine)
    name = read_manifest(demo_bundle).name
    try:
        for round_ in range(12):
            result = catalogs.upsert(
                engine, [("NEW-1", f"{NEW_TITLE} mark {round_}"), ("NEW-2", f"Teal Gnome {round_}")]
            )
            assert result.updated == (2 if round_ else 0)
            engine = catalogs.latest(engine)
        view = engine.catalog
        assert view is not None and view.live.sum() == 2 and view.vectors.shape[0] < 12
        [hits] = engine.search([f"{NEW_TITLE} mark 11"], k=2, model="astra")
        assert (hits[0].id, hits[0].title) == ("NEW-1", f"{NEW_TITLE} mark 11")
        assert catalogs.store is not None
        _, stored = catalogs.store.changes(name)
        assert {state.id for state in stored} == {"NEW-1", "NEW-2"}
        assert all(np.linalg.norm(state.vector) == pytest.approx(1, abs=1e-4) for state in stored)
    finally:
        catalogs.close()
