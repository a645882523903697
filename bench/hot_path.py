"""Where one search's time goes, stage by stage, seen from a lean client on the same machine.

    python -m bench.hot_path --bundle models/homedepot --data ../shared/data/homedepot/xc \\
        --variant now=. --variant before=/tmp/xc-before --requests 2000

Each variant is a `python -m service` started from a checkout (`name=DIR`, optionally
`name=DIR,XC_SETTING=value,...`), with default settings except the result cache, which is off so
that every request runs the model. All variants are started at once and take turns in blocks of
200 requests, so drift on a shared machine falls on each alike. One blocking keep-alive socket
sends the training queries one at a time (k = 10) and splits each round trip with the server's
`Server-Timing` header: `app` (the application, from the first middleware to its answer),
`search` (the route's search call) and the model's stages (tokenize, queue, encode, retrieve).
The table's rows are differences per request: outside the app (the client, the kernel and
uvicorn), the app outside the search (middleware, routing, validation, rendering, logging), the
search outside the model (cache lookup, admission, the hand-offs to and from the worker
thread), then each model stage. Results: `bench/results/hot_path.json`, rendered into
BENCHMARKS.md by `python -m bench.report`.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

from bench.load import encode_bodies, machine_info, parse_env_pair
from bench.server import free_port, stop_process, wait_until_ready
from training.data import load_dataset

RESULTS = Path("bench/results/hot_path.json")
BLOCK = 200
MODEL_STAGES = ("tokenize", "queue", "encode", "retrieve")
ROWS = ("round trip", "outside the app", "app outside the search", "search outside the model")


@dataclass
class Variant:
    """A server to measure: its name, the checkout it runs from and the settings it is given."""

    name: str
    directory: Path
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Variant:
        """`name=DIR[,XC_SETTING=value,...]`."""
        name, _, rest = text.partition("=")
        directory, *pairs = rest.split(",")
        if not name or not directory:
            raise argparse.ArgumentTypeError(f"variant: expected name=DIR[,KEY=VALUE], got {text}")
        env = dict(parse_env_pair(pair) for pair in pairs)
        return cls(name=name, directory=Path(directory).resolve(), env=env)


class RawConnection:
    """One blocking keep-alive socket that POSTs JSON and returns the status, the headers and the
    body: a few microseconds of client per request."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.head = f"Host: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        self.buffer = b""

    def post(self, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        request = f"POST {path} HTTP/1.1\r\n{self.head}Content-Length: {len(body)}\r\n\r\n"
        self.sock.sendall(request.encode("latin-1") + body)
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._receive()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        length = int(headers["content-length"])
        while len(self.buffer) < length:
            self.buffer += self._receive()
        answer, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(status_line.split()[1]), headers, answer

    def _receive(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        return chunk

    def close(self) -> None:
        self.sock.close()


def parse_server_timing(value: str) -> dict[str, float]:
    """`a;dur=1.5, b;dur=0.2` -> {"a": 1.5, "b": 0.2} (milliseconds)."""
    out = {}
    for entry in value.split(","):
        name, _, params = entry.strip().partition(";")
        for param in params.split(";"):
            key, _, number = param.strip().partition("=")
            if key == "dur":
                out[name] = float(number)
    return out


def split_round_trip(total_ms: float, timing: dict[str, float]) -> dict[str, float]:
    """One request's round trip split into the table's rows (milliseconds)."""
    model = sum(timing.get(stage, 0.0) for stage in MODEL_STAGES)
    return {
        "round trip": total_ms,
        "outside the app": total_ms - timing["app"],
        "app outside the search": timing["app"] - timing["search"],
        "search outside the model": timing["search"] - model,
        **{stage: timing.get(stage, 0.0) for stage in MODEL_STAGES},
    }


def start_server(variant: Variant, bundle: Path, log: Path) -> tuple[subprocess.Popen, int]:
    """The variant's server, ready; returns it and its port."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(variant.directory), "XC_CACHE_ENTRIES": "0"}
    env.update(variant.env)
    command = [sys.executable, "-m", "service", "--bundle", str(bundle.resolve())]
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [*command, "--port", str(port)],
            cwd=variant.directory,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    wait_until_ready(process, f"http://127.0.0.1:{port}", log, 300.0)
    return process, port


def served_encoder(port: int) -> str:
    """The encoder a server says it serves (`/v1/models`): size and precision."""
    models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).json()
    encoder = models["data"][0]["encoder"]
    return f"{encoder.get('size', 'full')} {encoder['precision']}"


def measure(
    variants: list[Variant], bundle: Path, bodies: list[bytes], requests: int
) -> tuple[dict[str, list[dict[str, float]]], dict[str, str]]:
    """Every variant's per-request rows, the variants taking turns in blocks of `BLOCK`, and
    the encoder each served."""
    rows: dict[str, list[dict[str, float]]] = {v.name: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="xc-hot-path-") as tmp:
        servers = [start_server(v, bundle, Path(tmp) / f"{v.name}.log") for v in variants]
        connections = [RawConnection(port) for _, port in servers]
        try:
            ports = [port for _, port in servers]
            encoders = {v.name: served_encoder(p) for v, p in zip(variants, ports, strict=True)}
            for connection in connections:  # warm each server and its connection
                for body in bodies[:50]:
                    connection.post("/search", body)
            for start in range(0, requests, BLOCK):
                for variant, connection in zip(variants, connections, strict=True):
                    for body in bodies[start : start + BLOCK]:
                        begun = time.perf_counter()
                        status, headers, _ = connection.post("/search", body)
                        total_ms = (time.perf_counter() - begun) * 1000
                        if status != 200:
                            raise RuntimeError(f"{variant.name}: /search answered {status}")
                        timing = parse_server_timing(headers["server-timing"])
                        rows[variant.name].append(split_round_trip(total_ms, timing))
        finally:
            for connection in connections:
                connection.close()
            for process, _ in servers:
                stop_process(process)
    return rows, encoders


def summarize(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """p50 and mean of each row (milliseconds)."""
    names = [*ROWS, *MODEL_STAGES]
    return {
        name: {
            "p50": round(float(np.median([r[name] for r in rows])), 4),
            "mean": round(float(np.mean([r[name] for r in rows])), 4),
        }
        for name in names
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hot_path", description=__doc__)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="queries: its training split")
    parser.add_argument("--variant", type=Variant.parse, action="append", required=True)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    names = [v.name for v in args.variant]
    if len(set(names)) != len(names):
        parser.error("variant: names must differ")
    queries = load_dataset(args.data).split("train").texts
    bodies = encode_bodies(queries[: args.requests + 50], k=10)
    load_before = os.getloadavg()
    rows, encoders = measure(args.variant, args.bundle, bodies, args.requests)
    record = {
        "command": "python -m bench.hot_path " + " ".join(argv or sys.argv[1:]),
        "date": datetime.now(UTC).date().isoformat(),
        "machine": machine_info(),
        "load_average_before": list(load_before),
        "requests": args.requests,
        "bundle": str(args.bundle),
        "variants": [
            {
                "name": v.name,
                "env": v.env,
                "encoder": encoders[v.name],
                "summary": summarize(rows[v.name]),
            }
            for v in args.variant
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    for variant in record["variants"]:
        cells = ", ".join(f"{k} {v['p50']:.3f}" for k, v in variant["summary"].items())
        print(f"{variant['name']}: {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
