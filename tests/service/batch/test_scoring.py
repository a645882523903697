"""Resuming an output file: a torn tail is cut, complete lines are checked, memory stays flat."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from service.batch import scoring
from service.batch.requests import BatchRequest
from service.batch.scoring import ResumeMismatch, completed_prefix


def requests(count: int) -> list[BatchRequest]:
    return [
        BatchRequest(line=i + 1, custom_id=f"q{i}", query="drill", k=10, model=None)
        for i in range(count)
    ]


def answer(i: int, failed: bool = False) -> bytes:
    error = {"type": "query_too_many_tokens", "msg": "query: too long"} if failed else None
    response = None if failed else {"model": "astra", "version": "v", "results": []}
    return json.dumps({"custom_id": f"q{i}", "response": response, "error": error}).encode()


@pytest.mark.parametrize("tail_block", [1 << 16, 7])
def test_a_torn_last_line_is_cut_and_the_complete_ones_counted(
    tmp_path: Path, tail_block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scoring, "TAIL_BLOCK", tail_block)  # 7: the scan crosses many blocks
    output = tmp_path / "out.jsonl"
    complete = b"".join(answer(i, failed=i == 1) + b"\n" for i in range(3))
    output.write_bytes(complete + answer(3)[:25])
    counts = completed_prefix(output, requests(5))
    assert (counts.total, counts.completed, counts.failed) == (5, 2, 1)
    assert output.read_bytes() == complete


def test_a_file_with_no_complete_line_is_emptied(tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    output.write_bytes(answer(0)[:10])
    assert completed_prefix(output, requests(2)).completed == 0
    assert output.read_bytes() == b""


def test_an_output_of_another_input_is_refused(tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    output.write_bytes(answer(1) + b"\n")
    with pytest.raises(ResumeMismatch, match="line 1 answers 'q1'"):
        completed_prefix(output, requests(2))


def test_resuming_a_large_output_takes_constant_memory(tmp_path: Path) -> None:
    count = 60_000
    output = tmp_path / "out.jsonl"
    with output.open("wb") as handle:
        for i in range(count):
            handle.write(answer(i) + b"\n")
        handle.write(answer(count)[:30])  # a crash tore the last line
    size = output.stat().st_size
    wanted = requests(count + 10)
    tracemalloc.start()
    try:
        counts = completed_prefix(output, wanted)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert counts.completed == count
    assert size > 5_000_000 and peak < 1_000_000, f"peak {peak} bytes for a {size}-byte output"
