"""Scoring a bundle on a split through the same code the service runs (ONNX encoder + index).

Offline figures therefore measure what is served: tokenizer, exported encoder, ANN index and
all. Propensities come from the positives of the full training split of the dataset.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from service.engine import SearchEngine
from training.data import XCDataset
from training.metrics import METRIC_NAMES, evaluate, inverse_propensities

EVAL_DEPTH = 100


def evaluate_bundle(
    bundle_dir: str | Path,
    dataset: XCDataset,
    split: str,
    model: str | None = None,
    batch_size: int = 256,
) -> dict[str, float]:
    """Metrics of a bundle's model on one split; also reports points and per-query time."""
    engine = SearchEngine.load(bundle_dir)
    engine.resolve_model(model)
    if engine.manifest.labels.count != dataset.num_labels:
        raise ValueError(
            f"bundle has {engine.manifest.labels.count} labels, "
            f"dataset {dataset.name} has {dataset.num_labels}"
        )
    data = dataset.split(split)
    truth = data.positives(dataset.positive_min_weight)
    gains = data.positive_gains(dataset.positive_min_weight, dataset.graded)
    keep = [i for i, t in enumerate(truth) if len(t)]
    ranked = np.full((len(keep), EVAL_DEPTH), -1, dtype=np.int64)
    started = time.perf_counter()
    for start in tqdm(range(0, len(keep), batch_size), desc=f"evaluate {split}", unit="batch"):
        rows = keep[start : start + batch_size]
        vectors = engine.encoder.encode([data.texts[i] for i in rows])
        _, found = engine.search_vectors(vectors, EVAL_DEPTH)
        ranked[start : start + len(rows), : found.shape[1]] = found
    seconds = time.perf_counter() - started
    full = dataset.split("trn")
    inv_prop = inverse_propensities(
        dataset.label_frequencies(full), len(full), dataset.propensity_a, dataset.propensity_b
    )
    metrics = evaluate(
        ranked, [truth[i] for i in keep], [gains[i] for i in keep], inv_prop, METRIC_NAMES
    )
    metrics["ms_per_query_batched"] = 1000.0 * seconds / max(1, len(keep))
    return metrics
