"""Batch scoring on Ray: the local engine's answers, in input order, exactly once on resumption.

One local Ray instance (2 CPUs) serves the whole module; `score_with_ray` uses it as it is.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.batch.__main__ import EXIT_FAILED, main
from service.batch.ray_scoring import block_path, parts_dir, score_with_ray
from service.batch.requests import BatchRequest, parse_requests
from service.batch.scoring import ResumeMismatch, score_to_file
from service.search.engine import SearchEngine
from training.data import load_dataset

pytestmark = pytest.mark.slow

REQUESTS = 500
BLOCK = 64


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def result_ids(answer: dict[str, Any]) -> list[str] | None:
    return None if answer["response"] is None else [h["id"] for h in answer["response"]["results"]]


def assert_same_answers(got: Path, want: Path) -> None:
    """Same custom_ids in the same order, same results (or the same error) on every line."""
    ours, theirs = read_jsonl(got), read_jsonl(want)
    assert [a["custom_id"] for a in ours] == [a["custom_id"] for a in theirs]
    for a, b in zip(ours, theirs, strict=True):
        assert result_ids(a) == result_ids(b), a["custom_id"]
        assert a["error"] == b["error"], a["custom_id"]


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    """One local Ray instance for the module."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def records(demo_data: Path) -> list[dict[str, Any]]:
    """~500 input lines: dev queries with varied k, plus a wrong model and a too-long query."""
    queries = load_dataset(demo_data).split("dev").texts
    lines = [
        {"custom_id": f"q{i}", "query": queries[i % len(queries)], "k": 1 + i % 7}
        for i in range(REQUESTS - 2)
    ]
    lines.insert(100, {"custom_id": "wrong-model", "query": "drill", "model": "mach"})
    lines.insert(300, {"custom_id": "too-long", "query": " ".join(["a"] * 130)})
    return lines


@pytest.fixture(scope="module")
def requests(records: list[dict[str, Any]]) -> list[BatchRequest]:
    return parse_requests(json.dumps(r) for r in records)


@pytest.fixture(scope="module")
def local_output(
    demo_bundle: Path, requests: list[BatchRequest], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """What the local engine answers."""
    output = tmp_path_factory.mktemp("local") / "local.jsonl"
    score_to_file(SearchEngine.load(demo_bundle), requests, output, progress=False)
    return output


def run_ray(bundle: Path, requests: list[BatchRequest], output: Path, **options: Any) -> Any:
    options = {"block_size": BLOCK, "workers": 2, "progress": False, **options}
    return score_with_ray(bundle, requests, output, **options)


def test_ray_answers_like_the_local_engine(
    demo_bundle: Path, requests: list[BatchRequest], local_output: Path, tmp_path: Path
) -> None:
    output = tmp_path / "ray.jsonl"
    counts = run_ray(demo_bundle, requests, output, chunk_size=20)
    assert (counts.total, counts.completed, counts.failed) == (REQUESTS, REQUESTS - 2, 2)
    assert_same_answers(output, local_output)
    assert not parts_dir(output).exists()
    answers = {a["custom_id"]: a for a in read_jsonl(output)}
    assert answers["wrong-model"]["error"]["type"] == "model_not_found"
    assert answers["too-long"]["error"]["type"] == "query_too_many_tokens"


def test_an_interrupted_run_resumes_with_each_id_once(
    demo_bundle: Path, requests: list[BatchRequest], local_output: Path, tmp_path: Path
) -> None:
    # An interrupted run: some blocks written (in any order), a temporary file left behind.
    output = tmp_path / "ray.jsonl"
    parts = parts_dir(output)
    parts.mkdir()
    lines = local_output.read_bytes().splitlines(keepends=True)
    kept = [0, 3, 4, (REQUESTS - 1) // BLOCK]
    for index in kept:
        block = lines[index * BLOCK : (index + 1) * BLOCK]
        if index == 3:  # a mark that shows this block was kept, not scored again
            first = json.loads(block[0])
            first["response"]["results"][0]["title"] = "kept from before"
            block[0] = json.dumps(first).encode() + b"\n"
        block_path(parts, index).write_bytes(b"".join(block))
    (parts / ".block-000001.jsonl.tmp").write_bytes(lines[BLOCK][:30])

    counts = run_ray(demo_bundle, requests, output)
    assert (counts.completed, counts.failed) == (REQUESTS - 2, 2)
    assert_same_answers(output, local_output)
    marked = read_jsonl(output)[3 * BLOCK]
    assert marked["response"]["results"][0]["title"] == "kept from before"
    assert not parts.exists()

    # Resuming after the merge: the output is checked and kept.
    before = output.read_bytes()
    again = run_ray(demo_bundle, requests, output)
    assert (again.completed, again.failed) == (REQUESTS - 2, 2)
    assert output.read_bytes() == before


def test_a_part_written_local_output_is_kept_as_a_prefix(
    demo_bundle: Path, requests: list[BatchRequest], local_output: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out.jsonl"
    lines = local_output.read_bytes().splitlines(keepends=True)
    output.write_bytes(b"".join(lines[:150]) + lines[150][:20])  # a crash mid-line
    counts = run_ray(demo_bundle, requests, output)
    assert (counts.completed, counts.failed) == (REQUESTS - 2, 2)
    assert_same_answers(output, local_output)


def test_blocks_of_another_input_or_block_size_are_refused(
    demo_bundle: Path, requests: list[BatchRequest], local_output: Path, tmp_path: Path
) -> None:
    output = tmp_path / "ray.jsonl"
    parts = parts_dir(output)
    parts.mkdir()
    lines = local_output.read_bytes().splitlines(keepends=True)
    block_path(parts, 1).write_bytes(b"".join(lines[BLOCK + 1 : 2 * BLOCK + 1]))
    with pytest.raises(ResumeMismatch, match="another input or block size"):
        run_ray(demo_bundle, requests, output)
    assert not output.exists()


def test_cli_engine_ray(
    demo_bundle: Path,
    records: list[dict[str, Any]],
    local_output: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    output = tmp_path / "out" / "ray.jsonl"
    command = ["--bundle", str(demo_bundle), "--input", str(source), "--output", str(output)]
    command += ["--engine", "ray", "--block-size", "100", "--workers", "2", "--no-progress"]
    assert main(command) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (summary["total"], summary["completed"], summary["failed"]) == (
        REQUESTS,
        REQUESTS - 2,
        2,
    )
    assert_same_answers(output, local_output)

    missing = tmp_path / "nowhere"
    elsewhere = tmp_path / "other.jsonl"
    command[1], command[5] = str(missing), str(elsewhere)
    assert main(command) == EXIT_FAILED
    assert "nowhere" in capsys.readouterr().err
    assert not elsewhere.exists()
    assert not parts_dir(elsewhere).exists()

    with pytest.raises(SystemExit) as refused:
        main([*command[:6], "--address", "auto"])
    assert refused.value.code == 2
