"""Write an `XCDataset` in the raw-text XC layout: the one writer of it (`training.demo` too).

A shop's export read once can then be trained on, shared and diffed like any research
dataset: lbl_X.txt, lbl_uid.txt, trn_X.txt, trn_X_Y.txt, tst_X.txt and tst_X_Y.txt (when there
is a tst split) and dataset.json. The layout is one text per line, so a text with a line break
is refused rather than written as two lines.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from service.bundle import write_lines
from training.dataset import DataError, Split, XCDataset

_CORE_META = (
    "name",
    "positive_min_weight",
    "graded",
    "propensity",
    "num_labels",
    "trn_points",
    "tst_points",
)


def format_weight(weight: float) -> str:
    """A weight as XC text: "3" when integral, else float32's shortest round-trip repr."""
    value = float(weight)
    if not math.isfinite(value):
        raise DataError(f"weight {value!r} is not finite")
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return str(np.float32(value))


def _check_one_line(texts: list[str], what: str, out: Path) -> None:
    """DataError for the first text with a line break (the layout is one text per line)."""
    for i, text in enumerate(texts):
        if "\n" in text or "\r" in text:
            raise DataError(f"{out}: {what} {i} contains a line break, cannot write it: {text!r}")


def _xy_lines(split: Split, num_labels: int) -> list[str]:
    """A `*_X_Y.txt` file's lines: header, then the sorted `label:weight` pairs of each point."""
    lines = [f"{len(split)} {num_labels}"]
    for labels, weights in zip(split.labels, split.weights, strict=True):
        order = np.argsort(labels, kind="stable")
        lines.append(
            " ".join(f"{int(labels[i])}:{format_weight(weights[i])}" for i in order.tolist())
        )
    return lines


def write_xc_dir(dataset: XCDataset, out: Path, extra_meta: dict[str, Any] | None = None) -> Path:
    """Write `dataset` into directory `out` (created) in the XC text layout; returns `out`.

    `extra_meta` adds keys to dataset.json (it may not replace the layout's own keys).
    """
    out = Path(out)
    clash = sorted(set(extra_meta or {}) & set(_CORE_META))
    if clash:
        raise ValueError(f"extra_meta may not replace dataset.json's own keys: {clash}")
    _check_one_line(dataset.label_texts, "label text", out)
    _check_one_line(dataset.label_ids, "label id", out)
    splits = {"trn": dataset.trn} | ({"tst": dataset.tst} if dataset.tst is not None else {})
    for name, split in splits.items():
        _check_one_line(split.texts, f"{name} query", out)
    lines = {name: _xy_lines(split, dataset.num_labels) for name, split in splits.items()}
    out.mkdir(parents=True, exist_ok=True)
    write_lines(out / "lbl_X.txt", dataset.label_texts)
    write_lines(out / "lbl_uid.txt", dataset.label_ids)
    for name, split in splits.items():
        write_lines(out / f"{name}_X.txt", split.texts)
        write_lines(out / f"{name}_X_Y.txt", lines[name])
    if dataset.tst is None:  # a tst split left by an earlier write would be read back as ours
        for stale in ("tst_X.txt", "tst_X_Y.txt"):
            (out / stale).unlink(missing_ok=True)
    meta: dict[str, Any] = {
        "name": dataset.name,
        "positive_min_weight": dataset.positive_min_weight,
        "graded": dataset.graded,
        "propensity": {"A": dataset.propensity_a, "B": dataset.propensity_b},
        "num_labels": dataset.num_labels,
        "trn_points": len(dataset.trn),
        "tst_points": len(dataset.tst) if dataset.tst is not None else 0,
        **(extra_meta or {}),
    }
    (out / "dataset.json").write_text(
        json.dumps(meta, indent=1) + "\n", encoding="utf-8", newline="\n"
    )
    return out
