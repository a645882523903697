"""MACH decoding: a hand-worked example, exact against brute force, fast against exact, rescoring,
padding, argument errors, the top-m bucket selection, concurrent calls, and the label-major
table and inverted index built from the real hash family."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from service.mach import decode as mach_decode
from service.mach import membership
from service.mach.decode import MachDecoder
from service.mach.hash import HashFamily

# K = 6 labels, R = 2 repetitions, B = 3 buckets; every label has its own pair of buckets.
HAND_TABLE = np.array([[0, 0, 1, 1, 2, 2], [0, 1, 2, 0, 1, 2]], dtype=np.int32)
HAND_SCORES = np.array(
    [
        [[-1.0, -2.0, -4.0], [-0.5, -3.0, -1.5]],
        [[-3.0, -0.25, -1.0], [-2.0, -0.5, -0.75]],
    ],
    dtype=np.float32,
)
# Query 0: labels 0..5 score -1.5, -4, -3.5, -2.5, -7, -5.5.
# Query 1: labels 0..5 score -5, -3.5, -1, -2.25, -1.5, -1.75.
HAND_LABEL_SCORES = np.array(
    [[-1.5, -4.0, -3.5, -2.5, -7.0, -5.5], [-5.0, -3.5, -1.0, -2.25, -1.5, -1.75]],
    dtype=np.float32,
)


def brute_force(table: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Score every label with an explicit float32 loop over r, order by (score desc, id asc)."""
    scores = scores.astype(np.float32)
    label_scores = scores[:, 0, table[0]].copy()
    for r in range(1, table.shape[0]):
        label_scores += scores[:, r, table[r]]
    ids = np.arange(table.shape[1])
    top = [np.lexsort((ids, -row))[:k] for row in label_scores]
    return np.take_along_axis(label_scores, np.array(top), axis=1), np.array(top)


