"""Retrieval quality of our models against BM25, the untrained encoder and XMC peer libraries.

    python -m bench.quality --dataset homedepot --dataset cooking [--build-missing]

One harness for every method, on the same `EvalSet` (the points of the evaluation split with a
positive label) and scored by `training.ranking_metrics` (one implementation, same propensities):

- ours, through the served path (`service.search.engine.SearchEngine`: ONNX encoder, FAISS index,
  MACH decoding): ASTRA (with its lexical ranker, and with the index alone), MACH and the
  hybrid of one bundle, and the untrained encoder (`--epochs 0`, text-initialised vectors) as
  the zero-shot baseline, alone and with the same lexical ranker. Bundles are scored, not
  trained: each must have been trained on the benchmark's training split (checked against its
  manifest); `--build-missing` builds absent ones with the recorded `python -m training train`
  commands.
- BM25 over the label texts (bm25s, Lucene variant, English Snowball stemming).
- peers on TF-IDF features (scikit-learn word 1-2-grams, fitted on the training texts only):
  Omikuji Parabel- and Bonsai-style, napkinXC PLT, PECOS XR-Linear (`bench.peers`, run in
  their own interpreter). They learn only the labels that have a training positive.

Per method: the standard metrics, training seconds, ms per query batched (all points, batches
of 256) and single (median of the first N points ranked one at a time), and model size on disk.
Writes `bench/results/quality_<dataset>.json` (with machine, date, versions and command) and a
PNG of grouped bars; `python -m bench.report` turns the JSON into the BENCHMARKS.md tables.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bm25s
import numpy as np
import scipy.sparse as sp
import Stemmer
from sklearn.feature_extraction.text import TfidfVectorizer
from tqdm.auto import tqdm

from bench.peers import PEERS, directory_bytes, run_peer, write_problem
from bench.provenance import command_line, machine, versions
from bench.report import render_quality
from bench.timing import RankRange, rank_all, single_query_ms
from service.bundle import MANIFEST_NAME, Manifest, read_manifest
from service.ranking import top_k
from service.search.engine import SearchEngine
from training.data import XCDataset, load_dataset
from training.evaluate import EVAL_DEPTH, EvalSet

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
DATA_ROOT = REPO.parent / "shared" / "data"
OURS, BASELINE, PEER = "ours", "baseline", "peer"
BM25_NAME = "BM25 (bm25s, label text)"
ZERO_SHOT = "zero-shot (untrained encoder)"
RANKED_ASTRA = "ASTRA + learned ranker"
PLOTTED = ("P@1", "P@5", "nDCG@10", "PSP@5", "R@10")
# Keep one-character tokens: "2 x 4", "1/2 in." and "6 ft" carry meaning in product queries.
TOKEN_PATTERN = r"(?u)\b\w+\b"
TFIDF_SETTINGS: dict[str, Any] = {
    "sublinear_tf": True,
    "ngram_range": (1, 2),
    "min_df": 2,
    "token_pattern": TOKEN_PATTERN,
}
# The bundle kinds each served model reads.
MODEL_KINDS = {"astra": ("astra",), "mach": ("mach",), "hybrid": ("astra", "mach")}
# Versions recorded with the results (the peers record theirs from their own interpreter).
LIBRARIES = (
    *("numpy", "scipy", "scikit-learn", "bm25s", "torch"),
    *("onnxruntime", "onnxruntime-gpu", "faiss-cpu", "faiss-gpu-cu12"),
)


@dataclass(frozen=True)
class OurModel:
    """One of our models as a table row: a bundle and the model it answers with."""

    name: str
    bundle: str  # relative to the repository (or absolute)
    model: str  # astra | mach | hybrid
    family: str = OURS
    hybrid_weight: float | None = None  # None: the bundle's own
    lexical_weight: float | None = None  # None: the bundle's own; 0: ASTRA's index alone
    ranker: str = "off"  # on: ASTRA's learned ranker (row left out where the bundle has none)


@dataclass(frozen=True)
class Build:
    """How a bundle is built: `python -m training train` flags besides data, out and split."""

    bundle: str
    args: tuple[str, ...]

    @property
    def depends_on(self) -> list[str]:
        """The bundles this one is built from: its encoder's (`--encoder-from`) and its tuned
        weights' (`--weights-from`)."""
        args = list(self.args)
        flags = ("--encoder-from", "--weights-from")
        return [args[args.index(flag) + 1] for flag in flags if flag in args]


