"""A shop's export trains the same bundle as the XC layout it exports to (issue 24).

The demo catalog is written both ways (`training.demo.write_shop_files`): its products and
interaction logs must rebuild exactly the XC files, `export-xc` must write them back byte for
byte, and ASTRA trained from the shop files by flags must equal ASTRA trained from the exported
XC files (same classifier vectors), with the manifest saying what data made it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from service.bundle import read_manifest
from tests.support.configs import TINY
from training.__main__ import main
from training.data import load_dataset, read_xc_dir

XC_FILES = ("lbl_X.txt", "lbl_uid.txt", "trn_X.txt", "trn_X_Y.txt", "tst_X.txt", "tst_X_Y.txt")
TINY_FLAGS = [f"--{key.replace('_', '-')}={value}" for key, value in TINY.items()]


def _same_dataset(a, b) -> None:
    assert (a.name, a.label_titles, a.label_ids) == (b.name, b.label_titles, b.label_ids)
    assert (a.positive_min_weight, a.graded, a.propensity_a) == (
        b.positive_min_weight,
        b.graded,
        b.propensity_a,
    )
    for mine, theirs in ((a.trn, b.trn), (a.tst, b.tst)):
        assert mine.texts == theirs.texts
        for x, y in zip(mine.labels, theirs.labels, strict=True):
            np.testing.assert_array_equal(x, y)
        for x, y in zip(mine.weights, theirs.weights, strict=True):
            np.testing.assert_array_equal(x, y)


def test_demo_shop_files_rebuild_the_xc_files(demo_data: Path, tmp_path: Path) -> None:
    _same_dataset(load_dataset(demo_data / "shopdata.toml"), read_xc_dir(demo_data))
    out = tmp_path / "xc"
    assert main(["export-xc", "--data", str(demo_data / "shopdata.toml"), "--out", str(out)]) == 0
    for name in XC_FILES:
        assert (out / name).read_bytes() == (demo_data / name).read_bytes(), name


@pytest.mark.slow  # trains two bundles
def test_shop_flags_train_the_bundle_the_exported_xc_trains(
    demo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shop = [
        *("--products", str(demo_data / "products.csv")),
        *("--interactions", str(demo_data / "interactions.csv")),
        *("--test-interactions", str(demo_data / "test_interactions.csv")),
        *("--dataset-name", "demo"),
    ]
    xc = tmp_path / "xc"
    assert main(["export-xc", *shop, "--out", str(xc)]) == 0
    from_shop, from_xc = tmp_path / "from-shop", tmp_path / "from-xc"
    capsys.readouterr()
    assert main(["train", *shop, "--out", str(from_shop), *TINY_FLAGS]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["data_summary"]["files"]["products"]["rows_read"] == len(
        (demo_data / "lbl_X.txt").read_text().splitlines()
    )
    assert main(["train", "--data", str(xc), "--out", str(from_xc), *TINY_FLAGS]) == 0
    for name in ("classifiers.npy", "labels.txt", "label_ids.txt", "lexical.npz"):
        assert (from_shop / name).read_bytes() == (from_xc / name).read_bytes(), name
    training = read_manifest(from_shop).training
    assert training["data_path"]["products"] == str(demo_data / "products.csv")
    summary = training["data_summary"]
    assert summary["files"]["interactions"]["rows_read"] == sum(
        len(row.split()) for row in (demo_data / "trn_X_Y.txt").read_text().splitlines()[1:]
    )
    assert summary["files"]["products"]["refused"] == 0
    assert "data_summary" not in read_manifest(from_xc).training
    # Every step that reads data takes the same flags, and the recorded spec loads again.
    assert main(["evaluate", "--bundle", str(from_shop), *shop]) == 0
    assert load_dataset(training["data_path"]).trn.texts == read_xc_dir(xc).trn.texts
    json.dumps(training)  # the manifest's record stays plain JSON


@pytest.mark.slow  # trains a bundle
def test_product_fields_make_the_label_text_and_weigh_in_bm25(
    demo_data: Path, tmp_path: Path
) -> None:
    from service.search.engine import SearchEngine

    out = tmp_path / "fields"
    config = str(demo_data / "shopdata.toml")
    fields = ["--text-fields", "title,brand,category", "--field-weight", "category=0.5"]
    assert main(["train", "--data-config", config, *fields, "--out", str(out), *TINY_FLAGS]) == 0
    manifest = read_manifest(out)
    assert manifest.astra.lexical.fields == {"title": 1.0, "brand": 1.0, "category": 0.5}
    dataset = load_dataset(demo_data)
    assert (out / "labels.txt").read_text().splitlines() == dataset.label_titles  # shown
    # The department is in no title, yet BM25 finds the products of that category.
    engine = SearchEngine.load(out, lexical_weight=1.0)
    (matches,) = engine.lexical.match(["plumbing"])
    assert len(matches.rows) == 1
    assert not any("plumbing" in title.lower() for title in dataset.label_titles)
    _, labels = engine.rank(["plumbing"], 10)
    categories = {
        row.split(",")[0]: row.split(",")[3]
        for row in (demo_data / "products.csv").read_text().splitlines()[1:]
    }
    top = [dataset.label_ids[j] for j in labels[0] if j >= 0]
    assert top and all(categories[product] == "plumbing" for product in top[:5])
    # Re-indexing needs the fields, which the bundle does not hold: refused without the data.
    assert main(["lexical", "--bundle", str(out)]) == 2
    assert main(["lexical", "--bundle", str(out), "--data-config", config, *fields]) == 0
    assert read_manifest(out).astra.lexical.fields == manifest.astra.lexical.fields
