"""Score batch requests into a JSONL output, chunk by chunk, resumable after a crash.

Output line i answers input request i: `{"custom_id", "response": {"model", "version",
"results"}, "error": null}`, or `"response": null` with `"error": {"type", "msg"}` for a
request that could not be answered (a query over the token limit, a model the bundle lacks).
A chunk's lines are appended and fsynced together; on restart a torn last line is cut off, the
complete lines already in the output are checked against the input (same custom_ids, same
order) one at a time, in constant memory, and scoring goes on after them. So each custom_id is
written exactly once, however often the process is killed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from service.batch.requests import BatchRequest
from service.ranking import Hit, result_records
from service.search.engine import SearchEngine
from service.search.pipeline import QueryGroup, QueryTooLong, answer_groups

DEFAULT_CHUNK = 1024
# Bytes read at a time, backwards from the end of an output, to find its last complete line.
TAIL_BLOCK = 1 << 16


class ResumeMismatch(ValueError):
    """The existing output does not belong to this input."""


@dataclass
class Counts:
    """Requests answered and failed so far."""

    total: int
    completed: int = 0
    failed: int = 0


def _answer(custom_id: str, model: str, version: str, hits: list[Hit]) -> dict[str, Any]:
    response = {"model": model, "version": version, "results": result_records(hits)}
    return {"custom_id": custom_id, "response": response, "error": None}


def _failure(custom_id: str, type_: str, msg: str) -> dict[str, Any]:
    return {"custom_id": custom_id, "response": None, "error": {"type": type_, "msg": msg}}


def score_chunk(
    engine: SearchEngine, requests: list[BatchRequest], max_query_tokens: int
) -> list[dict[str, Any]]:
    """Output records for `requests`, in order, through the one query path
    (`service.search.pipeline`): encode once, retrieve once per (model, k)."""
    records: list[dict[str, Any]] = [{} for _ in requests]
    groups: list[QueryGroup] = []
    positions: list[int] = []
    for position, request in enumerate(requests):
        try:
            model = engine.resolve_model(request.model)
        except ValueError as exc:
            records[position] = _failure(request.custom_id, "model_not_found", str(exc))
            continue
        groups.append(QueryGroup([request.query], model, request.k))
        positions.append(position)
    answers = answer_groups(engine, groups, max_query_tokens)
    version = engine.version  # with the catalog changes, in the service
    for position, group, result in zip(positions, groups, answers.results, strict=True):
        custom_id = requests[position].custom_id
        if isinstance(result, QueryTooLong):
            msg = result.message("query")
            records[position] = _failure(custom_id, "query_too_many_tokens", msg)
        else:
            records[position] = _answer(custom_id, group.model, version, result[0])
    return records


def cut_torn_tail(output: Path) -> None:
    """Truncate `output` after its last newline: a line torn by a crash is written again.

    Reads blocks backwards from the end until it finds a newline, so memory stays constant
    whatever the file's size.
    """
    with output.open("r+b") as handle:
        end = handle.seek(0, os.SEEK_END)
        keep = position = end
        while position > 0:
            start = max(0, position - TAIL_BLOCK)
            handle.seek(start)
            newline = handle.read(position - start).rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            position = keep = start
        if keep != end:
            handle.truncate(keep)


def completed_prefix(output: Path, requests: list[BatchRequest]) -> Counts:
    """Count the answers already in `output` (cutting a torn last line); check they match.

    The file is read one line at a time: a restart in the middle of a large job needs memory
    for one line, not for the file.
    """
    counts = Counts(total=len(requests))
    if not output.exists():
        return counts
    cut_torn_tail(output)
    with output.open("rb") as handle:
        for position, line in enumerate(handle):
            record = json.loads(line)
            if position >= len(requests) or record["custom_id"] != requests[position].custom_id:
                raise ResumeMismatch(
                    f"{output}: line {position + 1} answers {record['custom_id']!r}, but input "
                    f"request {position + 1} is "
                    f"{requests[position].custom_id if position < len(requests) else 'absent'!r}; "
                    "this output belongs to another input (remove it to start over)"
                )
            if record["error"] is None:
                counts.completed += 1
            else:
                counts.failed += 1
    return counts


def _chunks(requests: list[BatchRequest], start: int, size: int) -> Iterator[list[BatchRequest]]:
    for first in range(start, len(requests), size):
        yield requests[first : first + size]


def score_to_file(
    engine: SearchEngine,
    requests: list[BatchRequest],
    output: Path,
    *,
    max_query_tokens: int = 128,
    chunk_size: int = DEFAULT_CHUNK,
    progress: bool = True,
    stop_after_chunk: Callable[[Counts], bool] | None = None,
    pace: Callable[[], object] | None = None,
    slice_size: int | None = None,
) -> Counts:
    """Answer every request not yet in `output`, appending chunk by chunk; returns the counts.

    `stop_after_chunk(counts)` runs after each chunk is on disk (the job store records progress
    with it); returning True stops there, to be resumed later or cancelled. `pace()` runs before
    each model call of at most `slice_size` requests (the server's worker waits there while
    searches run).
    """
    counts = completed_prefix(output, requests)
    done = counts.completed + counts.failed
    output.parent.mkdir(parents=True, exist_ok=True)
    with (
        output.open("ab") as handle,
        tqdm(
            total=len(requests), initial=done, unit="query", desc="score", disable=not progress
        ) as bar,
    ):
        for chunk in _chunks(requests, done, chunk_size):
            records = []
            for piece in _chunks(chunk, 0, slice_size or len(chunk)):
                if pace is not None:
                    pace()
                records += score_chunk(engine, piece, max_query_tokens)
            handle.write(b"".join(json.dumps(r).encode() + b"\n" for r in records))
            handle.flush()
            os.fsync(handle.fileno())
            failed = sum(record["error"] is not None for record in records)
            counts.failed += failed
            counts.completed += len(records) - failed
            bar.update(len(records))
            if stop_after_chunk is not None and stop_after_chunk(counts):
                break
    return counts
