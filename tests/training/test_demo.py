"""Tests for training.demo: a deterministic, realistic demo catalog in the XC layout."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.support.paths import REPO
from training.data import XCDataset, read_xc_dir
from training.demo import BRANDS, DEMO_SEED, PRODUCT_TYPES, generate_demo

FILES = (
    "lbl_X.txt",
    "lbl_uid.txt",
    "trn_X.txt",
    "trn_X_Y.txt",
    "tst_X.txt",
    "tst_X_Y.txt",
    "dataset.json",
)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo(tmp_path_factory.mktemp("demo"), num_products=2000, seed=DEMO_SEED)


@pytest.fixture(scope="module")
def demo(demo_dir: Path) -> XCDataset:
    return read_xc_dir(demo_dir)


def _words(text: str) -> list[str]:
    """Lowercased words with the punctuation shoppers leave out removed."""
    text = text.lower().replace("(", " ").replace(")", " ").replace(",", "")
    return [w.rstrip(".") for w in text.split() if w.rstrip(".")]


def _type_of(title: str) -> str:
    """The product type named in a title (the longest type name it contains)."""
    return max((t.name for t in PRODUCT_TYPES if t.name in title), key=len)


def test_same_seed_gives_byte_identical_files(tmp_path: Path, demo_dir: Path) -> None:
    again = generate_demo(tmp_path / "again", num_products=2000, seed=DEMO_SEED)
    for name in FILES:
        assert (again / name).read_bytes() == (demo_dir / name).read_bytes(), name


def test_output_does_not_depend_on_string_hashing(tmp_path: Path, demo_dir: Path) -> None:
    out = tmp_path / "other_process"
    code = f"from training.demo import generate_demo; generate_demo({str(out)!r}, 2000, 0)"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True)
    for name in FILES:
        assert (out / name).read_bytes() == (demo_dir / name).read_bytes(), name


def test_different_seed_differs(tmp_path: Path, demo_dir: Path) -> None:
    other = generate_demo(tmp_path / "seed1", num_products=2000, seed=1)
    assert (other / "lbl_X.txt").read_bytes() != (demo_dir / "lbl_X.txt").read_bytes()
    assert (other / "trn_X.txt").read_bytes() != (demo_dir / "trn_X.txt").read_bytes()


def test_reads_back_with_the_dataset_settings(demo: XCDataset) -> None:
    assert demo.name == "demo"
    assert demo.positive_min_weight == 2.0
    assert demo.graded is True
    assert (demo.propensity_a, demo.propensity_b) == (0.6, 2.6)
    assert demo.num_labels == 2000
    assert demo.tst is not None
    assert all(re.fullmatch(r"D\d{6}", uid) for uid in demo.label_ids)
    assert len(set(demo.label_ids)) == demo.num_labels


def test_catalog_is_varied_and_titles_unique(demo: XCDataset) -> None:
    assert len(PRODUCT_TYPES) >= 60
    assert len(BRANDS) >= 24
    assert len({t.department for t in PRODUCT_TYPES}) >= 6
    titles = demo.label_titles
    assert len(set(titles)) == len(titles)
    assert all(any(title.startswith(b + " ") for b in BRANDS) for title in titles)
    used_types = {_type_of(title) for title in titles}
    assert len(used_types) >= 60
    assert any(re.search(r"\d+-Volt", t) for t in titles)
    assert any(re.search(r" x \d", t) for t in titles)
    assert any(re.search(r"\(\d+-Pack\)$", t) for t in titles)
    assert any(" in " in t for t in titles)


def test_every_query_has_a_positive_and_graded_weights(demo: XCDataset) -> None:
    assert demo.tst is not None
    for split in (demo.trn, demo.tst):
        positives = split.positives(demo.positive_min_weight)
        assert all(p.size >= 1 for p in positives)
        for labels, weights in zip(split.labels, split.weights, strict=True):
            assert set(weights.tolist()) <= {1.0, 2.0, 3.0}
            assert int(np.count_nonzero(weights == 3.0)) == 1  # the product it came from
            source_type = _type_of(demo.label_titles[int(labels[weights == 3.0][0])])
            for lab in labels.tolist():
                assert _type_of(demo.label_titles[lab]) == source_type
    # Some listed pairs are below the threshold (same type only).
    assert any((w < demo.positive_min_weight).any() for w in demo.trn.weights)


def test_queries_are_split_by_text(demo: XCDataset) -> None:
    assert demo.tst is not None
    assert len(set(demo.trn.texts)) == len(demo.trn)
    assert not set(demo.trn.texts) & set(demo.tst.texts)
    assert all(q and q == q.lower() for q in demo.trn.texts + demo.tst.texts)


def test_some_products_are_cold_in_training(demo: XCDataset) -> None:
    assert demo.tst is not None
    trn_freq = demo.label_frequencies(demo.trn)
    cold = trn_freq == 0
    assert 0.10 <= cold.mean() <= 0.25
    # Cold products are still asked for in tst, so the cold-start path gets evaluated.
    tst_freq = demo.label_frequencies(demo.tst)
    assert (tst_freq[cold] > 0).mean() > 0.5


def test_queries_contain_typos_partial_words_and_synonyms(demo: XCDataset) -> None:
    assert demo.tst is not None
    vocab = {w for title in demo.label_titles for w in _words(title)}
    synonyms = {w for t in PRODUCT_TYPES for s in t.synonyms for w in s.split()}
    tokens = [w for q in demo.trn.texts + demo.tst.texts for w in q.split()]
    foreign = [w for w in tokens if w not in vocab]
    assert foreign, "every query token is a title token"

    prefixes = {w[:i] for w in vocab for i in range(3, len(w))}
    edits: set[str] = set()
    for w in vocab:
        for i in range(len(w)):
            edits.add(w[:i] + w[i + 1 :])  # dropped letter
            edits.add(w[:i] + w[i] + w[i:])  # doubled letter
            if i + 1 < len(w):
                edits.add(w[:i] + w[i + 1] + w[i] + w[i + 2 :])  # swapped letters
    partial = [w for w in foreign if w in prefixes]
    typos = [w for w in foreign if w in edits and w not in prefixes]
    from_synonyms = [w for w in foreign if w in synonyms]
    assert len(partial) >= 100
    assert len(typos) >= 300
    assert len(from_synonyms) >= 100
    # Noise stays the exception: most tokens are still spelled as in the catalog.
    assert len(foreign) / len(tokens) < 0.25


def test_sizes_roughly_as_asked(demo: XCDataset) -> None:
    assert demo.tst is not None
    total = len(demo.trn) + len(demo.tst)
    assert 2.5 <= total / demo.num_labels <= 3.5
    assert 0.15 <= len(demo.tst) / total <= 0.25


def test_small_catalog_and_speed(tmp_path: Path) -> None:
    small = read_xc_dir(generate_demo(tmp_path / "small", num_products=50, seed=3))
    assert small.num_labels == 50
    assert len(small.trn) > 0
    start = time.perf_counter()
    generate_demo(tmp_path / "timed", num_products=2000, seed=5)
    assert time.perf_counter() - start < 2.0
    with pytest.raises(ValueError):
        generate_demo(tmp_path / "none", num_products=0)
