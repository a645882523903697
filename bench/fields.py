"""Product fields beyond the title: which fields the label text holds, and BM25F weights.

    python -m bench.fields --data data/demo/shopdata.toml

A shop's export has more than titles (brand, category, type, attributes; `training.shopdata`).
This trains ASTRA on the demo catalog's export once per text-field set (`--text-fields`: the
fields joined are what ASTRA embeds and what BM25 indexes), each tuned on dev as `training
train` tunes it (the lexical weight λ by dev nDCG@10), then, on the best set with fields beside
the title, re-indexes the fields with per-field BM25 weights (BM25F: weighted term frequencies
and lengths; `service.astra.lexical.field_counts`) and re-tunes λ. Everything is chosen on dev.
Results go to `bench/results/fields_<dataset>.json` (BENCHMARKS.md, "Product fields").

The Home Depot data here has titles only (its description and attribute files are not in the
shared data), so fields are measured on the generated demo catalog, whose titles already name
the brand, type and size: a field adds only what the title lacks (the department).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

from bench.provenance import command_line, machine, versions, write_report
from service.bundle import read_manifest
from training.data import load_dataset
from training.pipeline import add_lexical_ranker
from training.shopdata import ShopDataSpec
from training.shopdata.spec import read_toml_settings

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
# Fixed before measuring: the title alone, then the fields the demo's title lacks or repeats.
FIELD_SETS = (
    ("title",),
    ("title", "category"),
    ("title", "brand", "category", "type"),
    ("title", "brand", "category", "type", "attributes"),
)
# BM25F weights tried on the best set: the other fields at half and at twice the title's.
WEIGHT_SCALES = (0.5, 2.0)
METRICS = ("nDCG@10", "P@1", "P@5")


def _dev_row(bundle: Path) -> dict[str, Any]:
    """ASTRA's dev metrics at the tuned λ, and λ, from the bundle's manifest."""
    manifest = read_manifest(bundle)
    dev = manifest.metrics["dev_by_model"]["astra"]
    assert manifest.astra is not None and manifest.astra.lexical is not None
    lexical = manifest.astra.lexical
    return {
        **{name: round(dev[name], 4) for name in METRICS},
        "lexical_weight": lexical.weight,
        "bm25_fields": lexical.fields or {"title": 1.0},
    }


def train_with_fields(config: Path, fields: tuple[str, ...], out: Path, epochs: int) -> dict:
    """`python -m training train` on the export with these text fields; its dev row."""
    command = [
        *(sys.executable, "-m", "training", "train", "--data-config", str(config)),
        *("--text-fields", ",".join(fields), "--out", str(out), "--epochs", str(epochs)),
    ]
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return {"text_fields": list(fields), **_dev_row(out)}


def reweighted(config: Path, fields: tuple[str, ...], bundle: Path, scale: float) -> dict:
    """The bundle's postings rebuilt with the fields other than the title at `scale` times its
    weight, λ re-tuned on dev."""
    weights = {name: scale for name in fields if name != "title"}
    settings = {**read_toml_settings(config), "text_fields": fields, "field_weights": weights}
    add_lexical_ranker(bundle, ShopDataSpec.from_settings(settings))
    return {"text_fields": list(fields), **_dev_row(bundle)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO / "data" / "demo" / "shopdata.toml")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    dataset = load_dataset(args.data)
    rows = []
    with tempfile.TemporaryDirectory(prefix="xc-fields-") as tmp:
        for i, fields in enumerate(FIELD_SETS):
            rows.append(train_with_fields(args.data, fields, Path(tmp) / f"set{i}", args.epochs))
            print(rows[-1], file=sys.stderr)
        best = max(range(len(rows)), key=lambda i: rows[i]["nDCG@10"])
        # Weights need fields beside the title: the best set that has some.
        fielded = max(range(1, len(rows)), key=lambda i: rows[i]["nDCG@10"])
        weighted = []
        for scale in WEIGHT_SCALES:
            copy = Path(tmp) / f"weighted-{scale}"
            shutil.copytree(Path(tmp) / f"set{fielded}", copy)
            weighted.append(reweighted(args.data, FIELD_SETS[fielded], copy, scale))
            print(weighted[-1], file=sys.stderr)
    report = {
        "benchmark": "fields",
        "date": date.today().isoformat(),
        "command": command_line("bench.fields", argv),
        "machine": machine(),
        "versions": versions(("onnxruntime", "faiss-cpu", "torch")),
        "dataset": dataset.name,
        "data": str(args.data.relative_to(REPO) if args.data.is_relative_to(REPO) else args.data),
        "dev_points": len(dataset.split("dev")),
        "epochs": args.epochs,
        "field_sets": rows,
        "best": best,
        "weighted_set": fielded,
        "weighted": weighted,
    }
    write_report(report, args.out_dir / f"fields_{dataset.name}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
