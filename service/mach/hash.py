"""MACH's hash family, the one definition training and serving share.

Repetition r puts label j in bucket h_r(j) = ((a_r·j + b_r) mod p) mod B, a 2-universal family
with the Mersenne prime p = 2^61 − 1 > K. (a_r, b_r) are drawn from a seed, so the manifest's
(seed, p, R, B) rebuild the same tables anywhere. The arithmetic is exact and vectorised in
uint64: a_r·j mod p is computed from 31-bit halves, using 2^61 ≡ 1 (mod p).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MERSENNE_61 = (1 << 61) - 1
MAX_LABELS = 1 << 32  # label ids must fit the 32-bit half-products below

_P = np.uint64(MERSENNE_61)
_LOW_30 = np.uint64((1 << 30) - 1)


def _fold(x: np.ndarray) -> np.ndarray:
    """x mod p for x < 2^64, using 2^61 ≡ 1 (mod p)."""
    x = (x & _P) + (x >> np.uint64(61))
    return np.where(x >= _P, x - _P, x)


def _mulmod(a: int, j: np.ndarray) -> np.ndarray:
    """(a · j) mod p for a < p and j < 2^32, exact in uint64."""
    a_hi, a_lo = np.uint64(a >> 31), np.uint64(a & ((1 << 31) - 1))
    low = _fold(a_lo * j)  # < 2^63
    high = a_hi * j  # < 2^62; times 2^31 is folded below
    shifted = (high >> np.uint64(30)) + ((high & _LOW_30) << np.uint64(31))  # ≡ high·2^31
    return _fold(low + _fold(shifted))


@dataclass(kw_only=True, frozen=True)
class HashFamily:
    """R independent 2-universal hashes of label ids into B buckets."""

    seed: int
    reps: int
    buckets: int
    prime: int = MERSENNE_61

    def __post_init__(self) -> None:
        if self.prime != MERSENNE_61:
            raise ValueError(f"prime: only 2^61 - 1 is supported, got {self.prime}")
        if not 1 <= self.reps <= 1024:
            raise ValueError(f"reps: must be in 1..1024, got {self.reps}")
        if not 2 <= self.buckets <= 1 << 24:
            raise ValueError(f"buckets: must be in 2..2^24, got {self.buckets}")

    def coefficients(self) -> tuple[list[int], list[int]]:
        """(a_r, b_r) for every repetition: a_r in [1, p), b_r in [0, p)."""
        rng = np.random.default_rng(self.seed)
        a = rng.integers(1, self.prime, size=self.reps, dtype=np.uint64)
        b = rng.integers(0, self.prime, size=self.reps, dtype=np.uint64)
        return [int(x) for x in a], [int(x) for x in b]

    def bucket_table(self, num_labels: int, reps: range | None = None) -> np.ndarray:
        """Bucket of every label in each repetition: int32 [len(reps), num_labels]."""
        if not 1 <= num_labels <= MAX_LABELS:
            raise ValueError(f"num_labels: must be in 1..2^32, got {num_labels}")
        reps = reps if reps is not None else range(self.reps)
        a, b = self.coefficients()
        labels = np.arange(num_labels, dtype=np.uint64)
        table = np.empty((len(reps), num_labels), dtype=np.int32)
        for row, r in enumerate(reps):
            hashed = _fold(_mulmod(a[r], labels) + np.uint64(b[r]))
            table[row] = (hashed % np.uint64(self.buckets)).astype(np.int32)
        return table
