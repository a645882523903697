"""Maximum-inner-product search over classifier vectors with FAISS.

One definition of the index serves both sides: training builds it to mine hard negatives and
writes it into the bundle, the service reads it back. Small catalogs get an exact flat index,
mid-sized ones HNSW (whose search depth is raised to at least k on every call), then HNSW over
8-bit vectors, and the largest a scan of 4-bit PQ codes re-ranked against 8-bit vectors;
IVF-Flat and IVF-PQ (re-ranked against an fp16 copy) are there to be asked for: see
`auto_index_type` for the rule and the figures behind it (`bench/scale.py`, BENCHMARKS.md
"Index choice by catalog size").
"""

from __future__ import annotations

import threading
from pathlib import Path

import faiss
import numpy as np

from service.bundle import BundleError, IndexSpec

# Up to this many labels an exact scan is both fast enough and free of recall loss.
EXACT_MAX_LABELS = 20_000
# Above this many, HNSW keeps its vectors in 8 bits (hnsw_sq8): at 1M labels it reached the
# recall of the fp32 graph in less than half the time (0.964 in 1.3 ms against 0.969 in 3.2 ms
# at efSearch 256), in 656 bytes a label against 1,808, and built in 10 min against 24.
HNSW_FP32_MAX_LABELS = 1_000_000
# Above this many, the 8-bit graph no longer reaches recall@10 0.95 (0.958 in 6.3 ms at 2M, 0.871
# in 8.2 ms at 5M at efSearch 1024) and takes an hour and more to build on 2 cores (63 min at
# 5M); the 4-bit PQ scan does (0.962 in 16 ms at 5M) and builds in under a minute.
HNSW_SQ8_MAX_LABELS = 2_000_000
# FAISS's GPU k-selection handles k up to this (GPU_MAX_SELECTION_K).
GPU_MAX_K = 2048
# Vectors beyond this many fp32 bytes are held as fp16 on the GPU (half the memory, scores
# within fp16 rounding); 10^7 x 384 fp32 vectors (14.3 GiB) stay fp32 on an 80 GB H100.
GPU_FP16_BYTES = 16 << 30
HNSW_DEFAULTS = {"M": 32, "ef_construction": 200, "ef_search": 128}
# HNSW efSearch by catalog size, (up to this many labels, efSearch): the smallest that reached
# recall@10 >= 0.95 at the sizes bench/scale.py measured (128 gives 0.997 at 100K, 256 0.964 at
# 1M, 1024 0.958 at 2M). Beyond 2M nothing measured reaches 0.95 within 10 ms on this synthetic
# space: the last row is the deepest search that stays near that budget (0.871 in 8.2 ms
# measured at 5M; fitted: at most about 0.83 in 9.5 ms at 10M, BENCHMARKS.md "Index choice by
# catalog size").
HNSW_EF_SEARCH_BY_SIZE = ((250_000, 128), (1_000_000, 256), (2_000_000, 1024))
IVF_NPROBE = 64
# IVF-PQ: nbits-bit codes of m sub-vectors of PQ_DIMS_PER_CODE dims; refine_k·k candidates
# are re-ranked against an fp16 copy of the vectors (refine_k = 0: PQ scores only).
PQ_DEFAULTS = {"nbits": 8, "refine_k": 16}
PQ_DIMS_PER_CODE = 8
# k-means for the IVF lists runs on this many points per list (FAISS asks for at least 39).
IVF_TRAIN_POINTS_PER_LIST = 40
# Vectors are converted to float32 and added this many at a time (float16 or memory-mapped
# inputs never need a full float32 copy).
ADD_CHUNK = 1 << 18
# hnsw_sq8: the same graph over vectors stored as 8 bits per dimension (FAISS IndexHNSWSQ,
# QT_8bit: a per-dimension [min, max] range learnt on a sample of SQ_TRAIN_POINTS vectors), a
# quarter of the fp32 vectors' bytes for a small loss of recall.
SQ_TRAIN_POINTS = 100_000
# pq4_scan: every label's 4-bit PQ code is scanned (FAISS IndexPQFastScan, m sub-vectors of
# about PQ4_DIMS_PER_CODE dims, 16 centroids each: m / 2 bytes a label, scored from lookup tables
# held in SIMD registers), and refine_k·k candidates are re-ranked against 8-bit vectors (as
# hnsw_sq8 holds them). No graph or cell can miss a label, so recall does not fall with K the
# way it does for HNSW and IVF on the synthetic space; the cost is a scan that grows with K
# (24 ms a query at 10M on one core here, 416 bytes a label with the 8-bit copy) and a build
# of a minute instead of hours.
PQ4_DIMS_PER_CODE = 6
PQ4_BITS = 4
# refine_k by catalog size, (up to this many labels, refine_k): the smallest that reached
# recall@10 >= 0.95 where bench/scale.py measured it (0.968 at 100K, 0.959 at 1M, 0.979 at 2M,
# 0.962 at 5M, 0.959 at 10M in 30 ms); beyond 10M unmeasured, the last row holds.
PQ4_REFINE_K_BY_SIZE = ((100_000, 16), (1_000_000, 64), (5_000_000, 256), (10_000_000, 512))
INDEX_TYPES = ("flat", "hnsw", "hnsw_sq8", "ivf_flat", "ivf_pq", "pq4_scan")
HNSW_TYPES = ("hnsw", "hnsw_sq8")
IVF_TYPES = ("ivf_flat", "ivf_pq")


