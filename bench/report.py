"""BENCHMARKS.md's generated sections, rewritten from the results JSON the benchmarks wrote.

    python -m bench.report [--file BENCHMARKS.md] [--results bench/results]

A generated section sits between `<!-- NAME -->` and `<!-- /NAME -->` lines; `SECTIONS` maps
NAME to the JSON file under the results directory and the function that renders it as
Markdown. Everything between the markers is replaced, so the tables are never typed by hand
and running this twice changes nothing. Text outside the markers (the reading of the figures)
is left alone. To add a benchmark: write its renderer and add one entry to `SECTIONS`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from training.metrics import METRIC_NAMES

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
BENCHMARKS_MD = REPO / "BENCHMARKS.md"

Renderer = Callable[[dict[str, Any]], str]
# The quality table's columns after the metrics: results key -> header.
COLUMNS = {
    "train_seconds": "train s",
    "ms_per_query_batched": "ms/q batched",
    "ms_per_query_single_p50": "ms/q single",
    "model_mb": "MB",
}


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table from cells already formatted as text."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _amount(value: float | None) -> str:
    """Seconds, milliseconds or megabytes: two decimals below 10, else one (with commas)."""
    if value is None:
        return "n/a"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:,.1f}"


def headline_verdict(record: Mapping[str, Any]) -> str:
    """Whether our best model beats every other method on the dataset's headline metric."""
    metric = record["headline"]
    scores = {name: m["metrics"][metric] for name, m in record["methods"].items()}
    ours = [name for name, m in record["methods"].items() if m["family"] == "ours"]
    others = [name for name in scores if name not in ours]
    if not ours or not others:
        return ""
    best = max(ours, key=scores.__getitem__)
    rival = max(others, key=scores.__getitem__)
    if scores[best] > scores[rival]:
        return (
            f"**{metric}: our best, {best} ({scores[best]:.4f}), is ahead of every other "
            f"method; the closest, {rival} ({scores[rival]:.4f}), is "
            f"{scores[best] - scores[rival]:.4f} behind.**"
        )
    ahead = sorted((n for n in others if scores[n] >= scores[best]), key=scores.__getitem__)
    listed = ", ".join(f"{n} ({scores[n]:.4f}, +{scores[n] - scores[best]:.4f})" for n in ahead)
    return (
        f"**{metric}: our best, {best} ({scores[best]:.4f}), is not ahead of every other "
        f"method: {listed} score at least as high.**"
    )


def _versions_line(record: Mapping[str, Any]) -> str:
    """The library versions of the run, the peers' own interpreter included."""
    found = {name: v for name, v in record["versions"].items() if v}
    peer_numpy = set()
    for result in record["methods"].values():
        for name, version in result["details"].get("versions", {}).items():
            if name in ("numpy", "scipy"):
                peer_numpy.add(f"{name} {version}")
            elif version:
                found[name] = version
    line = ", ".join(f"{name} {version}" for name, version in found.items())
    return line + (f" (peers' interpreter: {', '.join(sorted(peer_numpy))})" if peer_numpy else "")


def render_quality(record: dict[str, Any]) -> str:
    """The quality table of one dataset (bench.quality's JSON), its verdict and provenance."""
    methods = record["methods"]
    best = {k: max(m["metrics"][k] for m in methods.values()) for k in METRIC_NAMES}
    rows = []
    for name, result in methods.items():
        metrics = result["metrics"]
        cells = [name, result["family"]]
        cells += [
            f"**{metrics[k]:.4f}**" if metrics[k] == best[k] else f"{metrics[k]:.4f}"
            for k in METRIC_NAMES
        ]
        cells += [_amount(result[key]) for key in COLUMNS]
        rows.append(cells)
    headers = ["method", "kind", *METRIC_NAMES, *COLUMNS.values()]
    machine = record["machine"]
    features = record.get("peer_features") or {}
    peers_line = (
        f" Peers learn the {features['learnable_labels']:,} labels with a training positive "
        f"({100 * features['eval_positives_learnable']:.1f} % of the evaluation points' "
        f"positive labels), from {features['train_points']:,} training points and "
        f"{features['features']:,} TF-IDF features."
        if features
        else ""
    )
    notes = "\n".join(f"- {COLUMNS.get(key, key)}: {text}" for key, text in record["notes"].items())
    builds = record.get("builds") or []
    bundles = (
        "Our bundles are scored as they are; `--build-missing` trains absent ones with:\n\n"
        "```bash\n" + "\n".join(builds) + "\n```"
        if builds
        else ""
    )
    parts = [
        markdown_table(headers, rows),
        headline_verdict(record),
        f"{record['points']:,} `{record['eval_split']}` points with a positive label, "
        f"{record['labels']:,} labels in the catalog; models trained on "
        f"`{record['train_split']}`.{peers_line} Bold: the best of each metric column.",
        notes,
        bundles,
        f"Generated by `python -m bench.report` from `bench/results/quality_{record['dataset']}"
        f".json`, written by `{record['command']}` on {record['date']}; machine: "
        f"{machine['platform']}, {machine['cpu_count']} CPUs, Python {machine['python']}, "
        f"load average {machine['load_average'][0]} at the start and "
        f"{machine['load_average_at_end'][0]} at the end. Versions: {_versions_line(record)}.",
    ]
    return "\n\n".join(part for part in parts if part) + "\n"


