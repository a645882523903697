"""Exact MACH scores for the int8 heads: the fp32 output layer, read only where it decides.

One query's output layer is bound by memory bandwidth (R·hidden·B weights read per query), and
its int8 copy reads a quarter of the bytes, but int8 weights move a few labels of MACH's top 10
(recall@10 0.97-0.98 against fp32, `bench.mach_heads`). So the int8 heads also output their
hidden activations (computed in fp32: only the output layer is quantised), and the fp32 output
layer stays beside them as an array [R, B, hidden + 1] (each bucket's weights, then its bias:
one contiguous row), memory-mapped, so only the rows a query reads are paged in. Per query:

1. each repetition's m + `OPEN_MARGIN` best buckets by the int8 scores are scored exactly and
   the m best of those kept: the buckets fp32 would open, unless one of fp32's m best ranks
   below m + margin in int8;
2. the labels in those buckets are ranked by the int8 scores, as `MachDecoder.fast` ranks
   them, and the best `SHORTLIST` rescored exactly;
3. their top k is the answer, with fp32 scores.

That reads R·(m + margin + shortlist) rows of hidden + 1 floats, about 0.5 MB a query at
R = 16, hidden 128, against 64 MiB of int8 weights at K = 10M. Only for BCE heads: a bucket's
log-sigmoid needs no normaliser over all B buckets, as a softmax's would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.mach.decode import MachDecoder, top_buckets_of
from service.ranking import top_k

OPEN_MARGIN = 4
SHORTLIST = 50


@dataclass(frozen=True)
class MachScores:
    """What the heads say about a batch of queries.

    `log_probs` float32 [n, R, B] are the served heads' bucket log-probabilities (approximate
    for int8 heads); `hidden` float32 [n, R, hidden] their hidden activations, present when
    an `ExactLayer` refines them.
    """

    log_probs: np.ndarray
    hidden: np.ndarray | None = None


class ExactLayer:
    """The fp32 output layer as rows [R, B, hidden + 1] (weights, bias), memory-mapped."""

    def __init__(self, path: Path, reps: int, buckets: int, hidden: int) -> None:
        rows = np.load(path, mmap_mode="r")
        expected = (reps, buckets, hidden + 1)
        if rows.shape != expected or rows.dtype != np.float32:
            raise ValueError(
                f"{path.name}: expected float32 rows {expected} (R, B, hidden + 1), "
                f"got {rows.dtype} {rows.shape}"
            )
        self.rows = rows
        self._reps = np.arange(reps)[:, None]

    def log_probs(self, hidden: np.ndarray, buckets: np.ndarray) -> np.ndarray:
        """Exact log-sigmoid float32 [R, m] of one query's buckets [R, m] (hidden [R, H])."""
        rows = self.rows[self._reps, buckets]  # [R, m, H + 1], the only rows read
        logits = np.einsum("rmh,rh->rm", rows[..., :-1], hidden) + rows[..., -1]
        return -np.logaddexp(np.float32(0), -logits, dtype=np.float32)

    def label_scores(self, hidden: np.ndarray, label_buckets: np.ndarray) -> np.ndarray:
        """Exact scores float32 [c] of labels whose buckets are [c, R]: the sum over r of
        their log-sigmoids, added in the order r = 0..R-1 as the decoder adds them."""
        per_rep = self.log_probs(hidden, np.ascontiguousarray(label_buckets.T))  # [R, c]
        out = per_rep[0].copy()
        for r in range(1, len(per_rep)):
            out += per_rep[r]
        return out


def refined_top(
    decoder: MachDecoder,
    layer: ExactLayer,
    scores: MachScores,
    k: int,
    top_buckets: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (fp32 scores float32 [n, k], ids int64 [n, k]) of each query, by the steps in
    the module docstring; padded with -1 / -inf like `MachDecoder.fast`."""
    assert scores.hidden is not None, "refined decoding needs the heads' hidden activations"
    log_probs = decoder.check_scores(scores.log_probs)
    n, _, num_buckets = log_probs.shape
    m = min(top_buckets, num_buckets)
    wide = top_buckets_of(log_probs, min(m + OPEN_MARGIN, num_buckets))  # [n, R, m + margin]
    out_vals = np.full((n, k), -np.inf, dtype=np.float32)
    out_ids = np.full((n, k), -1, dtype=np.int64)
    for q in range(n):
        hidden = scores.hidden[q]
        exact = layer.log_probs(hidden, wide[q])
        keep = np.argsort(-exact, axis=1, kind="stable")[:, :m]
        top = np.take_along_axis(wide[q], keep, axis=1)
        _, ids = decoder.fast_from(log_probs[q : q + 1], top[None], max(k, SHORTLIST))
        ids = ids[0][ids[0] >= 0]
        if ids.size == 0:
            continue
        vals = layer.label_scores(hidden, decoder.label_buckets(ids))
        vals, ids = top_k(vals[None, :], ids[None, :], k)
        out_vals[q], out_ids[q] = vals[0], ids[0]
    return out_vals, out_ids


def refined_rescore(
    decoder: MachDecoder, layer: ExactLayer, scores: MachScores, labels: np.ndarray
) -> np.ndarray:
    """Exact scores float32 [n, c] of labels int [n, c] (-1 scores -inf), as
    `MachDecoder.rescore` gives them from fp32 bucket scores."""
    assert scores.hidden is not None, "exact rescoring needs the heads' hidden activations"
    labels = np.asarray(labels)
    out = np.full(labels.shape, -np.inf, dtype=np.float32)
    for q in range(labels.shape[0]):
        present = labels[q] >= 0
        if present.any():
            buckets = decoder.label_buckets(labels[q][present])
            out[q, present] = layer.label_scores(scores.hidden[q], buckets)
    return out