def random_problem(
    labels: int, reps: int, buckets: int, queries: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    table = rng.integers(0, buckets, size=(reps, labels), dtype=np.int32)
    scores = np.log(rng.dirichlet(np.ones(buckets), size=(queries, reps))).astype(np.float32)
    return table, scores


def log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


def small_blocks(monkeypatch: pytest.MonkeyPatch, labels: int) -> None:
    """Force many label blocks and chunks through the gathers and the running top-k."""
    monkeypatch.setattr(mach_decode, "_CHUNK_VALUES", labels)
    monkeypatch.setattr(mach_decode, "_BLOCK_LABELS", max(1, labels // 3))
    monkeypatch.setattr(mach_decode, "_BLOCK_VALUES", 40)


def test_hand_worked_example() -> None:
    decoder = MachDecoder(HAND_TABLE, 3)
    assert (decoder.num_labels, decoder.reps, decoder.buckets) == (6, 2, 3)
    assert [decoder.bucket_labels(0, b).tolist() for b in range(3)] == [[0, 1], [2, 3], [4, 5]]
    assert [decoder.bucket_labels(1, b).tolist() for b in range(3)] == [[0, 3], [1, 4], [2, 5]]
    np.testing.assert_array_equal(decoder.label_buckets(np.arange(6)), HAND_TABLE.T)
    assert decoder.label_buckets(np.array([[4], [1]])).tolist() == [[[2, 1]], [[0, 1]]]

    vals, ids = decoder.exact(HAND_SCORES, 3)
    assert ids.tolist() == [[0, 3, 2], [2, 4, 5]]
    assert vals.tolist() == [[-1.5, -2.5, -3.5], [-1.0, -1.5, -1.75]]
    assert vals.dtype == np.float32 and ids.dtype == np.int64

    # top_buckets=1: query 0 reads bucket 0 in both reps -> {0, 1} | {0, 3}, so label 2 is missed;
    # query 1 reads bucket 1 in both reps -> {2, 3} | {1, 4}, so label 5 is missed.
    vals, ids = decoder.fast(HAND_SCORES, 3, top_buckets=1)
    assert ids.tolist() == [[0, 3, 1], [2, 4, 3]]
    assert vals.tolist() == [[-1.5, -2.5, -4.0], [-1.0, -1.5, -2.25]]

    all_labels = np.tile(np.arange(6), (2, 1))
    np.testing.assert_array_equal(decoder.rescore(HAND_SCORES, all_labels), HAND_LABEL_SCORES)


def test_padding_when_fewer_candidates_than_k() -> None:
    decoder = MachDecoder(HAND_TABLE, 3)
    vals, ids = decoder.fast(HAND_SCORES, 5, top_buckets=1)
    assert ids.tolist() == [[0, 3, 1, -1, -1], [2, 4, 3, 1, -1]]
    assert vals[0].tolist() == [-1.5, -2.5, -4.0, -np.inf, -np.inf]
    assert vals[1, 4] == -np.inf

    vals, ids = decoder.exact(HAND_SCORES, 8)  # k > K
    assert ids[0].tolist() == [0, 3, 2, 1, 5, 4, -1, -1]
    assert np.isneginf(vals[:, 6:]).all() and np.isfinite(vals[:, :6]).all()


@pytest.mark.parametrize("chunk", [None, 97, 10])
def test_exact_matches_brute_force(chunk: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if chunk is not None:
        small_blocks(monkeypatch, chunk)
    table, scores = random_problem(labels=3000, reps=4, buckets=64, queries=5, seed=0)
    decoder = MachDecoder(table, 64)
    for batch in (scores, scores[:1], scores[2:4]):
        vals, ids = decoder.exact(batch, 10)
        ref_vals, ref_ids = brute_force(table, batch, 10)
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_array_equal(vals, ref_vals)
    # and against a float64 sum, up to rounding
    ref64 = sum(scores[:, r, table[r]].astype(np.float64) for r in range(4))
    np.testing.assert_allclose(vals, np.take_along_axis(ref64[2:4], ids, axis=1), rtol=1e-6)


def test_zero_probability_buckets(monkeypatch: pytest.MonkeyPatch) -> None:
    small_blocks(monkeypatch, 50)
    table, scores = random_problem(labels=400, reps=3, buckets=16, queries=3, seed=8)
    scores[:, :, ::3] = -np.inf  # log(0): labels in those buckets score -inf
    scores[2] = -np.inf  # every label of query 2 scores -inf: ids still come in order
    decoder = MachDecoder(table, 16)
    vals, ids = decoder.exact(scores, 30)
    ref_vals, ref_ids = brute_force(table, scores, 30)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(vals, ref_vals)
    assert ids[2].tolist() == list(range(30))
    fast_vals, fast_ids = decoder.fast(scores, 30, top_buckets=16)
    np.testing.assert_array_equal(fast_ids, ids)
    np.testing.assert_array_equal(fast_vals, vals)


def test_ties_go_to_the_lower_id(monkeypatch: pytest.MonkeyPatch) -> None:
    small_blocks(monkeypatch, 7)
    table = np.zeros((2, 50), dtype=np.int32)  # every label in bucket 0: all scores tie
    table[:, 40] = 1  # but label 40, which sits in the better bucket
    decoder = MachDecoder(table, 2)
    scores = np.log(np.full((1, 2, 2), 0.5, dtype=np.float32))
    scores[0, :, 1] = 0.0
    for vals, ids in (decoder.exact(scores, 5), decoder.fast(scores, 5, top_buckets=2)):
        assert ids[0].tolist() == [40, 0, 1, 2, 3]
        assert vals[0, 0] == 0.0 and np.all(vals[0, 1:] == vals[0, 1])


@pytest.mark.parametrize("chunk", [None, 64])
def test_fast_with_all_buckets_equals_exact(
    chunk: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if chunk is not None:
        small_blocks(monkeypatch, chunk)
    # B^R = 512 bucket tuples for 500 labels: many labels tie, so the tie rule is exercised too.
    table, scores = random_problem(labels=500, reps=3, buckets=8, queries=6, seed=1)
    decoder = MachDecoder(table, 8)
    exact_vals, exact_ids = decoder.exact(scores, 20)
    fast_vals, fast_ids = decoder.fast(scores, 20, top_buckets=8)
    np.testing.assert_array_equal(fast_ids, exact_ids)
    np.testing.assert_array_equal(fast_vals, exact_vals)


def test_fast_scores_are_exact_scores(monkeypatch: pytest.MonkeyPatch) -> None:
    small_blocks(monkeypatch, 100)
    table, scores = random_problem(labels=5000, reps=6, buckets=128, queries=4, seed=9)
    decoder = MachDecoder(table, 128)
    ref_vals, ref_ids = brute_force(table, scores, 5000)  # every label, ranked
    for m in (1, 3, 17):
        vals, ids = decoder.fast(scores, 25, top_buckets=m)
        np.testing.assert_array_equal(decoder.rescore(scores, ids), vals)  # bit for bit
        for q in range(4):
            # the candidates are exactly the labels in some repetition's top-m buckets
            top = np.argsort(-scores[q], axis=1)[:, :m]
            opened = np.any([np.isin(table[r], top[r]) for r in range(6)], axis=0)
            ranked = opened[ref_ids[q]]
            assert ids[q].tolist() == ref_ids[q][ranked][:25].tolist()
            np.testing.assert_array_equal(vals[q], ref_vals[q][ranked][:25])


def test_fast_recall_on_structured_scores() -> None:
    labels, reps, buckets, queries, k = 20_000, 8, 256, 20, 10
    table = HashFamily(seed=3, reps=reps, buckets=buckets).bucket_table(labels)
    decoder = MachDecoder(table, buckets)
    rng = np.random.default_rng(2)
    logits = rng.normal(-6.0, 1.0, size=(queries, reps, buckets))
    truth = rng.choice(labels, size=(queries, 3), replace=False)
    for q in range(queries):
        for r in range(reps):
            logits[q, r, table[r, truth[q]]] = rng.normal(2.0, 0.5, size=3)
    scores = log_sigmoid(logits).astype(np.float32)
    _, exact_ids = decoder.exact(scores, k)
    _, fast_ids = decoder.fast(scores, k, top_buckets=5)
    recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(exact_ids, fast_ids, strict=True)])
    assert recall >= 0.95
    for q in range(queries):  # the planted labels come first in both
        assert set(fast_ids[q, :3]) == set(truth[q]) == set(exact_ids[q, :3])


def test_rescore_matches_exact_scores() -> None:
    table, scores = random_problem(labels=2000, reps=5, buckets=32, queries=4, seed=4)
    decoder = MachDecoder(table, 32)
    vals, ids = decoder.exact(scores, 15)
    np.testing.assert_array_equal(decoder.rescore(scores, ids), vals)

    rng = np.random.default_rng(5)
    labels = rng.integers(-1, 2000, size=(4, 30))
    labels[0, 0] = -1
    got = decoder.rescore(scores, labels)
    expected = sum(scores[:, r][np.arange(4)[:, None], table[r, labels]] for r in range(5))
    expected[labels < 0] = -np.inf
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert np.isneginf(got[0, 0]) and got.dtype == np.float32
    assert decoder.rescore(scores, np.empty((4, 0), dtype=np.int64)).shape == (4, 0)


def test_hash_family_tables_round_trip() -> None:
    labels, buckets = 5000, 50
    table = HashFamily(seed=7, reps=4, buckets=buckets).bucket_table(labels)
    decoder = MachDecoder(table, buckets)
    assert decoder.nbytes == 2 * table.nbytes + 4 * (buckets + 1) * 8
    np.testing.assert_array_equal(decoder.label_buckets(np.arange(labels)), table.T)
    for r in range(4):
        seen = []
        for b in range(buckets):
            members = decoder.bucket_labels(r, b)
            assert np.all(table[r, members] == b)
            assert np.all(np.diff(members) > 0)
            seen.append(members)
        np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(labels))


def test_empty_trailing_buckets_are_kept() -> None:
    table = np.array([[0, 1, 0], [1, 0, 1]], dtype=np.int32)  # buckets 2..9 empty
    decoder = MachDecoder(table, 10)
    assert decoder.buckets == 10 and decoder.bucket_labels(0, 9).size == 0
    scores = np.full((1, 2, 10), -5.0, dtype=np.float32)
    scores[0, :, 9] = 0.0  # the best buckets hold no labels
    vals, ids = decoder.fast(scores, 2, top_buckets=1)
    assert ids.tolist() == [[-1, -1]] and np.isneginf(vals).all()
    assert decoder.exact(scores, 2)[1].tolist() == [[0, 1]]


def test_top_buckets_through_block_maxima() -> None:
    rng = np.random.default_rng(10)
    for buckets in (4096, 1024, 96, 100):  # 100 is not a multiple of the block: argpartition
        scores = rng.standard_normal((3, 4, buckets)).astype(np.float32)
        for m in (1, 2, 5, 8, 40):
            got = np.sort(mach_decode.top_buckets_of(scores, m), axis=2)
            want = np.sort(np.argpartition(-scores, m - 1, axis=2)[:, :, :m], axis=2)
            np.testing.assert_array_equal(got, want)
    # with ties at the m-th score the buckets may differ, but their scores are the m best
    scores = np.round(rng.standard_normal((2, 3, 4096)), 1).astype(np.float32)
    for m in (1, 7, 30):
        top = mach_decode.top_buckets_of(scores, m)
        assert all(len(set(row)) == m for row in top.reshape(-1, m).tolist())
        got = np.sort(np.take_along_axis(scores, top, axis=2), axis=2)
        np.testing.assert_array_equal(got, np.sort(scores, axis=2)[:, :, -m:])


def test_fast_from_threads_at_once() -> None:
    labels, reps, buckets = 50_000, 8, 512
    table = HashFamily(seed=11, reps=reps, buckets=buckets).bucket_table(labels)
    decoder = MachDecoder(table, buckets)
    rng = np.random.default_rng(12)
    scores = log_sigmoid(rng.normal(-4.0, 2.0, size=(8, reps, buckets))).astype(np.float32)
    expected = [decoder.fast(scores[i : i + 1], 10, 6) for i in range(8)]
    results: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    start = threading.Barrier(4)

    def work(thread: int) -> None:
        start.wait()
        for rounds in range(5):
            for i in range(8):
                results[thread, rounds * 8 + i] = decoder.fast(scores[i : i + 1], 10, 6)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 * 40
    for (_, call), (vals, ids) in results.items():
        np.testing.assert_array_equal(ids, expected[call % 8][1])
        np.testing.assert_array_equal(vals, expected[call % 8][0])


def test_int64_rows_when_r_times_b_overflows_int32(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(membership, "_INT32_MAX", 7)  # R·B = 8 > 7, but K = 6 and B = 4 fit
    table = np.array([[0, 0, 1, 1, 2, 3], [0, 1, 2, 0, 1, 3]], dtype=np.int32)
    decoder = MachDecoder(table, 4)
    assert decoder.flat_rows.dtype == np.int64
    scores = np.log(np.random.default_rng(13).dirichlet(np.ones(4), size=(2, 2))).astype(np.float32)
    vals, ids = decoder.exact(scores, 6)
    ref_vals, ref_ids = brute_force(table, scores, 6)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(vals, ref_vals)
    np.testing.assert_array_equal(decoder.fast(scores, 6, 4)[1], ref_ids)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: MachDecoder(np.zeros(6, dtype=np.int32), 3), "table"),
        (lambda: MachDecoder(HAND_TABLE.astype(np.float32), 3), "table"),
        (lambda: MachDecoder(HAND_TABLE, 2), "table"),  # bucket 2 does not fit B = 2
        (lambda: MachDecoder(HAND_TABLE - 1, 3), "table"),
        (lambda: MachDecoder(HAND_TABLE, 0), "buckets"),
        (lambda: MachDecoder(HAND_TABLE, 3.0), "buckets"),
        (lambda: MachDecoder(HAND_TABLE, 3).exact(HAND_SCORES[:, :, :2], 3), "scores"),
        (lambda: MachDecoder(HAND_TABLE, 3).exact(HAND_SCORES[0], 3), "scores"),
        (lambda: MachDecoder(HAND_TABLE, 3).exact(np.full((1, 2, 3), np.nan), 3), "scores"),
        (lambda: MachDecoder(HAND_TABLE, 3).fast(np.full((1, 2, 3), np.inf), 3, 1), "scores"),
        (lambda: MachDecoder(HAND_TABLE, 3).exact(HAND_SCORES.astype(np.int64), 3), "scores"),
        (lambda: MachDecoder(HAND_TABLE, 3).exact(HAND_SCORES, 0), "k"),
        (lambda: MachDecoder(HAND_TABLE, 3).fast(HAND_SCORES, 2.5, 1), "k"),
        (lambda: MachDecoder(HAND_TABLE, 3).fast(HAND_SCORES, 3, top_buckets=0), "top_buckets"),
        (lambda: MachDecoder(HAND_TABLE, 3).fast(HAND_SCORES, 3, top_buckets=4), "top_buckets"),
        (lambda: MachDecoder(HAND_TABLE, 3).rescore(HAND_SCORES, np.array([[6], [0]])), "labels"),
        (lambda: MachDecoder(HAND_TABLE, 3).rescore(HAND_SCORES, np.array([[-2], [0]])), "labels"),
        (lambda: MachDecoder(HAND_TABLE, 3).rescore(HAND_SCORES, np.zeros((3, 1), int)), "labels"),
        (lambda: MachDecoder(HAND_TABLE, 3).rescore(HAND_SCORES, np.zeros((2, 1))), "labels"),
        (lambda: MachDecoder(HAND_TABLE, 3).bucket_labels(2, 0), "rep"),
        (lambda: MachDecoder(HAND_TABLE, 3).bucket_labels(0, 3), "bucket"),
        (lambda: MachDecoder(HAND_TABLE, 3).label_buckets(np.array([6])), "labels"),
        (lambda: MachDecoder(HAND_TABLE, 3).label_buckets(np.array([-1])), "labels"),
        (lambda: MachDecoder(HAND_TABLE, 3).label_buckets(np.array([0.0])), "labels"),
    ],
)
def test_errors_name_the_argument(call, name: str) -> None:
    with pytest.raises(ValueError, match=f"^{name}: "):
        call()


