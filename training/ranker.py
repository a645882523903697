"""`python -m training ranker`: a learned ranker (LambdaMART) trained into a bundle.

Why dev and not the training split: ASTRA's classifier vectors are free per-product parameters
fitted to the training queries, so on those queries the relevant products' scores are inflated
and their popularity counts the query itself. A ranker trained on training-split features
learns to trust them blindly: on Home Depot it scored dev nDCG@10 0.115 (against the formula's
0.439). So the ranker learns from the dev split's graded pairs, which the bundle never trained
on, and what it is worth is measured by cross-validation on dev (2 folds, 3 shuffles: each
query scored by a ranker that did not see it), next to the formula on the same queries; the
ranker written into the bundle is then fitted on all of dev. Features are computed by
`service.search.ranker.candidate_features` through the engine exactly as served (the bundle's
default encoder size and precision), so training and serving cannot disagree.

Dev is small (1,046 Home Depot queries), so `--stack-from` gives the ranker more to learn from
without the leak: a bundle of the same recipe fitted on one half of train (`--train-split
train-a`) scores the other half's queries, which are as new to it as dev is to the ranked bundle,
with its own popularity and the encoder the ranked bundle serves (`stacked_rows`); a second
helper fitted on the other half (`train-b`) scores the first half's. Those rows are in every
fold's training data and in the final fit; dev alone is still what it is scored on, and the
manifest names the helpers (`astra.ranker.stacked`).

The ablation adds the feature groups in turn (`GROUPS`) and cross-validates each set the same
way. Everything lands in the manifest (`astra.ranker`) and the command's JSON. Where the ranked
ASTRA beats the bundle's default model on dev (the demo's hybrid, say), ASTRA becomes the
default.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import lightgbm
import numpy as np
from tqdm import tqdm

from service.bundle import (
    BundleError,
    RankerSpec,
    StackedRowsSpec,
    load_bundle,
    read_manifest,
    write_manifest,
)
from service.ranking import top_k
from service.search.engine import SearchEngine
from service.search.ranker import FEATURES, RANKER_INPUT
from training.data import XCDataset, load_dataset
from training.dataset import TRAIN_HALVES
from training.evaluate import EVAL_DEPTH, EvalSet
from training.quantize import list_in_manifest

if TYPE_CHECKING:
    from training.shopdata import ShopDataSpec

RANKER_FILE = "ranker.onnx"
EXPLAIN_FILE = "ranker.lgb.txt"
POPULARITY_FILE = "ranker_popularity.npy"
# Chosen by cross-validation on Home Depot dev (nDCG@10 of 3 × 2 folds): 7 leaves, 150 rounds
# at 0.05, at least 30 pairs a leaf and an L2 of 10 (0.4608); 100 rounds with no L2 0.4597,
# 15 leaves 0.4521.
PARAMS = {
    "rounds": 150,
    "num_leaves": 7,
    "learning_rate": 0.05,
    "min_data_in_leaf": 30,
    "lambda_l2": 10.0,
}
GROUPS = (
    ("scores", ("astra", "astra_gap", "bm25", "bm25_share")),
    ("+ ranks and sources", ("from_index", "from_lexical", "astra_rank", "bm25_rank")),
    ("+ popularity", ("popularity",)),
    (
        "+ term matching",
        ("terms_matched", "term_coverage", "idf_coverage", "query_terms", "title_terms"),
    ),
    ("+ numbers", ("numbers_matched", "query_numbers")),
)
SEEDS = (0, 1, 2)
METRICS = ("nDCG@10", "P@1", "P@5")

log = logging.getLogger(__name__)


def popularity(dataset: XCDataset, split: str) -> np.ndarray:
    """log(1 + the `split` queries each product is relevant to), float32 [K]."""
    counts = np.zeros(dataset.num_labels, np.float64)
    for labels in dataset.split(split).positives(dataset.positive_min_weight):
        np.add.at(counts, labels, 1.0)
    return np.log1p(counts).astype(np.float32)


def collect(
    engine: SearchEngine, texts: list[str], popular: np.ndarray, batch: int = 256
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidates (labels [n, c]), their features [n, c, F] and the formula's scores [n, c],
    through the engine's own candidate path."""
    labels, features, formula = [], [], []
    for start in tqdm(range(0, len(texts), batch), desc="ranker features", unit="batch"):
        queries = texts[start : start + batch]
        found, _ = engine.candidates(engine.encoder.encode(queries), queries, 10, True, False)
        labels.append(found.labels)
        features.append(engine.features(found, popular))
        formula.append(engine.lexical_formula(found))
    width = max(row.shape[1] for row in labels)
    return _pad(labels, width, -1), _pad(features, width, 0.0), _pad(formula, width, -np.inf)


