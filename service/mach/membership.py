"""Which labels sit in which buckets: computed from the hash family, or held as tables.

The decoder (`service.mach.decode`) asks two questions of a membership: the flattened buckets
`r·B + h_r(j)` of given labels (`rows_of`, `rows_between`: a label's indices into a query's
[R·B] scores), and the distinct labels in given buckets of every repetition (`candidates`).

- `ComputedMembership` answers both from the hash family's arithmetic (p < 2^31, a bijection:
  see `service.mach.hash`). It holds nothing per label: memory O(R), whatever K. This is what
  MACH's O(log K) memory claim needs at 10M and 50M labels.
- `TableMembership` holds a label-major table `rows[j, r] = r·B + table[r, j]` (int32 [K, R],
  a label's R buckets in one cache line) and, per repetition, the labels grouped by bucket
  (CSR): 8·R·K bytes, 1.28 GB at R = 16 and K = 10^7. Bundles hashed with p = 2^61 − 1 (before
  session 9) need it, and it decodes arbitrary tables (tests, benchmarks).
"""

from __future__ import annotations

import numpy as np

from service.mach.hash import HashFamily

_INT32_MAX = np.iinfo(np.int32).max


def _sorted_unique(labels: np.ndarray, min_hits: int = 1, at_least: int = 1) -> np.ndarray:
    """Distinct values of `labels` found at least `min_hits` times, increasing (np.unique is
    several times slower here). With min_hits > 1: all distinct values if fewer than
    `at_least` pass, so a query never runs short of candidates."""
    if labels.size == 0:
        return labels
    labels.sort()
    starts = np.empty(labels.size, dtype=bool)
    starts[0] = True
    np.not_equal(labels[1:], labels[:-1], out=starts[1:])
    if min_hits <= 1:
        return labels[starts]
    first = np.flatnonzero(starts)
    runs = np.diff(first, append=labels.size)
    kept = labels[first[runs >= min_hits]]
    return kept if kept.size >= at_least else labels[first]


class ComputedMembership:
    """Bucket membership computed from a hash family with p < 2^31: nothing stored per label."""

    def __init__(self, family: HashFamily, num_labels: int) -> None:
        if not family.computed:
            raise ValueError("family: membership is computed only for a prime below 2^31")
        family.check_labels(num_labels)
        self.family = family
        self.num_labels = num_labels
        self.reps = family.reps
        self.buckets = family.buckets
        self._offsets = np.arange(self.reps, dtype=np.int64) * self.buckets

    @property
    def nbytes(self) -> int:
        """Bytes held per label: none (a few per repetition)."""
        return int(self._offsets.nbytes)

    def rows_of(self, labels: np.ndarray) -> np.ndarray:
        """`r·B + h_r(j)` int64 [c, R] of labels j [c]."""
        rows = self.family.buckets_of(labels)
        rows += self._offsets
        return rows

    def rows_between(self, start: int, stop: int) -> np.ndarray:
        """`rows_of` labels start..stop-1."""
        return self.rows_of(np.arange(start, stop, dtype=np.int64))

    def candidates(self, top: np.ndarray, min_hits: int = 1, at_least: int = 1) -> np.ndarray:
        """Distinct labels (int64, increasing) in buckets top[r, :] of at least `min_hits`
        repetitions r, or of any if fewer than `at_least` are (see `_sorted_unique`)."""
        found = [self.family.labels_in(r, top[r], self.num_labels) for r in range(self.reps)]
        return _sorted_unique(np.concatenate(found), min_hits, at_least)

    def bucket_labels(self, rep: int, bucket: int) -> np.ndarray:
        """Labels in `bucket` of repetition `rep`, increasing."""
        return np.sort(self.family.labels_in(rep, np.array([bucket]), self.num_labels))

    @property
    def flat_rows(self) -> np.ndarray:
        """Every label's rows [K, R] (built on demand: the GPU decoder keeps them on device)."""
        return self.rows_between(0, self.num_labels).astype(self.row_dtype)

    @property
    def row_dtype(self) -> type:
        return np.int32 if self.reps * self.buckets <= _INT32_MAX else np.int64


class TableMembership:
    """Bucket membership held as tables: a label-major table and an inverted index (O(R·K))."""

    def __init__(self, table: np.ndarray, buckets: int) -> None:
        """Index a bucket table int [R, K] (checked by the decoder) over B buckets."""
        reps, num_labels = table.shape
        self.num_labels = int(num_labels)
        self.reps = int(reps)
        self.buckets = int(buckets)
        self.row_dtype = np.int32 if reps * self.buckets <= _INT32_MAX else np.int64
        self._rows = np.empty((num_labels, reps), dtype=self.row_dtype)
        # CSR per repetition: labels of bucket b of rep r are
        # self._labels[r, self._offsets[r, b] : self._offsets[r, b + 1]], in increasing id order.
        self._labels = np.empty((reps, num_labels), dtype=np.int32)
        self._offsets = np.zeros((reps, self.buckets + 1), dtype=np.int64)
        # A stable sort of 16-bit keys is a radix sort, several times faster than on int32.
        key_dtype = np.uint16 if self.buckets <= 1 << 16 else np.int32
        for r in range(reps):
            row = table[r].astype(np.int32, copy=False)
            np.add(row, r * self.buckets, out=self._rows[:, r], dtype=self.row_dtype)
            self._labels[r] = np.argsort(row.astype(key_dtype), kind="stable")
            np.cumsum(np.bincount(row, minlength=self.buckets), out=self._offsets[r, 1:])

    @property
    def nbytes(self) -> int:
        """Bytes held by the label-major table, the inverted index and its offsets."""
        return int(self._rows.nbytes + self._labels.nbytes + self._offsets.nbytes)

    def rows_of(self, labels: np.ndarray) -> np.ndarray:
        """`r·B + table[r, j]` [c, R] of labels j [c] (valid ids)."""
        return np.take(self._rows, labels, axis=0, mode="clip")

    def rows_between(self, start: int, stop: int) -> np.ndarray:
        """`rows_of` labels start..stop-1 (a view)."""
        return self._rows[start:stop]

    def candidates(self, top: np.ndarray, min_hits: int = 1, at_least: int = 1) -> np.ndarray:
        """Distinct labels (int32, increasing) in buckets top[r, :] of at least `min_hits`
        repetitions r, or of any if fewer than `at_least` are (see `_sorted_unique`)."""
        reps, num_labels = self.reps, self.num_labels
        rep_rows = np.arange(reps)[:, None]
        starts = self._offsets[rep_rows, top]  # [R, m]
        lengths = (self._offsets[rep_rows, top + 1] - starts).reshape(-1)
        starts = (starts + rep_rows * num_labels).reshape(-1)
        total = int(lengths.sum())
        if total == 0:
            return np.empty(0, dtype=np.int32)
        # Concatenate the ranges [start, start + length) of the flat index without a Python loop.
        shift = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
        shift += np.arange(total)
        return _sorted_unique(np.take(self._labels.reshape(-1), shift), min_hits, at_least)

    def bucket_labels(self, rep: int, bucket: int) -> np.ndarray:
        """Labels in `bucket` of repetition `rep` (int32, increasing), a read-only view."""
        view = self._labels[rep, self._offsets[rep, bucket] : self._offsets[rep, bucket + 1]]
        view.flags.writeable = False
        return view

    @property
    def flat_rows(self) -> np.ndarray:
        """The label-major table [K, R], read-only."""
        view = self._rows.view()
        view.flags.writeable = False
        return view
