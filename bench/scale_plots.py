"""The figures of `bench.scale`: recall against latency per K, cost against K, and the fitted
curves that carry an HNSW index to a size not built (`bench.scale_fit`)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter

from bench.scale_fit import measured_rows

MIB = 1 << 20


def _series(index: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Sweep rows grouped into lines: by every setting but the first (e.g. refine_k of IVF-PQ)."""
    lines: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in index["sweep"]:
        rest = list(row["setting"].items())[1:]
        name = index["type"] + "".join(f", {k}={v}" for k, v in rest)
        lines[name].append(row)
    return lines


def plot_recall_latency(report: dict[str, Any], path: Path) -> None:
    """Recall@10 against single-query p50 latency, one panel per K, one line per index."""
    sizes = report["sizes"]
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.2 * len(sizes), 4.4), squeeze=False)
    for ax, size in zip(axes[0], sizes, strict=True):
        for index in size["indexes"]:
            for name, rows in _series(index).items():
                ax.plot(
                    [row["latency_ms"]["p50"] for row in rows],
                    [row["recall_at_10"] for row in rows],
                    "o-" if len(rows) > 1 else "s",
                    label=name,
                    markersize=4,
                )
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on short spans
        ax.set_xlabel("p50 ms per query (1 thread)")
        ax.set_ylabel("recall@10 vs exact")
        ax.set_title(f"K = {size['labels']:,} ({size['vector_dtype']})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_latency_by_k(report: dict[str, Any], target: float, path: Path) -> None:
    """p50 latency at recall@10 >= `target` and memory, against K, per index, MACH and
    the one-vs-all layer."""
    latency: dict[str, list[tuple[int, float]]] = defaultdict(list)
    memory: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for size in report["sizes"]:
        k = size["labels"]
        for index in size["indexes"]:
            best = index["best_at_recall"].get(f"{target:.2f}")
            if best is not None:
                latency[index["type"]].append((k, best["latency_ms"]["p50"]))
            memory[index["type"]].append((k, index["bytes"] / MIB))
            if "bytes_without_refine_copy" in index:
                codes = index["bytes_without_refine_copy"] / MIB
                memory[f"{index['type']} without the fp16 copy"].append((k, codes))
        if "mach" in size:
            mach = size["mach"]
            good = [r for r in mach["fast"] if r["recall_at_10_vs_exact_decode"] >= 0.99]
            if good:
                latency["MACH (layer + fast decode)"].append((k, good[0]["total_ms"]))
            memory["MACH (layer + table)"].append((k, mach["memory_mib"]["mach_total"]))
        memory["one-vs-all layer (K·d fp32)"].append((k, size["one_vs_all"]["memory_mib"]))
    fig, (lat_ax, mem_ax) = plt.subplots(1, 2, figsize=(11, 4.4))
    # One colour per series name across both panels (more series than the default cycle has).
    names = list(dict.fromkeys([*latency, *memory]))
    pairs = plt.get_cmap("tab20").colors  # ten hues, each dark then light
    palette = [*pairs[::2], *pairs[1::2]]
    colour = {name: palette[i % len(palette)] for i, name in enumerate(names)}
    for ax, data in ((lat_ax, latency), (mem_ax, memory)):
        for name, points in data.items():
            xy = zip(*sorted(points), strict=True)
            ax.plot(*xy, "o-", label=name, markersize=4, color=colour[name])
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on short spans
        ax.set_yscale("log")
        ax.set_xlabel("labels K")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    lat_ax.set_ylabel(f"p50 ms per query, 1 thread, recall@10 ≥ {target}")
    lat_ax.set_title("Query latency by K (exact scan = one-vs-all layer)")
    mem_ax.set_ylabel("MiB")
    mem_ax.set_title("Memory by K")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_extrapolation(report: dict[str, Any], path: Path) -> None:
    """Per extrapolated index: measured recall@10 by K at each efSearch with the fitted lines
    carried to the target K (left), and build time with its power law (right)."""
    fits = report["extrapolated"]
    fig, axes = plt.subplots(len(fits), 2, figsize=(11, 4.2 * len(fits)), squeeze=False)
    for (recall_ax, build_ax), fit in zip(axes, fits, strict=True):
        measured = measured_rows(report, fit["index"])
        ks = [k for k, _ in measured]
        span = [min(fit["fitted_on"]), fit["labels"]]
        for line in fit["by_setting"]:
            name = " ".join(f"{k}={v}" for k, v in line["setting"].items())
            points = [
                (k, e["recall_at_10"])
                for k, index in measured
                for e in index["sweep"]
                if e["setting"] == line["setting"]
            ]
            (drawn,) = recall_ax.plot(*zip(*points, strict=True), "o-", label=name, markersize=4)
            start = line["recall_at_10"] + line["recall_lost_per_decade"] * (
                np.log10(fit["labels"]) - np.log10(span[0])
            )
            recall_ax.plot(span, [start, line["recall_at_10"]], "--", color=drawn.get_color())
        recall_ax.axhline(fit["goal_recall_at_10"], color="grey", lw=0.8)
        recall_ax.set_ylabel("recall@10 vs exact")
        recall_ax.set_title(f"{fit['index']}: measured (solid), fitted to K = {fit['labels']:,}")
        build_ax.plot(ks, [index["build_s"] / 60 for _, index in measured], "o-", label="measured")
        build_ax.plot(
            span,
            [
                fit["build_s"] / 60 * (span[0] / fit["labels"]) ** fit["build_exponent"],
                fit["build_s"] / 60,
            ],
            "--",
            label=f"fitted: K^{fit['build_exponent']:.2f}",
        )
        build_ax.set_yscale("log")
        build_ax.set_ylabel("build minutes (2 threads)")
        build_ax.set_title(f"{fit['index']}: build time")
        for ax in (recall_ax, build_ax):
            ax.set_xscale("log")
            ax.set_xlabel("labels K")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