@dataclass(frozen=True)
class Benchmark:
    """A dataset, its train/eval splits, the metric the acceptance names, and our models."""

    dataset: str  # directory under the data root (XC layout in <dataset>/xc)
    train_split: str
    eval_split: str
    headline: str
    models: tuple[OurModel, ...]
    builds: tuple[Build, ...] = ()


def our_models(
    bundle: str,
    zero_shot_bundle: str,
    hybrid_weight: float | None = None,
    lexical_weight: float | None = None,
) -> tuple[OurModel, ...]:
    """ASTRA (with its learned ranker, with the formula and with the index alone), MACH and
    hybrid of one bundle, and the untrained encoder as a baseline (alone, and with the same
    lexical ranker)."""
    return (
        OurModel(RANKED_ASTRA, bundle, "astra", OURS, None, lexical_weight, "on"),
        OurModel("ASTRA", bundle, "astra", OURS, None, lexical_weight),
        OurModel("ASTRA, index only (no lexical ranker)", bundle, "astra", OURS, None, 0.0),
        OurModel("MACH", bundle, "mach"),
        OurModel("hybrid (ASTRA + MACH)", bundle, "hybrid", OURS, hybrid_weight, lexical_weight),
        OurModel(ZERO_SHOT, zero_shot_bundle, "astra", BASELINE, None, 0.0),
        OurModel(
            f"{ZERO_SHOT} + lexical ranker",
            zero_shot_bundle,
            "astra",
            BASELINE,
            None,
            lexical_weight,
        ),
    )


BENCHMARKS: dict[str, Benchmark] = {
    # Dev = the hashed eighth of trn (training.data.is_dev_query); tst is held out elsewhere.
    "homedepot": Benchmark(
        dataset="homedepot",
        train_split="train",
        eval_split="dev",
        headline="nDCG@10",
        models=our_models("models/homedepot-hybrid", "models/homedepot-zeroshot"),
        builds=(
            Build("models/homedepot", ("--epochs", "4")),
            Build(
                "models/homedepot-hybrid",
                ("--model", "mach", "--encoder-from", "models/homedepot", "--buckets", "2048"),
            ),
            Build("models/homedepot-zeroshot", ("--epochs", "0")),
        ),
    ),
    "cooking": Benchmark(
        dataset="cooking",
        train_split="trn",
        eval_split="tst",
        headline="P@1",
        # The bundles trained on `trn` have no dev split to tune on: cooking-both-trn takes its
        # weights (w = 0.1, lexical 0.25) from the same recipe trained on `train`
        # (models/cooking-both-dev, `weight_trials` and `lexical_weight_trials` in its
        # manifest) with `--weights-from`; the zero-shot baseline is given the same lexical
        # weight here.
        models=our_models("models/cooking-both-trn", "models/cooking-zeroshot", 0.1, 0.25),
        builds=(
            Build("models/cooking-astra-dev", ("--epochs", "1", "--train-split", "train")),
            Build(
                "models/cooking-both-dev",
                (
                    *("--model", "mach", "--encoder-from", "models/cooking-astra-dev"),
                    *("--train-split", "train"),
                ),
            ),
            Build("models/cooking-astra-trn", ("--epochs", "1")),
            Build(
                "models/cooking-both-trn",
                (
                    *("--model", "mach", "--encoder-from", "models/cooking-astra-trn"),
                    *("--weights-from", "models/cooking-both-dev"),
                ),
            ),
            Build("models/cooking-zeroshot", ("--epochs", "0")),
        ),
    ),
}


