"""MACH against Omikuji (Bonsai- and Parabel-style label trees) on cooking, same split.

    python -m bench.peers_cooking --data ../shared/data/cooking/xc

Why: the acceptance asks that MACH reaches at least the P@1 and P@5 of a standard
extreme-classification peer, Omikuji with Bonsai-style settings, trained and scored on the same
split. Both train on all of `trn` and are scored on `tst` by `EvalSet.score` (the project's one
metrics implementation, same points, same propensities).

- MACH is trained by our CLI in a subprocess (`python -m training train --model mach
  --train-split trn ...`, so the training's memory is freed) and scored through the served path
  (`evaluate_bundle`: ONNX encoder, heads, count-min decoding). `--mach-arg` passes flags through
  (`--mach-arg=--epochs=20` or `--mach-arg="--epochs 20 --buckets 256"`); `--encoder-from` puts
  the heads on an ASTRA bundle's encoder; `--skip-mach-train --mach-bundle PATH` scores a bundle
  that already exists.
- Omikuji reads TF-IDF features (scikit-learn, word uni+bigrams, sublinear tf, min_df 2, fitted
  on the training texts) written in the XC repository format. Bonsai-style = shallow, wide,
  unbalanced trees (cluster_k 100, max_depth 3, unbalanced clustering); Parabel-style = the
  library's defaults (balanced 2-means, depth 20).

Training seconds are wall clock, query time covers featurising the query too (ONNX encoder for
MACH, TF-IDF transform for Omikuji). Writes `bench/results/peers_<dataset>.json` and `.png`
(grouped bars) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import omikuji
import scipy.sparse as sp
import sklearn
from sklearn.feature_extraction.text import TfidfVectorizer
from tqdm.auto import tqdm

from training.data import XCDataset, load_dataset
from training.evaluate import EVAL_DEPTH, EvalSet, evaluate_bundle
from training.metrics import METRIC_NAMES

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cooking" / "xc"
DEFAULT_MACH_BUNDLE = Path("models/cooking-mach-bench")
TRAIN_SPLIT = "trn"
EVAL_SPLIT = "tst"
PLOTTED = ("P@1", "P@3", "P@5", "nDCG@5", "PSP@5")
TFIDF_SETTINGS: dict[str, Any] = {"sublinear_tf": True, "ngram_range": (1, 2), "min_df": 2}
MACH = "MACH (ours)"
BONSAI = "Omikuji, Bonsai-style"
PARABEL = "Omikuji, Parabel-style"
# Omikuji hyper-parameters changed from the library defaults, per style.
OMIKUJI_STYLES: dict[str, dict[str, Any]] = {
    BONSAI: {"cluster_k": 100, "cluster_balanced": False, "max_depth": 3},
    PARABEL: {},
}
HP_FIELDS = (
    "n_trees",
    "min_branch_size",
    "max_depth",
    "centroid_threshold",
    "collapse_every_n_layers",
    "linear_eps",
    "linear_c",
    "linear_weight_threshold",
    "linear_max_iter",
    "linear_loss_type",
    "cluster_k",
    "cluster_balanced",
    "cluster_eps",
    "cluster_min_size",
    "tree_structure_only",
    "train_trees_1_by_1",
)


# ----------------------------------------------------------------------------- Omikuji


def write_xc_file(
    path: Path, features: sp.csr_matrix, labels: Sequence[np.ndarray], num_labels: int
) -> int:
    """Write points in the XC repository format Omikuji reads; returns the points written.

    Header `num_points num_features num_labels`, then one line per point: `l1,l2,... f:v f:v`.
    Points with no label are skipped (they teach a label tree nothing). A point with no feature
    is written as its labels alone: Omikuji's parser rejects a trailing space.
    """
    if features.shape[0] != len(labels):
        raise ValueError(f"{features.shape[0]} feature rows but {len(labels)} label arrays")
    features = sp.csr_matrix(features)
    features.sort_indices()
    lines = []
    for i, point_labels in enumerate(labels):
        if len(point_labels) == 0:
            continue
        start, end = features.indptr[i], features.indptr[i + 1]
        pairs = " ".join(
            f"{j}:{v:.6g}"
            for j, v in zip(features.indices[start:end], features.data[start:end], strict=True)
        )
        label_text = ",".join(str(int(lab)) for lab in point_labels)
        lines.append(f"{label_text} {pairs}" if pairs else label_text)
    header = f"{len(lines)} {features.shape[1]} {num_labels}"
    path.write_text("\n".join([header, *lines]) + "\n")
    return len(lines)


def omikuji_hyper_params(changes: dict[str, Any]) -> Any:
    """Omikuji's default hyper-parameters with `changes` applied."""
    hp = omikuji.Model.default_hyper_param()
    for name, value in changes.items():
        if not hasattr(hp, name):
            raise ValueError(f"omikuji has no hyper-parameter {name!r}")
        setattr(hp, name, value)
    return hp


