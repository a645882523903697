"""Offline batch scoring: input checks, answers in input order, and exactly-once resumption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from service.batch.__main__ import EXIT_BAD_INPUT, EXIT_FAILED, main
from service.batch.requests import BatchInputError, parse_requests
from service.batch.scoring import ResumeMismatch, score_to_file
from service.search.engine import SearchEngine
from tests.support.paths import REPO
from training.data import load_dataset


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def queries(demo_data: Path) -> list[str]:
    return load_dataset(demo_data).split("dev").texts


@pytest.fixture(scope="module")
def engine(demo_bundle: Path) -> SearchEngine:
    return SearchEngine.load(demo_bundle)


def test_valid_lines_are_parsed_and_blank_lines_skipped() -> None:
    lines = [
        '{"custom_id": "a", "query": "  drill  "}',
        "   ",
        '{"custom_id": "b", "query": "saw", "k": 3, "model": "astra"}',
    ]
    first, second = parse_requests(lines, default_k=7)
    assert (first.line, first.custom_id, first.query, first.k, first.model) == (
        1,
        "a",
        "drill",
        7,
        None,
    )
    assert (second.line, second.k, second.model) == (3, 3, "astra")


def test_bad_lines_refuse_the_file_naming_each_line() -> None:
    lines = [
        '{"custom_id": "a", "query": "drill"}',
        '{"custom_id": "a", "query": "saw"}',
        "not json",
        '{"query": "no id"}',
        '{"custom_id": "c", "query": "x", "k": 0}',
        '{"custom_id": "d", "query": "x\\u0007y"}',
        '{"custom_id": "e", "query": "x", "colour": "red"}',
    ]
    with pytest.raises(BatchInputError) as refused:
        parse_requests(lines)
    problems = refused.value.problems
    assert refused.value.bad_lines == 6
    assert any(p.startswith("line 2: custom_id: 'a' repeats line 1") for p in problems)
    assert any(p.startswith("line 3: not valid JSON") for p in problems)
    assert any(p.startswith("line 4: custom_id: is required") for p in problems)
    assert any(p.startswith("line 5: k: must be >= 1") for p in problems)
    assert any(p.startswith("line 6: query:") and "U+0007" in p for p in problems)
    assert any(p.startswith("line 7: colour: is not a known field") for p in problems)
    assert "6 bad line(s)" in str(refused.value)


def test_every_request_is_answered_in_input_order(
    engine: SearchEngine, queries: list[str], tmp_path: Path
) -> None:
    records = [{"custom_id": f"q{i}", "query": q, "k": 1 + i % 5} for i, q in enumerate(queries)]
    records += [
        {"custom_id": "wrong-model", "query": "drill", "model": "mach"},
        {"custom_id": "too-long", "query": " ".join(["a"] * 130)},  # 130 tokens, 259 chars
    ]
    requests = parse_requests(json.dumps(r) for r in records)
    output = tmp_path / "out.jsonl"
    counts = score_to_file(engine, requests, output, chunk_size=7, progress=False)
    answers = read_jsonl(output)
    assert [a["custom_id"] for a in answers] == [r["custom_id"] for r in records]
    assert (counts.total, counts.completed, counts.failed) == (len(records), len(queries), 2)
    for record, answer in zip(records[: len(queries)], answers[: len(queries)], strict=True):
        assert answer["error"] is None
        assert answer["response"]["version"] == engine.manifest.version
        online = engine.search([record["query"]], record["k"])[0]
        assert [hit["id"] for hit in answer["response"]["results"]] == [h.id for h in online]
    assert answers[-2]["error"]["type"] == "model_not_found"
    assert answers[-1]["error"]["type"] == "query_too_many_tokens"
    assert answers[-1]["response"] is None


def test_a_torn_output_resumes_with_each_id_once(
    engine: SearchEngine, queries: list[str], tmp_path: Path
) -> None:
    records = [{"custom_id": f"q{i}", "query": q} for i, q in enumerate(queries)]
    requests = parse_requests(json.dumps(r) for r in records)
    whole = tmp_path / "whole.jsonl"
    score_to_file(engine, requests, whole, chunk_size=10, progress=False)
    lines = whole.read_bytes().splitlines(keepends=True)
    resumed = tmp_path / "resumed.jsonl"
    resumed.write_bytes(b"".join(lines[:13]) + lines[13][:25])  # a crash mid-line
    counts = score_to_file(engine, requests, resumed, chunk_size=10, progress=False)
    assert counts.completed == len(records)
    again, expected = read_jsonl(resumed), read_jsonl(whole)
    assert [a["custom_id"] for a in again] == [r["custom_id"] for r in records]
    for got, want in zip(again, expected, strict=True):
        assert [h["id"] for h in got["response"]["results"]] == [
            h["id"] for h in want["response"]["results"]
        ]


def test_an_output_of_another_input_is_refused(
    engine: SearchEngine, queries: list[str], tmp_path: Path
) -> None:
    output = tmp_path / "out.jsonl"
    first = parse_requests(
        json.dumps({"custom_id": f"a{i}", "query": q}) for i, q in enumerate(queries[:5])
    )
    score_to_file(engine, first, output, progress=False)
    other = parse_requests(
        json.dumps({"custom_id": f"b{i}", "query": q}) for i, q in enumerate(queries[:5])
    )
    with pytest.raises(ResumeMismatch, match="belongs to another input"):
        score_to_file(engine, other, output, progress=False)


def test_cli_exit_codes(
    demo_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"custom_id": "a"}])
    out = tmp_path / "out.jsonl"
    assert main(["--bundle", str(demo_bundle), "--input", str(bad), "--output", str(out)]) == (
        EXIT_BAD_INPUT
    )
    assert "line 1: query: is required" in capsys.readouterr().err
    good = write_jsonl(tmp_path / "good.jsonl", [{"custom_id": "a", "query": "drill"}])
    missing = tmp_path / "nowhere"
    assert main(["--bundle", str(missing), "--input", str(good), "--output", str(out)]) == (
        EXIT_FAILED
    )
    assert not out.exists()


def test_cli_settles_the_heap_once_the_engine_is_loaded(
    demo_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI keeps its engine for the whole file: what loading freed goes back first."""
    loaded_when_settled: list[bool] = []
    load = SearchEngine.load

    def recording_load(*args: Any, **kwargs: Any) -> SearchEngine:
        engine = load(*args, **kwargs)
        loaded_when_settled.append(False)
        return engine

    monkeypatch.setattr(SearchEngine, "load", recording_load)
    monkeypatch.setattr(
        "service.batch.__main__.settle_heap", lambda: loaded_when_settled.append(True)
    )
    good = write_jsonl(tmp_path / "good.jsonl", [{"custom_id": "a", "query": "drill"}])
    out = tmp_path / "out.jsonl"
    assert main(["--bundle", str(demo_bundle), "--input", str(good), "--output", str(out)]) == 0
    assert loaded_when_settled == [False, True]