@dataclass(frozen=True)
class RunSettings:
    """How the methods are run and timed."""

    single_queries: int = 200
    batch_size: int = 256
    threads: int | None = None  # peers' training and prediction; None: all cores
    peers: tuple[str, ...] = tuple(PEERS)
    peers_python: Path | None = None  # None: .venv-peers when it exists
    repo: Path = REPO


# ----------------------------------------------------------------------------- shared


@dataclass(frozen=True)
class Ranking:
    """A method's ranking of every point, with the wall time it took."""

    ranked: np.ndarray  # [points, depth] label ids, -1 pads
    batched_seconds: float  # all points, in batches
    single_ms: list[float]  # the first points, one query at a time


def timed_ranking(rank: RankRange, points: EvalSet, settings: RunSettings, desc: str) -> Ranking:
    """Rank every point in batches, then time the first points one by one."""
    n = len(points.texts)
    ranked, seconds = rank_all(rank, n, EVAL_DEPTH, settings.batch_size, desc)
    single = single_query_ms(rank, min(settings.single_queries, n), f"{desc}, one by one")
    return Ranking(ranked, seconds, single)


def method_result(
    family: str,
    points: EvalSet,
    ranking: Ranking,
    train: tuple[float, str],
    model_bytes: int,
    details: dict[str, Any],
) -> dict[str, Any]:
    """One row of the results: metrics, training (seconds, source), latencies, size, settings."""
    single = ranking.single_ms
    return {
        "family": family,
        "metrics": points.score(ranking.ranked),
        "train_seconds": train[0],
        "train_seconds_source": train[1],
        "ms_per_query_batched": 1000.0 * ranking.batched_seconds / max(1, len(points.texts)),
        "ms_per_query_single_p50": float(np.median(single)) if single else None,
        "model_mb": model_bytes / 2**20,
        "details": details,
    }


# ----------------------------------------------------------------------------- BM25


def score_bm25(dataset: XCDataset, points: EvalSet, settings: RunSettings) -> dict[str, Any]:
    """BM25 (bm25s, Lucene variant, English stemming and stop words) over the label texts."""
    stemmer = Stemmer.Stemmer("english")

    def tokens(texts: list[str]) -> Any:
        return bm25s.tokenize(
            texts,
            token_pattern=TOKEN_PATTERN,
            stopwords="en",
            stemmer=stemmer.stemWords,
            show_progress=False,
        )

    started = time.perf_counter()
    retriever = bm25s.BM25()
    retriever.index(tokens(dataset.label_titles), show_progress=False)
    index_seconds = time.perf_counter() - started
    depth = min(EVAL_DEPTH, dataset.num_labels)

    def rank(start: int, stop: int) -> np.ndarray:
        found, scores = retriever.retrieve(
            tokens(points.texts[start:stop]), k=depth, show_progress=False, n_threads=1
        )
        return np.where(scores > 0, found, -1)  # a zero score means no query term matched

    ranking = timed_ranking(rank, points, settings, "BM25")
    with tempfile.TemporaryDirectory(prefix="bm25-") as tmp:
        retriever.save(tmp)
        size = directory_bytes(Path(tmp))
    details = {"k1": retriever.k1, "b": retriever.b, "variant": retriever.method}
    return method_result(BASELINE, points, ranking, (index_seconds, "measured"), size, details)


# ----------------------------------------------------------------------------- our bundles


def training_record(manifest: Manifest, kind: str) -> dict[str, Any]:
    """What the manifest says about training one kind (ASTRA-only bundles store it flat)."""
    training = manifest.training
    if kind in training:
        return training[kind]
    return training if training.get("model") == kind else {}


