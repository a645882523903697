"""Load test of POST /search over HTTP: sequential latency, closed-loop throughput, overload.

    python -m bench.load --bundle models/homedepot --data ../shared/data/homedepot/xc
    python -m bench.load --url http://127.0.0.1:8000 --data ../shared/data/homedepot/xc
    python -m bench.load --bundle models/homedepot --data ../shared/data/homedepot/xc \\
        --server-threads 2 --server-env XC_MAX_BATCH=32 --server-env XC_MAX_WAIT_MS=2 \\
        --concurrency 8,32,128 --duration 20 --name homedepot-b32

Without `--url` a `python -m service` process is started on a free loopback port
(`bench.server`) with `XC_THREADS=--server-threads` and every `--server-env KEY=VALUE`, and
stopped at the end; with `--url` an already-running server is measured. Request bodies are
`{"query": ..., "k": --k}` (plus `"model"` with `--model`), queries taken in order, cycling,
from the dataset's dev split (`training.data.load_dataset(...).split("dev")`).

Phases (`--phases`, default all five, in this order):

1. ``sequential``: one client on one keep-alive connection, one request at a time
   (`--requests` after `--warmup`): client-side p50/p90/p99/mean and the server's `took_ms`.
   ``sequential_lean``: the same with `LeanConnection`, a bare HTTP/1.1 client on asyncio
   streams (plain http only), instead of httpx.
2. ``throughput``: a closed loop per `--concurrency` level: N clients, each sending its next
   request when its previous answer arrives, for `--warmup-s` (not counted) then `--duration`
   seconds. Answers that arrive inside the measured window count: queries/s of 200 answers,
   p50/p99 of 200s, answers per status. ``throughput_lean``: the same with N lean connections.

Why two clients: httpx spends about a millisecond of CPU per request, on the same two cores as
the server; the lean client's figures are the server's over HTTP with most of that taken out,
the httpx ones what a typical Python client on the same machine sees.

3. ``overload``: an open loop: requests launched at `--overload-factor` × the best queries/s of
   the httpx ``throughput`` levels (or at `--overload-rate`), Poisson or at fixed intervals
   (`--arrivals`), whether or not earlier ones have finished, for `--overload-duration`
   seconds, on a pool of `--overload-connections`. Reports answers per status (only 200 and 429
   are expected, a 429 with a `Retry-After` header), p50/p99 of 200s measured from each
   request's *scheduled* arrival (time spent waiting on the client is counted: no coordinated
   omission) and from its send, how late requests were launched, and whether GET /healthz
   answers 200 afterwards.

Transport errors and timeouts (`--timeout`) are counted per exception type under ``errors``,
never as statuses. When GET /metrics exists (a 404 means absent) it is scraped before and after
each phase (each concurrency level is one): the series that changed are stored as deltas, and
the `xc_stage_seconds` histogram (`_sum` / `_count` by `stage`) gives mean seconds per stage.

The client shares the CPUs with the server on a small machine, so it is kept cheap: keep-alive
connections in small httpx pools (one single-connection client per closed-loop worker, clients
of 8 connections in the open loop, see `ClientShards`: httpcore's pool costs grow with the
square of its size), bodies encoded to bytes once, answers parsed as JSON only in the
sequential phase, no per-request sys.path search for the missing `sniffio`
(`skip_missing_sniffio`), uvloop when installed (`--no-uvloop` to turn it off). CPU seconds of
the client, and of the server when started here (from /proc), are recorded per phase, so the
client's share of the machine can be judged.

Results: `bench/results/load_<name>.json` and `.png` (`--out-dir`; name from `--name`, the bundle
directory, or the server's /readyz), and a summary table on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib.util
import itertools
import json
import math
import os
import platform
import re
import shlex
import ssl
import sys
import time
from collections import Counter, defaultdict
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
from tqdm.auto import tqdm

from bench.server import free_port, server_process
from training.data import load_dataset

RESULTS = Path(__file__).resolve().parent / "results"
SEARCH_PATH = "/search"
PHASES = ("sequential", "sequential_lean", "throughput", "throughput_lean", "overload")
STAGE_METRIC = "xc_stage_seconds"
STAGE_ORDER = ("tokenize", "queue", "encode", "retrieve", "total")
EXPECTED_OVERLOAD_STATUSES = frozenset({200, 429})
PROGRESS_MIN_S = 3.0  # phases shorter than this get no progress bar
OPEN_LOOP_PER_CLIENT = 8  # connections per AsyncClient in the overload phase (see ClientShards)

# One answered (or failed) request: start and end (perf_counter seconds) and the HTTP status,
# or the name of the transport error's type.
Sample = tuple[float, float, int | str]
# A Prometheus series: metric name and its sorted (label, value) pairs.
Series = tuple[str, tuple[tuple[str, str], ...]]

T = TypeVar("T")


# --- statistics ------------------------------------------------------------------------------


def latency_summary(values_ms: Iterable[float]) -> dict[str, Any]:
    """count, mean, p50/p90/p99 and max of milliseconds (statistics are None when empty)."""
    arr = np.fromiter(values_ms, dtype=np.float64)
    if arr.size == 0:
        return {"count": 0, "mean": None, "p50": None, "p90": None, "p99": None, "max": None}
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return {
        "count": int(arr.size),
        "mean": round(float(arr.mean()), 3),
        "p50": round(float(p50), 3),
        "p90": round(float(p90), 3),
        "p99": round(float(p99), 3),
        "max": round(float(arr.max()), 3),
    }


def tally(outcomes: Iterable[int | str]) -> tuple[dict[str, int], dict[str, int]]:
    """Counts per HTTP status (int outcomes) and per transport-error type (str outcomes)."""
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for outcome in outcomes:
        if isinstance(outcome, int):
            statuses[str(outcome)] += 1
        else:
            errors[outcome] += 1
    return dict(sorted(statuses.items())), dict(sorted(errors.items()))


def summarize_window(samples: Sequence[Sample], elapsed_s: float) -> dict[str, Any]:
    """Requests, queries/s of 200s (and of all answers), latency of 200s, statuses, errors."""
    statuses, errors = tally(outcome for _, _, outcome in samples)
    ok_ms = [1000.0 * (end - start) for start, end, outcome in samples if outcome == 200]
    return {
        "requests": len(samples),
        "elapsed_s": round(elapsed_s, 3),
        "qps_200": round(len(ok_ms) / elapsed_s, 2) if elapsed_s > 0 else 0.0,
        "qps_all": round(len(samples) / elapsed_s, 2) if elapsed_s > 0 else 0.0,
        "latency_ms_200": latency_summary(ok_ms),
        "statuses": statuses,
        "errors": errors,
    }


def arrival_offsets(rate: float, duration_s: float, arrivals: str, seed: int = 0) -> np.ndarray:
    """Launch times (seconds from the start, < duration_s) of an open loop at `rate` per second.

    ``fixed``: every 1/rate seconds from 0; ``poisson``: exponential gaps of mean 1/rate.
    """
    if rate <= 0 or duration_s <= 0:
        return np.zeros(0)
    if arrivals == "fixed":
        return np.arange(0.0, duration_s, 1.0 / rate)
    if arrivals != "poisson":
        raise ValueError(f"arrivals must be 'poisson' or 'fixed', got {arrivals!r}")
    rng = np.random.default_rng(seed)
    expected = rate * duration_s
    gaps = rng.exponential(1.0 / rate, size=int(expected + 10 * math.sqrt(expected) + 10))
    offsets = np.cumsum(gaps) - gaps[0]
    while offsets[-1] < duration_s:  # astronomically rare: draw more
        more = rng.exponential(1.0 / rate, size=gaps.size)
        offsets = np.concatenate([offsets, offsets[-1] + np.cumsum(more)])
    return offsets[offsets < duration_s]


# --- Prometheus text format ------------------------------------------------------------------

_SAMPLE_RE = re.compile(
    r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?\s*", re.DOTALL
)
_LABEL_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,|$)')
_ESCAPE_RE = re.compile(r"\\(.)")


def _unescape(value: str) -> str:
    return _ESCAPE_RE.sub(lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _parse_labels(text: str, line_no: int) -> tuple[tuple[str, str], ...]:
    labels: dict[str, str] = {}
    pos = 0
    while pos < len(text) and text[pos:].strip():
        match = _LABEL_RE.match(text, pos)
        if match is None:
            raise ValueError(f"line {line_no}: bad labels {{{text}}}")
        labels[match.group(1)] = _unescape(match.group(2))
        pos = match.end()
        if not match.group(3):  # no comma: the label set must end here
            break
    return tuple(sorted(labels.items()))


def parse_prometheus(text: str) -> dict[Series, float]:
    """The samples of a Prometheus text exposition: {(name, sorted labels): value}.

    Comments (`# HELP`, `# TYPE`, `# EOF`) and blank lines are skipped, timestamps ignored,
    label values unescaped; `+Inf`, `-Inf` and `NaN` are floats. Raises ValueError naming the
    line of a malformed sample.
    """
    samples: dict[Series, float] = {}
    for line_no, line in enumerate(text.split("\n"), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _SAMPLE_RE.fullmatch(stripped)
        if match is None:
            raise ValueError(f"line {line_no}: not a sample: {stripped!r}")
        name, label_text, value_text = match.groups()
        try:
            value = float(value_text)
        except ValueError:
            raise ValueError(f"line {line_no}: bad value {value_text!r}") from None
        samples[(name, _parse_labels(label_text or "", line_no))] = value
    return samples


def format_series(series: Series) -> str:
    """A series as the exposition format writes it: `name{label="value",...}`."""
    name, labels = series
    if not labels:
        return name
    inner = ",".join(f'{key}="{_escape(value)}"' for key, value in labels)
    return f"{name}{{{inner}}}"


def metric_deltas(
    before: Mapping[Series, float], after: Mapping[Series, float]
) -> dict[str, float]:
    """after − before for every series of `after` that changed (`*_created` timestamps left out).

    A series missing from `before` counts from 0 (a labelled series appears on first use).
    """
    deltas: dict[str, float] = {}
    for series, value in after.items():
        if series[0].endswith("_created"):
            continue
        delta = value - before.get(series, 0.0)
        if delta != 0 and math.isfinite(delta):
            deltas[format_series(series)] = round(delta, 9)
    return deltas


def stage_seconds(
    before: Mapping[Series, float], after: Mapping[Series, float], metric: str = STAGE_METRIC
) -> dict[str, dict[str, Any]]:
    """Per `stage` label of histogram `metric`: observations and mean seconds between scrapes.

    `_sum` and `_count` deltas are added over the other labels (model, version, ...). Stages come
    in pipeline order (tokenize, queue, encode, retrieve, total), then any others by name.
    """
    sums: defaultdict[str, float] = defaultdict(float)
    counts: defaultdict[str, float] = defaultdict(float)
    buckets: defaultdict[str, defaultdict[float, float]] = defaultdict(lambda: defaultdict(float))
    for (name, labels), value in after.items():
        label_map = dict(labels)
        stage = label_map.get("stage")
        if stage is None:
            continue
        delta = value - before.get((name, labels), 0.0)
        if name == f"{metric}_sum":
            sums[stage] += delta
        elif name == f"{metric}_count":
            counts[stage] += delta
        elif name == f"{metric}_bucket":
            buckets[stage][float(label_map["le"])] += delta

    def order(stage: str) -> tuple[int, str]:
        rank = STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER)
        return rank, stage

    return {
        stage: {
            "count": round(counts[stage]),
            "mean_s": sums[stage] / counts[stage] if counts[stage] > 0 else None,
            "p50_s": histogram_quantile(0.5, buckets[stage]),
            "p99_s": histogram_quantile(0.99, buckets[stage]),
        }
        for stage in sorted(counts, key=order)
    }


def histogram_quantile(q: float, cumulative: Mapping[float, float]) -> float | None:
    """The q-quantile of a Prometheus histogram from its cumulative `le` bucket counts.

    Interpolates linearly inside the bucket that holds the quantile, as Prometheus'
    `histogram_quantile` does; a quantile in the `+Inf` bucket is reported as the highest
    finite bound. None without observations.
    """
    bounds = sorted(cumulative)
    total = cumulative[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = cumulative[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


def phase_metrics(before_text: str, after_text: str) -> dict[str, Any]:
    """What a phase did to /metrics: stage means and the changed series (or the parse error)."""
    try:
        before, after = parse_prometheus(before_text), parse_prometheus(after_text)
    except ValueError as exc:
        return {"error": str(exc)}
    return {"stage_seconds": stage_seconds(before, after), "delta": metric_deltas(before, after)}


# --- HTTP ------------------------------------------------------------------------------------


ZIPF_LENGTH = 200_000


def zipf_stream(bodies: Sequence[bytes], exponent: float, seed: int) -> list[bytes]:
    """ZIPF_LENGTH bodies drawn with P(rank r) proportional to 1/r^exponent, the ranks given to
    the queries by a seeded shuffle: a few queries very often, most rarely (a query log's
    head and tail)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(bodies))
    weights = 1.0 / np.arange(1, len(bodies) + 1) ** exponent
    picks = rng.choice(len(bodies), size=ZIPF_LENGTH, p=weights / weights.sum())
    return [bodies[order[pick]] for pick in picks]


