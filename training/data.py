"""Dataset readers: the raw-text XC layout and the fastText format; the entry to shop exports.

Both formats load into an `XCDataset` (`training.dataset`, re-exported here with `Split`,
`DataError` and `is_dev_query`): label texts and ids, a training and an optional test split.

`load_dataset` also loads a shop's own export (a products file and search logs as CSV, JSON
lines or Parquet) described by a `.toml` spec file, or a directory holding `shopdata.toml`:
`training.shopdata` reads it into the same `XCDataset`.

Malformed input raises `DataError`, whose message names the file, the line where relevant and
what is wrong. Files are read as UTF-8 and split on "\\n" only ("\\r\\n" endings are accepted).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from training.dataset import SPLIT_NAMES, DataError, Split, XCDataset, is_dev_query

if TYPE_CHECKING:
    from training.shopdata import ShopDataSpec

__all__ = [
    "SPLIT_NAMES",
    "DataError",
    "Split",
    "XCDataset",
    "data_source",
    "is_dev_query",
    "load_dataset",
    "read_fasttext",
    "read_xc_dir",
]

FASTTEXT_PREFIX = "__label__"
SHOP_SPEC_FILE = "shopdata.toml"

_PAIR_RE = re.compile(r"(\d+)(?::([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?))?", re.ASCII)
_HEADER_RE = re.compile(r"\s*(\d+)\s+(\d+)\s*", re.ASCII)
_FASTTEXT_LABEL_RE = re.compile(r"\s*__label__(\S*)")

_EMPTY_LABELS = np.zeros(0, dtype=np.int64)
_EMPTY_WEIGHTS = np.zeros(0, dtype=np.float32)


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


def load_dataset(source: str | Path | Mapping[str, Any] | ShopDataSpec) -> XCDataset:
    """Load a dataset: a directory in the XC layout (with lbl_X.txt), a shop's export (a
    `.toml` spec file, a directory holding `shopdata.toml`, a `ShopDataSpec`, or the spec as
    `data_source` recorded it) or a fastText file."""
    from training.shopdata import ShopDataSpec, load_shop_data  # pyarrow: only where needed

    if isinstance(source, ShopDataSpec):
        return load_shop_data(source).dataset
    if isinstance(source, Mapping):
        return load_shop_data(ShopDataSpec.from_json(source)).dataset
    target = Path(source)
    if target.is_dir():
        if (target / "lbl_X.txt").is_file():
            return read_xc_dir(target)
        if (target / SHOP_SPEC_FILE).is_file():
            return load_shop_data(ShopDataSpec.from_toml(target / SHOP_SPEC_FILE)).dataset
        raise DataError(
            f"{target}: directory has no lbl_X.txt (XC layout) and no {SHOP_SPEC_FILE} "
            "(a shop's export), so it is not a dataset"
        )
    if target.is_file():
        if target.suffix.lower() == ".toml":
            return load_shop_data(ShopDataSpec.from_toml(target)).dataset
        return read_fasttext(target)
    raise DataError(f"{target}: no such file or directory")


def data_source(source: str | Path | ShopDataSpec) -> str | dict[str, Any]:
    """How a bundle's manifest records where its data came from (`data_path`): the path, or a
    spec given by flags as its settings; `load_dataset` reads either back."""
    from training.shopdata import ShopDataSpec

    return source.to_json() if isinstance(source, ShopDataSpec) else str(source)
