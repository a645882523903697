"""Three replicas on one PostgreSQL database, measured for real: catalog propagation and batch
failover.

    python -m bench.fleet --bundle models/demo [--changes 200] [--kills 10] [--out FILE]

It starts a throwaway PostgreSQL server (`bench.postgres`) and three `python -m service`
processes sharing its database (`XC_DATABASE_URL`) and one data directory (the batch-job
files), then:

1. **Propagation.** `--changes` PUTs of one new product each, through the replicas in turn.
   From the moment a PUT is acknowledged, each of the two other replicas is searched for the
   new title every few milliseconds until its answer carries the acknowledged catalog version
   (`version` ends in `+c<n>`, n at least the PUT's) and lists the product. The figure is that
   delay, per replica (p50, p99, max).
2. **Failover.** `--kills` cycles: a batch job of `--requests` lines is submitted to a replica;
   once a chunk is being scored, the replica holding it (its pid is in the chunk's lease) is
   killed with SIGKILL and started again. At the end every job must complete with each
   `custom_id` answered exactly once and in input order; lost and duplicated answers are
   counted.

The figures go to `bench/results/fleet.json` (the FLEET table of BENCHMARKS.md);
`tests/service/test_fleet.py` runs the same with fewer changes and kills and asserts them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import psycopg

from bench.faults import check_outputs
from bench.postgres import new_database, running_server
from bench.provenance import command_line, machine
from bench.server import RestartableServer

RESULTS = Path(__file__).resolve().parent / "results"
# A change not visible on a replica after this long counts as not propagated.
VISIBLE_TIMEOUT_S = 10.0
# Short leases, so a killed replica's chunk is taken over within seconds.
LEASE_S = 3


@dataclass
class FleetTally:
    """What the run measured and counted."""

    replicas: int = 3
    changes: int = 0
    propagation_ms: list[float] = field(default_factory=list)
    not_propagated: int = 0
    kills: int = 0
    jobs_accepted: int = 0
    jobs_completed: int = 0
    answers_expected: int = 0
    answers_written: int = 0
    answers_missing: int = 0
    answers_duplicated: int = 0
    answers_out_of_order: int = 0
    server_errors: int = 0

    def summary(self) -> dict[str, object]:
        """The tally with the delays summarised (p50, p99, max) instead of listed."""
        record = asdict(self)
        delays = np.asarray(record.pop("propagation_ms") or [np.nan])
        record["propagation_ms"] = {
            "p50": round(float(np.percentile(delays, 50)), 1),
            "p99": round(float(np.percentile(delays, 99)), 1),
            "max": round(float(delays.max()), 1),
            "samples": int(np.isfinite(delays).sum()),
        }
        return record


def _catalog_version(answer: dict) -> int:
    version = answer["version"]
    return int(version.rsplit("+c", 1)[1]) if "+c" in version else 0


def _visible_after(client: httpx.Client, title: str, product: str, version: int) -> float | None:
    """Seconds until `client`'s replica answers at catalog version >= `version` with `product`
    among the results (None after VISIBLE_TIMEOUT_S)."""
    start = time.perf_counter()
    while time.perf_counter() - start < VISIBLE_TIMEOUT_S:
        answer = client.post("/search", json={"query": title, "k": 10}).json()
        found = {hit["id"] for hit in answer["results"]}
        if _catalog_version(answer) >= version and product in found:
            return time.perf_counter() - start
        time.sleep(0.002)
    return None


def propagation(replicas: list[RestartableServer], changes: int, tally: FleetTally) -> None:
    """PUT `changes` new products in turn through each replica; time their arrival elsewhere."""
    clients = [httpx.Client(base_url=r.base, timeout=10) for r in replicas]
    try:
        for n in range(changes):
            writer = n % len(replicas)
            product, title = f"FLEET-{n}", f"Quillwort {n} fleet probe lantern"
            put = clients[writer].put(
                "/products", json={"products": [{"id": product, "title": title}]}
            )
            tally.server_errors += put.status_code >= 500
            assert put.status_code == 200, put.text
            version = put.json()["catalog_version"]
            tally.changes += 1
            for other, client in enumerate(clients):
                if other == writer:
                    continue
                delay = _visible_after(client, title, product, version)
                if delay is None:
                    tally.not_propagated += 1
                else:
                    tally.propagation_ms.append(delay * 1000)
    finally:
        for client in clients:
            client.close()


def _submit(replica: RestartableServer, cycle: int, requests: int, tally: FleetTally) -> str:
    lines = [
        {"custom_id": f"c{cycle}-{i}", "query": f"cordless drill {i % 97}"} for i in range(requests)
    ]
    response = httpx.post(f"{replica.base}/batches", json={"requests": lines}, timeout=60)
    tally.server_errors += response.status_code >= 500
    assert response.status_code == 201, response.text
    tally.jobs_accepted += 1
    return response.json()["id"]


def _holder_pid(database: str, job: str, timeout_s: float = 60.0) -> int | None:
    """The pid of the replica scoring a chunk of `job` (from the chunk's lease owner)."""
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(database, autocommit=True) as conn:
        while time.monotonic() < deadline:
            rows = conn.execute(
                "SELECT owner FROM batch_chunks WHERE job_id = %s AND state = 'running'", (job,)
            ).fetchall()
            if rows:
                return int(rows[0][0].split(":")[1])
            time.sleep(0.02)
    return None


def failover(
    replicas: list[RestartableServer],
    database: str,
    kills: int,
    requests: int,
    rng: random.Random,
    tally: FleetTally,
) -> dict[str, int]:
    """Kill the replica holding a chunk, `kills` times, each during its own job; the jobs."""
    jobs: dict[str, int] = {}
    for cycle in range(kills):
        job = _submit(rng.choice([r for r in replicas if r.ready()]), cycle, requests, tally)
        jobs[job] = cycle
        pid = _holder_pid(database, job)
        time.sleep(rng.uniform(0.05, 0.5))
        victim = next((r for r in replicas if r.process and r.process.pid == pid), None)
        if victim is None:
            continue  # the job finished before a chunk could be caught (not a kill)
        victim.kill()
        tally.kills += 1
        victim.start(wait=False)
    for replica in replicas:
        replica.wait_ready()
    return jobs


def start_fleet(
    bundle: Path, database: str, work_dir: Path, count: int = 3
) -> list[RestartableServer]:
    """`count` replicas on `database` and one shared data directory, started and ready."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("XC_")},
        "XC_DATABASE_URL": database,
        "XC_DATA_DIR": str(work_dir / "shared-data"),
        "XC_BATCH_CHUNK": "64",
        "XC_BATCH_LEASE_S": str(LEASE_S),
        "XC_LOG_LEVEL": "warning",
        "XC_THREADS": "1",
        "XC_BATCH_WORKERS": "1",
    }
    replicas = [
        RestartableServer(name=f"r{i}", bundle=bundle, env=env, log=work_dir / f"r{i}.log")
        for i in range(count)
    ]
    for replica in replicas:
        replica.start(wait=False)
    for replica in replicas:
        replica.wait_ready()
    return replicas


def run(
    bundle: Path, changes: int, kills: int, requests: int, seed: int, work_dir: Path
) -> FleetTally:
    """The scenario of the module docstring on a fresh server; returns what it counted."""
    with running_server() as server:
        database = new_database(server)
        replicas = start_fleet(bundle, database, work_dir)
        try:
            tally = FleetTally()
            propagation(replicas, changes, tally)
            rng = random.Random(seed)
            jobs = failover(replicas, database, kills, requests, rng, tally)
            check_outputs(replicas[0].base, jobs, tally)
        finally:
            for replica in replicas:
                replica.kill()
    return tally


def main(argv: Sequence[str] | None = None) -> int:
    """Run the scenario and write its JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--requests", type=int, default=2000, help="lines per batch job")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "fleet.json")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="xc-fleet-") as work:
        tally = run(args.bundle, args.changes, args.kills, args.requests, args.seed, Path(work))
    record = {
        "command": command_line("bench.fleet", argv),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "seconds": round(time.perf_counter() - started, 1),
        "seed": args.seed,
        "lease_s": LEASE_S,
        "requests_per_job": args.requests,
        **tally.summary(),
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