def encode_bodies(queries: Sequence[str], k: int, model: str | None = None) -> list[bytes]:
    """The POST /search bodies, JSON-encoded once."""
    extra = {"model": model} if model else {}
    return [
        json.dumps({"query": query, "k": k, **extra}, separators=(",", ":")).encode()
        for query in queries
    ]


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One TLS context for every client (httpx builds one per client otherwise: ~40 ms each)."""
    return ssl.create_default_context()


def make_client(
    base: str, connections: int, timeout_s: float, headers: Mapping[str, str] | None = None
) -> httpx.AsyncClient:
    """An AsyncClient on `base` with a keep-alive pool of `connections` (no proxies from env)."""
    return httpx.AsyncClient(
        base_url=base,
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        timeout=httpx.Timeout(timeout_s),
        headers={"content-type": "application/json", **(headers or {})},
        trust_env=False,
        verify=_ssl_context(),
    )


class ClientShards:
    """`connections` keep-alive connections split over AsyncClients of `per_client` each.

    httpcore's pool (1.0.x) rescans all its connections, and for each idle one all of them
    again, whenever a request enters or leaves it, and every queued request scans them too: with
    a single pool of hundreds of connections the client spent milliseconds of CPU per request,
    more than the server. Small pools keep that cost flat. `pick` gives the client with the
    fewest requests in flight; `done(i)` must follow each request sent on client i.
    """

    def __init__(
        self,
        base: str,
        connections: int,
        timeout_s: float,
        headers: Mapping[str, str] | None = None,
        per_client: int = 8,
    ) -> None:
        sizes = [
            min(per_client, connections - start) for start in range(0, connections, per_client)
        ]
        self.clients = [make_client(base, size, timeout_s, headers) for size in sizes]
        self.sizes = sizes
        self.in_flight = [0] * len(sizes)

    def pick(self) -> int:
        """Index of the least busy client, counted as one more request in flight."""
        loads = self.in_flight
        index = loads.index(min(loads))
        loads[index] += 1
        return index

    def done(self, index: int) -> None:
        """A request on client `index` has ended."""
        self.in_flight[index] -= 1

    async def prewarm(self) -> None:
        """Open every connection (concurrent GET /healthz on each client)."""
        await asyncio.gather(
            *(
                client.get("/healthz")
                for client, size in zip(self.clients, self.sizes, strict=True)
                for _ in range(size)
            ),
            return_exceptions=True,
        )

    async def __aenter__(self) -> ClientShards:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.gather(*(client.aclose() for client in self.clients))


async def get_text(client: httpx.AsyncClient, path: str) -> tuple[int | None, str]:
    """GET path: (status, body text), or (None, error type name) when the transport fails."""
    try:
        response = await client.get(path)
    except httpx.TransportError as exc:
        return None, type(exc).__name__
    return response.status_code, response.text


def process_cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of a process (all threads) from /proc; None where unavailable."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # fields[0] is field 3 (state) of proc(5)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _progress(desc: str, total_s: float, samples: Sequence[Any]) -> None:
    """A seconds-based tqdm bar for a timed phase, with the answers so far; runs until cancelled."""
    start = time.perf_counter()
    bar = tqdm(
        total=round(total_s, 1),
        desc=desc,
        unit="s",
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s {postfix}",
        disable=total_s < PROGRESS_MIN_S,
    )
    try:
        while True:
            await asyncio.sleep(0.5)
            bar.n = round(min(time.perf_counter() - start, total_s), 1)
            bar.set_postfix_str(f"{len(samples)} answers", refresh=True)
    finally:
        bar.close()


async def _with_progress(
    desc: str, total_s: float, samples: Sequence[Any], work: Awaitable[T]
) -> T:
    """Await `work` with a progress bar for it."""
    ticker = asyncio.create_task(_progress(desc, total_s, samples))
    try:
        return await work
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker


# --- phases ----------------------------------------------------------------------------------


class LeanConnection:
    """One keep-alive HTTP/1.1 connection on asyncio streams that POSTs ready-made JSON bodies.

    It formats each request with one f-string and parses only the status line and the body's
    framing (Content-Length or chunked), so it costs a few microseconds per request where httpx
    costs about a millisecond: on a 2-core machine shared with the server that difference is a
    fifth of a search's latency. Plain http only. After a failed exchange the connection is
    closed and the next `post` opens a new one, so a half-read answer never leaks into the next.
    """

    def __init__(self, base: str, headers: Mapping[str, str] | None = None) -> None:
        url = httpx.URL(base)
        if url.scheme != "http":
            raise ValueError(f"url: the lean client speaks plain http only, got {base!r}")
        self.host, self.port = url.host, url.port or 80
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        self.head = f"Host: {self.host}:{self.port}\r\nContent-Type: application/json\r\n{extra}"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> LeanConnection:
        await self._connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._close()

    async def _connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def _close(self) -> None:
        writer, self.reader, self.writer = self.writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """(status, body) of one POST; any failure closes the connection and is re-raised."""
        if self.writer is None:
            await self._connect()
        try:
            return await self._exchange(path, body)
        except BaseException:
            await self._close()
            raise

    async def _exchange(self, path: str, body: bytes) -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        request = f"POST {path} HTTP/1.1\r\n{self.head}Content-Length: {len(body)}\r\n\r\n"
        self.writer.write(request.encode("latin-1") + body)
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        status_line, *header_lines = head.split("\r\n")
        version, _, rest = status_line.partition(" ")
        if not version.startswith("HTTP/") or not rest[:3].isdigit():
            raise ValueError(f"lean client: not an HTTP status line: {status_line!r}")
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in header_lines if line)
        }
        if "content-length" in headers:
            return int(rest[:3]), await self.reader.readexactly(int(headers["content-length"]))
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
                chunks.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)  # the CRLF after each chunk
            await self.reader.readuntil(b"\r\n")  # no trailers: the final CRLF
            return int(rest[:3]), b"".join(chunks)
        raise ValueError(f"lean client: answer to {path} has neither length nor chunks")


LEAN_ERRORS = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError)
Post = Callable[[bytes], Awaitable[tuple[int, bytes]]]


def httpx_post(client: httpx.AsyncClient) -> Post:
    """POST a body to /search on `client` -> (status, body), the shape `LeanConnection` has."""

    async def post(body: bytes) -> tuple[int, bytes]:
        response = await client.post(SEARCH_PATH, content=body)
        return response.status_code, response.content

    return post


@contextlib.asynccontextmanager
async def open_clients(
    base: str,
    count: int,
    timeout_s: float,
    headers: Mapping[str, str] | None,
    lean: bool,
) -> AsyncIterator[tuple[list[Post], tuple[type[BaseException], ...]]]:
    """`count` single-connection clients of /search, each as `post(body) -> (status, body)`,
    with the exceptions that count as transport errors: httpx clients (see ClientShards for why
    not one pool), or `LeanConnection`s (no client-side timeout: the server's own deadline
    bounds every answer)."""
    async with contextlib.AsyncExitStack() as stack:
        if lean:
            connections = [
                await stack.enter_async_context(LeanConnection(base, headers)) for _ in range(count)
            ]
            yield [functools.partial(c.post, SEARCH_PATH) for c in connections], LEAN_ERRORS
        else:
            shards = await stack.enter_async_context(
                ClientShards(base, count, timeout_s, headers, per_client=1)
            )
            yield [httpx_post(client) for client in shards.clients], (httpx.TransportError,)


async def run_sequential(
    base: str,
    bodies: Sequence[bytes],
    requests: int,
    warmup: int,
    timeout_s: float = 30.0,
    headers: Mapping[str, str] | None = None,
    lean: bool = False,
) -> dict[str, Any]:
    """One client, one keep-alive connection, one request at a time: latency and `took_ms`.

    The client is httpx, or with `lean` a `LeanConnection`.
    """
    samples: list[Sample] = []
    took_ms: list[float] = []
    n = len(bodies)
    desc = "sequential, lean client" if lean else "sequential"
    async with open_clients(base, 1, timeout_s, headers, lean) as ([post], errors):
        for i in range(warmup):
            with contextlib.suppress(*errors):
                await post(bodies[i % n])
        for i in tqdm(range(requests), desc=desc, unit="req", disable=requests < 200):
            start = time.perf_counter()
            try:
                status, content = await post(bodies[(warmup + i) % n])
            except errors as exc:
                samples.append((start, time.perf_counter(), type(exc).__name__))
                continue
            samples.append((start, time.perf_counter(), status))
            if status == 200:
                took = json.loads(content).get("took_ms")
                if isinstance(took, (int, float)):
                    took_ms.append(float(took))
    statuses, error_counts = tally(outcome for _, _, outcome in samples)
    ok_ms = [1000.0 * (end - start) for start, end, outcome in samples if outcome == 200]
    return {
        "requests": requests,
        "warmup": warmup,
        "client_ms": latency_summary(ok_ms),
        "server_took_ms": latency_summary(took_ms),
        "statuses": statuses,
        "errors": error_counts,
    }


async def run_closed_loop(
    base: str,
    bodies: Sequence[bytes],
    concurrency: int,
    duration_s: float,
    warmup_s: float = 1.0,
    timeout_s: float = 30.0,
    headers: Mapping[str, str] | None = None,
    backoff_429_s: float = 0.0,
    lean: bool = False,
) -> dict[str, Any]:
    """`concurrency` clients in a closed loop; answers arriving in the measured window count.

    The window opens `warmup_s` after the start and lasts `duration_s`; no request is sent after
    it closes. A client that gets a 429 waits `backoff_429_s` before its next request. The
    clients are httpx, or with `lean` `LeanConnection`s (`open_clients`).
    """
    samples: list[Sample] = []
    n = len(bodies)
    counter = itertools.count()
    async with open_clients(base, concurrency, timeout_s, headers, lean) as (posts, errors):

        async def worker(post: Post) -> None:
            while True:
                start = time.perf_counter()
                if start >= window_end:
                    return
                try:
                    outcome: int | str = (await post(bodies[next(counter) % n]))[0]
                except errors as exc:
                    outcome = type(exc).__name__
                samples.append((start, time.perf_counter(), outcome))
                if outcome == 429 and backoff_429_s > 0:
                    await asyncio.sleep(backoff_429_s)

        begin = time.perf_counter()
        window_start = begin + warmup_s
        window_end = window_start + duration_s
        work = asyncio.gather(*(worker(post) for post in posts))
        label = f"concurrency {concurrency}{', lean client' if lean else ''}"
        await _with_progress(label, warmup_s + duration_s, samples, work)
    window = [s for s in samples if window_start <= s[1] < window_end]
    return {
        "concurrency": concurrency,
        "duration_s": duration_s,
        "warmup_s": warmup_s,
        "backoff_429_s": backoff_429_s,
        **summarize_window(window, duration_s),
    }


async def run_open_loop(
    base: str,
    bodies: Sequence[bytes],
    rate: float,
    duration_s: float,
    arrivals: str = "poisson",
    seed: int = 0,
    connections: int = 256,
    timeout_s: float = 30.0,
    headers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Requests launched at `rate` per second for `duration_s`, whether or not others finished.

    Latency of 200s is measured from each request's scheduled arrival (`latency_ms_200`) and
    from the moment it was handed to the client (`latency_from_send_ms_200`, which includes
    waiting for a pool connection when `max_in_flight` exceeds `connections`); `launch_lag_ms`
    is how late it was handed over. The pool's connections are opened (GET /healthz) before
    the first arrival. Waits for every request to end before returning.
    """
    offsets = arrival_offsets(rate, duration_s, arrivals, seed)
    n = len(bodies)
    records: list[tuple[float, float, float, int | str]] = []  # scheduled, sent, ended, outcome
    retry_after: Counter[str] = Counter()
    in_flight = [0, 0]  # now, most at once (above `connections`, requests waited for the pool)
    async with ClientShards(base, connections, timeout_s, headers, OPEN_LOOP_PER_CLIENT) as shards:

        async def one(scheduled: float, body: bytes) -> None:
            sent = time.perf_counter()
            in_flight[0] += 1
            in_flight[1] = max(in_flight[1], in_flight[0])
            index = shards.pick()
            try:
                response = await shards.clients[index].post(SEARCH_PATH, content=body)
                outcome: int | str = response.status_code
                if outcome == 429:
                    retry_after[response.headers.get("retry-after", "missing")] += 1
            except httpx.TransportError as exc:
                outcome = type(exc).__name__
            finally:
                shards.done(index)
            records.append((scheduled, sent, time.perf_counter(), outcome))
            in_flight[0] -= 1

        async def launch() -> float:
            # Every arrival that is due is launched at once, without yielding in between, so a
            # busy event loop delays when requests start (counted) but not how many are offered.
            tasks = []
            times = offsets.tolist()
            begin = time.perf_counter()
            i = 0
            while i < len(times):
                now = time.perf_counter() - begin
                if times[i] > now:
                    await asyncio.sleep(times[i] - now)
                    continue
                while i < len(times) and times[i] <= now:
                    tasks.append(asyncio.create_task(one(begin + times[i], bodies[i % n])))
                    i += 1
            launched_s = time.perf_counter() - begin
            await asyncio.gather(*tasks)
            return launched_s

        await shards.prewarm()
        begin = time.perf_counter()
        launched_s = await _with_progress("overload", duration_s, records, launch())
        elapsed_s = time.perf_counter() - begin
    statuses, errors = tally(outcome for *_, outcome in records)
    ok = [(scheduled, sent, ended) for scheduled, sent, ended, outcome in records if outcome == 200]
    present = {value: count for value, count in retry_after.items() if value != "missing"}
    return {
        "arrivals": arrivals,
        "target_rate": round(rate, 2),
        "duration_s": duration_s,
        "connections": connections,
        "max_in_flight": in_flight[1],
        "requests": len(records),
        "offered_rate": round(len(offsets) / launched_s, 2) if launched_s > 0 else 0.0,
        "elapsed_s": round(elapsed_s, 3),
        "qps_200": round(len(ok) / elapsed_s, 2) if elapsed_s > 0 else 0.0,
        "statuses": statuses,
        "errors": errors,
        "only_200_429": all(int(code) in EXPECTED_OVERLOAD_STATUSES for code in statuses),
        "retry_after": {
            "with_header": sum(present.values()),
            "missing": retry_after.get("missing", 0),
            "values": dict(sorted(present.items())),
        },
        "latency_ms_200": latency_summary(1000.0 * (e - s) for s, _, e in ok),
        "latency_from_send_ms_200": latency_summary(1000.0 * (e - t) for _, t, e in ok),
        "launch_lag_ms": latency_summary(1000.0 * (t - s) for s, t, _, _ in records),
    }


