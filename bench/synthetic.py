"""Synthetic label spaces for the index benchmarks: unit vectors shaped like real ones.

Uniform random points in 384-d are a poor stand-in for classifier vectors: every point is
nearly orthogonal to every other, so nearest neighbours barely stand out and ANN recall looks
meaningless. The generator below mixes the two kinds of structure real embeddings have, and was
fitted (by hand, six parameters) to the trained Home Depot ASTRA classifiers (K = 54,667) and
their 1,046 encoded dev queries, on the same measurements the benchmark makes (`bench.scale
--calibrate` repeats that comparison):

- a **category tree**: 6 levels of nodes with branching 4 (K/4096 top nodes ... K/4 parents), a
  child = its parent + Gaussian noise, labels hang off the last level (about 4 per parent, at
  random). The variance added per level is TREE_LEVEL_VARIANCE, then LABEL_VARIANCE per label.
  This gives the near-duplicates and the steep nearest-neighbour similarity profile of product
  catalogs (variants, sizes, colours of one product);
- a **continuous attribute manifold**: a random Fourier-feature map of a LATENT_DIM-dimensional
  Gaussian latent to the full space, so that neighbourhoods run across cluster boundaries (the
  thing that makes IVF's cells and HNSW's graph miss neighbours on real data).

All Gaussian noise follows a power-law spectrum (variance of the i-th axis ∝ i^-SPECTRUM_ALPHA,
as fitted to the real vectors' covariance), the sum is weighted TREE_WEIGHT : 1 - TREE_WEIGHT,
turned by one random rotation and normalised to unit length. Queries are not copies of labels:
a query takes a random label's tree parent plus QUERY_VARIANCE of noise and that label's latent
plus N(0, QUERY_LATENT_NOISE²), so (like encoded queries against trained label vectors) it is
farther from its nearest labels than labels are from each other.

On the calibration set (BENCHMARKS.md, "Index choice by catalog size", has the generated
table) the synthetic space is about as hard as the real one for HNSW and harder for IVF:
recall@10 of HNSW at efSearch 16 / 32 is 0.92 / 0.98 against 0.94 / 0.97 on the real vectors,
of IVF-Flat (512 lists) at nprobe 4 / 64 0.69 / 0.88 against 0.76 / 0.95. So the IVF figures at
large K lean pessimistic. When the parameters were fitted, the mean similarity of a query to
its 1st / 10th nearest label was 0.71 / 0.43 against 0.61 / 0.48 on the real vectors.

As K grows the tree keeps its local density (a catalog grows by adding categories), and so does
the manifold: the latent's spread grows as (K / CALIBRATION_LABELS)^(1 / LATENT_DIM), so a
query has as many labels close in attributes at every K. (Without it the latent fills up and
queries meet more near-twins from other categories: at 10^6 labels IVF-Flat's recall@10 at a
fixed setting came out about 0.04 lower.) What still makes large K harder is real: the vectors'
effective dimension is low (the spectrum's participation ratio is about 86), so unrelated labels
have similarities spread around 0 with a standard deviation of about 0.1, and among 10^6 of
them the luckiest reach the similarity of a query's true 10th neighbour. Those labels are
scattered over the whole space, where no index looks for them. Nothing beyond the calibration
size can be checked against real vectors here; treat the K = 10^6 and 10^7 recall figures as
those of a catalog with Home Depot's local structure and spectrum, not as a promise.

Generation runs in chunks, and vectors can be stored as float16, so that 10^7 labels fit in
memory.
"""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

TREE_BRANCHING = 4
TREE_LEVEL_VARIANCE = (0.05, 0.1, 0.1, 0.15, 0.15, 0.2)
LABEL_VARIANCE = 0.1
QUERY_VARIANCE = 0.5
TREE_WEIGHT = 0.5
LATENT_DIM = 7
FOURIER_FEATURES = 1024
QUERY_LATENT_NOISE = 0.5
SPECTRUM_ALPHA = 0.6
# The label count the parameters were fitted at (Home Depot's catalog).
CALIBRATION_LABELS = 54_667
CHUNK = 1 << 17


def power_law_scales(dim: int, alpha: float = SPECTRUM_ALPHA) -> np.ndarray:
    """Per-axis standard deviations float32 [dim] whose variances ∝ i^-alpha and sum to 1."""
    variance = np.arange(1, dim + 1, dtype=np.float64) ** -alpha
    return np.sqrt(variance / variance.sum()).astype(np.float32)


