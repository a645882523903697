"""The distribution's dependency promises: the service needs no torch, and ONNX Runtime and FAISS
come from exactly one of the `cpu` and `gpu` extras (their builds share module names)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
EXTRAS = PROJECT["optional-dependencies"]


def names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0] for requirement in requirements}


def test_the_service_dependencies_hold_no_torch_and_no_runtime_build() -> None:
    base = names(PROJECT["dependencies"])
    assert {"fastapi", "uvicorn", "pydantic", "tokenizers", "numpy"} <= base
    assert not base & {"torch", "onnx", "onnxruntime", "onnxruntime-gpu", "faiss-cpu"}


def test_cpu_and_gpu_extras_bring_one_build_each_and_nothing_else_brings_either() -> None:
    assert names(EXTRAS["cpu"]) == {"onnxruntime", "faiss-cpu"}
    assert names(EXTRAS["gpu"]) == {"onnxruntime-gpu", "faiss-gpu-cu12", "cupy-cuda12x"}
    builds = names(EXTRAS["cpu"]) | names(EXTRAS["gpu"])
    for extra, requirements in EXTRAS.items():
        if extra not in ("cpu", "gpu"):
            assert not names(requirements) & builds, extra


def test_torch_is_pinned_where_it_is_needed() -> None:
    assert "torch==2.13.0" in EXTRAS["train"]


def _make_steps(*variables: str) -> list[str]:
    """The `python -m training` commands `make bundle` would run with these variables."""
    import subprocess

    dry_run = subprocess.run(
        ["make", "--no-print-directory", "-n", "bundle", "BUNDLE=models/probe", *variables],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line for line in dry_run.splitlines() if " -m training " in line]


def test_make_feeds_a_shops_export_to_every_training_step() -> None:
    steps = _make_steps(
        "PRODUCTS=shop/products.parquet",
        "INTERACTIONS=shop/clicks.csv",
        "SHOP_ARGS=--id-column sku",
    )
    flags = "--products shop/products.parquet --interactions shop/clicks.csv --id-column sku"
    reading = [step for step in steps if " -m training demo " not in step]
    assert [step.split(" -m training ")[1].split()[0] for step in reading] == [
        "train",
        "train",
        "quantize",
        "ranker",
    ]
    assert all(flags in step and "--data" not in step for step in reading)
    assert not any(" -m training demo " in step for step in steps)  # no demo catalog needed
    toml = _make_steps("DATA=shop/shop.toml")
    assert toml and all("--data shop/shop.toml" in step for step in toml)
