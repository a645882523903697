"""`bench.gpu` measures every model of a bundle and records where each part ran."""

from __future__ import annotations

import json
from pathlib import Path

from bench.gpu import main
from bench.report import render_gpu


def test_gpu_bench_records_latency_throughput_and_devices(
    demo_bundle_both: Path, demo_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "gpu.json"
    args = ["--bundle", str(demo_bundle_both), "--data", str(demo_data), "--device", "cpu"]
    assert (
        main([*args, "--queries", "48", "--singles", "6", "--batches", "8,32", "--out", str(out)])
        == 0
    )
    result = json.loads(out.read_text())
    assert result["devices"]["encoder"] == "CPUExecutionProvider"
    assert result["targets"] is None  # the GPU targets are not claimed for a CPU run
    assert set(result["models"]) == {"astra", "mach", "hybrid"}
    for figures in result["models"].values():
        assert figures["single_ms"]["count"] == 6
        assert 0 < figures["single_ms"]["p50"] <= figures["single_ms"]["p99"]
        assert set(figures["batched_qps"]) == {"8", "32"}
        assert all(qps > 0 for qps in figures["batched_qps"].values())
    assert result["command"].startswith("python -m bench.gpu --bundle")

    table = render_gpu(result)
    assert "| model | single p50 ms | single p99 ms | q/s, batches of 8 |" in table
    astra = result["models"]["astra"]
    assert f"| astra | {astra['single_ms']['p50']:.2f} | {astra['single_ms']['p99']:.2f} |" in table
    assert "Targets" not in table  # a CPU run states no verdict on the GPU targets
    result["targets"] = {"single_p50_ms": 1e9, "batched_qps": 1e9}
    assert "p50 ≤ 1000000000.0 ms (met), batched ≥ 1,000,000,000 q/s (missed" in render_gpu(result)
