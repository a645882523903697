"""The bundle contract: a good bundle loads; every kind of damage is refused, naming the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from service.bundle import MANIFEST_NAME, BundleError, load_bundle, sha256_file, write_manifest
from service.search.engine import SearchEngine


@pytest.fixture
def bundle_copy(demo_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the demo bundle that a test may damage."""
    return Path(shutil.copytree(demo_bundle, tmp_path / "bundle"))


def _manifest(path: Path) -> dict:
    return json.loads((path / MANIFEST_NAME).read_text())


def _rewrite_manifest(path: Path, manifest: dict) -> None:
    """Re-checksum after an intended change, as a training run would."""
    manifest.pop("files")
    manifest.pop("format_version")
    write_manifest(path, manifest)


def test_good_bundle_loads_with_consistent_parts(demo_bundle: Path) -> None:
    bundle = load_bundle(demo_bundle)
    manifest = bundle.manifest
    assert manifest.kinds == ["astra"]
    assert len(bundle.label_titles) == len(bundle.label_ids) == manifest.labels.count
    assert bundle.classifiers.shape == (manifest.labels.count, manifest.encoder.dim)
    for name, entry in manifest.files.items():
        assert sha256_file(demo_bundle / name) == entry.sha256
    assert {"encoder.onnx", "tokenizer.json", "index.faiss", "training_curve.png"} <= set(
        manifest.files
    )
    assert manifest.metrics["dev"]["points"] > 0


def test_flipped_byte_is_refused_naming_the_file(bundle_copy: Path) -> None:
    target = bundle_copy / "classifiers.npy"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"classifiers\.npy: sha256 .* does not match"):
        load_bundle(bundle_copy)


def test_missing_file_is_refused(bundle_copy: Path) -> None:
    (bundle_copy / "index.faiss").unlink()
    with pytest.raises(BundleError, match=r"index\.faiss: listed in the manifest but missing"):
        load_bundle(bundle_copy)


def test_truncated_file_reports_its_size(bundle_copy: Path) -> None:
    target = bundle_copy / "labels.txt"
    target.write_bytes(target.read_bytes()[:-10])
    with pytest.raises(BundleError, match=r"labels\.txt: size"):
        load_bundle(bundle_copy)


def test_wrong_label_count_is_refused(bundle_copy: Path) -> None:
    manifest = _manifest(bundle_copy)
    manifest["labels"]["count"] += 1
    _rewrite_manifest(bundle_copy, manifest)
    with pytest.raises(BundleError, match=r"labels\.txt: \d+ lines, manifest says"):
        load_bundle(bundle_copy)


def test_wrong_classifier_shape_is_refused(bundle_copy: Path) -> None:
    matrix = np.load(bundle_copy / "classifiers.npy")
    np.save(bundle_copy / "classifiers.npy", matrix[:, :-1])
    _rewrite_manifest(bundle_copy, _manifest(bundle_copy))
    with pytest.raises(BundleError, match=r"classifiers\.npy: shape"):
        load_bundle(bundle_copy)


def test_wrong_encoder_dim_is_refused_by_the_engine(bundle_copy: Path) -> None:
    manifest = _manifest(bundle_copy)
    manifest["encoder"]["dim"] = 128
    matrix = np.load(bundle_copy / "classifiers.npy")
    np.save(bundle_copy / "classifiers.npy", np.ascontiguousarray(matrix[:, :128]))
    _rewrite_manifest(bundle_copy, manifest)
    with pytest.raises(BundleError, match=r"encoder\.onnx: output shape"):
        SearchEngine.load(bundle_copy)


def test_index_of_another_catalog_is_refused(bundle_copy: Path, demo_bundle: Path) -> None:
    import faiss

    faiss.write_index(faiss.IndexFlatIP(384), str(bundle_copy / "index.faiss"))
    _rewrite_manifest(bundle_copy, _manifest(bundle_copy))
    with pytest.raises(BundleError, match=r"index\.faiss: holds 0 vectors"):
        SearchEngine.load(bundle_copy)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda m: "{not json", r"manifest\.json: not valid JSON"),
        (lambda m: json.dumps({**m, "format_version": 99}), r"format_version 99 is not supported"),
        (lambda m: json.dumps({**m, "kinds": []}), r"manifest\.json: invalid manifest"),
        (lambda m: json.dumps({**m, "surprise": 1}), r"manifest\.json: invalid manifest"),
        (lambda m: json.dumps([m]), r"manifest\.json: expected a JSON object"),
    ],
)
def test_bad_manifest_is_refused(bundle_copy: Path, damage, message: str) -> None:
    (bundle_copy / MANIFEST_NAME).write_text(damage(_manifest(bundle_copy)))
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle_copy)


def test_missing_directory_and_manifest(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="bundle directory does not exist"):
        load_bundle(tmp_path / "nope")
    with pytest.raises(BundleError, match=r"manifest\.json: manifest missing"):
        load_bundle(tmp_path)


def test_unlisted_reference_is_refused(bundle_copy: Path) -> None:
    manifest = _manifest(bundle_copy)
    del manifest["files"]["tokenizer.json"]
    (bundle_copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"tokenizer\.json: referenced but not listed"):
        load_bundle(bundle_copy)
