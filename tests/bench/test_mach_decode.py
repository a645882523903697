"""bench.mach_decode's proof depth: opening that many buckets per head decodes exactly."""

from __future__ import annotations

import argparse

import pytest

from bench.mach_decode import certify_depth, graded_scores, planted_scores
from service.mach.decode import MachDecoder
from service.mach.hash import HashFamily


def _args() -> argparse.Namespace:
    return argparse.Namespace(
        noise=1.0,
        background=-6.0,
        related_min=20,
        related_max=50,
        top_logit=3.0,
        bottom_logit=-2.0,
        rep_noise=0.5,
        planted=5,
        planted_logit=2.0,
    )


@pytest.mark.parametrize("make", [graded_scores, planted_scores])
def test_fast_decoding_at_the_proof_depth_equals_exact_decoding(make) -> None:
    num_labels, buckets, reps = 20_000, 128, 8
    family = HashFamily.for_labels(seed=3, reps=reps, buckets=buckets, num_labels=num_labels)
    decoder = MachDecoder.computed(family, num_labels)
    scores, _ = make(decoder, 6, _args(), seed=5)
    _, exact_ids = decoder.exact(scores, 10)
    for query, ids in zip(scores, exact_ids, strict=True):
        certify = certify_depth(decoder, query[None], ids[None])
        depth = round(certify["fraction_of_buckets_max"] * buckets)
        assert 1 <= depth <= buckets
        # the rule's depth proves exact's top 10: fast decoding at that depth finds it
        _, found = decoder.fast(query[None], 10, depth)
        assert set(found[0]) == set(ids)
        expected = num_labels * (1 - (1 - depth / buckets) ** reps)
        assert certify["candidates_p50"] == round(expected)