class PhaseProbe:
    """Client/server CPU seconds and /metrics deltas around each phase."""

    def __init__(self, control: httpx.AsyncClient, server_pid: int | None, scrape: bool) -> None:
        self.control = control
        self.server_pid = server_pid
        self.metrics_available: bool | None = None if scrape else False
        self.metrics_seen = False  # some scrape answered 200

    async def _scrape(self) -> str | None:
        if self.metrics_available is False:
            return None
        status, text = await get_text(self.control, "/metrics")
        if status != 200:
            self.metrics_available = False  # 404: no endpoint; anything else: not usable
            return None
        self.metrics_available = self.metrics_seen = True
        return text

    @contextlib.asynccontextmanager
    async def measure(self, result: dict[str, Any]) -> AsyncIterator[None]:
        """Adds `client_cpu_s`, `server_cpu_s` and (when /metrics exists) `metrics` to result."""
        before_text = await self._scrape()
        client_cpu, server_cpu = time.process_time(), process_cpu_s(self.server_pid)
        yield
        result["client_cpu_s"] = round(time.process_time() - client_cpu, 3)
        server_after = process_cpu_s(self.server_pid)
        result["server_cpu_s"] = (
            round(server_after - server_cpu, 3)
            if server_after is not None and server_cpu is not None
            else None
        )
        after_text = await self._scrape()
        if before_text is not None and after_text is not None:
            result["metrics"] = phase_metrics(before_text, after_text)


