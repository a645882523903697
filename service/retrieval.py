"""Maximum-inner-product search over classifier vectors with FAISS.

One definition of the index serves both sides: training builds it to mine hard negatives and
writes it into the bundle, the service reads it back. Small catalogs get an exact flat index;
larger ones get HNSW, whose search depth is raised to at least k on every call.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from service.bundle import BundleError, IndexSpec

# Up to this many labels an exact scan is both fast enough and free of recall loss.
EXACT_MAX_LABELS = 20_000
HNSW_DEFAULTS = {"M": 32, "ef_construction": 200, "ef_search": 128}


def default_index_spec(num_labels: int, index_type: str = "auto") -> IndexSpec:
    """The index the service should use for a catalog of `num_labels` (or the one asked for)."""
    if index_type == "auto":
        index_type = "flat" if num_labels <= EXACT_MAX_LABELS else "hnsw"
    if index_type == "flat":
        return IndexSpec(type="flat", params={})
    if index_type == "hnsw":
        return IndexSpec(type="hnsw", params=dict(HNSW_DEFAULTS))
    raise ValueError(f"index type {index_type!r}: expected auto, flat or hnsw")


def build_index(vectors: np.ndarray, spec: IndexSpec) -> faiss.Index:
    """Build an inner-product index over float32 `vectors` [n, d] as `spec` describes."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = vectors.shape[1]
    if spec.type == "flat":
        index = faiss.IndexFlatIP(dim)
    else:
        index = faiss.IndexHNSWFlat(dim, spec.params["M"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = spec.params["ef_construction"]
        index.hnsw.efSearch = spec.params["ef_search"]
    index.add(vectors)
    return index


class AnnIndex:
    """A loaded index: `search` returns the top-k labels by inner product, best first."""

    def __init__(self, index: faiss.Index, spec: IndexSpec) -> None:
        self.index = index
        self.spec = spec

    @classmethod
    def read(cls, path: Path, spec: IndexSpec, num_labels: int, dim: int) -> AnnIndex:
        """Read an index file and check it matches the label count and dimension."""
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise BundleError(f"{path}: FAISS cannot read it ({exc})") from exc
        if index.ntotal != num_labels or index.d != dim:
            raise BundleError(
                f"{path}: holds {index.ntotal} vectors of dim {index.d}, "
                f"expected {num_labels} of dim {dim}"
            )
        return cls(index, spec)

    def write(self, path: Path) -> None:
        """Serialise the index (into a bundle)."""
        faiss.write_index(self.index, str(path))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, label ids) per query row; ids are -1 where fewer than k exist."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(k, self.index.ntotal)
        if self.spec.type == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(self.spec.params["ef_search"], k))
            return self.index.search(queries, k, params=params)
        return self.index.search(queries, k)