def _setting(setting: Mapping[str, int]) -> str:
    """`ef_search=64`, `nprobe=32 refine_k=4`, or `exact` for a setting-free index."""
    return " ".join(f"{k}={v}" for k, v in setting.items()) or "exact"


def _scale_indexes(record: dict[str, Any]) -> str:
    """Per K and index: build, memory, and the fastest setting at each recall target."""
    targets = list(record["sizes"][0]["indexes"][0]["best_at_recall"])
    rows = []
    for size in record["sizes"]:
        for index in size["indexes"]:
            cells = [f"{size['labels']:,}", index["type"], _amount(index["build_s"])]
            cells += [_amount(index["bytes"] / 2**20), f"{index['bytes_per_label']:,.0f}"]
            for target in targets:
                best = index["best_at_recall"][target]
                cells.append(
                    "—"
                    if best is None
                    else f"{best['latency_ms']['p50']:.2f} / {best['latency_ms']['p99']:.2f}, "
                    f"{best['batched_qps']:,.0f} q/s ({_setting(best['setting'])})"
                )
            cells.append(f"{max(row['recall_at_10'] for row in index['sweep']):.3f}")
            rows.append(cells)
    headers = ["K", "index", "build s", "MiB", "B/label"]
    headers += [f"R@10 ≥ {t}: p50 / p99 ms, batched" for t in targets] + ["best R@10"]
    return markdown_table(headers, rows)


def _scale_mach(record: dict[str, Any]) -> str:
    """MACH against the one-vs-all layer at each K."""
    rows = []
    for size in record["sizes"]:
        mach, ova = size.get("mach"), size["one_vs_all"]
        if mach is None:
            continue
        good = [row for row in mach["fast"] if row["recall_at_10_vs_exact_decode"] >= 0.99]
        fast = good[0] if good else mach["fast"][-1]
        memory = mach["memory_mib"]
        rows.append(
            [
                f"{size['labels']:,}",
                f"{ova['memory_mib']:,.0f}",
                f"{_amount(ova['ms'])} ({ova['measured_as']})",
                f"{memory['mach_output_layer']:,.1f} + {memory['table_and_inverted_index']:,.1f}",
                f"{mach['output_layer_ms']:.2f} + {fast['decode_ms']:.2f} (m = "
                f"{fast['top_buckets']}, R@10 vs exact decoding "
                f"{fast['recall_at_10_vs_exact_decode']:.3f})",
                _amount(mach["exact_decode_ms"]),
            ]
        )
    headers = [
        "K",
        "one-vs-all MiB (K·d fp32)",
        "one-vs-all ms (exact scan)",
        "MACH MiB (layer + table)",
        "MACH ms (layer + fast decode)",
        "MACH exact decode ms",
    ]
    return markdown_table(headers, rows)


def _scale_calibration(calibration: dict[str, Any]) -> str:
    """Recall@10 by setting on real vectors and on a synthetic space of the same size."""
    rows = []
    for kind in ("real", "synthetic"):
        space = calibration[kind]
        for index in space["indexes"]:
            recalls = ", ".join(
                f"{_setting(row['setting'])}: {row['recall_at_10']:.3f}" for row in index["sweep"]
            )
            rows.append([kind, f"{space['labels']:,}", index["type"], recalls])
    return markdown_table(["vectors", "K", "index", "recall@10 by setting"], rows)


def render_scale(record: dict[str, Any]) -> str:
    """bench.scale's JSON: index costs by K, MACH against one-vs-all, the generator check."""
    machine = record["machine"]
    commands: dict[str, list[str]] = {}
    for size in record["sizes"]:
        run = size["measured"]
        commands.setdefault(f"`{run['command']}` on {run['date']}", []).append(
            f"K = {size['labels']:,} (load average {run['load_average']['before'][0]:.2f} "
            f"before, {run['load_average']['after'][0]:.2f} after)"
        )
    runs = "; ".join(f"{command}: {', '.join(ks)}" for command, ks in commands.items())
    parts = [
        _scale_indexes(record),
        "Latency: one query at a time, FAISS on 1 thread (p50 / p99 over the timed queries); "
        f"batched: {record['k']}-NN of all queries in batches of {record['batch']} on "
        f"{record['threads']['batched_and_build']} threads, as are builds. Recall@10 against "
        "exact search; `—`: no setting of the sweep reaches the target.",
        _scale_mach(record),
    ]
    if "calibration" in record:
        parts.append(_scale_calibration(record["calibration"]))
    parts.append(
        f"Generated by `python -m bench.report` from `bench/results/scale.json`. Runs: {runs}. "
        f"Machine: {machine['platform']}, {machine['cpu_count']} CPUs, Python "
        f"{machine['python']}. Versions: "
        + ", ".join(f"{name} {v}" for name, v in record["versions"].items() if v)
        + "."
    )
    return "\n\n".join(parts) + "\n"


