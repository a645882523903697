"""Retrieval quality of our bundles against BM25 over the product titles, on one split.

    python -m bench.quality --data ../shared/data/homedepot/xc --split dev \
        --bundle astra=models/homedepot --bundle zero-shot=models/homedepot-zeroshot

Every method is scored with `training.metrics.evaluate` on the same points; the results go to
`bench/results/quality_<dataset>_<split>.json` and a Markdown table is printed.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import bm25s
import numpy as np
import Stemmer

from training.data import XCDataset, load_dataset
from training.evaluate import EVAL_DEPTH, EvalSet, evaluate_bundle
from training.metrics import METRIC_NAMES

RESULTS = Path(__file__).resolve().parent / "results"
# Keep one-character tokens: "2 x 4", "1/2 in." and "6 ft" carry meaning in product queries.
TOKEN_PATTERN = r"(?u)\b\w+\b"


def bm25_metrics(dataset: XCDataset, split: str) -> dict[str, float]:
    """BM25 (bm25s, Lucene variant, English Snowball stemming) over the label texts."""
    stemmer = Stemmer.Stemmer("english")

    def tokens(texts: list[str]):
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
    points = EvalSet.of(dataset, split)
    started = time.perf_counter()
    found, scores = retriever.retrieve(
        tokens(points.texts), k=EVAL_DEPTH, show_progress=False, n_threads=1
    )
    seconds = time.perf_counter() - started
    ranked = np.where(scores > 0, found, -1)  # a zero score means no query term matched
    metrics = points.score(ranked, seconds)
    metrics["index_seconds"] = index_seconds
    return metrics


def markdown_table(results: dict[str, dict[str, float]]) -> str:
    """One row per method, the standard metrics as columns."""
    header = "| method | " + " | ".join(METRIC_NAMES) + " | ms/query (batched) |"
    rule = "|" + "---|" * (len(METRIC_NAMES) + 2)
    rows = [
        f"| {name} | "
        + " | ".join(f"{m[k]:.4f}" for k in METRIC_NAMES)
        + f" | {m['ms_per_query_batched']:.2f} |"
        for name, m in results.items()
    ]
    return "\n".join([header, rule, *rows])


def plot_comparison(results: dict[str, dict[str, float]], title: str, path: Path) -> Path:
    """Grouped bars of P@1, nDCG@10 and R@10 per method, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = ("P@1", "nDCG@10", "R@10")
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(results)
    for i, (name, metrics) in enumerate(results.items()):
        xs = np.arange(len(shown)) + i * width
        bars = ax.bar(xs, [metrics[m] for m in shown], width, label=name)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(np.arange(len(shown)) + 0.4 - width / 2, shown)
    ax.set(ylabel="score", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    """Score BM25 and each given bundle; write JSON and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="dev")
    parser.add_argument("--bundle", action="append", default=[], metavar="NAME=PATH")
    args = parser.parse_args()
    dataset = load_dataset(args.data)
    results = {"BM25 (bm25s, titles)": bm25_metrics(dataset, args.split)}
    for item in args.bundle:
        name, _, path = item.partition("=")
        results[name] = evaluate_bundle(path, dataset, args.split)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"quality_{dataset.name}_{args.split}.json"
    out.write_text(
        json.dumps(
            {
                "dataset": dataset.name,
                "split": args.split,
                "date": date.today().isoformat(),
                "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
                "bundles": dict(b.partition("=")[::2] for b in args.bundle),
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    plot = plot_comparison(results, f"{dataset.name}, {args.split} split", out.with_suffix(".png"))
    print(markdown_table(results))
    print(f"written {out} and {plot}")


if __name__ == "__main__":
    main()
