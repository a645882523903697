"""A shop's products file read into the label space: ids and every column, per label.

Each row is one product: a non-empty id and title are required, and a row without them is
refused on its own. The same product exported twice (same id, same text fields) is kept once
and counted; the same id with different text is refused, naming both lines, because which of
the two the shop means cannot be guessed. Labels keep the order of first appearance.

The text fields come first, then every other column, per label (brand, category, attributes
rendered as "key value; key value"); `training.shopdata` makes them the dataset's titles and
text fields, and `XCDataset.label_texts` joins the text fields into what the models read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from training.dataset import DataError
from training.shopdata.formats import Refusal, RowRefused, TableFile
from training.shopdata.report import FileReport
from training.shopdata.spec import ShopDataSpec
from training.shopdata.values import cell_text


@dataclass
class Products:
    """The label space read from a products file, and the tally of reading it."""

    ids: list[str]
    fields: dict[str, list[str]]
    report: FileReport
    index: dict[str, int] = field(default_factory=dict)


@dataclass
class _Seen:
    """Where an id was first read, and its text-field values there."""

    location: str
    key: tuple[str, ...]


def _parse(values: dict[str, Any], spec: ShopDataSpec) -> tuple[str, dict[str, str]]:
    """A row's id and its rendered values; refuses a row without an id or a title."""
    rendered = {name: cell_text(value) for name, value in values.items()}
    product_id = rendered.get(spec.id_column, "")
    if not product_id:
        raise RowRefused(Refusal("missing id", "missing id", spec.id_column))
    if not rendered.get(spec.title_column, ""):
        raise RowRefused(Refusal("missing title", "missing title", spec.title_column))
    return product_id, rendered


def _duplicate(product_id: str, seen: _Seen, key: tuple[str, ...], spec: ShopDataSpec) -> Refusal:
    """The refusal of an id already read with different text: names the field and both lines."""
    assert spec.text_fields is not None
    for name, before, now in zip(spec.text_fields, seen.key, key, strict=True):
        if before != now:
            detail = (
                f"duplicate id {product_id!r} with a different {name} than on {seen.location} "
                f"({now!r} here, {before!r} there)"
            )
            return Refusal("duplicate id", detail, name)
    raise AssertionError("called for an exact duplicate")


def read_products(spec: ShopDataSpec) -> Products:
    """Read `spec.products` into label ids and per-label column values.

    Raises DataError for a file-level problem or when no product is left.
    """
    assert spec.text_fields is not None
    table = TableFile(spec.products)
    report = FileReport(table)
    seen: dict[str, _Seen] = {}
    rows: list[dict[str, str]] = []
    products = Products(ids=[], fields={}, report=report)
    for row in table.rows(required=(spec.id_column, *spec.text_fields)):
        report.rows_read += 1
        try:
            if row.refusal is not None:
                raise RowRefused(row.refusal)
            product_id, rendered = _parse(row.values, spec)
            key = tuple(rendered.get(name, "") for name in spec.text_fields)
            if product_id in seen:
                if seen[product_id].key != key:
                    raise RowRefused(_duplicate(product_id, seen[product_id], key, spec))
                report.deduplicated += 1
                continue
        except RowRefused as refused:
            report.refuse(row.location, refused.refusal)
            continue
        seen[product_id] = _Seen(row.location, key)
        products.index[product_id] = len(products.ids)
        products.ids.append(product_id)
        rows.append(rendered)
    if not products.ids:
        raise DataError(
            f"{table.path}: no product left ({report.rows_read} rows read, "
            f"{report.refused} refused)"
        )
    products.fields = _columns(rows, table.columns, spec)
    return products


def _columns(
    rows: list[dict[str, str]], columns: list[str], spec: ShopDataSpec
) -> dict[str, list[str]]:
    """Per column (text fields first, then the file's others; not the id): a value per label."""
    assert spec.text_fields is not None
    names = list(spec.text_fields)
    names += [c for c in columns if c not in names and c != spec.id_column]
    return {name: [row.get(name, "") for row in rows] for name in names}
