"""The HTTP API in-process: TestClient with the real lifespan on the demo bundle.

Every response these tests provoke goes through a hook that fails the test on any 5xx: client
input, however malformed, must be answered with a 4xx in the documented error shape.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from bench.hot_path import parse_server_timing
from service.api.search import SEARCH_MAX_BODY_BYTES
from service.app import create_app
from service.bundle import Bundle, load_bundle
from service.logs import JsonFormatter
from service.settings import Settings
from tests.support.client import assert_error, serve

JSON = {"content-type": "application/json"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundle(demo_bundle: Path) -> Bundle:
    return load_bundle(demo_bundle)


@pytest.fixture(scope="module")
def client(demo_bundle: Path) -> Iterator[TestClient]:
    with serve(Settings(bundle=demo_bundle)) as ready:
        yield ready


def search(client: TestClient, body: Any = None, **kwargs: Any) -> httpx.Response:
    """POST /search with a JSON body (or raw `content=` / `headers=` via kwargs)."""
    if body is not None:
        kwargs["json"] = body
    return client.post("/search", **kwargs)


# --- probes -------------------------------------------------------------------------------


def test_healthz(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_names_the_bundle(client: TestClient, bundle: Bundle) -> None:
    body = client.get("/readyz").json()
    manifest = bundle.manifest
    assert body["status"] == "ready"
    assert (body["bundle"], body["version"]) == (manifest.name, manifest.version)
    assert body["models"] == list(manifest.kinds)
    assert body["default_model"] == manifest.default_model
    assert body["labels"] == manifest.labels.count


def test_not_ready_before_startup_but_alive(demo_bundle: Path) -> None:
    # Without the context manager the lifespan never runs: the state while loading.
    client = TestClient(create_app(Settings(bundle=demo_bundle)))
    assert client.get("/healthz").status_code == 200
    for response in (client.get("/readyz"), search(client, {"query": "drill"})):
        assert_error(response, 503, "not ready", "loading")
        assert response.headers["retry-after"].isdigit()


def test_bundle_that_fails_to_load_is_reported(demo_bundle: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(demo_bundle, broken)
    titles = broken / load_bundle(demo_bundle).manifest.labels.titles
    titles.write_text(titles.read_text(encoding="utf-8").replace("a", "b", 1), encoding="utf-8")
    with TestClient(create_app(Settings(bundle=broken))) as client:
        deadline = time.monotonic() + 60
        while (response := client.get("/readyz")).json()["detail"][0]["type"] == "not_ready":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert_error(response, 503, "not ready", "failed to load", titles.name, "sha256")
        assert "broken/labels.txt" in response.text and str(tmp_path) not in response.text
        assert_error(search(client, {"query": "drill"}), 503, "not ready", titles.name)
        assert client.get("/healthz").status_code == 200


# --- search results -----------------------------------------------------------------------


def test_search_returns_k_results_best_first(client: TestClient, bundle: Bundle) -> None:
    started = time.perf_counter()
    response = search(client, {"query": "cordless drill", "k": 7})
    elapsed_ms = (time.perf_counter() - started) * 1000
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"results", "model", "version", "took_ms"}
    results = body["results"]
    assert len(results) == min(7, bundle.manifest.labels.count)
    scores = [result["score"] for result in results]
    assert scores == sorted(scores, reverse=True)
    assert body["model"] == bundle.manifest.default_model
    assert 0 <= body["took_ms"] <= elapsed_ms


def test_server_timing_splits_the_request(client: TestClient) -> None:
    """`Server-Timing` names the app's time, the search's and the model's stages; each part is
    inside the one that holds it, and the search is the body's `took_ms`."""
    response = search(client, {"query": "cordless drill"})
    timing = parse_server_timing(response.headers["server-timing"])
    assert {"app", "search", "tokenize", "queue", "encode", "retrieve"} <= set(timing)
    stages = sum(timing[s] for s in ("tokenize", "queue", "encode", "retrieve"))
    assert 0 < stages <= timing["search"] <= timing["app"]
    assert timing["search"] == pytest.approx(response.json()["took_ms"], abs=0.002)
    refused = search(client, {"query": ""})
    assert set(parse_server_timing(refused.headers["server-timing"])) == {"app"}


def test_default_k_is_10(client: TestClient) -> None:
    assert len(search(client, {"query": "paint"}).json()["results"]) == 10


def test_results_are_lines_of_the_label_files(client: TestClient, bundle: Bundle) -> None:
    labels = set(zip(bundle.label_ids, bundle.label_titles, strict=True))
    for query in ("white paint 1 gal", "led light bulb", "garden hose 50 ft", "xyzzy"):
        results = search(client, {"query": query, "k": 20}).json()["results"]
        assert results
        for result in results:
            assert (result["id"], result["title"]) in labels, result


