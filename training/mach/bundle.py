"""MACH's way into a bundle: the query inputs, head shards, ONNX export and the manifest.

A MACH bundle either stands alone on the base encoder or is added to an existing ASTRA bundle
(`--encoder-from`), whose encoder it then shares, so one bundle serves astra, mach and hybrid.
Heads trained in separate processes are saved as shards (`shard.json` + `heads.pt`) and joined
by `merge_shards`; the bundle is written only once all R heads are present.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from service.bundle import (
    ENCODER_FILE,
    LABEL_IDS_FILE,
    LABEL_TITLES_FILE,
    MACH_HEADS_FILE,
    TOKENIZER_FILE,
    EncoderSpec,
    LabelSpec,
    MachSpec,
    Manifest,
    NgramSpec,
    load_bundle,
    utc_now,
    write_lines,
    write_manifest,
)
from service.mach.features import NgramFeaturizer, empty_rows, fit_idf
from service.mach.model import HEADS_OUTPUT
from service.search.encoder import QueryEncoder
from training.data import XCDataset
from training.encoder import SentenceEncoder, base_model_dir
from training.export import export_encoder
from training.mach.heads import HeadResult, MachConfig, MachHead, MachHeads, MachInputs

SHARD_FILE = "shard.json"
SHARD_HEADS = "heads.pt"
HEADS_INPUTS = ["embedding", "ngram_ids", "ngram_weights"]
BASE_ENCODER_SPEC = EncoderSpec(max_length=32, dim=384)
# One ONNX file holds at most 2 GB (protobuf's limit): heads with more weights than this keep
# them in a side file beside the graph (ONNX external data, `<heads file>.data`), which ONNX
# Runtime reads from the same directory and the manifest checksums like every file.
EXTERNAL_DATA_BYTES = 1 << 30


def external_data_file(heads_file: Path) -> Path:
    """Where heads past `EXTERNAL_DATA_BYTES` keep their weights: `<heads file>.data`, the name
    the exporter gives it."""
    return heads_file.with_name(heads_file.name + ".data")


def encoder_dir(encoder_from: Path | None, cache_dir: Path) -> tuple[Path, EncoderSpec]:
    """Directory holding the ONNX encoder and tokenizer the heads are trained on, and its spec.

    With no `encoder_from`, the base all-MiniLM-L6-v2 is exported once into `cache_dir`.
    """
    if encoder_from is not None:
        manifest = load_bundle(encoder_from).manifest
        return encoder_from, manifest.encoder
    target = cache_dir / "base_encoder_onnx"
    if not (target / ENCODER_FILE).is_file():
        # Several processes (torchrun ranks) may export at once: each writes its own temporary
        # files and renames them into place, the encoder (what the check above reads) last.
        target.mkdir(parents=True, exist_ok=True)
        suffix = f".{uuid.uuid4().hex}.tmp"
        shutil.copyfile(base_model_dir() / "tokenizer.json", target / (TOKENIZER_FILE + suffix))
        os.replace(target / (TOKENIZER_FILE + suffix), target / TOKENIZER_FILE)
        export_encoder(SentenceEncoder(), target / (ENCODER_FILE + suffix))
        os.replace(target / (ENCODER_FILE + suffix), target / ENCODER_FILE)
    return target, BASE_ENCODER_SPEC


def query_inputs(
    texts: list[str], encoder: QueryEncoder, featurizer: NgramFeaturizer | None, dim: int
) -> MachInputs:
    """Embeddings (the served ONNX encoder) and n-gram rows of `texts`, as the heads read them."""
    embeddings = np.zeros((len(texts), dim), dtype=np.float32)
    starts = range(0, len(texts), 256)
    for start in tqdm(starts, desc="embedding queries", unit="batch", leave=False):
        embeddings[start : start + 256] = encoder.encode(texts[start : start + 256])
    ids, weights = featurizer.transform(texts) if featurizer else empty_rows(len(texts))
    return MachInputs(embeddings, ids, weights)


def build_featurizer(texts: list[str], config: MachConfig) -> NgramFeaturizer | None:
    """The n-gram featuriser with IDF fitted on the training texts (None without n-grams)."""
    if not config.ngram_dim:
        return None
    idf = fit_idf(texts, config.ngram_dim, config.ngram_max)
    return NgramFeaturizer(
        dim=config.ngram_dim, ngram_max=config.ngram_max, max_terms=config.max_terms, idf=idf
    )


def export_heads(heads: MachHeads, dim: int, path: Path) -> None:
    """Export the stacked heads: embedding [n, d], n-grams [n, L] → log-probabilities [n, R, B]
    (their weights in a side file past `EXTERNAL_DATA_BYTES`: 50M labels need 2 GiB)."""
    example = (
        torch.randn(2, dim),
        torch.tensor([[1, 2, 0], [3, 0, 0]], dtype=torch.long),
        torch.tensor([[0.6, 0.8, 0.0], [1.0, 0.0, 0.0]]),
    )
    batch, terms = torch.export.Dim("batch"), torch.export.Dim("terms")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            heads,
            example,
            input_names=HEADS_INPUTS,
            output_names=[HEADS_OUTPUT],
            dynamic_shapes=({0: batch}, {0: batch, 1: terms}, {0: batch, 1: terms}),
            dynamo=True,
            external_data=False,
        )
    weights = sum(p.numel() * p.element_size() for p in heads.parameters())
    program.save(str(path), external_data=weights > EXTERNAL_DATA_BYTES)


def write_shard(
    out_dir: Path, results: list[HeadResult], config: MachConfig, meta: dict[str, Any]
) -> Path:
    """Save trained heads of some repetitions for a later `merge_shards`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({r.rep: r.head.state_dict() for r in results}, out_dir / SHARD_HEADS)
    record = {
        "config": dataclasses.asdict(config),
        "reps": [r.rep for r in results],
        "epoch_losses": {str(r.rep): r.epoch_losses for r in results},
        **meta,
    }
    (out_dir / SHARD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return out_dir


def read_shards(shard_dirs: list[Path]) -> tuple[MachConfig, list[HeadResult], dict[str, Any]]:
    """Heads of several shards, and their common training record (seconds summed).

    The shards must come from one config, dataset and encoder.
    """
    results: list[HeadResult] = []
    first: dict | None = None
    seconds = 0.0
    for shard in shard_dirs:
        path = shard / SHARD_FILE
        if not path.is_file():
            raise ValueError(f"shards: {path} does not exist")
        record = json.loads(path.read_text())
        if first is None:
            first = record
        seconds += record["seconds"]
        for key in ("config", "data_path", "encoder_from", "dim"):
            if record.get(key) != first.get(key):
                raise ValueError(f"shards: {shard} differs from {shard_dirs[0]} in {key}")
        config = MachConfig(**record["config"])
        states = torch.load(shard / SHARD_HEADS, weights_only=True)
        for rep in record["reps"]:
            if any(r.rep == rep for r in results):
                raise ValueError(f"shards: repetition {rep} appears in more than one shard")
            head = MachHead(record["dim"], config)
            head.load_state_dict(states[rep])
            results.append(HeadResult(rep, head.eval(), record["epoch_losses"][str(rep)]))
    assert first is not None, "argparse requires at least one shard"
    meta = {k: v for k, v in first.items() if k not in ("config", "reps", "epoch_losses")}
    return MachConfig(**first["config"]), results, {**meta, "seconds": round(seconds, 1)}


def _stage_base(
    staging: Path, dataset: XCDataset, encoder_from: Path | None, cache_dir: Path
) -> tuple[dict[str, Any], EncoderSpec]:
    """Copy what the MACH bundle stands on into `staging`: every file of `encoder_from`'s bundle
    (its ASTRA model included), or the base encoder and the labels. Returns the manifest fields
    that come with them, and the encoder's spec."""
    if encoder_from is None:
        source, encoder_spec = encoder_dir(None, cache_dir)
        shutil.copyfile(source / ENCODER_FILE, staging / ENCODER_FILE)
        shutil.copyfile(source / TOKENIZER_FILE, staging / TOKENIZER_FILE)
        write_lines(staging / LABEL_TITLES_FILE, dataset.label_titles)
        write_lines(staging / LABEL_IDS_FILE, dataset.label_ids)
        base = {
            "kinds": [],
            "labels": LabelSpec(count=dataset.num_labels).model_dump(),
            "encoder": encoder_spec.model_dump(),
            "training": {},
        }
        return base, encoder_spec
    base_manifest = load_bundle(encoder_from).manifest
    if base_manifest.labels.count != dataset.num_labels:
        raise ValueError(
            f"encoder_from: bundle has {base_manifest.labels.count} labels, "
            f"dataset has {dataset.num_labels}"
        )
    for name in base_manifest.files:
        shutil.copyfile(encoder_from / name, staging / name)
    base = base_manifest.model_dump(exclude={"files", "format_version", "mach"})
    base["kinds"] = [kind for kind in base_manifest.kinds if kind != "mach"]
    base["training"] = {"astra": base_manifest.astra_training} if base_manifest.astra else {}
    return base, base_manifest.encoder


def write_mach_bundle(
    out_dir: Path,
    *,
    dataset: XCDataset,
    heads: MachHeads,
    featurizer: NgramFeaturizer | None,
    config: MachConfig,
    encoder_from: Path | None,
    cache_dir: Path,
    default_model: str | None,
    training: dict[str, Any],
    extra_files: dict[str, Path] | None = None,
) -> Manifest:
    """Write a bundle holding MACH, on its own or beside `encoder_from`'s ASTRA model."""
    staging = out_dir.with_name(out_dir.name + ".tmp")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    base, encoder_spec = _stage_base(staging, dataset, encoder_from, cache_dir)
    export_heads(heads, encoder_spec.dim, staging / MACH_HEADS_FILE)
    ngrams = None
    if featurizer is not None:
        ngrams = NgramSpec(
            dim=featurizer.dim, ngram_max=featurizer.ngram_max, max_terms=featurizer.max_terms
        )
        np.save(staging / ngrams.idf, featurizer.idf)
    for name, path in (extra_files or {}).items():
        shutil.copyfile(path, staging / name)
    kinds = [*base["kinds"], "mach"]
    created = utc_now()
    manifest = write_manifest(
        staging,
        {
            **base,
            "name": out_dir.name,
            "version": created,
            "created_at": created,
            "kinds": kinds,
            "default_model": default_model or ("hybrid" if "astra" in kinds else "mach"),
            "mach": MachSpec(
                reps=config.repetitions,
                buckets=config.buckets,
                hash_seed=config.hash_seed,
                hash_prime=config.hash_family(dataset.num_labels).prime,
                hidden=config.hidden,
                loss=config.loss,
                uses_embedding=config.use_embedding,
                ngrams=ngrams,
                top_buckets=config.top_buckets,
            ),
            "training": {**base["training"], "mach": training},
        },
    )
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.rename(out_dir)
    return manifest