async def run_benchmark(
    base: str, args: argparse.Namespace, bodies: Sequence[bytes], server_pid: int | None
) -> dict[str, Any]:
    """Every phase named in `args.phases` against `base`; the results without run metadata."""
    headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    result: dict[str, Any] = {}
    async with make_client(base, 2, 10.0, headers) as control:
        probe = PhaseProbe(control, server_pid, scrape=not args.no_metrics)
        plain_http = httpx.URL(base).scheme == "http"  # the lean client's only scheme
        for key, lean in (("sequential", False), ("sequential_lean", True)):
            if key not in args.phases or (lean and not plain_http):
                continue
            phase: dict[str, Any] = {}
            async with probe.measure(phase):
                phase.update(
                    await run_sequential(
                        base, bodies, args.requests, args.warmup, args.timeout, headers, lean
                    )
                )
            result[key] = phase
        for key, lean in (("throughput", False), ("throughput_lean", True)):
            if key not in args.phases or (lean and not plain_http):
                continue
            levels = []
            for concurrency in args.concurrency:
                phase = {}
                async with probe.measure(phase):
                    phase.update(
                        await run_closed_loop(
                            base,
                            bodies,
                            concurrency,
                            args.duration,
                            args.warmup_s,
                            args.timeout,
                            headers,
                            args.backoff_429,
                            lean,
                        )
                    )
                levels.append(phase)
            result[key] = levels
            if levels and not lean:  # the overload phase's rate is set from httpx's best
                best = max(levels, key=lambda level: level["qps_200"])
                result["best"] = {"concurrency": best["concurrency"], "qps_200": best["qps_200"]}
        if "overload" in args.phases:
            base_qps = args.overload_rate or result.get("best", {}).get("qps_200", 0.0)
            rate = base_qps if args.overload_rate else args.overload_factor * base_qps
            if rate <= 0:
                result["overload"] = {
                    "skipped": "no rate: no 200 throughput and no --overload-rate"
                }
            else:
                phase = {"factor": None if args.overload_rate else args.overload_factor}
                phase["base_qps"] = None if args.overload_rate else base_qps
                async with probe.measure(phase):
                    phase.update(
                        await run_open_loop(
                            base,
                            bodies,
                            rate,
                            args.overload_duration,
                            args.arrivals,
                            args.seed,
                            args.overload_connections,
                            args.timeout,
                            headers,
                        )
                    )
                status, _ = await get_text(control, "/healthz")
                phase["healthz_status"] = status
                phase["server_up"] = status == 200
                result["overload"] = phase
        result["metrics_endpoint"] = probe.metrics_seen
    return result


