"""Index cost as the label space grows: FAISS flat, HNSW, IVF, a 4-bit PQ scan and MACH, K to 10^7.

    python -m bench.scale                                  # K = 20K, 100K, 1M (`make bench`)
    python -m bench.scale --sizes 10000000 --merge         # adds K = 10M (`make bench-10m`)
    python -m bench.scale --sizes 20000 --calibrate models/homedepot   # + real-vector check

For each K a synthetic label space of unit vectors (d = 384, `bench.synthetic`: a category
tree plus a continuous manifold, fitted to the Home Depot classifier vectors) and 1,000
queries. Exact top-10 by blocked exact search (FAISS knn over blocks of labels) is the ground
truth. Every index is built by `service.astra.index.build_index` and searched through
`AnnIndex.search`, the serving path, at a sweep of its search setting (HNSW efSearch, IVF
nprobe, IVF-PQ nprobe x refine_k, the 4-bit PQ scan's refine_k) and reported with:

- recall@10 against the exact top-10, over all queries;
- single-query latency (p50, p99 over `--latency-queries` queries, one at a time, FAISS on one
  thread: the service runs one search per worker thread, XC_THREADS = cores / workers);
- batched throughput (all queries in batches of 256, FAISS on all cores);
- build time (all cores) and memory (the serialised index's bytes).

Above 2M labels vectors are kept as float16 (10^7 x 384 fp32 is 15 GB, more than this
machine can hold twice), the exact scan is an fp16 flat index, and only the exact scan, IVF-PQ
and the 4-bit PQ scan are built unless --types says otherwise (HNSW and IVF-Flat at 10^7 need
the fp32 vectors and, for HNSW, hours of build on 2 cores).

MACH at the same K (`bench.mach_decode`'s graded scenario and code, R = 16, B the power of
two nearest K/256): output layer (R·hidden·B fp32) plus decoder table memory, and the time of
the output layer's matmul + log-sigmoid plus fast decoding (top-m buckets) of one query,
against the one-vs-all layer: K·d fp32 and a dense matmul + top-k over all K, which is the
exact flat scan measured above.

Results: `bench/results/scale.json`, `scale_recall_latency.png` (recall@10 against latency,
one panel per K) and `scale_latency_by_k.png` (latency and memory against K at recall@10 >=
0.95). Where an HNSW index was measured at two sizes of 1M labels or more, its build time,
memory, recall and latency are fitted and carried to `--extrapolate-to` (10M: a graph that
takes hours to build here), `bench.scale_fit`, plotted in `scale_extrapolated.png`.
`--merge` keeps the sizes already in the JSON that this run does not measure, and within a size
the index types (and MACH) it does not measure, each with the run that measured it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import date
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm.auto import tqdm

from bench import mach_decode
from bench.load import latency_summary
from bench.provenance import command_line, machine, versions
from bench.scale_fit import extrapolate
from bench.synthetic import synthetic_label_space
from bench.timing import rank_all, single_query_ms
from service.astra.index import HNSW_TYPES, AnnIndex, build_index, default_index_spec

RESULTS = Path(__file__).resolve().parent / "results"
K_TOP = 10
BATCH = 256
TARGET_RECALLS = (0.9, 0.95, 0.99)
PLOT_RECALL = 0.95
FP16_ABOVE = 2_000_000
EXACT_BLOCK = 1 << 20
# Queries timed one by one (and batched) for the exact scan: fewer at large K, where each
# takes long.
EXACT_SCAN_WORK = 3 * 10**8
EXACT_BATCHED_WORK = 10**9
SWEEPS: dict[str, list[dict[str, int]]] = {
    "flat": [{}],
    "hnsw": [{"ef_search": ef} for ef in (16, 32, 64, 128, 256, 512, 1024)],
    "hnsw_sq8": [{"ef_search": ef} for ef in (64, 128, 256, 512, 1024)],
    "ivf_flat": [{"nprobe": n} for n in (4, 8, 16, 32, 64, 128, 256, 512)],
    "ivf_pq": [{"nprobe": n, "refine_k": r} for n in (16, 64, 256, 512) for r in (1, 4, 16)],
    "pq4_scan": [{"refine_k": r} for r in (16, 64, 256, 512, 1024)],
}
ALL_TYPES = tuple(SWEEPS)
LARGE_TYPES = ("flat", "ivf_pq", "pq4_scan")
LIBRARIES = ("faiss-cpu", "numpy", "matplotlib")


def exact_top_k(labels: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k label ids by inner product [n, k], scanning blocks of labels (any dtype)."""
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    for start in tqdm(range(0, len(labels), EXACT_BLOCK), desc="exact top-k", leave=False):
        block = np.ascontiguousarray(labels[start : start + EXACT_BLOCK], dtype=np.float32)
        scores, ids = faiss.knn(queries, block, k, metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(scores, ids + start)
    heap.finalize()
    return heap.I


def build_exact_fp16(labels: np.ndarray) -> faiss.Index:
    """The exact scan over float16 vectors (used where fp32 does not fit)."""
    index = faiss.IndexScalarQuantizer(
        labels.shape[1], faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
    )
    for start in range(0, len(labels), EXACT_BLOCK):
        index.add(np.ascontiguousarray(labels[start : start + EXACT_BLOCK], dtype=np.float32))
    return index


def index_bytes(index: faiss.Index) -> int:
    """Bytes of the serialised index (what a bundle stores and the service holds), counted as
    FAISS writes it, without holding a copy (10^7 vectors in fp16 are 7.7 GB)."""
    total = 0

    def count(chunk: bytes) -> int:
        nonlocal total
        total += len(chunk)
        return len(chunk)

    writer = faiss.PyCallbackIOWriter(count)
    faiss.write_index(index, writer)
    del writer  # flushes
    return total


def measure_setting(
    index: AnnIndex, queries: np.ndarray, truth: np.ndarray, latency_queries: int, desc: str
) -> dict[str, Any]:
    """Recall, batched throughput and single-query latency of one index at one setting."""

    def rank(start: int, stop: int) -> np.ndarray:
        return index.search(queries[start:stop], K_TOP)[1]

    threads = faiss.omp_get_max_threads()
    found, seconds = rank_all(rank, len(queries), K_TOP, BATCH, desc=f"{desc} batched")
    faiss.omp_set_num_threads(1)
    try:
        latency = single_query_ms(rank, latency_queries, desc=f"{desc} single")
    finally:
        faiss.omp_set_num_threads(threads)
    return {
        "recall_at_10": mach_decode.recall_at_k(truth, found),
        "latency_ms": latency_summary(latency),
        "latency_queries": latency_queries,
        "batched_queries": len(queries),
        "batched_qps": len(queries) / seconds,
    }


def operating_points(sweep: list[dict[str, Any]]) -> dict[str, dict[str, Any] | None]:
    """Per target recall, the setting with the lowest p50 latency that reaches it (or None)."""
    points = {}
    for target in TARGET_RECALLS:
        good = [row for row in sweep if row["recall_at_10"] >= target]
        best = min(good, key=lambda row: row["latency_ms"]["p50"]) if good else None
        points[f"{target:.2f}"] = best
    return points


def bench_index(
    index_type: str,
    labels: np.ndarray,
    queries: np.ndarray,
    truth: np.ndarray,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Build one index type over `labels` and measure it at every setting of its sweep."""
    num_labels = len(labels)
    spec = default_index_spec(num_labels, index_type, labels.shape[1])
    if index_type == "hnsw" and args.hnsw_ef_construction:
        spec.params["ef_construction"] = args.hnsw_ef_construction
    fp16_scan = index_type == "flat" and labels.dtype == np.float16
    began = time.perf_counter()
    faiss_index = build_exact_fp16(labels) if fp16_scan else build_index(labels, spec)
    build_s = time.perf_counter() - began
    size = index_bytes(faiss_index)
    row: dict[str, Any] = {
        "type": index_type + (" (fp16)" if fp16_scan else ""),
        "params": spec.params,
        "build_s": build_s,
        "bytes": size,
        "bytes_per_label": size / num_labels,
    }
    if index_type == "ivf_pq" and spec.params["refine_k"]:
        codes = index_bytes(faiss.downcast_index(faiss_index.base_index))
        row["bytes_without_refine_copy"] = codes
    latency_queries = args.latency_queries
    if index_type == "flat":
        latency_queries = min(latency_queries, max(20, EXACT_SCAN_WORK // num_labels))
        batched = max(100, EXACT_BATCHED_WORK // num_labels)
        queries, truth = queries[:batched], truth[:batched]
    sweep = []
    for setting in SWEEPS[index_type]:
        if setting.get("nprobe", 0) > spec.params.get("nlist", num_labels):
            continue  # all lists are probed at nprobe = nlist already
        tuned = spec.model_copy(update={"params": {**spec.params, **setting}})
        desc = f"K={num_labels:,} {index_type} {setting}"
        measured = measure_setting(
            AnnIndex(faiss_index, tuned), queries, truth, latency_queries, desc
        )
        sweep.append({"setting": setting, **measured})
    row["sweep"] = sweep
    row["best_at_recall"] = operating_points(sweep)
    return row


def mach_layer_ms(hidden: int, outputs: int, repeats: int = 200) -> float:
    """Median ms of one query's MACH output layer ([1, hidden] @ [hidden, R·B], log-sigmoid),
    numpy on one thread."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    features = rng.standard_normal((1, hidden), dtype=np.float32)
    weights = rng.standard_normal((hidden, outputs), dtype=np.float32)
    times = []
    with threadpool_limits(1):
        for _ in range(repeats):
            began = time.perf_counter()
            mach_decode._log_sigmoid_(features @ weights)
            times.append(1000.0 * (time.perf_counter() - began))
    return float(np.median(times))


def bench_mach(num_labels: int, args: argparse.Namespace) -> dict[str, Any]:
    """MACH memory and decode time at K, with `bench.mach_decode`'s defaults (graded scores)."""
    mach_args = mach_decode.build_parser().parse_args(
        [
            "--queries", str(args.mach_queries),
            "--exact-queries", str(args.mach_queries // 4),
            "--scenarios", "graded",
            "--min-hits", "1",
            "--top-buckets", *map(str, args.mach_top_buckets),
        ]
    )  # fmt: skip
    buckets = mach_decode.default_buckets(num_labels)
    result = mach_decode.bench_labels(num_labels, buckets, mach_args)
    scenario = result["scenarios"][0]
    layer_ms = mach_layer_ms(mach_args.hidden, mach_args.reps * buckets)
    return {
        "reps": mach_args.reps,
        "buckets": buckets,
        "hidden": mach_args.hidden,
        "memory_mib": result["memory_mib"],
        "output_layer_ms": layer_ms,
        "exact_decode_ms": scenario["exact_ms"]["n1"]["p50"],
        "fast": [
            {
                "top_buckets": row["top_buckets"],
                "decode_ms": row["n1"]["p50"],
                "total_ms": layer_ms + row["n1"]["p50"],
                "recall_at_10_vs_exact_decode": row["recall_at_10"],
            }
            for row in scenario["fast"]
        ],
    }


def bench_space(
    labels: np.ndarray, queries: np.ndarray, types: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    """Exact ground truth, then every index type of `types` over one label space."""
    began = time.perf_counter()
    truth = exact_top_k(labels, queries, K_TOP)
    exact_s = time.perf_counter() - began
    indexes = [bench_index(kind, labels, queries, truth, args) for kind in types]
    return {
        "labels": len(labels),
        "dim": labels.shape[1],
        "vector_dtype": str(labels.dtype),
        "queries": len(queries),
        "exact_ground_truth_s": exact_s,
        "indexes": indexes,
    }


def bench_size(num_labels: int, args: argparse.Namespace) -> dict[str, Any]:
    """One synthetic label space of `num_labels`: indexes, MACH and the one-vs-all layer."""
    load_before = os.getloadavg()
    dtype = np.float16 if num_labels > FP16_ABOVE else np.float32
    began = time.perf_counter()
    labels, queries = synthetic_label_space(num_labels, args.queries, args.dim, args.seed, dtype)
    generate_s = time.perf_counter() - began
    types = args.types or list(LARGE_TYPES if dtype == np.float16 else ALL_TYPES)
    result = bench_space(labels, queries, types, args)
    del labels
    result["generate_s"] = generate_s
    if args.mach_queries:
        result["mach"] = bench_mach(num_labels, args)
    flat = next((row for row in result["indexes"] if row["type"].startswith("flat")), None)
    result["one_vs_all"] = {
        "memory_mib": num_labels * args.dim * 4 / mach_decode.MIB,
        "ms": flat["sweep"][0]["latency_ms"]["p50"] if flat else None,
        "measured_as": flat["type"] if flat else None,
    }
    result["measured"] = {
        "date": date.today().isoformat(),
        "command": command_line("bench.scale"),
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "types": [_base_type(row) for row in result["indexes"]],
    }
    return result


def _base_type(row: dict[str, Any]) -> str:
    """An index row's type without its note: `flat (fp16)` is a `flat`."""
    return row["type"].split(" ")[0]


def merge_size(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """One size's results after a run that measured `new` (a subset of the index types, maybe
    without MACH): the index rows and MACH figures it did not measure are kept from `old`, and
    the earlier runs are listed under `earlier_runs`, so every row keeps its provenance."""
    if old is None:
        return new
    measured_types = {_base_type(row) for row in new["indexes"]}
    kept = [row for row in old["indexes"] if _base_type(row) not in measured_types]
    indexes = sorted([*kept, *new["indexes"]], key=lambda row: ALL_TYPES.index(_base_type(row)))
    merged = {**old, **new, "indexes": indexes}  # MACH's figures stay old's unless new has some
    if new["one_vs_all"]["ms"] is None:
        merged["one_vs_all"] = old["one_vs_all"]
    old_types = old["measured"].get("types") or [_base_type(row) for row in old["indexes"]]
    earlier = [*old.get("earlier_runs", []), {**old["measured"], "types": old_types}]
    for run in earlier:
        run["types"] = [kind for kind in run["types"] if kind not in measured_types]
    merged["earlier_runs"] = [run for run in earlier if run["types"]]
    return merged


def calibration(args: argparse.Namespace) -> dict[str, Any]:
    """The same measurements on a bundle's real classifier vectors with its dataset's encoded
    dev queries, and on a synthetic space of the same size: how realistic the generator is."""
    from service.bundle import load_bundle
    from service.search.encoder import QueryEncoder
    from training.data import load_dataset
    from training.evaluate import EvalSet

    bundle = load_bundle(args.calibrate)
    data_dir = args.calibrate_data or Path(bundle.manifest.training["data_path"])
    texts = EvalSet.of(load_dataset(data_dir), "dev").texts[: args.queries]
    encoder = QueryEncoder(bundle_dir=args.calibrate, spec=bundle.manifest.encoder)
    real_queries = np.concatenate(
        [encoder.encode(texts[i : i + 64]) for i in range(0, len(texts), 64)]
    )
    assert bundle.classifiers is not None
    real_labels = np.ascontiguousarray(bundle.classifiers, dtype=np.float32)
    synth_labels, synth_queries = synthetic_label_space(
        len(real_labels), len(real_queries), real_labels.shape[1], args.seed
    )
    types = ["hnsw", "ivf_flat", "ivf_pq"]
    return {
        "bundle": str(args.calibrate),
        "data": str(data_dir),
        "real": bench_space(real_labels, real_queries, types, args),
        "synthetic": bench_space(synth_labels, synth_queries, types, args),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module doc)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="*",
        default=[20_000, 100_000, 1_000_000],
        help="none (with --merge): refit, replot and print what the JSON holds",
    )
    parser.add_argument("--types", nargs="+", choices=ALL_TYPES, help="default: see module doc")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--latency-queries", type=int, default=300)
    parser.add_argument("--mach-queries", type=int, default=100, help="0 skips MACH")
    parser.add_argument("--mach-top-buckets", type=int, nargs="+", default=[5, 8, 10])
    parser.add_argument(
        "--hnsw-ef-construction", type=int, help="default: the service's (HNSW_DEFAULTS)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--extrapolate-to",
        type=int,
        default=10_000_000,
        help="fit the HNSW indexes' cost from 1M labels up and carry it to this size",
    )
    parser.add_argument("--calibrate", type=Path, help="an ASTRA bundle to compare against")
    parser.add_argument("--calibrate-data", type=Path, help="its dataset (default: manifest's)")
    parser.add_argument(
        "--merge", action="store_true", help="keep other sizes and index types in --out"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark; write the JSON and the plots; print the tables. The JSON is rewritten
    after the calibration and after each size, so a run cut short keeps what it measured."""
    from bench.scale_plots import plot_extrapolation, plot_latency_by_k, plot_recall_latency

    args = parse_args(argv)
    previous = json.loads(args.out.read_text()) if args.merge and args.out.exists() else {}
    report: dict[str, Any] = {
        "date": date.today().isoformat(),
        "command": command_line("bench.scale", argv),
        "machine": machine(),
        "versions": versions(LIBRARIES),
        "threads": {"single_query": 1, "batched_and_build": faiss.omp_get_max_threads()},
        "k": K_TOP,
        "batch": BATCH,
        "generator": "bench.synthetic (see its module doc)",
        "sizes": previous.get("sizes", []),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        report["machine"]["load_average_at_end"] = machine()["load_average"]
        args.out.write_text(json.dumps(report, indent=1) + "\n")

    if args.calibrate:
        report["calibration"] = calibration(args)
        save()
    elif "calibration" in previous:
        report["calibration"] = previous["calibration"]
    for num_labels in tqdm(args.sizes, desc="label spaces"):
        measured = bench_size(num_labels, args)
        previous_size = next((s for s in report["sizes"] if s["labels"] == num_labels), None)
        kept = [size for size in report["sizes"] if size is not previous_size]
        merged = merge_size(previous_size, measured)
        report["sizes"] = sorted([*kept, merged], key=lambda size: size["labels"])
        save()
    fits = [extrapolate(report, kind, args.extrapolate_to) for kind in HNSW_TYPES]
    report["extrapolated"] = [fit for fit in fits if fit is not None]
    save()
    stem = args.out.with_suffix("")
    plot_recall_latency(report, Path(f"{stem}_recall_latency.png"))
    if report["extrapolated"]:
        plot_extrapolation(report, Path(f"{stem}_extrapolated.png"))
    plot_latency_by_k(report, PLOT_RECALL, Path(f"{stem}_latency_by_k.png"))
    from bench.report import render_scale  # the tables, after the results are safely written

    print(render_scale(report))
    print(f"wrote {args.out}, {stem}_recall_latency.png and {stem}_latency_by_k.png")


if __name__ == "__main__":
    main()