def model_bytes(manifest: Manifest, model: str, lexical: bool) -> int:
    """Bytes of the bundle files a served model reads (label titles and ids excluded);
    `lexical`: ASTRA's lexical ranker is in use."""
    kinds = MODEL_KINDS[model]
    names = [manifest.encoder.file, manifest.encoder.tokenizer]
    if "astra" in kinds and manifest.astra:
        names += [manifest.astra.classifiers, manifest.astra.index.file]
        if lexical and manifest.astra.lexical:
            names.append(manifest.astra.lexical.file)
    if "mach" in kinds and manifest.mach:
        names.append(manifest.mach.heads)
        if manifest.mach.ngrams:
            names.append(manifest.mach.ngrams.idf)
    return sum(manifest.files[name].bytes for name in names)


def score_bundle(
    spec: OurModel, bench: Benchmark, dataset: XCDataset, points: EvalSet, settings: RunSettings
) -> dict[str, Any] | None:
    """One of our models through the served path; training time from the bundle manifest.
    None for a learned-ranker row whose bundle has no ranker."""
    path = settings.repo / spec.bundle
    manifest = read_manifest(path)
    if spec.ranker == "on" and (manifest.astra is None or manifest.astra.ranker is None):
        print(f"{spec.name}: {spec.bundle} has no learned ranker; row left out", file=sys.stderr)
        return None
    engine = SearchEngine.load(
        path,
        hybrid_weight=spec.hybrid_weight,
        lexical_weight=spec.lexical_weight,
        ranker=spec.ranker,
    )
    model = engine.resolve_model(spec.model)
    if manifest.labels.count != dataset.num_labels:
        raise ValueError(
            f"{spec.bundle} has {manifest.labels.count} labels, "
            f"dataset {dataset.name} has {dataset.num_labels}"
        )
    records = {kind: training_record(manifest, kind) for kind in MODEL_KINDS[model]}
    for kind, record in records.items():
        if record.get("split") != bench.train_split:
            raise ValueError(
                f"{spec.bundle}: its {kind} part was trained on {record.get('split')!r}, "
                f"the benchmark trains on {bench.train_split!r}"
            )

    def rank(start: int, stop: int) -> np.ndarray:
        return engine.rank(points.texts[start:stop], EVAL_DEPTH, model)[1]

    ranking = timed_ranking(rank, points, settings, spec.name)
    details: dict[str, Any] = {
        "bundle": spec.bundle,
        "model": model,
        "training": {
            kind: {k: r.get(k) for k in ("split", "points", "seconds", "config")}
            for kind, r in records.items()
        },
    }
    if model == "hybrid":
        details["hybrid_weight"] = engine.hybrid_weight
    if model in ("astra", "hybrid"):
        details["lexical_weight"] = engine.lexical_weight
    train_seconds = sum(r["seconds"] for r in records.values())
    size = model_bytes(manifest, model, engine.lexical_weight > 0)
    if engine.ranker is not None:
        size += manifest.files[engine.ranker.spec.file].bytes
        details["ranker"] = {"trained_on": engine.ranker.spec.trained_on}
    row = method_result(spec.family, points, ranking, (train_seconds, "manifest"), size, details)
    if engine.ranker is not None and engine.ranker.spec.trained_on == bench.eval_split:
        # The served ranker learned from these very points: its metrics come from rankers
        # that never saw the query they score (the same cross-validation as training's).
        row["metrics"] = ranker_cross_validated(engine, dataset, bench.eval_split, points)
        details["ranker"]["metrics"] = "cross-validated on the evaluation split (3 × 2 folds)"
    return row


def ranker_cross_validated(
    engine: SearchEngine, dataset: XCDataset, split: str, points: EvalSet
) -> dict[str, float]:
    """Every metric of the engine's learned ranker on `points`, each point scored by a ranker
    fitted on the other fold (`training.ranker.cross_validated_scores`), averaged over the
    shuffles; the candidates and features are the engine's, as it served the row."""
    from training import ranker as learned

    assert engine.ranker is not None
    spec = engine.ranker.spec
    labels, features, _ = learned.collect(engine, points.texts, engine.ranker.popularity)
    # where it also learned from halves of train, as its helper bundles score them, so do the folds
    helpers = [Path(helper.bundle) for helper in spec.stacked]
    found = (labels, features)
    rows, gains, extra, _ = learned.learning_rows(engine, dataset, split, points, found, helpers)
    runs = []
    params = {k: int(v) if float(v).is_integer() else v for k, v in spec.params.items()}
    for scores in learned.cross_validated_scores(rows, gains, params, extra):
        _, ranked = top_k(np.where(labels >= 0, scores, -np.inf), labels, EVAL_DEPTH)
        runs.append(points.score(ranked))
    return {name: float(np.mean([run[name] for run in runs])) for name in runs[0]}


