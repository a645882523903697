"""The dataset every reader produces: label texts and ids, a training and an optional test split.

An `XCDataset` holds label texts and ids, a training `Split` and an optional test `Split`, plus
the dataset's relevance threshold, whether weights are graded relevance and its propensity
constants. A `Split` keeps every listed (label, weight) pair of every point; a pair is
*positive* when its weight is >= the dataset's `positive_min_weight`.

Dev points are a deterministic slice of the training points (`is_dev_query`), so every tool
that asks for the "dev" split of a dataset sees the same queries without a stored split file.

The readers (`training.data` for the XC layout and fastText, `training.shopdata` for a shop's
own exports) build on this module; it imports none of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

SPLIT_NAMES: tuple[str, ...] = ("trn", "train", "dev", "tst", "train-a", "train-b")
# The two halves of `train` (by the same hash as dev): a bundle fitted on one half scores the
# other half's queries as if they were new, which is what a learned ranker can learn from
# beside dev (`python -m training ranker --stack-from`).
TRAIN_HALVES: tuple[str, str] = ("train-a", "train-b")
DEV_MODULUS = 8

_EMPTY_LABELS = np.zeros(0, dtype=np.int64)


class DataError(ValueError):
    """A dataset file is missing or malformed; the message names the file (and line)."""


@dataclass(eq=False)
class Split:
    """The points of one split: query texts with their listed labels and weights."""

    texts: list[str]
    labels: list[np.ndarray]
    weights: list[np.ndarray]

    def __post_init__(self) -> None:
        if not len(self.texts) == len(self.labels) == len(self.weights):
            raise ValueError(
                f"Split needs as many label and weight arrays as texts, got {len(self.texts)} "
                f"texts, {len(self.labels)} label arrays, {len(self.weights)} weight arrays"
            )

    def __len__(self) -> int:
        """Number of points."""
        return len(self.texts)

    def subset(self, indices: Sequence[int] | np.ndarray) -> Split:
        """The points at `indices` (ints, or a boolean mask), in that order.

        Label and weight arrays are shared with this split, not copied.
        """
        idx = np.asarray(indices)
        if idx.dtype == np.bool_:
            if idx.shape != (len(self),):
                raise ValueError(f"boolean mask has shape {idx.shape}, expected ({len(self)},)")
            idx = np.flatnonzero(idx)
        elif idx.size == 0:
            idx = idx.astype(np.int64)
        elif not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"subset indices must be integers, got dtype {idx.dtype}")
        picks = idx.ravel().tolist()
        return Split(
            texts=[self.texts[i] for i in picks],
            labels=[self.labels[i] for i in picks],
            weights=[self.weights[i] for i in picks],
        )

    def positives(self, min_weight: float) -> list[np.ndarray]:
        """Per point, the label ids whose weight is >= `min_weight` (the relevant labels).

        The threshold is compared in float32, the weights' own precision, so a threshold of
        2.33 selects weights written as "2.33".
        """
        threshold = np.float32(min_weight)
        return [lab[w >= threshold] for lab, w in zip(self.labels, self.weights, strict=True)]

    def positive_gains(self, min_weight: float, graded: bool) -> list[np.ndarray]:
        """Per point, the gains of `positives(min_weight)`: the weight if graded, else 1.0."""
        threshold = np.float32(min_weight)
        if graded:
            return [w[w >= threshold] for w in self.weights]
        return [np.ones(int(np.count_nonzero(w >= threshold)), np.float32) for w in self.weights]


@dataclass(kw_only=True, eq=False)
class XCDataset:
    """A labelled dataset: label titles and ids, training and optional test points.

    `label_titles` are what a result shows. Where products have fields (a shop's export read by
    `training.shopdata`), `text_fields` holds each label's text per field and `field_weights`
    each field's BM25 weight: the models read `label_texts` (the fields joined) and the lexical
    ranker indexes the fields (`lexical_fields`); otherwise both read the titles. `source`
    says where the data came from (recorded in a bundle's manifest).
    """

    name: str
    label_titles: list[str]
    label_ids: list[str]
    trn: Split
    tst: Split | None
    positive_min_weight: float = 1.0
    graded: bool = False
    propensity_a: float = 0.55
    propensity_b: float = 1.5
    text_fields: dict[str, list[str]] = field(default_factory=dict)
    field_weights: dict[str, float] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    _residue_cache: tuple[Split, np.ndarray] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if len(self.label_titles) != len(self.label_ids):
            raise ValueError(
                f"{len(self.label_titles)} label titles but {len(self.label_ids)} label ids"
            )
        for name, texts in self.text_fields.items():
            if len(texts) != len(self.label_titles):
                raise ValueError(
                    f"field {name!r} has {len(texts)} texts for {self.num_labels} labels"
                )
        unknown = set(self.field_weights) - set(self.text_fields)
        if unknown:
            raise ValueError(f"field_weights name {sorted(unknown)}, not text fields")

    @cached_property
    def label_texts(self) -> list[str]:
        """What the models read of each label: its text fields joined by " " (empty ones
        skipped), or its title where the dataset has no fields."""
        if not self.text_fields:
            return self.label_titles
        columns = zip(*self.text_fields.values(), strict=True)
        return [" ".join(part for part in parts if part) for parts in columns]

    def lexical_fields(self) -> dict[str, tuple[float, list[str]]]:
        """The fields the lexical ranker indexes with their weights (1 unless given); empty
        where the dataset has none (the titles are indexed)."""
        return {
            name: (self.field_weights.get(name, 1.0), texts)
            for name, texts in self.text_fields.items()
        }

    @property
    def num_labels(self) -> int:
        """Size of the label space."""
        return len(self.label_titles)

    def _residues(self) -> np.ndarray:
        """Each `trn` query's `split_residue`, hashed once: dev and the halves of train are
        both read from it."""
        if self._residue_cache is None or self._residue_cache[0] is not self.trn:
            texts = self.trn.texts
            residues = np.fromiter((split_residue(t) for t in texts), np.int64, len(texts))
            self._residue_cache = (self.trn, residues)
        return self._residue_cache[1]

    def dev_mask(self) -> np.ndarray:
        """Boolean mask over `trn` marking its dev points (see `is_dev_query`)."""
        return self._residues() % DEV_MODULUS == 0

    def split(self, name: str) -> Split:
        """A split by name: "trn" (all training points), "train" (trn minus dev), "dev", "tst",
        and "train-a" / "train-b", the halves of train (by the bit of `split_residue` above
        dev's, so they are as stable as dev when files are reordered).

        Train and dev partition trn deterministically, so model selection never touches tst.
        """
        if name == "trn":
            return self.trn
        if name == "train":
            return self.trn.subset(~self.dev_mask())
        if name == "dev":
            return self.trn.subset(self.dev_mask())
        if name in TRAIN_HALVES:
            half = self._residues() // DEV_MODULUS == TRAIN_HALVES.index(name)
            return self.trn.subset(~self.dev_mask() & half)
        if name == "tst":
            if self.tst is None:
                raise DataError(f"dataset {self.name!r} has no tst split")
            return self.tst
        raise DataError(f"unknown split {name!r}; valid splits: {', '.join(SPLIT_NAMES)}")

    def label_frequencies(self, split: Split) -> np.ndarray:
        """Number of positive points per label in `split` (int64, length num_labels).

        These are the N_l of the inverse-propensity formula used by PSP@k.
        """
        positives = split.positives(self.positive_min_weight)
        flat = np.concatenate(positives) if positives else _EMPTY_LABELS
        if flat.size and (flat.min() < 0 or flat.max() >= self.num_labels):
            raise ValueError(f"label id out of range [0, {self.num_labels}) in split")
        return np.bincount(flat.astype(np.int64), minlength=self.num_labels).astype(np.int64)


def split_residue(query: str) -> int:
    """sha1 of the query's UTF-8 as an integer, modulo 2·DEV_MODULUS: what the splits are cut
    by (dev below DEV_MODULUS's multiples, the halves of train by the bit above)."""
    return int(hashlib.sha1(query.encode("utf-8")).hexdigest(), 16) % (2 * DEV_MODULUS)


def is_dev_query(query: str) -> bool:
    """Whether a training query belongs to the dev split: sha1(utf-8) as an integer % 8 == 0.

    A hash of the text (not a position) keeps the split stable when files are reordered.
    """
    return split_residue(query) % DEV_MODULUS == 0
