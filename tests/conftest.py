"""Shared fixtures: a small real bundle trained on the generated demo catalog.

The bundle is built once per test session through the real CLI (`python -m training train`),
so every test that serves or evaluates a model exercises the actual training and export path.
A test that needs one is marked `slow` here, as are the tests that start servers, a browser,
Ray or torchrun (marked in their modules): `make test-fast` runs the rest.

The tree mirrors the packages (`tests/service/search/` tests `service/search/`, ...);
`tests/support/` holds what several test modules share.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Apps built in tests keep their batch-job stores out of the repository.
os.environ.setdefault("XC_DATA_DIR", tempfile.mkdtemp(prefix="xc-test-data-"))
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# The PostgreSQL server and databases (`postgres_url`, `database_url`) live in their own module.
pytest_plugins = ["tests.support.postgres"]

DEMO_PRODUCTS = 400
# Fixtures that train (or export) a model: a test that uses one, directly or through another
# fixture, is slow. The first three are below; the others are their modules' own.
TRAINED_FIXTURES = frozenset(
    {"demo_bundle", "demo_bundle_v2", "demo_bundle_both", "tiny_runs", "mach_bundle", "base_onnx"}
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs a trained bundle `slow`."""
    for item in items:
        if TRAINED_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo catalog in the XC text layout."""
    from training.demo import generate_demo

    return generate_demo(tmp_path_factory.mktemp("demo") / "data", num_products=DEMO_PRODUCTS)


@pytest.fixture(scope="session")
def demo_bundle(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ASTRA bundle: one epoch on the demo catalog, exported to ONNX."""
    from tests.support.configs import demo_train_args
    from training.__main__ import main

    out = tmp_path_factory.mktemp("models") / "demo"
    status = main(demo_train_args(demo_data, out, "--batch-size", "32"))
    assert status == 0
    return out


@pytest.fixture(scope="session")
def demo_bundle_v2(demo_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo bundle re-issued as version "v2" with every title marked, to tell them apart."""
    from service.bundle import read_lines, read_manifest, write_lines, write_manifest

    out = demo_bundle.parent / "demo-v2"  # under the same models root as demo_bundle
    out.mkdir()
    for path in demo_bundle.iterdir():
        (out / path.name).write_bytes(path.read_bytes())
    manifest = read_manifest(out)
    titles_file = out / manifest.labels.titles
    write_lines(titles_file, [f"v2 {title}" for title in read_lines(titles_file)])
    fields = manifest.model_dump(exclude={"files", "format_version"})
    write_manifest(out, {**fields, "version": "v2"})
    return out


@pytest.fixture(scope="session")
def demo_bundle_both(
    demo_data: Path, demo_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The demo bundle plus small MACH heads on its encoder: answers astra, mach and hybrid."""
    from tests.support.configs import SMALL_MACH
    from training.__main__ import main

    out = demo_bundle.parent / "demo-both"  # under the same models root as demo_bundle
    args = ["train", "--model", "mach", "--data", str(demo_data), "--out", str(out)]
    assert main([*args, *SMALL_MACH, "--encoder-from", str(demo_bundle)]) == 0
    return out