class _Generator:
    """The random draws shared by labels and queries (tree nodes, latents, maps, rotation)."""

    def __init__(self, num_labels: int, dim: int, seed: int) -> None:
        self.dim = dim
        self.seed = seed
        self.scales = power_law_scales(dim)
        rng = np.random.default_rng([seed, 0])
        self.rotation = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)
        self.frequencies = rng.standard_normal((LATENT_DIM, FOURIER_FEATURES), dtype=np.float32)
        self.phases = rng.uniform(-np.pi, np.pi, FOURIER_FEATURES).astype(np.float32)
        # E[cos²] = 1/2, so this makes the manifold's per-axis variance scales².
        self.feature_map = rng.standard_normal((FOURIER_FEATURES, dim), dtype=np.float32)
        self.feature_map *= self.scales * np.float32(np.sqrt(2.0 / FOURIER_FEATURES))
        spread = (num_labels / CALIBRATION_LABELS) ** (1.0 / LATENT_DIM)
        self.latents = rng.standard_normal((num_labels, LATENT_DIM), dtype=np.float32)
        self.latents *= np.float32(spread)
        self.tree_scale = np.float32(np.sqrt(TREE_WEIGHT / sum(TREE_LEVEL_VARIANCE)))
        self.manifold_scale = np.float32(np.sqrt(1.0 - TREE_WEIGHT))
        self.parents = self._tree(num_labels, rng)
        self.label_parents = rng.integers(0, len(self.parents), num_labels).astype(np.int32)

    def _noise(self, rng: np.random.Generator, rows: int, variance: float) -> np.ndarray:
        noise = rng.standard_normal((rows, self.dim), dtype=np.float32)
        noise *= self.scales * np.float32(np.sqrt(variance))
        return noise

    def _tree(self, num_labels: int, rng: np.random.Generator) -> np.ndarray:
        """The last level of tree nodes, float16 [about K/4, dim] (unrotated)."""
        nodes = np.zeros((1, self.dim), dtype=np.float16)
        depth = len(TREE_LEVEL_VARIANCE)
        for level, variance in enumerate(TREE_LEVEL_VARIANCE):
            count = max(1, num_labels // TREE_BRANCHING ** (depth - level))
            parent = rng.integers(0, len(nodes), count)
            children = np.empty((count, self.dim), dtype=np.float16)
            for start in range(0, count, CHUNK):
                chunk = parent[start : start + CHUNK]
                block = nodes[chunk].astype(np.float32) + self._noise(rng, len(chunk), variance)
                children[start : start + CHUNK] = block
            nodes = children
        return nodes

    def points(
        self, parents: np.ndarray, latents: np.ndarray, variance: float, rng: np.random.Generator
    ) -> np.ndarray:
        """Unit vectors float32 [n, dim]: the tree part around `parents` (nodes of the last
        level, plus noise of `variance`) and the manifold part at `latents`."""
        tree = self.parents[parents].astype(np.float32) + self._noise(rng, len(parents), variance)
        manifold = np.cos(latents @ self.frequencies + self.phases) @ self.feature_map
        mixed = (self.tree_scale * tree + self.manifold_scale * manifold) @ self.rotation
        mixed /= np.linalg.norm(mixed, axis=1, keepdims=True)
        return mixed


def synthetic_label_space(
    num_labels: int,
    num_queries: int,
    dim: int = 384,
    seed: int = 0,
    dtype: type = np.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """Label vectors [num_labels, dim] (as `dtype`) and query vectors float32 [num_queries, dim],
    all of unit length, drawn as the module doc describes. Deterministic for a given seed."""
    gen = _Generator(num_labels, dim, seed)
    labels = np.empty((num_labels, dim), dtype=dtype)
    starts = range(0, num_labels, CHUNK)
    for chunk_id, start in enumerate(tqdm(starts, desc=f"labels K={num_labels:,}", leave=False)):
        stop = min(start + CHUNK, num_labels)
        rng = np.random.default_rng([seed, 1, chunk_id])
        labels[start:stop] = gen.points(
            gen.label_parents[start:stop], gen.latents[start:stop], LABEL_VARIANCE, rng
        )
    rng = np.random.default_rng([seed, 2])
    source = rng.integers(0, num_labels, num_queries)
    latents = gen.latents[source] + QUERY_LATENT_NOISE * rng.standard_normal(
        (num_queries, LATENT_DIM), dtype=np.float32
    )
    queries = gen.points(gen.label_parents[source], latents, QUERY_VARIANCE, rng)
    return labels, queries