def _pad(rows: list[np.ndarray], width: int, value: float) -> np.ndarray:
    """Batches [n_b, c_b, ...] padded to c = `width` and stacked."""
    padded = []
    for row in rows:
        spec = [(0, 0), (0, width - row.shape[1])] + [(0, 0)] * (row.ndim - 2)
        padded.append(np.pad(row, spec, constant_values=value))
    return np.concatenate(padded)


def relevance_gains(dataset: XCDataset, splits: list[str]) -> np.ndarray:
    """The distinct positive gains of `splits`, ascending: level i > 0 of LightGBM's relevance
    is the i-th of them."""
    gains = np.concatenate([g for split in splits for g in EvalSet.of(dataset, split).gains])
    unique = np.unique(gains.round(4))
    if len(unique) > 30:
        raise ValueError(
            f"{len(unique)} distinct relevance gains; LightGBM ranks at most 30 levels"
        )
    return unique


def grade_levels(
    dataset: XCDataset,
    split: str,
    texts: list[str],
    labels: np.ndarray,
    gains: np.ndarray | None = None,
) -> tuple[np.ndarray, list[float]]:
    """LightGBM's integer relevance [n, c] of each candidate and the gain of each level: level
    i > 0 is the i-th smallest positive gain, as nDCG counts it (`EvalSet`); 0 is the rest.
    `gains` (default: the split's own, `relevance_gains`) puts several splits on one scale."""
    points = EvalSet.of(dataset, split)
    assert points.texts == texts
    gains = relevance_gains(dataset, [split]) if gains is None else gains
    levels = np.zeros(labels.shape, np.int32)
    for i, (truth, gain) in enumerate(zip(points.truth, points.gains, strict=True)):
        level = np.searchsorted(gains, gain.round(4)) + 1
        level_of = dict(zip(truth.tolist(), level.tolist(), strict=True))
        levels[i] = [level_of.get(label, 0) for label in labels[i].tolist()]
    return levels, [0.0, *gains.tolist()]


@dataclass(frozen=True)
class RankerRows:
    """Queries' candidates as the ranker learns them: labels [n, c] (-1 pads), features
    [n, c, F] and integer relevance levels [n, c]."""

    labels: np.ndarray
    features: np.ndarray
    levels: np.ndarray

    def columns(self, cols: list[int]) -> RankerRows:
        """The same rows with only the features `cols`."""
        return RankerRows(self.labels, self.features[..., cols], self.levels)

    def subset(self, mask: np.ndarray) -> RankerRows:
        """The queries `mask` selects."""
        return RankerRows(self.labels[mask], self.features[mask], self.levels[mask])

    def joined(self, other: RankerRows | None) -> RankerRows:
        """These queries followed by `other`'s, both padded to the wider's candidates, or these
        alone."""
        if other is None:
            return self
        width = max(self.labels.shape[1], other.labels.shape[1])
        ours, theirs = self.widened(width), other.widened(width)
        return RankerRows(
            np.concatenate([ours.labels, theirs.labels]),
            np.concatenate([ours.features, theirs.features]),
            np.concatenate([ours.levels, theirs.levels]),
        )

    def widened(self, width: int) -> RankerRows:
        """Padded to `width` candidates per query."""
        return RankerRows(
            _pad([self.labels], width, -1),
            _pad([self.features], width, 0.0),
            _pad([self.levels], width, 0),
        )


def stacked_rows(
    stack_from: Path, dataset: XCDataset, engine: SearchEngine, gains: np.ndarray
) -> tuple[RankerRows, StackedRowsSpec]:
    """The queries of the half of train that `stack_from` was not fitted on, scored by it with
    the encoder `engine` serves and its own popularity: rows a ranker of `engine`'s bundle can
    learn from as it learns from dev. ValueError when the helper is not such a bundle."""
    manifest = read_manifest(stack_from)  # SearchEngine.load below verifies its files
    split = str(manifest.astra_training.get("split"))
    if split not in TRAIN_HALVES:
        raise ValueError(
            f"stack-from: {stack_from} was fitted on {split!r}; give a bundle fitted on one half "
            "of train (python -m training train --train-split train-a)"
        )
    fitted_on = manifest.astra_training.get("dataset")
    if manifest.labels.count != dataset.num_labels or fitted_on != dataset.name:
        raise ValueError(
            f"stack-from: {stack_from} was fitted on {fitted_on!r} ({manifest.labels.count} "
            f"labels), the data is {dataset.name!r} ({dataset.num_labels})"
        )
    size, precision = engine.encoder.size, engine.encoder.precision
    try:  # the features must come from the encoder the ranked bundle serves
        helper = SearchEngine.load(stack_from, precision=precision, encoder_size=size, ranker="off")
    except BundleError as exc:
        raise ValueError(
            f"stack-from: {stack_from} cannot compute features as the bundle serves them "
            f"({size} encoder, {precision}): {exc}"
        ) from exc
    other = TRAIN_HALVES[1 - TRAIN_HALVES.index(split)]
    points = EvalSet.of(dataset, other)
    labels, features, _ = collect(helper, points.texts, popularity(dataset, split))
    levels, _ = grade_levels(dataset, other, points.texts, labels, gains)
    spec = StackedRowsSpec(
        bundle=str(stack_from),
        name=manifest.name,
        version=manifest.version,
        split=other,
        queries=len(points.texts),
    )
    return RankerRows(labels, features, levels), spec


