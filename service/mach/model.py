"""MACH at serving time: the heads' ONNX session, the n-gram featuriser and the bucket decoder.

Bucket membership comes from the manifest's hash parameters and the same `HashFamily` training
used (`service.mach.hash`), so the bundle stores no O(K) table: bundles trained since session 9
(a prime below 2^31) compute it and hold nothing per label; older ones (p = 2^61 - 1) still
load, with the table rebuilt at load (O(R·K) memory; retrain to drop it). On a GPU
(an array module `xp` such as CuPy) labels are decoded exactly over all K
(`service.mach.dense`); on a CPU by the top-m bucket decoder (`service.mach.decode`). Int8
heads whose bundle keeps the fp32 output layer (`exact_layer`) have their candidates rescored
with it (`service.mach.exact`), so they answer as the fp32 heads do.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import onnxruntime as ort

from service.bundle import BundleError, MachSpec, precision_file
from service.device import CPU_PROVIDER, open_session
from service.mach.decode import MachDecoder
from service.mach.dense import DenseMachDecoder
from service.mach.exact import ExactLayer, MachScores, refined_rescore, refined_top
from service.mach.features import NgramFeaturizer, empty_rows
from service.mach.hash import HashFamily

HEADS_OUTPUT = "bucket_log_probs"
HIDDEN_OUTPUT = "hidden"
# `auto` serves int8 heads from this size of fp32 output layer: at 32 MiB (1M labels) int8 with
# its exact rescoring answers no faster than fp32, at 256 MiB (10M) 30 % faster (bench.mach_heads).
AUTO_INT8_LAYER_BYTES = 64 << 20


def served_precision(spec: MachSpec, precision: str) -> str:
    """`precision` with auto resolved: int8 where the bundle's int8 heads are rescored by the
    fp32 rows (so they answer as fp32 does) and the output layer is large enough to gain."""
    if precision != "auto":
        return precision
    layer_bytes = 4 * spec.reps * spec.hidden * spec.buckets
    exact = spec.int8_heads is not None and spec.exact_layer is not None
    return "int8" if exact and layer_bytes >= AUTO_INT8_LAYER_BYTES else "fp32"


def heads_file(spec: MachSpec, precision: str) -> str:
    """The bundle file of the heads at `precision` (fp32, or int8 when the bundle has one)."""
    return precision_file(spec.heads, spec.int8_heads, precision, "MACH heads", "XC_MACH_PRECISION")


class MachModel:
    """Bucket scores for queries (`MachScores`), and label scores decoded from them."""

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
        self.precision = precision = served_precision(spec, precision)
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
        self.exact = None
        if precision == "int8" and spec.exact_layer and xp is None:
            self.exact = _exact_layer(bundle_dir, spec, self.session)
        self._outputs = [HEADS_OUTPUT, *([HIDDEN_OUTPUT] if self.exact else [])]
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

    def scores(self, embeddings: np.ndarray, texts: list[str]) -> MachScores:
        """The heads' output for queries (embedded and as text)."""
        if self.featurizer is not None:
            ids, weights = self.featurizer.transform(texts)
        else:  # heads without n-grams ignore these inputs
            ids, weights = empty_rows(len(texts))
        feeds = {
            "embedding": np.ascontiguousarray(embeddings, dtype=np.float32),
            "ngram_ids": ids,
            "ngram_weights": weights,
        }
        outputs = self.session.run(self._outputs, {name: feeds[name] for name in self._inputs})
        if self.exact is None:
            return MachScores(outputs[0])
        return MachScores(outputs[0], np.ascontiguousarray(outputs[1].transpose(1, 0, 2)))

    def bucket_scores(self, embeddings: np.ndarray, texts: list[str]) -> np.ndarray:
        """Bucket log-probabilities float32 [n, R, B] of queries (`scores(...).log_probs`)."""
        return self.scores(embeddings, texts).log_probs

    def decode(self, scores: MachScores, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k labels -> (summed log-probabilities, label ids) [n, k]: exact on the GPU, by
        the top-m bucket decoder on the CPU, refined by the fp32 layer for int8 heads."""
        if self.dense is not None:
            return self.dense.exact(scores.log_probs, k)
        top_buckets = min(self.spec.top_buckets, self.spec.buckets)
        if self.exact is not None:
            return refined_top(self.decoder, self.exact, scores, k, top_buckets)
        return self.decoder.fast(scores.log_probs, k, top_buckets)

    def rescore(self, scores: MachScores, labels: np.ndarray) -> np.ndarray:
        """Scores float32 [n, c] of given labels int [n, c] (-1: -inf)."""
        if self.exact is not None:
            return refined_rescore(self.decoder, self.exact, scores, labels)
        return self.decoder.rescore(scores.log_probs, labels)


def _exact_layer(bundle_dir: Path, spec: MachSpec, session: ort.InferenceSession) -> ExactLayer:
    """The bundle's fp32 output layer for the int8 heads `session`, which must output the
    hidden activations it is applied to."""
    outputs = {node.name for node in session.get_outputs()}
    if HIDDEN_OUTPUT not in outputs:
        raise BundleError(
            f"{bundle_dir / str(spec.int8_heads)}: lists mach.exact_layer but has no "
            f"{HIDDEN_OUTPUT!r} output; rebuild it with `python -m training quantize --bundle DIR`"
        )
    try:
        return ExactLayer(bundle_dir / str(spec.exact_layer), spec.reps, spec.buckets, spec.hidden)
    except ValueError as exc:
        raise BundleError(str(exc)) from exc
