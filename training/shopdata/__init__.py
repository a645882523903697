"""A shop's own export as a dataset: a products file and search logs, as they are.

`load_shop_data(spec)` reads the products (the label space) and the interactions (training
points; optionally test interactions for the tst split) named by a `ShopDataSpec`, from CSV,
TSV, JSON lines or Parquet, into the same `XCDataset` the XC-layout reader gives, so training,
evaluation and the benchmarks need nothing new. Rows that cannot be used are refused one by
one, counted by reason in `ShopData.summary` and logged, never silently dropped.

Modules, one job each: `formats` (rows of a file), `values` (a cell as text or number),
`spec` (the settings), `cli` (their flags), `products`, `interactions`, `report` (tallies),
`xc_export` (write the XC text layout).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from training.dataset import DataError, XCDataset
from training.shopdata.cli import add_shop_data_arguments, shop_data_spec_from_args
from training.shopdata.interactions import Interactions, normalise_query, read_interactions
from training.shopdata.products import Products, read_products
from training.shopdata.spec import ShopDataSpec
from training.shopdata.xc_export import write_xc_dir

__all__ = [
    "ShopData",
    "ShopDataSpec",
    "add_shop_data_arguments",
    "load_shop_data",
    "normalise_query",
    "shop_data_spec_from_args",
    "write_xc_dir",
]

# Product catalogs' propensity constants (Jain et al.), as for the demo's product data.
PROPENSITY_A = 0.6
PROPENSITY_B = 2.6


@dataclass(frozen=True, eq=False)
class ShopData:
    """The dataset read from a shop's export, each product's columns, and what reading did."""

    dataset: XCDataset
    fields: dict[str, list[str]]
    summary: dict[str, Any]


def load_shop_data(spec: ShopDataSpec) -> ShopData:
    """Read the files `spec` names into an XCDataset (graded weights), with a summary.

    Raises DataError for a file-level problem, or when no product or no training pair is left.
    """
    if spec.interactions is None:
        raise DataError(
            f"{spec.products}: no interactions file given, so there is no training pair "
            '(--interactions, or interactions = "..." in the TOML)'
        )
    products = read_products(spec)
    trn = read_interactions(spec.interactions, spec, products.index, spec.products)
    if not len(trn.split):
        raise DataError(
            f"{spec.interactions}: no training pair left ({trn.report.rows_read} rows read, "
            f"{trn.report.refused} refused; pairs {dict(trn.pairs)})"
        )
    tst: Interactions | None = None
    if spec.test_interactions is not None:
        tst = read_interactions(spec.test_interactions, spec, products.index, spec.products)
    assert spec.name is not None
    dataset = XCDataset(
        name=spec.name,
        label_titles=_one_line(products.fields[spec.title_column]),
        label_ids=products.ids,
        trn=trn.split,
        tst=None if tst is None else tst.split,
        positive_min_weight=spec.positive_min_weight,
        graded=True,
        propensity_a=PROPENSITY_A,
        propensity_b=PROPENSITY_B,
        **_text_fields(spec, products),
    )
    summary = _summary(spec, products, trn, tst)
    dataset.source = summary
    return ShopData(dataset=dataset, fields=products.fields, summary=summary)


def _one_line(values: list[str]) -> list[str]:
    """Each value with its whitespace runs (newlines too) made one space."""
    return [" ".join(value.split()) for value in values]


def _text_fields(spec: ShopDataSpec, products: Products) -> dict[str, Any]:
    """The dataset's `text_fields` and `field_weights` where the label text is more than the
    title or a field has a weight; none where it is the title alone (the XC layout's case)."""
    assert spec.text_fields is not None
    if spec.text_fields == (spec.title_column,) and not spec.field_weights:
        return {}
    return {
        "text_fields": {name: _one_line(products.fields[name]) for name in spec.text_fields},
        "field_weights": dict(spec.field_weights or {}),
    }


def _summary(
    spec: ShopDataSpec, products: Products, trn: Interactions, tst: Interactions | None
) -> dict[str, Any]:
    """The JSON-ready record of a load: the spec, each file's tally, each split's rules."""
    files = {"products": products.report.to_json(), "interactions": trn.report.to_json()}
    summary: dict[str, Any] = {
        "name": spec.name,
        "spec": spec.to_json(),
        "labels": len(products.ids),
        "files": files,
        "trn": trn.summary(),
    }
    if tst is not None:
        files["test_interactions"] = tst.report.to_json()
        summary["tst"] = tst.summary()
        summary["tst_queries_in_trn"] = len(set(tst.split.texts) & set(trn.split.texts))
    return summary
