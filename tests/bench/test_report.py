"""Tests for bench.report: the quality table from a results JSON and the marked sections."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench.report import (
    RESULTS,
    SECTIONS,
    SERVED_TOP_BUCKETS,
    headline_verdict,
    main,
    render_batch,
    render_catalog,
    render_int8,
    render_load,
    render_load_stages,
    render_mach_decode,
    render_mach_memory,
    render_parity,
    render_quality,
    replace_section,
    update,
)
from tests.support.paths import REPO
from training.ranking_metrics import METRIC_NAMES


def _method(family: str, p1: float, ndcg10: float) -> dict[str, Any]:
    metrics = dict.fromkeys(METRIC_NAMES, 0.25) | {"P@1": p1, "nDCG@10": ndcg10, "points": 10}
    return {
        "family": family,
        "metrics": metrics,
        "train_seconds": 1234.5,
        "train_seconds_source": "manifest",
        "ms_per_query_batched": 1.234,
        "ms_per_query_single_p50": None,
        "model_mb": 87.04,
        "details": {"versions": {"omikuji": "0.5.2", "numpy": "1.26.4"}},
    }


def _record(ours_p1: float = 0.7) -> dict[str, Any]:
    return {
        "dataset": "cooking",
        "train_split": "trn",
        "eval_split": "tst",
        "headline": "P@1",
        "points": 10,
        "labels": 736,
        "peer_features": {
            "learnable_labels": 700,
            "eval_positives_learnable": 0.9512,
            "train_points": 100,
            "features": 5000,
        },
        "command": "python -m bench.quality --dataset cooking",
        "date": "2026-11-21T12:00:00+00:00",
        "machine": {
            "platform": "Linux",
            "cpu_count": 2,
            "python": "3.11.7",
            "load_average": [1.5],
            "load_average_at_end": [1.7],
        },
        "versions": {"numpy": "2.4.6", "libpecos": None},
        "notes": {"train_seconds": "how it was measured"},
        "builds": ["python -m training train --data d --out models/x --train-split trn"],
        "methods": {
            "hybrid": _method("ours", ours_p1, 0.75),
            "Omikuji": _method("peer", 0.71, 0.69),
        },
    }


def test_quality_table_has_a_row_per_method_the_best_in_bold_and_provenance() -> None:
    text = render_quality(_record(ours_p1=0.72))
    lines = text.splitlines()
    assert lines[0].startswith("| method | kind | P@1 |")
    assert lines[0].count("|") == len(METRIC_NAMES) + 7
    hybrid = next(line for line in lines if line.startswith("| hybrid |"))
    omikuji = next(line for line in lines if line.startswith("| Omikuji |"))
    assert "| **0.7200** |" in hybrid and "| **0.7500** |" in hybrid
    assert "| 1,234.5 | 1.23 | n/a | 87.0 |" in hybrid  # one decimal from 10 up, else two
    assert "| 0.7100 |" in omikuji and "| 0.6900 |" in omikuji
    assert "python -m bench.quality --dataset cooking" in text
    assert "omikuji 0.5.2" in text and "peers' interpreter: numpy 1.26.4" in text
    assert "libpecos" not in text  # not installed in the main interpreter: not listed
    assert "700 labels with a training positive (95.1 % of the evaluation" in text
    assert "- train s: how it was measured" in text
    assert "```bash\npython -m training train --data d --out models/x" in text


def test_verdict_says_whether_our_best_is_ahead_on_the_headline_metric() -> None:
    assert "is ahead of every other method" in headline_verdict(_record(ours_p1=0.72))
    behind = headline_verdict(_record(ours_p1=0.70))
    assert "is not ahead" in behind and "Omikuji (0.7100, +0.0100)" in behind


def test_replace_section_is_idempotent_and_leaves_the_rest_alone() -> None:
    text = "# B\n\nintro\n\n<!-- quality:cooking -->\nold table\n<!-- /quality:cooking -->\n\nend\n"
    once = replace_section(text, "quality:cooking", "new table\n")
    assert once == text.replace("old table", "new table")
    assert replace_section(once, "quality:cooking", "new table") == once
    with pytest.raises(ValueError, match="quality:homedepot"):
        replace_section(text, "quality:homedepot", "x")


def test_main_renders_marked_sections_from_json_and_skips_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    results = tmp_path / "results"
    results.mkdir()
    (results / SECTIONS["quality:cooking"][0]).write_text(json.dumps(_record()))
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text(
        "<!-- quality:cooking -->\n<!-- /quality:cooking -->\n"
        "<!-- quality:homedepot -->\nkept\n<!-- /quality:homedepot -->\n"
    )
    assert main(["--file", str(doc), "--results", str(results)]) == 0
    written = doc.read_text()
    assert "| hybrid | ours |" in written and "kept" in written
    assert "quality:homedepot" in capsys.readouterr().err
    again, updated, _ = update(written, results)
    assert again == written and updated == ["quality:cooking"]


def _stages(total_ms: float) -> dict[str, Any]:
    stages = ("tokenize", "queue", "encode", "retrieve", "total")
    return {"stage_seconds": {s: {"mean_s": total_ms / 1000, "p99_s": 0.0075} for s in stages}}


def _load_run(precision: str | None, single_p50: float) -> dict[str, Any]:
    throughput = [
        {"concurrency": c, "qps_200": qps, "latency_ms_200": {"p99": 3 * c}, "metrics": _stages(9)}
        for c, qps in ((8, 268.53), (32, 396.87), (128, 492.07))
    ]
    return {
        "name": f"homedepot-{precision or 'fp32'}",
        "server": {"env": {"XC_ENCODER_PRECISION": precision} if precision else {}},
        "sequential": {
            "client_ms": {"p50": single_p50, "p99": 11.491},
            "server_took_ms": {"p50": 4.402},
            "metrics": _stages(4.4886),
        },
        "throughput": throughput,
        "overload": {"metrics": _stages(234.33)},
        **(
            {
                "sequential_lean": {"client_ms": {"p50": 4.449, "p99": 6.73}},
                "throughput_lean": [{"concurrency": c, "qps_200": 2 * c} for c in (8, 32, 128)],
            }
            if precision
            else {}
        ),
    }


def test_load_table_has_a_row_per_encoder_and_the_stage_table_starts_at_32_clients() -> None:
    runs = {"a.json": _load_run("int8", 7.266), "b.json": _load_run(None, 8.635)}
    table = render_load(runs)
    assert table.startswith("| encoder | single client p50 / p99 (ms), httpx | same, lean client |")
    assert "q/s at 8 / 32 / 128 clients, httpx" in table
    assert "| int8 | 7.3 / 11.5 | 4.4 / 6.7 | 4.4 | 269 / 397 / 492 | 16 / 64 / 256 | 96 |" in table
    assert "| fp32 | 8.6 / 11.5 | - | 4.4 | 269 / 397 / 492 | - | 96 |" in table
    assert "`bench/results/b.json`" in table
    stages = render_load_stages(runs["a.json"])
    assert stages.startswith("| phase (int8) | tokenize | queue | encode | retrieve | total |")
    assert "| single client | 4.49 | 4.49 | 4.49 | 4.49 | 4.49 | 7.5 |" in stages
    assert "| 32 clients |" in stages and "| 8 clients |" not in stages
    assert "| overload | 234.33 |" in stages


def test_parity_and_batch_tables_carry_the_json_figures() -> None:
    parity = render_parity(
        {
            "datasets": {
                "cooking": {
                    "queries": 12404,
                    "min_cosine": 0.99999988,
                    "mean_cosine": 1.0,
                    "below_0.9999": 3,
                }
            }
        }
    )
    assert parity.startswith("| dataset | training queries | min cosine | mean cosine |")
    assert "| `cooking` | 12,404 | 0.99999988 | 1.0000000 | 3 |" in parity
    paths = {
        "cli": {"seconds": 139.67, "queries_per_s": 716.0},
        "x": {"seconds": 1, "queries_per_s": 2},
    }
    batch = render_batch({"requests": 100000, "paths": paths})
    assert batch.startswith("| path | seconds | queries/s |")
    assert "| `python -m service.batch` | 139.7 | 716 |" in batch and "| x | 1.0 | 2 |" in batch


def test_mach_tables_from_the_real_json_show_exact_the_fewest_buckets_and_the_default() -> None:
    record = json.loads((RESULTS / "mach_decode.json").read_text())
    table = render_mach_decode(record)
    assert table.startswith("| K | B | decoder | p50 ms | p90 ms | recall@10 vs exact |")
    first = record["results"][0]
    graded = first["scenarios"][0]
    fewest = graded["min_top_buckets_for_target_recall"]
    size = f"{first['labels']:,}" + (f" ({first['membership']})" if "membership" in first else "")
    assert f"| {size} | {first['buckets']:,} | exact (all K labels) | " in table
    assert f"{graded['exact_ms']['n1']['p50']:.2f}" in table
    served = " (served default)" if fewest == SERVED_TOP_BUCKETS else ""
    assert f"fast, top {fewest} buckets per head{served} |" in table
    assert f"fast, top {SERVED_TOP_BUCKETS} buckets per head (served default) |" in table
    filtered = graded.get("fastest_filtered_at_target_recall")
    if filtered is not None:
        hits = filtered["min_hits"]
        assert f"fast, top {filtered['top_buckets']} buckets, in ≥ {hits} heads |" in table
    assert "fast, top 1 buckets" not in table
    scale = json.loads((RESULTS / "scale.json").read_text())
    memory = render_mach_memory({"mach_decode.json": record, "scale.json": scale})
    assert memory.startswith("| K | MACH output layer (R·hidden·B fp32) |")
    assert f"{first['memory_mib']['mach_output_layer']:,.1f} MiB" in memory
    assert memory.splitlines()[0].endswith("| ASTRA's index (the service's choice at K) |")
    assert "| hnsw: " in memory and "| pq4_scan: " in memory  # 1M, and 10M and beyond
    # K not built by bench.scale is carried from the largest size that was, and says so.
    assert "B/label at" in memory


def test_the_proof_table_has_a_row_per_size_and_scenario_with_its_depth() -> None:
    from bench.report import render_mach_decode_proof

    record = json.loads((RESULTS / "mach_decode.json").read_text())
    table = render_mach_decode_proof(record)
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    measured = [
        (r, s) for r in record["results"] for s in r["scenarios"] if "certify" in s["exact_ms"]
    ]
    assert len(rows) == 1 + len(measured)
    for result, scenario in measured:
        certify = scenario["exact_ms"]["certify"]
        share = certify["fraction_of_buckets_p50"]
        assert f"| {result['labels']:,} | {scenario['scenario']} |" in table
        assert (
            f"of {result['buckets']:,} ({100 * share:.3g}%) | {certify['candidates_p50']:,} ("
            in table
        )


def test_the_served_table_shows_memory_parts_latency_and_the_one_vs_all_ratio() -> None:
    from bench.report import render_mach_served

    record = json.loads((RESULTS / "mach_served.json").read_text())
    table = render_mach_served(record)
    for result in record["results"]:
        queried = result["memory_after_queries_mib"]
        one_vs_all = result["labels"] * 384 * 4 / (1 << 20)
        assert f"| {result['labels']:,} | {result['buckets']:,} |" in table
        assert (
            f"{queried['VmRSS']:,.0f} ({queried['RssAnon']:,.0f} + {queried['RssFile']:,.0f})"
            in table
        )
        assert f", {one_vs_all / queried['RssAnon']:.0f}×)" in table
        assert f"| {result['http_ms']['p50']:.1f} / {result['http_ms']['p90']:.1f} |" in table
    assert "`bench/results/mach_served.json`" in table


def test_served_top_buckets_is_the_training_default() -> None:
    from training.mach.heads import MachConfig

    assert MachConfig().top_buckets == SERVED_TOP_BUCKETS


def test_catalog_table_has_two_columns_per_run_and_joins_differing_counts() -> None:
    runs = {
        name: json.loads((RESULTS / name).read_text())
        for name in ("catalog.json", "catalog-int8.json")
    }
    table = render_catalog(runs)
    header = table.splitlines()[0]
    assert header.startswith("| phase | fp32: search p50 / p99 ms | fp32: products/s | int8:")
    fp32 = runs["catalog.json"]
    assert (
        f"| {fp32['idle']['search_ms']['p50']:.1f} / {fp32['idle']['search_ms']['p99']:.1f} |"
        in table
    )
    added = [f"{run['overlay']['catalog']['added']:,}" for run in runs.values()]
    assert f"after: {' / '.join(dict.fromkeys(added))} added" in table


def test_int8_table_shows_the_cosines_the_dev_metrics_and_the_cost() -> None:
    record = {
        "dataset": "homedepot",
        "command": "python -m bench.int8 --bundle b --data d",
        "date": "2026-11-21",
        "parity": {
            "queries": 1163.0,
            "cosine_min": 0.98431,
            "cosine_p01": 0.9876,
            "cosine_mean": 0.9925,
        },
        "dev_fp32": {"P@1": 0.37, "nDCG@10": 0.3866, "R@100": 0.7196},
        "dev_int8": {"P@1": 0.3662, "nDCG@10": 0.3844, "R@100": 0.7181},
    }
    text = render_int8(record)
    assert (
        "| int8 (`encoder.int8.onnx`) | 0.9843 | 0.9876 | 0.9925 | 0.3662 | 0.3844 | 0.7181 |"
        in text
    )
    assert "| fp32 (`encoder.onnx`) | 1 | 1 | 1 | 0.3700 | 0.3866 | 0.7196 |" in text
    assert "-0.0038 P@1, -0.0022 nDCG@10, -0.0015 R@100" in text
    assert "1,163 dev queries" in text and "`bench/results/int8_homedepot.json`" in text


def _writer(results_file: str, modules: list[str]) -> str:
    """The bench module that writes `results_file`: the longest module name it starts with."""
    return max((m for m in modules if results_file.startswith(m)), key=len)


def test_make_bench_runs_every_benchmark_whose_json_a_table_is_generated_from() -> None:
    root = REPO
    modules = [path.stem for path in (root / "bench").glob("*.py") if path.stem != "__init__"]
    dry_run = subprocess.run(
        ["make", "--no-print-directory", "-n", "bench"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    needs_gpu = {"gpu:cuda"}
    for name, (files, _) in SECTIONS.items():
        if name in needs_gpu:
            continue
        for file in (files,) if isinstance(files, str) else files:
            module = _writer(file, modules)
            ran = re.search(rf"-m bench\.{module}(\s|$)", dry_run, re.M)
            assert ran, f"{name}: nothing in make bench writes {file}"
    assert dry_run.rstrip().endswith("-m bench.report")


def test_faults_table_shows_what_was_injected_and_that_nothing_was_lost() -> None:
    from bench.report import render_faults

    record = {
        "command": "python -m bench.faults --bundle models/demo --cycles 3",
        "date": "2026-12-06T10:00:00+00:00",
        "seconds": 12.5,
        "seed": 0,
        "requests_per_job": 600,
        "kills": 3,
        "jobs_accepted": 3,
        "jobs_completed": 3,
        "answers_expected": 1800,
        "answers_written": 1800,
        "answers_missing": 0,
        "answers_out_of_order": 0,
        "answers_duplicated": 0,
        "puts_acknowledged": 40,
        "changes_acknowledged": 80,
        "changes_lost": 0,
        "puts_half_applied": 0,
        "server_errors": 0,
        "transport_errors": 3,
        "statuses": {"200": 40, "201": 3},
    }
    text = render_faults(record)
    assert (
        "| 3 × SIGKILL | 3 / 3 | 1,800 / 1,800 | 0 | 0 | 40 PUTs, 80 products | 0 | 0 | 0 |" in text
    )
    assert "`bench/results/faults.json`" in text and "--cycles 3" in text


def test_mach_heads_table_shows_each_variant_with_bytes_time_and_recall() -> None:
    from bench.report import MACH_HEAD_VARIANTS, render_mach_heads

    record = json.loads((RESULTS / "mach_heads.json").read_text())
    table = render_mach_heads(record)
    for result in record["results"]:
        for variant, (label, recall_key) in MACH_HEAD_VARIANTS.items():
            run = result[variant]
            assert f"| {result['labels']:,} | {result['buckets']:,} | {label} |" in table
            assert f"{run['p50_ms']:.2f} / {run['p90_ms']:.2f}" in table
            assert f"| {run['decode_p50_ms']:.2f} | {run['total_p50_ms']:.2f} |" in table
            if recall_key:
                assert f"| {result[recall_key]:.3f} |" in table
        rows = result["int8_exact"]["exact_row_bytes"] / (1 << 20)
        assert f" + {rows:.2f} |" in table


def test_astra_optimizer_table_has_a_row_per_run() -> None:
    from bench.report import render_astra_optimizer

    record = json.loads((RESULTS / "astra_optimizer.json").read_text())
    table = render_astra_optimizer(record)
    assert len(table.split("\n\n")[0].splitlines()) == 2 + len(record["runs"])
    for run in record["runs"]:
        assert f"| {run['labels']:,} |" in table and f"| {run['step_ms_p50']:,.1f} |" in table


def test_ranker_table_has_the_formula_and_each_feature_group() -> None:
    from bench.report import render_ranker

    record = json.loads((RESULTS / "ranker_homedepot.json").read_text())
    table = render_ranker(record)
    formula = record["formula"]
    assert f"| {formula['nDCG@10']:.4f} | {formula['P@1']:.4f} | {formula['P@5']:.4f} |" in table
    _assert_ranker_rows(record, table)
    assert f"+{record['latency']['added_p50_ms']:.2f} ms" in table
    for step in record["normalisation"]:
        assert f"| {step['analyzer']} | {step['formula']['nDCG@10']:.4f} |" in table
    # session 15's runs name one helper as an object, later ones a list of one per half
    helpers = [
        {"bundle": f"models/half-{half}", "split": f"train-{other}", "queries": 4000 + i}
        for i, (half, other) in enumerate((("a", "b"), ("b", "a")))
    ]
    for stacked in (helpers[0], helpers[:1], helpers):
        one = {**record, "stacked": stacked, "dev_only": record["ablation"][-1]["dev_cv"]}
        _assert_ranker_rows(one, render_ranker(one))


def _assert_ranker_rows(record: dict, table: str) -> None:
    """Each ablation step's row, named after the queries it learned from, and each helper."""
    stacked = record.get("stacked") or []
    helpers = [stacked] if isinstance(stacked, dict) else stacked
    name = "learned ranker" + "".join(
        f" + {helper['queries']:,} `{helper['split']}` queries" for helper in helpers
    )
    for step in record["ablation"]:
        cv = step["dev_cv"]
        row = f"| {name}: {step['features']} | {cv['nDCG@10']:.4f} | {cv['P@1']:.4f} |"
        assert row in table
    if helpers:  # the same ranker learning from dev alone, beside it
        alone = record["dev_only"]
        assert f"learning from dev alone | {alone['nDCG@10']:.4f} | {alone['P@1']:.4f} |" in table
    for helper in helpers:
        assert f"scored by `{helper['bundle']}`" in table


