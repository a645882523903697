"""The GPU path's CPU-checkable parts: where XC_DEVICE puts each part, the exact copy of an
HNSW index a GPU searches, and the dense MACH decoder (run here with NumPy, on a GPU with CuPy)
against the CPU reference decoder."""

from __future__ import annotations

import logging
from pathlib import Path

import faiss
import numpy as np
import pytest

from service.astra.index import (
    AnnIndex,
    build_index,
    default_index_spec,
    exact_copy,
    stored_vectors,
)
from service.bundle import IndexSpec, read_manifest
from service.device import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    NO_GPU,
    Capabilities,
    DeviceError,
    DevicePlan,
    plan_devices,
    resolve_device,
)
from service.mach import dense as mach_dense
from service.mach.decode import MachDecoder
from service.mach.dense import DenseMachDecoder
from service.mach.model import MachModel
from service.search.engine import SearchEngine

ALL_GPU = Capabilities(onnxruntime_cuda=True, faiss_gpus=1, cupy_gpus=1)
ORT_ONLY = Capabilities(onnxruntime_cuda=True, faiss_gpus=0, cupy_gpus=0)


def test_cpu_keeps_every_part_on_the_cpu_even_with_a_gpu() -> None:
    plan = plan_devices("cpu", ALL_GPU)
    assert plan.encoder_providers == (CPU_PROVIDER,)
    assert not (plan.faiss_gpu or plan.cupy_gpu or plan.encoder_on_gpu)


def test_auto_uses_each_gpu_library_that_reaches_a_device() -> None:
    assert plan_devices("auto", NO_GPU) == DevicePlan(
        requested="auto", encoder_providers=(CPU_PROVIDER,), faiss_gpu=False, cupy_gpu=False
    )
    full = plan_devices("auto", ALL_GPU)
    assert full.encoder_providers == (CUDA_PROVIDER, CPU_PROVIDER)
    assert full.faiss_gpu and full.cupy_gpu and full.encoder_on_gpu
    assert full.describe() == {
        "requested": "auto",
        "encoder": CUDA_PROVIDER,
        "astra_index": "faiss-gpu (exact)",
        "mach_decode": "cupy (exact, dense)",
    }
    partial = plan_devices("auto", ORT_ONLY)
    assert partial.encoder_on_gpu and not (partial.faiss_gpu or partial.cupy_gpu)


def test_cuda_without_a_cuda_encoder_is_refused_with_the_fix() -> None:
    with pytest.raises(DeviceError, match=r"XC_DEVICE=cuda.*CUDAExecutionProvider.*gpu extra"):
        plan_devices("cuda", NO_GPU)
    with pytest.raises(ValueError, match="expected auto, cpu or cuda"):
        plan_devices("gpu", ALL_GPU)


def test_cuda_warns_about_the_parts_left_on_the_cpu(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("service.device.probe_capabilities", lambda: ORT_ONLY)
    with caplog.at_level(logging.INFO, logger="service.device"):
        plan = resolve_device("cuda")
    assert plan.encoder_on_gpu and not plan.faiss_gpu
    plan_line, warning = caplog.records
    assert plan_line.message == "device plan" and plan_line.encoder == CUDA_PROVIDER
    assert warning.levelno == logging.WARNING and warning.astra_index == "faiss-cpu"


def test_the_exact_copy_of_an_hnsw_index_finds_what_a_flat_scan_finds() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3000, 32)).astype(np.float32)
    queries = rng.standard_normal((20, 32)).astype(np.float32)
    params = {"M": 8, "ef_construction": 40, "ef_search": 16}
    hnsw = build_index(vectors, IndexSpec(type="hnsw", params=params))
    flat = faiss.IndexFlatIP(32)
    flat.add(vectors)
    copy = exact_copy(hnsw)
    assert isinstance(copy, faiss.IndexFlatIP) and copy.ntotal == 3000
    np.testing.assert_array_equal(copy.search(queries, 10)[1], flat.search(queries, 10)[1])
    # the shallow graph search misses some of them: the copy is what makes a GPU exact
    assert not np.array_equal(hnsw.search(queries, 10)[1], flat.search(queries, 10)[1])
    index = AnnIndex(hnsw, IndexSpec(type="hnsw", params=params))
    assert index.device_kind == "hnsw" and not index.on_gpu


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivf_flat", "ivf_pq", "pq4_scan"])
def test_every_index_type_gives_up_its_vectors_for_a_gpu_scan(index_type: str) -> None:
    vectors = np.random.default_rng(1).standard_normal((2000, 32)).astype(np.float32)
    spec = default_index_spec(2000, index_type, dim=32)
    stored = stored_vectors(build_index(vectors, spec))
    # exact, except IVF-PQ's re-ranking copy (fp16) and pq4_scan's (8 bits over each
    # dimension's range, about 8 wide here: steps of 0.03)
    tolerance = {"ivf_pq": 1e-2, "pq4_scan": 2e-2}.get(index_type, 0.0)
    np.testing.assert_allclose(stored, vectors, atol=tolerance)


