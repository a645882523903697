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
