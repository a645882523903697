"""BENCHMARKS.md's generated sections, rewritten from the results JSON the benchmarks wrote.

    python -m bench.report [--file BENCHMARKS.md] [--results bench/results]

A generated section sits between `<!-- NAME -->` and `<!-- /NAME -->` lines; `SECTIONS` maps
NAME to the JSON file under the results directory and the function that renders it as
Markdown (or to several files: the renderer then gets {file name: record}). Everything
between the markers is replaced, so the tables are never typed by hand and running this twice
changes nothing. Text outside the markers (the reading of the figures)
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

from bench.scale_fit import measured_rows
from training.ranking_metrics import METRIC_NAMES

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


def _scale_extrapolated(fits: list[dict[str, Any]]) -> str:
    """Fitted build time, memory, recall and latency at a size too large to build here."""
    rows = []
    for fit in fits:
        best = fit["first_reaching_goal"]
        by_setting = ", ".join(
            f"{_setting(row['setting'])}: {row['recall_at_10']:.3f} in {row['p50_ms']:.1f} ms"
            for row in fit["by_setting"]
        )
        rows.append(
            [
                f"{fit['labels']:,}",
                fit["index"],
                ", ".join(f"{k:,}" for k in fit["fitted_on"]),
                f"{fit['build_s'] / 3600:.1f} h (K^{fit['build_exponent']:.2f})",
                f"{fit['bytes'] / 2**30:.1f}",
                by_setting,
                "—" if best is None else _setting(best["setting"]),
            ]
        )
    headers = [
        "K (fitted)",
        "index",
        "fitted on K",
        "build, 2 threads",
        "GiB",
        "recall@10 and p50 by setting",
        f"first setting ≥ {fits[0]['goal_recall_at_10']}",
    ]
    return markdown_table(headers, rows) + (
        "\n\nExtrapolated, not measured (`bench.scale_fit`): build time a power law in K, "
        "memory linear in K, recall and p50 at each setting linear in log10 K, over the sizes "
        "listed. Plot: `bench/results/scale_extrapolated.png`."
    )


def render_scale(record: dict[str, Any]) -> str:
    """bench.scale's JSON: index costs by K, MACH against one-vs-all, the generator check."""
    machine = record["machine"]
    commands: dict[str, list[str]] = {}
    for size in record["sizes"]:
        for run in [*size.get("earlier_runs", []), size["measured"]]:
            types = f"{', '.join(run['types'])}; " if size.get("earlier_runs") else ""
            commands.setdefault(f"`{run['command']}` on {run['date']}", []).append(
                f"K = {size['labels']:,} ({types}load average "
                f"{run['load_average']['before'][0]:.2f} before, "
                f"{run['load_average']['after'][0]:.2f} after)"
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
    if record.get("extrapolated"):
        parts.append(_scale_extrapolated(record["extrapolated"]))
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


def _generated_from(*files: str) -> str:
    """The provenance line under a generated table: the results JSON it was rendered from."""
    paths = " and ".join(f"`bench/results/{file}`" for file in files)
    return f"Generated by `python -m bench.report` from {paths}."


def _p50_p99(stats: Mapping[str, float]) -> str:
    """`p50 / p99` of a latency summary in milliseconds, one decimal each."""
    return f"{stats['p50']:.1f} / {stats['p99']:.1f}"


def _joined(values: Sequence[str]) -> str:
    """One value when the runs agree, else each run's value in order: `4,500 / 4,200`."""
    return " / ".join(dict.fromkeys(values))


def render_parity(record: dict[str, Any]) -> str:
    """bench.parity's JSON: cosine of the served ONNX path to sentence-transformers per dataset."""
    datasets = record["datasets"]
    below = next(key for key in next(iter(datasets.values())) if key.startswith("below_"))
    rows = [
        [
            f"`{name}`",
            f"{figures['queries']:,}",
            f"{figures['min_cosine']:.8f}",
            f"{figures['mean_cosine']:.7f}",
            f"{figures[below]:,}",
        ]
        for name, figures in datasets.items()
    ]
    headers = ["dataset", "training queries", "min cosine", "mean cosine"]
    table = markdown_table([*headers, below.replace("_", " ")], rows)
    return f"{table}\n\n{_generated_from('parity.json')}\n"


INT8_METRICS = ("P@1", "nDCG@10", "R@100")


def render_int8(record: dict[str, Any]) -> str:
    """bench.int8's JSON: the int8 encoder's cosine to fp32 and both encoders' dev metrics."""
    parity, fp32 = record["parity"], record["dev_fp32"]
    rows = [
        ["fp32 (`encoder.onnx`)", "1", "1", "1"],
        [
            "int8 (`encoder.int8.onnx`)",
            f"{parity['cosine_min']:.4f}",
            f"{parity['cosine_p01']:.4f}",
            f"{parity['cosine_mean']:.4f}",
        ],
    ]
    for row, precision in zip(rows, ("fp32", "int8"), strict=True):
        metrics = record[f"dev_{precision}"]
        row += [f"{metrics[name]:.4f}" for name in INT8_METRICS]
    headers = ["encoder", "min cosine to fp32", "1st pct.", "mean"]
    table = markdown_table([*headers, *(f"dev {name}" for name in INT8_METRICS)], rows)
    int8 = record["dev_int8"]
    results_file = f"int8_{record['dataset']}.json"
    cost = ", ".join(f"{int8[name] - fp32[name]:+.4f} {name}" for name in INT8_METRICS)
    return (
        f"{table}\n\nQuality cost of int8: {cost} ({int(parity['queries']):,} dev queries for "
        f"the cosines, {record['dataset']}). "
        f"{_generated_from(results_file)} Written by `{record['command']}` "
        f"on {record['date']}.\n"
    )


RANKER_METRICS = ("nDCG@10", "P@1", "P@5")


def _stacked_helpers(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The helper bundles a ranker also learned from: none before session 15, one object in
    session 15's runs, a list since."""
    stacked = record.get("stacked") or []
    return [stacked] if isinstance(stacked, dict) else stacked


def render_ranker(record: dict[str, Any]) -> str:
    """bench.ranker's JSON: the formula against the learned ranker with its feature groups
    added in turn (cross-validated on dev), and what ranking costs a query."""
    rows = [["the formula: cosine + λ·BM25 / max (served before)", *_cells(record["formula"])]]
    stacked = _stacked_helpers(record)
    if "dev_only" in record:
        rows.append(
            ["learned ranker: all features, learning from dev alone", *_cells(record["dev_only"])]
        )
    learned = "learned ranker" + "".join(
        f" + {helper['queries']:,} `{helper['split']}` queries" for helper in stacked
    )
    for step in record["ablation"]:
        rows.append([f"{learned}: {step['features']}", *_cells(step["dev_cv"])])
    table = markdown_table(["ranking", *(f"dev {name}" for name in RANKER_METRICS)], rows)
    steps = record.get("normalisation") or []
    if steps:
        rows = [
            [step["analyzer"], *_cells(step["formula"]), *_cells(step["dev_cv"])] for step in steps
        ]
        headers = [
            "analyzer (rules added in turn)",
            *(f"formula {name}" for name in RANKER_METRICS),
            *(f"ranker {name}" for name in RANKER_METRICS),
        ]
        table += "\n\n" + markdown_table(headers, rows)
    latency = record["latency"]
    encoder = record["encoder"]
    results_file = f"ranker_{record['dataset']}.json"
    return (
        f"{table}\n\nDev queries with a relevant product ({record['dataset']}); the ranker rows "
        f"are {record['shuffles']} shuffles of {record['folds']}-fold cross-validation on dev "
        "(each query scored by a ranker that never saw it), the formula scored on the same "
        f"queries, all with the {encoder['size']} {encoder['precision']} encoder as served. "
        + (
            "The stacked rows: "
            + "; ".join(
                f"the {helper['queries']:,} queries of `{helper['split']}` scored by "
                f"`{helper['bundle']}`, fitted on the other half of train"
                for helper in stacked
            )
            + ", in every fold's training data; the analyzer table's rankers learn from dev "
            "alone. "
            if stacked
            else ""
        )
        + f"Ranking one query in process ({latency['queries']:,} dev queries, taking turns): "
        f"p50 {latency['formula']['p50_ms']:.2f} ms with the formula, "
        f"{latency['ranker']['p50_ms']:.2f} ms with the ranker (+{latency['added_p50_ms']:.2f} "
        f"ms: features {latency['features']['p50_ms']:.2f}, model "
        f"{latency['model']['p50_ms']:.2f}). {_generated_from(results_file)}"
        f" Written by `{record['command']}` on {record['date']}.\n"
    )


def _cells(metrics: Mapping[str, float]) -> list[str]:
    return [f"{metrics[name]:.4f}" for name in RANKER_METRICS]


def render_fields(record: dict[str, Any]) -> str:
    """bench.fields' JSON: dev quality per text-field set, then BM25F weights on the best."""

    def weights(row: Mapping[str, Any]) -> str:
        return ", ".join(f"{name} {weight:g}" for name, weight in row["bm25_fields"].items())

    rows = [
        [" + ".join(row["text_fields"]), weights(row), f"{row['lexical_weight']:g}", *_cells(row)]
        for row in (*record["field_sets"], *record["weighted"])
    ]
    headers = [
        "label text (fields)",
        "BM25 field weights",
        "λ",
        *(f"dev {m}" for m in RANKER_METRICS),
    ]
    best = record["field_sets"][record["best"]]
    weighted = record["field_sets"][record.get("weighted_set", record["best"])]
    return (
        f"{markdown_table(headers, rows)}\n\nASTRA with its lexical ranker (the formula), trained "
        f"{record['epochs']} epoch(s) on the {record['dataset']} catalog's export "
        f"(`{record['data']}`) once per field set, λ tuned on dev ({record['dev_points']:,} "
        f"queries) as `training train` tunes it; best: {' + '.join(best['text_fields'])}. The "
        "last rows re-index the best set with fields beside the title "
        f"({' + '.join(weighted['text_fields'])}) with those fields' BM25 weights changed "
        f"(BM25F) and re-tune λ. {_generated_from('fields_' + record['dataset'] + '.json')} "
        f"Written by `{record['command']}` on {record['date']}.\n"
    )


# The throughput target is set at 32 concurrent clients (the "p99 at" column).
TARGET_CLIENTS = 32


def _encoder_precision(record: Mapping[str, Any]) -> str:
    """The encoder a load run's server served: as it said (`/v1/models`), else as it was told
    (runs from before the default became auto were fp32 unless told)."""
    served = record.get("served") or {}
    told = record["server"]["env"].get("XC_ENCODER_PRECISION", "fp32")
    precision = served.get("encoder_precision") or told
    # Runs from before the student encoder existed name no size (they served the full one).
    size = served.get("encoder_size")
    return f"{size} {precision}" if size else precision


def _load_label(record: Mapping[str, Any]) -> str:
    """A load run's row label: the encoder, and the query stream and cache where they were set."""
    label = _encoder_precision(record)
    settings = record.get("settings", {})
    stream = settings.get("stream")
    if stream == "zipf":
        label += f", Zipf stream (s = {settings['zipf_exponent']})"
    elif stream:
        label += ", distinct stream"
    if record["server"]["env"].get("XC_CACHE_ENTRIES") == "0":
        label += ", cache off"
    elif stream:
        label += ", cache on"
    return label


def render_load(records: dict[str, Any]) -> str:
    """bench.load's JSON, one run per encoder precision: single-client latency and throughput,
    with httpx and (where measured) with the lean client."""
    rows = []
    for record in records.values():
        single, lean = record["sequential"], record.get("sequential_lean")
        at_target = next(r for r in record["throughput"] if r["concurrency"] == TARGET_CLIENTS)
        lean_levels = record.get("throughput_lean") or []
        rows.append(
            [
                _load_label(record),
                _p50_p99(single["client_ms"]),
                _p50_p99(lean["client_ms"]) if lean else "-",
                f"{single['server_took_ms']['p50']:.1f}",
                " / ".join(f"{run['qps_200']:.0f}" for run in record["throughput"]),
                " / ".join(f"{run['qps_200']:.0f}" for run in lean_levels) or "-",
                f"{at_target['latency_ms_200']['p99']:.0f}",
            ]
        )
    clients = _joined(
        [" / ".join(str(r["concurrency"]) for r in rec["throughput"]) for rec in records.values()]
    )
    headers = [
        "encoder",
        "single client p50 / p99 (ms), httpx",
        "same, lean client",
        "server `took_ms` p50",
        f"q/s at {clients} clients, httpx",
        "same, lean clients",
        f"p99 at {TARGET_CLIENTS} clients (ms), httpx",
    ]
    return f"{markdown_table(headers, rows)}\n\n{_generated_from(*records)}\n"


def render_load_stages(record: dict[str, Any]) -> str:
    """Mean server milliseconds per stage (`xc_stage_seconds`) in each phase of one load run,
    from the target's client count up."""
    phases = [("single client", record["sequential"])]
    phases += [
        (f"{run['concurrency']} clients", run)
        for run in record["throughput"]
        if run["concurrency"] >= TARGET_CLIENTS
    ]
    phases.append(("overload", record["overload"]))
    stages = list(record["sequential"]["metrics"]["stage_seconds"])
    rows = []
    for phase, run in phases:
        seconds = run["metrics"]["stage_seconds"]
        cells = [phase, *(f"{1000 * seconds[stage]['mean_s']:.2f}" for stage in stages)]
        rows.append([*cells, f"{1000 * seconds['total']['p99_s']:.1f}"])
    headers = [f"phase ({_encoder_precision(record)})", *stages, "total p99"]
    source = _generated_from(f"load_{record['name']}.json")
    return f"{markdown_table(headers, rows)}\n\n{source}\n"


def render_hot_path(record: dict[str, Any]) -> str:
    """bench.hot_path's JSON: one search's round trip split by stage (p50 and mean ms), one
    column per variant, the variants measured taking turns in one run."""
    variants = record["variants"]
    stages = list(variants[0]["summary"])
    rows = [[stage, *(_stage_cell(v["summary"][stage]) for v in variants)] for stage in stages]
    headers = ["stage (ms, p50 / mean)", *(_variant_label(v) for v in variants)]
    load = ", ".join(f"{x:.2f}" for x in record["load_average_before"])
    note = (
        f"{record['requests']:,} requests per variant, one client, k = 10, cache off, "
        f"{record['date']}, {record['machine']['cpu_count']} CPUs, load average before {load}. "
        f"Command: `{record['command']}`."
    )
    return f"{markdown_table(headers, rows)}\n\n{note} {_generated_from('hot_path.json')}\n"


def _stage_cell(stats: Mapping[str, float]) -> str:
    return f"{stats['p50']:.3f} / {stats['mean']:.3f}"


def _variant_label(variant: Mapping[str, Any]) -> str:
    """`name: encoder served (settings)`."""
    settings = ", ".join(f"`{k}={v}`" for k, v in variant["env"].items())
    label = f"{variant['name']}: {variant['encoder']}" if "encoder" in variant else variant["name"]
    return f"{label} ({settings})" if settings else label


# The fast decoder's buckets per head in a trained bundle
# (training.mach.heads.MachConfig.top_buckets; not imported, as that module loads torch).
SERVED_TOP_BUCKETS = 10


def _decode_row(
    size: list[str], decoder: str, n1: Mapping[str, float], recall: str, candidates: int
) -> list[str]:
    """One row of the MACH decoding table: K, B, decoder, p50 / p90 ms, recall, candidates."""
    return [*size, decoder, f"{n1['p50']:.2f}", f"{n1['p90']:.2f}", recall, f"{candidates:,}"]


def render_mach_decode(record: dict[str, Any]) -> str:
    """bench.mach_decode's JSON: exact against fast decoding at each K on the main scenario,
    at the fewest buckets per head reaching the recall target and at the served default."""
    scenario_name = record["config"]["scenarios"][0]
    target = record["config"]["target_recall"]
    rows = []
    for result in record["results"]:
        scenario = next(s for s in result["scenarios"] if s["scenario"] == scenario_name)
        size = [f"{result['labels']:,}", f"{result['buckets']:,}"]
        if "membership" in result:  # runs since session 9 name it
            size[0] += f" ({result['membership']})"
        exact = scenario["exact_ms"]["n1"]
        rows.append(_decode_row(size, "exact (all K labels)", exact, "1.000", result["labels"]))
        fewest = scenario["min_top_buckets_for_target_recall"]
        filtered = scenario.get("fastest_filtered_at_target_recall")
        for fast in scenario["fast"]:
            buckets = fast["top_buckets"]
            if fast is filtered or fast == filtered:
                rows.append(
                    _decode_row(
                        size,
                        f"fast, top {buckets} buckets, in ≥ {fast['min_hits']} heads",
                        fast["n1"],
                        f"{fast['recall_at_10']:.3f}",
                        fast["expected_candidates"],
                    )
                )
                continue
            if buckets not in (fewest, SERVED_TOP_BUCKETS) or fast.get("min_hits", 1) != 1:
                continue
            default = " (served default)" if buckets == SERVED_TOP_BUCKETS else ""
            recall = f"{fast['recall_at_10']:.3f}"
            rows.append(
                _decode_row(
                    size,
                    f"fast, top {buckets} buckets per head{default}",
                    fast["n1"],
                    f"**{recall}**" if buckets == fewest else recall,
                    fast["expected_candidates"],
                )
            )
    headers = ["K", "B", "decoder", "p50 ms", "p90 ms", "recall@10 vs exact", "candidates"]
    note = (
        f"Scenario `{scenario_name}`. Bold: the fewest buckets per head reaching recall@10 ≥ "
        f"{target} against exact decoding."
    )
    return f"{markdown_table(headers, rows)}\n\n{note} {_generated_from('mach_decode.json')}\n"


def render_mach_decode_proof(record: dict[str, Any]) -> str:
    """bench.mach_decode's JSON, both scenarios: what the served fast decoder keeps of exact
    decoding, and how much an exact decoder would have to read to prove its top 10."""
    rows = []
    for result in record["results"]:
        for scenario in result["scenarios"]:
            certify = scenario["exact_ms"].get("certify")
            if certify is None:  # runs before session 15 did not measure it
                continue
            served = next(
                (f for f in scenario["fast"] if f["top_buckets"] == SERVED_TOP_BUCKETS), None
            )
            share = certify["fraction_of_buckets_p50"]
            rows.append(
                [
                    f"{result['labels']:,}",
                    scenario["scenario"],
                    "—" if served is None else f"{served['recall_at_10']:.3f}",
                    "—" if served is None else f"{served['truth_at_10']:.3f}",
                    f"{share * result['buckets']:,.0f} of {result['buckets']:,}"
                    f" ({100 * share:.3g}%)",
                    f"{certify['candidates_p50']:,}"
                    f" ({certify['candidates_p50'] / result['labels']:.1%})",
                    f"{scenario['exact_ms']['n1']['p50']:.1f}",
                ]
            )
    headers = [
        "K",
        "scenario",
        f"fast (top {SERVED_TOP_BUCKETS}) recall@10 vs exact",
        "fast: generator's labels found",
        "buckets per head to prove exact's top 10 (p50)",
        "labels those buckets hold",
        "exact ms",
    ]
    return f"{markdown_table(headers, rows)}\n\n{_generated_from('mach_decode.json')}\n"


def render_mach_served(record: dict[str, Any]) -> str:
    """bench.mach_served's JSON: a whole `python -m service` process serving MACH at K labels,
    its memory after load and after queries, and search latency over HTTP."""
    rows = []
    for result in record["results"]:
        loaded, queried = result["memory_after_load_mib"], result["memory_after_queries_mib"]
        stages = result["stage_ms"]
        one_vs_all = one_vs_all_mib(result["labels"])
        rows.append(
            [
                f"{result['labels']:,}",
                f"{result['buckets']:,}",
                result["model_info"]["mach"]["precision"]
                + (" + fp32 rows" if result["model_info"]["mach"]["exact"] else ""),
                f"{sum(result['file_bytes'].values()) / 1e9:,.2f}",
                f"{result['ready_s']:.1f}",
                f"{loaded['VmRSS']:,.0f} ({loaded['RssAnon']:,.0f} + {loaded['RssFile']:,.0f})",
                f"{queried['VmRSS']:,.0f} ({queried['RssAnon']:,.0f} + {queried['RssFile']:,.0f})",
                f"{queried['VmHWM']:,.0f}",
                f"{one_vs_all:,.0f} ({one_vs_all / queried['VmRSS']:.0f}×, "
                f"{one_vs_all / queried['RssAnon']:.0f}×)",
                f"{result['http_ms']['p50']:.1f} / {result['http_ms']['p90']:.1f}",
                f"{stages['encode']['p50_ms']:.1f} + {stages['retrieve']['p50_ms']:.1f}",
            ]
        )
    headers = [
        "K",
        "B",
        "heads served",
        "bundle GB on disk",
        "load s (start to ready)",
        "RSS MiB after load (anon + file)",
        "RSS MiB after queries (anon + file)",
        "peak RSS MiB",
        "one-vs-all layer MiB (× the process's RSS, × its anon)",
        "HTTP p50 / p90 ms",
        "server: encode + retrieve p50 ms",
    ]
    return (
        f"{markdown_table(headers, rows)}\n\nOne server process, `XC_THREADS=1`, cache off, "
        f"{record['queries']} distinct queries one after another (`model: mach`, k = 10); R = 16, "
        f"hidden 128, random weights. {_generated_from('mach_served.json')} Command: "
        f"`{record['command']}`, {record['date'][:10]}, load average "
        f"{record['machine']['load_average'][0]} at the start.\n"
    )


# The dimension of the one-vs-all layer MACH's memory is compared with (MiniLM's 384).
DIM_ONE_VS_ALL = 384


def one_vs_all_mib(labels: int) -> float:
    """MiB of a one-vs-all output layer over `labels` (labels x DIM_ONE_VS_ALL fp32)."""
    return labels * DIM_ONE_VS_ALL * 4 / MIB_BYTES


def _astra_index_mib(scale: dict[str, Any], labels: int, kind: str) -> str:
    """ASTRA's index of type `kind` at `labels`: measured where bench.scale built it there,
    else the bytes per label of its largest measured size times K (marked so)."""
    measured = measured_rows(scale, kind)
    if not measured:
        return "—"
    exact = [index for k, index in measured if k == labels]
    if exact:
        return f"{exact[0]['bytes'] / MIB_BYTES:,.0f} MiB"
    largest_k, largest = max(measured, key=lambda pair: pair[0])
    per_label = largest["bytes_per_label"]
    return (
        f"{per_label * labels / MIB_BYTES:,.0f} MiB ({per_label:,.0f} B/label at {largest_k:,} × K)"
    )


def render_mach_memory(records: dict[str, Any]) -> str:
    """bench.mach_decode's memory figures: MACH's layer and tables against a one-vs-all layer
    and against the index ASTRA's service picks at that K (`auto_index_type`; its bytes from
    bench.scale, carried from its largest measured size where it was not built at that K)."""
    from service.astra.index import auto_index_type

    record, scale = records["mach_decode.json"], records["scale.json"]
    rows = []
    for result in record["results"]:
        memory = result["memory_mib"]
        ratio = memory["one_vs_all_output_layer"] / memory["mach_total"]
        rows.append(
            [
                f"{result['labels']:,}",
                f"{memory['mach_output_layer']:,.1f} MiB",
                f"{memory['table_and_inverted_index']:,.1f} MiB, "
                f"{result.get('membership', 'table')} ({memory['mach_total']:,.1f} MiB in all)",
                f"{memory['one_vs_all_output_layer']:,.1f} MiB ({ratio:.1f}×)",
                f"{(kind := auto_index_type(result['labels']))}: "
                + _astra_index_mib(scale, result["labels"], kind),
            ]
        )
    headers = [
        "K",
        "MACH output layer (R·hidden·B fp32)",
        "+ bucket membership (a table and inverted index, or computed)",
        "one-vs-all output layer (K·d fp32)",
        "ASTRA's index (the service's choice at K)",
    ]
    generated = _generated_from("mach_decode.json", "scale.json")
    return f"{markdown_table(headers, rows)}\n\n{generated}\n"


# bench.batch's path names -> what each runs.
BATCH_PATHS = {
    "cli": "`python -m service.batch`",
    "worker": "API worker in `python -m service`",
    "ray": "`python -m service.batch --engine ray`",
}


def render_batch(record: dict[str, Any]) -> str:
    """bench.batch's JSON: end-to-end seconds and queries/s of each offline scoring path."""
    rows = [
        [BATCH_PATHS.get(path, path), f"{run['seconds']:,.1f}", f"{run['queries_per_s']:,.0f}"]
        for path, run in record["paths"].items()
    ]
    table = markdown_table(["path", "seconds", "queries/s"], rows)
    return (
        f"{table}\n\n{record['requests']:,} requests. {_generated_from('batch_homedepot.json')}\n"
    )


def _while_searching(phase: Mapping[str, Any]) -> tuple[str, str]:
    """Search p50 / p99 and the upsert rate of a catalog phase with upserts running."""
    return _p50_p99(phase["search_ms"]), f"{phase['upserts']['products_per_s']:.0f}"


def render_catalog(records: dict[str, Any]) -> str:
    """bench.catalog's JSON, one run per encoder precision: search latency and upsert rate by
    phase."""
    runs = list(records.values())
    puts = _joined([str(run["upsert"]["put_ms"]["count"]) for run in runs])
    batch = _joined([str(run["batch"]) for run in runs])
    added = _joined([f"{run['overlay']['catalog']['added']:,}" for run in runs])
    deleted = _joined([f"{run['overlay']['catalog']['deleted']:,}" for run in runs])
    phases: list[tuple[str, Callable[[Mapping[str, Any]], tuple[str, str]]]] = [
        ("idle (no changes)", lambda run: (_p50_p99(run["idle"]["search_ms"]), "")),
        (
            f"upserts alone ({puts} PUTs × {batch})",
            lambda run: (
                "",
                f"{run['upsert']['products_per_s']:.0f} "
                f"(PUT p50 {run['upsert']['put_ms']['p50']:.0f} ms)",
            ),
        ),
        ("upserts back to back while searching", lambda run: _while_searching(run["streaming"])),
        ("upserts paced while searching", lambda run: _while_searching(run["paced"])),
        (
            f"after: {added} added and {deleted} deleted in the overlay, no changes",
            lambda run: (_p50_p99(run["overlay"]["search_ms"]), ""),
        ),
    ]
    rows = [[label, *(cell for run in runs for cell in cells(run))] for label, cells in phases]
    headers = ["phase"]
    for run in runs:
        headers += [f"{run['precision']}: search p50 / p99 ms", f"{run['precision']}: products/s"]
    return f"{markdown_table(headers, rows)}\n\n{_generated_from(*records)}\n"


# Marker name -> (results JSON file, renderer), or (several files, renderer of {file: record}).
def render_faults(record: dict[str, Any]) -> str:
    """bench.faults's JSON: SIGKILL cycles during batch jobs and upserts, and what survived."""
    jobs = f"{record['jobs_accepted']:,} / {record['jobs_completed']:,}"
    answers = f"{record['answers_expected']:,} / {record['answers_written']:,}"
    lost = record["answers_missing"] + record["answers_out_of_order"]
    changes = f"{record['puts_acknowledged']:,} PUTs, {record['changes_acknowledged']:,} products"
    table = markdown_table(
        [
            "faults injected",
            "batch jobs accepted / completed",
            "answers expected / written",
            "answers lost or misplaced",
            "answers duplicated",
            "catalog changes acknowledged",
            "changes lost",
            "PUTs half applied",
            "5xx answers",
        ],
        [
            [
                f"{record['kills']} × SIGKILL",
                jobs,
                answers,
                str(lost),
                str(record["answers_duplicated"]),
                changes,
                str(record["changes_lost"]),
                str(record["puts_half_applied"]),
                str(record["server_errors"]),
            ]
        ],
    )
    statuses = ", ".join(f"{code}: {count:,}" for code, count in sorted(record["statuses"].items()))
    return (
        f"{table}\n\nAnswers seen by status: {statuses}; requests cut by a kill (no answer, so "
        f"not acknowledged): {record['transport_errors']:,}. Seed {record['seed']}, "
        f"{record['requests_per_job']} lines per job, {record['seconds']:,} s.\n\n"
        f"{_generated_from('faults.json')} Command: `{record['command']}`, "
        f"{record['date'][:10]}.\n"
    )


def render_fleet(record: dict[str, Any]) -> str:
    """bench.fleet's JSON: catalog propagation across three replicas, and batch failover."""
    delays = record["propagation_ms"]
    propagation = markdown_table(
        [
            "replicas",
            "changes (PUT, one product each)",
            "observations (change × other replica)",
            "p50, ms",
            "p99, ms",
            "max, ms",
            "not visible within 10 s",
        ],
        [
            [
                str(record["replicas"]),
                f"{record['changes']:,}",
                f"{delays['samples']:,}",
                f"{delays['p50']:,}",
                f"{delays['p99']:,}",
                f"{delays['max']:,}",
                str(record["not_propagated"]),
            ]
        ],
    )
    jobs = f"{record['jobs_accepted']:,} / {record['jobs_completed']:,}"
    failover = markdown_table(
        [
            "replicas killed (SIGKILL, each holding a chunk)",
            "batch jobs accepted / completed",
            "answers expected / written",
            "answers lost",
            "answers duplicated",
            "answers out of order",
            "5xx answers",
        ],
        [
            [
                str(record["kills"]),
                jobs,
                f"{record['answers_expected']:,} / {record['answers_written']:,}",
                str(record["answers_missing"]),
                str(record["answers_duplicated"]),
                str(record["answers_out_of_order"]),
                str(record["server_errors"]),
            ]
        ],
    )
    return (
        f"{propagation}\n\n{failover}\n\nLease {record['lease_s']} s, "
        f"{record['requests_per_job']:,} lines per job, seed {record['seed']}, "
        f"{record['seconds']:,} s in all; {record['machine']['cpu_count']} cores shared by the "
        f"three replicas, PostgreSQL and the client, load average "
        f"{record['machine']['load_average'][0]} at the end.\n\n"
        f"{_generated_from('fleet.json')} Command: `{record['command']}`, "
        f"{record['date'][:10]}.\n"
    )


MACH_HEAD_VARIANTS = {
    "fp32": ("fp32", None),
    "int8": ("int8", "recall_at_10_int8_vs_fp32"),
    "int8_exact": ("int8 + fp32 rows (served)", "recall_at_10_int8_exact_vs_fp32"),
}


def render_mach_heads(record: dict[str, Any]) -> str:
    """bench.mach_heads's JSON: MACH's output layer in fp32, int8 and int8 rescored by the fp32
    rows, bytes against time, and what each keeps of fp32's top 10."""
    rows = []
    for result in record["results"]:
        for variant, (label, recall_key) in MACH_HEAD_VARIANTS.items():
            if variant not in result:  # runs before the rescoring existed
                continue
            run = result[variant]
            recall = f"{result[recall_key]:.3f}" if recall_key else "1"
            read = f"{run['weight_bytes'] / MIB_BYTES:,.0f}"
            if run.get("exact_row_bytes"):
                read += f" + {run['exact_row_bytes'] / MIB_BYTES:.2f}"
            decode = run.get("decode_p50_ms")
            rows.append(
                [
                    f"{result['labels']:,}",
                    f"{result['buckets']:,}",
                    label,
                    read,
                    f"{run['p50_ms']:.2f} / {run['p90_ms']:.2f}",
                    f"{run['gb_per_s']:.1f}",
                    "—" if decode is None else f"{decode:.2f}",
                    "—" if decode is None else f"{run['total_p50_ms']:.2f}",
                    recall,
                ]
            )
    headers = [
        "K",
        "B",
        "output layer",
        "read per query, MiB (weights + fp32 rows)",
        "layer p50 / p90 ms, one query, one thread",
        "GB/s",
        "decode p50 ms",
        "layer + decode p50 ms",
        "recall@10 vs fp32",
    ]
    return (
        f"{markdown_table(headers, rows)}\n\nR = 16, hidden {record['hidden']}, random weights, "
        f"{record['queries']} queries, top 10 buckets per head. "
        f"{_generated_from('mach_heads.json')} Command: "
        f"`{record['command']}`, {record['date'][:10]}.\n"
    )


MIB_BYTES = 1 << 20


def render_astra_optimizer(record: dict[str, Any]) -> str:
    """bench.astra_optimizer's JSON: the classifier update of one step against L."""
    names = {"adamw": "AdamW (dense)", "rowwise_adagrad": "row-wise Adagrad (sparse)"}
    rows = [
        [
            f"{run['labels']:,}",
            names.get(run["optimizer"], run["optimizer"]),
            f"{run['step_ms_p50']:,.1f}",
            f"{run['state_mib']:,.1f}",
            f"{run['gradient_mib']:,.1f}",
            f"{run['vectors_mib']:,.0f}",
        ]
        for run in record["runs"]
    ]
    headers = [
        "labels L",
        "classifier optimiser",
        "update ms p50 (one thread)",
        "state MiB",
        "gradient MiB",
        "vectors MiB (both)",
    ]
    return (
        f"{markdown_table(headers, rows)}\n\n{record['queries']} queries × "
        f"{record['label_set']:,} sampled labels, d = {record['dim']}. "
        f"{_generated_from('astra_optimizer.json')} Command: `{record['command']}`, "
        f"{record['date'][:10]}.\n"
    )


def render_astra_train_scale(record: dict[str, Any]) -> str:
    """bench.astra_train_scale's JSON: whole training steps and index refreshes against L."""
    gib = 1 << 30
    finished = [run for run in record["runs"] if "exit_code" not in run]
    rows = [
        [
            f"{run['labels']:,}",
            f"{run['distractors']:,}",
            f"{run['trained_labels']:,}",
            f"{run['mining_index']['type']} / {run['fixed_index']['type']}",
            f"{run['step_s_p50']:.2f} / {run['step_s_p90']:.2f}",
            f"{sum(run['refresh_s']) / len(run['refresh_s']):.2f} every "
            f"{run['refresh_every']} steps",
            f"{run['fixed_index_s']:.1f}",
            f"{run['peak_rss_bytes'] / gib:.1f}",
            f"{run['vector_bytes'] / gib:.2f}",
        ]
        for run in finished
    ]
    for run in record["runs"]:
        if "exit_code" in run:
            failed = f"did not finish: exit code {run['exit_code']}"
            rows.append(["—", f"{run['distractors']:,}", "—", "—", failed, "—", "—", "—", "—"])
    headers = [
        "labels L",
        "of which distractors",
        "trained rows",
        "mining indexes: trained / the others",
        "s per step p50 / p90",
        "s per refresh (trained labels' index)",
        "s to build the others' index, once",
        "peak RSS GiB while training",
        "text vectors GiB (fp16)",
    ]
    first = finished[0]
    return (
        f"{markdown_table(headers, rows)}\n\n{first['optimizer']} classifier optimiser, "
        f"{first['steps']} steps per size (the first few left out of the timing), batch 64, "
        f"each size in its own process. {_generated_from('astra_train_scale.json')} Command: "
        f"`{record['command']}`, {record['date'][:10]}.\n"
    )


HOSTILE_KINDS = {
    "loris": "20 slow-loris bodies (a byte every 0.5 s)",
    "uploads": "12 MB JSONL uploads (35,000 lines), two clients back to back",
    "big": "256-query searches at k = 100 (25,600 results each), back to back",
    "refused": "256-query searches at k = 1,000, back to back (over `XC_MAX_RESULTS`)",
}


def render_hostile(record: dict[str, Any]) -> str:
    """bench.hostile's JSON: the single-query probe's p99, idle and beside each attacker."""
    rows = []
    for run in record["runs"]:
        statuses = ", ".join(
            f"{code}: {count:,}" for code, count in sorted(run["attacker_statuses"].items())
        )
        if run["kind"] == "loris":
            statuses = f"{run['attacker_statuses'].get('0', 0)} connections held open"
        within = "yes" if run["hostile_p99_ms"] <= 5 * run["idle_p99_ms"] else "**no**"
        memory = f"{run['peak_rss_mb']:,.0f}"
        if run.get("children_peak_rss_mb"):
            memory += f" + {run['children_peak_rss_mb']:,.0f} (upload checkers)"
        rows.append(
            [
                HOSTILE_KINDS.get(run["kind"], run["kind"]),
                f"{run['idle_p99_ms']:.1f}",
                f"{run['hostile_p50_ms']:.1f} / {run['hostile_p99_ms']:.1f}",
                f"{run['ratio']:.1f}× ({within})",
                statuses,
                memory,
            ]
        )
    table = markdown_table(
        [
            "attacker (its own process, nice 19)",
            "probe p99 idle, ms",
            "probe p50 / p99 under attack, ms",
            "p99 / idle p99 (within 5×?)",
            "attacker's answers by status",
            "server peak RSS, MB",
        ],
        rows,
    )
    return (
        f"{table}\n\nA fresh server per attacker; {record['probes']} probes idle, then "
        f"{record['probes']} under attack; bundle `{record['bundle']}`, {record['seconds']:,} s "
        f"in all, on {record['machine']['cpu_count']} cores.\n\n"
        f"{_generated_from('hostile.json')} Command: `{record['command']}`, "
        f"{record['date'][:10]}.\n"
    )


PEER_ORDER = ("ours", "infinity", "afternoon", "tantivy")


def _cell(text: str, limit: int = 300) -> str:
    """Free text (a skip reason) made safe for one Markdown table cell."""
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}×"


def _peer_notes(system: Mapping[str, Any]) -> str:
    """One line per system: what ran, with which versions, and the load around it."""
    found = ", ".join(f"{name} {v}" for name, v in system.get("versions", {}).items() if v)
    before, after = system["load_average_before"][0], system["load_average_after"][0]
    label = system["label"]
    line = f"- **{label}**: `{system['command']}`" if system.get("command") else f"- **{label}**"
    if system.get("env"):
        line += " with " + ", ".join(f"`{k}={v}`" for k, v in system["env"].items())
    line += f"; {found}" if found else ""
    encoder = (system.get("served") or {}).get("encoder") or {}
    served = " ".join(encoder[key] for key in ("size", "precision") if encoder.get(key))
    line += f"; encoder served: {served}" if served else ""
    parity = system.get("parity_with_sentence_transformers")
    if parity:
        line += (
            f"; its embeddings of {parity['titles']} titles against sentence-transformers': "
            f"cosine ≥ {parity['min_cosine']:.6f}"
        )
    searches = [
        level["client_search"]["mean_ms"]
        for level in system.get("throughput", [])
        if level.get("client_search", {}).get("mean_ms") is not None
    ]
    if searches:
        line += f"; the client's FAISS search took {min(searches):.2f}–{max(searches):.2f} ms"
    return line + f"; load average {before} before, {after} after."


def render_peers_serving(record: dict[str, Any]) -> str:
    """bench.peers_serving's JSON: each system's nDCG@10 on dev, single-client p50 / p99,
    q/s per closed-loop level, errors, and our ratio to each peer."""
    systems = record["systems"]
    ratios = record.get("ratios", {})
    levels = record["settings"]["concurrency"]
    at = next(iter(ratios.values()), {}).get("clients", TARGET_CLIENTS)
    rows = []
    keys = [key for key in PEER_ORDER if key in systems]
    keys += [key for key in systems if key not in keys]
    for key in keys:
        system = systems[key]
        if "skipped" in system:
            rows.append([system["label"], f"skipped: {_cell(system['skipped'])}", *["-"] * 5])
            continue
        ratio = ratios.get(key, {})
        rows.append(
            [
                f"**{system['label']}**" if key == "ours" else system["label"],
                f"{system['quality']['nDCG@10']:.4f}",
                _p50_p99(system["sequential"]["client_ms"]),
                " / ".join(f"{level['qps_200']:,.0f}" for level in system["throughput"]),
                f"{system['errors']['total']:,}",
                "-" if key == "ours" else _ratio(ratio.get("qps")),
                "-" if key == "ours" else _ratio(ratio.get("single_p50")),
            ]
        )
    clients = " / ".join(str(c) for c in levels)
    table = markdown_table(
        [
            "system",
            "nDCG@10 (dev)",
            "single client p50 / p99 (ms)",
            f"q/s at {clients} clients",
            "errors",
            f"ours ÷ peer, q/s at {at}",
            "ours ÷ peer, p50",
        ],
        rows,
    )
    settings, machine = record["settings"], record["machine"]
    notes = "\n".join(_peer_notes(systems[key]) for key in keys)
    return (
        f"{table}\n\n"
        f"{settings['products']:,} products; {settings['queries']:,} `{settings['split']}` "
        f"queries in turn for the timed phases ({settings['requests']:,} single-client requests "
        f"after {settings['warmup']}, {settings['duration_s']:g} s per level after "
        f"{settings['warmup_s']:g} s of warm-up), nDCG@10 over the "
        f"{settings['scored_points']:,} of them with a relevant product; k = {settings['k']}. "
        "One system at a time, all on the same machine as the client (lean keep-alive HTTP "
        "client). Above 1× in the q/s column and below 1× in the p50 column, ours is ahead.\n\n"
        f"{notes}\n\n"
        f"{_generated_from('peers_serving.json')} Written by `{record['command']}` on "
        f"{record['date']} ({record['seconds']:,.0f} s); machine: {machine['platform']}, "
        f"{machine['cpu_count']} CPUs, Python {machine['python']}, load average "
        f"{machine['load_average'][0]} at the start and {record['load_average_at_end'][0]} at "
        "the end.\n"
    )


SECTIONS: dict[str, tuple[str | tuple[str, ...], Renderer]] = {
    "quality:homedepot": ("quality_homedepot.json", render_quality),
    "quality:cooking": ("quality_cooking.json", render_quality),
    "scale": ("scale.json", render_scale),
    "gpu:cpu": ("gpu_homedepot-hybrid_cpu.json", render_gpu),
    "gpu:cuda": ("gpu_homedepot-hybrid_cuda.json", render_gpu),
    "parity": ("parity.json", render_parity),
    "int8": ("int8_homedepot.json", render_int8),
    "ranker": ("ranker_homedepot.json", render_ranker),
    "fields": ("fields_demo.json", render_fields),
    "load": (("load_homedepot-int8.json", "load_homedepot-fp32.json"), render_load),
    "load:stages": ("load_homedepot-int8.json", render_load_stages),
    "hot_path": ("hot_path.json", render_hot_path),
    "load:streams": (
        (
            "load_homedepot-distinct-full.json",
            "load_homedepot-distinct.json",
            "load_homedepot-zipf.json",
        ),
        render_load,
    ),
    "mach_decode": ("mach_decode.json", render_mach_decode),
    "mach_decode:memory": (("mach_decode.json", "scale.json"), render_mach_memory),
    "mach_decode:proof": ("mach_decode.json", render_mach_decode_proof),
    "mach_heads": ("mach_heads.json", render_mach_heads),
    "mach_served": ("mach_served.json", render_mach_served),
    "astra_optimizer": ("astra_optimizer.json", render_astra_optimizer),
    "astra_train_scale": ("astra_train_scale.json", render_astra_train_scale),
    "batch": ("batch_homedepot.json", render_batch),
    "catalog": (("catalog.json", "catalog-int8.json"), render_catalog),
    "faults": ("faults.json", render_faults),
    "fleet": ("fleet.json", render_fleet),
    "hostile": ("hostile.json", render_hostile),
    "peers_serving": ("peers_serving.json", render_peers_serving),
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
    text: str,
    results: Path,
    sections: Mapping[str, tuple[str | tuple[str, ...], Renderer]] = SECTIONS,
) -> tuple[str, list[str], list[str]]:
    """Render every section whose markers and JSON exist: (new text, updated, skipped reasons)."""
    updated, skipped = [], []
    for name, (files, render) in sections.items():
        paths = [results / file for file in ((files,) if isinstance(files, str) else files)]
        missing = [path for path in paths if not path.exists()]
        if not has_section(text, name):
            skipped.append(f"{name}: no markers in the file")
        elif missing:
            skipped.append(f"{name}: {missing[0]} does not exist")
        else:
            records = {path.name: json.loads(path.read_text()) for path in paths}
            record = records[paths[0].name] if isinstance(files, str) else records
            text = replace_section(text, name, render(record))
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