def random_mach(reps: int, buckets: int, labels: int, seed: int = 0) -> MachDecoder:
    rng = np.random.default_rng(seed)
    return MachDecoder(rng.integers(0, buckets, size=(reps, labels)), buckets)


def log_probs(n: int, reps: int, buckets: int, seed: int = 1) -> np.ndarray:
    logits = np.random.default_rng(seed).standard_normal((n, reps, buckets)) * 3
    shifted = logits - logits.max(axis=2, keepdims=True)
    return (shifted - np.log(np.exp(shifted).sum(axis=2, keepdims=True))).astype(np.float32)


@pytest.mark.parametrize("chunk_values", [1 << 24, 4096])  # one chunk, and many merged chunks
def test_dense_decoding_matches_the_exact_cpu_decoder(
    monkeypatch: pytest.MonkeyPatch, chunk_values: int
) -> None:
    monkeypatch.setattr(mach_dense, "_CHUNK_VALUES", chunk_values)
    decoder = random_mach(reps=8, buckets=64, labels=20_000)
    dense = DenseMachDecoder(decoder, np)
    assert dense.nbytes == decoder.flat_rows.nbytes
    scores = log_probs(5, 8, 64)
    for k in (1, 10, 100):
        want_vals, want_ids = decoder.exact(scores, k)
        vals, ids = dense.exact(scores, k)
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_array_equal(vals, want_vals)  # same float32 sums, same order


def test_dense_decoding_pads_beyond_the_label_count_and_checks_its_input() -> None:
    decoder = random_mach(reps=4, buckets=8, labels=6)
    vals, ids = DenseMachDecoder(decoder, np).exact(log_probs(2, 4, 8), 9)
    assert ids.shape == (2, 9) and (ids[:, 6:] == -1).all() and np.isneginf(vals[:, 6:]).all()
    assert sorted(ids[0, :6]) == list(range(6))
    with pytest.raises(ValueError, match=r"scores: expected shape \[n, 4, 8\]"):
        DenseMachDecoder(decoder, np).exact(np.zeros((1, 4, 9), np.float32), 3)
    with pytest.raises(ValueError, match="k: must be"):
        DenseMachDecoder(decoder, np).exact(log_probs(1, 4, 8), 0)


def test_mach_on_an_array_module_decodes_exactly(demo_bundle_both: Path) -> None:
    """The model wiring the GPU uses (xp = CuPy there), here with NumPy: same heads, exact
    decoding over every label instead of the top-m buckets."""
    engine = SearchEngine.load(demo_bundle_both, device="cpu")
    manifest = read_manifest(demo_bundle_both)
    assert manifest.mach is not None
    dense = MachModel(
        bundle_dir=demo_bundle_both,
        spec=manifest.mach,
        num_labels=manifest.labels.count,
        idf=engine.bundle.mach_idf,
        xp=np,
    )
    queries = ["cordless drill 20v", "white interior paint", "garden hose 50 ft"]
    embeddings = engine.encoder.encode(queries)
    scores = dense.scores(embeddings, queries)
    vals, ids = dense.decode(scores, 10)
    want_vals, want_ids = dense.decoder.exact(scores.log_probs, 10)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(vals, want_vals)
    assert engine.mach is not None and engine.mach.dense is None  # the CPU path stays top-m
