"""Shared fixtures: a small real bundle trained on the generated demo catalog.

The bundle is built once per test session through the real CLI (`python -m training train`),
so every test that serves or evaluates a model exercises the actual training and export path.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
DEMO_PRODUCTS = 400


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo catalog in the XC text layout."""
    from training.demo import generate_demo

    return generate_demo(tmp_path_factory.mktemp("demo") / "data", num_products=DEMO_PRODUCTS)


@pytest.fixture(scope="session")
def demo_bundle(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ASTRA bundle: one epoch on the demo catalog, exported to ONNX."""
    from training.__main__ import main

    out = tmp_path_factory.mktemp("models") / "demo"
    status = main(
        [
            "train",
            "--data",
            str(demo_data),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--batch-size",
            "32",
        ]
    )
    assert status == 0
    return out
