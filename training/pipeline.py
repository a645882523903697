"""From a dataset to a scored bundle: the steps `python -m training` runs, one function each.

`train_astra_bundle` trains ASTRA, writes the bundle (encoder, classifier vectors, index, BM25
postings) and tunes it on dev; `train_mach_bundle` trains MACH heads and writes a shard or a
bundle (alone, or added to an ASTRA bundle whose encoder it shares); `merge_shards` joins
shards trained apart; `add_lexical_ranker` gives an older ASTRA bundle its BM25 ranker.
`tune_on_dev` is the one place a bundle's weights and default model are chosen: by dev
nDCG@10, never on tst, and written into the manifest with every trial.

Under torchrun every rank calls the same function; rank 0 alone writes and scores the bundle
(the others return None).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.bundle import Manifest, load_bundle, read_manifest, save_manifest
from service.mach.features import NgramFeaturizer
from service.search.encoder import QueryEncoder
from training.astra import AstraConfig, train_astra
from training.data import XCDataset, data_source, load_dataset
from training.distributed import Runtime, barrier, gather_to_main
from training.evaluate import evaluate_bundle
from training.export import write_bundle
from training.lexical import add_lexical, lexical_weight_trials
from training.mach.bundle import (
    build_featurizer,
    encoder_dir,
    query_inputs,
    read_shards,
    write_mach_bundle,
    write_shard,
)
from training.mach.heads import HeadResult, MachConfig, stack_heads, train_mach
from training.plots import plot_mach_curve, plot_training_curve

if TYPE_CHECKING:
    from training.shopdata import ShopDataSpec

CURVE_FILE = "training_curve.png"
MACH_CURVE_FILE = "mach_training_curve.png"
HYBRID_WEIGHTS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5)
LOG = logging.getLogger("training")


def runtime_meta(runtime: Runtime) -> dict[str, Any]:
    """Where a run trained, as recorded in the manifest."""
    return {
        "device": runtime.device.type,
        "precision": runtime.precision,
        "world_size": runtime.world_size,
    }


def train_astra_bundle(
    *,
    data: Path | ShopDataSpec,
    out: Path,
    config: AstraConfig,
    index_type: str,
    checkpoint_dir: Path | None,
    runtime: Runtime,
) -> dict[str, Any] | None:
    """Train ASTRA and, on rank 0, write and score the bundle (None on the other ranks)."""
    dataset = load_dataset(data)
    checkpoints = checkpoint_dir or out.parent / ".checkpoints" / out.name
    result = train_astra(
        dataset,
        config,
        checkpoint_dir=checkpoints,
        cache_dir=out.parent / ".cache",
        runtime=runtime,
    )
    if not runtime.is_main:
        return None
    result.model.cpu()  # the ONNX export traces on the CPU
    curve = checkpoints / CURVE_FILE
    checkpoints.mkdir(parents=True, exist_ok=True)
    plot_training_curve(result.losses, result.dev_history, curve, f"ASTRA on {dataset.name}")
    trained_labels = len(result.model.trained_ids)
    write_bundle(
        out,
        encoder=result.model.encoder,
        query_max_length=config.query_max_length,
        classifiers=result.model.all_classifiers(),
        label_titles=dataset.label_titles,
        label_ids=dataset.label_ids,
        trained_labels=trained_labels,
        index_type=index_type,
        lexical_fields=dataset.lexical_fields(),
        training={
            "model": "astra",
            "dataset": dataset.name,
            "data_path": data_source(data),
            **source_record(dataset),
            "split": config.train_split,
            "points": len(dataset.split(config.train_split)),
            "labels": dataset.num_labels,
            "trained_labels": trained_labels,
            "steps": len(result.losses),
            "seconds": round(result.seconds, 1),
            "final_loss": result.losses[-1] if result.losses else None,
            "dev_history": result.dev_history,
            "config": dataclasses.asdict(config),
            **runtime_meta(runtime),
        },
        extra_files={CURVE_FILE: curve},
    )
    metrics = tune_on_dev(out, dataset, config.train_split)
    return {
        "bundle": str(out),
        "seconds": round(result.seconds, 1),
        **metrics,
        **source_record(dataset),
    }


def source_record(dataset: XCDataset) -> dict[str, Any]:
    """What a manifest's training section says of a shop's export: the rows read, refused and
    deduplicated per file, and the relevance rule that made the pairs (`training.shopdata`)."""
    return {"data_summary": dataset.source} if dataset.source else {}


def _best(trials: dict[float, dict[str, float]]) -> float:
    """The weight whose trial has the best dev nDCG@10 (the first one on a tie)."""
    return max(trials, key=lambda weight: trials[weight]["nDCG@10"])


def tune_on_dev(
    bundle: Path, dataset: XCDataset, split: str, default_model: str | None = None
) -> dict[str, Any]:
    """Dev metrics of every model in a fresh bundle, tuning ASTRA's lexical weight and then the
    hybrid weight on dev first.

    The tuned weights and, unless `default_model` is given, the default model (all by best dev
    nDCG@10) are written into the manifest; nothing is tuned on tst.
    """
    manifest = read_manifest(bundle)
    if split == "trn" or not len(dataset.split("dev")):
        return _record_untuned(bundle, manifest, split)
    by_model: dict[str, dict[str, Any]] = {}
    lexical = manifest.astra.lexical if manifest.astra else None
    if manifest.astra is not None and lexical is not None:
        trials = lexical_weight_trials(bundle, dataset)
        weight = _best(trials)
        astra = manifest.astra.model_copy(
            update={"lexical": lexical.model_copy(update={"weight": weight})}
        )
        manifest = save_manifest(bundle, manifest.model_copy(update={"astra": astra}))
        by_model["astra"] = {
            **trials[weight],
            "lexical_weight_trials": {str(w): trials[w]["nDCG@10"] for w in trials},
        }
    if manifest.mach is not None and "hybrid" in manifest.models:
        trials = {
            w: evaluate_bundle(bundle, dataset, "dev", "hybrid", hybrid_weight=w)
            for w in HYBRID_WEIGHTS
        }
        weight = _best(trials)
        mach = manifest.mach.model_copy(update={"hybrid_weight": weight})
        manifest = manifest.model_copy(update={"mach": mach})
        by_model["hybrid"] = {
            **trials[weight],
            "weight_trials": {str(w): trials[w]["nDCG@10"] for w in trials},
        }
    for model in manifest.kinds:
        if model not in by_model:
            by_model[model] = evaluate_bundle(bundle, dataset, "dev", model)
    if default_model is None:
        default_model = _best_model(manifest, by_model)
    weights = {"source": "dev", **_weights_of(manifest), "default_model": default_model}
    metrics = {"dev": by_model[default_model], "dev_by_model": by_model, "weights": weights}
    update = {"metrics": metrics, "default_model": default_model}
    save_manifest(bundle, manifest.model_copy(update=update))
    return metrics


def _best_model(manifest: Manifest, by_model: dict[str, dict[str, Any]]) -> str:
    """The model with the best dev nDCG@10, or ASTRA where its learned ranker (served: it beat
    the formula) has a better cross-validated one: its dev figures above are the formula's."""
    best = max(by_model, key=lambda m: by_model[m]["nDCG@10"])
    ranker = manifest.astra.ranker if manifest.astra is not None else None
    return "astra" if ranker is not None and ranker.wins_over(by_model[best]["nDCG@10"]) else best