def render_gpu(record: dict[str, Any]) -> str:
    """bench.gpu's JSON: single-query latency and batched throughput per model, where each part
    ran, and the targets when the run was on a GPU."""
    batches = list(next(iter(record["models"].values()))["batched_qps"])
    rows = []
    for model, figures in record["models"].items():
        single = figures["single_ms"]
        cells = [model, f"{single['p50']:.2f}", f"{single['p99']:.2f}"]
        rows.append(cells + [f"{figures['batched_qps'][b]:,.0f}" for b in batches])
    headers = [
        "model",
        "single p50 ms",
        "single p99 ms",
        *(f"q/s, batches of {b}" for b in batches),
    ]
    devices = record["devices"]
    machine = record["machine"]
    parts = [
        markdown_table(headers, rows),
        f"Bundle `{record['bundle']}` ({record['labels']:,} labels), k = {record['k']}, encoder "
        f"{record['precision']}. Devices: encoder {devices['encoder']}, ASTRA "
        f"{devices['astra_index']}, MACH {devices['mach_decode']}.",
    ]
    targets = record["targets"]
    if targets:
        single_ok = all(
            m["single_ms"]["p50"] <= targets["single_p50_ms"] for m in record["models"].values()
        )
        best_qps = max(max(m["batched_qps"].values()) for m in record["models"].values())
        parts.append(
            f"Targets: single-query p50 ≤ {targets['single_p50_ms']} ms "
            f"({'met' if single_ok else 'missed'}), batched ≥ {targets['batched_qps']:,.0f} q/s "
            f"({'met' if best_qps >= targets['batched_qps'] else 'missed'}: best {best_qps:,.0f})."
        )
    parts.append(
        f"Generated by `python -m bench.report` from the JSON written by `{record['command']}` "
        f"on {record['date']}; machine: {machine['platform']}, {machine['cpu_count']} CPUs, "
        f"Python {machine['python']}, load average {machine['load_average'][0]} at the start. "
        "Versions: " + ", ".join(f"{n} {v}" for n, v in record["versions"].items() if v) + "."
    )
    return "\n\n".join(parts) + "\n"


# Marker name -> (results JSON file, renderer).
SECTIONS: dict[str, tuple[str, Renderer]] = {
    "quality:homedepot": ("quality_homedepot.json", render_quality),
    "quality:cooking": ("quality_cooking.json", render_quality),
    "scale": ("scale.json", render_scale),
    "gpu:cpu": ("gpu_homedepot-hybrid_cpu.json", render_gpu),
    "gpu:cuda": ("gpu_homedepot-hybrid_cuda.json", render_gpu),
}


def _markers(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"(^<!-- {re.escape(name)} -->\n)(.*?)(^<!-- /{re.escape(name)} -->$)", re.S | re.M
    )


def has_section(text: str, name: str) -> bool:
    """Whether `text` holds the markers of section `name`."""
    return _markers(name).search(text) is not None


def replace_section(text: str, name: str, body: str) -> str:
    """`text` with everything between the markers of section `name` replaced by `body`."""
    if not has_section(text, name):
        raise ValueError(f"no '<!-- {name} -->' ... '<!-- /{name} -->' lines in the text")
    content = body.rstrip("\n") + "\n"
    return _markers(name).sub(lambda m: m.group(1) + content + m.group(3), text, count=1)


def update(
    text: str, results: Path, sections: Mapping[str, tuple[str, Renderer]] = SECTIONS
) -> tuple[str, list[str], list[str]]:
    """Render every section whose markers and JSON exist: (new text, updated, skipped reasons)."""
    updated, skipped = [], []
    for name, (file, render) in sections.items():
        path = results / file
        if not has_section(text, name):
            skipped.append(f"{name}: no markers in the file")
        elif not path.exists():
            skipped.append(f"{name}: {path} does not exist")
        else:
            text = replace_section(text, name, render(json.loads(path.read_text())))
            updated.append(name)
    return text, updated, skipped


def main(argv: list[str] | None = None) -> int:
    """Rewrite the generated sections of BENCHMARKS.md in place."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", type=Path, default=BENCHMARKS_MD)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    before = args.file.read_text()
    after, updated, skipped = update(before, args.results)
    if after != before:
        args.file.write_text(after)
    for reason in skipped:
        print(f"skipped {reason}", file=sys.stderr)
    state = "changed" if after != before else "unchanged"
    print(f"{args.file}: {len(updated)} section(s) rendered, {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