def test_a_product_title_finds_that_product(client: TestClient, bundle: Bundle) -> None:
    count = bundle.manifest.labels.count
    picks = [round(i * (count - 1) / 11) for i in range(12)]
    found = 0
    for label in picks:
        results = search(client, {"query": bundle.label_titles[label], "k": 10}).json()["results"]
        found += bundle.label_ids[label] in {result["id"] for result in results}
    assert found >= 9, f"only {found}/{len(picks)} titles found their product in the top 10"


def test_every_model_in_the_bundle_answers(client: TestClient, bundle: Bundle) -> None:
    for model in bundle.manifest.kinds:
        body = search(client, {"query": "drill", "k": 3, "model": model}).json()
        assert body["model"] == model
        assert len(body["results"]) == 3
    assert search(client, {"query": "drill", "model": None}).status_code == 200


@pytest.mark.parametrize("model", ["astra", "mach", "hybrid"])
def test_model_not_in_the_bundle_is_404_naming_model(
    client: TestClient, bundle: Bundle, model: str
) -> None:
    if model in bundle.manifest.kinds:
        pytest.skip(f"the demo bundle holds {model}")
    response = search(client, {"query": "drill", "model": model})
    assert_error(response, 404, "model", repr(model), "not in this bundle")
    assert response.json()["detail"][0]["loc"] == ["body", "model"]


@pytest.mark.parametrize(
    "query",
    [
        "cordless\tdrill\n",
        "  drill  ",
        "perceuse sans fil ß 電動ドリル 🔨",
        "🔨" * 512,
        "é" * 512,
        "\u200b\u00a0drill",
        "drill" + " " * 5000,
        "a",
        "!!!",
    ],
)
def test_unusual_but_valid_queries_are_answered(client: TestClient, query: str) -> None:
    response = search(client, {"query": query, "k": 5})
    assert response.status_code == 200, response.text
    assert len(response.json()["results"]) == 5


def test_queries_run_concurrently_without_errors(client: TestClient) -> None:
    from concurrent.futures import ThreadPoolExecutor

    queries = [f"drill {i}" for i in range(32)]
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda q: search(client, {"query": q, "k": 5}), queries))
    assert all(response.status_code == 200 for response in responses)


# --- validation: every 4xx names the field and the limit ------------------------------------


@pytest.mark.parametrize(
    ("k", "expected"), [(1, 1), (2, 2), (1000, 1000)], ids=["k=1", "k=2", "k=1000"]
)
def test_k_in_range(client: TestClient, bundle: Bundle, k: int, expected: int) -> None:
    response = search(client, {"query": "drill", "k": k})
    assert response.status_code == 200, response.text
    assert len(response.json()["results"]) == min(expected, bundle.manifest.labels.count)


@pytest.mark.parametrize(
    ("k", "fragment"),
    [
        (0, ">= 1"),
        (-1, ">= 1"),
        (1001, "<= 1000"),
        (10**30, "<= 1000"),
        (-(10**30), ">= 1"),
        (2.5, "1 to 1000"),
        (10.0, "1 to 1000"),
        (1e300, "1 to 1000"),
        ("10", "1 to 1000"),
        (True, "1 to 1000"),
        ([10], "1 to 1000"),
        ({"n": 10}, "1 to 1000"),
    ],
)
def test_bad_k_is_422(client: TestClient, k: Any, fragment: str) -> None:
    response = search(client, {"query": "drill", "k": k})
    assert_error(response, 422, "k", fragment)
    assert response.json()["detail"][0]["loc"] == ["body", "k"]


