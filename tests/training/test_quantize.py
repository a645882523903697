"""The optional int8 encoder: built into a bundle, verified, close to fp32, and servable."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench import int8 as bench_int8
from bench.report import render_int8
from service.bundle import BundleError, load_bundle
from service.search.engine import SearchEngine
from tests.support.damage import damaged_copy
from training.data import load_dataset
from training.quantize import INT8_ENCODER_FILE, int8_parity, quantize_encoder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def int8_bundle(demo_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("int8") / "demo"
    shutil.copytree(demo_bundle, out)
    assert quantize_encoder(out) == out / INT8_ENCODER_FILE
    return out


def test_the_int8_encoder_is_listed_and_checksummed(int8_bundle: Path) -> None:
    manifest = load_bundle(int8_bundle).manifest
    assert manifest.encoder.int8_file == INT8_ENCODER_FILE
    assert INT8_ENCODER_FILE in manifest.files
    fp32_bytes = manifest.files[manifest.encoder.file].bytes
    assert manifest.files[INT8_ENCODER_FILE].bytes < fp32_bytes * 0.75
    broken = damaged_copy(int8_bundle, INT8_ENCODER_FILE, int8_bundle.parent / "broken")
    with pytest.raises(BundleError, match=r"encoder\.int8\.onnx"):
        load_bundle(broken)


def test_int8_embeddings_stay_close_to_fp32(int8_bundle: Path, demo_data: Path) -> None:
    texts = load_dataset(demo_data).split("dev").texts
    parity = int8_parity(int8_bundle, texts)
    assert parity["queries"] == len(texts) > 20
    assert parity["cosine_min"] >= 0.97
    assert parity["cosine_mean"] >= 0.99


def test_int8_serves_nearly_the_same_products(int8_bundle: Path, demo_data: Path) -> None:
    texts = load_dataset(demo_data).split("dev").texts[:50]
    fp32 = SearchEngine.load(int8_bundle, precision="fp32")
    int8 = SearchEngine.load(int8_bundle, precision="int8")
    assert int8.encoder.precision == "int8"
    _, fp32_labels = fp32.rank(texts, 10)
    _, int8_labels = int8.rank(texts, 10)
    overlap = [len(set(a) & set(b)) / 10 for a, b in zip(fp32_labels, int8_labels, strict=True)]
    assert sum(overlap) / len(overlap) >= 0.8
    assert (fp32_labels[:, 0] == int8_labels[:, 0]).mean() >= 0.8


def test_int8_without_an_int8_encoder_is_refused(demo_bundle: Path) -> None:
    with pytest.raises(BundleError, match=r"no int8 encoder.*training quantize"):
        SearchEngine.load(demo_bundle, precision="int8")


def test_bench_int8_quantises_the_bundle_and_records_what_int8_costs(
    demo_bundle: Path, demo_data: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "demo"
    shutil.copytree(demo_bundle, bundle)
    out = tmp_path / "int8.json"
    bench_int8.main(["--bundle", str(bundle), "--data", str(demo_data), "--out", str(out)])
    record = json.loads(out.read_text())
    assert load_bundle(bundle).manifest.encoder.int8_file == INT8_ENCODER_FILE
    dev = load_dataset(demo_data).split("dev")
    assert record["parity"]["queries"] == len(dev.texts)
    assert 0.95 < record["parity"]["cosine_min"] <= record["parity"]["cosine_mean"] <= 1.0
    assert record["dev_fp32"]["points"] == record["dev_int8"]["points"] > 0
    assert abs(record["dev_fp32"]["P@1"] - record["dev_int8"]["P@1"]) <= 0.1
    assert record["command"].startswith("python -m bench.int8 --bundle")
    assert f"{record['dev_int8']['nDCG@10']:.4f}" in render_int8(record)


def test_auto_serves_int8_only_where_its_dev_check_passed(
    demo_bundle: Path, demo_data: Path, tmp_path: Path
) -> None:
    from service.bundle import read_manifest
    from training.quantize import quantize_and_report, record_int8_check

    bundle = tmp_path / "demo"
    shutil.copytree(demo_bundle, bundle)
    assert SearchEngine.load(bundle, precision="auto").encoder.precision == "fp32"  # no int8 copy
    quantize_encoder(bundle)
    assert SearchEngine.load(bundle, precision="auto").encoder.precision == "fp32"  # not checked
    report = quantize_and_report(bundle, demo_data)
    check = read_manifest(bundle).encoder.int8_check
    assert check is not None and check.split == "dev"
    assert check.ndcg_at_10_fp32 == pytest.approx(report["dev_fp32"]["nDCG@10"], abs=1e-6)
    assert check.ndcg_at_10_int8 == pytest.approx(report["dev_int8"]["nDCG@10"], abs=1e-6)
    expected = "int8" if check.passed else "fp32"
    assert SearchEngine.load(bundle, precision="auto").encoder.precision == expected
    record_int8_check(bundle, fp32_ndcg=0.50, int8_ndcg=0.4975)  # 0.0025 worse: within 0.003
    assert SearchEngine.load(bundle, precision="auto").encoder.precision == "int8"
    record_int8_check(bundle, fp32_ndcg=0.50, int8_ndcg=0.4965)  # 0.0035 worse: fp32
    assert SearchEngine.load(bundle, precision="auto").encoder.precision == "fp32"
    assert SearchEngine.load(bundle, precision="int8").encoder.precision == "int8"  # as asked
    quantize_encoder(bundle)  # a new copy is unmeasured again
    assert read_manifest(bundle).encoder.int8_check is None
