"""The learned ranker: what each feature group adds on dev, and what it costs a query.

    python -m bench.ranker --bundle models/homedepot --data ../shared/data/homedepot/xc

Trains the ranker into the bundle as `python -m training ranker` does (`training.ranker`:
LambdaMART on the dev split's graded pairs, cross-validated 3 × 2-fold against the formula,
with the ablation adding feature groups in turn); measures the analyzer's unit normalisation
and query spelling the same way, added in turn (`service.astra.lexical.UNIT_RULES`, then
`service.astra.spelling`: the titles
re-indexed in memory with each analyzer, the formula and the cross-validated ranker scored on
the candidates it yields); then times ranking in process, one dev query
at a time, with the learned ranker and with the formula over the same candidates, taking turns
query by query (the encoder is run before the clock starts: this is ranking only). Results go to
`bench/results/ranker_<dataset>.json` (BENCHMARKS.md, "The learned ranker").
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import date
from pathlib import Path

import numpy as np

from bench.provenance import command_line, machine, versions, write_report
from service.astra.lexical import UNIT_RULES, Analyzer, LexicalIndex
from service.search.engine import SearchEngine
from training.data import load_dataset
from training.evaluate import EvalSet
from training.ranker import (
    PARAMS,
    RankerRows,
    collect,
    cross_validated,
    grade_levels,
    popularity,
    ranked_metrics,
    train_ranker,
)

RESULTS = Path(__file__).resolve().parent / "results"
LIBRARIES = ("lightgbm", "onnxruntime", "onnxmltools")


def _percentiles(seconds: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(float(np.median(seconds)) * 1000, 3),
        "p90_ms": round(float(np.percentile(seconds, 90)) * 1000, 3),
    }


def time_ranking(bundle: Path, texts: list[str]) -> dict:
    """Single-query ranking time with the learned ranker and with the formula, and the
    ranker's own part (features, then the ONNX model)."""
    learned = SearchEngine.load(bundle, precision="auto", encoder_size="auto", ranker="on")
    formula = SearchEngine.load(bundle, precision="auto", encoder_size="auto", ranker="off")
    assert learned.ranker is not None
    spent: dict[str, list[float]] = {"ranker": [], "formula": [], "features": [], "model": []}
    for text in texts[:20]:  # warm both
        for engine in (learned, formula):
            engine.rank([text], 10)
    for text in texts:
        vectors = learned.encoder.encode([text])
        for name, engine in (("ranker", learned), ("formula", formula)):
            start = time.perf_counter()
            engine.rank_encoded(vectors, [text], 10)
            spent[name].append(time.perf_counter() - start)
        found, _ = learned.candidates(vectors, [text], 10, True, False)
        start = time.perf_counter()
        features = learned.features(found)
        middle = time.perf_counter()
        learned.ranker.score(features, found.labels)
        spent["features"].append(middle - start)
        spent["model"].append(time.perf_counter() - middle)
    report = {name: _percentiles(seconds) for name, seconds in spent.items()}
    added = np.subtract(spent["ranker"], spent["formula"])
    report["added_p50_ms"] = round(float(np.median(added)) * 1000, 3)
    report["queries"] = len(texts)
    return report


def normalisation_ablation(bundle: Path, data: Path) -> list[dict]:
    """Dev metrics of the formula and of the cross-validated ranker with no normalisation,
    then with each rule of `UNIT_RULES` added in turn, then with the spelling corrector."""
    dataset = load_dataset(data)
    points = EvalSet.of(dataset, "dev")
    engine = SearchEngine.load(bundle, precision="auto", encoder_size="auto", ranker="off")
    titles = list(engine.bundle.label_titles)
    popular = popularity(dataset, "train")
    steps = [("none (analyzer 1)", Analyzer(1))]
    for i, (rule, _, _) in enumerate(UNIT_RULES):
        steps.append((f"+ {rule}", Analyzer(2, UNIT_RULES[: i + 1])))
    steps.append(("+ spelling (queries; analyzer 3)", Analyzer(3)))
    results = []
    for name, analyzer in steps:
        engine.lexical = LexicalIndex.build(titles, analyzer=analyzer)
        labels, features, formula = collect(engine, points.texts, popular)
        levels, gains = grade_levels(dataset, "dev", points.texts, labels)
        results.append(
            {
                "analyzer": name,
                "formula": ranked_metrics(points, labels, formula),
                "dev_cv": cross_validated(
                    points, RankerRows(labels, features, levels), gains, PARAMS
                ),
            }
        )
        print(json.dumps(results[-1]), flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    """Train the ranker into the bundle, time it, and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="dataset with a dev split")
    parser.add_argument("--queries", type=int, default=1000, help="dev queries timed")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--stack-from",
        type=Path,
        nargs="+",
        default=[],
        help="as `python -m training ranker` takes it",
    )
    args = parser.parse_args(argv)
    trained = train_ranker(args.bundle, args.data, stack_from=args.stack_from)
    texts = load_dataset(args.data).split("dev").texts[: args.queries]
    report = {
        "date": date.today().isoformat(),
        "command": command_line("bench.ranker", argv),
        "machine": machine(),
        "versions": versions(LIBRARIES),
        **trained,
        "normalisation": normalisation_ablation(args.bundle, args.data),
        "latency": time_ranking(args.bundle, texts),
    }
    write_report(report, args.out or RESULTS / f"ranker_{report['dataset']}.json")


if __name__ == "__main__":
    main()
