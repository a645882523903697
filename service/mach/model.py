"""MACH at serving time: the heads' ONNX session, the n-gram featuriser and the bucket decoder.

Bucket membership comes from the manifest's hash parameters and the same `HashFamily` training
used (`service.mach.hash`), so the bundle stores no O(K) table: bundles trained since session 9
(a prime below 2^31) compute it and hold nothing per label; older ones (p = 2^61 - 1) still
load, with the table rebuilt at load (O(R·K) memory; retrain to drop it). On a GPU
(an array module `xp` such as CuPy) labels are decoded exactly over all K
(`service.mach.dense`); on a CPU by the top-m bucket decoder (`service.mach.decode`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np

from service.bundle import BundleError, MachSpec, precision_file
from service.device import CPU_PROVIDER, open_session
from service.mach.decode import MachDecoder
from service.mach.dense import DenseMachDecoder
from service.mach.features import NgramFeaturizer, empty_rows
from service.mach.hash import HashFamily

HEADS_OUTPUT = "bucket_log_probs"


def heads_file(spec: MachSpec, precision: str) -> str:
    """The bundle file of the heads at `precision` (fp32, or int8 when the bundle has one)."""
    return precision_file(spec.heads, spec.int8_heads, precision, "MACH heads", "XC_MACH_PRECISION")


class MachModel:
    """Bucket log-probabilities for queries, and label scores decoded from them."""

    def __init__(
        self,
        *,
        bundle_dir: Path,
        spec: MachSpec,
        num_labels: int,
        idf: np.ndarray | None,
        threads: int = 0,
        providers: Sequence[str] = (CPU_PROVIDER,),
        xp: ModuleType | None = None,
        precision: str = "fp32",
    ) -> None:
        self.spec = spec
        self.precision = precision
        try:
            family = HashFamily(
                seed=spec.hash_seed, reps=spec.reps, buckets=spec.buckets, prime=spec.hash_prime
            )
            if family.computed:  # bundles since session 9: nothing per label
                self.decoder = MachDecoder.computed(family, num_labels)
            else:  # hashed with 2^61 - 1: a table of every label's buckets, built here
                self.decoder = MachDecoder(family.bucket_table(num_labels), spec.buckets)
        except ValueError as exc:
            raise BundleError(
                f"manifest mach.hash_prime {spec.hash_prime} does not fit {num_labels} labels "
                f"({exc}); retrain the MACH heads for this catalog"
            ) from exc
        self.dense = DenseMachDecoder(self.decoder, xp) if xp is not None else None
        self.featurizer = None
        if spec.ngrams is not None:
            assert idf is not None, "load_bundle reads the IDF of every n-gram MACH model"
            ngrams = spec.ngrams
            self.featurizer = NgramFeaturizer(
                dim=ngrams.dim, ngram_max=ngrams.ngram_max, max_terms=ngrams.max_terms, idf=idf
            )
        path = bundle_dir / heads_file(spec, precision)
        self.session = open_session(path, threads, providers)
        self._inputs = [i.name for i in self.session.get_inputs()]
        probe = self.bucket_scores(np.zeros((1, self._embedding_dim()), np.float32), ["probe"])
        if probe.shape != (1, spec.reps, spec.buckets):
            raise BundleError(
                f"{path}: output shape {probe.shape}, manifest says "
                f"(1, {spec.reps}, {spec.buckets})"
            )

    def _embedding_dim(self) -> int:
        for node in self.session.get_inputs():
            if node.name == "embedding":
                return int(node.shape[1])
        return 1

    def bucket_scores(self, embeddings: np.ndarray, texts: list[str]) -> np.ndarray:
        """Bucket log-probabilities float32 [n, R, B] of queries (embedded and as text)."""
        if self.featurizer is not None:
            ids, weights = self.featurizer.transform(texts)
        else:  # heads without n-grams ignore these inputs
            ids, weights = empty_rows(len(texts))
        feeds = {
            "embedding": np.ascontiguousarray(embeddings, dtype=np.float32),
            "ngram_ids": ids,
            "ngram_weights": weights,
        }
        (scores,) = self.session.run([HEADS_OUTPUT], {name: feeds[name] for name in self._inputs})
        return scores

    def decode(self, bucket_scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k labels -> (summed log-probabilities, label ids) [n, k]: exact on the GPU, by
        the top-m bucket decoder on the CPU."""
        if self.dense is not None:
            return self.dense.exact(bucket_scores, k)
        top_buckets = min(self.spec.top_buckets, self.spec.buckets)
        return self.decoder.fast(bucket_scores, k, top_buckets)