def _weights_of(manifest: Manifest) -> dict[str, float]:
    """The weights a bundle serves with that are tuned on dev: ASTRA's lexical weight and the
    hybrid weight, where it has them."""
    weights = {}
    if manifest.astra is not None and manifest.astra.lexical is not None:
        weights["lexical_weight"] = manifest.astra.lexical.weight
    if manifest.mach is not None and "hybrid" in manifest.models:
        weights["hybrid_weight"] = manifest.mach.hybrid_weight
    return weights


def _record_untuned(bundle: Path, manifest: Manifest, split: str) -> dict[str, Any]:
    """Say in the manifest (`metrics.weights`) that the weights are the defaults, and why: a
    bundle is never silently untuned."""
    reason = (
        f"no dev split to tune on (trained on {split!r}, which holds it): the weights are the "
        "defaults; take them from a bundle fitted on 'train' with --weights-from BUNDLE"
    )
    LOG.warning("%s: %s", bundle, reason)
    weights = {"source": "defaults", "reason": reason, **_weights_of(manifest)}
    metrics = {**manifest.metrics, "weights": weights}
    save_manifest(bundle, manifest.model_copy(update={"metrics": metrics}))
    return {"weights": weights}


def copy_tuned_weights(bundle: Path, source: Path) -> dict[str, Any]:
    """Serve `bundle` with the dev-tuned weights and default model of `source`, a bundle of the
    same data fitted with dev held out, and record where they came from (`metrics.weights`).

    For a bundle fitted on all the data (`--train-split trn`), whose dev split is inside its
    training data. ValueError when `source` was itself fitted on 'trn' or lacks a weight
    `bundle` needs."""
    target, origin = load_bundle(bundle).manifest, load_bundle(source).manifest
    if origin.training.get("split") == "trn":
        raise ValueError(f"weights-from: {source} was fitted on 'trn': its weights are untuned")
    wanted, given = _weights_of(target), _weights_of(origin)
    missing = sorted(set(wanted) - set(given))
    if missing:
        raise ValueError(f"weights-from: {source} has no {', '.join(missing)} to take")
    updates: dict[str, Any] = {}
    if "lexical_weight" in wanted:
        lexical = target.astra.lexical.model_copy(update={"weight": given["lexical_weight"]})
        updates["astra"] = target.astra.model_copy(update={"lexical": lexical})
    if "hybrid_weight" in wanted:
        updates["mach"] = target.mach.model_copy(update={"hybrid_weight": given["hybrid_weight"]})
    if origin.default_model in target.models:
        updates["default_model"] = origin.default_model
    weights = {
        "source": "bundle",
        "bundle": origin.name,
        "version": origin.version,
        **{name: given[name] for name in wanted},
        "default_model": updates.get("default_model", target.default_model),
    }
    updates["metrics"] = {**target.metrics, "weights": weights}
    save_manifest(bundle, target.model_copy(update=updates))
    return {"weights": weights}


