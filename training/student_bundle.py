"""`python -m training distill`: a student encoder written into a bundle, quantised and checked.

The steps (each in `training.student` or the existing export and quantise code): rebuild the
bundle's trained encoder in torch, distil a student with fewer layers on the training split,
export it beside the full encoder (`encoder.student.onnx`), quantise it like the full one, and
score the bundle's default model on dev with each encoder at its default precision. The
manifest records the student, its int8 check and the `StudentCheck` that decides whether
`XC_ENCODER_SIZE=auto` serves it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from service.bundle import STUDENT_ENCODER_FILE, StudentSpec, load_bundle, read_manifest
from service.precision import Int8Check, StudentCheck
from training.data import load_dataset
from training.evaluate import evaluate_bundle
from training.export import export_encoder
from training.quantize import list_in_manifest, quantize_matmuls
from training.student import StudentConfig, distill_data, train_student, trained_encoder

if TYPE_CHECKING:
    from training.shopdata import ShopDataSpec

STUDENT_INT8_FILE = "encoder.student.int8.onnx"


def _write_student(bundle_dir: Path, student, layers: int, training: dict) -> StudentSpec:
    """Export the student and its int8 copy into the bundle and list them (not yet checked)."""
    staged = bundle_dir / f".{STUDENT_ENCODER_FILE}.tmp"
    export_encoder(student, staged)
    staged_int8 = bundle_dir / f".{STUDENT_INT8_FILE}.tmp"
    quantize_matmuls(staged, staged_int8)
    staged.replace(bundle_dir / STUDENT_ENCODER_FILE)
    staged_int8.replace(bundle_dir / STUDENT_INT8_FILE)
    spec = StudentSpec(layers=layers, int8_file=STUDENT_INT8_FILE, training=training)
    list_in_manifest(bundle_dir, read_manifest(bundle_dir), "encoder", student=spec)
    return spec


def _dev_ndcg(bundle_dir: Path, dataset, size: str, precision: str) -> float:
    """Dev nDCG@10 of the bundle's default model with the encoder of `size` at `precision`."""
    metrics = evaluate_bundle(bundle_dir, dataset, "dev", precision=precision, encoder_size=size)
    return float(metrics["nDCG@10"])


def distill_bundle(bundle_dir: Path, data: Path | ShopDataSpec, config: StudentConfig) -> dict:
    """Distil, write and check a student encoder for the bundle; returns the run's report."""
    manifest = load_bundle(bundle_dir).manifest  # verifies the bundle before touching it
    if manifest.astra is None:
        raise ValueError(f"{bundle_dir}: distill needs ASTRA's classifier vectors (no astra)")
    dataset = load_dataset(data)
    if dataset.num_labels != manifest.labels.count:
        raise ValueError(
            f"data: {dataset.name} has {dataset.num_labels} labels, the bundle "
            f"{manifest.labels.count}"
        )
    teacher = trained_encoder(bundle_dir)
    classifiers = np.load(bundle_dir / manifest.astra.classifiers)
    max_length = manifest.encoder.max_length
    split = str(manifest.astra_training.get("split", "train"))
    inputs = distill_data(teacher, dataset, classifiers, max_length, config, split)
    student, training = train_student(teacher, inputs, classifiers, max_length, config)
    spec = _write_student(bundle_dir, student, len(config.layers), training)

    full_precision = manifest.encoder.default_precision
    full = _dev_ndcg(bundle_dir, dataset, "full", full_precision)
    by_precision = {p: _dev_ndcg(bundle_dir, dataset, "student", p) for p in ("fp32", "int8")}
    model = manifest.default_model
    int8_check = Int8Check(
        model=model,
        ndcg_at_10_fp32=round(by_precision["fp32"], 6),
        ndcg_at_10_int8=round(by_precision["int8"], 6),
    )
    spec = spec.model_copy(update={"int8_check": int8_check})
    # The precision `auto` will serve the student at, by the one rule (`default_precision`).
    encoder = manifest.encoder.model_copy(update={"student": spec})
    student_precision = encoder.sized("student").default_precision
    check = StudentCheck(
        model=model,
        ndcg_at_10_full=round(full, 6),
        ndcg_at_10_student=round(by_precision[student_precision], 6),
        precision_full=full_precision,
        precision_student=student_precision,
    )
    spec = spec.model_copy(update={"check": check})
    list_in_manifest(bundle_dir, read_manifest(bundle_dir), "encoder", student=spec)
    return {
        "bundle": str(bundle_dir),
        "layers": config.layers,
        "training": training,
        "dev_ndcg_at_10": {"full": full, **{f"student_{p}": v for p, v in by_precision.items()}},
        "check": {**check.model_dump(), "passed": check.passed},
    }
