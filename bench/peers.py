"""Extreme-classification peer libraries on sparse features, each run in its own subprocess.

The quality benchmark (`bench.quality`) compares our models with:

- Omikuji (label trees): Parabel-style = the library's defaults (balanced 2-means, depth 20,
  3 trees); Bonsai-style = shallow, wide, unbalanced trees (cluster_k 100, max_depth 3).
- napkinXC PLT (probabilistic label tree, hierarchical k-means tree, logistic nodes), defaults.
- PECOS XR-Linear (PIFA label embeddings, hierarchical k-means indexer, linear rankers),
  defaults.

libpecos pins numpy < 2, so the peers run in a separate interpreter (`.venv-peers`, see
`bench/requirements-peers.txt`): the harness writes the problem as sparse matrices
(`write_problem`), `run_peer` starts `python -m bench.peers` with that interpreter, and the
worker trains, saves and times the model and writes its rankings back. This module imports
only numpy, scipy and tqdm at the top (the libraries inside each adapter), never `training` or
`service`, and scores nothing: the harness scores every method with the project's metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from bench.provenance import versions
from bench.timing import rank_all, single_query_ms

REPO = Path(__file__).resolve().parents[1]
PEERS_PYTHON = REPO / ".venv-peers" / "bin" / "python"
TRAIN_FEATURES, TRAIN_LABELS, TEST_FEATURES = "train_X.npz", "train_Y.npz", "test_X.npz"
RANKED_FILE, RESULT_FILE = "ranked.npy", "result.json"
OMIKUJI_HP_FIELDS = (
    "n_trees",
    "max_depth",
    "min_branch_size",
    "cluster_k",
    "cluster_balanced",
    "linear_c",
    "linear_loss_type",
)


def directory_bytes(path: Path) -> int:
    """Total size of the files under `path` (a saved model)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def ranked_from_lists(
    predictions: Iterable[Sequence[Any]], num_points: int, depth: int
) -> np.ndarray:
    """Per-point label lists, best first (ids or `(id, score)` pairs), as [points, depth] ids.

    Rows shorter than `depth` are padded with -1 (no label); longer ones are cut.
    """
    ranked = np.full((num_points, depth), -1, dtype=np.int64)
    for i, predicted in enumerate(predictions):
        if i >= num_points:
            raise ValueError(f"more prediction lists than the {num_points} points")
        ids = [p[0] if isinstance(p, tuple) else p for p in predicted[:depth]]
        ranked[i, : len(ids)] = ids
    return ranked


def ranked_from_scores(scores: sp.csr_matrix, depth: int) -> np.ndarray:
    """The stored entries of each row of a sparse score matrix, highest first, as ids."""
    scores = sp.csr_matrix(scores)
    rows = []
    for i in range(scores.shape[0]):
        start, end = scores.indptr[i], scores.indptr[i + 1]
        order = np.argsort(-scores.data[start:end], kind="stable")
        rows.append(scores.indices[start:end][order].tolist())
    return ranked_from_lists(rows, scores.shape[0], depth)


def label_lists(labels: sp.csr_matrix) -> list[list[int]]:
    """The label ids of each row of a 0/1 label matrix."""
    labels = sp.csr_matrix(labels)
    return [
        labels.indices[labels.indptr[i] : labels.indptr[i + 1]].tolist()
        for i in range(labels.shape[0])
    ]


def write_xc_file(path: Path, features: sp.csr_matrix, labels: sp.csr_matrix) -> None:
    """Write points in the XC repository format Omikuji reads.

    Header `num_points num_features num_labels`, then one line per point: `l1,l2,... f:v f:v`.
    Every point needs a label; a point with no feature is written as its labels alone
    (Omikuji's parser rejects a trailing space).
    """
    features = sp.csr_matrix(features)
    if features.shape[0] != labels.shape[0]:
        raise ValueError(f"{features.shape[0]} feature rows but {labels.shape[0]} label rows")
    features.sort_indices()
    lines = [f"{features.shape[0]} {features.shape[1]} {labels.shape[1]}"]
    for i, point_labels in enumerate(label_lists(labels)):
        if not point_labels:
            raise ValueError(f"point {i} has no label")
        start, end = features.indptr[i], features.indptr[i + 1]
        pairs = " ".join(
            f"{j}:{v:.6g}"
            for j, v in zip(features.indices[start:end], features.data[start:end], strict=True)
        )
        label_text = ",".join(map(str, point_labels))
        lines.append(f"{label_text} {pairs}" if pairs else label_text)
    path.write_text("\n".join(lines) + "\n")


