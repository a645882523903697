"""The classifier-vector update of one ASTRA step, against the label count: AdamW vs row-wise.

    python -m bench.astra_optimizer [--labels 54667 1000000 2000000] [--rowwise-only 8000000]

ASTRA's step touches only its label set (a batch's positives and sampled negatives), but AdamW
over the [L, d] table of classifier vectors gets a dense gradient and updates every row, with
two dense moments of state. `training.rowwise.RowwiseAdagrad` updates the touched rows from a
sparse gradient, with one float of state per row. This times that part of a step alone (the
classifier logits of 64 query vectors against 2,048 sampled labels, BCE, backward, optimiser
step; no encoder, which costs the same at any L) and counts the bytes each keeps beyond the
vectors themselves: optimiser state plus gradient. AdamW at 8M labels would need 25 GB here, so
large L runs row-wise only. Results: `bench/results/astra_optimizer.json` (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from bench.provenance import command_line, machine
from training.rowwise import RowwiseAdagrad

RESULTS = Path(__file__).resolve().parent / "results"
DIM = 384
QUERIES = 64
LABEL_SET = 2048
STEPS = 8


def _tensor_bytes(tensors: Sequence[torch.Tensor]) -> int:
    total = 0
    for tensor in tensors:
        if tensor.is_sparse:
            tensor = tensor.coalesce()
            total += tensor.values().nbytes + tensor.indices().nbytes
        else:
            total += tensor.nbytes
    return total


def run(num_labels: int, kind: str, seed: int) -> dict:
    """Median seconds of one classifier update at L = `num_labels`, and the bytes kept."""
    generator = torch.Generator().manual_seed(seed)
    vectors = torch.nn.Parameter(torch.randn(num_labels, DIM, generator=generator))
    bias = torch.nn.Parameter(torch.tensor(-5.0))
    rowwise = kind == "rowwise_adagrad"
    optimizers: list[torch.optim.Optimizer] = [torch.optim.AdamW([bias], lr=2e-3)]
    if rowwise:
        optimizers.append(RowwiseAdagrad([vectors], lr=2e-3))
    else:
        optimizers = [torch.optim.AdamW([vectors, bias], lr=2e-3, weight_decay=0.0)]
    seconds = []
    for step in range(STEPS + 2):
        queries = torch.nn.functional.normalize(torch.randn(QUERIES, DIM, generator=generator))
        labels = torch.randint(0, num_labels, (LABEL_SET,), generator=generator)
        targets = (torch.rand(QUERIES, LABEL_SET, generator=generator) < 0.01).float()
        start = time.perf_counter()
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        rows = torch.nn.functional.embedding(labels, vectors, sparse=rowwise)
        logits = 20.0 * queries @ torch.nn.functional.normalize(rows, dim=1).T + bias
        torch.nn.functional.binary_cross_entropy_with_logits(logits, targets).backward()
        grad_bytes = _tensor_bytes([vectors.grad])
        for optimizer in optimizers:
            optimizer.step()
        if step >= 2:  # the first steps allocate the state
            seconds.append(time.perf_counter() - start)
    state = [t for o in optimizers for s in o.state.values() for t in s.values() if t.dim()]
    result = {
        "labels": num_labels,
        "optimizer": kind,
        "step_ms_p50": round(float(np.median(seconds)) * 1000, 2),
        "state_mib": round(_tensor_bytes(state) / 2**20, 1),
        "gradient_mib": round(grad_bytes / 2**20, 2),
        "vectors_mib": round(vectors.nbytes / 2**20, 1),
    }
    print(json.dumps(result), flush=True)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Measure both optimisers at each L (and row-wise alone at the largest) and write JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.astra_optimizer", description=__doc__)
    parser.add_argument("--labels", type=int, nargs="+", default=[54_667, 1_000_000, 2_000_000])
    parser.add_argument("--rowwise-only", type=int, nargs="*", default=[8_000_000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "astra_optimizer.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    runs = [
        run(labels, kind, args.seed)
        for labels in args.labels
        for kind in ("adamw", "rowwise_adagrad")
    ]
    runs += [run(labels, "rowwise_adagrad", args.seed) for labels in args.rowwise_only]
    record = {
        "command": command_line("bench.astra_optimizer", argv),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "queries": QUERIES,
        "label_set": LABEL_SET,
        "dim": DIM,
        "threads": 1,
        "runs": runs,
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
