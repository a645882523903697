"""Faults injected for real: the server killed with SIGKILL at random moments, again and again.

    python -m bench.faults --bundle models/demo [--cycles 20] [--seed 0] [--out FILE]

A real `python -m service` process on a fresh data directory is started, and in each cycle:

1. a batch job of `--requests` lines is submitted (accepted = answered 201);
2. a client PUTs products, two per request, one request after another, recording every PUT
   that was acknowledged (200) and the titles it set;
3. after a seeded random 0.2-1.5 s the server is killed with SIGKILL, mid-scoring and
   mid-upsert, and started again on the same data directory.

At the end the server runs until every accepted job has finished, and the run checks what it
promises: every accepted job completed, its output answering each `custom_id` exactly once and
in input order; every acknowledged change present after the restarts (the titles the last
acknowledged PUT set), and no PUT half applied (both products of a request, or neither); no
answer was a 5xx. The figures go to `bench/results/faults.json` (the RELIABILITY tables of
BENCHMARKS.md); `tests/service/test_faults_kill.py` runs the same with 20 cycles and asserts them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.provenance import command_line, machine
from bench.server import RestartableServer

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Tally:
    """What the run saw and what it found."""

    cycles: int = 0
    kills: int = 0
    jobs_accepted: int = 0
    jobs_completed: int = 0
    answers_expected: int = 0
    answers_written: int = 0
    answers_missing: int = 0
    answers_duplicated: int = 0
    answers_out_of_order: int = 0
    puts_acknowledged: int = 0
    changes_acknowledged: int = 0
    changes_lost: int = 0
    puts_half_applied: int = 0
    server_errors: int = 0
    transport_errors: int = 0
    statuses: dict[str, int] = field(default_factory=dict)

    def count(self, response: httpx.Response) -> None:
        """Count one answer by status (any 5xx is a server error)."""
        code = str(response.status_code)
        self.statuses[code] = self.statuses.get(code, 0) + 1
        self.server_errors += response.status_code >= 500


def _upserts(
    server: RestartableServer, stop: threading.Event, tally: Tally, acked: dict, puts: list
) -> None:
    """PUT two products per request until stopped; record the acknowledged ones."""
    n = len(puts)
    with httpx.Client(base_url=server.base, timeout=10) as client:
        while not stop.is_set():
            n += 1
            pair = [{"id": f"K{n}-{side}", "title": f"kill test {n} {side}"} for side in "ab"]
            puts.append(pair)
            try:
                response = client.put("/products", json={"products": pair})
            except httpx.TransportError:
                tally.transport_errors += 1  # the server died mid-request: not acknowledged
                return
            tally.count(response)
            if response.status_code == 200:
                tally.puts_acknowledged += 1
                for product in pair:
                    acked[product["id"]] = product["title"]


def _submit(server: RestartableServer, requests: int, cycle: int, tally: Tally) -> str | None:
    lines = [
        {"custom_id": f"c{cycle}-{i}", "query": f"cordless drill {i % 97}"} for i in range(requests)
    ]
    try:
        response = httpx.post(f"{server.base}/batches", json={"requests": lines}, timeout=30)
    except httpx.TransportError:
        tally.transport_errors += 1
        return None
    tally.count(response)
    if response.status_code != 201:
        return None
    tally.jobs_accepted += 1
    return response.json()["id"]


def check_outputs(base: str, jobs: dict[str, int], tally: Any) -> None:
    """Wait for every job (id -> cycle; its custom_ids are `c<cycle>-<i>`), then count into
    `tally` each output's missing, repeated and misplaced answers (also `bench.fleet`'s)."""
    with httpx.Client(base_url=base, timeout=30) as client:
        for job, cycle in jobs.items():
            deadline = time.monotonic() + 600
            while (status := client.get(f"/batches/{job}").json()["status"]) != "completed":
                assert status in ("validating", "in_progress"), f"{job}: {status}"
                assert time.monotonic() < deadline, f"{job} did not finish"
                time.sleep(0.1)
            tally.jobs_completed += 1
            total = client.get(f"/batches/{job}").json()["request_counts"]["total"]
            expected = [f"c{cycle}-{i}" for i in range(total)]
            output = client.get(f"/batches/{job}/output").text.splitlines()
            written = [json.loads(line)["custom_id"] for line in output]
            tally.answers_expected += len(expected)
            tally.answers_written += len(written)
            tally.answers_missing += len(set(expected) - set(written))
            tally.answers_duplicated += len(written) - len(set(written))
            tally.answers_out_of_order += written != expected and len(written) == len(set(written))


def _check_catalog(data_dir: Path, acked: dict[str, str], puts: list, tally: Tally) -> None:
    """Every acknowledged change on disk, no PUT half applied (read the store itself)."""
    with sqlite3.connect(data_dir / "catalog.sqlite3") as db:
        stored = dict(db.execute("SELECT id, title FROM catalog_products"))
    tally.changes_acknowledged = len(acked)
    tally.changes_lost = sum(stored.get(product) != title for product, title in acked.items())
    tally.puts_half_applied = sum(
        (pair[0]["id"] in stored) != (pair[1]["id"] in stored) for pair in puts
    )


def run(bundle: Path, cycles: int, seed: int, requests: int, work_dir: Path) -> Tally:
    """The scenario of the module docstring; returns what it counted."""
    rng = random.Random(seed)
    data_dir = work_dir / "data"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("XC_")},
        "XC_DATA_DIR": str(data_dir),
        "XC_BATCH_CHUNK": "25",
        "XC_LOG_LEVEL": "warning",
    }
    server = RestartableServer(name="server", bundle=bundle, env=env, log=work_dir / "server.log")
    tally, acked, puts, jobs = Tally(), {}, [], {}
    try:
        server.start()
        for cycle in range(cycles):
            job = _submit(server, requests, cycle, tally)
            if job is not None:
                jobs[job] = cycle
            stop = threading.Event()
            writer = threading.Thread(target=_upserts, args=(server, stop, tally, acked, puts))
            writer.start()
            time.sleep(rng.uniform(0.2, 1.5))
            server.kill()
            tally.kills += 1
            stop.set()
            writer.join()
            server.start()
            tally.cycles += 1
        check_outputs(server.base, jobs, tally)
    finally:
        server.kill()
    _check_catalog(data_dir, acked, puts, tally)
    return tally


def main(argv: Sequence[str] | None = None) -> int:
    """Run the scenario and write its JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--requests", type=int, default=600, help="lines per batch job")
    parser.add_argument("--out", type=Path, default=RESULTS / "faults.json")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="xc-faults-") as work:
        tally = run(args.bundle, args.cycles, args.seed, args.requests, Path(work))
    record = {
        "command": command_line("bench.faults", argv),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "seconds": round(time.perf_counter() - started, 1),
        "seed": args.seed,
        "requests_per_job": args.requests,
        **asdict(tally),
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
