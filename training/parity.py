"""ONNX parity: the served path (HF tokenizer + exported ONNX encoder) against the reference
sentence-transformers encoder, as per-query cosine similarities.

Only the untrained encoder has a sentence-transformers reference, so parity is measured on an
export of the base model; trained encoders go through the same `export_encoder`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from service.bundle import EncoderSpec
from service.search.encoder import QueryEncoder
from training.encoder import SentenceEncoder, base_model_dir
from training.export import export_encoder


def export_base_encoder(out_dir: Path) -> Path:
    """Export the untrained all-MiniLM-L6-v2 with its tokenizer.json into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = EncoderSpec(max_length=32, dim=384)
    export_encoder(SentenceEncoder(), out_dir / spec.file)
    shutil.copyfile(base_model_dir() / "tokenizer.json", out_dir / spec.tokenizer)
    return out_dir


def onnx_parity(onnx_dir: Path, texts: list[str], max_length: int = 32) -> np.ndarray:
    """Cosine between the ONNX path and sentence-transformers for each text."""
    from sentence_transformers import SentenceTransformer

    served = QueryEncoder(bundle_dir=onnx_dir, spec=EncoderSpec(max_length=max_length, dim=384))
    reference = SentenceTransformer(str(base_model_dir()), device="cpu")
    reference.max_seq_length = max_length
    expected = reference.encode(texts, batch_size=128, normalize_embeddings=True)
    got = np.concatenate([served.encode(texts[i : i + 128]) for i in range(0, len(texts), 128)])
    return (expected * got).sum(axis=1) / (
        np.linalg.norm(expected, axis=1) * np.linalg.norm(got, axis=1)
    )
