"""int8 copies of a bundle's query encoder and MACH heads, for CPUs where fp32 is the bottleneck.

Dynamic quantisation (ONNX Runtime): MatMul weights become int8 with one scale per output
channel, activations are quantised on the fly. Per-channel scales matter here: per-tensor
scales lose enough precision that some query embeddings drift to cosine 0.93 from fp32, per
channel they stay above 0.98. The word-embedding table stays fp32 (it is a lookup, not a
MatMul). The copy is added to the bundle as `encoder.int8_file`; the fp32 encoder stays, and
the service picks one with `XC_ENCODER_PRECISION`. With `--data`, both are scored on the dev
split and the result is written into the manifest (`encoder.int8_check`): where int8's nDCG@10
is within 0.003 of fp32's, int8 is what the service serves by default (`auto`).

MACH's heads are quantised the same way (`mach.int8_heads`, served with `XC_MACH_PRECISION`):
their output layer, R·hidden·B weights read for every query, is what bounds a MACH query at
10M labels, and int8 reads a quarter of the bytes. Int8 weights alone move a few labels of the
top 10, so the int8 heads also output their hidden activations and BCE heads get the fp32
output layer written beside them as rows (`mach.exact_layer`), with which the service rescores
the int8 heads' candidates exactly (`service.mach.exact`). Heads exported before session 9 hold
their output layer as one Einsum, which ONNX Runtime does not quantise: they are refused, with
the advice to retrain them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic

from service.bundle import Manifest, load_bundle, read_manifest, write_manifest
from service.mach.model import HIDDEN_OUTPUT
from service.precision import Int8Check
from service.search.encoder import QueryEncoder
from service.search.engine import SearchEngine
from training.data import load_dataset
from training.evaluate import evaluate_bundle
from training.mach.bundle import external_data_file

if TYPE_CHECKING:
    from training.shopdata import ShopDataSpec

INT8_ENCODER_FILE = "encoder.int8.onnx"
INT8_HEADS_FILE = "mach_heads.int8.onnx"
EXACT_LAYER_FILE = "mach_out.fp32.npy"

log = logging.getLogger(__name__)


def quantize_matmuls(source: Path, target: Path) -> None:
    """Write an int8 copy of the ONNX model `source` to `target`: every MatMul's weights int8
    with a scale per output channel, activations quantised on the fly."""
    quantize_dynamic(
        source,
        target,
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul"],
    )


def list_in_manifest(bundle_dir: Path, manifest: Manifest, section: str, **values: object) -> None:
    """Rewrite the bundle's manifest with `section.field = value` for each of `values`
    (checksums included)."""
    spec = getattr(manifest, section).model_copy(update=values)
    fields = manifest.model_dump(exclude={"files", "format_version", section})
    write_manifest(bundle_dir, {**fields, section: spec.model_dump()})


def quantize_encoder(bundle_dir: Path) -> Path:
    """Write the int8 encoder into the bundle and list it in the manifest; returns its path."""
    manifest = load_bundle(bundle_dir).manifest  # verifies the bundle before touching it
    target = bundle_dir / INT8_ENCODER_FILE
    staged = bundle_dir / f".{INT8_ENCODER_FILE}.tmp"
    quantize_matmuls(bundle_dir / manifest.encoder.file, staged)
    staged.replace(target)
    # A new copy has not been measured: served only when asked for, until `--data` checks it.
    list_in_manifest(bundle_dir, manifest, "encoder", int8_file=INT8_ENCODER_FILE, int8_check=None)
    return target


def quantize_heads(source: Path, target: Path, reps: int) -> None:
    """Write the int8 copy of the MACH heads `source` to `target` (`quantize_matmuls`), with the
    heads' hidden activations [R, n, hidden] as a second output (`HIDDEN_OUTPUT`) for the exact
    rescoring. ValueError (nothing written) when fewer than `reps` MatMuls were quantised: heads
    exported before session 9, whose output layer is one Einsum."""
    model = onnx.load(source)
    relus = [node for node in model.graph.node if node.op_type == "Relu"]
    if len(relus) != 1:
        raise ValueError(f"{source}: expected one Relu (the heads' hidden layer), {len(relus)}")
    hidden = onnx.helper.make_node("Identity", [relus[0].output[0]], [HIDDEN_OUTPUT])
    model.graph.node.append(hidden)
    model.graph.output.append(
        onnx.helper.make_tensor_value_info(HIDDEN_OUTPUT, onnx.TensorProto.FLOAT, None)
    )
    # One leading dot: ONNX refuses an external-data location holding "..", and the bundle's
    # staged target (`quantize_mach_heads`) already starts with one.
    staged = target.with_name(f".{target.name.lstrip('.')}.fp32")
    # Heads past ONNX's 2 GB file limit came with their weights in a side file; so does the copy.
    side = external_data_file(source).exists()
    onnx.save(model, staged, save_as_external_data=side, location=external_data_file(staged).name)
    try:
        quantize_matmuls(staged, target)
    finally:
        staged.unlink()
        external_data_file(staged).unlink(missing_ok=True)
    quantised = sum(node.op_type == "MatMulInteger" for node in onnx.load(target).graph.node)
    if quantised < reps:
        target.unlink()
        raise ValueError(
            f"{source}: its output layer is not R two-dimensional MatMuls (heads exported "
            "before session 9); retrain the MACH heads to quantise them"
        )


def write_exact_layer(source: Path, target: Path, reps: int, buckets: int) -> None:
    """Write the fp32 output layer of the MACH heads `source` as float32 rows [R, B, hidden + 1]
    (each bucket's weights, then its bias) to `target`, for `service.mach.exact`."""
    graph = onnx.load(source).graph
    weights = {init.name: init for init in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}

    def constant(name: str) -> np.ndarray:
        """An initializer, through the Unsqueeze that large ones are exported behind."""
        while name not in weights and name in producer and producer[name].op_type == "Unsqueeze":
            name = producer[name].input[0]
        if name not in weights:
            raise ValueError(f"{source}: {name!r} is not a constant of the heads")
        return onnx.numpy_helper.to_array(weights[name])

    stacks = [node for node in graph.node if node.op_type == "Concat" and len(node.input) == reps]
    if len(stacks) != 1:
        raise ValueError(f"{source}: no output layer of {reps} stacked MatMuls found")
    adds = [
        node for node in graph.node if node.op_type == "Add" and stacks[0].output[0] in node.input
    ]
    if len(adds) != 1:
        raise ValueError(f"{source}: no bias added to the output layer found")
    bias_name = next(name for name in adds[0].input if name != stacks[0].output[0])
    bias = constant(bias_name).reshape(reps, buckets)
    layers = []
    for name in stacks[0].input:  # repetition r's logits, r = 0..R-1
        node = producer[name]
        while node.op_type != "MatMul":
            node = producer[node.input[0]]
        layers.append(constant(node.input[1]))  # [hidden, B]
    hidden = layers[0].shape[0]
    rows = np.lib.format.open_memmap(target, "w+", np.float32, (reps, buckets, hidden + 1))
    for r, layer in enumerate(layers):
        rows[r, :, :hidden] = layer.T
    rows[:, :, hidden] = bias
    rows.flush()
    del rows


def quantize_mach_heads(bundle_dir: Path) -> Path:
    """Write int8 MACH heads into the bundle and list them in the manifest, with the fp32
    output layer that rescores their candidates (BCE heads); returns the heads' path.
    Raises ValueError when the heads' output layer cannot be quantised (an old export)."""
    manifest = load_bundle(bundle_dir).manifest
    if manifest.mach is None:
        raise ValueError(f"{bundle_dir}: the bundle has no MACH heads")
    spec = manifest.mach
    target = bundle_dir / INT8_HEADS_FILE
    staged = bundle_dir / f".{INT8_HEADS_FILE}.tmp"
    quantize_heads(bundle_dir / spec.heads, staged, spec.reps)
    exact = None
    if spec.loss == "bce":  # a softmax's log-probabilities need all B logits
        staged_layer = bundle_dir / f".{EXACT_LAYER_FILE}.tmp"
        write_exact_layer(bundle_dir / spec.heads, staged_layer, spec.reps, spec.buckets)
        staged_layer.replace(bundle_dir / EXACT_LAYER_FILE)
        exact = EXACT_LAYER_FILE
    staged.replace(target)
    list_in_manifest(bundle_dir, manifest, "mach", int8_heads=INT8_HEADS_FILE, exact_layer=exact)
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


def mach_int8_parity(bundle_dir: Path, texts: list[str], k: int = 10) -> dict[str, float]:
    """How much of MACH's top-k the int8 heads keep: the mean overlap of the fp32 and int8
    heads' decoded top-k ids over `texts` (recall@k of int8 against fp32)."""
    fp32 = SearchEngine.load(bundle_dir, mach_precision="fp32")
    int8 = SearchEngine.load(bundle_dir, mach_precision="int8")
    overlaps = []
    for start in range(0, len(texts), 256):
        batch = texts[start : start + 256]
        for want, got in zip(
            fp32.search(batch, k, "mach"), int8.search(batch, k, "mach"), strict=True
        ):
            wanted = {hit.label for hit in want}
            overlaps.append(len(wanted & {hit.label for hit in got}) / max(1, len(wanted)))
    return {"queries": float(len(overlaps)), f"recall_at_{k}": float(np.mean(overlaps))}


def record_int8_check(bundle_dir: Path, fp32_ndcg: float, int8_ndcg: float) -> dict:
    """Write what int8 cost on dev into the manifest (`encoder.int8_check`): where it is within
    `INT8_TOLERANCE` nDCG@10 of fp32, `XC_ENCODER_PRECISION=auto` (the default) serves int8."""
    manifest = load_bundle(bundle_dir).manifest
    check = Int8Check(
        model=manifest.default_model,
        ndcg_at_10_fp32=round(fp32_ndcg, 6),
        ndcg_at_10_int8=round(int8_ndcg, 6),
    )
    list_in_manifest(bundle_dir, manifest, "encoder", int8_check=check)
    return {**check.model_dump(), "passed": check.passed}


def quantize_and_report(bundle_dir: Path, data: Path | ShopDataSpec | None = None) -> dict:
    """Add the int8 encoder (and int8 MACH heads, when the bundle has MACH) to the bundle; with
    `data` (a dataset with a dev split), also their parity with fp32 on the dev queries and the
    dev metrics of both, so a user can see what the faster copy costs before serving it."""
    report: dict = {"int8_encoder": str(quantize_encoder(bundle_dir))}
    has_mach = read_manifest(bundle_dir).mach is not None
    if has_mach:
        report["int8_mach_heads"] = str(quantize_mach_heads(bundle_dir))
    if data is not None:
        dataset = load_dataset(data)
        dev = dataset.split("dev").texts
        report["dataset"] = dataset.name
        report["parity"] = int8_parity(bundle_dir, dev)
        for precision in ("fp32", "int8"):
            report[f"dev_{precision}"] = evaluate_bundle(
                bundle_dir, dataset, "dev", precision=precision
            )
        report["int8_check"] = record_int8_check(
            bundle_dir, report["dev_fp32"]["nDCG@10"], report["dev_int8"]["nDCG@10"]
        )
        if has_mach:
            report["mach_parity"] = mach_int8_parity(bundle_dir, dev)
            for precision in ("fp32", "int8"):
                report[f"dev_mach_{precision}"] = evaluate_bundle(
                    bundle_dir, dataset, "dev", model="mach", mach_precision=precision
                )
    return report
