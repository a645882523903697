"""Tests for training.data: the XC-layout and fastText readers, splits and validation."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest

from tests.support.paths import (
    COOKING,
    COOKING_FASTTEXT,
    HOMEDEPOT,
    requires_shared_data,
)
from training.data import (
    DataError,
    Split,
    XCDataset,
    is_dev_query,
    load_dataset,
    read_fasttext,
    read_xc_dir,
)


def _write(directory: Path, files: dict[str, str | bytes]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        data = content if isinstance(content, bytes) else content.encode("utf-8")
        (directory / name).write_bytes(data)
    return directory


BASIC: dict[str, str | bytes] = {
    "lbl_X.txt": "Drill\nHammer\nSaw\n",
    "trn_X.txt": "cordless drill\nhammer\nnothing here\n",
    "trn_X_Y.txt": "3 3\n0:2 2:0.5\n1\n\n",
}


def _xc(tmp_path: Path, **overrides: str | bytes | None) -> Path:
    """A small valid XC dir, with files replaced (or removed when None) by `overrides`."""
    files = dict(BASIC)
    for name, content in overrides.items():
        key = name.replace("__", ".")
        if content is None:
            files.pop(key, None)
        else:
            files[key] = content
    return _write(tmp_path / "mini", files)


def _error(path: Path) -> str:
    with pytest.raises(DataError) as info:
        read_xc_dir(path)
    return str(info.value)


# ---------------------------------------------------------------- XC layout, valid input


def test_minimal_dir_with_defaults(tmp_path: Path) -> None:
    ds = read_xc_dir(_xc(tmp_path))
    assert ds.name == "mini"
    assert ds.label_titles == ["Drill", "Hammer", "Saw"]
    assert ds.label_ids == ["0", "1", "2"]
    assert ds.num_labels == 3
    assert ds.tst is None
    assert (ds.positive_min_weight, ds.graded) == (1.0, False)
    assert (ds.propensity_a, ds.propensity_b) == (0.55, 1.5)
    assert ds.trn.texts == ["cordless drill", "hammer", "nothing here"]
    assert [lab.tolist() for lab in ds.trn.labels] == [[0, 2], [1], []]
    assert [w.tolist() for w in ds.trn.weights] == [[2.0, 0.5], [1.0], []]
    assert all(lab.dtype == np.int64 for lab in ds.trn.labels)
    assert all(w.dtype == np.float32 for w in ds.trn.weights)
    # 0.5 is listed but below the default threshold of 1.
    assert [p.tolist() for p in ds.trn.positives(ds.positive_min_weight)] == [[0], [1], []]


def test_full_dir_with_ids_test_split_and_metadata(tmp_path: Path) -> None:
    meta = {"name": "tiny", "positive_min_weight": 2, "graded": True, "propensity": {"A": 0.6}}
    path = _xc(
        tmp_path,
        lbl_uid__txt="P-1\nP-2\nP-3\n",
        tst_X__txt="saw blade\n",
        tst_X_Y__txt="1 3\n2:3 1:1\n",
        dataset__json=json.dumps(meta),
    )
    ds = read_xc_dir(path)
    assert ds.name == "tiny"
    assert ds.label_ids == ["P-1", "P-2", "P-3"]
    assert ds.positive_min_weight == 2.0
    assert ds.graded is True
    assert (ds.propensity_a, ds.propensity_b) == (0.6, 1.5)  # B keeps its default
    assert ds.tst is not None
    assert ds.tst.texts == ["saw blade"]
    assert ds.split("tst") is ds.tst
    assert ds.tst.positives(2.0)[0].tolist() == [2]
    assert ds.tst.positive_gains(2.0, graded=True)[0].tolist() == [3.0]
    assert load_dataset(path).name == "tiny"


def test_crlf_missing_final_newline_and_unicode(tmp_path: Path) -> None:
    path = _xc(
        tmp_path,
        lbl_X__txt="Perceuse \u00e9lectrique\r\nMarteau\u2028 (2-Pack)\r\nScie",
        trn_X__txt="perceuse\r\nmarteau\u00a0x\r\n\r\n",
        trn_X_Y__txt="3 3\r\n0:1\r\n1:1\r\n2:1",
    )
    ds = read_xc_dir(path)
    # Only "\n" splits lines: U+2028 stays inside the label text; "\r" endings are dropped.
    assert ds.label_titles == ["Perceuse \u00e9lectrique", "Marteau\u2028 (2-Pack)", "Scie"]
    assert ds.trn.texts == ["perceuse", "marteau\u00a0x", ""]
    assert [lab.tolist() for lab in ds.trn.labels] == [[0], [1], [2]]


def test_threshold_compares_in_weight_precision(tmp_path: Path) -> None:
    # Weights are float32; float32(2.33) < 2.33 as a float64, yet "2.33" must count at 2.33.
    path = _xc(tmp_path, trn_X_Y__txt="3 3\n0:2.33 1:2.32 2:3\n1:2.34\n0:1e0\n")
    ds = read_xc_dir(path)
    assert [p.tolist() for p in ds.trn.positives(2.33)] == [[0, 2], [1], []]
    gains = ds.trn.positive_gains(2.33, graded=True)
    assert gains[0] == pytest.approx([2.33, 3.0])
    assert gains[1] == pytest.approx([2.34])
    binary = ds.trn.positive_gains(2.33, graded=False)
    assert [g.tolist() for g in binary] == [[1.0, 1.0], [1.0], []]
    assert all(g.dtype == np.float32 for g in binary)


def test_subset_and_label_frequencies(tmp_path: Path) -> None:
    ds = read_xc_dir(_xc(tmp_path, trn_X_Y__txt="3 3\n0:2 2:2\n0:1 1:0.5\n2\n"))
    sub = ds.trn.subset([2, 0])
    assert isinstance(sub, Split)
    assert len(sub) == 2
    assert sub.texts == ["nothing here", "cordless drill"]
    assert [lab.tolist() for lab in sub.labels] == [[2], [0, 2]]
    masked = ds.trn.subset(np.array([False, True, False]))
    assert masked.texts == ["hammer"]
    assert len(ds.trn.subset([])) == 0
    # Positives at threshold 1: label 0 twice, label 2 twice, label 1 never (weight 0.5).
    freq = ds.label_frequencies(ds.trn)
    assert freq.dtype == np.int64
    assert freq.tolist() == [2, 0, 2]
    assert ds.label_frequencies(sub).tolist() == [1, 0, 2]


def test_split_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError):
        Split(texts=["a", "b"], labels=[np.zeros(0, np.int64)], weights=[np.zeros(0, np.float32)])


# ---------------------------------------------------------------- dev split


def test_dev_rule_on_known_strings() -> None:
    queries = [f"query {i}" for i in range(400)] + ["", "cordless drill", "caf\u00e9 table"]
    for q in queries:
        expected = int.from_bytes(hashlib.sha1(q.encode("utf-8")).digest(), "big") % 8 == 0
        assert is_dev_query(q) == expected, q
    dev = sum(is_dev_query(q) for q in queries)
    assert 0 < dev < len(queries)


def test_named_splits_partition_trn(tmp_path: Path) -> None:
    texts = [f"query {i}" for i in range(64)]
    dev_texts = [t for t in texts if is_dev_query(t)]
    assert 0 < len(dev_texts) < len(texts)
    path = _xc(
        tmp_path,
        trn_X__txt="".join(t + "\n" for t in texts),
        trn_X_Y__txt="64 3\n" + "".join(f"{i % 3}\n" for i in range(64)),
    )
    ds = read_xc_dir(path)
    assert ds.split("trn") is ds.trn
    assert ds.split("dev").texts == dev_texts
    assert ds.split("train").texts == [t for t in texts if not is_dev_query(t)]
    dev_labels = [lab.tolist() for lab in ds.split("dev").labels]
    assert dev_labels == [[int(t.split()[1]) % 3] for t in dev_texts]
    with pytest.raises(DataError, match="no tst"):
        ds.split("tst")
    with pytest.raises(DataError, match=r"trn.*train.*dev.*tst"):
        ds.split("valid")


def test_the_halves_of_train_partition_it_by_the_next_bit_of_the_hash(tmp_path: Path) -> None:
    texts = [f"query {i}" for i in range(200)]
    path = _xc(
        tmp_path,
        trn_X__txt="".join(t + "\n" for t in texts),
        trn_X_Y__txt="200 3\n" + "".join(f"{i % 3}\n" for i in range(200)),
    )
    ds = read_xc_dir(path)
    a, b = ds.split("train-a").texts, ds.split("train-b").texts
    assert 0 < len(a) < len(ds.split("train")) and not set(a) & set(b)
    assert sorted(a + b) == sorted(ds.split("train").texts)
    for text in ds.split("train").texts:
        digest = int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest(), "big")
        assert (text in a) == ((digest // 8) % 2 == 0), text
    # a reordered file cuts the same halves
    shuffled = texts[::-1]
    again = read_xc_dir(
        _xc(
            tmp_path / "again",
            trn_X__txt="".join(t + "\n" for t in shuffled),
            trn_X_Y__txt="200 3\n" + "".join("0\n" for _ in shuffled),
        )
    )
    assert sorted(again.split("train-a").texts) == sorted(a)


# ---------------------------------------------------------------- XC layout, errors


def test_error_header_count_vs_lines(tmp_path: Path) -> None:
    message = _error(_xc(tmp_path, trn_X_Y__txt="4 3\n0\n1\n2\n"))
    assert "trn_X_Y.txt" in message
    assert "line 1" in message
    assert "4 points" in message


def test_error_header_count_vs_x_file(tmp_path: Path) -> None:
    message = _error(_xc(tmp_path, trn_X_Y__txt="2 3\n0\n1\n"))
    assert "trn_X_Y.txt" in message
    assert "trn_X.txt has 3 lines" in message


def test_error_label_count_vs_lbl_file(tmp_path: Path) -> None:
    message = _error(_xc(tmp_path, trn_X_Y__txt="3 5\n0\n1\n2\n"))
    assert "trn_X_Y.txt: line 1" in message
    assert "lbl_X.txt has 3 lines" in message


def test_error_label_out_of_range(tmp_path: Path) -> None:
    message = _error(_xc(tmp_path, trn_X_Y__txt="3 3\n0\n1:1 3:2\n2\n"))
    assert "trn_X_Y.txt: line 3" in message
    assert "label index 3 out of range" in message


@pytest.mark.parametrize("pair", ["x", "1:abc", "1:2:3", "-1:1", "1:", ":1", "1.5:1", "1;2"])
def test_error_unparsable_pair(tmp_path: Path, pair: str) -> None:
    message = _error(_xc(tmp_path, trn_X_Y__txt=f"3 3\n0\n1\n2 {pair}\n"))
    assert "trn_X_Y.txt: line 4" in message
    assert repr(pair) in message


def test_error_duplicate_label_on_a_line(tmp_path: Path) -> None:
    message = _error(_xc(tmp_path, trn_X_Y__txt="3 3\n0\n1:1 1:2\n2\n"))
    assert "trn_X_Y.txt: line 3" in message


@pytest.mark.parametrize("header", ["", "3", "3 3 3", "three 3", "-3 3"])
def test_error_bad_header(tmp_path: Path, header: str) -> None:
    body = "0\n1\n2\n"
    message = _error(_xc(tmp_path, trn_X_Y__txt=f"{header}\n{body}" if header else ""))
    assert "trn_X_Y.txt: line 1" in message


def test_error_lbl_uid_count(tmp_path: Path) -> None:
    message = _error(_xc(tmp_path, lbl_uid__txt="a\nb\n"))
    assert "lbl_uid.txt" in message
    assert "2 lines" in message


@pytest.mark.parametrize("missing", ["lbl_X.txt", "trn_X.txt", "trn_X_Y.txt"])
def test_error_required_file_missing(tmp_path: Path, missing: str) -> None:
    message = _error(_xc(tmp_path, **{missing.replace(".", "__"): None}))
    assert missing in message


@pytest.mark.parametrize("present", ["tst_X.txt", "tst_X_Y.txt"])
def test_error_half_a_test_split(tmp_path: Path, present: str) -> None:
    content = "saw\n" if present == "tst_X.txt" else "1 3\n2\n"
    message = _error(_xc(tmp_path, **{present.replace(".", "__"): content}))
    other = "tst_X_Y.txt" if present == "tst_X.txt" else "tst_X.txt"
    assert other in message


def test_error_test_split_validated_too(tmp_path: Path) -> None:
    path = _xc(tmp_path, tst_X__txt="saw\n", tst_X_Y__txt="1 3\n7\n")
    message = _error(path)
    assert "tst_X_Y.txt: line 2" in message


def test_error_invalid_utf8_names_line(tmp_path: Path) -> None:
    message = _error(_xc(tmp_path, trn_X__txt=b"drill\nham\xffmer\nsaw\n"))
    assert "trn_X.txt: line 2" in message
    assert "UTF-8" in message


@pytest.mark.parametrize(
    "meta",
    [
        "{not json",
        "[1, 2]",
        '{"positive_min_weight": "high"}',
        '{"graded": "yes"}',
        '{"propensity": {"A": true}}',
        '{"propensity": 0.5}',
        '{"name": ""}',
    ],
)
def test_error_bad_dataset_json(tmp_path: Path, meta: str) -> None:
    assert "dataset.json" in _error(_xc(tmp_path, dataset__json=meta))


def test_error_not_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a directory"):
        read_xc_dir(tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"lbl_X\.txt"):
        load_dataset(empty)
    with pytest.raises(DataError, match="no such file"):
        load_dataset(tmp_path / "absent")


# ---------------------------------------------------------------- fastText


FASTTEXT_TRN = (
    "__label__sauce __label__cheese How much starch  in a cheese sauce? \n"
    "__label__food-safety __label__sauce __label__sauce Is raw flour safe?\n"
    "\n"
    "just text, no labels\n"
    "__label__baking\n"
)


def test_fasttext_reader(tmp_path: Path) -> None:
    path = tmp_path / "train.txt"
    path.write_text(FASTTEXT_TRN, encoding="utf-8")
    ds = read_fasttext(path)
    assert ds.label_ids == ["baking", "cheese", "food-safety", "sauce"]
    assert ds.label_titles == ["baking", "cheese", "food safety", "sauce"]
    assert ds.name == "train"
    assert ds.tst is None
    # The blank line is skipped; text keeps its inner spacing and loses the outer one.
    assert ds.trn.texts == [
        "How much starch  in a cheese sauce?",
        "Is raw flour safe?",
        "just text, no labels",
        "",
    ]
    assert [lab.tolist() for lab in ds.trn.labels] == [[1, 3], [2, 3], [], [0]]
    assert all(w.tolist() == [1.0] * len(w) for w in ds.trn.weights)
    assert (ds.positive_min_weight, ds.graded) == (1.0, False)
    assert load_dataset(path).label_ids == ds.label_ids


def test_fasttext_test_file_shares_the_label_space(tmp_path: Path) -> None:
    trn = tmp_path / "trn.txt"
    tst = tmp_path / "tst.txt"
    trn.write_text("__label__b b text\n__label__c c text\n", encoding="utf-8")
    tst.write_text("__label__a __label__c a and c\r\n", encoding="utf-8")
    ds = read_fasttext(trn, tst)
    assert ds.label_ids == ["a", "b", "c"]
    assert ds.tst is not None
    assert ds.tst.texts == ["a and c"]
    assert ds.tst.labels[0].tolist() == [0, 2]
    assert [lab.tolist() for lab in ds.trn.labels] == [[1], [2]]


def test_fasttext_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("__label__a fine\n__label__ oops\n", encoding="utf-8")
    good = tmp_path / "good.txt"
    good.write_text("__label__a fine\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.txt: line 2"):
        read_fasttext(bad)
    with pytest.raises(DataError, match="no such file"):
        read_fasttext(tmp_path / "missing.txt")
    with pytest.raises(DataError, match="no such file"):
        read_fasttext(good, tmp_path / "missing_test.txt")


# ---------------------------------------------------------------- real data


@requires_shared_data
def test_homedepot_reads_fast_with_expected_counts() -> None:
    start = time.perf_counter()
    ds = read_xc_dir(HOMEDEPOT)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0
    assert ds.name == "homedepot"
    assert ds.num_labels == 54_667
    assert len(ds.label_ids) == 54_667
    assert len(ds.trn) == 9_341
    assert ds.tst is None
    assert ds.graded is True
    assert ds.positive_min_weight == pytest.approx(2.33)
    assert (ds.propensity_a, ds.propensity_b) == (0.6, 2.6)
    positives = ds.trn.positives(ds.positive_min_weight)
    listed = sum(len(lab) for lab in ds.trn.labels)
    kept = sum(len(p) for p in positives)
    assert 0 < kept < listed  # grades below 2.33 are listed but not positive
    # A weight written "2.33" is positive at threshold 2.33.
    exact = [w for w in ds.trn.weights if (w == np.float32(2.33)).any()]
    assert exact
    assert all((p >= np.float32(2.33)).any() for p in exact)
    assert ds.label_frequencies(ds.trn).sum() == kept


@requires_shared_data
def test_dev_fraction_on_real_data_is_about_an_eighth() -> None:
    for path in (HOMEDEPOT, COOKING):
        ds = read_xc_dir(path)
        dev, train = ds.split("dev"), ds.split("train")
        assert len(dev) + len(train) == len(ds.trn)
        assert abs(len(dev) / len(ds.trn) - 1 / 8) < 0.015, path
        assert all(is_dev_query(q) for q in dev.texts)


@requires_shared_data
def test_cooking_xc_counts() -> None:
    ds = read_xc_dir(COOKING)
    assert ds.name == "cooking"
    assert ds.num_labels == 736
    assert len(ds.trn) == 12_404
    assert ds.tst is not None
    assert len(ds.tst) == 3_000
    assert ds.graded is False
    assert all(len(p) >= 1 for p in ds.trn.positives(ds.positive_min_weight))


@requires_shared_data
def test_cooking_fasttext_matches_the_xc_view() -> None:
    ft = load_dataset(COOKING_FASTTEXT)
    xc = read_xc_dir(COOKING)
    assert isinstance(ft, XCDataset)
    assert ft.num_labels == 736
    assert len(ft.trn) == 15_404
    uids = (COOKING / "lbl_uid.txt").read_text(encoding="utf-8").split("\n")[:-1]
    assert set(ft.label_ids) == set(uids)
    assert ft.label_ids == xc.label_ids
    assert ft.label_titles == xc.label_titles
    # The first 12,404 lines are the XC view's trn points, text and labels alike.
    for i in range(len(xc.trn)):
        assert ft.trn.texts[i] == xc.trn.texts[i]
        assert ft.trn.labels[i].tolist() == xc.trn.labels[i].tolist()
