"""Hashed word n-gram TF-IDF features of a query: MACH's sparse input beside the embedding.

The MACH paper feeds its heads sparse hashed features; here they sit beside the dense sentence
embedding and carry what embeddings blur (exact words, model numbers, rare terms). Training and
service import this one definition, so a query is featurised identically on both sides. Term
ids come from CRC-32 (stable across processes and platforms, unlike Python's `hash`); id 0 is
padding. Each row is sublinear TF × IDF, L2-normalised, like scikit-learn's TfidfVectorizer.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import numpy as np

TOKEN_PATTERN = re.compile(r"\w+")
PAD_ID = 0


@dataclass(kw_only=True, frozen=True)
class NgramFeaturizer:
    """Maps texts to padded (term ids, weights) rows over `dim` hashed n-gram slots."""

    dim: int
    ngram_max: int
    max_terms: int
    idf: np.ndarray  # float32 [dim]; idf[PAD_ID] is unused

    def __post_init__(self) -> None:
        if self.idf.shape != (self.dim,):
            raise ValueError(f"idf: shape {self.idf.shape}, expected ({self.dim},)")

    def term_ids(self, text: str) -> list[int]:
        """Hashed ids of the text's word 1..ngram_max-grams (repeats kept: they are the TF)."""
        return term_ids(text, self.dim, self.ngram_max)

    def transform(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 [n, L], weights float32 [n, L]) with L ≤ max_terms, padded with id 0.

        Rows longer than `max_terms` keep their heaviest terms.
        """
        rows: list[tuple[np.ndarray, np.ndarray]] = []
        for text in texts:
            ids, counts = np.unique(
                np.asarray(self.term_ids(text), dtype=np.int64), return_counts=True
            )
            weights = (1.0 + np.log(counts)) * self.idf[ids]
            if len(ids) > self.max_terms:
                keep = np.argsort(-weights, kind="stable")[: self.max_terms]
                ids, weights = ids[keep], weights[keep]
            norm = float(np.sqrt(np.sum(weights * weights)))
            rows.append((ids, weights / norm if norm > 0 else weights))
        width = max(1, max(len(ids) for ids, _ in rows)) if rows else 1
        out_ids = np.full((len(rows), width), PAD_ID, dtype=np.int64)
        out_weights = np.zeros((len(rows), width), dtype=np.float32)
        for i, (ids, weights) in enumerate(rows):
            out_ids[i, : len(ids)] = ids
            out_weights[i, : len(ids)] = weights
        return out_ids, out_weights


def empty_rows(count: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, weights) [count, 1] of queries without n-gram features (heads that use none)."""
    return np.full((count, 1), PAD_ID, dtype=np.int64), np.zeros((count, 1), dtype=np.float32)


def term_ids(text: str, dim: int, ngram_max: int) -> list[int]:
    """Hashed ids in 1..dim-1 of the lower-cased word n-grams (n = 1..ngram_max) of `text`."""
    words = TOKEN_PATTERN.findall(text.lower())
    grams = [
        " ".join(words[i : i + n])
        for n in range(1, ngram_max + 1)
        for i in range(len(words) - n + 1)
    ]
    return [1 + zlib.crc32(gram.encode("utf-8")) % (dim - 1) for gram in grams]


def fit_idf(texts: list[str], dim: int, ngram_max: int) -> np.ndarray:
    """Smoothed IDF per hashed slot, ln((1 + n) / (1 + df)) + 1, from the training texts."""
    df = np.zeros(dim, dtype=np.int64)
    for text in texts:
        df[np.unique(np.asarray(term_ids(text, dim, ngram_max), dtype=np.int64))] += 1
    idf = np.log((1.0 + len(texts)) / (1.0 + df)) + 1.0
    idf[PAD_ID] = 0.0
    return idf.astype(np.float32)