def test_fields_table_lists_each_field_set_and_the_bm25f_weights() -> None:
    from bench.report import render_fields

    def row(fields: list[str], ndcg: float, weights: dict[str, float] | None = None) -> dict:
        return {
            "text_fields": fields,
            "nDCG@10": ndcg,
            "P@1": 0.5,
            "P@5": 0.2,
            "lexical_weight": 0.5,
            "bm25_fields": weights or {name: 1.0 for name in fields},
        }

    record = {
        "dataset": "demo",
        "data": "data/demo/shopdata.toml",
        "epochs": 1,
        "dev_points": 590,
        "field_sets": [row(["title"], 0.51), row(["title", "category"], 0.53)],
        "best": 1,
        "weighted": [row(["title", "category"], 0.52, {"title": 1.0, "category": 0.5})],
        "command": "python -m bench.fields",
        "date": "2026-12-07",
    }
    text = render_fields(record)
    assert "| title + category | title 1, category 1 | 0.5 | 0.5300 | 0.5000 | 0.2000 |" in text
    assert "| title + category | title 1, category 0.5 | 0.5 | 0.5200 |" in text
    assert "best: title + category" in text and "`bench/results/fields_demo.json`" in text
    assert SECTIONS["fields"] == ("fields_demo.json", render_fields)