def hyper_params_dict(hp: Any) -> dict[str, Any]:
    """The hyper-parameters as plain JSON values (for the results file)."""
    out: dict[str, Any] = {}
    for name in HP_FIELDS:
        value = getattr(hp, name)
        if name == "linear_loss_type":
            value = omikuji.LossType(value).name.lower()
        elif isinstance(value, float):
            value = float(f"{value:.6g}")  # the library holds float32
        out[name] = value
    return out


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send file descriptor 1 to stderr for a while.

    Omikuji's native logger writes its INFO lines to stdout; this keeps stdout for the table.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def ranked_from_predictions(
    predictions: Iterable[Sequence[tuple[int, float]]], num_points: int, depth: int = EVAL_DEPTH
) -> np.ndarray:
    """Omikuji's per-point `(label, score)` lists (best first) as a [points, depth] id array.

    Rows shorter than `depth` are padded with -1 (no label); longer ones are cut.
    """
    ranked = np.full((num_points, depth), -1, dtype=np.int64)
    for i, predicted in enumerate(predictions):
        if i >= num_points:
            raise ValueError(f"more prediction lists than the {num_points} points")
        ids = [label for label, _ in predicted[:depth]]
        ranked[i, : len(ids)] = ids
    return ranked


def feature_pairs(row: sp.csr_matrix) -> list[tuple[int, float]]:
    """One sparse row as the `(feature, value)` pairs `omikuji.Model.predict` takes."""
    return list(zip(row.indices.tolist(), row.data.tolist(), strict=True))


def train_omikuji(
    train_file: Path, changes: dict[str, Any], threads: int | None
) -> tuple[omikuji.Model, float]:
    """Train Omikuji on an XC-format file; returns the model and the wall seconds."""
    hp = omikuji_hyper_params(changes)
    started = time.perf_counter()
    with stdout_to_stderr():
        model = omikuji.Model.train_on_data(str(train_file), hp, n_threads=threads)
    return model, time.perf_counter() - started


def predict_omikuji(
    model: omikuji.Model,
    vectorizer: TfidfVectorizer,
    texts: Sequence[str],
    depth: int = EVAL_DEPTH,
    beam_size: int = 10,
    desc: str = "omikuji predict",
) -> tuple[np.ndarray, float]:
    """Top-`depth` labels of each text, one query at a time; returns (ranked, wall seconds).

    The time includes the TF-IDF transform of the queries.
    """
    started = time.perf_counter()
    features = vectorizer.transform(list(texts)).tocsr()
    predictions = [
        model.predict(feature_pairs(features[i]), beam_size=beam_size, top_k=depth)
        for i in tqdm(range(features.shape[0]), desc=desc, unit="query", leave=False)
    ]
    seconds = time.perf_counter() - started
    return ranked_from_predictions(predictions, len(texts), depth), seconds


