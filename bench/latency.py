"""Single-client latency of POST /search over HTTP against a real server process.

    python -m bench.latency --bundle models/homedepot --data ../shared/data/homedepot/xc

Starts `python -m service` on a free loopback port, waits for /readyz, sends warm-up requests,
then one request at a time (keep-alive, k=10 by default) with queries from the dataset's dev
split, and reports client-side p50/p90/p99 and the server's own `took_ms`. Results go to
`bench/results/latency_<bundle>.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import date
from pathlib import Path

import httpx
import numpy as np
from tqdm.auto import tqdm

from bench.server import free_port, running_server
from training.data import load_dataset

RESULTS = Path(__file__).resolve().parent / "results"


def percentiles(values: list[float]) -> dict[str, float]:
    """p50/p90/p99/mean of a list of milliseconds."""
    arr = np.asarray(values)
    return {
        "p50": float(np.percentile(arr, 50)),
        "p90": float(np.percentile(arr, 90)),
        "p99": float(np.percentile(arr, 99)),
        "mean": float(arr.mean()),
    }


def main() -> None:
    """Measure and write the single-client latency figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="queries come from its dev split")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    args = parser.parse_args()
    queries = load_dataset(args.data).split("dev").texts
    client_ms: list[float] = []
    server_ms: list[float] = []
    with (
        running_server(args.bundle, free_port(), args.threads) as base,
        httpx.Client(base_url=base, timeout=10.0) as client,
    ):
        for i in range(args.warmup):
            client.post("/search", json={"query": queries[i % len(queries)], "k": args.k})
        for i in tqdm(range(args.requests), desc="requests", unit="req"):
            body = {"query": queries[i % len(queries)], "k": args.k}
            started = time.perf_counter()
            response = client.post("/search", json=body)
            client_ms.append(1000.0 * (time.perf_counter() - started))
            response.raise_for_status()
            server_ms.append(response.json()["took_ms"])
    result = {
        "bundle": str(args.bundle),
        "date": date.today().isoformat(),
        "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}",
        "requests": args.requests,
        "k": args.k,
        "threads": args.threads,
        "client_ms": percentiles(client_ms),
        "server_took_ms": percentiles(server_ms),
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"latency_{args.bundle.name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
