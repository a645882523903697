"""FAISS retrieval: the index-choice rule, HNSW recall against exact search, k edge cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.astra.index import EXACT_MAX_LABELS, AnnIndex, build_index, default_index_spec
from service.bundle import BundleError, IndexSpec


def unit_vectors(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_exact_for_small_catalogs_hnsw_above() -> None:
    assert default_index_spec(EXACT_MAX_LABELS).type == "flat"
    assert default_index_spec(EXACT_MAX_LABELS + 1).type == "hnsw"
    assert default_index_spec(10, "hnsw").params["M"] == 32
    with pytest.raises(ValueError, match="expected auto or one of flat, hnsw"):
        default_index_spec(10, "ivf")


def test_flat_index_is_exact_maximum_inner_product() -> None:
    labels, queries = unit_vectors(500, 16, 0), unit_vectors(20, 16, 1)
    index = AnnIndex(build_index(labels, default_index_spec(500)), default_index_spec(500))
    scores, ids = index.search(queries, 5)
    expected = np.argsort(-(queries @ labels.T), axis=1)[:, :5]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ labels.T, ids, 1), rtol=1e-5)


def test_hnsw_recall_against_exact_and_deep_k() -> None:
    labels, queries = unit_vectors(5000, 32, 2), unit_vectors(50, 32, 3)
    spec = default_index_spec(5000, "hnsw")
    index = AnnIndex(build_index(labels, spec), spec)
    for k in (10, 300):  # k above ef_search: the search depth is raised to k
        _, ids = index.search(queries, k)
        exact = np.argsort(-(queries @ labels.T), axis=1)[:, :k]
        recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, exact, strict=True)])
        assert recall >= 0.95, (k, recall)
        assert (ids >= 0).all()


def test_k_larger_than_the_catalog_returns_every_label() -> None:
    labels = unit_vectors(7, 8, 4)
    index = AnnIndex(build_index(labels, IndexSpec(type="flat")), IndexSpec(type="flat"))
    _, ids = index.search(labels[:2], 50)
    assert ids.shape == (2, 7) and sorted(ids[0]) == list(range(7))


@pytest.mark.parametrize(("index_type", "fewest"), [("pq4_scan", 16), ("ivf_pq", 256)])
def test_pq_codes_refuse_a_catalog_smaller_than_their_centroids(
    index_type: str, fewest: int
) -> None:
    """k-means cannot learn 16 (4-bit) or 256 (8-bit) centroids from fewer vectors: the build
    says so and what to use instead, and from that many vectors on it builds."""
    spec = default_index_spec(fewest - 1, index_type, dim=8)
    with pytest.raises(ValueError, match=f"needs at least {fewest} vectors.*use flat or hnsw"):
        build_index(unit_vectors(fewest - 1, 8, 6), spec)
    labels = unit_vectors(fewest, 8, 6)
    index = AnnIndex(build_index(labels, spec), spec)
    _, ids = index.search(labels[:2], 50)  # k beyond the re-ranked candidates: all labels
    assert (ids >= 0).all() and len(set(ids[0])) == min(50, fewest)


def test_round_trip_and_mismatch(tmp_path: Path) -> None:
    labels = unit_vectors(30, 8, 5)
    spec = IndexSpec(type="flat")
    AnnIndex(build_index(labels, spec), spec).write(tmp_path / "index.faiss")
    loaded = AnnIndex.read(tmp_path / "index.faiss", spec, 30, 8)
    assert loaded.index.ntotal == 30
    with pytest.raises(BundleError, match=r"index\.faiss: holds 30 vectors of dim 8"):
        AnnIndex.read(tmp_path / "index.faiss", spec, 31, 8)
    (tmp_path / "bad.faiss").write_bytes(b"not an index")
    with pytest.raises(BundleError, match=r"bad\.faiss: FAISS cannot read it"):
        AnnIndex.read(tmp_path / "bad.faiss", spec, 30, 8)