# --- reporting -------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _counts(counts: Mapping[str, int]) -> str:
    return " ".join(f"{key}:{value}" for key, value in counts.items()) or "-"


def format_summary(result: Mapping[str, Any]) -> str:
    """A plain-text table of a result (sequential, throughput levels, overload, stage means)."""
    lines = [f"load test of {result.get('name')} at {result.get('url')}"]
    for phase_key, title in (("sequential", "sequential"), ("sequential_lean", "lean client")):
        seq = result.get(phase_key)
        if not seq:
            continue
        client, server = seq["client_ms"], seq["server_took_ms"]
        lines += [
            "",
            f"{title} ({client['count']} answers of 200)  p50    p90    p99    mean  (ms)",
            "  client                   "
            + " ".join(f"{_fmt(client[key]):>6}" for key in ("p50", "p90", "p99", "mean")),
            "  server took_ms           "
            + " ".join(f"{_fmt(server[key]):>6}" for key in ("p50", "p90", "p99", "mean")),
            f"  statuses {_counts(seq['statuses'])}  errors {_counts(seq['errors'])}",
        ]
    for key, title in (("throughput", "concurrency"), ("throughput_lean", "lean client")):
        levels = result.get(key) or []
        if not levels:
            continue
        lines += ["", f"{title}   q/s(200)   p50 ms   p99 ms   cpu client/server s  statuses"]
        for level in levels:
            lat = level["latency_ms_200"]
            cpu = f"{_fmt(level.get('client_cpu_s'))}/{_fmt(level.get('server_cpu_s'))}"
            errors = f" errors {_counts(level['errors'])}" if level["errors"] else ""
            lines.append(
                f"{level['concurrency']:>11}   {level['qps_200']:>8.1f}   {_fmt(lat['p50']):>6}"
                f"   {_fmt(lat['p99']):>6}   {cpu:>19}  {_counts(level['statuses'])}{errors}"
            )
    over = result.get("overload")
    if over and "skipped" in over:
        lines += ["", f"overload: skipped ({over['skipped']})"]
    elif over:
        lat, lat_send = over["latency_ms_200"], over["latency_from_send_ms_200"]
        lines += [
            "",
            f"overload ({over['arrivals']}, target {over['target_rate']:.1f} q/s, offered "
            f"{over['offered_rate']:.1f} q/s, {over['duration_s']} s)",
            f"  statuses {_counts(over['statuses'])}  errors {_counts(over['errors'])}"
            f"  only 200/429: {over['only_200_429']}",
            f"  429 Retry-After: {over['retry_after']['with_header']} with, "
            f"{over['retry_after']['missing']} without; at most {over['max_in_flight']} in "
            f"flight on {over['connections']} connections",
            f"  200s: {over['qps_200']:.1f} q/s; p50/p99 {_fmt(lat['p50'])}/{_fmt(lat['p99'])} ms"
            f" from arrival, {_fmt(lat_send['p50'])}/{_fmt(lat_send['p99'])} ms from send",
            f"  server up afterwards: {over['server_up']} (GET /healthz {over['healthz_status']})",
        ]
    stage_rows = _stage_rows(result)
    if stage_rows:
        stages = list(dict.fromkeys(stage for _, means in stage_rows for stage in means))
        lines += ["", "mean ms per stage (GET /metrics, xc_stage_seconds)"]
        lines.append(f"{'phase':<22}" + "".join(f"{stage:>10}" for stage in stages))
        for label, means in stage_rows:
            cells = "".join(
                f"{_fmt(None if means.get(s) is None else 1000 * means[s], 2):>10}" for s in stages
            )
            lines.append(f"{label:<22}{cells}")
        lines += ["", "server-side ms from arrival to answer (xc_stage_seconds total, p50 / p99)"]
        for label, phase in _phases(result):
            total = phase.get("metrics", {}).get("stage_seconds", {}).get("total") or {}
            if total.get("p99_s") is not None:
                p50, p99 = 1000 * total["p50_s"], 1000 * total["p99_s"]
                lines.append(f"{label:<22}{_fmt(p50):>10}{_fmt(p99):>10}")
    return "\n".join(lines)


