"""Tests for training.shopdata's settings (TOML, flags), load_dataset's dispatch to a shop's
export, and writing a dataset back out in the XC text layout."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from training.data import DataError, Split, XCDataset, load_dataset, read_xc_dir
from training.shopdata import (
    ShopDataSpec,
    add_shop_data_arguments,
    load_shop_data,
    shop_data_spec_from_args,
    write_xc_dir,
)
from training.shopdata.xc_export import format_weight

PRODUCTS = "id,title,brand\nP1,Cordless Drill,Acme\nP2,Claw Hammer,Forge\nP3,Circular Saw,\n"
LOG = "query,product_id,purchases,clicks\ndrill,P1,1,2\nsaw,P3,0,1\nhammer,P2,0,2\n"
TEST_LOG = "query,product_id,clicks,purchases\nmitre saw,P3,2,0\n"


def _shop(tmp_path: Path, toml: str, name: str = "shopdata.toml") -> Path:
    """A shop export under tmp_path/acme: data/ with the files, the TOML at the top."""
    data = tmp_path / "acme" / "data"
    data.mkdir(parents=True)
    (data / "products.csv").write_text(PRODUCTS)
    (data / "log.csv").write_text(LOG)
    (data / "test.csv").write_text(TEST_LOG)
    (tmp_path / "acme" / name).write_text(toml)
    return tmp_path / "acme" / name


TOML = """
products = "data/products.csv"
interactions = "data/log.csv"
test_interactions = "data/test.csv"
text_fields = ["title", "brand"]
min_count = 2
single_click = "drop"
[signals]
purchases = 4
clicks = 0.5
"""


def test_spec_defaults_and_validation(tmp_path: Path) -> None:
    spec = ShopDataSpec(products=tmp_path / "shop" / "p.csv")
    assert spec.text_fields == ("title",)
    assert dict(spec.signal_weights) == {"purchases": 3.0, "add_to_carts": 2.0, "clicks": 1.0}
    assert spec.click_signals == ("clicks",)
    assert spec.name == "shop"
    assert ShopDataSpec(products=Path("p.csv"), title_column="name").text_fields == ("name",)
    with pytest.raises(DataError, match="must include the title column 'title'"):
        ShopDataSpec(products=Path("p.csv"), text_fields=("brand",))
    with pytest.raises(DataError, match="single_click must be one of keep, drop"):
        ShopDataSpec(products=Path("p.csv"), single_click="maybe")
    with pytest.raises(DataError, match="min_count must be >= 0"):
        ShopDataSpec(products=Path("p.csv"), min_count=-1)
    with pytest.raises(DataError, match="weight of 'clicks' must be a number >= 0"):
        ShopDataSpec(products=Path("p.csv"), signals={"clicks": -1})
    fielded = ShopDataSpec(
        products=Path("p.csv"), text_fields=("title", "brand"), field_weights={"brand": 0.5}
    )
    assert dict(fielded.field_weights) == {"brand": 0.5}
    assert fielded.to_json()["field_weights"] == {"brand": 0.5}
    assert ShopDataSpec.from_json(fielded.to_json()) == fielded
    with pytest.raises(DataError, match="'category' is not one of text_fields"):
        ShopDataSpec(products=Path("p.csv"), field_weights={"category": 2})
    with pytest.raises(DataError, match="'title' must be a number > 0"):
        ShopDataSpec(products=Path("p.csv"), field_weights={"title": 0})


def test_toml_resolves_paths_against_its_directory(tmp_path: Path) -> None:
    path = _shop(tmp_path, TOML, name="shop.toml")
    spec = ShopDataSpec.from_toml(path)
    assert spec.products == (tmp_path / "acme" / "data" / "products.csv").resolve()
    assert spec.text_fields == ("title", "brand")
    assert dict(spec.signal_weights) == {"purchases": 4.0, "clicks": 0.5}
    assert (spec.min_count, spec.single_click, spec.name) == (2.0, "drop", "data")
    record = spec.to_json()
    assert record["signals"] == {"purchases": 4.0, "clicks": 0.5} and record["signals_explicit"]
    assert record["products"] == str(spec.products)
    json.dumps(record)


def test_toml_refuses_an_unknown_key_naming_the_valid_ones(tmp_path: Path) -> None:
    path = _shop(tmp_path, 'products = "data/products.csv"\nmin_clicks = 2\n')
    with pytest.raises(
        DataError,
        match=r"shopdata\.toml: unknown key 'min_clicks' \(valid keys: products, interactions",
    ):
        ShopDataSpec.from_toml(path)
    path.write_text('products = "data/products.csv"\nmin_count = -3\n')
    with pytest.raises(DataError, match=r"shopdata\.toml: min_count must be >= 0"):
        ShopDataSpec.from_toml(path)
    path.write_text('products = "data/products.csv"\nsignals = "clicks"\n')
    with pytest.raises(DataError, match="'signals' must be a table"):
        ShopDataSpec.from_toml(path)
    path.write_text('interactions = "data/log.csv"\n')
    with pytest.raises(DataError, match=r"shopdata\.toml: the products file is required"):
        ShopDataSpec.from_toml(path)


def test_load_dataset_on_a_toml_file_and_on_a_directory(tmp_path: Path) -> None:
    path = _shop(tmp_path, TOML)
    for target in (path, path.parent):
        ds = load_dataset(target)
        # drill: purchases 1 x 4 + clicks 2 x 0.5 = 5, capped at 3; saw: 1 click, dropped by
        # min_count 2 (and by single_click); hammer: 2 clicks x 0.5 = 1
        assert ds.trn.texts == ["drill", "hammer"]
        assert [w.tolist() for w in ds.trn.weights] == [[3.0], [1.0]]
        assert ds.label_texts == ["Cordless Drill Acme", "Claw Hammer Forge", "Circular Saw"]
        assert ds.tst is not None and ds.tst.texts == ["mitre saw"]
    with pytest.raises(DataError, match=r"no lbl_X\.txt .* and no shopdata\.toml"):
        load_dataset(tmp_path)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data")
    add_shop_data_arguments(parser)
    return parser


def test_flags_override_the_toml(tmp_path: Path) -> None:
    path = _shop(tmp_path, TOML)
    args = _parser().parse_args(
        [
            "--data-config",
            str(path),
            "--min-count",
            "1",
            "--signal",
            "clicks=1",
            "--signal",
            "purchases=2",
            "--text-fields",
            "title",
            "--single-click",
            "keep",
            "--data",
            "x",
        ]
    )
    spec = shop_data_spec_from_args(args)
    assert spec is not None
    assert spec.interactions == (path.parent / "data" / "log.csv").resolve()
    assert (spec.min_count, spec.single_click, spec.text_fields) == (1.0, "keep", ("title",))
    assert dict(spec.signal_weights) == {"clicks": 1.0, "purchases": 2.0}
    assert shop_data_spec_from_args(_parser().parse_args(["--data", "x"])) is None
    flags = _parser().parse_args(
        [
            "--products",
            "p.csv",
            "--interactions",
            "i.jsonl",
            "--id-column",
            "sku",
            "--title-column",
            "name",
            "--query-column",
            "q",
            "--product-column",
            "item",
            "--grade-column",
            "g",
            "--max-grade",
            "4",
            "--positive-min-weight",
            "1.5",
        ]
    )
    spec = shop_data_spec_from_args(flags)
    assert spec == ShopDataSpec(
        products=Path("p.csv"),
        interactions=Path("i.jsonl"),
        id_column="sku",
        title_column="name",
        query_column="q",
        product_column="item",
        grade_column="g",
        max_grade=4,
        positive_min_weight=1.5,
    )
    with pytest.raises(SystemExit):
        _parser().parse_args(["--signal", "clicks"])


def test_write_xc_dir_round_trip(tmp_path: Path) -> None:
    data = load_shop_data(ShopDataSpec.from_toml(_shop(tmp_path, TOML)))
    out = write_xc_dir(data.dataset, tmp_path / "xc", extra_meta={"source": "shop"})
    back = read_xc_dir(out)
    ds = data.dataset
    # The layout has one text per label: the one the models read (the fields joined).
    assert (back.name, back.label_titles, back.label_ids) == (
        ds.name,
        ds.label_texts,
        ds.label_ids,
    )
    assert (back.graded, back.positive_min_weight) == (True, ds.positive_min_weight)
    assert (back.propensity_a, back.propensity_b) == (ds.propensity_a, ds.propensity_b)
    for mine, theirs in ((ds.trn, back.trn), (ds.tst, back.tst)):
        assert mine is not None and theirs is not None
        assert theirs.texts == mine.texts
        assert [a.tolist() for a in theirs.labels] == [a.tolist() for a in mine.labels]
        assert [a.tolist() for a in theirs.weights] == [a.tolist() for a in mine.weights]
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["source"] == "shop" and meta["trn_points"] == 2 and meta["tst_points"] == 1
    assert (out / "trn_X_Y.txt").read_text() == "2 3\n0:3\n1:1\n"


def test_write_xc_dir_weights_and_line_breaks(tmp_path: Path) -> None:
    assert [format_weight(w) for w in (3.0, 2.5, np.float32(2.33), 0.0)] == [
        "3",
        "2.5",
        "2.33",
        "0",
    ]
    split = Split(
        texts=["q"], labels=[np.array([1, 0])], weights=[np.array([2.33, 1.0], np.float32)]
    )
    ds = XCDataset(name="t", label_titles=["a", "b"], label_ids=["x", "y"], trn=split, tst=None)
    out = write_xc_dir(ds, tmp_path / "xc")
    assert (out / "trn_X_Y.txt").read_text() == "1 2\n0:1 1:2.33\n"
    assert read_xc_dir(out).trn.weights[0].tolist() == [1.0, np.float32(2.33)]
    bad = XCDataset(name="t", label_titles=["a\nb", "c"], label_ids=["x", "y"], trn=split, tst=None)
    with pytest.raises(DataError, match="label text 0 contains a line break"):
        write_xc_dir(bad, tmp_path / "bad")
    split.texts[0] = "two\rlines"
    with pytest.raises(DataError, match="trn query 0 contains a line break"):
        write_xc_dir(ds, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
