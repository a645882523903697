"""Writing a bundle: the encoder exported to ONNX, its tokenizer, classifier vectors, the index.

The bundle layout and manifest schema live in `service.bundle` (the contract); this module only
produces the files and hands them to `write_manifest`.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.astra.index import AnnIndex, build_index, default_index_spec
from service.bundle import (
    CLASSIFIERS_FILE,
    ENCODER_FILE,
    LABEL_IDS_FILE,
    LABEL_TITLES_FILE,
    TOKENIZER_FILE,
    AstraSpec,
    EncoderSpec,
    LabelSpec,
    Manifest,
    utc_now,
    write_lines,
    write_manifest,
)
from training.encoder import SentenceEncoder, base_model_dir, load_tokenizer, tokenize
from training.lexical import write_lexical

ENCODER_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]


def export_encoder(encoder: SentenceEncoder, path: Path) -> None:
    """Export the encoder (pooling and normalisation included) with dynamic batch/sequence axes."""
    encoder = encoder.eval()
    example = tokenize(load_tokenizer(32), ["cordless drill", "2 in. x 4 in. x 8 ft. lumber"])
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter about optional torchvision ops
        program = torch.onnx.export(
            encoder,
            (),
            kwargs=example,
            input_names=ENCODER_INPUTS,
            output_names=[EncoderSpec.model_fields["output"].default],
            dynamic_shapes={name: {0: batch, 1: seq} for name in ENCODER_INPUTS},
            dynamo=True,
            external_data=False,
        )
    program.save(str(path))


def write_bundle(
    out_dir: Path,
    *,
    encoder: SentenceEncoder,
    query_max_length: int,
    classifiers: np.ndarray,
    label_titles: list[str],
    label_ids: list[str],
    trained_labels: int,
    index_type: str = "auto",
    training: dict[str, Any] | None = None,
    extra_files: dict[str, Path] | None = None,
    lexical_fields: dict[str, tuple[float, list[str]]] | None = None,
) -> Manifest:
    """Write a complete ASTRA bundle to `out_dir` (replacing any bundle already there), its
    lexical ranker included (at the default weight, until dev tuning sets it), over the
    titles or, where given, the products' `lexical_fields` (`XCDataset.lexical_fields`)."""
    if classifiers.shape != (len(label_titles), encoder.dim):
        raise ValueError(f"classifiers shape {classifiers.shape} does not match the labels")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    export_encoder(encoder, out_dir / ENCODER_FILE)
    shutil.copyfile(base_model_dir() / "tokenizer.json", out_dir / TOKENIZER_FILE)
    matrix = np.ascontiguousarray(classifiers, dtype=np.float32)
    np.save(out_dir / CLASSIFIERS_FILE, matrix)
    write_lines(out_dir / LABEL_TITLES_FILE, label_titles)
    write_lines(out_dir / LABEL_IDS_FILE, label_ids)
    index_spec = default_index_spec(len(label_titles), index_type, encoder.dim)
    AnnIndex(build_index(matrix, index_spec), index_spec).write(out_dir / index_spec.file)
    lexical = write_lexical(out_dir, label_titles, lexical_fields)
    for name, source in (extra_files or {}).items():
        shutil.copyfile(source, out_dir / name)
    created = utc_now()
    return write_manifest(
        out_dir,
        {
            "name": out_dir.name,
            "version": created,
            "created_at": created,
            "kinds": ["astra"],
            "default_model": "astra",
            "labels": LabelSpec(count=len(label_titles)),
            "encoder": EncoderSpec(max_length=query_max_length, dim=encoder.dim),
            "astra": AstraSpec(index=index_spec, trained_labels=trained_labels, lexical=lexical),
            "training": training or {},
        },
    )