def _phases(result: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(label, phase result) of every phase that ran, in order."""
    phases: list[tuple[str, Mapping[str, Any]]] = []
    for key in ("sequential", "sequential_lean"):
        if result.get(key):
            phases.append((key, result[key]))
    for key, suffix in (("throughput", ""), ("throughput_lean", " lean")):
        phases += [
            (f"concurrency {lvl['concurrency']}{suffix}", lvl) for lvl in result.get(key) or []
        ]
    if result.get("overload") and "skipped" not in result["overload"]:
        phases.append(("overload", result["overload"]))
    return phases


def _stage_rows(result: Mapping[str, Any]) -> list[tuple[str, dict[str, float | None]]]:
    """(phase label, {stage: mean seconds}) for every phase that has stage metrics."""
    rows = []
    for label, phase in _phases(result):
        stages = phase.get("metrics", {}).get("stage_seconds")
        if stages:
            rows.append((label, {stage: info["mean_s"] for stage, info in stages.items()}))
    return rows


def plot_load(result: Mapping[str, Any], path: Path) -> Path:
    """Throughput and p50/p99 against concurrency, and the overload phase's answers by status."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_qps, ax_lat, ax_over) = plt.subplots(1, 3, figsize=(15, 4.5))
    conc: list[int] = []
    for key, client in (("throughput", "httpx"), ("throughput_lean", "lean client")):
        levels = result.get(key) or []
        if not levels:
            continue
        conc = [level["concurrency"] for level in levels]
        ax_qps.plot(conc, [level["qps_200"] for level in levels], "o-", label=client)
        for stat, style in (("p50", "o-"), ("p99", "s--")):
            values = [level["latency_ms_200"][stat] for level in levels]
            ax_lat.plot(
                conc,
                [math.nan if v is None else v for v in values],
                style,
                label=f"{stat}, {client}",
            )
    if conc:
        ax_qps.legend()
        ax_lat.legend()
        for ax in (ax_qps, ax_lat):
            ax.set_xscale("log", base=2)
            ax.set_xticks(conc, [str(c) for c in conc])
            ax.set_xlabel("concurrent clients (closed loop)")
            ax.grid(alpha=0.3)
    ax_qps.set_ylim(bottom=0)
    ax_qps.set_ylabel("queries/s answered 200")
    ax_qps.set_title("throughput")
    ax_lat.set_ylabel("latency of 200s (ms)")
    ax_lat.set_title("latency")
    over = result.get("overload")
    if over and "skipped" not in over:
        names = list(over["statuses"]) + list(over["errors"])
        counts = list(over["statuses"].values()) + list(over["errors"].values())
        colors = [
            "tab:green" if n == "200" else "tab:orange" if n == "429" else "tab:red" for n in names
        ]
        ax_over.bar(names, counts, color=colors)
        ax_over.set_title(
            f"overload: {over['target_rate']:.0f} q/s {over['arrivals']}, "
            f"server up: {over['server_up']}"
        )
    else:
        ax_over.set_title("overload: not run")
    ax_over.set_ylabel("answers (errors in red)")
    fig.suptitle(f"POST /search load, {result.get('name')} ({result['machine']['cpu_count']} CPUs)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- command line ----------------------------------------------------------------------------


def parse_levels(text: str) -> list[int]:
    """`8,32,128` -> [8, 32, 128] (positive integers)."""
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {text}"
        ) from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"concurrency levels must be >= 1: {text}")
    return levels


