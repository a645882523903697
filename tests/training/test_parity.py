"""The served encoder (tokenizers + ONNX Runtime) matches sentence-transformers (cos >= 0.9999)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.paths import SHARED_DATA
from training.data import read_xc_dir
from training.parity import export_base_encoder, onnx_parity

MIN_COSINE = 0.9999


@pytest.fixture(scope="module")
def base_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_base_encoder(tmp_path_factory.mktemp("base_onnx"))


@pytest.mark.shared_data
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} absent (real queries)")
@pytest.mark.parametrize("dataset", ["homedepot", "cooking"])
def test_parity_on_real_queries(base_onnx: Path, dataset: str) -> None:
    queries = read_xc_dir(SHARED_DATA / dataset / "xc").trn.texts[:1500]
    cosines = onnx_parity(base_onnx, queries)
    worst = int(cosines.argmin())
    assert cosines.min() >= MIN_COSINE, f"{queries[worst]!r}: cosine {cosines[worst]}"


def test_parity_on_edge_cases(base_onnx: Path, demo_data: Path) -> None:
    queries = [
        *read_xc_dir(demo_data).tst.texts[:200],
        "a",
        "x" * 300,  # truncated to 32 tokens on both sides
        "ÉCLAIRAGE extérieur 60W – ampoule à LED",
        "1/2 in. x 10 ft. copper pipe type-L (3-pack)",
        " ".join(["drill"] * 80),
        "日本語 のクエリ",
    ]
    cosines = onnx_parity(base_onnx, queries)
    assert cosines.min() >= MIN_COSINE
