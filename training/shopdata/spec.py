"""`ShopDataSpec`: which files hold a shop's catalog and logs, and how to read them.

One frozen value says where the products, interactions and optional test interactions are,
which columns mean what, and the rules that turn logged events into graded relevance: each
signal's weight, the minimum event count, the cap on a score, human grades, and what to do with
queries seen with a single click. It is built from a TOML file (`from_toml`, keys named as the
fields) or command-line flags (`training.shopdata.cli`), and recorded in a bundle's manifest
(`to_json`) so a model says which reading of the data it was trained on.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from training.dataset import DataError

DEFAULT_SIGNALS: Mapping[str, float] = MappingProxyType(
    {"purchases": 3.0, "add_to_carts": 2.0, "clicks": 1.0}
)
SINGLE_CLICK_CHOICES = ("keep", "drop")
PATH_KEYS = ("products", "interactions", "test_interactions")
_COLUMN_KEYS = ("id_column", "title_column", "query_column", "product_column")
_NUMBER_KEYS = ("min_count", "max_grade", "positive_min_weight")


@dataclass(frozen=True, kw_only=True)
class ShopDataSpec:
    """A shop's export files, their column mapping and the rules for graded relevance.

    - `text_fields`: product columns joined in order with " " (empty values skipped) into the
      label text that ASTRA embeds and BM25 indexes; default `(title_column,)`; it must include
      the title column.
    - `field_weights`: text field -> BM25 weight (BM25F: weighted term frequencies and
      lengths) for the lexical ranker; fields not named weigh 1, which is BM25 over the joined
      text.
    - `signals`: event-count column -> weight; a pair's score is sum(weight * count). `None`
      means `DEFAULT_SIGNALS`, of which only the columns the file has are used; columns given
      explicitly must exist.
    - `grade_column`: human grades; a pair with grades weighs their mean instead of its score
      (not capped, and kept whatever its event count).
    - `min_count`: pairs whose summed event count is below it are dropped.
    - `max_grade`: a pair's signal weight is min(score, max_grade).
    - `single_click`: "drop" drops a query whose only evidence is one row with a count of 1 in
      a lowest-weight signal (clicks, by default), 0 elsewhere, and no grade.
    - `name`: the dataset's name; default the products file's directory name.
    """

    products: Path
    interactions: Path | None = None
    test_interactions: Path | None = None
    id_column: str = "id"
    title_column: str = "title"
    text_fields: tuple[str, ...] | None = None
    field_weights: Mapping[str, float] | None = None
    query_column: str = "query"
    product_column: str = "product_id"
    signals: Mapping[str, float] | None = None
    grade_column: str | None = None
    min_count: float = 1.0
    max_grade: float = 3.0
    positive_min_weight: float = 2.0
    single_click: str = "keep"
    name: str | None = None

    def __post_init__(self) -> None:
        """Normalise types (paths, tuples, read-only signals) and validate every setting."""
        for key in PATH_KEYS:
            value = getattr(self, key)
            if value is not None:
                object.__setattr__(self, key, Path(value))
        for key in (*_COLUMN_KEYS, "grade_column"):
            value = getattr(self, key)
            if (value is not None or key != "grade_column") and not _is_name(value):
                raise DataError(f"{key} must be a non-empty column name, got {value!r}")
        fields_ = (self.title_column,) if self.text_fields is None else tuple(self.text_fields)
        if not fields_ or not all(_is_name(f) for f in fields_):
            raise DataError(f"text_fields must be non-empty column names, got {fields_!r}")
        if self.title_column not in fields_:
            raise DataError(
                f"text_fields {list(fields_)} must include the title column {self.title_column!r}"
            )
        object.__setattr__(self, "text_fields", fields_)
        weights = dict(self.field_weights or {})
        for name, weight in weights.items():
            if name not in fields_:
                raise DataError(
                    f"field_weights: {name!r} is not one of text_fields {list(fields_)}"
                )
            if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight > 0:
                raise DataError(f"field_weights: {name!r} must be a number > 0, got {weight!r}")
        object.__setattr__(
            self, "field_weights", MappingProxyType({k: float(v) for k, v in weights.items()})
        )
        if self.signals is not None:
            object.__setattr__(self, "signals", MappingProxyType(_signals(self.signals)))
        self._check_numbers()
        if self.single_click not in SINGLE_CLICK_CHOICES:
            raise DataError(
                f"single_click must be one of {', '.join(SINGLE_CLICK_CHOICES)}, "
                f"got {self.single_click!r}"
            )
        if self.name is None:
            object.__setattr__(self, "name", self.products.resolve().parent.name or "shop")
        elif not _is_name(self.name):
            raise DataError(f"name must be a non-empty string, got {self.name!r}")

    def _check_numbers(self) -> None:
        """min_count >= 0, max_grade > 0, positive_min_weight finite (all stored as float)."""
        for key in _NUMBER_KEYS:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise DataError(f"{key} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise DataError(f"{key} must be finite, got {value!r}")
            object.__setattr__(self, key, float(value))
        if self.min_count < 0:
            raise DataError(f"min_count must be >= 0, got {self.min_count:g}")
        if self.max_grade <= 0:
            raise DataError(f"max_grade must be > 0, got {self.max_grade:g}")

    @property
    def signal_weights(self) -> Mapping[str, float]:
        """The signal columns and weights in force (the defaults when `signals` is None)."""
        return DEFAULT_SIGNALS if self.signals is None else self.signals

    @property
    def click_signals(self) -> tuple[str, ...]:
        """The lowest-weight signal columns: a count of 1 in one of them is "a single click"."""
        lowest = min(self.signal_weights.values())
        return tuple(k for k, w in self.signal_weights.items() if w == lowest)

    @classmethod
    def from_toml(cls, path: str | Path) -> ShopDataSpec:
        """A spec from a TOML file whose keys are the field names (`signals` a table).

        Relative file paths are resolved against the TOML file's directory.
        """
        return cls.from_settings(read_toml_settings(path), source=Path(path))

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], source: Path | None = None) -> ShopDataSpec:
        """A spec from keyword settings; errors are prefixed with `source` when given."""
        where = f"{source}: " if source else ""
        if settings.get("products") is None:
            raise DataError(f"{where}the products file is required (--products, or products = ...)")
        try:
            return cls(**settings)
        except DataError as exc:
            raise DataError(f"{where}{exc}") from exc

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> ShopDataSpec:
        """The spec `to_json` recorded (a bundle manifest's `data_path`)."""
        settings = {key: value for key, value in record.items() if key != "signals_explicit"}
        if not record.get("signals_explicit", True):
            settings["signals"] = None
        for key in ("text_fields",):
            if settings.get(key) is not None:
                settings[key] = tuple(settings[key])
        return cls.from_settings(settings)

    def to_json(self) -> dict[str, Any]:
        """The spec as a JSON-ready dict (paths as strings), for a bundle's manifest."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            elif f.name == "signals":
                value = dict(self.signal_weights)
            elif f.name == "field_weights":
                value = dict(value or {})
            out[f.name] = value
        out["signals_explicit"] = self.signals is not None
        return out


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _signals(raw: Mapping[str, Any]) -> dict[str, float]:
    """Validated signal weights: at least one column, each weight a finite number >= 0."""
    if not isinstance(raw, Mapping) or not raw:
        raise DataError(f"signals must map at least one column to a weight, got {raw!r}")
    out: dict[str, float] = {}
    for column, weight in raw.items():
        if not _is_name(column):
            raise DataError(f"signals: column names must be non-empty, got {column!r}")
        ok = isinstance(weight, int | float) and not isinstance(weight, bool)
        if not ok or not math.isfinite(weight) or weight < 0:
            raise DataError(f"signals: weight of {column!r} must be a number >= 0, got {weight!r}")
        out[column] = float(weight)
    return out


def read_toml_settings(path: str | Path) -> dict[str, Any]:
    """The settings of a spec TOML file, checked key by key, paths resolved against its dir."""
    source = Path(path)
    try:
        with source.open("rb") as f:
            raw = tomllib.load(f)
    except OSError as exc:
        raise DataError(f"{source}: cannot read: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise DataError(f"{source}: invalid TOML: {exc}") from exc
    valid = [f.name for f in fields(ShopDataSpec)]
    settings: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in valid:
            raise DataError(f"{source}: unknown key {key!r} (valid keys: {', '.join(valid)})")
        settings[key] = _toml_value(source, key, value)
    return settings


def _toml_value(source: Path, key: str, value: Any) -> Any:
    """One TOML value checked for its key's type; paths made absolute against the TOML dir."""
    if key in PATH_KEYS:
        if not isinstance(value, str) or not value:
            raise DataError(f"{source}: {key!r} must be a file path string, got {value!r}")
        return (source.parent / value).resolve()
    if key == "text_fields":
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise DataError(f"{source}: 'text_fields' must be a list of column names")
        return tuple(i.strip() for i in items if i.strip())
    if key in ("signals", "field_weights") and not isinstance(value, dict):
        raise DataError(f"{source}: {key!r} must be a table of column = weight")
    if key in (*_COLUMN_KEYS, "grade_column", "single_click", "name") and not isinstance(
        value, str
    ):
        raise DataError(f"{source}: {key!r} must be a string, got {value!r}")
    return value