def omikuji_results(
    dataset: XCDataset, points: EvalSet, threads: int | None, beam_size: int
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Metrics of each Omikuji style on `points`, and the settings used (for the JSON)."""
    train = dataset.split(TRAIN_SPLIT)
    started = time.perf_counter()
    vectorizer = TfidfVectorizer(**TFIDF_SETTINGS)
    train_features = vectorizer.fit_transform(train.texts).tocsr()
    results: dict[str, dict[str, float]] = {}
    settings: dict[str, Any] = {
        "tfidf": {**TFIDF_SETTINGS, "ngram_range": list(TFIDF_SETTINGS["ngram_range"])},
        "num_features": len(vectorizer.vocabulary_),
        "threads": threads,
        "beam_size": beam_size,
        "hyper_params": {},
    }
    with tempfile.TemporaryDirectory(prefix="omikuji-") as tmp:
        train_file = Path(tmp) / f"{dataset.name}_{TRAIN_SPLIT}.txt"
        written = write_xc_file(
            train_file,
            train_features,
            train.positives(dataset.positive_min_weight),
            dataset.num_labels,
        )
        features_seconds = time.perf_counter() - started
        settings["train_points"] = written
        settings["features_seconds"] = round(features_seconds, 2)
        for name, changes in OMIKUJI_STYLES.items():
            print(f"training {name} ({changes or 'defaults'})", file=sys.stderr)
            model, seconds = train_omikuji(train_file, changes, threads)
            settings["hyper_params"][name] = hyper_params_dict(omikuji_hyper_params(changes))
            ranked, query_seconds = predict_omikuji(
                model, vectorizer, points.texts, beam_size=beam_size, desc=name
            )
            metrics = points.score(ranked, query_seconds)
            metrics["train_seconds"] = features_seconds + seconds
            metrics["model_train_seconds"] = seconds
            results[name] = metrics
    return results, settings


# ----------------------------------------------------------------------------- MACH


def mach_train_command(
    data: Path, bundle: Path, mach_args: Sequence[str], encoder_from: Path | None
) -> list[str]:
    """The `python -m training train` command that trains MACH on all of trn."""
    command = [sys.executable, "-m", "training", "train", "--model", "mach"]
    command += ["--data", str(data), "--out", str(bundle), "--train-split", TRAIN_SPLIT]
    if encoder_from is not None:
        command += ["--encoder-from", str(encoder_from)]
    return command + list(mach_args)


def train_mach(command: list[str]) -> tuple[dict[str, Any], float]:
    """Run the train command (progress on stderr); returns its JSON report and wall seconds."""
    print("training MACH: " + shlex.join(command), file=sys.stderr)
    started = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"MACH training failed (exit {done.returncode}): {shlex.join(command)}")
    lines = done.stdout.strip().splitlines()
    return (json.loads(lines[-1]) if lines else {}), seconds


def mach_training_record(bundle: Path) -> dict[str, Any]:
    """What the bundle's manifest says about its MACH training (split, config, seconds)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    return manifest.get("training", {}).get("mach") or {}


# ----------------------------------------------------------------------------- report


def markdown_table(results: dict[str, dict[str, float]]) -> str:
    """One row per method: the standard metrics, training seconds and ms per query."""
    header = "| method | " + " | ".join(METRIC_NAMES) + " | train s | ms/query |"
    rule = "|" + "---|" * (len(METRIC_NAMES) + 3)
    rows = []
    for name, m in results.items():
        train = m.get("train_seconds")
        rows.append(
            f"| {name} | "
            + " | ".join(f"{m[k]:.4f}" for k in METRIC_NAMES)
            + (f" | {train:.1f}" if train is not None else " | n/a")
            + f" | {m['ms_per_query_batched']:.2f} |"
        )
    return "\n".join([header, rule, *rows])


def plot_bars(results: dict[str, dict[str, float]], title: str, path: Path) -> Path:
    """Grouped bars of `PLOTTED` metrics, one colour per method, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.2))
    width = 0.8 / max(1, len(results))
    for i, (name, metrics) in enumerate(results.items()):
        xs = np.arange(len(PLOTTED)) + i * width
        bars = ax.bar(xs, [metrics[m] for m in PLOTTED], width, label=name)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(np.arange(len(PLOTTED)) + 0.4 - width / 2, PLOTTED)
    ax.set(ylabel="score", title=title, ylim=(0, 1))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def acceptance(results: dict[str, dict[str, float]]) -> dict[str, Any]:
    """MACH minus Omikuji (Bonsai-style) on P@1 and P@5, and whether MACH is at least as good."""
    if MACH not in results or BONSAI not in results:
        return {}
    gaps = {k: results[MACH][k] - results[BONSAI][k] for k in ("P@1", "P@5")}
    return {"mach_minus_bonsai": gaps, "met": all(g >= 0 for g in gaps.values())}


def machine() -> dict[str, Any]:
    """The machine the figures were taken on (timings depend on it and on its load)."""
    return {
        "platform": platform.platform(),
        "arch": platform.machine(),
        "processor": platform.processor() or "cpu",
        "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "omikuji": omikuji.__version__,
        "scikit-learn": sklearn.__version__,
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="dataset (XC layout)")
    parser.add_argument("--mach-bundle", type=Path, default=DEFAULT_MACH_BUNDLE)
    parser.add_argument(
        "--mach-arg",
        action="append",
        default=[],
        metavar="FLAGS",
        help='passed to `python -m training train`, e.g. --mach-arg="--epochs 20" (repeatable)',
    )
    parser.add_argument("--encoder-from", type=Path, default=None, help="ASTRA bundle for MACH")
    parser.add_argument(
        "--skip-mach-train", action="store_true", help="score the existing --mach-bundle"
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="Omikuji training")
    parser.add_argument("--beam-size", type=int, default=10, help="Omikuji prediction beam")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where JSON and PNG go")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Train and score MACH and the Omikuji peers; write JSON and PNG, print the table."""
    parser = _parser()
    args = parser.parse_args(argv)
    mach_args = [piece for item in args.mach_arg for piece in shlex.split(item)]
    if any(a.split("=")[0] in ("--train-split", "--data", "--out") for a in mach_args):
        parser.error("--mach-arg: the split, data and bundle are set by this script")
    if args.skip_mach_train and (mach_args or args.encoder_from):
        parser.error("--skip-mach-train scores an existing bundle; it takes no training flags")
    host = machine()
    dataset = load_dataset(args.data)
    points = EvalSet.of(dataset, EVAL_SPLIT)
    # The peers first: they are quick, so a broken setup fails before the long MACH run.
    peers, omikuji_settings = omikuji_results(dataset, points, args.threads, args.beam_size)

    mach_record: dict[str, Any] = {"bundle": str(args.mach_bundle)}
    train_seconds = None
    if not args.skip_mach_train:
        command = mach_train_command(args.data, args.mach_bundle, mach_args, args.encoder_from)
        report, train_seconds = train_mach(command)
        mach_record.update(command=shlex.join(["python", *command[1:]]), cli_report=report)
    training = mach_training_record(args.mach_bundle)
    mach_record["training"] = training
    if training.get("split") != TRAIN_SPLIT:
        print(
            f"warning: {args.mach_bundle} was trained on {training.get('split')!r}, "
            f"not {TRAIN_SPLIT!r}: not the same split as the peers",
            file=sys.stderr,
        )
    results = {MACH: evaluate_bundle(args.mach_bundle, dataset, EVAL_SPLIT, model="mach")}
    results[MACH]["train_seconds"] = train_seconds
    results[MACH]["model_train_seconds"] = training.get("seconds")
    results.update(peers)
    verdict = acceptance(results)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / f"peers_{dataset.name}.json"
    record = {
        "dataset": dataset.name,
        "data": str(args.data),
        "train_split": TRAIN_SPLIT,
        "eval_split": EVAL_SPLIT,
        "date": date.today().isoformat(),
        "machine": {**host, "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "command": shlex.join(["python", "-m", "bench.peers_cooking", *(argv or sys.argv[1:])]),
        "notes": {
            "train_seconds": "wall clock; MACH: the whole train command (query embedding, "
            "heads, export, bundle), Omikuji: TF-IDF fit + file write + training",
            "model_train_seconds": "MACH: the heads alone (CLI report); Omikuji: "
            "train_on_data alone",
            "ms_per_query_batched": "MACH: batches of 256 through the served path; "
            "Omikuji: one query at a time, TF-IDF transform included",
        },
        "mach": mach_record,
        "omikuji": omikuji_settings,
        "results": results,
        "acceptance": verdict,
    }
    out.write_text(json.dumps(record, indent=2) + "\n")
    plot = plot_bars(
        results,
        f"{dataset.name}: trained on {TRAIN_SPLIT}, scored on {EVAL_SPLIT} "
        f"({len(points.texts):,} points)",
        out.with_suffix(".png"),
    )
    print(markdown_table(results))
    if verdict:
        gaps = ", ".join(f"{k} {v:+.4f}" for k, v in verdict["mach_minus_bonsai"].items())
        print(f"MACH - Omikuji (Bonsai-style): {gaps}; met: {verdict['met']}")
    print(f"written {out} and {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