@pytest.mark.parametrize(
    ("raw_k", "fragment"), [(b"NaN", "1 to 1000"), (b"Infinity", "1 to 1000"), (b"1e999", "")]
)
def test_non_finite_k_is_422(client: TestClient, raw_k: bytes, fragment: str) -> None:
    response = search(client, content=b'{"query": "drill", "k": ' + raw_k + b"}", headers=JSON)
    assert_error(response, 422, "k", fragment)


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        ({}, ["is required", "1 to 512 characters", "unless queries is given"]),
        ({"k": 5}, ["is required"]),
        ({"query": "drill", "queries": ["saw"]}, ["not both"]),
        ({"query": ""}, ["must not be empty"]),
        ({"query": "   "}, ["must not be empty"]),
        ({"query": " \t\n \n"}, ["must not be empty"]),
        ({"query": "a" * 513}, ["at most 512 characters"]),
        ({"query": "🔨" * 513}, ["at most 512 characters"]),
        ({"query": "drill\x00"}, ["control characters", "U+0000"]),
        ({"query": "dr\x07ill"}, ["control characters", "U+0007", "position 2"]),
        ({"query": "dr\rill"}, ["control characters", "U+000D"]),
        ({"query": "\x1b[31mdrill"}, ["control characters", "U+001B"]),
        ({"query": "drill\x7f"}, ["control characters", "U+007F"]),
        ({"query": "dri\u0085ll"}, ["control characters", "U+0085"]),
        ({"query": 123}, ["valid string", "1 to 512 characters"]),
        ({"query": None}, ["valid string"]),
        ({"query": ["drill"]}, ["valid string"]),
        ({"query": {"text": "drill"}}, ["valid string"]),
        ({"query": True}, ["valid string"]),
    ],
)
def test_bad_query_is_422(client: TestClient, body: Any, fragments: list[str]) -> None:
    response = search(client, body)
    assert_error(response, 422, "query", *fragments)
    assert response.json()["detail"][0]["loc"] == ["body", "query"]


def test_query_is_trimmed_before_it_is_checked(client: TestClient) -> None:
    # Surrounding whitespace (CR and NEL included) is trimmed, then length and characters checked.
    assert search(client, {"query": "  " + "a" * 512 + "\n"}).status_code == 200
    assert search(client, {"query": "drill\r\n"}).status_code == 200
    assert search(client, {"query": "\u0085drill\u0085"}).status_code == 200


def test_lone_surrogate_is_422(client: TestClient) -> None:
    response = search(client, content=b'{"query": "drill \\ud800"}', headers=JSON)
    assert_error(response, 422, "query", "valid string")


def test_unknown_field_is_422(client: TestClient) -> None:
    response = search(client, {"query": "drill", "limit": 5})
    assert_error(response, 422, "limit", "not a known field", "query, queries, k, model")


def test_unknown_model_name_is_422(client: TestClient) -> None:
    response = search(client, {"query": "drill", "model": "bert"})
    assert_error(response, 422, "model", "'astra', 'mach', 'hybrid'")


def test_every_problem_is_reported(client: TestClient) -> None:
    response = search(client, {"query": "", "k": 0, "extra": 1})
    assert response.status_code == 422
    fields = {tuple(item["loc"]) for item in response.json()["detail"]}
    assert fields == {("body", "query"), ("body", "k"), ("body", "extra")}


@pytest.mark.parametrize(
    ("content", "headers", "status", "fragment"),
    [
        (b"not json", JSON, 400, "not valid JSON"),
        (b'{"query": "drill"', JSON, 400, "not valid JSON"),
        (b"{'query': 'drill'}", JSON, 400, "not valid JSON"),
        (b'{"query": "\xff\xfe drill"}', JSON, 400, "UTF-8"),
        (b"\x80\x81 drill", JSON, 400, "UTF-8"),
        (b"\xff\xfe\x00\x00", JSON, 400, "not valid JSON"),
        (b"[" * 50_000, JSON, 400, "depth"),
        (b'{"query": "drill", "k": ' + b"9" * 5000 + b"}", JSON, 400, "size"),
        (b"", JSON, 422, "required"),
        (b"null", JSON, 422, ""),
        (b"[]", JSON, 422, "JSON object"),
        (b'"drill"', JSON, 422, "JSON object"),
        (b"42", JSON, 422, "JSON object"),
        (b'{"query": "drill"}', {}, 422, "JSON object"),
        (b'{"query": "drill"}', {"content-type": "text/plain"}, 422, "JSON object"),
        (b"query=drill", {"content-type": "application/x-www-form-urlencoded"}, 422, ""),
        (b" " * (SEARCH_MAX_BODY_BYTES + 1), JSON, 413, f"{SEARCH_MAX_BODY_BYTES} bytes"),
    ],
    ids=[
        "not-json",
        "truncated",
        "single-quotes",
        "non-utf8-string",
        "non-utf8-bytes",
        "utf32-bom",
        "deep-nesting",
        "5000-digit-number",
        "empty",
        "null",
        "array",
        "string",
        "number",
        "no-content-type",
        "text-plain",
        "form",
        "too-large",
    ],
)
def test_malformed_bodies_are_4xx_naming_the_body(
    client: TestClient, content: bytes, headers: dict[str, str], status: int, fragment: str
) -> None:
    response = search(client, content=content, headers=headers)
    assert_error(response, status, "body", fragment)