# --- computed membership (p < 2^31, no table) ---------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "buckets", "reps", "seed"),
    [(1, 2, 1, 0), (97, 97, 2, 1), (1000, 16, 4, 2), (5003, 64, 3, 3), (20_000, 1000, 2, 4)],
)
def test_computed_membership_equals_a_brute_force_table_for_every_head(
    labels: int, buckets: int, reps: int, seed: int
) -> None:
    family = HashFamily.for_labels(seed=seed, reps=reps, buckets=buckets, num_labels=labels)
    assert family.computed and family.prime >= max(labels, buckets)
    a, b = family.coefficients()
    brute = np.array(
        [[((a[r] * j + b[r]) % family.prime) % buckets for j in range(labels)] for r in range(reps)]
    )
    np.testing.assert_array_equal(family.bucket_table(labels), brute)
    decoder = MachDecoder.computed(family, labels)
    assert decoder.nbytes < 64 * reps
    np.testing.assert_array_equal(decoder.label_buckets(np.arange(labels)), brute.T)
    for r in range(reps):
        for bucket in range(buckets):
            expected = np.nonzero(brute[r] == bucket)[0]
            np.testing.assert_array_equal(decoder.bucket_labels(r, bucket), expected)


def test_computed_decoding_equals_exact_and_the_table_decoder() -> None:
    labels, buckets, reps = 3000, 64, 4
    family = HashFamily.for_labels(seed=9, reps=reps, buckets=buckets, num_labels=labels)
    computed = MachDecoder.computed(family, labels)
    table = MachDecoder(family.bucket_table(labels), buckets)
    rng = np.random.default_rng(21)
    scores = np.log(rng.dirichlet(np.ones(buckets), size=(5, reps))).astype(np.float32)
    exact = computed.exact(scores, 10)
    for got, want in zip(exact, brute_force(family.bucket_table(labels), scores, 10), strict=True):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(exact, table.exact(scores, 10), strict=True):
        np.testing.assert_array_equal(got, want)
    for m in (1, 3, 16):
        for got, want in zip(computed.fast(scores, 10, m), table.fast(scores, 10, m), strict=True):
            np.testing.assert_array_equal(got, want)
    for got, want in zip(computed.fast(scores, 10, buckets), exact, strict=True):
        np.testing.assert_array_equal(got, want)
    some = rng.integers(-1, labels, size=(5, 7))
    np.testing.assert_array_equal(computed.rescore(scores, some), table.rescore(scores, some))