def auto_index_type(num_labels: int) -> str:
    """The index type for a catalog of `num_labels` labels: one that reached recall@10 0.95 at
    that size where bench/scale.py measured it, a graph as long as one does.

    From `bench/scale.py` (d = 384, synthetic label spaces fitted to the Home Depot vectors, one
    thread per query): an exact scan costs about 1.1 ms a query at 20K labels and grows
    linearly (7 ms at 100K, 65 ms at 1M). HNSW is the fastest index at every recall level
    measured up to 1M: recall@10 0.997 in 1.1 ms at 100K, 0.969 in 3.2 ms at 1M (efSearch 256,
    see `hnsw_ef_search`), where IVF-Flat needs 19 ms for 0.87 and IVF-PQ tops out near 0.8.
    From 1M labels the graph over 8-bit vectors is as good for less than half the time and
    memory, up to 2M (0.958 in 6.3 ms). Beyond, a graph's recall falls with K on this space
    (0.871 at 5M in 8.2 ms, at most about 0.83 fitted at 10M) while its build grows to hours;
    the scan of 4-bit PQ codes reads every label, so it keeps recall@10 >= 0.95 (0.962 in 16 ms
    at 5M, 0.959 in 30 ms at 10M, see `pq4_refine_k`) at a cost that grows linearly with K, and
    builds in under a minute (59 s at 10M, in 3.9 GiB). So: exact up to EXACT_MAX_LABELS, HNSW
    up to HNSW_FP32_MAX_LABELS, hnsw_sq8 up to HNSW_SQ8_MAX_LABELS, pq4_scan beyond. Where
    latency matters more than recall beyond 2M, `--index hnsw_sq8` keeps the graph.
    """
    if num_labels <= EXACT_MAX_LABELS:
        return "flat"
    if num_labels <= HNSW_FP32_MAX_LABELS:
        return "hnsw"
    return "hnsw_sq8" if num_labels <= HNSW_SQ8_MAX_LABELS else "pq4_scan"


def _by_size(table: tuple[tuple[int, int], ...], num_labels: int) -> int:
    """The value of the first (up to this many labels, value) row that holds `num_labels`; the
    last row's beyond them all."""
    return next((value for most, value in table if num_labels <= most), table[-1][1])


def hnsw_ef_search(num_labels: int) -> int:
    """HNSW efSearch for a catalog of `num_labels`: recall@10 >= 0.95 as the catalog grows."""
    return _by_size(HNSW_EF_SEARCH_BY_SIZE, num_labels)


def ivf_lists(num_labels: int) -> int:
    """IVF list count: the power of two nearest 2·sqrt(K), and at most K."""
    nearest = 1 << max(0, round(np.log2(2.0 * np.sqrt(max(num_labels, 1)))))
    return max(1, min(nearest, num_labels))


