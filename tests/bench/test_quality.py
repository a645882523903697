"""Tests for bench.quality: the harness end to end on the demo catalog, and its bundle rules."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench.peers import PEERS
from bench.quality import (
    BENCHMARKS,
    BM25_NAME,
    Benchmark,
    Build,
    OurModel,
    RunSettings,
    build_command,
    missing_builds,
    plot_quality,
    run_benchmark,
    training_record,
)
from bench.report import render_quality
from service.bundle import read_manifest
from training.data import load_dataset
from training.ranking_metrics import METRIC_NAMES


def _demo_benchmark(bundle: Path, train_split: str = "train") -> Benchmark:
    models = tuple(OurModel(kind, str(bundle), kind) for kind in ("astra", "mach", "hybrid"))
    return Benchmark("demo", train_split, "dev", "nDCG@10", models)


def test_every_method_is_scored_on_the_same_points(
    demo_data: Path, demo_bundle_both: Path, tmp_path: Path
) -> None:
    settings = RunSettings(single_queries=5, threads=1, peers=("omikuji-bonsai",))
    record = run_benchmark(_demo_benchmark(demo_bundle_both), load_dataset(demo_data), settings)
    methods = record["methods"]
    assert list(methods) == [BM25_NAME, "astra", "mach", "hybrid", PEERS["omikuji-bonsai"].name]
    assert {m["metrics"]["points"] for m in methods.values()} == {record["points"]}
    for name, result in methods.items():
        assert all(0.0 <= result["metrics"][k] <= 1.0 for k in METRIC_NAMES), name
        assert result["model_mb"] > 0 and result["ms_per_query_batched"] > 0, name
        assert result["ms_per_query_single_p50"] > 0, name
    manifest = read_manifest(demo_bundle_both)
    astra, mach = manifest.training["astra"]["seconds"], manifest.training["mach"]["seconds"]
    assert methods["astra"]["train_seconds"] == astra
    assert methods["hybrid"]["train_seconds"] == pytest.approx(astra + mach)
    sizes = {name: methods[name]["model_mb"] for name in ("astra", "mach", "hybrid")}
    assert sizes["hybrid"] > max(sizes["astra"], sizes["mach"])
    assert methods["astra"]["metrics"]["P@1"] > 0.3  # a trained model, not noise
    features = record["peer_features"]
    assert 0 < features["learnable_labels"] <= record["labels"]
    assert 0 < features["eval_positives_learnable"] <= 1
    json.dumps(record)  # the record is written as JSON as it is

    record.update(
        command="python -m bench.quality",
        date="2026-01-01T00:00:00+00:00",
        machine={"platform": "x", "cpu_count": 2, "python": "3.11", "load_average": [0.5]},
        versions={"numpy": "2"},
        notes={},
    )
    record["machine"]["load_average_at_end"] = [0.7]
    table = render_quality(record)
    assert all(f"| {name} |" in table for name in methods)
    assert plot_quality(record, tmp_path / "q.png").read_bytes()[:4] == b"\x89PNG"


def test_a_bundle_trained_on_another_split_is_refused(
    demo_data: Path, demo_bundle_both: Path
) -> None:
    bench = _demo_benchmark(demo_bundle_both, train_split="trn")
    with pytest.raises(ValueError, match="trained on 'train', the benchmark trains on 'trn'"):
        run_benchmark(bench, load_dataset(demo_data), RunSettings(single_queries=1, peers=()))


def test_training_record_reads_flat_and_nested_manifests() -> None:
    flat = SimpleNamespace(training={"model": "astra", "split": "trn", "seconds": 3.0})
    nested = SimpleNamespace(training={"astra": {"seconds": 1.0}, "mach": {"seconds": 2.0}})
    assert training_record(flat, "astra")["seconds"] == 3.0
    assert training_record(flat, "mach") == {}
    assert training_record(nested, "mach") == {"seconds": 2.0}


def test_missing_builds_adds_the_bundle_a_missing_one_is_built_on(tmp_path: Path) -> None:
    bench = Benchmark(
        "x",
        "trn",
        "tst",
        "P@1",
        (OurModel("hybrid", "models/b", "hybrid"),),
        (Build("models/a", ("--epochs", "1")), Build("models/b", ("--encoder-from", "models/a"))),
    )
    assert [b.bundle for b in missing_builds(bench, tmp_path)] == ["models/a", "models/b"]
    (tmp_path / "models" / "a").mkdir(parents=True)
    (tmp_path / "models" / "a" / "manifest.json").write_text("{}")
    assert [b.bundle for b in missing_builds(bench, tmp_path)] == ["models/b"]
    tuned = Build("models/c", ("--encoder-from", "models/a", "--weights-from", "models/d"))
    assert tuned.depends_on == ["models/a", "models/d"]
    command = build_command(bench.builds[1], bench, Path("data/x"))
    assert command[1:] == [
        *("-m", "training", "train", "--data", "data/x", "--out", "models/b"),
        *("--train-split", "trn", "--encoder-from", "models/a"),
    ]


def test_the_real_benchmarks_build_every_bundle_they_score() -> None:
    for bench in BENCHMARKS.values():
        built = {b.bundle for b in bench.builds}
        assert {m.bundle for m in bench.models} <= built
        for index, build in enumerate(bench.builds):  # built after what it is built from
            earlier = {b.bundle for b in bench.builds[:index]}
            assert set(build.depends_on) <= earlier, build.bundle