def learning_rows(
    engine: SearchEngine,
    dataset: XCDataset,
    split: str,
    points: EvalSet,
    candidates: tuple[np.ndarray, np.ndarray],
    stack_from: Sequence[Path] = (),
) -> tuple[RankerRows, list[float], RankerRows | None, list[StackedRowsSpec]]:
    """What a ranker of `engine`'s bundle learns from: `points`' candidates (labels, features)
    with their relevance levels, the gain of each level, and, with `stack_from`, the helpers'
    rows (`stacked_rows`, one helper a half of train) and what they are, all on one scale of
    levels."""
    labels, features = candidates
    scale = relevance_gains(dataset, [split, *(TRAIN_HALVES if stack_from else ())])
    levels, gains = grade_levels(dataset, split, points.texts, labels, scale)
    fitted_on = [read_manifest(helper).astra_training.get("split") for helper in stack_from]
    if len(set(fitted_on)) < len(fitted_on):
        raise ValueError(
            f"stack-from: {', '.join(map(str, stack_from))} were fitted on "
            f"{', '.join(map(str, fitted_on))}; give one bundle fitted on each half of train"
        )
    extra: RankerRows | None = None
    stacked: list[StackedRowsSpec] = []
    for helper in stack_from:
        rows, spec = stacked_rows(helper, dataset, engine, scale)
        extra = rows if extra is None else extra.joined(rows)
        stacked.append(spec)
    return RankerRows(labels, features, levels), gains, extra, stacked


def fit(
    features: np.ndarray, levels: np.ndarray, labels: np.ndarray, gains: list[float], params: dict
) -> lightgbm.Booster:
    """A LambdaMART over the candidates of each query (padding left out)."""
    mask = labels >= 0
    data = lightgbm.Dataset(
        features[mask], levels[mask], group=mask.sum(axis=1), params={"verbose": -1}
    )
    settings = {k: v for k, v in params.items() if k != "rounds"}
    settings |= {"objective": "lambdarank", "label_gain": gains, "verbose": -1, "seed": 0}
    return lightgbm.train(settings, data, num_boost_round=int(params["rounds"]))


