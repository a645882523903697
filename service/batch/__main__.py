"""Score a JSONL file offline, no server: `python -m service.batch --bundle B --input I --output O`.

Input lines are `{"custom_id", "query", "k"?, "model"?}`; every line is checked first and a
file with bad lines is refused, naming them (exit 2). Output lines are described in
`service.batch.scoring`. Interrupted runs resume: run the same command again and scoring goes
on after the last complete chunk in the output. Limits and the encoder come from the `XC_*`
settings (`XC_MAX_QUERY_CHARS`, `XC_MAX_K`, `XC_MAX_QUERY_TOKENS`, `XC_ENCODER_PRECISION`, ...).

`--engine ray` scores the same way on Ray (`service.batch.ray_scoring`): blocks of
`--block-size` requests, each scored by one of `--workers` actors that load the bundle once,
written per block and merged in input order. `--address` names a Ray cluster (`ray://head:10001`,
`auto`); without it a local instance is started. It needs the `cluster` extra (ray).
Exit status: 0 done, 1 bundle, resume or Ray problem, 2 bad input or settings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pydantic import ValidationError

from service.batch.ray_scoring import DEFAULT_BLOCK, DEFAULT_WORKERS, RayUnavailable, score_with_ray
from service.batch.requests import BatchInputError, BatchRequest, parse_requests
from service.batch.scoring import DEFAULT_CHUNK, Counts, ResumeMismatch, score_to_file
from service.bundle import BundleError
from service.heap import settle_heap
from service.search.engine import SearchEngine
from service.settings import Settings

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(prog="python -m service.batch", description=__doc__)
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle directory")
    parser.add_argument("--input", type=Path, required=True, help="JSONL requests")
    parser.add_argument("--output", type=Path, required=True, help="JSONL answers (appended)")
    parser.add_argument(
        "--chunk-size", type=positive_int, default=DEFAULT_CHUNK, help="requests per encoder call"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="score in this process (local) or on Ray actors (ray)",
    )
    parser.add_argument(
        "--address", help="with --engine ray: Ray cluster address (ray://head:10001, auto)"
    )
    parser.add_argument(
        "--block-size",
        type=positive_int,
        default=DEFAULT_BLOCK,
        help=f"with --engine ray: requests per block (default {DEFAULT_BLOCK})",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=DEFAULT_WORKERS,
        help=f"with --engine ray: Ray actors, each loading the bundle (default {DEFAULT_WORKERS})",
    )
    args = parser.parse_args(argv)
    if args.address and args.engine != "ray":
        parser.error("--address needs --engine ray")
    return args


def score(args: argparse.Namespace, settings: Settings, requests: list[BatchRequest]) -> Counts:
    """Score `requests` into `args.output` with the chosen engine."""
    progress = not args.no_progress
    engine_options = settings.engine_options()
    if args.engine == "ray":
        return score_with_ray(
            settings.bundle,
            requests,
            args.output,
            address=args.address,
            block_size=args.block_size,
            workers=args.workers,
            max_query_tokens=settings.max_query_tokens,
            chunk_size=args.chunk_size,
            threads=settings.threads,
            engine_options=engine_options,
            progress=progress,
        )
    engine = SearchEngine.load(settings.bundle, threads=settings.threads, **engine_options)
    settle_heap()
    return score_to_file(
        engine,
        requests,
        args.output,
        max_query_tokens=settings.max_query_tokens,
        chunk_size=args.chunk_size,
        progress=progress,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the scoring; prints a JSON summary on the last line of standard output."""
    args = parse_args(argv)
    try:
        settings = Settings(bundle=args.bundle)
    except ValidationError as exc:
        print(f"python -m service.batch: invalid settings: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        with args.input.open(encoding="utf-8") as lines:
            requests = parse_requests(
                lines, settings.max_query_chars, settings.max_k, settings.default_k
            )
    except (OSError, UnicodeDecodeError, BatchInputError) as exc:
        print(f"python -m service.batch: {args.input}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    start = time.perf_counter()
    try:
        counts = score(args, settings, requests)
    except (BundleError, ResumeMismatch, RayUnavailable, ConnectionError) as exc:
        print(f"python -m service.batch: {exc}", file=sys.stderr)
        return EXIT_FAILED
    seconds = time.perf_counter() - start
    summary = {
        "output": str(args.output),
        "total": counts.total,
        "completed": counts.completed,
        "failed": counts.failed,
        "seconds": round(seconds, 3),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
