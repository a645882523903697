"""Small training configurations that keep tests fast on 2 CPU cores."""

from __future__ import annotations

# ASTRA flags for a few steps on a tiny catalog (`AstraConfig(**TINY)`).
TINY = dict(
    epochs=2,
    batch_size=32,
    max_steps=6,
    refresh_every=2,
    hard_negatives=4,
    importance_negatives=16,
    uniform_negatives=16,
)

# MACH flags for `python -m training train --model mach` on the demo catalog.
SMALL_MACH = [
    "--repetitions", "4", "--buckets", "32", "--hidden", "16", "--epochs", "30",
    "--ngram-dim", "4096", "--top-buckets", "4",
]  # fmt: skip


def demo_train_args(data: object, out: object, *extra: str) -> list[str]:
    """`python -m training train` arguments for one epoch of ASTRA on the demo catalog."""
    return ["train", "--data", str(data), "--out", str(out), "--epochs", "1", *extra]
