"""Offline scoring throughput: the same request file through the CLI, the API worker and Ray.

    python -m bench.batch --bundle models/homedepot --data ../shared/data/homedepot/xc \
        --requests 100000 [--paths cli,worker,ray] [--env XC_ENCODER_PRECISION=int8]

Builds `--requests` lines by cycling the dataset's training queries, then times each path end
to end (model load included): `python -m service.batch` (local engine), a `python -m service`
server scoring it as a job (from POST /batches to status completed; upload not included), and
`python -m service.batch --engine ray` on a local Ray instance. Every path's output is checked
to hold each custom_id once, in order. Results go to `bench/results/batch_<bundle>.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import httpx

from bench.server import free_port, server_process
from training.data import load_dataset

RESULTS = Path(__file__).resolve().parent / "results"


def write_requests(path: Path, queries: list[str], count: int) -> list[str]:
    """`count` request lines cycling `queries`; returns their custom_ids in order."""
    ids = [f"r{i}" for i in range(count)]
    with path.open("w", encoding="utf-8") as handle:
        for i, custom_id in enumerate(ids):
            handle.write(json.dumps({"custom_id": custom_id, "query": queries[i % len(queries)]}))
            handle.write("\n")
    return ids


def check_output(lines: list[str], ids: list[str]) -> None:
    """Each custom_id exactly once, in input order."""
    got = [json.loads(line)["custom_id"] for line in lines]
    if got != ids:
        raise AssertionError(f"output has {len(got)} lines, not the {len(ids)} ids in order")


def run_cli(bundle: Path, source: Path, out: Path, env: dict[str, str], extra: list[str]) -> float:
    """Seconds for `python -m service.batch` over the file."""
    command = [sys.executable, "-m", "service.batch", "--bundle", str(bundle)]
    command += ["--input", str(source), "--output", str(out), "--no-progress", *extra]
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def run_worker(
    bundle: Path, source: Path, data_dir: Path, env: dict[str, str]
) -> tuple[float, str]:
    """Seconds from job creation to completion on a server, and the job's output."""
    env = {**env, "XC_DATA_DIR": str(data_dir), "XC_LOG_LEVEL": "warning"}
    with server_process(bundle, free_port(), 0, env=env) as server:
        client = httpx.Client(base_url=server.base, timeout=600)
        with source.open("rb") as handle:
            job = client.post("/batches", files={"file": ("requests.jsonl", handle)}).json()
        start = time.perf_counter()
        while client.get(f"/batches/{job['id']}").json()["status"] != "completed":
            time.sleep(0.2)
        seconds = time.perf_counter() - start
        return seconds, client.get(f"/batches/{job['id']}/output").text


def main(argv: list[str] | None = None) -> int:
    """Run the chosen paths and write the results JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.batch", description=__doc__)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--paths", default="cli,worker,ray")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for every path")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args(argv)

    env = {k: v for k, v in os.environ.items() if not k.startswith("XC_")}
    env.update(dict(pair.split("=", 1) for pair in args.env))
    queries = load_dataset(args.data).split("train").texts
    results: dict[str, Any] = {
        "command": "python -m bench.batch " + " ".join(argv or sys.argv[1:]),
        "date": date.today().isoformat(),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "requests": args.requests,
        "env": dict(pair.split("=", 1) for pair in args.env),
        "paths": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = work / "requests.jsonl"
        ids = write_requests(source, queries, args.requests)
        for path in args.paths.split(","):
            out = work / f"{path}.jsonl"
            if path == "cli":
                seconds = run_cli(args.bundle, source, out, env, [])
                check_output(out.read_text().splitlines(), ids)
            elif path == "ray":
                seconds = run_cli(args.bundle, source, out, env, ["--engine", "ray"])
                check_output(out.read_text().splitlines(), ids)
            elif path == "worker":
                seconds, text = run_worker(args.bundle, source, work / "data", env)
                check_output(text.splitlines(), ids)
            else:
                raise SystemExit(f"unknown path {path!r}: expected cli, worker or ray")
            results["paths"][path] = {
                "seconds": round(seconds, 2),
                "queries_per_s": round(args.requests / seconds, 1),
            }
            print(path, results["paths"][path], flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    target = args.out_dir / f"batch_{args.bundle.name}.json"
    target.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
