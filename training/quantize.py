"""An int8 copy of a bundle's query encoder, for CPUs where the fp32 encoder is the bottleneck.

Dynamic quantisation (ONNX Runtime): MatMul weights become int8 with one scale per output
channel, activations are quantised on the fly. Per-channel scales matter here: per-tensor
scales lose enough precision that some query embeddings drift to cosine 0.93 from fp32, per
channel they stay above 0.98. The word-embedding table stays fp32 (it is a lookup, not a
MatMul). The copy is added to the bundle as `encoder.int8_file`; the fp32 encoder stays, and
the service picks one with `XC_ENCODER_PRECISION`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from onnxruntime.quantization import QuantType, quantize_dynamic

from service.bundle import load_bundle, read_manifest, write_manifest
from service.search.encoder import QueryEncoder
from training.data import load_dataset
from training.evaluate import evaluate_bundle

INT8_ENCODER_FILE = "encoder.int8.onnx"

log = logging.getLogger(__name__)


def quantize_encoder(bundle_dir: Path) -> Path:
    """Write the int8 encoder into the bundle and list it in the manifest; returns its path."""
    manifest = load_bundle(bundle_dir).manifest  # verifies the bundle before touching it
    source = bundle_dir / manifest.encoder.file
    target = bundle_dir / INT8_ENCODER_FILE
    staged = bundle_dir / f".{INT8_ENCODER_FILE}.tmp"
    quantize_dynamic(
        source,
        staged,
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul"],
    )
    staged.replace(target)
    encoder = manifest.encoder.model_copy(update={"int8_file": INT8_ENCODER_FILE})
    fields = manifest.model_dump(exclude={"files", "format_version", "encoder"})
    write_manifest(bundle_dir, {**fields, "encoder": encoder.model_dump()})
    return target


def int8_parity(bundle_dir: Path, texts: list[str], batch_size: int = 256) -> dict[str, float]:
    """Cosine between the fp32 and int8 embeddings of `texts`: min, mean and 1st percentile."""
    spec = read_manifest(bundle_dir).encoder
    fp32 = QueryEncoder(bundle_dir=bundle_dir, spec=spec, precision="fp32")
    int8 = QueryEncoder(bundle_dir=bundle_dir, spec=spec, precision="int8")
    cosines = []
    for start in range(0, len(texts), batch_size):
        batch = texts[start : start + batch_size]
        cosines.append(np.sum(fp32.encode(batch) * int8.encode(batch), axis=1))
    cos = np.concatenate(cosines)
    return {
        "queries": float(len(cos)),
        "cosine_min": float(cos.min()),
        "cosine_p01": float(np.percentile(cos, 1)),
        "cosine_mean": float(cos.mean()),
    }


def quantize_and_report(bundle_dir: Path, data: Path | None = None) -> dict:
    """Add the int8 encoder to the bundle; with `data` (a dataset with a dev split), also its
    parity with the fp32 encoder on the dev queries and the dev metrics of both encoders, so a
    user can see what the faster encoder costs before serving it."""
    report: dict = {"int8_encoder": str(quantize_encoder(bundle_dir))}
    if data is not None:
        dataset = load_dataset(data)
        report["dataset"] = dataset.name
        report["parity"] = int8_parity(bundle_dir, dataset.split("dev").texts)
        for precision in ("fp32", "int8"):
            report[f"dev_{precision}"] = evaluate_bundle(
                bundle_dir, dataset, "dev", precision=precision
            )
    return report