class Peer(ABC):
    """One peer model: trained on sparse features and 0/1 labels, saved under `workdir`."""

    distribution: str  # the PyPI name, for its version
    module: str  # the name it is imported by

    def __init__(self, workdir: Path, threads: int) -> None:
        self.workdir = workdir
        self.threads = threads

    @abstractmethod
    def fit(self, features: sp.csr_matrix, labels: sp.csr_matrix) -> None:
        """Train on [points, features] and [points, labels]."""

    @abstractmethod
    def predict(self, features: sp.csr_matrix, depth: int) -> np.ndarray:
        """Top-`depth` label ids per row, best first (-1 pads)."""

    @abstractmethod
    def save(self) -> Path:
        """Save the trained model under `workdir`; returns its directory (measured on disk)."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """The hyper-parameters used, as JSON values."""


class OmikujiPeer(Peer):
    """Omikuji label trees; `changes` are the hyper-parameters set away from its defaults."""

    distribution = module = "omikuji"
    beam_size = 10

    def __init__(self, workdir: Path, threads: int, changes: dict[str, Any]) -> None:
        super().__init__(workdir, threads)
        import omikuji

        self.omikuji = omikuji
        self.hyper_params = omikuji.Model.default_hyper_param()
        for name, value in changes.items():
            if not hasattr(self.hyper_params, name):
                raise ValueError(f"omikuji has no hyper-parameter {name!r}")
            setattr(self.hyper_params, name, value)
        self.model: Any = None

    def fit(self, features: sp.csr_matrix, labels: sp.csr_matrix) -> None:
        train_file = self.workdir / "omikuji_train.txt"
        write_xc_file(train_file, features, labels)
        self.model = self.omikuji.Model.train_on_data(
            str(train_file), self.hyper_params, n_threads=self.threads
        )

    def predict(self, features: sp.csr_matrix, depth: int) -> np.ndarray:
        features = sp.csr_matrix(features)
        predictions = []
        for i in range(features.shape[0]):
            row = features[i]
            pairs = list(zip(row.indices.tolist(), row.data.tolist(), strict=True))
            predictions.append(self.model.predict(pairs, beam_size=self.beam_size, top_k=depth))
        return ranked_from_lists(predictions, features.shape[0], depth)

    def save(self) -> Path:
        path = self.workdir / "omikuji_model"
        self.model.save(str(path))
        return path

    def settings(self) -> dict[str, Any]:
        values: dict[str, Any] = {"beam_size": self.beam_size, "threads": self.threads}
        for name in OMIKUJI_HP_FIELDS:
            value = getattr(self.hyper_params, name)
            if name == "linear_loss_type":
                value = self.omikuji.LossType(value).name.lower()
            elif isinstance(value, float):
                value = float(f"{value:.6g}")  # the library holds float32
            values[name] = value
        return values


class NapkinPlt(Peer):
    """napkinXC's probabilistic label tree with the library's default settings."""

    distribution = module = "napkinxc"

    def __init__(self, workdir: Path, threads: int) -> None:
        super().__init__(workdir, threads)
        from napkinxc.models import PLT

        self.path = workdir / "napkinxc_plt"
        self.model = PLT(str(self.path), threads=threads, seed=0)

    def fit(self, features: sp.csr_matrix, labels: sp.csr_matrix) -> None:
        self.model.fit(sp.csr_matrix(features), label_lists(labels))

    def predict(self, features: sp.csr_matrix, depth: int) -> np.ndarray:
        predicted = self.model.predict(sp.csr_matrix(features), top_k=depth)
        return ranked_from_lists(predicted, features.shape[0], depth)

    def save(self) -> Path:
        return self.path  # napkinXC writes the model to its output directory while training

    def settings(self) -> dict[str, Any]:
        params = self.model.get_params()
        return {k: v for k, v in params.items() if isinstance(v, (int, float, str, bool))}


class PecosXrLinear(Peer):
    """PECOS XR-Linear: PIFA label embeddings, hierarchical k-means, default linear rankers."""

    distribution, module = "libpecos", "pecos"

    def __init__(self, workdir: Path, threads: int) -> None:
        super().__init__(workdir, threads)
        self.model: Any = None

    def fit(self, features: sp.csr_matrix, labels: sp.csr_matrix) -> None:
        from pecos.xmc import Indexer, LabelEmbeddingFactory
        from pecos.xmc.xlinear.model import XLinearModel

        features = sp.csr_matrix(features, dtype=np.float32)
        labels = sp.csr_matrix(labels, dtype=np.float32)
        embedding = LabelEmbeddingFactory.create(labels, features, method="pifa")
        tree = Indexer.gen(embedding, indexer_type="hierarchicalkmeans", threads=self.threads)
        self.model = XLinearModel.train(features, labels, C=tree, threads=self.threads)

    def predict(self, features: sp.csr_matrix, depth: int) -> np.ndarray:
        features = sp.csr_matrix(features, dtype=np.float32)
        scores = self.model.predict(features, only_topk=depth, threads=self.threads)
        return ranked_from_scores(scores, depth)

    def save(self) -> Path:
        path = self.workdir / "pecos_model"
        self.model.save(str(path))
        return path

    def settings(self) -> dict[str, Any]:
        return {
            "label_embedding": "pifa",
            "indexer": "hierarchicalkmeans",
            "threads": self.threads,
            "other": "library defaults",
        }


@dataclass(frozen=True)
class PeerSpec:
    """A peer as the benchmark table names it, and how to build it."""

    name: str
    kind: type[Peer]
    options: tuple[tuple[str, Any], ...] = ()

    def create(self, workdir: Path, threads: int) -> Peer:
        """A fresh, untrained adapter."""
        return self.kind(workdir, threads, **dict(self.options))


# Keys are the worker's --method values.
PEERS: dict[str, PeerSpec] = {
    "omikuji-parabel": PeerSpec("Omikuji, Parabel-style", OmikujiPeer, (("changes", {}),)),
    "omikuji-bonsai": PeerSpec(
        "Omikuji, Bonsai-style",
        OmikujiPeer,
        (("changes", {"cluster_k": 100, "cluster_balanced": False, "max_depth": 3}),),
    ),
    "napkinxc-plt": PeerSpec("napkinXC PLT", NapkinPlt),
    "pecos-xrlinear": PeerSpec("PECOS XR-Linear", PecosXrLinear),
}


# ----------------------------------------------------------------------------- protocol


def write_problem(
    directory: Path, train_x: sp.csr_matrix, train_y: sp.csr_matrix, test_x: sp.csr_matrix
) -> Path:
    """Write a training set and the points to rank as the worker reads them."""
    if train_x.shape[0] != train_y.shape[0]:
        raise ValueError(f"{train_x.shape[0]} training rows but {train_y.shape[0]} label rows")
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"{train_x.shape[1]} training features but {test_x.shape[1]} test ones")
    directory.mkdir(parents=True, exist_ok=True)
    for name, matrix in (
        (TRAIN_FEATURES, train_x),
        (TRAIN_LABELS, train_y),
        (TEST_FEATURES, test_x),
    ):
        sp.save_npz(directory / name, sp.csr_matrix(matrix, dtype=np.float32))
    return directory


def default_python() -> Path:
    """The peers' interpreter: `.venv-peers` when it exists, else this one."""
    return PEERS_PYTHON if PEERS_PYTHON.exists() else Path(sys.executable)