@pytest.mark.slow
def test_cli_killed_mid_run_resumes_to_the_same_output(
    demo_bundle: Path, queries: list[str], tmp_path: Path
) -> None:
    records = [{"custom_id": f"q{i}", "query": queries[i % len(queries)]} for i in range(3000)]
    source = write_jsonl(tmp_path / "in.jsonl", records)
    command = [sys.executable, "-m", "service.batch", "--bundle", str(demo_bundle)]
    command += ["--input", str(source), "--chunk-size", "25", "--no-progress"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("XC_")}

    whole = tmp_path / "whole.jsonl"
    subprocess.run([*command, "--output", str(whole)], cwd=REPO, env=env, check=True)

    killed = tmp_path / "killed.jsonl"
    process = subprocess.Popen([*command, "--output", str(killed)], cwd=REPO, env=env)
    deadline = time.monotonic() + 120
    while not (killed.exists() and killed.stat().st_size > 20_000):
        assert process.poll() is None, "finished before it could be killed"
        assert time.monotonic() < deadline, "no output appeared"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    lines_at_kill = len(killed.read_bytes().splitlines())
    assert 0 < lines_at_kill < len(records)

    subprocess.run([*command, "--output", str(killed)], cwd=REPO, env=env, check=True)
    resumed, expected = read_jsonl(killed), read_jsonl(whole)
    ids = [answer["custom_id"] for answer in resumed]
    assert ids == [record["custom_id"] for record in records]  # each exactly once, in order
    for got, want in zip(resumed, expected, strict=True):
        assert [h["id"] for h in got["response"]["results"]] == [
            h["id"] for h in want["response"]["results"]
        ]


@pytest.mark.slow
def test_throughput_bench_checks_and_records_each_path(
    demo_bundle: Path, demo_data: Path, tmp_path: Path
) -> None:
    from bench.batch import main as bench_main

    args = ["--bundle", str(demo_bundle), "--data", str(demo_data), "--requests", "300"]
    assert bench_main([*args, "--paths", "cli,worker", "--out-dir", str(tmp_path)]) == 0
    result = json.loads((tmp_path / f"batch_{demo_bundle.name}.json").read_text())
    assert result["requests"] == 300
    for path in ("cli", "worker"):
        assert result["paths"][path]["queries_per_s"] > 0