def parse_names(text: str, known: Sequence[str], what: str) -> list[str]:
    """`a, b` -> the names given, in order; each must be one of `known` (`what` names them in
    the message)."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(names) - set(known))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{what} are {', '.join(known)}; got {text!r}")
    return names


def parse_phases(text: str) -> list[str]:
    """`sequential,overload` -> the named phases (of `PHASES`)."""
    return parse_names(text, PHASES, "phases")


def parse_env_pair(text: str) -> tuple[str, str]:
    """`KEY=VALUE` -> (KEY, VALUE)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.load",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--bundle", type=Path, help="start `python -m service` on this bundle")
    target.add_argument("--url", help="measure an already-running server, e.g. http://host:8000")
    parser.add_argument("--data", type=Path, required=True, help="dataset; queries from a split")
    parser.add_argument("--split", default="dev", help="split the queries come from")
    parser.add_argument("--name", help="result name; None: the bundle's directory or /readyz name")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where JSON and PNG go")
    parser.add_argument("--k", type=int, default=10, help="k of every request")
    parser.add_argument(
        "--model", help="ask this model (astra, mach, hybrid); None: the server's default"
    )
    parser.add_argument(
        "--stream",
        choices=("distinct", "zipf"),
        default="distinct",
        help="the queries in order (distinct), or a seeded Zipf sample of them (repeats, as a "
        "real query log has: what the result cache is for)",
    )
    parser.add_argument(
        "--zipf-exponent", type=float, default=1.0, help="s of P(rank r) ~ 1/r^s (--stream zipf)"
    )
    parser.add_argument("--phases", type=parse_phases, default=list(PHASES), help="comma list")
    parser.add_argument("--requests", type=int, default=1000, help="sequential requests")
    parser.add_argument("--warmup", type=int, default=50, help="sequential warm-up requests")
    parser.add_argument(
        "--concurrency",
        type=parse_levels,
        default=[8, 32, 128],
        help="closed-loop levels, e.g. 8,32",
    )
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per level")
    parser.add_argument("--warmup-s", type=float, default=2.0, help="uncounted seconds per level")
    parser.add_argument(
        "--backoff-429", type=float, default=0.0, help="closed-loop pause after a 429 (s)"
    )
    parser.add_argument("--overload-factor", type=float, default=4.0, help="× best q/s")
    parser.add_argument("--overload-rate", type=float, help="open-loop q/s (overrides factor)")
    parser.add_argument("--overload-duration", type=float, default=10.0, help="seconds")
    parser.add_argument(
        "--overload-connections",
        type=int,
        default=1024,
        help="client pool; above the server's queue limit, so the server (not the client) sheds",
    )
    parser.add_argument(
        "--arrivals", choices=("poisson", "fixed"), default="poisson", help="open-loop arrivals"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the Poisson arrivals")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request timeout (s)")
    parser.add_argument("--api-key", help="bearer token; None: XC_API_KEY of --server-env, if any")
    parser.add_argument("--no-metrics", action="store_true", help="do not scrape GET /metrics")
    parser.add_argument("--no-uvloop", action="store_true", help="plain asyncio event loop")
    parser.add_argument("--no-plot", action="store_true", help="write no PNG")
    server = parser.add_argument_group("started server (without --url)")
    server.add_argument("--server-threads", type=int, default=1, help="XC_THREADS of the server")
    server.add_argument(
        "--server-env",
        type=parse_env_pair,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra server environment, repeatable (e.g. XC_MAX_BATCH=32); wins over threads",
    )
    server.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to /readyz")
    return parser