@pytest.mark.parametrize(
    ("method", "path", "content"),
    [
        ("POST", "/search", b'{"query": "drill", "k": 5, "k": 500}'),
        ("POST", "/search", b'{"queries": ["drill"], "model": "astra", "model": "mach"}'),
        ("PUT", "/products", b'{"products": [{"id": "N-1", "title": "A", "title": "B"}]}'),
        ("POST", "/batches", b'{"requests": [{"custom_id": "a", "query": "x", "query": "y"}]}'),
        ("POST", "/admin/reload", b'{"bundle": "models/a", "bundle": "models/b"}'),
    ],
)
def test_a_repeated_key_is_refused_not_merged(
    client: TestClient, method: str, path: str, content: bytes
) -> None:
    before = client.get("/v1/models").json()["data"][0]
    response = client.request(method, path, content=content, headers=JSON)
    assert_error(response, 422, "body", "appears twice in one object")
    assert response.json()["detail"][0]["type"] == "duplicate_key"
    assert client.get("/v1/models").json()["data"][0] == before  # nothing changed


def test_chunked_body_over_the_limit_is_413(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(SEARCH_MAX_BODY_BYTES // 1000 + 1):
            yield b" " * 1000

    response = search(client, content=chunks(), headers=JSON)
    assert_error(response, 413, "body", f"{SEARCH_MAX_BODY_BYTES} bytes")


def test_wrong_method_and_path(client: TestClient) -> None:
    assert_error(client.get("/search"), 405, "method", "GET", "POST")
    assert_error(client.get("/nowhere"), 404, "path", "/nowhere")


def test_limits_follow_the_settings(demo_bundle: Path) -> None:
    settings = Settings(bundle=demo_bundle, max_k=50, default_k=3, max_query_chars=20)
    with serve(settings) as client:
        assert len(search(client, {"query": "drill"}).json()["results"]) == 3
        assert search(client, {"query": "drill", "k": 50}).status_code == 200
        assert_error(search(client, {"query": "drill", "k": 51}), 422, "k", "<= 50")
        assert search(client, {"query": "a" * 20}).status_code == 200
        assert_error(search(client, {"query": "a" * 21}), 422, "query", "at most 20")


# --- request ids and logs -----------------------------------------------------------------


def test_request_id_is_echoed(client: TestClient) -> None:
    response = search(client, {"query": "drill"}, headers={"X-Request-Id": "order-42/retry 1"})
    assert response.headers["x-request-id"] == "order-42/retry 1"
    error = search(client, {"query": ""}, headers={"X-Request-Id": "bad-one"})
    assert error.headers["x-request-id"] == "bad-one"


@pytest.mark.parametrize("sent", [None, "", "x" * 129, b"caf\xe9", b"tab\there"])
def test_request_id_is_generated_when_absent_or_invalid(
    client: TestClient, sent: str | bytes | None
) -> None:
    headers = {} if sent is None else {"X-Request-Id": sent}
    first = client.get("/healthz", headers=headers).headers["x-request-id"]
    second = client.get("/healthz", headers=headers).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert first != second


def test_request_id_of_128_characters_is_kept(client: TestClient) -> None:
    sent = "r" * 128
    assert client.get("/healthz", headers={"X-Request-Id": sent}).headers["x-request-id"] == sent


def test_one_json_access_line_per_request(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="service.access"):
        search(client, {"query": "drill"}, headers={"X-Request-Id": "trace-me"})
    records = [r for r in caplog.records if r.name == "service.access"]
    assert len(records) == 1
    line = JsonFormatter().format(records[0])
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["request_id"] == "trace-me"
    assert entry["level"] == "info" and entry["logger"] == "service.access"
    assert (entry["method"], entry["path"], entry["status"]) == ("POST", "/search", 200)
    assert entry["duration_ms"] > 0
    assert {"ts", "msg"} <= set(entry)


def test_server_fault_is_500_with_request_id_and_logged(
    demo_bundle: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(Settings(bundle=demo_bundle))

    def broken() -> None:
        raise RuntimeError("disk on fire")

    app.add_api_route("/broken", broken)
    client = TestClient(app)  # no lifespan needed: the route does not use the engine
    with caplog.at_level(logging.ERROR):
        response = client.get("/broken", headers={"X-Request-Id": "fault-1"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "fault-1"
    assert_error(response, 500, "internal server error", "fault-1")
    assert "disk on fire" not in response.text
    [record] = [r for r in caplog.records if r.name == "service.error"]
    assert record.exc_info and "disk on fire" in str(record.exc_info[1])
    entry = json.loads(JsonFormatter().format(record))
    assert (entry["request_id"], entry["path"]) == ("fault-1", "/broken")
    assert "disk on fire" in entry["exc"]
