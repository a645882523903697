"""Tests for bench.peers_serving and its peer apps: the parts that can go wrong without a run.

The two peer apps answer the right ids for a tiny catalog, through FastAPI's TestClient: the
tantivy app where tantivy is installed, and the afternoon app with the real all-MiniLM-L6-v2 of
the PyPI package (marked slow for loading it). The load generator's phases count and time
answers and errors on fake clients; Infinity's client-side search turns an /embeddings answer
into FAISS rows; the ratios and the BENCHMARKS.md renderer read a small fake record. No server
is started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.peer_apps import read_catalog, write_catalog
from bench.peers_serving import (
    SearchClock,
    Settings,
    Shared,
    SkipSystem,
    _rows_of,
    answer_all,
    closed_loop,
    error_totals,
    faiss_search_after,
    ranked_rows,
    ratios,
    run_system,
    sequential,
    started,
)
from bench.report import SECTIONS, render_peers_serving
from training.evaluate import EvalSet

IDS = ["d1", "h2", "b3", "r4"]
TITLES = [
    "Cordless Drill Driver Kit 20-Volt",
    "Garden Hose 50 ft. Heavy Duty",
    "LED Light Bulb 60-Watt Equivalent (4-Pack)",
    "Wall Mount Hose Reel",
]


def _search(client: Any, query: str, k: int = 10) -> list[str]:
    response = client.post("/search", json={"query": query, "k": k})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["ids"]) == len(body["scores"])
    assert body["scores"] == sorted(body["scores"], reverse=True)
    return body["ids"]


def test_catalog_round_trips_ids_and_titles_with_any_characters(tmp_path: Path) -> None:
    titles = [*TITLES[:3], 'Tab\there, "quotes", é and a\nnewline']
    path = write_catalog(tmp_path / "catalog.jsonl", IDS, titles)
    assert read_catalog(path) == (IDS, titles)
    with pytest.raises(ValueError, match="4 ids but 3 titles"):
        write_catalog(tmp_path / "bad.jsonl", IDS, TITLES[:3])


def test_tantivy_app_ranks_by_bm25_with_stemming_and_never_fails_on_query_syntax() -> None:
    pytest.importorskip("tantivy")
    from fastapi.testclient import TestClient

    from bench.peer_apps.tantivy_bm25 import create_app

    client = TestClient(create_app(IDS, TITLES))
    assert client.get("/healthz").json()["products"] == 4
    assert _search(client, "garden hoses")[0] == "h2"  # stemmed: hoses -> hose
    assert set(_search(client, "hose")) == {"h2", "r4"}
    assert len(_search(client, "hose", k=1)) == 1
    # "-", ":" and quotes are query syntax to tantivy; here they are only separators.
    assert _search(client, 'bulb - 60 "watt')[0] == "b3"
    assert _search(client, "title:drill AND (")[0] == "d1"
    assert _search(client, "?!-") == []
    assert _search(client, "zzqx") == []
    assert client.post("/search", json={"query": "", "k": 3}).status_code == 422


@pytest.mark.slow  # loads the real encoder (torch, sentence-transformers): about 5 s
def test_afternoon_app_ranks_titles_by_the_encoders_cosine() -> None:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("faiss")
    from fastapi.testclient import TestClient

    from bench.peer_apps.afternoon import create_app
    from bench.peers_serving import default_model_dir

    client = TestClient(create_app(IDS, TITLES, default_model_dir()))
    health = client.get("/healthz").json()
    assert (health["products"], health["dim"]) == (4, 384)
    assert _search(client, "power drill")[0] == "d1"
    assert _search(client, "light bulbs")[0] == "b3"
    assert _search(client, "watering the lawn", k=2)[0] == "h2"
    assert len(_search(client, "anything", k=10)) == 4  # k above the catalog: all of it


def _fake_posts(answer: Any) -> Any:
    """OpenPosts whose clients answer by calling `answer(body)` after a short sleep."""

    @contextlib.asynccontextmanager
    async def open_posts(count: int) -> AsyncIterator[list[Any]]:
        async def post(body: bytes) -> tuple[int, Any]:
            await asyncio.sleep(0.001)
            return answer(body)

        yield [post] * count

    return open_posts


def _flaky(body: bytes) -> tuple[int, Any]:
    if body == b"boom":
        raise ConnectionResetError("reset")
    if body == b"busy":
        return 429, b""
    return 200, body


def test_phases_time_count_and_classify_answers_on_fake_clients() -> None:
    bodies = [b"a", b"boom", b"busy", b"b"]
    answers = asyncio.run(answer_all(_fake_posts(_flaky), bodies, clients=3))
    assert answers == [(200, b"a"), ("ConnectionResetError", None), (429, b""), (200, b"b")]
    single = asyncio.run(sequential(_fake_posts(_flaky), bodies, requests=8, warmup=2))
    assert single["statuses"] == {"200": 4, "429": 2}
    assert single["errors"] == {"ConnectionResetError": 2}
    assert single["client_ms"]["count"] == 4 and single["client_ms"]["p50"] >= 1.0
    loop = asyncio.run(closed_loop(_fake_posts(_flaky), bodies, 4, duration_s=0.3, warmup_s=0.1))
    assert loop["concurrency"] == 4 and loop["requests"] > 20
    assert set(loop["statuses"]) == {"200", "429"} and "ConnectionResetError" in loop["errors"]
    assert loop["qps_200"] == pytest.approx(loop["latency_ms_200"]["count"] / 0.3, rel=1e-2)


def test_infinity_client_searches_faiss_with_the_embedding_it_got_back() -> None:
    faiss = pytest.importorskip("faiss")
    vectors = np.eye(4, dtype=np.float32)
    index = faiss.IndexFlatIP(4)
    index.add(vectors)
    clock = SearchClock()

    def embeddings(body: bytes) -> tuple[int, Any]:
        if body == b"down":
            return 503, b"{}"
        vector = [0.1, 0.2, 0.9, 0.3]
        return 200, json.dumps({"data": [{"embedding": vector, "index": 0}]}).encode()

    [post] = asyncio.run(_open_one(_fake_posts(embeddings)))
    wrapped = faiss_search_after(index, 3, clock)(post)
    assert asyncio.run(wrapped(b"q")) == (200, [2, 3, 1])
    assert asyncio.run(wrapped(b"down")) == (503, b"{}")
    taken = clock.take()
    assert taken["searches"] == 1 and taken["mean_ms"] is not None
    assert clock.take() == {"searches": 0, "mean_ms": None}


async def _open_one(open_posts: Any) -> list[Any]:
    async with open_posts(1) as posts:
        return posts


def test_answers_become_label_rows_padded_and_failed_answers_rank_nothing() -> None:
    id_index = {"d1": 0, "h2": 1, "b3": 2}
    ours = _rows_of("results", id_index)
    peer = _rows_of("ids", id_index)
    answers = [
        (200, json.dumps({"results": [{"id": "b3"}, {"id": "zz"}, {"id": "d1"}]}).encode()),
        ("TimeoutError", None),
        (429, b"{}"),
        (200, b"<html>not json</html>"),
    ]
    ranked, unreadable = ranked_rows(answers, ours, k=4)
    assert ranked.tolist() == [[2, -1, 0, -1], [-1] * 4, [-1] * 4, [-1] * 4]
    assert unreadable == 1
    assert peer(b'{"ids": ["h2"], "scores": [1.0]}') == [1]


def test_a_server_that_exits_is_skipped_with_its_stderr() -> None:
    cmd = [sys.executable, "-c", "import sys; print('no model here', file=sys.stderr); exit(3)"]
    with (
        pytest.raises(SkipSystem, match="exited with 3: no model here"),
        started(cmd, {}, 9, "/healthz", timeout_s=30),
    ):
        pass


def test_a_system_that_cannot_run_is_recorded_with_the_reason(tmp_path: Path) -> None:
    shared = Shared(
        queries=["q"],
        eval_set=EvalSet(
            texts=["q"], truth=[np.array([0])], gains=[np.ones(1)], inv_propensity=np.ones(1)
        ),
        label_ids=IDS,
        label_titles=TITLES,
        catalog=tmp_path / "catalog.jsonl",
    )
    settings = Settings(
        bundle=tmp_path / "no-bundle",
        model_dir=tmp_path,
        k=10,
        requests=1,
        warmup=0,
        concurrency=[1],
        duration_s=0.1,
        warmup_s=0.0,
        timeout_s=1.0,
        quality_concurrency=1,
        ready_timeout_s=1.0,
        ours_env={},
        infinity_bin=tmp_path / "bin" / "infinity_emb",
    )
    infinity = run_system("infinity", shared, settings)
    assert "infinity_emb not found" in infinity["skipped"]
    assert "load_average_after" in infinity and "quality" not in infinity
    assert "no bundle at" in run_system("ours", shared, settings)["skipped"]
    shared.vectors_error = "embedding the titles failed (exit 1)"
    afternoon = run_system("afternoon", shared, settings)
    assert afternoon["skipped"] == "no title vectors: embedding the titles failed (exit 1)"


def _system(label: str, ndcg: float, p50: float, qps: list[float], **extra: Any) -> dict:
    def phase(statuses: dict[str, int], errors: dict[str, int] | None = None) -> dict:
        return {"statuses": statuses, "errors": errors or {}}

    record = {
        "label": label,
        "command": f"run {label}",
        "env": {"A": "1"} if label == "ours" else {},
        "versions": {"lib": "1.0", "absent": None},
        "load_average_before": [0.5, 0.4, 0.3],
        "load_average_after": [1.5, 0.9, 0.4],
        "quality": {"nDCG@10": ndcg, "P@1": 0.3, "R@10": 0.5, "points": 10},
        "quality_pass": phase({"200": 10}),
        "sequential": {
            **phase({"200": 99, "500": 1}),
            "client_ms": {"p50": p50, "p99": 3 * p50},
        },
        "throughput": [
            {"concurrency": c, "qps_200": q, **phase({"200": 5}, {"TimeoutError": 2})}
            for c, q in zip((8, 32, 128), qps, strict=True)
        ],
        **extra,
    }
    record["errors"] = error_totals(record)
    return record


def _peers_record() -> dict[str, Any]:
    systems = {
        "ours": _system(
            "ours", 0.44, 2.0, [500, 600, 700], served={"encoder": {"precision": "int8"}}
        ),
        "infinity": _system(
            "infinity",
            0.30,
            10.0,
            [100, 150, 160],
            parity_with_sentence_transformers={
                "titles": 64,
                "min_cosine": 0.9999991,
                "mean_cosine": 1.0,
            },
        ),
        "afternoon": {
            "label": "afternoon",
            "skipped": "exited with 1: bad | thing\nsecond line",
            "load_average_before": [1.0],
            "load_average_after": [1.1],
        },
    }
    systems["infinity"]["throughput"][1]["client_search"] = {"searches": 9, "mean_ms": 1.234}
    return {
        "command": "python -m bench.peers_serving --duration 15",
        "date": "2026-12-06T18:00:00+00:00",
        "seconds": 612.3,
        "machine": {"platform": "Linux", "cpu_count": 2, "python": "3.11.7", "load_average": [0.2]},
        "load_average_at_end": [1.7],
        "settings": {
            "products": 54667,
            "queries": 1121,
            "split": "dev",
            "requests": 2000,
            "warmup": 50,
            "duration_s": 15.0,
            "warmup_s": 2.0,
            "scored_points": 1121,
            "k": 10,
            "concurrency": [8, 32, 128],
        },
        "systems": systems,
        "ratios": ratios(systems),
    }


def test_ratios_are_ours_over_each_measured_peer_at_32_clients() -> None:
    record = _peers_record()
    assert record["ratios"] == {
        "infinity": {
            "clients": 32,
            "qps": 4.0,
            "single_p50": 0.2,
            "single_p99": 0.2,
            "ndcg10_difference": 0.14,
        }
    }
    assert record["systems"]["ours"]["errors"] == {
        "non_200": {"500": 1},
        "transport": {"TimeoutError": 6},
        "total": 7,
    }


def test_peer_table_has_a_row_per_system_ratios_skip_reasons_and_provenance() -> None:
    text = render_peers_serving(_peers_record())
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert "q/s at 8 / 32 / 128 clients" in rows[0] and "ours ÷ peer, q/s at 32" in rows[0]
    assert rows[1].startswith("| **ours** | 0.4400 | 2.0 / 6.0 | 500 / 600 / 700 | 7 | - | - |")
    assert rows[2] == "| infinity | 0.3000 | 10.0 / 30.0 | 100 / 150 / 160 | 7 | 4.00× | 0.20× |"
    assert "skipped: exited with 1: bad \\| thing second line" in rows[3]
    assert "`A=1`" in text and "lib 1.0" in text and "absent" not in text
    assert "cosine ≥ 0.999999" in text and "FAISS search took 1.23–1.23 ms" in text
    assert "load average 0.5 before, 1.5 after" in text and "encoder served: int8" in text
    assert "`python -m bench.peers_serving --duration 15`" in text and "1,121" in text
    assert SECTIONS["peers_serving"] == ("peers_serving.json", render_peers_serving)
