"""Whole ASTRA training steps against the label count: Home Depot plus synthetic distractors.

    python -m bench.astra_train_scale --data ../shared/data/homedepot/xc \\
        --distractors 0 1000000 2000000 4000000 10000000

`bench.astra_optimizer` times the classifier update alone; this runs real steps of
`training.astra` (the encoder's forward and backward passes, the mined, importance-sampled and
uniform negatives, the BCE and text losses, the optimiser step) over a label space of the
dataset's labels plus L distractor products, with the trained labels' hard-negative index
rebuilt every `--refresh-every` steps as training does (and the other labels' index built at
the first refresh, once). The distractors stand for a catalog's products that no training
query names: their vectors come from `bench.synthetic` (unit vectors shaped like the Home Depot
classifier vectors, held in fp16 as a catalog of millions would be), and so do the dataset's
own labels' here, so that no title has to be encoded (this measures cost, not quality; the text
loss reads the titles of the positives only). Each size runs in its own process, so that its
peak resident memory is its own. Reported per size:

- seconds per step: median over the steps that do not rebuild the index;
- seconds per refresh: building the trained labels' index from their current vectors; and,
  apart, the seconds the first refresh spent on the other labels' index, built once;
- peak resident memory while training (counted from the first step: the generator's own peak
  is left out, Linux's VmHWM reset through /proc/self/clear_refs), and the text vectors' size;
- for a size that did not finish, its exit code (-9: killed for memory).

Results: `bench/results/astra_train_scale.json` (BENCHMARKS.md, "Classifier vectors at scale").
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from bench.provenance import command_line, machine

RESULTS = Path(__file__).resolve().parent / "results"


def _reset_peak_rss() -> None:
    """Count peak resident memory from here on (Linux: writing 5 to clear_refs resets VmHWM)."""
    Path("/proc/self/clear_refs").write_text("5")


def _peak_rss_bytes() -> int:
    """This process's peak resident memory since the last reset (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_size(data: Path, distractors: int, args: argparse.Namespace) -> dict:
    """`args.steps` training steps over the dataset's labels plus `distractors` (this process)."""
    import torch

    from bench.synthetic import synthetic_label_space
    from training.astra import (
        AstraConfig,
        AstraModel,
        EncoderTowers,
        NegativeSampler,
        TrainingData,
        batch_loss,
        build_optimizer,
        optimizer_step,
        trained_labels,
    )
    from training.data import load_dataset
    from training.distributed import Runtime
    from training.encoder import SentenceEncoder, load_tokenizer

    torch.manual_seed(args.seed)
    dataset = load_dataset(data)
    config = AstraConfig(
        classifier_optimizer=args.optimizer, refresh_every=args.refresh_every, seed=args.seed
    )
    training = TrainingData.of(dataset, config)
    num_labels = dataset.num_labels + distractors
    vectors, _ = synthetic_label_space(num_labels, 1, seed=args.seed, dtype=np.float16)
    label_freq = np.zeros(num_labels, dtype=training.label_freq.dtype)
    label_freq[: dataset.num_labels] = training.label_freq
    encoder = SentenceEncoder()
    model = AstraModel(
        encoder,
        vectors,
        trained_labels(label_freq),
        sparse_rows=config.rowwise,
    )
    del vectors
    tokenizers = (
        load_tokenizer(config.query_max_length),
        load_tokenizer(config.label_max_length),
    )
    optimizers, schedules = build_optimizer(model, config, args.steps)
    rng = np.random.default_rng(args.seed)
    sampler = NegativeSampler(config, label_freq, rng)
    towers, runtime = EncoderTowers(model.encoder), Runtime()
    order = rng.permutation(len(training.usable))
    step_s, refresh_s = [], []
    process_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    _reset_peak_rss()
    model.train()
    for step in tqdm(range(args.steps), desc=f"L = {num_labels:,}", leave=False):
        if step % config.refresh_every == 0:
            began = time.perf_counter()
            fixed_before = sampler.fixed_seconds
            sampler.refresh(model.text_vectors, model.trained_classifiers())
            spent = time.perf_counter() - began
            refresh_s.append(spent - (sampler.fixed_seconds - fixed_before))
        start = step * config.batch_size % len(order)
        rows = [training.usable[i] for i in order[start : start + config.batch_size]]
        began = time.perf_counter()
        share = batch_loss(
            towers,
            model,
            sampler,
            training.batch(rows),
            tokenizers,
            dataset.label_titles,
            config,
            runtime,
        )
        optimizer_step(share, model, optimizers, schedules, runtime)
        step_s.append(time.perf_counter() - began)
    timed = step_s[args.warmup :]
    return {
        "labels": num_labels,
        "distractors": distractors,
        "trained_labels": len(model.trained_ids),
        "optimizer": args.optimizer,
        "mining_index": sampler.trained_spec.model_dump(),
        "fixed_index": sampler.fixed_spec.model_dump(),
        "fixed_index_s": sampler.fixed_seconds,
        "steps": len(step_s),
        "step_s_p50": float(np.median(timed)),
        "step_s_p90": float(np.percentile(timed, 90)),
        "refresh_s": refresh_s,
        "refresh_every": config.refresh_every,
        "peak_rss_bytes": _peak_rss_bytes(),
        "setup_peak_rss_bytes": process_peak,
        "vector_bytes": model.text_vectors.numel() * model.text_vectors.element_size(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module doc)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="an XC dataset (Home Depot)")
    parser.add_argument("--distractors", type=int, nargs="+", default=[0, 1_000_000])
    parser.add_argument("--steps", type=int, default=110)
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of timing")
    parser.add_argument("--refresh-every", type=int, default=100, help="as training's default")
    parser.add_argument(
        "--optimizer", choices=["adamw", "rowwise_adagrad"], default="rowwise_adagrad"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--one", action="store_true", help="run one size here, print its JSON")
    parser.add_argument("--out", type=Path, default=RESULTS / "astra_train_scale.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run each size in its own process; write the JSON."""
    args = parse_args(argv)
    if args.one:
        (distractors,) = args.distractors
        print(json.dumps(run_size(args.data, distractors, args)))
        return 0
    runs = []
    for distractors in args.distractors:
        child = [sys.executable, "-m", "bench.astra_train_scale", "--one"]
        child += ["--data", str(args.data), "--distractors", str(distractors)]
        child += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
        child += ["--refresh-every", str(args.refresh_every), "--optimizer", args.optimizer]
        child += ["--seed", str(args.seed)]
        done = subprocess.run(child, stdout=subprocess.PIPE, text=True)
        if done.returncode == 0:
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        else:  # what bounds the largest L: say so and go on (-9: the kernel's OOM killer)
            runs.append({"distractors": distractors, "exit_code": done.returncode})
        print(json.dumps(runs[-1]), flush=True)
    record = {
        "command": command_line("bench.astra_train_scale", argv),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