@pytest.mark.parametrize("prime", [4, 1 << 31, (1 << 31) + 11, 2**61 - 3])
def test_a_family_prime_must_be_the_mersenne_prime_or_a_prime_below_2_31(prime: int) -> None:
    with pytest.raises(ValueError, match="prime"):
        HashFamily(seed=0, reps=2, buckets=8, prime=prime)


def test_a_computed_family_refuses_more_labels_than_its_prime() -> None:
    family = HashFamily.for_labels(seed=0, reps=2, buckets=8, num_labels=100)
    assert family.prime == 101
    with pytest.raises(ValueError, match="num_labels"):
        MachDecoder.computed(family, 102)
    with pytest.raises(ValueError, match="prime below 2"):
        MachDecoder.computed(HashFamily(seed=0, reps=2, buckets=8), 100)


def test_min_hits_keeps_the_labels_two_heads_agree_on_or_falls_back_to_the_union() -> None:
    from service.mach.decode import top_buckets_of
    from service.ranking import top_k

    labels, buckets, reps, m, k = 3000, 64, 4, 8, 5
    family = HashFamily.for_labels(seed=2, reps=reps, buckets=buckets, num_labels=labels)
    decoders = [MachDecoder.computed(family, labels), MachDecoder(family.bucket_table(labels), 64)]
    rng = np.random.default_rng(5)
    scores = np.log(rng.dirichlet(np.ones(buckets), size=(6, reps))).astype(np.float32)
    top = top_buckets_of(scores, m)
    every = decoders[0].label_buckets(np.arange(labels))  # [K, R]
    for q in range(len(scores)):
        hits = sum(np.isin(every[:, r], top[q, r]) for r in range(reps))
        agreed = np.flatnonzero(hits >= 2)
        pool = agreed if agreed.size >= k else np.flatnonzero(hits >= 1)
        vals = decoders[0].rescore(scores[q : q + 1], pool[None, :])
        want = top_k(vals, pool[None, :].astype(np.int64), k)
        for decoder in decoders:
            got = decoder.fast(scores[q : q + 1], k, m, min_hits=2)
            np.testing.assert_array_equal(got[1], want[1])
            np.testing.assert_array_equal(got[0], want[0])
    small = rng.dirichlet(np.ones(buckets), size=(1, reps)).astype(np.float32)
    # k larger than what two heads agree on: the union answers, as min_hits = 1 does
    for decoder in decoders:
        union = decoder.fast(np.log(small), 400, 2, min_hits=1)
        np.testing.assert_array_equal(decoder.fast(np.log(small), 400, 2, min_hits=2)[1], union[1])
