"""Exact MACH decoding as dense array code: every label scored, on a GPU through CuPy.

On a CPU the serving decoder (:meth:`MachDecoder.fast`) avoids scoring all K labels, because
R·K scattered reads per query cost milliseconds at K = 10^6. A GPU does those reads at memory
bandwidth (R = 16, K = 10^6: 64 MB of table per batch, well under a millisecond on an H100),
so there the exact read-out is both cheaper to write and better: no label is missed for lying
outside the top-m buckets. The code is written against an array module ``xp`` (CuPy on a GPU;
NumPy runs the very same code in the CPU test suite, checked against :meth:`MachDecoder.exact`).

Scores are summed in float32 in the order r = 0..R-1, as every CPU decoder does, so scores agree
bit for bit with them. The device keeps each chunk's k best with a partial sort, so which of
several labels tied exactly at the k-th place survives is the device's pick (the one exception
to the ranking rule); the survivors are ordered on the host by `service.ranking.top_k`.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from service.mach.decode import MachDecoder, check_k
from service.ranking import top_k

# Float32 values one label chunk may hold for a batch ([n, chunk] scores): 64 MiB.
_CHUNK_VALUES = 1 << 24


def to_numpy(array: object) -> np.ndarray:
    """A host NumPy copy of a NumPy or CuPy array."""
    get = getattr(array, "get", None)  # CuPy arrays copy to the host with .get()
    return np.asarray(get() if callable(get) else array)


class DenseMachDecoder:
    """Top-k over all labels of a :class:`MachDecoder`'s table, held on ``xp``'s device."""

    def __init__(self, decoder: MachDecoder, xp: ModuleType) -> None:
        self.decoder = decoder
        self.xp = xp
        self.rows = xp.asarray(decoder.flat_rows)  # [K, R], copied to the device once

    @property
    def nbytes(self) -> int:
        """Bytes of device memory held by the table."""
        return int(self.rows.nbytes)

    def exact(self, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k labels by summed bucket scores: (float32 [n, k], int64 [n, k]) on the host,
        best first, padded with id -1 and score -inf when k > K."""
        scores = self.decoder.check_scores(scores)
        k = check_k(k)
        xp = self.xp
        n = scores.shape[0]
        num_labels, reps = self.rows.shape
        kk = min(k, num_labels)
        flat = xp.asarray(scores.reshape(n, -1))
        chunk = min(num_labels, max(kk, _CHUNK_VALUES // n))
        best_vals = xp.empty((n, 0), dtype=xp.float32)
        best_ids = xp.empty((n, 0), dtype=xp.int64)
        for start in range(0, num_labels, chunk):
            rows = self.rows[start : start + chunk]
            acc = flat[:, rows[:, 0]]
            for r in range(1, reps):
                acc += flat[:, rows[:, r]]
            labels = xp.arange(start, start + rows.shape[0], dtype=xp.int64)
            ids = xp.broadcast_to(labels, acc.shape)
            vals = xp.concatenate([best_vals, acc], axis=1)
            ids = xp.concatenate([best_ids, ids], axis=1)
            if vals.shape[1] > kk:
                keep = xp.argpartition(-vals, kk - 1, axis=1)[:, :kk]
                vals = xp.take_along_axis(vals, keep, axis=1)
                ids = xp.take_along_axis(ids, keep, axis=1)
            best_vals, best_ids = vals, ids
        return top_k(to_numpy(best_vals), to_numpy(best_ids), k)
