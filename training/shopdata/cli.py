"""Command-line flags for a shop's export: add them to a parser, build a spec from them.

`--data-config FILE.toml` reads a spec file; every other flag overrides its key, so one TOML
can serve several runs that differ in a rule or a file. Flags store under `shop_<field>` so
they never collide with a command's own options.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.shopdata.spec import SINGLE_CLICK_CHOICES, ShopDataSpec, read_toml_settings

# flag -> (spec field, type, help)
_FLAGS: tuple[tuple[str, str, Any, str], ...] = (
    ("--products", "products", Path, "products file (.csv, .tsv, .jsonl, .ndjson, .parquet)"),
    ("--interactions", "interactions", Path, "search log: query, product, event counts"),
    ("--test-interactions", "test_interactions", Path, "held-out log for the tst split"),
    ("--id-column", "id_column", str, "products: id column (default id)"),
    ("--title-column", "title_column", str, "products: title column (default title)"),
    ("--query-column", "query_column", str, "interactions: query column (default query)"),
    ("--product-column", "product_column", str, "interactions: product id column"),
    ("--grade-column", "grade_column", str, "interactions: human grade column (optional)"),
    ("--min-count", "min_count", float, "drop pairs with fewer summed events (default 1)"),
    ("--max-grade", "max_grade", float, "cap on a pair's signal score (default 3)"),
    ("--positive-min-weight", "positive_min_weight", float, "relevance threshold (default 2)"),
    ("--dataset-name", "name", str, "dataset name (default: the products file's directory)"),
)


def _text_fields(value: str) -> tuple[str, ...]:
    """--text-fields title,brand,category -> ("title", "brand", "category")."""
    fields = tuple(part.strip() for part in value.split(",") if part.strip())
    if not fields:
        raise argparse.ArgumentTypeError("expected comma-separated column names")
    return fields


def _signal(value: str) -> tuple[str, float]:
    """--signal purchases=3 -> ("purchases", 3.0)."""
    column, sep, weight = value.partition("=")
    try:
        number = float(weight)
    except ValueError:
        number = float("nan")
    if not sep or not column.strip() or number != number or number < 0:
        raise argparse.ArgumentTypeError(f"expected COLUMN=WEIGHT (weight >= 0), got {value!r}")
    return column.strip(), number


def add_shop_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the shop-export flags (all default None, so unset flags leave the TOML's values)."""
    group = parser.add_argument_group("shop export (products file and search logs)")
    group.add_argument(
        "--data-config",
        dest="shop_data_config",
        type=Path,
        default=None,
        help="TOML file of the settings below (flags override it)",
    )
    for flag, field, kind, text in _FLAGS:
        group.add_argument(flag, dest=f"shop_{field}", type=kind, default=None, help=text)
    group.add_argument(
        "--text-fields",
        dest="shop_text_fields",
        type=_text_fields,
        default=None,
        help="product columns joined into the label text, e.g. title,brand",
    )
    group.add_argument(
        "--field-weight",
        dest="shop_field_weights",
        type=_signal,
        action="append",
        default=None,
        metavar="FIELD=WEIGHT",
        help="a text field's BM25 weight, repeatable (default 1 each)",
    )
    group.add_argument(
        "--signal",
        dest="shop_signals",
        type=_signal,
        action="append",
        default=None,
        metavar="COLUMN=WEIGHT",
        help="event column and weight, repeatable (replaces the default "
        "purchases=3 add_to_carts=2 clicks=1)",
    )
    group.add_argument(
        "--single-click",
        dest="shop_single_click",
        choices=SINGLE_CLICK_CHOICES,
        default=None,
        help="keep or drop queries seen with one click only",
    )


def shop_data_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The spec settings the flags give: the TOML's (if --data-config), then each flag set."""
    config = getattr(args, "shop_data_config", None)
    settings = read_toml_settings(config) if config is not None else {}
    for _, field, _, _ in _FLAGS:
        value = getattr(args, f"shop_{field}", None)
        if value is not None:
            settings[field] = value
    if getattr(args, "shop_text_fields", None) is not None:
        settings["text_fields"] = args.shop_text_fields
    signals: Sequence[tuple[str, float]] | None = getattr(args, "shop_signals", None)
    if signals:
        settings["signals"] = dict(signals)
    weights: Sequence[tuple[str, float]] | None = getattr(args, "shop_field_weights", None)
    if weights:
        settings["field_weights"] = dict(weights)
    if getattr(args, "shop_single_click", None) is not None:
        settings["single_click"] = args.shop_single_click
    return settings


def shop_data_spec_from_args(args: argparse.Namespace) -> ShopDataSpec | None:
    """The spec the flags describe, or None when neither --products nor --data-config is given.

    Raises DataError for an invalid setting, naming the TOML file when no flag overrides it.
    """
    config = getattr(args, "shop_data_config", None)
    if config is None and getattr(args, "shop_products", None) is None:
        return None
    settings = shop_data_settings(args)
    flags_set = config is None or settings != read_toml_settings(config)
    return ShopDataSpec.from_settings(settings, source=None if flags_set else config)
