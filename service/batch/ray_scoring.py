"""The batch scoring of `service.batch.scoring`, spread over Ray actors (`--engine ray`).

Why: one process scores a few hundred queries a second; a file of millions wants a cluster.
The input is cut into blocks of `block_size` requests (block i holds requests
`[i * block_size, (i + 1) * block_size)`). `workers` Ray actors each load the bundle once and
score whole blocks with `score_chunk`, `chunk_size` requests per encoder call. The driver writes
each finished block to `<output>.parts/block-<index:06d>.jsonl` atomically (temporary name,
fsync, rename), in whatever order blocks finish. When every block is there, they are merged in
input order into `output` (again temporary file, fsync, rename) and the parts are removed.

Resuming is running the same command again: block files already written are checked against
their requests (same count, same custom_ids in order) and kept, and only the missing blocks are
scored; an `output` already complete is checked and returned as it is. An `output` that a local
run left part-written is kept as a prefix: only the blocks after it are scored. So each
custom_id is answered exactly once, in input order, however often the job is stopped.

Ray is imported only here, and only when this engine runs: the service never needs it. Every
machine that hosts an actor needs this package installed and the bundle at the same path.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from service.batch.requests import BatchRequest
from service.batch.scoring import (
    DEFAULT_CHUNK,
    Counts,
    ResumeMismatch,
    completed_prefix,
    score_chunk,
)
from service.bundle import BundleError
from service.heap import settle_heap
from service.search.engine import SearchEngine
from service.storage import fsync_dir

DEFAULT_BLOCK = 10_000
DEFAULT_WORKERS = 2
INSTALL_HINT = "the Ray engine needs ray: pip install 'xc-search[cluster]'"


class RayUnavailable(ImportError):
    """Ray is not installed; the message says how to install it."""


def parts_dir(output: Path) -> Path:
    """Where the block files of `output` are kept until the merge."""
    return output.with_name(output.name + ".parts")


def block_path(parts: Path, index: int) -> Path:
    """The file of block `index`."""
    return parts / f"block-{index:06d}.jsonl"


class BlockScorer:
    """The state of one Ray actor: a bundle loaded once, then block after block scored."""

    def __init__(
        self,
        *,
        bundle: str,
        engine_options: dict[str, Any],
        max_query_tokens: int,
        chunk_size: int,
    ) -> None:
        self.error: str | None = None
        self.engine: SearchEngine | None = None
        try:
            self.engine = SearchEngine.load(bundle, **engine_options)
            settle_heap()
        except BundleError as exc:  # reported by `ready`, so the driver can name the file
            self.error = str(exc)
        self.max_query_tokens = max_query_tokens
        self.chunk_size = chunk_size

    def ready(self) -> str | None:
        """None once the bundle is loaded, else why it could not be."""
        return self.error

    def score(self, index: int, requests: list[BatchRequest]) -> tuple[int, bytes, list[bool]]:
        """Block `index` as JSONL bytes in request order, and whether each request failed."""
        assert self.engine is not None, self.error
        lines: list[bytes] = []
        failed: list[bool] = []
        for first in range(0, len(requests), self.chunk_size):
            chunk = requests[first : first + self.chunk_size]
            for record in score_chunk(self.engine, chunk, self.max_query_tokens):
                failed.append(record["error"] is not None)
                lines.append(json.dumps(record).encode() + b"\n")
        return index, b"".join(lines), failed


def _write_atomic(path: Path, pieces: Iterable[bytes]) -> None:
    """Write `pieces` to `path` so that a crash leaves the old file or the whole new one."""
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("wb") as handle:
        for piece in pieces:
            handle.write(piece)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    fsync_dir(path.parent)


def _read_block(path: Path, block: list[BatchRequest]) -> list[bool]:
    """Whether each answer of a block file failed, once its custom_ids match the block's."""
    records = [json.loads(line) for line in path.read_bytes().splitlines()]
    found = [record["custom_id"] for record in records]
    if found != [request.custom_id for request in block]:
        ends = f"{found[0]!r} to {found[-1]!r}" if found else "none"
        raise ResumeMismatch(
            f"{path}: holds {len(found)} answers ({ends}), but the block is {len(block)} "
            f"requests ({block[0].custom_id!r} to {block[-1].custom_id!r}); it belongs to "
            f"another input or block size (use the same --block-size, or remove {path.parent} "
            "to score every block again)"
        )
    return [record["error"] is not None for record in records]


def _tally(counts: Counts, failed: list[bool]) -> None:
    counts.failed += sum(failed)
    counts.completed += len(failed) - sum(failed)


def _merged(
    output: Path, done: int, parts: Path, blocks: list[list[BatchRequest]], block_size: int
) -> Iterator[bytes]:
    """The full output: the `done` lines already in `output`, then the blocks after them."""
    if done:
        with output.open("rb") as handle:
            for _ in range(done):
                yield handle.readline()
    for index in range(done // block_size, len(blocks)):
        skip = max(0, done - index * block_size)
        if skip:
            yield b"".join(block_path(parts, index).read_bytes().splitlines(keepends=True)[skip:])
            continue
        with block_path(parts, index).open("rb") as handle:
            while piece := handle.read(1 << 20):
                yield piece


def _start_ray(ray: Any, address: str | None, cpus: int) -> bool:
    """Connect to `address`, or start a local instance with `cpus` CPUs; True if started."""
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address)
    else:
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    return True


