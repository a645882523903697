"""MACH decoding: label scores from bucket scores.

A MACH model (Medini et al., 2019) has R independent heads, each a classifier over B buckets;
label j sits in bucket ``table[r, j]`` of repetition r (see :mod:`service.mach.hash`). For a
query the model yields bucket log-probabilities ``scores[q, r, b]``, and a label's score is their
sum over the repetitions, ``sum_r scores[q, r, table[r, j]]``: the log of the product of its R
bucket probabilities, a soft AND over repetitions (the count-min sketch read-out).

Two decoders answer top-k:

- :meth:`MachDecoder.fast` (the serving path) takes, per query and repetition, the labels in the
  ``top_buckets`` best buckets (from an inverted index bucket -> labels), rescores the union of
  those candidates exactly and returns its top-k. Cost about O(R·m·R·K/B) per query instead of
  O(R·K); a label that is in none of the top-m buckets of any repetition is missed, so it is
  approximate.
- :meth:`MachDecoder.exact` (the reference) scores all K labels, in chunks of labels so that
  memory stays bounded at K = 10^7 and beyond, keeping a running top-k. Cost O(n·R·K).

:meth:`MachDecoder.rescore` scores given labels exactly (e.g. candidates from another model).

Every method cuts its lists with :func:`service.ranking.top_k` (score descending, ties broken by
the lower label id), so ``fast`` with ``top_buckets = B`` returns exactly what ``exact``
returns. Scores are summed in float32 in the order r = 0..R-1 everywhere, so the three methods
agree bit for bit.

Layout. The bucket table is held once, label-major: ``rows[j, r] = r·B + table[r, j]``, int32
[K, R] C-contiguous (int64 if R·B does not fit int32), so a label's R buckets are one 4·R-byte
row (one cache line at R = 16) and index straight into a query's flattened [R·B] scores. Scoring
c candidates is then one row gather from the table (c cache lines, instead of c·R scattered reads
from a repetition-major [R, K] table: about 2.5x faster ``fast`` at K = 10^7) and a gather of
c·R floats from the query's scores, repetition by repetition. Both are done in blocks of a few
thousand labels so the temporaries stay small and in cache (large temporaries cost page faults
on every call). ``exact`` pays for the layout: it must transpose each block of rows, and one
query at a time it takes about 1.6x the CPU time it took over a repetition-major table (in
batches of 32, between 0.7x and 1.25x).

Memory: the table and the inverted index (labels grouped by bucket for each repetition, int32
[R, K]) are 8·R·K bytes, plus int64 offsets [R, B+1]: O(R·K), e.g. 1.28 GB for R = 16,
K = 10^7. This is the serving cost that MACH's O(R·B) model does not count; both can be rebuilt
from the hash family. All scratch buffers are allocated per call, so a decoder may be used from
several threads at once.
"""

from __future__ import annotations

import numpy as np

from service.mach.hash import HashFamily
from service.mach.membership import ComputedMembership, TableMembership
from service.ranking import top_k

Membership = ComputedMembership | TableMembership

# Labels per block when gathering and summing scores: a block's [labels, R] temporaries stay a
# few hundred KiB (in cache). Exact decoding on n queries uses blocks of at most _BLOCK_VALUES
# gathered floats, and merges its running top-k once per chunk of _CHUNK_VALUES / n labels.
_BLOCK_LABELS = 4096
_BLOCK_VALUES = 1 << 18
_CHUNK_VALUES = 1 << 18
# Top-m buckets of a repetition are found through the maxima of blocks of this many buckets.
_TOP_BLOCK = 32
_INT32_MAX = np.iinfo(np.int32).max


