"""A shop's search log read into graded (query, product) pairs: the points of a split.

Each row says how often shoppers who searched a query did something with a product: signal
counts (purchases, add-to-carts, clicks by default) and optionally a human grade. Rows are
aggregated per (normalised query, product): the score is the sum of weight x count over the
rows, capped at `max_grade`; pairs with grades weigh the mean grade instead. Pairs with fewer
than `min_count` events are dropped, and queries seen only once with a single click can be
dropped (`single_click = "drop"`): one click is as often a mis-tap as a judgement.

Queries are normalised by `normalise_query` everywhere (the dev split is `is_dev_query` of the
normalised text), so "  Cordless DRILL " and "cordless drill" are one point.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.dataset import DataError, Split
from training.shopdata.formats import Refusal, RowRefused, TableFile
from training.shopdata.report import FileReport
from training.shopdata.spec import ShopDataSpec
from training.shopdata.values import cell_number, cell_text


def normalise_query(text: str) -> str:
    """Unicode NFKC, lower case, whitespace runs collapsed to one space, stripped."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


@dataclass
class _Pair:
    """The evidence for one (query, product) pair, summed over its rows."""

    score: float = 0.0
    count: float = 0.0
    grade_sum: float = 0.0
    grades: int = 0


@dataclass
class _Query:
    """One normalised query's rows: how many, whether its row is a single click, its pairs."""

    rows: int = 0
    single_click: bool = False
    pairs: dict[int, _Pair] = field(default_factory=dict)


@dataclass
class _ParsedRow:
    """One usable row: normalised query, product label, signal counts, grade (if any)."""

    query: str
    label: int
    counts: dict[str, float]
    grade: float | None


@dataclass
class Interactions:
    """The points read from one interactions file, the tally of its rows and of the rules."""

    split: Split
    report: FileReport
    signals_used: list[str]
    pairs: Counter[str]
    queries: Counter[str]

    def summary(self) -> dict[str, Any]:
        """Pairs and queries kept and dropped by rule, and the signal columns used."""
        return {
            "signals_used": self.signals_used,
            "points": len(self.split),
            "pairs": dict(sorted(self.pairs.items())),
            "queries": dict(sorted(self.queries.items())),
        }


def _parse_row(
    values: dict[str, Any], spec: ShopDataSpec, index: dict[str, int], catalog: Path
) -> _ParsedRow:
    """A row's normalised query, product label, signal counts and grade; refuses a bad row."""
    query = normalise_query(cell_text(values.get(spec.query_column)))
    if not query:
        raise RowRefused(Refusal("empty query", "empty query", spec.query_column))
    product_id = cell_text(values.get(spec.product_column))
    if not product_id:
        raise RowRefused(Refusal("missing product id", "missing product id", spec.product_column))
    label = index.get(product_id)
    if label is None:
        detail = f"unknown product {product_id!r} (not in {catalog.name})"
        raise RowRefused(Refusal("unknown product", detail, spec.product_column))
    counts = {s: cell_number(values.get(s), s, "count") or 0.0 for s in spec.signal_weights}
    grade = None
    if spec.grade_column is not None:
        grade = cell_number(values.get(spec.grade_column), spec.grade_column, "grade", absent=None)
    return _ParsedRow(query, label, counts, grade)


def _add(queries: dict[str, _Query], row: _ParsedRow, spec: ShopDataSpec) -> None:
    """Add one row's evidence to its query and pair."""
    tally = queries.setdefault(row.query, _Query())
    tally.rows += 1
    events = sum(row.counts.values())
    tally.single_click = (
        row.grade is None and events == 1 and any(row.counts[s] == 1 for s in spec.click_signals)
    )
    pair = tally.pairs.setdefault(row.label, _Pair())
    pair.score += sum(spec.signal_weights[s] * c for s, c in row.counts.items())
    pair.count += events
    if row.grade is not None:
        pair.grade_sum += row.grade
        pair.grades += 1


def _points(
    queries: dict[str, _Query], spec: ShopDataSpec
) -> tuple[Split, Counter[str], Counter[str]]:
    """The split's points after the rules, and the pairs and queries kept and dropped."""
    pairs: Counter[str] = Counter(kept=0, dropped_min_count=0, dropped_single_click=0)
    counted: Counter[str] = Counter(kept=0, dropped_single_click=0, dropped_no_pair_left=0)
    texts: list[str] = []
    labels: list[np.ndarray] = []
    weights: list[np.ndarray] = []
    for query, tally in queries.items():
        if spec.single_click == "drop" and tally.rows == 1 and tally.single_click:
            counted["dropped_single_click"] += 1
            pairs["dropped_single_click"] += len(tally.pairs)
            continue
        kept: dict[int, float] = {}
        for label, pair in tally.pairs.items():
            if pair.grades:
                kept[label] = pair.grade_sum / pair.grades
            elif pair.count < spec.min_count:
                pairs["dropped_min_count"] += 1
            else:
                kept[label] = min(pair.score, spec.max_grade)
        if not kept:
            counted["dropped_no_pair_left"] += 1
            continue
        order = sorted(kept)
        texts.append(query)
        labels.append(np.array(order, dtype=np.int64))
        weights.append(np.array([kept[j] for j in order], dtype=np.float32))
        pairs["kept"] += len(order)
        counted["kept"] += 1
    return Split(texts=texts, labels=labels, weights=weights), pairs, counted


def read_interactions(
    path: Path, spec: ShopDataSpec, index: dict[str, int], catalog: Path
) -> Interactions:
    """Read one interactions file into a Split; `index` maps product id -> label.

    Raises DataError for a file-level problem, including a file with no signal column and no
    grade column (its rows would carry no evidence).
    """
    table = TableFile(path)
    report = FileReport(table)
    explicit = list(spec.signals) if spec.signals is not None else []
    grade = [spec.grade_column] if spec.grade_column is not None else []
    required = [spec.query_column, spec.product_column, *explicit, *grade]
    only = [spec.query_column, spec.product_column, *spec.signal_weights, *grade]
    queries: dict[str, _Query] = {}
    for row in table.rows(required=required, only=only):
        report.rows_read += 1
        try:
            if row.refusal is not None:
                raise RowRefused(row.refusal)
            parsed = _parse_row(row.values, spec, index, catalog)
        except RowRefused as refused:
            report.refuse(row.location, refused.refusal)
            continue
        _add(queries, parsed, spec)
    used = [s for s in spec.signal_weights if s in table.columns]
    if not used and not grade:
        raise DataError(
            f"{path}: none of the signal columns {', '.join(spec.signal_weights)} is in the file "
            f"(columns: {', '.join(table.columns)}); name yours with --signal COLUMN=WEIGHT"
        )
    split, pairs, counted = _points(queries, spec)
    return Interactions(split=split, report=report, signals_used=used, pairs=pairs, queries=counted)
