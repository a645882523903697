"""Hostile clients against a real server, one kind at a time, while a single-query client probes.

    python -m bench.hostile --bundle models/demo [--kinds loris,uploads,big,refused]
                            [--probes 300] [--out FILE]

For each kind of attacker, a fresh `python -m service` process is started; the probe (one
single-query search after another, k = 10) measures its idle p99, then the attacker starts in
a process of its own (as a real hostile client would be: it shares the machine's cores, not the
probe's interpreter) and the probe measures its p99 again. The kinds:

- `loris`: 20 connections each sending a search body a byte every half second;
- `uploads`: 12 MB JSONL batch uploads (35,000 lines), back to back, two at a time;
- `big`: 256-query searches at k = 100 (25,600 results, the most one request may ask for);
- `refused`: 256-query searches at k = 1000 (over `XC_MAX_RESULTS`: refused at once).

The target (issue 18) is the probe's p99 under attack within 5x its idle p99, no 5xx, and the
server's peak memory under a stated bound. The figures go to `bench/results/hostile.json` (the
hostile-clients table of BENCHMARKS.md); `tests/service/test_faults_hostile.py` runs the same on
the demo bundle and asserts them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

from bench.provenance import command_line, machine
from bench.server import free_port, wait_until_ready

RESULTS = Path(__file__).resolve().parent / "results"
READY_TIMEOUT_S = 180.0
KINDS = ("loris", "uploads", "big", "refused")
QUERIES = ["cordless drill", "white paint", "garden hose", "led bulb", "copper pipe", "drill bit"]
WARM_PROBES = 50
ATTACK_WARMUP_S = 2.0
UPLOAD_LINES = 35_000
UPLOAD_CLIENTS = 2
# The attacker's own client-side work (building 256-query bodies, 12 MB uploads) runs at the
# lowest CPU priority: on a real deployment it runs on another machine, and on these two cores
# it would otherwise take CPU from the probe's client rather than from the server.
ATTACKER_NICENESS = 19
# What the attacker process prints once its payload is built; a request cut off without an
# answer is tallied under this status.
READY = "ready"
TRANSPORT_ERROR = -1


def probe(base: str, count: int) -> tuple[list[float], dict[int, int]]:
    """Seconds of `count` single-query searches, one after another, and the statuses seen."""
    seconds, statuses = [], {}
    with httpx.Client(base_url=base, timeout=30) as client:
        for i in range(count):
            start = time.perf_counter()
            response = client.post("/search", json={"query": QUERIES[i % len(QUERIES)], "k": 10})
            seconds.append(time.perf_counter() - start)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
    return seconds, statuses


# --- attackers (each runs in a process of its own: `python -m bench.hostile --attack KIND`) ---


Attack = Callable[[str, threading.Event, dict[int, int]], None]


def _tally(seen: dict[int, int], status: int) -> None:
    seen[status] = seen.get(status, 0) + 1


def slow_loris(base: str, stop: threading.Event, seen: dict[int, int]) -> None:
    """20 connections that each send a 100 kB body one byte every half second."""
    port = int(base.rsplit(":", 1)[1])
    sockets = []
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(
            b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n"
        )
        sockets.append(sock)
    while not stop.wait(0.5):
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.sendall(b" ")
    for sock in sockets:
        sock.close()
    seen[0] = len(sockets)  # connections held open


def uploads() -> Attack:
    """A 12 MB JSONL batch upload again and again, from two clients at once (the body is built
    before the attack starts: at nice 19 on a busy machine that alone could take seconds)."""
    body = b"".join(
        json.dumps({"custom_id": f"u{i}", "query": "cordless drill " * 20}).encode() + b"\n"
        for i in range(UPLOAD_LINES)
    )

    def attack(base: str, stop: threading.Event, seen: dict[int, int]) -> None:
        def client_loop() -> None:
            with httpx.Client(base_url=base, timeout=120) as client:
                while not stop.is_set():
                    try:
                        response = client.post("/batches", files={"file": ("u.jsonl", body)})
                    except httpx.TransportError:
                        _tally(seen, TRANSPORT_ERROR)
                        continue
                    _tally(seen, response.status_code)

        threads = [threading.Thread(target=client_loop) for _ in range(UPLOAD_CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    return attack


def searches(k: int) -> Callable[[], Attack]:
    """256-query searches at `k`, back to back."""

    def prepare() -> Attack:
        queries = [f"{QUERIES[i % len(QUERIES)]} {i}" for i in range(256)]

        def attack(base: str, stop: threading.Event, seen: dict[int, int]) -> None:
            with httpx.Client(base_url=base, timeout=120) as client:
                while not stop.is_set():
                    try:
                        response = client.post("/search", json={"queries": queries, "k": k})
                    except httpx.TransportError:
                        _tally(seen, TRANSPORT_ERROR)
                        continue
                    _tally(seen, response.status_code)

        return attack

    return prepare


# Each kind's preparation (its payload built), returning the attack itself.
ATTACKERS: dict[str, Callable[[], Attack]] = {
    "loris": lambda: slow_loris,
    "uploads": uploads,
    "big": searches(100),
    "refused": searches(1000),
}


def attack_until_stdin_closes(kind: str, base: str) -> None:
    """The attacker process: attack until the parent closes stdin, then print what was seen."""
    attack = ATTACKERS[kind]()
    print(READY, flush=True)  # the parent starts its clock now
    stop, seen = threading.Event(), {}
    thread = threading.Thread(target=attack, args=(base, stop, seen))
    thread.start()
    sys.stdin.read()
    stop.set()
    thread.join(timeout=180)
    print(json.dumps(seen))


# --- the measurement ---------------------------------------------------------------------------


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def child_pids(pid: int) -> set[int]:
    """The process's children (Linux: each of its threads' `children` list in /proc)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found |= {int(child) for child in (task / "children").read_text().split()}
    return found


