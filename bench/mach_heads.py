"""MACH's output layer in fp32, int8, and int8 rescored by the fp32 rows: bytes, time, top-10.

    python -m bench.mach_heads                    # K = 1M, 10M and 50M shapes, R = 16, hidden 128

At K labels MACH's heads end in an output layer of R·hidden·B weights (B the power of two
nearest K/256, as in `bench.mach_decode`), all of which are read for every query: at 10M that is
268 MB in fp32, and the layer is bound by memory bandwidth. For each K this builds heads of that
shape with random weights (embedding input only), exports them as training does
(`training.mach.bundle.export_heads`), quantises them and writes the fp32 rows as
`python -m training quantize` does (`training.quantize`), and times one query at a time on one
thread: the output layer (ONNX Runtime) and the decoding after it, for three variants: fp32
heads decoded by `MachDecoder.fast`; int8 heads decoded the same way; int8 heads whose
candidates are rescored with the fp32 rows (`service.mach.exact`, what the service serves for
int8). Recall@10 is the overlap of each variant's decoded top 10 (computed membership, top 10
buckets per head) with fp32's, over random query embeddings: with random weights the top-10 is
flatter than a trained model's, so this is a harsh test. At K = 50M (B = 262,144) the fp32
weights are 2 GiB, past ONNX's 2 GB file: the export keeps them beside the graph (external
data), as a bundle does (`python -m bench.mach_heads --labels 1000000 10000000 50000000`).
Results go to `bench/results/mach_heads.json` (BENCHMARKS.md, "MACH decoding").
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from bench.mach_decode import default_buckets, recall_at_k
from bench.provenance import command_line, machine
from service.device import open_session
from service.mach.decode import MachDecoder
from service.mach.exact import OPEN_MARGIN, SHORTLIST, ExactLayer, MachScores, refined_top
from service.mach.hash import HashFamily
from service.mach.model import HEADS_OUTPUT, HIDDEN_OUTPUT
from training.mach.bundle import export_heads, external_data_file
from training.mach.heads import MachConfig, MachHead, MachHeads
from training.quantize import quantize_heads, write_exact_layer

RESULTS = Path(__file__).resolve().parent / "results"
DIM = 384
TOP_BUCKETS = 10


def _run(session: ort.InferenceSession, embeddings: np.ndarray, outputs: list[str]) -> list:
    feeds = {"embedding": embeddings, "ngram_ids": np.zeros((len(embeddings), 1), np.int64)}
    feeds["ngram_weights"] = np.zeros((len(embeddings), 1), np.float32)
    names = {node.name for node in session.get_inputs()}
    return session.run(outputs, {name: feeds[name] for name in names})


def _variant(
    session: ort.InferenceSession,
    queries: np.ndarray,
    decode: Callable[[list], np.ndarray],
    outputs: list[str],
) -> tuple[dict, np.ndarray]:
    """Time one query at a time: the output layer, then `decode` (→ top-10 ids)."""
    for i in range(5):
        decode(_run(session, queries[i : i + 1], outputs))
    layer, decoding, ids = [], [], []
    for i in range(len(queries)):
        start = time.perf_counter()
        out = _run(session, queries[i : i + 1], outputs)
        middle = time.perf_counter()
        ids.append(decode(out))
        layer.append(middle - start)
        decoding.append(time.perf_counter() - middle)
    total = np.add(layer, decoding)
    timing = {
        "p50_ms": round(float(np.median(layer)) * 1000, 3),
        "p90_ms": round(float(np.percentile(layer, 90)) * 1000, 3),
        "decode_p50_ms": round(float(np.median(decoding)) * 1000, 3),
        "total_p50_ms": round(float(np.median(total)) * 1000, 3),
    }
    return timing, np.stack(ids)


def bench_shape(num_labels: int, args: argparse.Namespace, work: Path) -> dict:
    """fp32 against int8 heads (plain and rescored) of K = `num_labels`'s shape."""
    buckets = default_buckets(num_labels)
    config = MachConfig(
        repetitions=args.reps, buckets=buckets, hidden=args.hidden, ngram_dim=0, seed=args.seed
    )
    torch.manual_seed(args.seed)
    heads = MachHeads([MachHead(DIM, config) for _ in range(args.reps)], "bce").eval()
    fp32_path, int8_path = work / f"heads-{num_labels}.onnx", work / f"heads-{num_labels}.int8.onnx"
    rows_path = work / f"rows-{num_labels}.npy"
    export_heads(heads, DIM, fp32_path)
    del heads
    quantize_heads(fp32_path, int8_path, args.reps)
    write_exact_layer(fp32_path, rows_path, args.reps, buckets)
    rng = np.random.default_rng(args.seed)
    queries = rng.standard_normal((args.queries, DIM), dtype=np.float32)
    family = HashFamily.for_labels(
        seed=args.seed, reps=args.reps, buckets=buckets, num_labels=num_labels
    )
    decoder = MachDecoder.computed(family, num_labels)
    layer = ExactLayer(rows_path, args.reps, buckets, args.hidden)

    def fast(out: list) -> np.ndarray:
        return decoder.fast(out[0], 10, TOP_BUCKETS)[1][0]

    def refined(out: list) -> np.ndarray:
        scores = MachScores(out[0], np.ascontiguousarray(out[1].transpose(1, 0, 2)))
        return refined_top(decoder, layer, scores, 10, TOP_BUCKETS)[1][0]

    weights = args.reps * args.hidden * buckets
    row_bytes = (args.hidden + 1) * 4
    exact_rows = args.reps * (TOP_BUCKETS + OPEN_MARGIN + SHORTLIST)
    variants = (
        ("fp32", fp32_path, fast, [HEADS_OUTPUT], weights * 4),
        ("int8", int8_path, fast, [HEADS_OUTPUT], weights),
        ("int8_exact", int8_path, refined, [HEADS_OUTPUT, HIDDEN_OUTPUT], weights),
    )
    result: dict = {"labels": num_labels, "buckets": buckets, "reps": args.reps}
    decoded = {}
    for name, path, decode, outputs, weight_bytes in variants:
        session = open_session(path, threads=1)  # as the service opens the heads
        timing, decoded[name] = _variant(session, queries, decode, outputs)
        del session
        extra = exact_rows * row_bytes if name == "int8_exact" else 0
        files = (path, external_data_file(path))  # the graph and, past 1 GiB, its weights
        result[name] = {
            **timing,
            "weight_bytes": weight_bytes,
            "exact_row_bytes": extra,
            "file_bytes": sum(f.stat().st_size for f in files if f.exists()),
            "gb_per_s": round(weight_bytes / (timing["p50_ms"] / 1000) / 1e9, 1),
        }
    result["recall_at_10_int8_vs_fp32"] = recall_at_k(decoded["fp32"], decoded["int8"])
    result["recall_at_10_int8_exact_vs_fp32"] = recall_at_k(decoded["fp32"], decoded["int8_exact"])
    print(json.dumps(result), flush=True)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Measure each shape and write the JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.mach_heads", description=__doc__)
    parser.add_argument(
        "--labels", type=int, nargs="+", default=[1_000_000, 10_000_000, 50_000_000]
    )
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
