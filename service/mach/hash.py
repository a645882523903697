"""MACH's hash family, the one definition training and serving share.

Repetition r puts label j in bucket h_r(j) = ((a_r·j + b_r) mod p) mod B, a 2-universal family.
(a_r, b_r) are drawn from a seed, so the manifest's (seed, p, R, B) rebuild the same buckets
anywhere. Two primes are in use:

- **p = the smallest prime ≥ max(K, B)** (`HashFamily.for_labels`, every bundle trained since
  session 9): j -> (a_r·j + b_r) mod p is then a bijection of [0, p), so membership is computed,
  never stored. A label's buckets are R multiply-adds (`buckets_of`); the labels of bucket c are
  j = a_r⁻¹·(v − b_r) mod p for v = c, c + B, c + 2B, ... < p, keeping j < K (`labels_in`).
  Memory O(R) whatever K; p < 2^31, so every product fits int64.
- **p = 2^61 − 1** (bundles trained before): no inverse enumeration, so the decoder builds a
  table of every label's buckets at load (O(R·K)). The arithmetic is exact in uint64: a_r·j
  mod p is computed from 31-bit halves, using 2^61 ≡ 1 (mod p).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
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


def is_prime(n: int) -> bool:
    """Whether n is prime (trial division: n < 2^31 needs divisors up to 46,341)."""
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    return all(n % d for d in range(3, math.isqrt(n) + 1, 2))


def smallest_prime_at_least(n: int) -> int:
    """The smallest prime >= n."""
    while not is_prime(n):
        n += 1
    return n


def mod_(x: np.ndarray, divisor: int) -> np.ndarray:
    """x %= divisor in place for int64 x >= 0, as x - (x // d)·d: numpy divides by a scalar
    with a multiply-and-shift (libdivide) but takes a remainder with a hardware division, 7x
    slower; this is the inner loop of computed membership."""
    quotient = x // divisor
    quotient *= divisor
    x -= quotient
    return x


# Computed membership needs a·j < 2^62 for int64: p below 2^31.
MAX_COMPUTED_PRIME = (1 << 31) - 1


@dataclass(kw_only=True, frozen=True)
class HashFamily:
    """R independent 2-universal hashes of label ids into B buckets."""

    seed: int
    reps: int
    buckets: int
    prime: int = MERSENNE_61

    def __post_init__(self) -> None:
        if self.prime != MERSENNE_61 and not (
            self.prime <= MAX_COMPUTED_PRIME and is_prime(self.prime)
        ):
            raise ValueError(f"prime: must be 2^61 - 1 or a prime below 2^31, got {self.prime}")
        if not 1 <= self.reps <= 1024:
            raise ValueError(f"reps: must be in 1..1024, got {self.reps}")
        if not 2 <= self.buckets <= 1 << 24:
            raise ValueError(f"buckets: must be in 2..2^24, got {self.buckets}")

    @classmethod
    def for_labels(cls, *, seed: int, reps: int, buckets: int, num_labels: int) -> HashFamily:
        """The family with computed membership for K = `num_labels` labels."""
        if not 1 <= num_labels < MAX_COMPUTED_PRIME:
            raise ValueError(f"num_labels: must be in 1..2^31 - 2, got {num_labels}")
        prime = smallest_prime_at_least(max(num_labels, buckets))
        return cls(seed=seed, reps=reps, buckets=buckets, prime=prime)

    @property
    def computed(self) -> bool:
        """Whether membership is computed (p < 2^31), not tabulated (p = 2^61 - 1)."""
        return self.prime != MERSENNE_61

    def coefficients(self) -> tuple[list[int], list[int]]:
        """(a_r, b_r) for every repetition: a_r in [1, p), b_r in [0, p)."""
        rng = np.random.default_rng(self.seed)
        a = rng.integers(1, self.prime, size=self.reps, dtype=np.uint64)
        b = rng.integers(0, self.prime, size=self.reps, dtype=np.uint64)
        return [int(x) for x in a], [int(x) for x in b]

    def check_labels(self, num_labels: int) -> None:
        """ValueError unless K = `num_labels` labels can be hashed by this family."""
        limit = self.prime if self.computed else MAX_LABELS
        if not 1 <= num_labels <= limit:
            raise ValueError(f"num_labels: must be in 1..{limit} for this family, got {num_labels}")

    def bucket_table(self, num_labels: int, reps: range | None = None) -> np.ndarray:
        """Bucket of every label in each repetition: int32 [len(reps), num_labels]."""
        self.check_labels(num_labels)
        reps = reps if reps is not None else range(self.reps)
        if self.computed:
            buckets = self.buckets_of(np.arange(num_labels, dtype=np.int64), reps)
            return np.ascontiguousarray(buckets.T, dtype=np.int32)
        a, b = self.coefficients()
        labels = np.arange(num_labels, dtype=np.uint64)
        table = np.empty((len(reps), num_labels), dtype=np.int32)
        for row, r in enumerate(reps):
            hashed = _fold(_mulmod(a[r], labels) + np.uint64(b[r]))
            table[row] = (hashed % np.uint64(self.buckets)).astype(np.int32)
        return table

    def buckets_of(self, labels: np.ndarray, reps: Sequence[int] | None = None) -> np.ndarray:
        """Buckets int64 [c, len(reps)] of `labels` [c] (ints < p) in repetitions `reps`
        (default: all); computed families only. Every repetition at once, in place: a·j + b
        < 2^62, then mod p, mod B."""
        assert self.computed, "only a family with p < 2^31 computes membership"
        a, b = self._coefficient_arrays
        if reps is not None:
            a, b = a[list(reps)], b[list(reps)]
        hashed = np.multiply.outer(np.asarray(labels, dtype=np.int64), a)
        hashed += b
        return mod_(mod_(hashed, self.prime), self.buckets)

    def labels_in(self, rep: int, buckets: np.ndarray, num_labels: int) -> np.ndarray:
        """Every label j < K in any of `buckets` of repetition `rep`, int64, unordered;
        computed families only. O(len(buckets)·p/B) time, no table."""
        assert self.computed, "only a family with p < 2^31 enumerates a bucket"
        b = int(self._coefficient_arrays[1][rep])
        inverse = self._inverses[rep]
        per_bucket = -(-self.prime // self.buckets)  # values v ≡ c (mod B) below p, at most
        values = np.asarray(buckets, dtype=np.int64)[:, None] + self.buckets * np.arange(
            per_bucket, dtype=np.int64
        )
        values = values[values < self.prime]
        values -= b
        values += self.prime  # v - b + p >= 0
        mod_(values, self.prime)
        values *= inverse
        mod_(values, self.prime)
        return values[values < num_labels]

    @functools.cached_property
    def _coefficient_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(a_r, b_r) as int64 arrays [R] (a computed family's p is below 2^31)."""
        a, b = self.coefficients()
        return np.array(a, dtype=np.int64), np.array(b, dtype=np.int64)

    @functools.cached_property
    def _inverses(self) -> list[int]:
        return [pow(a, -1, self.prime) for a in self.coefficients()[0]]