class MachDecoder:
    """Label scores from bucket scores.

    ``fast`` rescores the candidates from the top-m buckets of each repetition; ``exact`` scores
    all K labels; ``rescore`` scores given labels.
    """

    def __init__(self, table: np.ndarray, buckets: int) -> None:
        """Index a bucket table int [R, K] (from ``HashFamily.bucket_table``) over B buckets.

        The decoder keeps its own label-major copy (`TableMembership`); the caller's table may
        be dropped. `computed` builds a decoder that holds no table at all.
        """
        table = np.asarray(table)
        if table.ndim != 2 or table.shape[0] < 1 or table.shape[1] < 1:
            raise ValueError(f"table: expected a non-empty [R, K] array, got shape {table.shape}")
        if not np.issubdtype(table.dtype, np.integer):
            raise ValueError(f"table: expected integer bucket ids, got dtype {table.dtype}")
        if isinstance(buckets, bool) or not isinstance(buckets, (int, np.integer)):
            raise ValueError(f"buckets: expected an int, got {type(buckets).__name__}")
        if not 1 <= buckets <= _INT32_MAX:
            raise ValueError(f"buckets: must be in 1..2^31-1, got {buckets}")
        if table.shape[1] > _INT32_MAX:
            raise ValueError(f"table: at most 2^31-1 labels fit int32 ids, got {table.shape[1]}")
        low, high = int(table.min()), int(table.max())
        if low < 0 or high >= buckets:
            raise ValueError(f"table: bucket ids must be in 0..{buckets - 1}, got {low}..{high}")
        self._members: Membership = TableMembership(table, int(buckets))

    @classmethod
    def computed(cls, family: HashFamily, num_labels: int) -> MachDecoder:
        """A decoder whose membership is computed from `family` (p < 2^31): no O(K) table."""
        decoder = cls.__new__(cls)
        decoder._members = ComputedMembership(family, num_labels)
        return decoder

    @property
    def num_labels(self) -> int:
        """K, the number of labels."""
        return self._members.num_labels

    @property
    def reps(self) -> int:
        """R, the number of repetitions (heads)."""
        return self._members.reps

    @property
    def buckets(self) -> int:
        """B, the number of buckets per repetition."""
        return self._members.buckets

    @property
    def flat_rows(self) -> np.ndarray:
        """Label-major buckets with offsets folded in, ``r·B + table[r, j]`` [K, R], read-only:
        a label's indices into a query's flattened [R·B] scores (for other decoders)."""
        return self._members.flat_rows

    @property
    def nbytes(self) -> int:
        """Bytes the membership holds: 8·R·K for a table, next to nothing when computed."""
        return self._members.nbytes

    def label_buckets(self, labels: np.ndarray) -> np.ndarray:
        """Bucket ids int64 [..., R] of labels int [...] (``table[:, labels]`` moved last)."""
        labels = np.asarray(labels)
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels: expected integer ids, got dtype {labels.dtype}")
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_labels):
            raise ValueError(f"labels: ids must be in 0..{self.num_labels - 1}")
        offsets = np.arange(self.reps, dtype=np.int64) * self.buckets
        flat = self._members.rows_of(labels.reshape(-1)).astype(np.int64) - offsets
        return flat.reshape(*labels.shape, self.reps)

    def bucket_labels(self, rep: int, bucket: int) -> np.ndarray:
        """Labels in ``bucket`` of repetition ``rep`` (int32, increasing), a read-only view."""
        if not 0 <= rep < self.reps:
            raise ValueError(f"rep: must be in 0..{self.reps - 1}, got {rep}")
        if not 0 <= bucket < self.buckets:
            raise ValueError(f"bucket: must be in 0..{self.buckets - 1}, got {bucket}")
        return self._members.bucket_labels(rep, bucket)

    # -- decoding ---------------------------------------------------------------------------

    def exact(self, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k over all K labels: (scores float32 [n, k], ids int64 [n, k]), best first.

        Rows are padded with id -1 and score -inf when k > K.
        """
        scores = self.check_scores(scores)
        k = check_k(k)
        n = scores.shape[0]
        reps, num_labels = self.reps, self.num_labels
        kk = min(k, num_labels)
        # [R·B, n]: a gathered row is the bucket's n scores, contiguous.
        by_bucket = np.ascontiguousarray(scores.reshape(n, -1).T)
        chunk = min(num_labels, max(kk, _CHUNK_VALUES // n))
        block = min(chunk, _BLOCK_LABELS, max(1, _BLOCK_VALUES // (reps * n)))
        index = np.empty(reps * block, dtype=np.intp)
        gathered = np.empty(reps * block * n, dtype=np.float32)
        acc = np.empty((chunk, n), dtype=np.float32)
        best_vals = np.empty((n, 0), dtype=np.float32)
        best_ids = np.empty((n, 0), dtype=np.int64)
        for start in range(0, num_labels, chunk):
            stop = min(start + chunk, num_labels)
            for a in range(start, stop, block):
                b = min(a + block, stop)
                w = b - a
                # As in _label_scores: index [R, w], scores gathered repetition by repetition.
                rep_index = index[: reps * w].reshape(reps, w)
                np.copyto(rep_index, self._members.rows_between(a, b).T)
                rep_scores = gathered[: reps * w * n].reshape(reps, w, n)
                np.take(by_bucket, rep_index, axis=0, out=rep_scores, mode="clip")
                out = acc[a - start : b - start]
                np.copyto(out, rep_scores[0])
                for r in range(1, reps):
                    out += rep_scores[r]
            best_vals, best_ids = _merge_top_k(best_vals, best_ids, acc[: stop - start], start, kk)
        return top_k(best_vals, best_ids, k)

    def fast(
        self, scores: np.ndarray, k: int, top_buckets: int, min_hits: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top-k: exact scores of the labels in each repetition's top-m buckets.

        Candidates for a query are the labels in the ``top_buckets`` highest scoring buckets of
        at least ``min_hits`` repetitions (1: the union; 2 keeps the labels two heads agree on,
        a few hundred instead of tens of thousands at K = 10M, falling back to the union when
        fewer than k remain); they are rescored exactly and the best k returned as
        (scores float32 [n, k], ids int64 [n, k]), best first, padded with id -1 and score -inf
        when there are fewer than k candidates.
        """
        scores = self.check_scores(scores)
        k = check_k(k)
        if isinstance(top_buckets, bool) or not isinstance(top_buckets, (int, np.integer)):
            raise ValueError(f"top_buckets: expected an int, got {type(top_buckets).__name__}")
        if not 1 <= top_buckets <= self.buckets:
            raise ValueError(f"top_buckets: must be in 1..{self.buckets}, got {top_buckets}")
        top = None if top_buckets == scores.shape[2] else top_buckets_of(scores, top_buckets)
        return self.fast_from(scores, top, k, min_hits)

    def fast_from(
        self, scores: np.ndarray, top: np.ndarray | None, k: int, min_hits: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """`fast` with each repetition's open buckets given: ids int [n, R, m] (None: all B).
        `scores` must have passed `check_scores`; `service.mach.exact` chooses its own."""
        n, reps, num_buckets = scores.shape
        flat_scores = scores.reshape(n, reps * num_buckets)
        out_vals = np.full((n, k), -np.inf, dtype=np.float32)
        out_ids = np.full((n, k), -1, dtype=np.int64)
        for q in range(n):
            if top is None:
                candidates = np.arange(self.num_labels, dtype=np.int32)
            else:
                candidates = self._members.candidates(top[q], min_hits, at_least=k)
            if candidates.size == 0:
                continue
            vals = self._label_scores(flat_scores[q], candidates)
            vals, ids = top_k(vals[None, :], candidates.astype(np.int64)[None, :], k)
            out_vals[q], out_ids[q] = vals[0], ids[0]
        return out_vals, out_ids

    def rescore(self, scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Exact scores float32 [n, c] of labels int [n, c]; label -1 scores -inf."""
        scores = self.check_scores(scores)
        labels = np.asarray(labels)
        if labels.ndim != 2 or labels.shape[0] != scores.shape[0]:
            raise ValueError(f"labels: expected shape [{scores.shape[0]}, c], got {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels: expected integer ids, got dtype {labels.dtype}")
        if labels.size and (labels.min() < -1 or labels.max() >= self.num_labels):
            raise ValueError(
                f"labels: ids must be in 0..{self.num_labels - 1} or -1, "
                f"got {labels.min()}..{labels.max()}"
            )
        n = scores.shape[0]
        flat_scores = scores.reshape(n, -1)
        missing = labels < 0
        safe = np.where(missing, 0, labels)
        out = np.empty(labels.shape, dtype=np.float32)
        for q in range(n):
            out[q] = self._label_scores(flat_scores[q], safe[q])
        out[missing] = -np.inf
        return out

    # -- helpers ----------------------------------------------------------------------------

    def _label_scores(self, query: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """sum_r query[rows[j, r]] in float32, r = 0..R-1 in order, for labels j: float32 [c].

        ``query`` is one query's flattened scores [R·B]; ``labels`` are valid ids. Per block of
        labels: gather their table rows [w, R], transpose them into an index [R, w] and gather
        the scores [R, w] repetition by repetition (each repetition's B scores stay in cache),
        then add the R contiguous rows in order.
        """
        c, reps = labels.shape[0], self.reps
        out = np.empty(c, dtype=np.float32)
        block = max(1, min(c, _BLOCK_LABELS))
        index = np.empty(reps * block, dtype=np.intp)
        gathered = np.empty(reps * block, dtype=np.float32)
        for a in range(0, c, block):
            b = min(a + block, c)
            w = b - a
            rep_index = index[: reps * w].reshape(reps, w)
            np.copyto(rep_index, self._members.rows_of(labels[a:b]).T)
            rep_scores = gathered[: reps * w].reshape(reps, w)
            np.take(query, rep_index, out=rep_scores, mode="clip")
            acc = out[a:b]
            np.copyto(acc, rep_scores[0])
            for r in range(1, reps):
                acc += rep_scores[r]
        return out

    def check_scores(self, scores: np.ndarray) -> np.ndarray:
        """Bucket scores as float32 C-contiguous [n, R, B]; ValueError names what is wrong."""
        scores = np.asarray(scores)
        expected = (self.reps, self.buckets)
        if scores.ndim != 3 or scores.shape[1:] != expected or scores.shape[0] < 1:
            raise ValueError(
                f"scores: expected shape [n, {expected[0]}, {expected[1]}] with n >= 1, "
                f"got {scores.shape}"
            )
        if not np.issubdtype(scores.dtype, np.floating):
            raise ValueError(f"scores: expected floating-point values, got dtype {scores.dtype}")
        scores = np.ascontiguousarray(scores, dtype=np.float32)
        # One pass catches both: NaN < inf is False. (-inf, a zero probability, is allowed.)
        if not (scores < np.inf).all():
            raise ValueError("scores: contains NaN or +inf")
        return scores


def check_k(k: int) -> int:
    """k as an int >= 1; ValueError otherwise."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k: expected an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k: must be >= 1, got {k}")
    return int(k)


def top_buckets_of(scores: np.ndarray, m: int) -> np.ndarray:
    """Ids int [n, R, m] of the m highest scores of each row of scores [n, R, B] (any order).

    With many buckets, split each row into B/w blocks of w = _TOP_BLOCK buckets (block i holds
    buckets i, i + B/w, i + 2B/w, ..., so the block maxima are w elementwise maxima of
    contiguous rows), keep the m blocks with the highest maxima and select among their m·w
    buckets. A bucket among the m best lies in a block whose maximum is at least the m-th best
    score, so those m blocks hold m buckets whose scores are the m best (ties at the m-th score
    may pick different buckets, as argpartition's do). About 4x faster at B = 32768.
    """
    n, reps, num_buckets = scores.shape
    width = _TOP_BLOCK
    if num_buckets % width or m * width * 4 > num_buckets:
        return np.argpartition(scores, num_buckets - m, axis=2)[:, :, num_buckets - m :]
    blocks = num_buckets // width
    block_max = scores.reshape(n, reps, width, blocks).max(axis=2)
    top_blocks = np.argpartition(block_max, blocks - m, axis=2)[:, :, blocks - m :]
    inside = top_blocks[..., None] + np.arange(0, num_buckets, blocks)
    inside = inside.reshape(n, reps, m * width)
    values = np.take_along_axis(scores, inside, axis=2)
    pick = np.argpartition(values, m * width - m, axis=2)[:, :, m * width - m :]
    return np.take_along_axis(inside, pick, axis=2)


def _merge_top_k(
    best_vals: np.ndarray, best_ids: np.ndarray, chunk: np.ndarray, start: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merge the scores [c, n] of labels start..start+c-1 into a running top-k [n, <=k].

    Labels arrive in increasing id order, so once a row holds k entries a new label can only
    enter by beating its worst score strictly (it would lose a tie on id): only those are merged.
    """
    c, n = chunk.shape
    if best_vals.shape[1] < k:  # not yet full: merge everything
        vals = np.ascontiguousarray(chunk.T)
        ids = np.broadcast_to(np.arange(start, start + c, dtype=np.int64), vals.shape)
        return top_k(
            np.concatenate([best_vals, vals], axis=1), np.concatenate([best_ids, ids], axis=1), k
        )
    worst = best_vals.min(axis=1)
    label_idx, rows = np.nonzero(chunk > worst)
    if label_idx.size == 0:
        return best_vals, best_ids
    # Lay the winners out as [n, width], padded with -inf and an id that loses every tie.
    order = np.argsort(rows, kind="stable")
    label_idx, rows = label_idx[order], rows[order]
    counts = np.bincount(rows, minlength=n)
    pos = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
    width = int(counts.max())
    new_vals = np.full((n, width), -np.inf, dtype=np.float32)
    new_ids = np.full((n, width), np.iinfo(np.int64).max, dtype=np.int64)
    new_vals[rows, pos] = chunk[label_idx, rows]
    new_ids[rows, pos] = label_idx + start
    return top_k(
        np.concatenate([best_vals, new_vals], axis=1),
        np.concatenate([best_ids, new_ids], axis=1),
        k,
    )