def _write_mach(
    out: Path,
    dataset: XCDataset,
    config: MachConfig,
    results: list[HeadResult],
    featurizer: NgramFeaturizer | None,
    meta: dict[str, Any],
    default_model: str | None,
) -> dict[str, Any]:
    """Stack all heads, export them and write the bundle, then score it on dev."""
    curve = out.parent / ".checkpoints" / out.name / MACH_CURVE_FILE
    curve.parent.mkdir(parents=True, exist_ok=True)
    plot_mach_curve(
        {r.rep: r.epoch_losses for r in results}, curve, f"MACH heads on {dataset.name}"
    )
    encoder_from = Path(meta["encoder_from"]) if meta["encoder_from"] else None
    write_mach_bundle(
        out,
        dataset=dataset,
        heads=stack_heads(results, config),
        featurizer=featurizer,
        config=config,
        encoder_from=encoder_from,
        cache_dir=out.parent / ".cache",
        default_model=default_model,
        training={**meta, "config": dataclasses.asdict(config)},
        extra_files={MACH_CURVE_FILE: curve},
    )
    return {"bundle": str(out), **tune_on_dev(out, dataset, config.train_split, default_model)}


def train_mach_bundle(
    *,
    data: Path | ShopDataSpec,
    out: Path,
    config: MachConfig,
    reps: range,
    encoder_from: Path | None,
    default_model: str | None,
    runtime: Runtime,
) -> dict[str, Any] | None:
    """Train the heads `reps`, rank r taking r, r + N, ...; rank 0 gathers them and writes the
    shard (some heads) or the bundle (all of them); None on the other ranks. No communication
    until the gather."""
    dataset = load_dataset(data)
    split = dataset.split(config.train_split)
    cache = out.parent / ".cache"
    if runtime.is_main:  # exports the base encoder once, for every rank sharing this disk
        encoder_dir(encoder_from, cache)
    barrier(runtime)
    source, spec = encoder_dir(encoder_from, cache)
    featurizer = build_featurizer(split.texts, config)
    encoder = QueryEncoder(bundle_dir=source, spec=spec)
    inputs = query_inputs(split.texts, encoder, featurizer, spec.dim)
    positives = split.positives(dataset.positive_min_weight)
    mine = reps[runtime.rank :: runtime.world_size]
    LOG.info("mach: %s; heads %s in fp32", runtime.describe(), list(mine))
    trained = train_mach(
        inputs, positives, dataset.num_labels, config, mine, runtime.device, runtime.is_main
    )
    gathered = gather_to_main(trained, runtime)
    if gathered is None:
        return None
    results = sorted((r for part, _ in gathered for r in part), key=lambda r: r.rep)
    seconds = round(max(part_seconds for _, part_seconds in gathered), 1)  # the slowest rank
    meta = {
        "data_path": data_source(data),
        **source_record(dataset),
        "encoder_from": str(encoder_from) if encoder_from else None,
        "dataset": dataset.name,
        "split": config.train_split,
        "points": len(split),
        "labels": dataset.num_labels,
        "dim": spec.dim,
        "seconds": seconds,
        **runtime_meta(runtime),
    }
    if len(reps) < config.repetitions:
        write_shard(out, results, config, meta)
        return {"shard": str(out), "reps": f"{reps.start}-{reps.stop - 1}", "seconds": seconds}
    report = _write_mach(out, dataset, config, results, featurizer, meta, default_model)
    return {**report, "seconds": seconds}


def merge_shards(shards: list[Path], out: Path, default_model: str | None) -> dict[str, Any]:
    """Join MACH shards into one bundle and score it on dev."""
    config, results, meta = read_shards(shards)
    dataset = load_dataset(meta["data_path"])
    featurizer = build_featurizer(dataset.split(config.train_split).texts, config)
    return _write_mach(out, dataset, config, results, featurizer, meta, default_model)


def add_lexical_ranker(bundle: Path, data: Path | ShopDataSpec | None) -> dict[str, Any]:
    """Add the lexical ranker to `bundle` (over the data's product fields, where it has them);
    with `data`, tune the weights on its dev split."""
    dataset = None if data is None else load_dataset(data)
    spec = add_lexical(bundle, dataset)
    report: dict[str, Any] = {"bundle": str(bundle), "lexical": spec.model_dump()}
    if dataset is not None:
        manifest = read_manifest(bundle)
        split = manifest.astra_training.get("split", "trn")
        report.update(tune_on_dev(bundle, dataset, split))
        lexical = read_manifest(bundle).astra.lexical
        report["lexical"] = lexical.model_dump()
    return report
