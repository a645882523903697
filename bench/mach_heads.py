"""MACH's output layer in fp32 against int8: bytes read per query, time, and what the top-10 keeps.

    python -m bench.mach_heads                    # K = 1M and 10M shapes, R = 16, hidden 128

At K labels MACH's heads end in an output layer of R·hidden·B weights (B the power of two
nearest K/256, as in `bench.mach_decode`), all of which are read for every query: at 10M that is
268 MB in fp32, and the layer is bound by memory bandwidth. For each K this builds heads of that
shape with random weights (embedding input only), exports them as training does
(`training.mach.bundle.export_heads`), quantises them as `python -m training quantize` does
(`training.quantize.quantize_heads`), and times one query at a time on one thread through ONNX
Runtime at each precision. Recall@10 is the overlap of the labels decoded (computed membership,
top 10 buckets per head) from the int8 layer's scores with those decoded from the fp32 layer's,
over random query embeddings: with random weights the top-10 is flatter than a trained model's,
so this is a harsh test. K = 50M (B = 262,144, 2 GiB of fp32 weights) does not fit ONNX's 2 GB
single-file limit that the export uses, and is left out.
Results go to `bench/results/mach_heads.json` (BENCHMARKS.md, "MACH decoding").
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from bench.mach_decode import default_buckets, recall_at_k
from bench.provenance import command_line, machine
from service.device import open_session
from service.mach.decode import MachDecoder
from service.mach.hash import HashFamily
from training.mach.bundle import export_heads
from training.mach.heads import MachConfig, MachHead, MachHeads
from training.quantize import quantize_heads

RESULTS = Path(__file__).resolve().parent / "results"
DIM = 384
TOP_BUCKETS = 10


def _scores(session: ort.InferenceSession, embeddings: np.ndarray) -> np.ndarray:
    feeds = {"embedding": embeddings, "ngram_ids": np.zeros((len(embeddings), 1), np.int64)}
    feeds["ngram_weights"] = np.zeros((len(embeddings), 1), np.float32)
    names = {node.name for node in session.get_inputs()}
    (scores,) = session.run(None, {name: feeds[name] for name in names})
    return scores


def bench_shape(num_labels: int, args: argparse.Namespace, work: Path) -> dict:
    """fp32 against int8 heads of K = `num_labels`'s shape."""
    buckets = default_buckets(num_labels)
    config = MachConfig(
        repetitions=args.reps, buckets=buckets, hidden=args.hidden, ngram_dim=0, seed=args.seed
    )
    torch.manual_seed(args.seed)
    heads = MachHeads([MachHead(DIM, config) for _ in range(args.reps)], "bce").eval()
    fp32_path, int8_path = work / f"heads-{num_labels}.onnx", work / f"heads-{num_labels}.int8.onnx"
    export_heads(heads, DIM, fp32_path)
    del heads
    quantize_heads(fp32_path, int8_path, args.reps)
    rng = np.random.default_rng(args.seed)
    queries = rng.standard_normal((args.queries, DIM), dtype=np.float32)
    family = HashFamily.for_labels(
        seed=args.seed, reps=args.reps, buckets=buckets, num_labels=num_labels
    )
    decoder = MachDecoder.computed(family, num_labels)
    weights = args.reps * args.hidden * buckets
    result: dict = {"labels": num_labels, "buckets": buckets, "reps": args.reps}
    decoded = {}
    for precision, path in (("fp32", fp32_path), ("int8", int8_path)):
        session = open_session(path, threads=1)  # as the service opens the heads
        for i in range(5):
            _scores(session, queries[i : i + 1])
        seconds, ids = [], []
        for i in range(args.queries):
            start = time.perf_counter()
            scores = _scores(session, queries[i : i + 1])
            seconds.append(time.perf_counter() - start)
            ids.append(decoder.fast(scores, 10, TOP_BUCKETS)[1][0])
        decoded[precision] = np.stack(ids)
        p50 = float(np.median(seconds))
        weight_bytes = weights * (4 if precision == "fp32" else 1)
        result[precision] = {
            "p50_ms": round(p50 * 1000, 3),
            "p90_ms": round(float(np.percentile(seconds, 90)) * 1000, 3),
            "weight_bytes": weight_bytes,
            "file_bytes": path.stat().st_size,
            "gb_per_s": round(weight_bytes / p50 / 1e9, 1),
        }
        del session
    result["recall_at_10_int8_vs_fp32"] = recall_at_k(decoded["fp32"], decoded["int8"])
    print(json.dumps(result), flush=True)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Measure each shape and write the JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.mach_heads", description=__doc__)
    parser.add_argument("--labels", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--reps", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "mach_heads.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="xc-mach-heads-") as work:
        results = [bench_shape(k, args, Path(work)) for k in args.labels]
    record = {
        "command": command_line("bench.mach_heads", argv),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "hidden": args.hidden,
        "queries": args.queries,
        "results": results,
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
