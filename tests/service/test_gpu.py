"""GPU parity: the CUDA encoder, the FAISS GPU index and the CuPy MACH decoder answer what the
CPU path answers. Runs where the `gpu` extra sees a CUDA device (`make test EXTRAS=gpu` on a GPU
machine); skipped elsewhere, with the reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.device import CUDA_PROVIDER, probe_capabilities
from service.search.engine import SearchEngine

CAPABILITIES = probe_capabilities()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not (CAPABILITIES.onnxruntime_cuda and CAPABILITIES.faiss_gpus and CAPABILITIES.cupy_gpus),
        reason=f"no CUDA device reachable by onnxruntime, faiss and cupy ({CAPABILITIES})",
    ),
]
QUERIES = [
    "cordless drill 20v",
    "white interior paint 1 gal",
    "garden hose 50 ft",
    "led light bulb",
    "2 in. x 4 in. x 8 ft. lumber",
]


@pytest.fixture(scope="module")
def engines(demo_bundle_both: Path) -> tuple[SearchEngine, SearchEngine]:
    cpu = SearchEngine.load(demo_bundle_both, device="cpu")
    gpu = SearchEngine.load(demo_bundle_both, device="cuda")
    return cpu, gpu


def test_every_part_runs_on_the_gpu(engines: tuple[SearchEngine, SearchEngine]) -> None:
    _, gpu = engines
    assert gpu.encoder.providers[0] == CUDA_PROVIDER
    assert gpu.index is not None and gpu.index.on_gpu
    assert gpu.mach is not None and gpu.mach.dense is not None


def test_cuda_encoder_matches_the_cpu_encoder(engines: tuple[SearchEngine, SearchEngine]) -> None:
    cpu, gpu = engines
    cosines = (cpu.encoder.encode(QUERIES) * gpu.encoder.encode(QUERIES)).sum(axis=1)
    assert cosines.min() > 0.999


def test_gpu_index_finds_the_exact_neighbours(engines: tuple[SearchEngine, SearchEngine]) -> None:
    cpu, gpu = engines
    assert cpu.index is not None and gpu.index is not None
    vectors = cpu.encoder.encode(QUERIES)
    want_scores, want_ids = cpu.index.search(vectors, 10)
    scores, ids = gpu.index.search(vectors, 10)
    np.testing.assert_allclose(scores, want_scores, atol=1e-4)
    assert (ids == want_ids).mean() > 0.95  # near-ties may swap places


def test_gpu_mach_decoding_matches_the_exact_cpu_decoder(
    engines: tuple[SearchEngine, SearchEngine],
) -> None:
    cpu, gpu = engines
    assert cpu.mach is not None and gpu.mach is not None
    vectors = cpu.encoder.encode(QUERIES)
    scores = cpu.mach.scores(vectors, QUERIES)
    want_vals, want_ids = cpu.mach.decoder.exact(scores.log_probs, 10)
    vals, ids = gpu.mach.decode(scores, 10)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(vals, want_vals, rtol=1e-6)


@pytest.mark.parametrize("model", ["astra", "mach", "hybrid"])
def test_gpu_search_answers_like_the_cpu(
    engines: tuple[SearchEngine, SearchEngine], model: str
) -> None:
    cpu, gpu = engines
    for want, got in zip(
        cpu.search(QUERIES, 10, model), gpu.search(QUERIES, 10, model), strict=True
    ):
        overlap = {hit.id for hit in want} & {hit.id for hit in got}
        assert len(overlap) >= 8  # MACH: exact on the GPU, top-m buckets on the CPU
