"""Production serving through the real app and a real bundle: client batches, micro-batching,
overload (429), deadlines, token limits, metrics, /v1/models, hot reload, API key and CORS."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.bundle import read_manifest
from service.device import plan_devices, probe_capabilities
from service.settings import Settings

READY_TIMEOUT_S = 120

pytestmark = pytest.mark.slow


def wait_ready(client: TestClient) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.1)
    raise AssertionError("app not ready in time")


@contextmanager
def serve(bundle: Path, **settings: Any) -> Iterator[TestClient]:
    settings.setdefault("models_root", bundle.parent)  # the demo bundles share one root
    app = create_app(Settings(bundle=bundle, **settings))
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client)
        yield client


def titles(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [hit["title"] for hit in response.json()["results"]]


def metric(client: TestClient, name: str, **labels: str) -> float:
    """One sample of /metrics (0 when the series does not exist yet)."""
    text = client.get("/metrics").text
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        found = dict(re.findall(r'(\w+)="([^"]*)"', series))
        if series.split("{")[0] == name and all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return 0.0


def in_parallel(calls: list[Callable[[], httpx.Response]]) -> list[httpx.Response]:
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


@pytest.fixture(scope="module")
def client(demo_bundle: Path) -> Iterator[TestClient]:
    with serve(demo_bundle) as client:
        yield client


# --- client-side batches ------------------------------------------------------------------


def test_a_list_of_queries_gets_the_same_answers_as_one_by_one(client: TestClient) -> None:
    queries = ["cordless drill", "white paint 1 gal", "garden hose 50 ft"]
    response = client.post("/search", json={"queries": queries, "k": 4})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"responses", "model", "version", "took_ms"}
    assert [entry["query"] for entry in body["responses"]] == queries
    for query, entry in zip(queries, body["responses"], strict=True):
        alone = client.post("/search", json={"query": query, "k": 4}).json()["results"]
        assert [hit["id"] for hit in entry["results"]] == [hit["id"] for hit in alone]
        for batched, single in zip(entry["results"], alone, strict=True):
            assert batched["score"] == pytest.approx(single["score"], abs=1e-5)


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        ({"queries": []}, "queries", "1 to 256 strings"),
        ({"queries": ["q"] * 257}, "queries", "at most 256 items"),
        ({"queries": ["ok", "   "]}, "queries.1", "must not be empty"),
        ({"queries": ["ok", "a\x00b"]}, "queries.1", "U+0000"),
        ({"queries": ["ok", 7]}, "queries.1", "valid string"),
        ({"queries": "drill"}, "queries", "valid list"),
        ({"queries": [["nested"]]}, "queries.0", "valid string"),
        ({"queries": ["x" * 513]}, "queries.0", "at most 512 characters"),
        ({"query": "drill", "queries": ["saw"]}, "query", "not both"),
        ({"k": 3}, "query", "unless queries is given"),
    ],
)
def test_bad_query_lists_are_422_naming_the_element(
    client: TestClient, body: dict[str, Any], field: str, fragment: str
) -> None:
    response = client.post("/search", json=body)
    assert response.status_code == 422, response.text
    messages = [detail["msg"] for detail in response.json()["detail"]]
    assert any(msg.startswith(f"{field}: ") and fragment in msg for msg in messages), messages


def test_token_limit_is_422_naming_the_query_and_the_limit(demo_bundle: Path) -> None:
    with serve(demo_bundle, max_query_tokens=4) as client:
        assert client.post("/search", json={"query": "red drill saw kit"}).status_code == 200
        response = client.post("/search", json={"query": "red drill saw kit blue"})
        assert response.status_code == 422
        (detail,) = response.json()["detail"]
        assert detail["loc"] == ["body", "query"]
        assert detail["type"] == "query_too_many_tokens"
        assert detail["msg"] == "query: must be at most 4 tokens (has 5)"
        response = client.post("/search", json={"queries": ["drill", "a b c d e f"]})
        assert response.status_code == 422
        assert response.json()["detail"][0]["msg"].startswith("queries.1: must be at most 4")


# --- micro-batching, overload and deadlines -------------------------------------------------


def test_concurrent_requests_share_model_calls_and_keep_their_answers(
    demo_bundle: Path,
) -> None:
    queries = [f"{word} drill" for word in ("red", "blue", "cordless", "hammer")] * 6
    with serve(demo_bundle, max_wait_ms=50) as client:
        alone = {q: titles(client.post("/search", json={"query": q, "k": 5})) for q in queries}
        calls_before = metric(client, "xc_batch_queries_count")
        responses = in_parallel(
            [lambda q=q: client.post("/search", json={"query": q, "k": 5}) for q in queries]
        )
        calls = metric(client, "xc_batch_queries_count") - calls_before
    assert [titles(r) for r in responses] == [alone[q] for q in queries]
    assert calls < len(queries) / 2, f"{len(queries)} requests took {calls} model calls"


def test_overload_is_answered_429_with_retry_after(demo_bundle: Path) -> None:
    # A batch waits 300 ms to fill, so the first 4 queries fill the queue and the rest bounce.
    with serve(demo_bundle, max_queue=4, max_batch_queries=4, max_wait_ms=300) as client:
        responses = in_parallel(
            [lambda: client.post("/search", json={"query": "paint"}) for _ in range(16)]
        )
        statuses = sorted(r.status_code for r in responses)
        assert set(statuses) == {200, 429}, statuses
        assert statuses.count(200) >= 4
        refused = next(r for r in responses if r.status_code == 429)
        assert int(refused.headers["Retry-After"]) >= 1
        (detail,) = refused.json()["detail"]
        assert detail["type"] == "overloaded" and "limit 4" in detail["msg"]
        assert metric(client, "xc_rejected_total", reason="queue_full") == statuses.count(429)
        assert metric(client, "xc_requests_total", route="/search", status="429") == (
            statuses.count(429)
        )
        # The server is fine afterwards.
        assert client.post("/search", json={"query": "paint"}).status_code == 200


def test_a_query_queued_past_the_deadline_is_dropped_before_inference(demo_bundle: Path) -> None:
    with serve(demo_bundle, request_timeout_ms=20, max_wait_ms=200) as client:
        calls_before = metric(client, "xc_batch_queries_count")
        response = client.post("/search", json={"query": "paint"})
        assert response.status_code == 429
        assert response.json()["detail"][0]["type"] == "deadline"
        assert "Retry-After" in response.headers
        assert metric(client, "xc_dropped_total", reason="deadline") == 1
        assert metric(client, "xc_batch_queries_count") == calls_before


# --- observability ----------------------------------------------------------------------------


def test_metrics_expose_stages_batches_queue_statuses_and_version(
    client: TestClient, demo_bundle: Path
) -> None:
    version = read_manifest(demo_bundle).version
    client.post("/search", json={"query": "drill"})
    client.post("/search", json={"query": ""})
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    for stage in ("queue", "tokenize", "encode", "retrieve", "total"):
        assert metric(client, "xc_stage_seconds_count", stage=stage, version=version) >= 1
        assert metric(client, "xc_stage_seconds_sum", stage=stage, version=version) >= 0
    total = metric(client, "xc_stage_seconds_sum", stage="total", version=version)
    encode = metric(client, "xc_stage_seconds_sum", stage="encode", version=version)
    assert total > encode > 0
    assert metric(client, "xc_batch_queries_count") >= 1
    assert "xc_queue_depth 0.0" in response.text
    assert metric(client, "xc_requests_total", route="/search", status="200") >= 1
    assert metric(client, "xc_requests_total", route="/search", status="422") >= 1
    assert metric(client, "xc_model_info", bundle="demo", version=version) == 1


def test_models_describe_the_loaded_bundle(client: TestClient, demo_bundle: Path) -> None:
    manifest = read_manifest(demo_bundle)
    response = client.get("/v1/models")
    assert response.status_code == 200
    (info,) = response.json()["data"]
    assert info["name"] == manifest.name and info["version"] == manifest.version
    assert info["path"] == demo_bundle.name  # under the models root; no server path shown
    assert info["models"] == manifest.models and info["default_model"] == manifest.default_model
    assert info["labels"] == manifest.labels.count
    assert info["encoder"]["dim"] == manifest.encoder.dim == 384
    assert info["encoder"]["max_length"] == manifest.encoder.max_length
    assert manifest.astra is not None
    assert info["index"]["type"] == manifest.astra.index.type
    assert info["mach"] is None
    # auto puts each part where this machine can run it (the CPU, without a GPU), and says so.
    assert info["devices"] == plan_devices("auto", probe_capabilities()).describe()
    assert info["encoder"]["providers"][0] == info["devices"]["encoder"]


# --- hot reload ------------------------------------------------------------------------------


def test_reload_swaps_versions_and_refuses_a_bad_bundle(
    demo_bundle: Path, demo_bundle_v2: Path, tmp_path: Path
) -> None:
    with serve(demo_bundle) as client:
        before = titles(client.post("/search", json={"query": "drill"}))
        response = client.post("/admin/reload", json={"bundle": demo_bundle_v2.name})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["previous"]["version"] != "v2" and body["current"]["version"] == "v2"
        after = client.post("/search", json={"query": "drill"})
        assert after.json()["version"] == "v2"
        assert titles(after) == [f"v2 {title}" for title in before]

        broken = demo_bundle.parent / f"broken-{tmp_path.name}"
        broken.mkdir()
        for path in demo_bundle_v2.iterdir():
            (broken / path.name).write_bytes(path.read_bytes())
        (broken / "classifiers.npy").write_bytes(b"not a matrix")
        response = client.post("/admin/reload", json={"bundle": broken.name})
        assert response.status_code == 422
        (detail,) = response.json()["detail"]
        assert detail["loc"] == ["body", "bundle"] and "classifiers.npy" in detail["msg"]
        assert client.get("/v1/models").json()["data"][0]["version"] == "v2"
        assert client.post("/search", json={"query": "drill"}).json()["version"] == "v2"
        assert metric(client, "xc_reloads_total", outcome="refused") == 1
        assert metric(client, "xc_model_info", version="v2") == 1

        # No body: reload the path being served.
        response = client.post("/admin/reload")
        assert response.status_code == 200
        assert response.json()["current"]["path"] == demo_bundle_v2.name


def link_bundle(source: Path, target: Path) -> Path:
    """A copy of a bundle: its manifest copied (tests edit it), its other files hard links (no
    90 MB copy; never written to)."""
    target.mkdir()
    for path in source.iterdir():
        if path.name == "manifest.json":
            shutil.copyfile(path, target / path.name)
        elif path.is_file():
            os.link(path, target / path.name)
    return target


def test_reload_loads_only_bundles_under_the_models_root(demo_bundle: Path, tmp_path: Path) -> None:
    root = demo_bundle.parent
    elsewhere = link_bundle(demo_bundle, tmp_path / "elsewhere")
    alias = root / f"alias-{tmp_path.name}"
    alias.symlink_to(elsewhere, target_is_directory=True)
    escaping = link_bundle(demo_bundle, root / f"escaping-{tmp_path.name}")
    manifest = json.loads((escaping / "manifest.json").read_text())
    outside = os.path.relpath(elsewhere / "labels.txt", escaping)  # resolves outside the root
    manifest["files"][outside] = manifest["files"]["labels.txt"]
    (escaping / "manifest.json").write_text(json.dumps(manifest))
    refused = [str(elsewhere), str(demo_bundle), f"../{root.name}/{demo_bundle.name}", alias.name]
    refused += [f"{demo_bundle.name}/../{demo_bundle.name}", "no-such-bundle", ".", escaping.name]
    with serve(demo_bundle) as client:
        version = client.get("/v1/models").json()["data"][0]["version"]
        for name in refused:
            response = client.post("/admin/reload", json={"bundle": name})
            assert response.status_code == 422, (name, response.text)
            (detail,) = response.json()["detail"]
            assert detail["loc"] == ["body", "bundle"]
            assert detail["msg"] == (
                f"bundle: {name!r} is not a bundle under the models root; name one by its path "
                "under XC_MODELS_ROOT (no absolute path, no '..')"
            ), name  # one message, whatever the reason: it tells nothing of the server's files
        assert client.get("/v1/models").json()["data"][0]["version"] == version


def test_a_manifest_naming_a_file_outside_its_bundle_is_refused(
    demo_bundle: Path, tmp_path: Path
) -> None:
    bundle = link_bundle(demo_bundle, demo_bundle.parent / f"named-{tmp_path.name}")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["../outside.bin"] = manifest["files"]["labels.txt"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with serve(demo_bundle) as client:
        response = client.post("/admin/reload", json={"bundle": bundle.name})
        assert response.status_code == 422
        msg = response.json()["detail"][0]["msg"]
        assert "'../outside.bin' is not a plain file name" in msg, msg
        assert f"{bundle.name}/manifest.json" in msg and str(demo_bundle.parent) not in msg


def test_a_second_reload_while_one_runs_is_409(demo_bundle: Path, demo_bundle_v2: Path) -> None:
    with serve(demo_bundle) as client:
        responses = in_parallel(
            [
                lambda: client.post("/admin/reload", json={"bundle": demo_bundle_v2.name}),
                lambda: (time.sleep(0.05), client.post("/admin/reload"))[1],
            ]
        )
        assert [r.status_code for r in responses] == [200, 409], [r.text for r in responses]
        assert responses[1].json()["detail"][0]["type"] == "reload_in_progress"


def test_reload_under_load_fails_nothing_and_never_mixes_versions(
    demo_bundle: Path, demo_bundle_v2: Path
) -> None:
    queries = ["cordless drill", "white paint", "led bulb", "garden hose"]
    with serve(demo_bundle) as client:
        expected: dict[str, dict[str, list[str]]] = {}
        for path in (demo_bundle_v2, demo_bundle):
            assert client.post("/admin/reload", json={"bundle": path.name}).status_code == 200
            version = client.get("/v1/models").json()["data"][0]["version"]
            expected[version] = {
                q: titles(client.post("/search", json={"query": q})) for q in queries
            }
        stop = threading.Event()
        seen: list[tuple[str, httpx.Response]] = []

        def shop() -> None:
            while not stop.is_set():
                for query in queries:
                    seen.append((query, client.post("/search", json={"query": query})))

        shoppers = [threading.Thread(target=shop) for _ in range(4)]
        for thread in shoppers:
            thread.start()
        for path in (demo_bundle_v2, demo_bundle, demo_bundle_v2):
            assert client.post("/admin/reload", json={"bundle": path.name}).status_code == 200
        stop.set()
        for thread in shoppers:
            thread.join()
    assert len(seen) > 20
    versions = set()
    for query, response in seen:
        assert response.status_code == 200, response.text
        version = response.json()["version"]
        versions.add(version)
        assert titles(response) == expected[version][query]
    assert versions == set(expected)


# --- auth and exposure ----------------------------------------------------------------------


def test_api_key_guards_data_and_admin_routes_only(demo_bundle: Path) -> None:
    with serve(demo_bundle, api_key="s3cret-key") as client:
        good = {"Authorization": "Bearer s3cret-key"}
        for method, path, body in [
            ("POST", "/search", {"query": "drill"}),
            ("GET", "/v1/models", None),
            ("POST", "/admin/reload", None),
        ]:
            missing = client.request(method, path, json=body)
            assert missing.status_code == 401, path
            assert missing.headers["WWW-Authenticate"] == "Bearer"
            assert missing.json()["detail"][0]["loc"] == ["header", "authorization"]
            wrong = client.request(
                method, path, json=body, headers={"Authorization": "Bearer nope"}
            )
            assert wrong.status_code == 401
            assert wrong.json()["detail"][0]["type"] == "invalid_token"
            assert client.request(method, path, json=body, headers=good).status_code == 200
        for path in ("/healthz", "/readyz", "/metrics"):
            assert client.get(path).status_code == 200, path


ADMIN_CALLS: list[tuple[str, str, Any]] = [
    ("PUT", "/products", {"products": [{"id": "KEY-1", "title": "Keyed drill"}]}),
    ("POST", "/admin/reload", None),
    ("GET", "/batches", None),
]


def test_search_and_admin_keys_are_separate_scopes(demo_bundle: Path, tmp_path: Path) -> None:
    search, admin = {"Authorization": "Bearer s-key"}, {"Authorization": "Bearer a-key"}
    keys = {"search_key": "s-key", "admin_key": "a-key", "data_dir": tmp_path / "data"}
    with serve(demo_bundle, **keys) as client:  # its own data dir: the PUT below is real
        for headers, status in [({}, 401), (search, 200), (admin, 200)]:
            response = client.post("/search", json={"query": "drill"}, headers=headers)
            assert response.status_code == status, response.text
            assert client.get("/v1/models", headers=headers).status_code == status
        for method, path, body in ADMIN_CALLS:
            denied = client.request(method, path, json=body, headers=search)
            assert denied.status_code == 401, (path, denied.text)  # a search key opens no admin
            assert denied.json()["detail"][0]["type"] == "invalid_token"
            allowed = client.request(method, path, json=body, headers=admin)
            assert allowed.status_code == 200, (path, allowed.text)


def test_beyond_loopback_without_an_admin_key_the_admin_routes_are_disabled(
    demo_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.INFO, logger="service.app"),
        serve(demo_bundle, host="0.0.0.0", data_dir=tmp_path / "data") as client,
    ):
        for method, path, body in ADMIN_CALLS:
            response = client.request(method, path, json=body)
            assert response.status_code == 403, (path, response.text)
            (detail,) = response.json()["detail"]
            assert detail["type"] == "admin_disabled" and "set XC_ADMIN_KEY" in detail["msg"]
        assert client.post("/search", json={"query": "drill"}).status_code == 200
    [warning] = [r for r in caplog.records if "admin routes" in r.getMessage()]
    assert warning.levelname == "WARNING"
    assert "disabled: the server listens on 0.0.0.0, beyond loopback" in warning.getMessage()
    with serve(demo_bundle, host="0.0.0.0", admin_key="a-key") as keyed:
        reload = keyed.post("/admin/reload", headers={"Authorization": "Bearer a-key"})
        assert reload.status_code == 200
        assert keyed.post("/admin/reload").status_code == 401


def test_a_stalled_model_call_times_out_and_readyz_says_not_ready(
    demo_bundle: Path, tmp_path: Path
) -> None:
    release = threading.Event()
    settings = {"answer_timeout_s": 1.0, "batch_workers": 1, "data_dir": tmp_path / "data"}
    with serve(demo_bundle, **settings) as client:
        engine = client.app.state.shared.registry.engine
        rank = engine.rank_encoded

        def hung(*args: Any, **kwargs: Any) -> Any:  # a model call that does not come back
            release.wait(60)
            return rank(*args, **kwargs)

        engine.rank_encoded = hung
        start = time.monotonic()
        response = client.post("/search", json={"query": "drill"})
        assert 1.0 <= time.monotonic() - start < 10
        assert response.status_code == 503, response.text
        (detail,) = response.json()["detail"]
        assert detail["type"] == "stalled" and "did not answer within 1 s" in detail["msg"]
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["detail"][0]["type"] == "stalled"
        release.set()
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.post("/search", json={"query": "drill"}).status_code == 200


def test_cors_is_off_unless_origins_are_configured(demo_bundle: Path, client: TestClient) -> None:
    preflight = {
        "Origin": "https://shop.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    response = client.options("/search", headers=preflight)
    assert "access-control-allow-origin" not in response.headers
    with serve(demo_bundle, cors_origins=["https://shop.example"]) as allowed:
        response = allowed.options("/search", headers=preflight)
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "https://shop.example"
        other = allowed.options("/search", headers={**preflight, "Origin": "https://evil.test"})
        assert "access-control-allow-origin" not in other.headers
        answer = allowed.post(
            "/search", json={"query": "drill"}, headers={"Origin": "https://shop.example"}
        )
        assert answer.headers["access-control-allow-origin"] == "https://shop.example"
        assert "X-Request-Id" in answer.headers["access-control-expose-headers"]