def _written_blocks(
    parts: Path, blocks: list[list[BatchRequest]], done: int, block_size: int, counts: Counts
) -> list[int]:
    """Count the answers of the block files a previous run wrote (checking each against its
    requests) after the `done` lines already merged; return the blocks still to score."""
    pending: list[int] = []
    for index in range(done // block_size, len(blocks)):
        path = block_path(parts, index)
        if not path.exists():
            pending.append(index)
            continue
        failed = _read_block(path, blocks[index])
        _tally(counts, failed[max(0, done - index * block_size) :])
    return pending


def _score_blocks(
    ray: Any,
    pending: list[int],
    blocks: list[list[BatchRequest]],
    actor_args: dict[str, Any],
    *,
    address: str | None,
    workers: int,
    cpus: int,
    on_block: Callable[[int, bytes, list[bool]], None],
) -> None:
    """Score the `pending` blocks on up to `workers` actors of `cpus` CPUs each, handing each
    finished block to `on_block(index, jsonl, failed)` as it comes."""
    from ray.util import ActorPool

    started = _start_ray(ray, address, workers * cpus)
    scorers: list[Any] = []
    try:
        actor = ray.remote(BlockScorer).options(num_cpus=cpus, max_restarts=2, max_task_retries=2)
        scorers = [actor.remote(**actor_args) for _ in range(min(workers, len(pending)))]
        for error in ray.get([scorer.ready.remote() for scorer in scorers]):
            if error is not None:
                raise BundleError(error)
        finished = ActorPool(scorers).map_unordered(
            lambda scorer, index: scorer.score.remote(index, blocks[index]), pending
        )
        for index, data, failures in finished:
            on_block(index, data, failures)
    finally:
        if started:
            ray.shutdown()
        else:  # free the CPUs of a cluster or instance that outlives this call
            for scorer in scorers:
                ray.kill(scorer)


def score_with_ray(
    bundle: Path,
    requests: list[BatchRequest],
    output: Path,
    *,
    address: str | None = None,
    block_size: int = DEFAULT_BLOCK,
    workers: int = DEFAULT_WORKERS,
    max_query_tokens: int = 128,
    chunk_size: int = DEFAULT_CHUNK,
    threads: int = 0,
    engine_options: dict[str, Any] | None = None,
    progress: bool = True,
) -> Counts:
    """Answer every request into `output` with `workers` Ray actors; returns the counts.

    `address` is a Ray cluster (`ray://head:10001`, `auto`); without one a local instance with
    `workers * max(threads, 1)` CPUs is started (and stopped at the end). A Ray instance already
    initialised in this process is used as it is. Each actor reserves `max(threads, 1)` CPUs,
    runs the encoder with that many threads and loads the bundle with `engine_options` (the
    other keywords of `SearchEngine.load`: device, precision, weights). Raises `RayUnavailable`
    without ray, `BundleError` when an actor cannot load the bundle, `ResumeMismatch` for
    outputs of another input.
    """
    if block_size < 1 or workers < 1 or chunk_size < 1:
        raise ValueError("block_size, workers and chunk_size must be at least 1")
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailable(f"{INSTALL_HINT} ({exc})") from exc
    parts = parts_dir(output)
    counts = completed_prefix(output, requests)
    done = counts.completed + counts.failed
    if done == len(requests) and output.exists():
        shutil.rmtree(parts, ignore_errors=True)  # a crash between the merge and the cleanup
        return counts
    blocks = [requests[first : first + block_size] for first in range(0, len(requests), block_size)]
    pending = _written_blocks(parts, blocks, done, block_size, counts)
    cpus = max(threads, 1)
    actor_args = {
        "bundle": str(bundle.absolute()),
        "engine_options": {**(engine_options or {}), "threads": cpus},
        "max_query_tokens": max_query_tokens,
        "chunk_size": chunk_size,
    }
    bar = tqdm(
        total=len(blocks),
        initial=len(blocks) - len(pending),
        unit="block",
        desc="score",
        disable=not progress,
    )

    def write_block(index: int, data: bytes, failures: list[bool]) -> None:
        parts.mkdir(parents=True, exist_ok=True)
        _write_atomic(block_path(parts, index), [data])
        _tally(counts, failures[max(0, done - index * block_size) :])
        bar.update(1)

    with bar:
        if pending:
            _score_blocks(
                ray,
                pending,
                blocks,
                actor_args,
                address=address,
                workers=workers,
                cpus=cpus,
                on_block=write_block,
            )
    output.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(output, _merged(output, done, parts, blocks, block_size))
    if parts.exists():
        shutil.rmtree(parts)
    return counts
