"""Where a bundle's dev-tuned weights came from: dev, a named bundle, or the defaults (said so)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from service.bundle import read_manifest, save_manifest
from tests.support.configs import demo_train_args
from training.__main__ import main
from training.data import load_dataset
from training.pipeline import copy_tuned_weights, tune_on_dev

pytestmark = pytest.mark.slow


def _copy(bundle: Path, out: Path, **updates: object) -> Path:
    shutil.copytree(bundle, out)
    manifest = read_manifest(out)
    save_manifest(out, manifest.model_copy(update=updates))
    return out


def test_a_fit_on_trn_records_that_its_weights_are_the_defaults(
    demo_bundle: Path, demo_data: Path, tmp_path: Path
) -> None:
    bundle = _copy(demo_bundle, tmp_path / "demo")
    report = tune_on_dev(bundle, load_dataset(demo_data), "trn")
    weights = read_manifest(bundle).metrics["weights"]
    assert report["weights"] == weights and weights["source"] == "defaults"
    assert "--weights-from" in weights["reason"]
    assert weights["lexical_weight"] == read_manifest(bundle).astra.lexical.weight


def test_a_fit_on_train_records_that_its_weights_came_from_dev(demo_bundle: Path) -> None:
    manifest = read_manifest(demo_bundle)
    weights = manifest.metrics["weights"]
    assert weights["source"] == "dev" and weights["default_model"] == manifest.default_model
    assert weights["lexical_weight"] == manifest.astra.lexical.weight


def test_weights_are_taken_from_a_named_bundle_with_their_origin(
    demo_bundle_both: Path, tmp_path: Path
) -> None:
    source = read_manifest(demo_bundle_both)
    target = read_manifest(demo_bundle_both)
    # Weights and a default model that all differ from the source's.
    lexical = target.astra.lexical.model_copy(update={"weight": source.astra.lexical.weight + 1})
    hybrid = 0.99 if source.mach.hybrid_weight != 0.99 else 0.98
    other_model = next(m for m in source.models if m != source.default_model)
    untuned = _copy(
        demo_bundle_both,
        tmp_path / "untuned",
        astra=target.astra.model_copy(update={"lexical": lexical}),
        mach=target.mach.model_copy(update={"hybrid_weight": hybrid}),
        default_model=other_model,
    )
    report = copy_tuned_weights(untuned, demo_bundle_both)
    served = read_manifest(untuned)
    assert served.astra.lexical.weight == source.astra.lexical.weight
    assert served.mach.hybrid_weight == source.mach.hybrid_weight
    assert served.default_model == source.default_model
    weights = served.metrics["weights"]
    assert report["weights"] == weights
    assert (weights["source"], weights["bundle"], weights["version"]) == (
        "bundle",
        source.name,
        source.version,
    )


def test_a_source_fitted_on_trn_or_without_a_weight_is_refused(
    demo_bundle: Path, demo_bundle_both: Path, tmp_path: Path
) -> None:
    manifest = read_manifest(demo_bundle)
    on_trn = _copy(demo_bundle, tmp_path / "on-trn", training={**manifest.training, "split": "trn"})
    with pytest.raises(ValueError, match="fitted on 'trn'"):
        copy_tuned_weights(demo_bundle_both, on_trn)
    with pytest.raises(ValueError, match="has no hybrid_weight"):
        copy_tuned_weights(demo_bundle_both, demo_bundle)


def test_train_on_trn_with_weights_from_serves_the_named_bundles_weights(
    demo_bundle: Path, demo_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "full"
    # a few steps: what is checked is where the weights came from, not what was learnt
    extra = ["--train-split", "trn", "--weights-from", str(demo_bundle), "--max-steps", "4"]
    status = main(demo_train_args(demo_data, out, *extra))
    assert status == 0
    manifest, source = read_manifest(out), read_manifest(demo_bundle)
    assert manifest.astra.lexical.weight == source.astra.lexical.weight
    assert manifest.metrics["weights"]["source"] == "bundle"
    assert manifest.training["split"] == "trn"
