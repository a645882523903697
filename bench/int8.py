"""What the int8 encoder costs: its parity with fp32 and both encoders' dev metrics.

    python -m bench.int8 --bundle models/homedepot --data ../shared/data/homedepot/xc

Does what `python -m training quantize --bundle ... --data ...` does (adds `encoder.int8.onnx`
to the bundle, so the int8 load and catalog benchmarks can serve it, and measures it) and
writes the report with the machine, versions and command to `bench/results/int8_<dataset>.json`.
"""

from __future__ import annotations

import argparse
from datetime import date
from pathlib import Path

from bench.provenance import command_line, machine, versions, write_report
from training.quantize import quantize_and_report

RESULTS = Path(__file__).resolve().parent / "results"
LIBRARIES = ("onnxruntime", "onnx")


def main(argv: list[str] | None = None) -> None:
    """Quantise the bundle's encoder, measure it on the dev split and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="dataset with a dev split")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    report = {
        "date": date.today().isoformat(),
        "command": command_line("bench.int8", argv),
        "machine": machine(),
        "versions": versions(LIBRARIES),
        "bundle": str(args.bundle),
        **quantize_and_report(args.bundle, args.data),
    }
    write_report(report, args.out or RESULTS / f"int8_{report['dataset']}.json")


if __name__ == "__main__":
    main()