def pq_codes(dim: int, dims_per_code: int = PQ_DIMS_PER_CODE) -> int:
    """PQ sub-vectors m: the largest divisor of `dim` that is at most dim / dims_per_code."""
    return max(m for m in range(1, max(1, dim // dims_per_code) + 1) if dim % m == 0)


def pq4_refine_k(num_labels: int) -> int:
    """pq4_scan's re-ranking factor for a catalog of `num_labels`: recall@10 >= 0.95."""
    return _by_size(PQ4_REFINE_K_BY_SIZE, num_labels)


def default_index_spec(num_labels: int, index_type: str = "auto", dim: int = 384) -> IndexSpec:
    """The index the service should use for a catalog of `num_labels` vectors of `dim` (or the
    type asked for, with its default parameters)."""
    if index_type == "auto":
        index_type = auto_index_type(num_labels)
    if index_type == "flat":
        return IndexSpec(type="flat", params={})
    if index_type in HNSW_TYPES:
        return IndexSpec(
            type=index_type, params={**HNSW_DEFAULTS, "ef_search": hnsw_ef_search(num_labels)}
        )
    if index_type in IVF_TYPES:
        nlist = ivf_lists(num_labels)
        params = {"nlist": nlist, "nprobe": min(IVF_NPROBE, nlist)}
        if index_type == "ivf_pq":
            params |= {"m": pq_codes(dim), **PQ_DEFAULTS}
        return IndexSpec(type=index_type, params=params)
    if index_type == "pq4_scan":
        params = {"m": pq_codes(dim, PQ4_DIMS_PER_CODE), "refine_k": pq4_refine_k(num_labels)}
        return IndexSpec(type=index_type, params=params)
    raise ValueError(f"index type {index_type!r}: expected auto or one of {', '.join(INDEX_TYPES)}")


def _empty_index(dim: int, spec: IndexSpec) -> faiss.Index:
    params = spec.params
    if spec.type == "flat":
        return faiss.IndexFlatIP(dim)
    if spec.type in HNSW_TYPES:
        if spec.type == "hnsw":
            index = faiss.IndexHNSWFlat(dim, params["M"], faiss.METRIC_INNER_PRODUCT)
        else:
            sq8 = faiss.ScalarQuantizer.QT_8bit
            index = faiss.IndexHNSWSQ(dim, sq8, params["M"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params["ef_construction"]
        index.hnsw.efSearch = params["ef_search"]
        return index
    if spec.type == "pq4_scan":
        codes = faiss.IndexPQFastScan(dim, params["m"], PQ4_BITS, faiss.METRIC_INNER_PRODUCT)
        return faiss.IndexRefine(codes, _scalar_quantised(dim, faiss.ScalarQuantizer.QT_8bit))
    quantizer = faiss.IndexFlatIP(dim)
    if spec.type == "ivf_flat":
        return faiss.IndexIVFFlat(quantizer, dim, params["nlist"], faiss.METRIC_INNER_PRODUCT)
    index = faiss.IndexIVFPQ(
        quantizer, dim, params["nlist"], params["m"], params["nbits"], faiss.METRIC_INNER_PRODUCT
    )
    if not params["refine_k"]:
        return index
    return faiss.IndexRefine(index, _scalar_quantised(dim, faiss.ScalarQuantizer.QT_fp16))


def code_centroids(spec: IndexSpec) -> int:
    """How many centroids a sub-vector's PQ code learns (0 for types without PQ codes): k-means
    needs at least that many vectors."""
    if spec.type == "pq4_scan":
        return 1 << PQ4_BITS
    return 1 << spec.params["nbits"] if spec.type == "ivf_pq" else 0


def _scalar_quantised(dim: int, qtype: int) -> faiss.IndexScalarQuantizer:
    """The vectors a re-ranking step reads, each dimension stored as `qtype` (fp16 for IVF-PQ;
    8 bits over a range learnt per dimension for pq4_scan)."""
    return faiss.IndexScalarQuantizer(dim, qtype, faiss.METRIC_INNER_PRODUCT)


def build_index(vectors: np.ndarray, spec: IndexSpec, seed: int = 0) -> faiss.Index:
    """Build an inner-product index over `vectors` [n, d] (float32, or float16 / memory-mapped:
    they are converted in chunks) as `spec` describes. IVF lists are trained by k-means on a
    random sample of IVF_TRAIN_POINTS_PER_LIST·nlist vectors, the 8-bit quantiser's ranges (and
    pq4_scan's 16 centroids a sub-vector) on SQ_TRAIN_POINTS (seeded: the same input gives the
    same index)."""
    num_vectors, dim = vectors.shape
    centroids = code_centroids(spec)
    if num_vectors < centroids:
        raise ValueError(
            f"index type {spec.type}: needs at least {centroids} vectors to learn its codes' "
            f"{centroids} centroids, got {num_vectors}; use flat or hnsw"
        )
    index = _empty_index(dim, spec)
    if not index.is_trained:
        if spec.type in IVF_TYPES:
            wanted = IVF_TRAIN_POINTS_PER_LIST * spec.params["nlist"]
        else:
            wanted = SQ_TRAIN_POINTS
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(num_vectors, min(num_vectors, wanted), replace=False))
        index.train(np.ascontiguousarray(vectors[sample], dtype=np.float32))
    for start in range(0, num_vectors, ADD_CHUNK):
        index.add(np.ascontiguousarray(vectors[start : start + ADD_CHUNK], dtype=np.float32))
    return index


def ivf_search_parameters(params: dict[str, int]) -> faiss.SearchParameters:
    """Search parameters of an IVF spec: nprobe lists, and refine_k·k re-ranked candidates."""
    ivf = faiss.SearchParametersIVF(nprobe=params["nprobe"])
    if not params.get("refine_k"):
        return ivf
    return faiss.IndexRefineSearchParameters(k_factor=params["refine_k"], base_index_params=ivf)


def pq4_search_parameters(params: dict[str, int], effort: float) -> faiss.SearchParameters:
    """Search parameters of a pq4_scan spec: refine_k·k candidates re-ranked (scaled by
    `effort`, at least k: the scan itself always reads every code)."""
    return faiss.IndexRefineSearchParameters(k_factor=max(1.0, params["refine_k"] * effort))


def stored_vectors(index: faiss.Index) -> np.ndarray:
    """The vectors an index holds, float32 [n, d]: exact for flat and HNSW, decoded from 8 bits
    for hnsw_sq8 and pq4_scan, the fp16 re-ranking copy for IVF-PQ with refinement, the PQ
    reconstruction (lossy) without it."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and not isinstance(index, faiss.IndexRefine):
        ivf.make_direct_map()  # IVF lists are addressed by list, not by id, until asked
    return index.reconstruct_n(0, index.ntotal)


def exact_copy(index: faiss.Index) -> faiss.IndexFlatIP:
    """An exact inner-product index over the vectors `index` stores (see `stored_vectors`)."""
    exact = faiss.IndexFlatIP(index.d)
    exact.add(stored_vectors(index))
    return exact


class AnnIndex:
    """A loaded index: `search` returns the top-k labels by inner product, best first.

    `to_gpu` moves it to a CUDA device (faiss-gpu) as an exact scan of its vectors, whatever its
    type: HNSW and the re-ranked IVF-PQ have no GPU form, and a brute-force scan of a catalog
    that fits device memory (10^7 x 384 floats = 15 GB; stored as fp16 above GPU_FP16_BYTES) is
    faster there than a graph walk on the CPU, and loses no recall.
    """

    def __init__(self, index: faiss.Index, spec: IndexSpec) -> None:
        self.index = index
        self.spec = spec
        self.gpu: _GpuCopy | None = None

    @property
    def on_gpu(self) -> bool:
        """Whether searches run on a CUDA device."""
        return self.gpu is not None

    @property
    def device_kind(self) -> str:
        """The index as it runs here, e.g. `hnsw` or `flat on GPU 0 (from hnsw)`."""
        if not self.on_gpu:
            return self.spec.type
        return "flat on GPU 0" + (f" (from {self.spec.type})" if self.spec.type != "flat" else "")

    def to_gpu(self) -> None:
        """Search on GPU 0 from now on (needs faiss-gpu and a device); the host index stays
        for k beyond the GPU's selection limit."""
        source = self.index if self.spec.type == "flat" else exact_copy(self.index)
        options = faiss.GpuClonerOptions()
        options.useFloat16 = source.ntotal * source.d * 4 > GPU_FP16_BYTES
        resources = faiss.StandardGpuResources()
        self.gpu = _GpuCopy(faiss.index_cpu_to_gpu(resources, 0, source, options), resources)

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

    def search(
        self, queries: np.ndarray, k: int, effort: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, label ids) per query row; ids are -1 where fewer than k exist.

        `effort` < 1 scales HNSW's efSearch and pq4_scan's re-ranking down (never below k), for
        callers that only need candidates they rescore themselves; the other types ignore it.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(k, self.index.ntotal)
        if self.gpu is not None and k <= GPU_MAX_K:
            return self.gpu.search(queries, k)
        if self.spec.type in HNSW_TYPES:
            ef_search = int(self.spec.params["ef_search"] * effort)
            params = faiss.SearchParametersHNSW(efSearch=max(ef_search, k))
            return self.index.search(queries, k, params=params)
        if self.spec.type in IVF_TYPES:
            return self.index.search(queries, k, params=ivf_search_parameters(self.spec.params))
        if self.spec.type == "pq4_scan":
            return self._pq4_search(queries, k, effort)
        return self.index.search(queries, k)

    def _pq4_search(
        self, queries: np.ndarray, k: int, effort: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """pq4_scan's search. FAISS's 4-bit scan never returns the labels tied at a query's
        lowest quantised score (about 6 % of a catalog of 1,000 when asked for all of them),
        so where its candidates run short, as when k·refine_k nears the catalog's size, the
        8-bit vectors are scanned instead: the scores re-ranking would have given, none lost."""
        params = pq4_search_parameters(self.spec.params, effort)
        scores, ids = self.index.search(queries, k, params=params)
        if (ids < 0).any():
            return self.index.refine_index.search(queries, k)
        return scores, ids


class _GpuCopy:
    """An index cloned to a GPU with its resources (streams, scratch memory), which FAISS does
    not let threads share: searches take turns, and the device runs them one after another
    anyway."""

    def __init__(self, index: faiss.Index, resources: object) -> None:
        self.index = index
        self.resources = resources  # must outlive the index
        self.lock = threading.Lock()

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        with self.lock:
            return self.index.search(queries, k)