# ----------------------------------------------------------------------------- TF-IDF peers


@dataclass(frozen=True)
class TfidfProblem:
    """The peers' problem as written for `bench.peers`, and what featurising it cost."""

    directory: Path
    label_ids: np.ndarray  # column j of the written label matrix is label label_ids[j]
    fit_seconds: float
    transform_seconds: float  # every evaluation point, one call
    single_transform_ms: list[float]  # the first single_queries points, one call each
    vectorizer_bytes: int
    summary: dict[str, Any]


def tfidf_problem(
    bench: Benchmark, dataset: XCDataset, points: EvalSet, directory: Path, single_queries: int
) -> TfidfProblem:
    """TF-IDF fitted on the training texts; training points with a positive; eval features.

    Labels with no training positive cannot be learnt by a classifier and are left out of the
    label matrix (its columns are the labels that have one).
    """
    train = dataset.split(bench.train_split)
    positives = train.positives(dataset.positive_min_weight)
    started = time.perf_counter()
    vectorizer = TfidfVectorizer(**TFIDF_SETTINGS, dtype=np.float32)
    train_x = vectorizer.fit_transform(train.texts).tocsr()
    fit_seconds = time.perf_counter() - started
    keep = np.flatnonzero([len(p) > 0 for p in positives])
    if keep.size == 0:
        raise ValueError(f"no point of {bench.train_split!r} has a positive label")
    kept_labels = np.concatenate([positives[i] for i in keep])
    label_ids = np.unique(kept_labels)
    rows = np.repeat(np.arange(len(keep)), [len(positives[i]) for i in keep])
    columns = np.searchsorted(label_ids, kept_labels)
    train_y = sp.csr_matrix(
        (np.ones(len(rows), np.float32), (rows, columns)), shape=(len(keep), len(label_ids))
    )
    started = time.perf_counter()
    test_x = vectorizer.transform(points.texts)
    transform_seconds = time.perf_counter() - started
    single_ms = []
    for text in points.texts[:single_queries]:
        started = time.perf_counter()
        vectorizer.transform([text])
        single_ms.append(1000.0 * (time.perf_counter() - started))
    write_problem(directory, train_x[keep], train_y, test_x)
    summary = {
        "tfidf": {**TFIDF_SETTINGS, "ngram_range": list(TFIDF_SETTINGS["ngram_range"])},
        "features": len(vectorizer.vocabulary_),
        "train_points": len(keep),
        "learnable_labels": len(label_ids),
        "eval_positives_learnable": float(np.isin(np.concatenate(points.truth), label_ids).mean()),
        "fit_seconds": fit_seconds,
    }
    return TfidfProblem(
        directory,
        label_ids,
        fit_seconds,
        transform_seconds,
        single_ms,
        len(pickle.dumps(vectorizer)),
        summary,
    )


def score_peer(
    key: str, problem: TfidfProblem, points: EvalSet, settings: RunSettings
) -> dict[str, Any]:
    """One peer library (subprocess); its times include the TF-IDF fit and transform."""
    print(f"training {PEERS[key].name}", file=sys.stderr)
    compact, run = run_peer(
        key,
        problem.directory,
        problem.directory / key,
        EVAL_DEPTH,
        min(settings.single_queries, len(points.texts)),
        settings.batch_size,
        settings.threads,
        settings.peers_python,
    )
    ranking = Ranking(
        ranked=np.where(compact >= 0, problem.label_ids[np.maximum(compact, 0)], -1),
        batched_seconds=problem.transform_seconds + run["batched_seconds"],
        single_ms=[
            a + b for a, b in zip(problem.single_transform_ms, run["single_ms"], strict=True)
        ],
    )
    details = {
        "settings": run["settings"],
        "versions": run["versions"],
        "model_train_seconds": run["train_seconds"],
    }
    train = (problem.fit_seconds + run["train_seconds"], "measured")
    size = run["model_bytes"] + problem.vectorizer_bytes
    return method_result(PEER, points, ranking, train, size, details)


