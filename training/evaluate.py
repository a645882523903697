"""Scoring a bundle on a split through the same code the service runs (ONNX encoder + index).

Offline figures therefore measure what is served: tokenizer, exported encoder, ANN index and
all. Propensities come from the positives of the full training split of the dataset.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from service.bundle import read_manifest
from service.search.engine import SearchEngine
from training.data import XCDataset
from training.ranking_metrics import METRIC_NAMES, evaluate, inverse_propensities

EVAL_DEPTH = 100


@dataclass(kw_only=True, frozen=True)
class EvalSet:
    """The points of one split that have a positive label, with what scoring them needs."""

    texts: list[str]
    truth: list[np.ndarray]
    gains: list[np.ndarray]
    inv_propensity: np.ndarray

    @classmethod
    def of(cls, dataset: XCDataset, split: str) -> EvalSet:
        """Points of `split` with >= 1 positive; propensities from the full training split."""
        data = dataset.split(split)
        truth = data.positives(dataset.positive_min_weight)
        gains = data.positive_gains(dataset.positive_min_weight, dataset.graded)
        keep = [i for i, t in enumerate(truth) if len(t)]
        full = dataset.split("trn")
        inv_prop = inverse_propensities(
            dataset.label_frequencies(full), len(full), dataset.propensity_a, dataset.propensity_b
        )
        return cls(
            texts=[data.texts[i] for i in keep],
            truth=[truth[i] for i in keep],
            gains=[gains[i] for i in keep],
            inv_propensity=inv_prop,
        )

    def score(self, ranked: np.ndarray, seconds: float | None = None) -> dict[str, float]:
        """The standard metrics of `ranked` [points, k]; with `seconds`, also ms per query."""
        metrics = evaluate(ranked, self.truth, self.gains, self.inv_propensity, METRIC_NAMES)
        if seconds is not None:
            metrics["ms_per_query_batched"] = 1000.0 * seconds / max(1, len(self.texts))
        return metrics


def evaluate_bundle(
    bundle_dir: str | Path,
    dataset: XCDataset,
    split: str,
    model: str | None = None,
    batch_size: int = 256,
    hybrid_weight: float | None = None,
    precision: str = "fp32",
    lexical_weight: float | None = None,
    mach_precision: str = "fp32",
    encoder_size: str = "full",
    ranker: str = "auto",
) -> dict[str, float]:
    """Metrics of a bundle's model on one split; also reports points and per-query time.

    The weights default to the bundle's own. A learned ranker is never scored on the split it
    learned from (dev: its figures there are the manifest's cross-validated ones): there the
    formula ranks, so dev tuning of a bundle with a ranker tunes the formula's weights."""
    spec = read_manifest(bundle_dir).astra
    if spec is not None and spec.ranker is not None and spec.ranker.trained_on == split:
        ranker = "off"
    engine = SearchEngine.load(
        bundle_dir,
        hybrid_weight=hybrid_weight,
        precision=precision,
        lexical_weight=lexical_weight,
        mach_precision=mach_precision,
        encoder_size=encoder_size,
        ranker=ranker,
    )
    engine.resolve_model(model)
    if engine.manifest.labels.count != dataset.num_labels:
        raise ValueError(
            f"bundle has {engine.manifest.labels.count} labels, "
            f"dataset {dataset.name} has {dataset.num_labels}"
        )
    points = EvalSet.of(dataset, split)
    ranked = np.full((len(points.texts), EVAL_DEPTH), -1, dtype=np.int64)
    started = time.perf_counter()
    starts = range(0, len(points.texts), batch_size)
    for start in tqdm(starts, desc=f"evaluate {split}", unit="batch"):
        _, found = engine.rank(points.texts[start : start + batch_size], EVAL_DEPTH, model)
        ranked[start : start + len(found), : found.shape[1]] = found
    return points.score(ranked, time.perf_counter() - started)