def run_peer(
    method: str,
    problem: Path,
    out: Path,
    depth: int,
    single_queries: int,
    batch_size: int = 256,
    threads: int | None = None,
    python: Path | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Train, save and time one peer in a subprocess; returns (ranked, the worker's result).

    The worker's output (native training logs included) is kept off this process's stdout;
    a failure raises RuntimeError with its last lines, e.g. when the library is not installed
    for `python`.
    """
    if method not in PEERS:
        raise ValueError(f"unknown peer {method!r}; known: {', '.join(PEERS)}")
    command = [
        str(python or default_python()),
        "-m",
        "bench.peers",
        "--problem",
        str(problem),
        "--method",
        method,
        "--out",
        str(out),
        "--depth",
        str(depth),
        "--single-queries",
        str(single_queries),
        "--batch-size",
        str(batch_size),
        "--threads",
        str(threads or os.cpu_count() or 1),
    ]
    done = subprocess.run(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False
    )
    if done.returncode != 0:
        tail = "\n".join(done.stdout.strip().splitlines()[-5:])
        raise RuntimeError(f"peer {method} failed (exit {done.returncode}):\n{tail}")
    result = json.loads((out / RESULT_FILE).read_text())
    return np.load(out / RANKED_FILE), result


def train_and_time(
    peer: Peer,
    train_x: sp.csr_matrix,
    train_y: sp.csr_matrix,
    test_x: sp.csr_matrix,
    depth: int,
    single_queries: int,
    batch_size: int,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Fit, save and rank the test points (batched, then one at a time); returns the timings."""
    started = time.perf_counter()
    peer.fit(train_x, train_y)
    train_seconds = time.perf_counter() - started
    model_bytes = directory_bytes(peer.save())

    def rank(start: int, stop: int) -> np.ndarray:
        return peer.predict(test_x[start:stop], depth)

    ranked, batched_seconds = rank_all(rank, test_x.shape[0], depth, batch_size, "predict")
    single_ms = single_query_ms(rank, min(single_queries, test_x.shape[0]))
    return ranked, {
        "train_seconds": train_seconds,
        "batched_seconds": batched_seconds,
        "single_ms": single_ms,
        "model_bytes": model_bytes,
        "settings": peer.settings(),
        "versions": versions([peer.distribution, "numpy", "scipy"]),
    }


def main(argv: list[str] | None = None) -> int:
    """Worker: train one peer on a written problem, write its rankings and timings to --out."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problem", type=Path, required=True, help="from write_problem")
    parser.add_argument("--method", choices=sorted(PEERS), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--single-queries", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    train_x = sp.load_npz(args.problem / TRAIN_FEATURES).tocsr()
    train_y = sp.load_npz(args.problem / TRAIN_LABELS).tocsr()
    test_x = sp.load_npz(args.problem / TEST_FEATURES).tocsr()
    peer = PEERS[args.method].create(args.out, args.threads)
    ranked, result = train_and_time(
        peer, train_x, train_y, test_x, args.depth, args.single_queries, args.batch_size
    )
    np.save(args.out / RANKED_FILE, ranked)
    (args.out / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
