"""Encode + retrieve in process, on the device `XC_DEVICE` picks: single-query latency and
batched throughput, the figures the GPU targets are stated in.

    python -m bench.gpu --bundle models/homedepot --data ../shared/data/homedepot/xc --device cuda

Targets (issue 6, one H100): single-query p50 <= 2 ms, batched >= 20,000 queries/s. The same
command runs on a CPU (`--device cpu`) for the baseline. What is timed is `SearchEngine.rank`:
tokenize, encode, retrieve the top k (no HTTP, no result objects), for each model the bundle
answers with. Queries are the dataset's test points, or its training queries when it has no test
split; one warm-up batch runs first. Writes `bench/results/gpu_<bundle>_<device>.json`.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from bench.load import latency_summary
from bench.provenance import command_line, machine, versions
from bench.timing import single_query_ms
from service.search.engine import SearchEngine
from training.data import load_dataset

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = {"single_p50_ms": 2.0, "batched_qps": 20_000.0}
PACKAGES = ["onnxruntime", "onnxruntime-gpu", "faiss-cpu", "faiss-gpu-cu12", "cupy-cuda12x"]


def batched_qps(engine: SearchEngine, queries: list[str], batch: int, k: int, model: str) -> float:
    """Queries per second ranking `queries` in batches of `batch`, after one warm-up batch."""
    engine.rank(queries[:batch], k, model)
    started = time.perf_counter()
    for start in range(0, len(queries), batch):
        engine.rank(queries[start : start + batch], k, model)
    return len(queries) / (time.perf_counter() - started)


def measure(
    engine: SearchEngine, queries: list[str], k: int, singles: int, batches: list[int]
) -> dict[str, Any]:
    """Single-query latency and batched throughput of every model of `engine`."""
    by_model: dict[str, Any] = {}
    for model in engine.models:

        def rank_one(start: int, stop: int, model: str = model) -> np.ndarray:
            return engine.rank(queries[start:stop], k, model)[1]

        single = latency_summary(single_query_ms(rank_one, singles, desc=f"{model}: single"))
        qps = {str(b): round(batched_qps(engine, queries, b, k, model), 1) for b in batches}
        by_model[model] = {"single_ms": single, "batched_qps": qps}
    return by_model


def main(argv: list[str] | None = None) -> int:
    """Measure, print a Markdown table, write the JSON; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="dataset the queries come from")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--precision", choices=["fp32", "int8"], default="fp32")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0 = all)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--queries", type=int, default=4096, help="queries per batched run")
    parser.add_argument("--singles", type=int, default=500, help="queries timed one by one")
    parser.add_argument("--batches", default="64,256,1024", help="batch sizes, comma-separated")
    parser.add_argument("--out", type=Path, help="results JSON (default under bench/results/)")
    args = parser.parse_args(argv)

    dataset = load_dataset(args.data)
    split = dataset.tst if dataset.tst is not None else dataset.trn
    texts = split.texts
    queries = [texts[i % len(texts)] for i in range(args.queries)]
    engine = SearchEngine.load(
        args.bundle, threads=args.threads, device=args.device, precision=args.precision
    )
    devices = engine.devices.describe()
    batches = [int(b) for b in args.batches.split(",")]
    by_model = measure(engine, queries, args.k, min(args.singles, len(queries)), batches)

    on_gpu = engine.devices.encoder_on_gpu
    result = {
        "date": date.today().isoformat(),
        "command": command_line("bench.gpu", argv),
        "machine": machine(),
        "versions": versions(PACKAGES),
        "bundle": engine.manifest.name,
        "labels": engine.manifest.labels.count,
        "devices": devices,
        "precision": args.precision,
        "k": args.k,
        "targets": TARGETS if on_gpu else None,
        "models": by_model,
    }
    name = f"gpu_{engine.manifest.name}_{'cuda' if on_gpu else 'cpu'}.json"
    out = args.out or RESULTS / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")

    print(f"{engine.manifest.name}, {engine.manifest.labels.count:,} labels, devices {devices}")
    header = " | ".join(f"q/s @ {b}" for b in batches)
    print(f"| model | single p50 ms | single p99 ms | {header} |")
    print("|---|---|---|" + "---|" * len(batches))
    for model, figures in by_model.items():
        single = figures["single_ms"]
        qps = " | ".join(f"{figures['batched_qps'][str(b)]:,.0f}" for b in batches)
        print(f"| {model} | {single['p50']} | {single['p99']} | {qps} |")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
