"""Tests for training.shopdata's readers: formats, refusals, the summary and the aggregation."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from training.data import DataError, is_dev_query
from training.shopdata import ShopData, ShopDataSpec, load_shop_data, normalise_query
from training.shopdata.formats import TableFile

PRODUCTS_CSV = "id,title,brand\nP1,Cordless Drill,Acme\nP2,Claw Hammer,Forge\nP3,Circular Saw,\n"


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    return _write(path, "".join(json.dumps(r) + "\n" for r in rows))


def _load(
    tmp_path: Path, interactions: str, products: str | bytes = PRODUCTS_CSV, **kw: Any
) -> ShopData:
    spec = ShopDataSpec(
        products=_write(tmp_path / "shop" / "products.csv", products),
        interactions=_write(tmp_path / "shop" / "interactions.csv", interactions),
        **kw,
    )
    return load_shop_data(spec)


def _points(data: ShopData) -> dict[str, dict[str, float]]:
    """trn as {query: {product id: weight}}."""
    ids = data.dataset.label_ids
    split = data.dataset.trn
    return {
        text: {ids[j]: float(w) for j, w in zip(labels.tolist(), weights.tolist(), strict=True)}
        for text, labels, weights in zip(split.texts, split.labels, split.weights, strict=True)
    }


# --- formats -------------------------------------------------------------------------------


def test_csv_loads_labels_points_and_fields(tmp_path: Path) -> None:
    data = _load(tmp_path, "query,product_id,clicks\ndrill,P1,2\nsaw,P3,1\ndrill,P2,1\n")
    ds = data.dataset
    assert ds.name == "shop"
    assert ds.label_ids == ["P1", "P2", "P3"]
    assert ds.label_titles == ["Cordless Drill", "Claw Hammer", "Circular Saw"]
    assert ds.trn.texts == ["drill", "saw"]
    assert [lab.tolist() for lab in ds.trn.labels] == [[0, 1], [2]]
    assert all(lab.dtype == np.int64 for lab in ds.trn.labels)
    assert all(w.dtype == np.float32 for w in ds.trn.weights)
    assert ds.graded and ds.positive_min_weight == 2.0
    assert (ds.propensity_a, ds.propensity_b) == (0.6, 2.6)
    assert ds.tst is None
    assert data.fields == {
        "title": ["Cordless Drill", "Claw Hammer", "Circular Saw"],
        "brand": ["Acme", "Forge", ""],
    }


def test_tsv_and_bom(tmp_path: Path) -> None:
    products = _write(tmp_path / "p.tsv", "\ufeffid\ttitle\nP1\tDrill, cordless\n")
    interactions = _write(tmp_path / "i.tsv", "query\tproduct_id\tpurchases\ndrill\tP1\t1\n")
    data = load_shop_data(ShopDataSpec(products=products, interactions=interactions))
    assert data.dataset.label_titles == ["Drill, cordless"]
    assert _points(data) == {"drill": {"P1": 3.0}}
    assert data.summary["files"]["products"]["format"] == "tsv"


def test_jsonl_with_column_mapping_and_nested_attributes(tmp_path: Path) -> None:
    products = _jsonl(
        tmp_path / "catalog" / "items.jsonl",
        [
            {"sku": 101, "name": "Drill", "brand": "Acme", "attributes": {"volts": 20}},
            {"sku": 102, "name": "Hammer", "brand": None, "attributes": ["steel", "16 oz"]},
        ],
    )
    _write(products, products.read_text() + "\n   \n")  # blank lines are skipped
    log = _jsonl(
        tmp_path / "logs.ndjson",
        [
            {"search_term": "Drill", "item": "101", "orders": 1},
            {"search_term": "hammer", "item": 102.0, "orders": 2},
        ],
    )
    spec = ShopDataSpec(
        products=products,
        interactions=log,
        id_column="sku",
        title_column="name",
        text_fields=("name", "brand"),
        query_column="search_term",
        product_column="item",
        signals={"orders": 1.5},
    )
    data = load_shop_data(spec)
    assert data.dataset.name == "catalog"
    assert data.dataset.label_ids == ["101", "102"]
    assert data.dataset.label_titles == ["Drill", "Hammer"]  # what a result shows
    assert data.dataset.label_texts == ["Drill Acme", "Hammer"]  # what the models read
    assert data.dataset.lexical_fields() == {
        "name": (1.0, ["Drill", "Hammer"]),
        "brand": (1.0, ["Acme", ""]),
    }
    assert data.dataset.source["files"]["products"]["rows_read"] == 2
    assert data.fields["attributes"] == ["volts 20", "steel; 16 oz"]
    assert _points(data) == {"drill": {"101": 1.5}, "hammer": {"102": 3.0}}
    assert data.summary["files"]["products"]["rows_read"] == 2


def test_parquet_row_groups_and_locations(tmp_path: Path) -> None:
    products = tmp_path / "products.parquet"
    table = pa.table({"id": ["A", "B", "C"], "title": ["Drill", "Saw", ""]})
    pq.write_table(table, products, row_group_size=2)
    log = tmp_path / "log.parquet"
    pq.write_table(
        pa.table({"query": ["drill", "saw"], "product_id": ["A", "B"], "clicks": [2, 3]}), log
    )
    data = load_shop_data(ShopDataSpec(products=products, interactions=log))
    assert data.dataset.label_ids == ["A", "B"]
    assert _points(data) == {"drill": {"A": 2.0}, "saw": {"B": 3.0}}
    refusals = data.summary["files"]["products"]["first_refusals"]
    assert refusals == [f"{products}: row group 1, row 0: field 'title': missing title"]


def test_csv_line_numbers_count_multiline_records(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.csv", 'id,title\nA,"two\nlines"\nB,Saw\n,NoId\n')
    rows = list(TableFile(path).rows())
    assert [r.location for r in rows] == ["line 2", "line 4", "line 5"]


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("p.xlsx", "x", "unknown file extension '.xlsx'"),
        ("p.csv", "sku,title\nA,B\n", "column 'id' is missing"),
        ("p.jsonl", '{"id": "A", "title": "T"}\n[1, 2]\n', "line 2: expected a JSON object"),
        ("p.jsonl", '{"id": "A", "title": "T"}\n{"id": \n', "line 2: invalid JSON"),
        ("p.jsonl", '{"sku": "A", "title": "T"}\n', "no line has field 'id'"),
        ("p.parquet", "not parquet", "not a readable Parquet file"),
    ],
)
def test_file_level_problems_name_the_file(
    tmp_path: Path, name: str, content: str, expected: str
) -> None:
    path = _write(tmp_path / name, content)
    with pytest.raises(DataError) as e:
        load_shop_data(ShopDataSpec(products=path, interactions=tmp_path / "i.csv"))
    assert str(path) in str(e.value)
    assert expected in str(e.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.csv: no such file"):
        TableFile(tmp_path / "nope.csv")


# --- refusals ------------------------------------------------------------------------------


def test_bad_encoding_refuses_only_its_row(tmp_path: Path) -> None:
    products = b"id,title\nP1,Drill\nP2,Saw \xff blade\nP3,Hammer\n"
    data = _load(tmp_path, "query,product_id,clicks\ndrill,P1,1\n", products=products)
    assert data.dataset.label_ids == ["P1", "P3"]
    (message,) = data.summary["files"]["products"]["first_refusals"]
    assert message.endswith(
        "products.csv: line 3: field 'title': not valid UTF-8 (b'Saw \\xff blade')"
    )


def test_bad_encoding_in_jsonl_line(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "p.jsonl", b'{"id": "A", "title": "T"}\n{"id": "B", "title": "\xff"}\n'
    )
    rows = list(TableFile(path).rows())
    assert rows[0].refusal is None
    assert rows[1].refusal is not None and rows[1].location == "line 2"


def test_missing_id_and_title(tmp_path: Path) -> None:
    products = "sku,title\nA,Drill\n,Saw\nC,\n"
    data = _load(tmp_path, "query,product_id,clicks\nq,A,1\n", products=products, id_column="sku")
    messages = data.summary["files"]["products"]["first_refusals"]
    assert messages[0].endswith("products.csv: line 3: field 'sku': missing id")
    assert messages[1].endswith("products.csv: line 4: field 'title': missing title")


def test_duplicates_deduplicated_or_refused_naming_both_lines(tmp_path: Path) -> None:
    products = "id,title,price\nA,Drill,10\nB,Saw,5\nA,Drill,12\nA,Drill Kit,10\n"
    data = _load(tmp_path, "query,product_id,clicks\nq,A,1\n", products=products)
    report = data.summary["files"]["products"]
    assert data.dataset.label_ids == ["A", "B"]
    assert data.fields["price"] == ["10", "5"]  # the first row of an exact duplicate is kept
    assert (report["rows_read"], report["deduplicated"], report["refused"]) == (4, 1, 1)
    (message,) = report["first_refusals"]
    assert message.endswith(
        "products.csv: line 5: field 'title': duplicate id 'A' with a different title than on "
        "line 2 ('Drill Kit' here, 'Drill' there)"
    )


@pytest.mark.parametrize(
    ("row", "reason", "message"),
    [
        (
            "q,P9,1",
            "unknown product",
            "field 'product_id': unknown product 'P9' (not in products.csv)",
        ),
        ("q,P1,many", "not a number", "field 'clicks': count is not a number ('many')"),
        ("q,P1,-2", "negative count", "field 'clicks': negative count (-2) (must be >= 0)"),
        ("q,P1,nan", "not a number", "field 'clicks': count is not finite ('nan')"),
        (" ,P1,1", "empty query", "field 'query': empty query"),
        ("q,,1", "missing product id", "field 'product_id': missing product id"),
        ("q,P1", "wrong number of fields", "has 2 fields (the header has 3)"),
    ],
)
def test_interaction_refusals(tmp_path: Path, row: str, reason: str, message: str) -> None:
    data = _load(tmp_path, f"query,product_id,clicks\nok,P1,1\n{row}\n")
    report = data.summary["files"]["interactions"]
    assert report["refusals"] == {reason: 1}
    assert report["first_refusals"] == [
        f"{tmp_path / 'shop' / 'interactions.csv'}: line 3: {message}"
    ]
    assert _points(data) == {"ok": {"P1": 1.0}}


def test_summary_counts_hashes_and_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = "".join(f"q{i},P9,1\n" for i in range(25))
    with caplog.at_level(logging.WARNING, logger="training.shopdata"):
        data = _load(tmp_path, f"query,product_id,clicks\nq,P1,1\n{rows}q,P2,x\n")
    report = data.summary["files"]["interactions"]
    path = tmp_path / "shop" / "interactions.csv"
    assert report["path"] == str(path)
    assert report["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (report["rows_read"], report["refused"]) == (27, 26)
    assert report["refusals"] == {"unknown product": 25, "not a number": 1}
    assert len(report["first_refusals"]) == 20
    assert len([r for r in caplog.records if r.name == "training.shopdata"]) == 26
    assert data.summary["spec"]["min_count"] == 1.0
    assert data.summary["labels"] == 3
    json.dumps(data.summary)  # JSON-ready


def test_nothing_left_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no product left"):
        _load(tmp_path, "query,product_id,clicks\n", products="id,title\n,x\n")
    with pytest.raises(DataError, match="no training pair left"):
        _load(tmp_path, "query,product_id,clicks\nq,P1,0\n")
    with pytest.raises(DataError, match="none of the signal columns"):
        _load(tmp_path, "query,product_id,views\nq,P1,4\n")
    with pytest.raises(DataError, match="column 'orders' is missing"):
        _load(tmp_path, "query,product_id,clicks\nq,P1,4\n", signals={"orders": 1})


# --- aggregation ---------------------------------------------------------------------------


def test_weights_sum_signals_over_rows_and_cap_at_max_grade(tmp_path: Path) -> None:
    log = (
        "query,product_id,purchases,add_to_carts,clicks\n"
        "drill,P1,0,0,1\ndrill,P2,0,1,0\ndrill,P1,0,0,1\nsaw,P3,1,1,0\nsaw,P2,0,0,0.5\n"
    )
    data = _load(tmp_path, log)
    # saw/P2 has half an event, under min_count 1
    assert _points(data) == {"drill": {"P1": 2.0, "P2": 2.0}, "saw": {"P3": 3.0}}
    capped = _load(tmp_path, log, max_grade=10.0, min_count=0.5)
    assert _points(capped)["saw"] == {"P3": 5.0, "P2": 0.5}
    assert data.summary["trn"]["signals_used"] == ["purchases", "add_to_carts", "clicks"]


def test_min_count_drops_pairs_and_counts_them(tmp_path: Path) -> None:
    log = "query,product_id,clicks\ndrill,P1,1\ndrill,P1,1\ndrill,P2,1\nsaw,P3,1\n"
    data = _load(tmp_path, log, min_count=2)
    assert _points(data) == {"drill": {"P1": 2.0}}
    assert data.summary["trn"]["pairs"]["dropped_min_count"] == 2
    assert data.summary["trn"]["queries"]["dropped_no_pair_left"] == 1


def test_grades_override_the_signal_score(tmp_path: Path) -> None:
    log = "query,product_id,clicks,grade\ndrill,P1,9,1\ndrill,P1,0,2\ndrill,P2,5,\nsaw,P3,0,0\n"
    data = _load(tmp_path, log, grade_column="grade", min_count=1)
    # P1: mean grade 1.5 despite 9 clicks; P2: no grade, score 5 capped at 3; P3: graded 0,
    # kept although its event count (0) is below min_count
    assert _points(data) == {"drill": {"P1": 1.5, "P2": 3.0}, "saw": {"P3": 0.0}}


def test_single_click_keep_or_drop(tmp_path: Path) -> None:
    log = (
        "query,product_id,clicks,purchases,grade\n"
        "once,P1,1,0,\n"  # a single click: dropped by "drop"
        "twice,P1,2,0,\n"  # two clicks
        "two rows,P1,1,0,\ntwo rows,P2,1,0,\n"
        "bought,P3,1,1,\n"  # another signal
        "graded,P2,1,0,3\n"  # a grade
    )
    keep = _load(tmp_path, log, grade_column="grade")
    assert "once" in _points(keep)
    drop = _load(tmp_path, log, grade_column="grade", single_click="drop")
    assert set(_points(drop)) == {"twice", "two rows", "bought", "graded"}
    assert drop.summary["trn"]["queries"]["dropped_single_click"] == 1
    assert drop.summary["trn"]["pairs"]["dropped_single_click"] == 1


def test_normalisation_merges_queries_and_drives_the_dev_split(tmp_path: Path) -> None:
    assert normalise_query("  Cordless\tDRILL ") == "cordless drill"
    assert normalise_query("Ｃｏｒｄｌｅｓｓ ＤＲＩＬＬ") == "cordless drill"  # NFKC
    data = _load(tmp_path, "query,product_id,clicks\n  Cordless DRILL ,P1,1\ncordless drill,P1,1\n")
    assert _points(data) == {"cordless drill": {"P1": 2.0}}
    queries = [f"query {i}" for i in range(40)]
    log = "query,product_id,clicks\n" + "".join(f"  {q.upper()} ,P1,1\n" for q in queries)
    ds = _load(tmp_path, log).dataset
    assert ds.dev_mask().tolist() == [is_dev_query(q) for q in queries]
    assert 0 < sum(ds.dev_mask()) < 40


def test_test_interactions_form_the_tst_split(tmp_path: Path) -> None:
    products = _write(tmp_path / "products.csv", PRODUCTS_CSV)
    trn = _write(tmp_path / "trn.csv", "query,product_id,clicks\ndrill,P1,3\n")
    tst = _write(
        tmp_path / "tst.jsonl",
        '{"query": "Saw", "product_id": "P3", "clicks": 1}\n'
        '{"query": "drill", "product_id": "P1", "clicks": 2}\n',
    )
    data = load_shop_data(ShopDataSpec(products=products, interactions=trn, test_interactions=tst))
    assert data.dataset.tst is not None
    assert data.dataset.tst.texts == ["saw", "drill"]
    assert data.summary["files"]["test_interactions"]["format"] == "jsonl"
    assert data.summary["tst_queries_in_trn"] == 1
