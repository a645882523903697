"""ONNX parity figure for BENCHMARKS.md: served path vs sentence-transformers on real queries.

    python -m bench.parity --data ../shared/data/homedepot/xc --data ../shared/data/cooking/xc

Exports the base encoder, encodes every training query of each dataset both ways, and writes the
minimum and mean cosine to `bench/results/parity.json`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from datetime import date
from pathlib import Path

from training.data import load_dataset
from training.parity import export_base_encoder, onnx_parity

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    """Measure parity on each dataset's training queries and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, action="append", required=True)
    args = parser.parse_args()
    report = {"date": date.today().isoformat(), "max_length": 32, "datasets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        onnx_dir = export_base_encoder(Path(tmp))
        for path in args.data:
            dataset = load_dataset(path)
            cosines = onnx_parity(onnx_dir, dataset.trn.texts)
            report["datasets"][dataset.name] = {
                "queries": len(cosines),
                "min_cosine": float(cosines.min()),
                "mean_cosine": float(cosines.mean()),
                "below_0.9999": int((cosines < 0.9999).sum()),
            }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "parity.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