# ----------------------------------------------------------------------------- harness


def run_benchmark(bench: Benchmark, dataset: XCDataset, settings: RunSettings) -> dict[str, Any]:
    """Every method on the same evaluation points; returns the record (without provenance)."""
    points = EvalSet.of(dataset, bench.eval_split)
    methods: dict[str, dict[str, Any]] = {BM25_NAME: score_bm25(dataset, points, settings)}
    for spec in bench.models:
        if (row := score_bundle(spec, bench, dataset, points, settings)) is not None:
            methods[spec.name] = row
    features: dict[str, Any] = {}
    if settings.peers:
        with tempfile.TemporaryDirectory(prefix="xc-peers-") as tmp:
            problem = tfidf_problem(bench, dataset, points, Path(tmp), settings.single_queries)
            features = problem.summary
            for key in tqdm(settings.peers, desc="peers", unit="peer"):
                methods[PEERS[key].name] = score_peer(key, problem, points, settings)
    return {
        "dataset": dataset.name,
        "train_split": bench.train_split,
        "eval_split": bench.eval_split,
        "headline": bench.headline,
        "points": len(points.texts),
        "labels": dataset.num_labels,
        "peer_features": features,
        "methods": methods,
    }


def build_command(build: Build, bench: Benchmark, data_dir: Path) -> list[str]:
    """The `python -m training train` command that builds one bundle."""
    return [
        sys.executable,
        *("-m", "training", "train", "--data", str(data_dir), "--out", build.bundle),
        *("--train-split", bench.train_split, *build.args),
    ]


def missing_builds(bench: Benchmark, repo: Path) -> list[Build]:
    """The builds needed for our models' absent bundles, in build order."""
    needed = {spec.bundle for spec in bench.models}
    plan = []
    for build in reversed(bench.builds):
        if build.bundle in needed and not (repo / build.bundle / MANIFEST_NAME).exists():
            plan.append(build)
            needed.update(build.depends_on)
    return plan[::-1]


def ensure_bundles(bench: Benchmark, data_dir: Path, repo: Path, build: bool) -> None:
    """Build absent bundles (with `build`) or stop with the commands that would."""
    plan = missing_builds(bench, repo)
    commands = [build_command(b, bench, data_dir) for b in plan]
    if plan and not build:
        listed = "\n".join(shlex.join(["python", *c[1:]]) for c in commands)
        raise SystemExit(f"missing bundles; build them (or pass --build-missing):\n{listed}")
    for command in commands:
        print("building: " + shlex.join(command), file=sys.stderr)
        subprocess.run(command, cwd=repo, stdout=subprocess.DEVNULL, check=True)