def children_peak_rss_mb(pid: int) -> float:
    """The summed peak resident sets of the process's children (the upload checkers), MiB."""
    total = 0.0
    for child in child_pids(pid):
        with contextlib.suppress(OSError, RuntimeError):
            total += peak_rss_mb(child)
    return total


def p99_ms(seconds: list[float]) -> float:
    return round(float(np.percentile(seconds, 99)) * 1000, 2)


def measure(bundle: Path, kind: str, probes: int, work: Path, env: dict[str, str]) -> dict:
    """One fresh server: the probe's idle p99, then its p99 while `kind` attacks."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    stderr_path = work / f"{kind}.log"
    server_env = {
        **{name: value for name, value in os.environ.items() if name[:3] != "XC_"},
        "XC_DATA_DIR": str(work / f"data-{kind}"),
        "XC_LOG_LEVEL": "warning",
        "XC_REQUEST_TIMEOUT_MS": "5000",
        # The probe repeats six queries, which the result cache would answer from memory: what
        # is measured is the model's path under attack, so the cache is off.
        "XC_CACHE_ENTRIES": "0",
        **env,
    }
    command = [sys.executable, "-m", "service", "--bundle", str(bundle), "--port", str(port)]
    with stderr_path.open("wb") as stderr:
        server = subprocess.Popen(command, env=server_env, stdout=subprocess.DEVNULL, stderr=stderr)
    attacker = None
    try:
        wait_until_ready(server, base, stderr_path, READY_TIMEOUT_S)
        probe(base, WARM_PROBES)
        idle, _ = probe(base, probes)
        attacker = subprocess.Popen(
            [sys.executable, "-m", "bench.hostile", "--attack", kind, "--base", base],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            preexec_fn=lambda: os.nice(ATTACKER_NICENESS),
        )
        assert attacker.stdout is not None
        if attacker.stdout.readline().strip() != READY.encode():
            raise RuntimeError(f"the {kind} attacker did not start")
        time.sleep(ATTACK_WARMUP_S)
        hostile, probe_statuses = probe(base, probes)
        out, _ = attacker.communicate(b"", timeout=240)
        seen = {int(code): count for code, count in json.loads(out).items()}
        peak = peak_rss_mb(server.pid)
        children_peak = children_peak_rss_mb(server.pid)
        healthy = httpx.get(f"{base}/healthz", timeout=5).status_code == 200
    finally:
        if attacker is not None and attacker.poll() is None:
            attacker.kill()
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    result = {
        "kind": kind,
        "idle_p99_ms": p99_ms(idle),
        "hostile_p99_ms": p99_ms(hostile),
        "hostile_p50_ms": round(float(np.percentile(hostile, 50)) * 1000, 2),
        "ratio": round(p99_ms(hostile) / p99_ms(idle), 2),
        "probe_statuses": probe_statuses,
        "attacker_statuses": seen,
        "peak_rss_mb": round(peak, 1),
        "children_peak_rss_mb": round(children_peak, 1),
        "healthy_after": healthy,
    }
    print(json.dumps(result), flush=True)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Measure each kind (or, with --attack, be the attacker process) and write the JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__)
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--probes", type=int, default=300)
    parser.add_argument("--env", action="append", default=[], help="XC_NAME=value for the server")
    parser.add_argument("--out", type=Path, default=RESULTS / "hostile.json")
    parser.add_argument("--attack", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.attack:
        attack_until_stdin_closes(args.attack, args.base)
        return 0
    if args.bundle is None:
        parser.error("--bundle is required")
    env = dict(item.split("=", 1) for item in args.env)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="xc-hostile-") as work:
        runs = [
            measure(args.bundle, kind, args.probes, Path(work), env)
            for kind in args.kinds.split(",")
        ]
    record = {
        "command": command_line("bench.hostile", argv),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "seconds": round(time.perf_counter() - started, 1),
        "bundle": str(args.bundle),
        "probes": args.probes,
        "server_env": env,
        "runs": runs,
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
