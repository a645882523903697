"""The committed `openapi.yaml` is the API contract: it must match what the app generates."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from service.openapi import DEFAULT_PATH, main, render


def test_openapi_yaml_is_in_sync_with_the_app() -> None:
    assert DEFAULT_PATH.is_file(), "openapi.yaml missing: run `python -m service.openapi`"
    assert DEFAULT_PATH.read_text(encoding="utf-8") == render(), (
        "openapi.yaml is out of date: run `python -m service.openapi` and commit it"
    )


def test_render_is_stable_and_independent_of_env(monkeypatch: pytest.MonkeyPatch) -> None:
    first = render()
    monkeypatch.setenv("XC_MAX_K", "7")
    monkeypatch.setenv("XC_BUNDLE", "/elsewhere")
    assert render() == first


def test_contract_documents_routes_limits_and_error_shape() -> None:
    spec = yaml.safe_load(render())
    assert spec["info"]["title"] and spec["info"]["version"]
    assert set(spec["paths"]) == {
        "/search",
        "/v1/models",
        "/admin/reload",
        "/healthz",
        "/readyz",
        "/metrics",
        "/batches",
        "/batches/{batch_id}",
        "/batches/{batch_id}/cancel",
        "/batches/{batch_id}/output",
        "/batches/{batch_id}/errors",
        "/products",
        "/products/{product_id}",
    }
    create = spec["paths"]["/batches"]["post"]["requestBody"]["content"]
    assert set(create) == {"application/json", "multipart/form-data"}
    search = spec["paths"]["/search"]["post"]
    for code in ("400", "401", "404", "413", "422", "429", "500", "503"):
        ref = search["responses"][code]["content"]["application/json"]["schema"]["$ref"]
        assert ref == "#/components/schemas/ErrorResponse"
    assert "Retry-After" in search["responses"]["429"]["headers"]
    answers = search["responses"]["200"]["content"]["application/json"]["schema"]["anyOf"]
    assert {a["$ref"].rsplit("/", 1)[1] for a in answers} == {
        "SearchResponse",
        "BatchSearchResponse",
    }
    request = spec["components"]["schemas"]["SearchRequest"]
    assert request["additionalProperties"] is False
    assert request["properties"]["k"]["maximum"] == 1000
    assert request["properties"]["query"]["maxLength"] == 512
    assert request["properties"]["queries"]["maxItems"] == 256
    assert "default" not in request["properties"]["query"]
    # Two scopes (issue 18): a search key and an admin key, each optional.
    for scheme in ("SearchKey", "AdminKey"):
        assert spec["components"]["securitySchemes"][scheme]["scheme"] == "bearer"
    for path, method, scheme in [
        ("/search", "post", "SearchKey"),
        ("/v1/models", "get", "SearchKey"),
        ("/admin/reload", "post", "AdminKey"),
        ("/products", "put", "AdminKey"),
        ("/products/{product_id}", "delete", "AdminKey"),
        ("/batches", "post", "AdminKey"),
    ]:
        assert spec["paths"][path][method]["security"] == [{scheme: []}, {}], path
    products = spec["components"]["schemas"]["ProductsUpsert"]["properties"]["products"]
    assert products["maxItems"] == 1000
    for path in ("/healthz", "/readyz", "/metrics"):
        assert "security" not in spec["paths"][path]["get"], path
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def test_check_fails_when_out_of_date(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "openapi.yaml"
    assert main(["--check", "--path", str(path)]) == 1  # missing
    assert main(["--path", str(path)]) == 0
    assert main(["--check", "--path", str(path)]) == 0
    path.write_text(path.read_text(encoding="utf-8").replace("XC product search", "Old title"))
    assert main(["--check", "--path", str(path)]) == 1
    assert "out of date" in capsys.readouterr().err