def plot_quality(record: dict[str, Any], path: Path) -> Path:
    """Grouped bars of the `PLOTTED` metrics, one colour per method, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = record["methods"]
    fig, ax = plt.subplots(figsize=(12, 4.8))
    width = 0.85 / max(1, len(methods))
    for i, (name, result) in enumerate(methods.items()):
        xs = np.arange(len(PLOTTED)) + i * width
        values = [result["metrics"][m] for m in PLOTTED]
        bars = ax.bar(xs, values, width, label=name, hatch="//" if result["family"] == OURS else "")
        ax.bar_label(bars, fmt="%.2f", fontsize=6, rotation=90, padding=2)
    ax.set_xticks(np.arange(len(PLOTTED)) + 0.425 - width / 2, PLOTTED)
    title = (
        f"{record['dataset']}: trained on {record['train_split']}, scored on "
        f"{record['eval_split']} ({record['points']:,} points, {record['labels']:,} labels)"
    )
    top = max(result["metrics"][m] for result in methods.values() for m in PLOTTED)
    ax.set(ylabel="score", title=title, ylim=(0, min(1.05, 1.15 * top + 0.05)))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def notes(settings: RunSettings) -> dict[str, str]:
    """How each non-metric column was measured, by results key (rendered under the table)."""
    return {
        "train_seconds": "ours: recorded in the bundle manifest when the bundle was trained "
        "(not re-measured here; the lexical ranker's BM25 index takes about a second more); "
        "hybrid = ASTRA + MACH heads, MACH = the heads alone. BM25: "
        "indexing the label texts. Peers: TF-IDF fit + the library's training, measured here.",
        "ms_per_query_batched": f"wall time to rank every point in batches of "
        f"{settings.batch_size}, divided by the points (peers: TF-IDF transform included; "
        "Omikuji predicts one query at a time).",
        "ms_per_query_single_p50": f"median wall time of one query ranked alone, over the "
        f"first {settings.single_queries} points after one warm-up query (top {EVAL_DEPTH}).",
        "model_mb": "ours: the bundle files the model reads (fp32 encoder, tokenizer, classifier "
        "vectors and index, the lexical ranker's postings when it is on, and/or MACH heads and "
        "IDF, the learned ranker's ONNX file), label titles and ids excluded; BM25: the "
        "saved index; peers: the saved model plus the pickled TF-IDF vectorizer.",
        "ranker": f"{RANKED_ASTRA}: the bundle's LambdaMART over ASTRA's lexical candidates "
        "(`python -m training ranker`), which learns from the dev split; where the table is "
        "scored on dev, its metrics are cross-validated (3 shuffles of 2 folds, each query "
        "scored by a ranker fitted on the other fold, as training measures it), its timings "
        "those of the served ranker. The rows without it rank by the formula (XC_RANKER=off).",
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark on each dataset; write JSON and PNG, print the tables."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", action="append", choices=sorted(BENCHMARKS))
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT, help="holds <dataset>/xc")
    parser.add_argument("--build-missing", action="store_true", help="train absent bundles")
    parser.add_argument("--peer", action="append", choices=sorted(PEERS), help="default: all")
    parser.add_argument("--peers-python", type=Path, default=None, help="default: .venv-peers")
    parser.add_argument("--single-queries", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None, help="peers; default: all cores")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    settings = RunSettings(
        single_queries=args.single_queries,
        threads=args.threads,
        peers=tuple(args.peer or PEERS),
        peers_python=args.peers_python,
    )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name in args.dataset or sorted(BENCHMARKS):
        bench = BENCHMARKS[name]
        data_dir = Path(os.path.relpath(args.data_root / bench.dataset / "xc", settings.repo))
        ensure_bundles(bench, data_dir, settings.repo, args.build_missing)
        host = machine()
        record = run_benchmark(bench, load_dataset(settings.repo / data_dir), settings)
        record = {
            "benchmark": "quality",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": command_line("bench.quality", argv),
            "machine": {**host, "load_average_at_end": machine()["load_average"]},
            "versions": versions(LIBRARIES),
            "data": str(data_dir),
            "builds": [
                shlex.join(["python", *build_command(b, bench, data_dir)[1:]]) for b in bench.builds
            ],
            "settings": {
                "depth": EVAL_DEPTH,
                "batch_size": settings.batch_size,
                "single_queries": settings.single_queries,
                "peer_threads": settings.threads,
            },
            "notes": notes(settings),
            **record,
        }
        out = args.out_dir / f"quality_{bench.dataset}.json"
        out.write_text(json.dumps(record, indent=2) + "\n")
        plot = plot_quality(record, out.with_suffix(".png"))
        print(render_quality(record))
        print(f"written {out} and {plot}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