def ranked_metrics(points: EvalSet, labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """`METRICS` of candidates `labels` [n, c] ranked by `scores`."""
    _, ranked = top_k(np.where(labels >= 0, scores, -np.inf), labels, EVAL_DEPTH)
    metrics = points.score(ranked)
    return {name: round(metrics[name], 4) for name in METRICS}


def cross_validated_scores(
    rows: RankerRows, gains: list[float], params: dict, extra: RankerRows | None = None
) -> list[np.ndarray]:
    """Each of `SEEDS`' shuffles of 2 folds: every candidate's score [n, c] of `rows` by a
    ranker fitted on the other fold (and on all of `extra`, rows from outside these queries), so
    no query is scored by a ranker that saw it."""
    runs = []
    for seed in SEEDS:
        fold = np.random.default_rng(seed).permutation(len(rows.labels)) % 2
        scores = np.zeros(rows.labels.shape)
        for held in (0, 1):
            train, test = fold != held, fold == held
            learn = rows.subset(train).joined(extra)
            model = fit(learn.features, learn.levels, learn.labels, gains, params)
            flat = rows.features[test].reshape(-1, rows.features.shape[2])
            scores[test] = model.predict(flat).reshape(rows.labels[test].shape)
        runs.append(scores)
    return runs


def cross_validated(
    points: EvalSet,
    rows: RankerRows,
    gains: list[float],
    params: dict,
    extra: RankerRows | None = None,
) -> dict[str, float]:
    """`METRICS`, the mean over the shuffles of `cross_validated_scores`."""
    runs = [
        ranked_metrics(points, rows.labels, scores)
        for scores in cross_validated_scores(rows, gains, params, extra)
    ]
    return {name: round(float(np.mean([run[name] for run in runs])), 4) for name in METRICS}


def export_ranker(model: lightgbm.Booster, path: Path) -> None:
    """The booster as ONNX (onnxmltools' LightGBM converter): features [n, F] → scores [n, 1]."""
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    inputs = [(RANKER_INPUT, FloatTensorType([None, len(FEATURES)]))]
    path.write_bytes(
        convert_lightgbm(model, initial_types=inputs, target_opset=15).SerializeToString()
    )


def train_ranker(
    bundle_dir: Path,
    data: Path | ShopDataSpec,
    params: dict | None = None,
    stack_from: Sequence[Path] = (),
) -> dict:
    """Train, cross-validate and write a learned ranker into the bundle; returns the report.
    With `stack_from` (bundles fitted on one half of train each), the ranker also learns from
    the other half's queries as each scores them (`stacked_rows`)."""
    params = dict(PARAMS if params is None else params)
    manifest = load_bundle(bundle_dir).manifest
    if manifest.astra is None or manifest.astra.lexical is None:
        raise ValueError(f"{bundle_dir}: the ranker ranks ASTRA's lexical candidates; no lexical")
    training = manifest.training
    parts = [training[kind] for kind in ("astra", "mach") if kind in training] or [training]
    splits = sorted({str(part.get("split")) for part in parts})
    if splits != ["train"]:
        raise ValueError(
            f"{bundle_dir}: fitted on {', '.join(splits)}, so dev is inside its training split "
            "and cannot train a ranker; train one on a bundle fitted on `train` (dev held out)"
        )
    split = "train"
    dataset = load_dataset(data)
    popular = popularity(dataset, split)
    engine = SearchEngine.load(bundle_dir, precision="auto", encoder_size="auto", ranker="off")
    points = EvalSet.of(dataset, "dev")
    labels, features, formula = collect(engine, points.texts, popular)
    found = (labels, features)
    rows, gains, extra, stacked = learning_rows(engine, dataset, "dev", points, found, stack_from)
    ablation = []
    for depth in range(1, len(GROUPS) + 1):
        names = [name for _, group in GROUPS[:depth] for name in group]
        cols = [FEATURES.index(name) for name in names]
        more = extra.columns(cols) if extra is not None else None
        scored = cross_validated(points, rows.columns(cols), gains, params, more)
        ablation.append({"features": GROUPS[depth - 1][0], "dev_cv": scored})
        log.info("ranker ablation", extra={"features": GROUPS[depth - 1][0], **scored})
    learn = rows.joined(extra)
    model = fit(learn.features, learn.levels, learn.labels, gains, params)
    metrics = {
        "formula": ranked_metrics(points, labels, formula),
        "cross_validated": ablation[-1]["dev_cv"],
        "ablation": ablation,
        "folds": 2,
        "shuffles": len(SEEDS),
        "encoder": {"size": engine.encoder.size, "precision": engine.encoder.precision},
    }
    if extra is not None:  # what the stacked rows add: the same ranker learning from dev alone
        metrics["dev_only"] = cross_validated(points, rows, gains, params)
    staged = bundle_dir / f".{RANKER_FILE}.tmp"
    export_ranker(model, staged)
    staged.replace(bundle_dir / RANKER_FILE)
    model.save_model(str(bundle_dir / f".{EXPLAIN_FILE}.tmp"))
    (bundle_dir / f".{EXPLAIN_FILE}.tmp").replace(bundle_dir / EXPLAIN_FILE)
    np.save(bundle_dir / POPULARITY_FILE, popular)
    spec = RankerSpec(
        file=RANKER_FILE,
        popularity=POPULARITY_FILE,
        explain_file=EXPLAIN_FILE,
        features=list(FEATURES),
        trained_on="dev",
        queries=len(points.texts),
        stacked=stacked,
        params={k: float(v) for k, v in params.items()},
        metrics=metrics,
    )
    list_in_manifest(bundle_dir, read_manifest(bundle_dir), "astra", ranker=spec)
    switched = _default_to_ranked_astra(bundle_dir, spec)
    report = {"bundle": str(bundle_dir), "dataset": dataset.name, **metrics, **switched}
    return report | ({"stacked": [spec.model_dump() for spec in stacked]} if stacked else {})


def _default_to_ranked_astra(bundle_dir: Path, spec: RankerSpec) -> dict:
    """Make ASTRA (now ranked by `spec`) the bundle's default model where the ranker is served
    (it beat the formula) and its cross-validated dev nDCG@10 beats the default model's."""
    manifest = read_manifest(bundle_dir)
    default = manifest.default_model
    other = manifest.metrics.get("dev_by_model", {}).get(default, {}).get("nDCG@10")
    if default == "astra" or other is None or not spec.wins_over(other):
        return {}
    fields = manifest.model_dump(exclude={"files", "format_version"})
    write_manifest(bundle_dir, {**fields, "default_model": "astra"})
    log.info("default model now astra", extra={"was": default, "dev_ndcg10": other})
    return {"default_model": {"was": default, "was_dev_nDCG@10": round(other, 4), "now": "astra"}}
