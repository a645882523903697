"""Query encoding in the service: HF `tokenizers` + an ONNX Runtime session, no torch.

The ONNX graph already applies mean pooling and L2 normalisation, so `encode` returns the
vectors that are searched against the classifier vectors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from service.bundle import BundleError, EncoderSpec


def configure_tokenizer(tokenizer: Tokenizer, max_length: int) -> Tokenizer:
    """Truncate to `max_length` tokens and pad each batch to its longest member."""
    tokenizer.enable_truncation(max_length=max_length)
    pad_id = tokenizer.token_to_id("[PAD]")
    tokenizer.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")
    return tokenizer


def select_providers(device: str) -> list[str]:
    """ONNX Runtime execution providers for `device` (auto = CUDA when it is available)."""
    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise RuntimeError("device=cuda requested but onnxruntime has no CUDAExecutionProvider")
    return ["CPUExecutionProvider"]


def open_session(model_path: Path, threads: int, device: str) -> ort.InferenceSession:
    """An ONNX Runtime session on the chosen device; BundleError names a file it cannot load."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(model_path), options, providers=select_providers(device))
    except Exception as exc:  # onnxruntime raises its own exception types
        raise BundleError(f"{model_path}: ONNX Runtime cannot load it ({exc})") from exc


def encoder_file(spec: EncoderSpec, precision: str) -> str:
    """The bundle file of the encoder at `precision` (fp32, or int8 when the bundle has one)."""
    if precision == "fp32":
        return spec.file
    if precision == "int8" and spec.int8_file:
        return spec.int8_file
    if precision == "int8":
        raise BundleError(
            "encoder: this bundle has no int8 encoder (build one with "
            "`python -m training quantize --bundle DIR`), or serve with precision fp32"
        )
    raise ValueError(f"precision {precision!r}: expected fp32 or int8")


class QueryEncoder:
    """Turns query strings into unit-length float32 vectors with the bundle's ONNX encoder."""

    def __init__(
        self,
        bundle_dir: Path,
        spec: EncoderSpec,
        threads: int = 0,
        device: str = "auto",
        precision: str = "fp32",
    ) -> None:
        self.spec = spec
        self.precision = precision
        tokenizer_path = bundle_dir / spec.tokenizer
        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_path))
        except Exception as exc:  # tokenizers raises a bare Exception on a bad file
            raise BundleError(f"{tokenizer_path}: not a valid tokenizer.json ({exc})") from exc
        # A second, untruncated copy counts each query's tokens against the request limit.
        self.counter = Tokenizer.from_str(tokenizer.to_str())
        self.counter.no_truncation()
        self.counter.no_padding()
        self.tokenizer = configure_tokenizer(tokenizer, spec.max_length)
        model_path = bundle_dir / encoder_file(spec, precision)
        self.session = open_session(model_path, threads, device)
        self.providers = self.session.get_providers()
        self._input_names = [i.name for i in self.session.get_inputs()]
        missing = set(self._input_names) - set(spec.inputs)
        if missing:
            raise BundleError(f"{model_path}: unexpected inputs {sorted(missing)}")
        probe = self.encode(["probe"])
        if probe.shape != (1, spec.dim):
            raise BundleError(
                f"{model_path}: output shape {probe.shape[1:]}, manifest says dim {spec.dim}"
            )

    def token_counts(self, texts: list[str]) -> list[int]:
        """Word-piece tokens in each text, special tokens excluded and nothing truncated."""
        return [len(e.ids) for e in self.counter.encode_batch(texts, add_special_tokens=False)]

    def tokenize(self, texts: list[str]) -> dict[str, np.ndarray]:
        """The encoder's input arrays for a batch (truncated to max_length, padded)."""
        encodings = self.tokenizer.encode_batch(texts)
        feeds = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        return {name: feeds[name] for name in self._input_names}

    def embed(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Run the encoder on tokenized inputs -> float32 [n, dim], each row of unit length."""
        (vectors,) = self.session.run([self.spec.output], feeds)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed a batch of texts -> float32 [n, dim], each row of unit length."""
        return self.embed(self.tokenize(texts))
