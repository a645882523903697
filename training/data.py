"""Dataset readers: the raw-text XC layout and the fastText format.

Both formats load into an `XCDataset`: label texts and ids, a training `Split` and an optional
test `Split`, plus the dataset's relevance threshold, whether weights are graded relevance and
its propensity constants. A `Split` keeps every listed (label, weight) pair of every point; a
pair is *positive* when its weight is >= the dataset's `positive_min_weight`.

Dev points are a deterministic slice of the training points (`is_dev_query`), so every tool
that asks for the "dev" split of a dataset sees the same queries without a stored split file.

Malformed input raises `DataError`, whose message names the file, the line where relevant and
what is wrong. Files are read as UTF-8 and split on "\\n" only ("\\r\\n" endings are accepted).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SPLIT_NAMES: tuple[str, ...] = ("trn", "train", "dev", "tst")
DEV_MODULUS = 8
FASTTEXT_PREFIX = "__label__"

_PAIR_RE = re.compile(r"(\d+)(?::([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?))?", re.ASCII)
_HEADER_RE = re.compile(r"\s*(\d+)\s+(\d+)\s*", re.ASCII)
_FASTTEXT_LABEL_RE = re.compile(r"\s*__label__(\S*)")

_EMPTY_LABELS = np.zeros(0, dtype=np.int64)
_EMPTY_WEIGHTS = np.zeros(0, dtype=np.float32)


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
    """A labelled dataset: label texts and ids, training and optional test points."""

    name: str
    label_titles: list[str]
    label_ids: list[str]
    trn: Split
    tst: Split | None
    positive_min_weight: float = 1.0
    graded: bool = False
    propensity_a: float = 0.55
    propensity_b: float = 1.5
    _dev_cache: tuple[Split, np.ndarray] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if len(self.label_titles) != len(self.label_ids):
            raise ValueError(
                f"{len(self.label_titles)} label titles but {len(self.label_ids)} label ids"
            )

    @property
    def num_labels(self) -> int:
        """Size of the label space."""
        return len(self.label_titles)

    def dev_mask(self) -> np.ndarray:
        """Boolean mask over `trn` marking its dev points (see `is_dev_query`)."""
        if self._dev_cache is None or self._dev_cache[0] is not self.trn:
            mask = np.fromiter((is_dev_query(t) for t in self.trn.texts), bool, len(self.trn))
            self._dev_cache = (self.trn, mask)
        return self._dev_cache[1]

    def split(self, name: str) -> Split:
        """A split by name: "trn" (all training points), "train" (trn minus dev), "dev", "tst".

        Train and dev partition trn deterministically, so model selection never touches tst.
        """
        if name == "trn":
            return self.trn
        if name == "train":
            return self.trn.subset(~self.dev_mask())
        if name == "dev":
            return self.trn.subset(self.dev_mask())
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


def is_dev_query(query: str) -> bool:
    """Whether a training query belongs to the dev split: sha1(utf-8) as an integer % 8 == 0.

    A hash of the text (not a position) keeps the split stable when files are reordered.
    """
    digest = hashlib.sha1(query.encode("utf-8")).hexdigest()
    return int(digest, 16) % DEV_MODULUS == 0


def _read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file, split on "\\n" with "\\r\\n" endings accepted."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line}: not valid UTF-8") from exc
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text:
        return []
    if text.endswith("\n"):
        text = text[:-1]
    lines = text.split("\n")
    if "\r" in text:
        lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    return lines


def _parse_pairs(path: Path, lineno: int, line: str) -> tuple[list[int], list[float]]:
    """Parse one `label:weight ...` line; a bare `label` means weight 1."""
    labels: list[int] = []
    weights: list[float] = []
    for tok in line.split():
        match = _PAIR_RE.fullmatch(tok)
        if match is None:
            raise DataError(f"{path}: line {lineno}: cannot parse label:weight pair {tok!r}")
        labels.append(int(match.group(1)))
        weight = match.group(2)
        value = 1.0 if weight is None else float(weight)
        if not math.isfinite(value):
            raise DataError(f"{path}: line {lineno}: weight is not finite in {tok!r}")
        weights.append(value)
    return labels, weights


def _read_xy(
    xy_path: Path, x_path: Path, num_x: int, lbl_path: Path, num_labels: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Read and validate a `*_X_Y.txt` file against its X file and the label count."""
    lines = _read_lines(xy_path)
    if not lines:
        raise DataError(f"{xy_path}: line 1: empty file, expected a 'num_points num_labels' header")
    header = _HEADER_RE.fullmatch(lines[0])
    if header is None:
        raise DataError(
            f"{xy_path}: line 1: expected a 'num_points num_labels' header, got {lines[0]!r}"
        )
    n_points, n_labels = int(header.group(1)), int(header.group(2))
    if n_points != len(lines) - 1:
        raise DataError(
            f"{xy_path}: line 1: header says {n_points} points but the file has "
            f"{len(lines) - 1} point lines"
        )
    if n_points != num_x:
        raise DataError(
            f"{xy_path}: line 1: header says {n_points} points but {x_path.name} has {num_x} lines"
        )
    if n_labels != num_labels:
        raise DataError(
            f"{xy_path}: line 1: header says {n_labels} labels but {lbl_path.name} has "
            f"{num_labels} lines"
        )
    all_labels: list[np.ndarray] = []
    all_weights: list[np.ndarray] = []
    for lineno, line in enumerate(lines[1:], start=2):
        labs, ws = _parse_pairs(xy_path, lineno, line)
        if not labs:
            all_labels.append(_EMPTY_LABELS)
            all_weights.append(_EMPTY_WEIGHTS)
            continue
        lab_arr = np.array(labs, dtype=np.int64)
        bad = lab_arr >= n_labels
        if bad.any():
            raise DataError(
                f"{xy_path}: line {lineno}: label index {int(lab_arr[bad][0])} out of range "
                f"[0, {n_labels})"
            )
        if len(set(labs)) != len(labs):
            raise DataError(f"{xy_path}: line {lineno}: a label is listed more than once")
        all_labels.append(lab_arr)
        all_weights.append(np.array(ws, dtype=np.float32))
    return all_labels, all_weights


