"""Query encoding in the service: HF `tokenizers` + an ONNX Runtime session, no torch.

The ONNX graph already applies mean pooling and L2 normalisation, so `encode` returns the
vectors that are searched against the classifier vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from service.bundle import BundleError, EncoderSpec, precision_file
from service.device import CPU_PROVIDER, open_session


def configure_tokenizer(tokenizer: Tokenizer, max_length: int) -> Tokenizer:
    """Truncate to `max_length` tokens and pad each batch to its longest member."""
    tokenizer.enable_truncation(max_length=max_length)
    pad_id = tokenizer.token_to_id("[PAD]")
    tokenizer.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")
    return tokenizer


def encoder_file(spec: EncoderSpec, precision: str) -> str:
    """The bundle file of the encoder at `precision` (fp32, or int8 when the bundle has one)."""
    return precision_file(spec.file, spec.int8_file, precision, "encoder", "XC_ENCODER_PRECISION")


class QueryEncoder:
    """Turns query strings into unit-length float32 vectors with the bundle's ONNX encoder.

    Tokenizing is one untruncated pass (which also counts tokens against the request limit);
    `embed` then truncates to the encoder's `max_length` itself, keeping the closing special
    token as the tokenizer's own truncation does (checked at load). Queries of equal length
    run in one call, so a batch pays for no padding: on CPU, padding a batch of short queries
    to its longest costs more than the separate calls.
    """

    def __init__(
        self,
        *,
        bundle_dir: Path,
        spec: EncoderSpec,
        threads: int = 0,
        providers: Sequence[str] = (CPU_PROVIDER,),
        precision: str = "fp32",
        size: str = "full",
    ) -> None:
        self.spec = spec
        self.precision = precision
        self.size = size  # full, or the bundle's student (then `spec` is `EncoderSpec.sized`'s)
        tokenizer_path = bundle_dir / spec.tokenizer
        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_path))
        except Exception as exc:  # tokenizers raises a bare Exception on a bad file
            raise BundleError(f"{tokenizer_path}: not a valid tokenizer.json ({exc})") from exc
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self.tokenizer = tokenizer
        self.special_tokens = len(tokenizer.encode("").ids)
        self._check_truncation(tokenizer_path)
        self.file = encoder_file(spec, precision)  # the bundle file this encoder runs
        model_path = bundle_dir / self.file
        self.session = open_session(model_path, threads, providers)
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

    def _check_truncation(self, tokenizer_path: Path) -> None:
        """`_truncate` must agree with the tokenizer's own truncation on an over-long query."""
        text = " ".join(f"probe{i}" for i in range(self.spec.max_length))
        reference = Tokenizer.from_str(self.tokenizer.to_str())
        reference.enable_truncation(max_length=self.spec.max_length)
        if self._truncate(self.tokenizer.encode(text).ids) != reference.encode(text).ids:
            raise BundleError(
                f"{tokenizer_path}: its special tokens do not frame the text as "
                "[CLS] text [SEP]; the service cannot truncate its queries"
            )

    def _truncate(self, ids: list[int]) -> list[int]:
        limit = self.spec.max_length
        return ids if len(ids) <= limit else ids[: limit - 1] + ids[-1:]

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, special tokens included, not truncated.

        One `encode` per text: for the short texts of a search batch this is several times
        faster than `encode_batch`, whose thread-pool hand-off costs more than the work.
        """
        return [self.tokenizer.encode(text).ids for text in texts]

    def token_counts(self, token_ids: list[list[int]]) -> list[int]:
        """Word-piece tokens of each tokenized text, special tokens excluded."""
        return [len(ids) - self.special_tokens for ids in token_ids]

    def _feeds(self, rows: list[list[int]]) -> dict[str, np.ndarray]:
        ids = np.array(rows, dtype=np.int64)  # rows of one length: no padding needed
        feeds = {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            "token_type_ids": np.zeros_like(ids),
        }
        return {name: feeds[name] for name in self._input_names}

    def embed(self, token_ids: list[list[int]]) -> np.ndarray:
        """Run the encoder on tokenized texts -> float32 [n, dim], each row of unit length."""
        rows = [self._truncate(ids) for ids in token_ids]
        by_length: dict[int, list[int]] = {}
        for position, row in enumerate(rows):
            by_length.setdefault(len(row), []).append(position)
        vectors: np.ndarray | None = None
        for positions in by_length.values():
            (out,) = self.session.run([self.spec.output], self._feeds([rows[p] for p in positions]))
            if vectors is None:  # sized by the graph's output: the load-time probe checks it
                vectors = np.empty((len(rows), out.shape[1]), dtype=np.float32)
            vectors[positions] = out
        assert vectors is not None, "embed needs at least one text"
        return vectors

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed a batch of texts -> float32 [n, dim], each row of unit length."""
        return self.embed(self.tokenize(texts))