def machine_info() -> dict[str, Any]:
    """Platform, Python, CPU count and load average of this machine."""
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def skip_missing_sniffio() -> None:
    """Make `import sniffio` fail at once when sniffio is not installed.

    httpcore (1.0.x) imports sniffio on every request to tell asyncio from trio, and falls back
    to asyncio when it is missing (recent anyio no longer brings it). A failed import is not
    cached: each one searched sys.path again, ~0.3 ms of client CPU per call, several calls per
    request. A None entry in sys.modules makes the import raise ImportError immediately, which
    httpcore reads as asyncio, as before. Nothing changes where sniffio is installed.
    """
    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None


def run_loop(coro: Coroutine[Any, Any, T], use_uvloop: bool = True) -> tuple[T, str]:
    """Run a coroutine on uvloop when installed and wanted, else asyncio; (result, loop name)."""
    skip_missing_sniffio()
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(coro), "uvloop"
    return asyncio.run(coro), "asyncio"


def _served_model(base: str, api_key: str | None) -> dict[str, Any]:
    """What the server says it serves (`GET /v1/models`: encoder precision, catalog, ...);
    empty if it does not answer."""
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(f"{base}/v1/models", timeout=10.0, headers=headers, trust_env=False)
        return dict(response.json()["data"][0])
    except (httpx.HTTPError, ValueError, KeyError, IndexError):
        return {}


def _server_bundle_name(base: str) -> str:
    try:
        response = httpx.get(f"{base}/readyz", timeout=10.0, trust_env=False)
        return str(response.json().get("bundle") or "server")
    except (httpx.HTTPError, ValueError, AttributeError):
        return "server"


def main(argv: list[str] | None = None) -> int:
    """Run the load test, write `load_<name>.json` (and `.png`), print the summary."""
    args = build_parser().parse_args(argv)
    server_env = dict(args.server_env)
    if args.api_key is None:
        args.api_key = server_env.get("XC_API_KEY") or None
    queries = load_dataset(args.data).split(args.split).texts
    if not queries:
        raise SystemExit(f"no queries in the {args.split} split of {args.data}")
    bodies = encode_bodies(queries, args.k, args.model)
    if args.stream == "zipf":
        bodies = zipf_stream(bodies, args.zipf_exponent, args.seed)
    started = datetime.now(UTC)
    machine = machine_info()
    with contextlib.ExitStack() as stack:
        if args.url:
            base, pid = args.url.rstrip("/"), None
            name = args.name or _server_bundle_name(base)
        else:
            server = stack.enter_context(
                server_process(
                    args.bundle,
                    free_port(),
                    args.server_threads,
                    timeout_s=args.ready_timeout,
                    env=server_env,
                )
            )
            base, pid = server.base, server.process.pid
            name = args.name or args.bundle.resolve().name
        served = _served_model(base, args.api_key)
        phases, loop_name = run_loop(
            run_benchmark(base, args, bodies, pid), use_uvloop=not args.no_uvloop
        )
    result: dict[str, Any] = {
        "name": name,
        "command": shlex.join(
            ["python", "-m", "bench.load", *(sys.argv[1:] if argv is None else argv)]
        ),
        "date": started.isoformat(timespec="seconds"),
        "machine": machine,
        "url": args.url or base,
        "server": None
        if args.url
        else {
            "bundle": str(args.bundle),
            "threads": args.server_threads,
            "env": {k: "***" if k == "XC_API_KEY" else v for k, v in server_env.items()},
        },
        "client": {"httpx": httpx.__version__, "event_loop": loop_name},
        "served": {
            "encoder_precision": served.get("encoder", {}).get("precision"),
            "encoder_size": served.get("encoder", {}).get("size"),
            "version": served.get("version"),
        },
        "settings": {
            "data": str(args.data),
            "split": args.split,
            "queries": len(queries),
            "stream": args.stream,
            "zipf_exponent": args.zipf_exponent if args.stream == "zipf" else None,
            "k": args.k,
            "model": args.model,
            "phases": args.phases,
            "concurrency": args.concurrency,
            "duration_s": args.duration,
            "warmup_s": args.warmup_s,
            "overload_factor": args.overload_factor,
            "overload_rate": args.overload_rate,
            "overload_duration_s": args.overload_duration,
            "arrivals": args.arrivals,
            "timeout_s": args.timeout,
        },
        **phases,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / f"load_{name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(format_summary(result))
    print(f"\nwrote {out}")
    if not args.no_plot:
        print(f"wrote {plot_load(result, args.out_dir / f'load_{name}.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