def _read_split(directory: Path, prefix: str, lbl_path: Path, num_labels: int) -> Split:
    """Read `<prefix>_X.txt` and `<prefix>_X_Y.txt` from `directory` into a Split."""
    x_path = directory / f"{prefix}_X.txt"
    xy_path = directory / f"{prefix}_X_Y.txt"
    texts = _read_lines(x_path)
    labels, weights = _read_xy(xy_path, x_path, len(texts), lbl_path, num_labels)
    return Split(texts=texts, labels=labels, weights=weights)


def _number(path: Path, key: str, value: Any) -> float:
    """A finite JSON number from dataset.json, else DataError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"{path}: {key!r} must be a number, got {value!r}")
    return float(value)


def _read_meta(path: Path, default_name: str) -> dict[str, Any]:
    """Read optional dataset.json: name, positive_min_weight, graded, propensity {A, B}."""
    meta: dict[str, Any] = {
        "name": default_name,
        "positive_min_weight": 1.0,
        "graded": False,
        "propensity_a": 0.55,
        "propensity_b": 1.5,
    }
    if not path.exists():
        return meta
    lines = _read_lines(path)
    try:
        raw = json.loads("\n".join(lines))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: line {exc.lineno}: invalid JSON: {exc.msg}") from exc
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    if "name" in raw:
        if not isinstance(raw["name"], str) or not raw["name"]:
            raise DataError(f"{path}: 'name' must be a non-empty string, got {raw['name']!r}")
        meta["name"] = raw["name"]
    if "positive_min_weight" in raw:
        meta["positive_min_weight"] = _number(
            path, "positive_min_weight", raw["positive_min_weight"]
        )
    if "graded" in raw:
        if not isinstance(raw["graded"], bool):
            raise DataError(f"{path}: 'graded' must be true or false, got {raw['graded']!r}")
        meta["graded"] = raw["graded"]
    if "propensity" in raw:
        prop = raw["propensity"]
        if not isinstance(prop, dict):
            raise DataError(f"{path}: 'propensity' must be an object with keys A and B")
        if "A" in prop:
            meta["propensity_a"] = _number(path, "propensity.A", prop["A"])
        if "B" in prop:
            meta["propensity_b"] = _number(path, "propensity.B", prop["B"])
    return meta


def read_xc_dir(path: str | Path) -> XCDataset:
    """Read a dataset directory in the raw-text XC layout (see DESIGN.md), validating it.

    Required: lbl_X.txt, trn_X.txt, trn_X_Y.txt. Optional: lbl_uid.txt (else ids "0".."K-1"),
    tst_X.txt with tst_X_Y.txt, and dataset.json (name, positive_min_weight, graded,
    propensity {A, B}).
    """
    directory = Path(path)
    if not directory.is_dir():
        raise DataError(f"{directory}: not a directory")
    for required in ("lbl_X.txt", "trn_X.txt", "trn_X_Y.txt"):
        if not (directory / required).is_file():
            raise DataError(f"{directory / required}: required file is missing")

    lbl_path = directory / "lbl_X.txt"
    titles = _read_lines(lbl_path)
    uid_path = directory / "lbl_uid.txt"
    if uid_path.exists():
        ids = _read_lines(uid_path)
        if len(ids) != len(titles):
            raise DataError(
                f"{uid_path}: has {len(ids)} lines but {lbl_path.name} has {len(titles)}"
            )
    else:
        ids = [str(i) for i in range(len(titles))]

    trn = _read_split(directory, "trn", lbl_path, len(titles))
    has_tst_x = (directory / "tst_X.txt").exists()
    has_tst_xy = (directory / "tst_X_Y.txt").exists()
    tst: Split | None = None
    if has_tst_x and has_tst_xy:
        tst = _read_split(directory, "tst", lbl_path, len(titles))
    elif has_tst_x or has_tst_xy:
        present, missing = (
            ("tst_X.txt", "tst_X_Y.txt") if has_tst_x else ("tst_X_Y.txt", "tst_X.txt")
        )
        raise DataError(f"{directory / missing}: missing, but {present} is present")

    meta = _read_meta(directory / "dataset.json", directory.resolve().name)
    return XCDataset(label_titles=titles, label_ids=ids, trn=trn, tst=tst, **meta)


def _parse_fasttext(path: Path) -> list[tuple[list[str], str]]:
    """Parse fastText lines into (tags, text); blank lines are skipped."""
    points: list[tuple[list[str], str]] = []
    for lineno, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        tags: dict[str, None] = {}
        pos = 0
        while (match := _FASTTEXT_LABEL_RE.match(line, pos)) is not None:
            if not match.group(1):
                raise DataError(f"{path}: line {lineno}: empty label {FASTTEXT_PREFIX!r}")
            tags[match.group(1)] = None
            pos = match.end()
        points.append((list(tags), line[pos:].strip()))
    return points


def _fasttext_split(points: list[tuple[list[str], str]], index: dict[str, int]) -> Split:
    """Build a Split from parsed fastText points (every pair has weight 1)."""
    labels = [np.sort(np.array([index[t] for t in tags], dtype=np.int64)) for tags, _ in points]
    weights = [np.ones(len(lab), dtype=np.float32) for lab in labels]
    return Split(texts=[text for _, text in points], labels=labels, weights=weights)


def read_fasttext(path: str | Path, test_path: str | Path | None = None) -> XCDataset:
    """Read fastText-format files (`__label__a __label__b text`) into an XCDataset.

    The label space is the sorted distinct tags of both files; label ids are the tags and label
    titles the tags with '-' replaced by ' '. All lines of `path` go to trn, `test_path`'s to tst.
    """
    trn_path = Path(path)
    if not trn_path.is_file():
        raise DataError(f"{trn_path}: no such file")
    trn_points = _parse_fasttext(trn_path)
    tst_points: list[tuple[list[str], str]] | None = None
    if test_path is not None:
        tst_file = Path(test_path)
        if not tst_file.is_file():
            raise DataError(f"{tst_file}: no such file")
        tst_points = _parse_fasttext(tst_file)
    tags = sorted({t for tags_, _ in trn_points + (tst_points or []) for t in tags_})
    index = {tag: i for i, tag in enumerate(tags)}
    return XCDataset(
        name=trn_path.stem,
        label_titles=[t.replace("-", " ") for t in tags],
        label_ids=list(tags),
        trn=_fasttext_split(trn_points, index),
        tst=None if tst_points is None else _fasttext_split(tst_points, index),
    )


def load_dataset(path: str | Path) -> XCDataset:
    """Load a dataset by path: a directory with lbl_X.txt (XC layout) or a fastText file."""
    target = Path(path)
    if target.is_dir():
        if not (target / "lbl_X.txt").is_file():
            raise DataError(f"{target}: directory has no lbl_X.txt, so it is not an XC dataset")
        return read_xc_dir(target)
    if target.is_file():
        return read_fasttext(target)
    raise DataError(f"{target}: no such file or directory")
