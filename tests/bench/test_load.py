"""Tests for bench.load: statistics, the Prometheus text parser, and the phases over real HTTP.

The fake-server tests run the whole command (`--url`) against a tiny ASGI app served by uvicorn
in a thread, which answers some searches 429 and exposes (or not) /metrics; the slow test starts
the real service on the demo bundle through `bench.server`.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn

from bench.load import (
    ClientShards,
    LeanConnection,
    arrival_offsets,
    encode_bodies,
    format_series,
    format_summary,
    histogram_quantile,
    latency_summary,
    main,
    metric_deltas,
    parse_env_pair,
    parse_levels,
    parse_phases,
    parse_prometheus,
    phase_metrics,
    stage_seconds,
    summarize_window,
    tally,
)
from bench.server import free_port

EXPOSITION = """\
# HELP xc_stage_seconds Time a search request spent in each stage.
# TYPE xc_stage_seconds histogram
xc_stage_seconds_bucket{le="0.005",model="astra",stage="encode",version="1"} 3.0
xc_stage_seconds_bucket{le="+Inf",model="astra",stage="encode",version="1"} 4.0
xc_stage_seconds_sum{model="astra",stage="encode",version="1"} 0.02
xc_stage_seconds_count{model="astra",stage="encode",version="1"} 4.0
xc_stage_seconds_created{model="astra",stage="encode",version="1"} 1.7e+09
xc_stage_seconds_sum{model="mach",stage="encode",version="1"} 0.01
xc_stage_seconds_count{model="mach",stage="encode",version="1"} 1.0
xc_stage_seconds_sum{stage="queue", model="astra",} 0.5
xc_stage_seconds_count{stage="queue", model="astra",} 5
# TYPE xc_queue_depth gauge
xc_queue_depth 0.0
xc_model_info{bundle="a \\"quoted\\" name",models="astra,mach",path="C:\\\\x\\ny"} 1 1700000000000
xc_nan NaN
xc_empty{} -Inf
"""


# --- statistics ------------------------------------------------------------------------------


def test_latency_summary_percentiles_and_empty() -> None:
    summary = latency_summary(float(v) for v in range(1, 101))
    assert summary == {
        "count": 100,
        "mean": 50.5,
        "p50": 50.5,
        "p90": 90.1,
        "p99": 99.01,
        "max": 100.0,
    }
    assert latency_summary([]) == {
        "count": 0,
        "mean": None,
        "p50": None,
        "p90": None,
        "p99": None,
        "max": None,
    }
    assert latency_summary([7.0])["p99"] == 7.0


def test_tally_splits_statuses_from_errors() -> None:
    statuses, errors = tally([200, 429, 200, "ReadTimeout", 503, "ConnectError", "ReadTimeout"])
    assert statuses == {"200": 2, "429": 1, "503": 1}
    assert errors == {"ConnectError": 1, "ReadTimeout": 2}


def test_summarize_window_counts_only_200s_for_throughput_and_latency() -> None:
    samples = [(0.0, 0.010, 200), (0.0, 0.030, 200), (0.1, 0.101, 429), (0.2, 5.0, "ReadTimeout")]
    summary = summarize_window(samples, elapsed_s=2.0)
    assert summary["requests"] == 4
    assert summary["qps_200"] == 1.0
    assert summary["qps_all"] == 2.0
    assert summary["latency_ms_200"]["count"] == 2
    assert summary["latency_ms_200"]["p50"] == pytest.approx(20.0)
    assert summary["statuses"] == {"200": 2, "429": 1}
    assert summary["errors"] == {"ReadTimeout": 1}
    assert summarize_window([], 0.0)["qps_200"] == 0.0


def test_arrival_offsets_fixed_and_poisson() -> None:
    fixed = arrival_offsets(10.0, 1.0, "fixed")
    np.testing.assert_allclose(fixed, np.arange(10) / 10.0)
    poisson = arrival_offsets(1000.0, 10.0, "poisson", seed=3)
    assert poisson[0] == 0.0 and poisson[-1] < 10.0
    assert np.all(np.diff(poisson) >= 0)
    assert abs(len(poisson) - 10_000) < 500  # 5 standard deviations
    np.testing.assert_array_equal(poisson, arrival_offsets(1000.0, 10.0, "poisson", seed=3))
    gaps = np.diff(poisson)
    assert gaps.mean() == pytest.approx(1e-3, rel=0.05)
    assert arrival_offsets(0.0, 1.0, "fixed").size == 0
    with pytest.raises(ValueError, match="arrivals"):
        arrival_offsets(1.0, 1.0, "bursty")


# --- Prometheus text format ------------------------------------------------------------------


def test_parse_prometheus_samples_labels_and_special_values() -> None:
    samples = parse_prometheus(EXPOSITION)
    key = (("model", "astra"), ("stage", "encode"), ("version", "1"))
    assert samples[("xc_stage_seconds_sum", key)] == 0.02
    assert samples[("xc_stage_seconds_count", key)] == 4.0
    inf_bucket = ("xc_stage_seconds_bucket", (("le", "+Inf"), *key))
    assert samples[inf_bucket] == 4.0
    assert samples[("xc_stage_seconds_count", (("model", "astra"), ("stage", "queue")))] == 5.0
    assert samples[("xc_queue_depth", ())] == 0.0
    info = (
        "xc_model_info",
        (("bundle", 'a "quoted" name'), ("models", "astra,mach"), ("path", "C:\\x\ny")),
    )
    assert samples[info] == 1.0  # escapes undone, timestamp ignored
    assert math.isnan(samples[("xc_nan", ())])
    assert samples[("xc_empty", ())] == -math.inf
    assert len(samples) == 13


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("ok 1\nbroken\n", 2),
        ('x{a="1" b="2"} 1', 1),  # labels need commas
        ("x{a=1} 1", 1),  # label values need quotes
        ("x one", 1),
    ],
)
def test_parse_prometheus_rejects_malformed_lines(text: str, line: int) -> None:
    with pytest.raises(ValueError, match=f"line {line}"):
        parse_prometheus(text)


def test_format_series_round_trips_through_the_parser() -> None:
    series = ("m", (("a", 'q"uote'), ("b", "back\\slash"), ("c", "new\nline")))
    assert format_series(series) == 'm{a="q\\"uote",b="back\\\\slash",c="new\\nline"}'
    assert parse_prometheus(format_series(series) + " 2") == {series: 2.0}
    assert format_series(("plain", ())) == "plain"


def test_stage_seconds_adds_over_other_labels_and_orders_stages() -> None:
    before = parse_prometheus(EXPOSITION)
    after_text = (
        EXPOSITION.replace(
            'xc_stage_seconds_sum{model="astra",stage="encode",version="1"} 0.02',
            'xc_stage_seconds_sum{model="astra",stage="encode",version="1"} 0.05',
        ).replace(
            'xc_stage_seconds_count{model="astra",stage="encode",version="1"} 4.0',
            'xc_stage_seconds_count{model="astra",stage="encode",version="1"} 10.0',
        )
        + 'xc_stage_seconds_sum{model="mach",stage="tokenize",version="1"} 0.004\n'
        + 'xc_stage_seconds_count{model="mach",stage="tokenize",version="1"} 4\n'
        + 'xc_stage_seconds_sum{model="mach",stage="encode",version="2"} 0.03\n'
        + 'xc_stage_seconds_count{model="mach",stage="encode",version="2"} 4\n'
    )
    stages = stage_seconds(before, parse_prometheus(after_text))
    assert list(stages) == ["tokenize", "queue", "encode"]
    assert stages["tokenize"]["count"] == 4
    assert stages["tokenize"]["mean_s"] == pytest.approx(0.001)
    assert stages["queue"]["count"] == 0 and stages["queue"]["mean_s"] is None
    # encode: astra +6 observations, +0.03 s; mach version 2 is new: +4, +0.03 s
    assert stages["encode"]["count"] == 10
    assert stages["encode"]["mean_s"] == pytest.approx(0.006)
    assert stage_seconds({}, parse_prometheus("x_sum{stage='a'} 1\n".replace("'", '"'))) == {}


def test_histogram_quantile_interpolates_within_the_bucket() -> None:
    # 10 observations: 4 at or below 1 ms, 9 at or below 5 ms, one above 10 ms.
    cumulative = {0.001: 4, 0.005: 9, 0.01: 9, math.inf: 10}
    assert histogram_quantile(0.2, cumulative) == pytest.approx(0.0005)
    assert histogram_quantile(0.5, cumulative) == pytest.approx(0.001 + 0.004 * (1 / 5))
    assert histogram_quantile(0.9, cumulative) == pytest.approx(0.005)
    assert histogram_quantile(0.99, cumulative) == pytest.approx(0.01)  # in +Inf: last bound
    assert histogram_quantile(0.5, {0.001: 0, math.inf: 0}) is None
    assert histogram_quantile(0.5, {}) is None


def test_stage_quantiles_come_from_bucket_deltas() -> None:
    def exposition(low: int, high: int) -> str:
        return "".join(
            f'xc_stage_seconds_bucket{{le="{le}",model="astra",stage="total",version="1"}} {n}\n'
            for le, n in (("0.01", low), ("0.1", high), ("+Inf", high))
        ) + (
            f'xc_stage_seconds_count{{model="astra",stage="total",version="1"}} {high}\n'
            f'xc_stage_seconds_sum{{model="astra",stage="total",version="1"}} {high * 0.02}\n'
        )

    before, after = parse_prometheus(exposition(5, 5)), parse_prometheus(exposition(5, 15))
    total = stage_seconds(before, after)["total"]
    assert total["count"] == 10  # the 10 new observations all lie in (0.01, 0.1]
    assert total["p50_s"] == pytest.approx(0.01 + 0.09 * 0.5)
    assert total["p99_s"] == pytest.approx(0.01 + 0.09 * 0.99)


def test_metric_deltas_keeps_changed_series_only() -> None:
    before = parse_prometheus('c{r="a"} 1\nc{r="b"} 5\ng 3\nh_created 100\n')
    after = parse_prometheus('c{r="a"} 4\nc{r="b"} 5\nc{r="new"} 2\ng 1\nh_created 200\n')
    assert metric_deltas(before, after) == {'c{r="a"}': 3.0, 'c{r="new"}': 2.0, "g": -2.0}


def test_phase_metrics_against_prometheus_client_output() -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    registry = prometheus_client.CollectorRegistry()
    hist = prometheus_client.Histogram(
        "xc_stage_seconds", "stages", ["stage", "model", "version"], registry=registry
    )
    hist.labels("encode", "astra", "1").observe(0.5)
    before = prometheus_client.generate_latest(registry).decode()
    for value in (0.010, 0.020, 0.030):
        hist.labels("encode", "astra", "1").observe(value)
    hist.labels("total", "astra", "1").observe(0.25)
    after = prometheus_client.generate_latest(registry).decode()
    metrics = phase_metrics(before, after)
    assert metrics["stage_seconds"]["encode"]["count"] == 3
    assert metrics["stage_seconds"]["encode"]["mean_s"] == pytest.approx(0.020)
    total = metrics["stage_seconds"]["total"]
    assert total["count"] == 1 and total["mean_s"] == pytest.approx(0.25)
    assert 0.1 < total["p50_s"] < total["p99_s"] <= 0.25  # inside the (0.1, 0.25] bucket
    assert metrics["delta"]['xc_stage_seconds_count{model="astra",stage="encode",version="1"}'] == 3
    assert not any("_created" in series for series in metrics["delta"])
    assert phase_metrics("ok 1", "broken")["error"].startswith("line 1")


# --- command line ----------------------------------------------------------------------------


def test_argument_parsers() -> None:
    import argparse

    assert parse_levels("8,32,128") == [8, 32, 128]
    assert parse_phases("sequential, overload") == ["sequential", "overload"]
    assert parse_env_pair("XC_MAX_WAIT_MS=2.5") == ("XC_MAX_WAIT_MS", "2.5")
    assert parse_env_pair("A=b=c") == ("A", "b=c")
    for parser, bad in ((parse_levels, "8,x"), (parse_levels, "0"), (parse_phases, "warm")):
        with pytest.raises(argparse.ArgumentTypeError):
            parser(bad)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_env_pair("NOEQUALS")


def test_encode_bodies_are_json_bytes() -> None:
    bodies = encode_bodies(['drill "20v"', "saw"], k=5, model="astra")
    assert json.loads(bodies[0]) == {"query": 'drill "20v"', "k": 5, "model": "astra"}
    assert json.loads(encode_bodies(["saw"], k=10)[0]) == {"query": "saw", "k": 10}


def test_client_shards_split_connections_and_pick_the_least_busy() -> None:
    async def check() -> None:
        async with ClientShards("http://127.0.0.1:9", 20, 1.0, per_client=8) as shards:
            assert shards.sizes == [8, 8, 4] and len(shards.clients) == 3
            assert [shards.pick() for _ in range(4)] == [0, 1, 2, 0]
            shards.done(1)
            assert shards.pick() == 1
            assert shards.in_flight == [2, 1, 1]

    asyncio.run(check())


# --- phases over HTTP ------------------------------------------------------------------------


class FakeSearch:
    """An ASGI app shaped like the service: every third search is refused 429 (Retry-After: 1).

    With `metrics`, GET /metrics exposes `xc_stage_seconds` with 2 ms of encode per search.
    """

    def __init__(self, metrics: bool) -> None:
        self.metrics = metrics
        self.searches = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        path = scope["path"]
        headers = [(b"content-type", b"application/json")]
        if path == "/search":
            while (await receive()).get("more_body"):
                pass
            self.searches += 1
            if self.searches % 3 == 0:
                status, body = 429, b'{"detail": "busy"}'
                headers.append((b"retry-after", b"1"))
            else:
                status, body = 200, b'{"results": [], "model": "astra", "took_ms": 0.5}'
        elif path in ("/healthz", "/readyz"):
            status, body = 200, b'{"status": "ok", "bundle": "fake"}'
        elif path == "/metrics" and self.metrics:
            n = self.searches
            status = 200
            body = (
                "# TYPE xc_stage_seconds histogram\n"
                f'xc_stage_seconds_sum{{stage="encode",model="astra"}} {0.002 * n}\n'
                f'xc_stage_seconds_count{{stage="encode",model="astra"}} {n}\n'
            ).encode()
            headers = [(b"content-type", b"text/plain; version=0.0.4")]
        else:
            status, body = 404, b'{"detail": "not found"}'
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def test_lean_connection_frames_requests_and_reads_both_answer_framings() -> None:
    with pytest.raises(ValueError, match="plain http"):
        LeanConnection("https://127.0.0.1:8443")
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        seen.append(head + await reader.readexactly(length))
        writer.write(b'HTTP/1.1 201 Created\r\ncontent-length: 7\r\n\r\n{"a":1}')
        await reader.readuntil(b"\r\n\r\n")  # the second answer comes in two chunks
        writer.write(b"HTTP/1.1 429 Too Many\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b'3\r\n{"b\r\n4\r\n":2}\r\n0\r\n\r\n')
        await reader.readuntil(b"\r\n\r\n")  # the third is not framed at all
        writer.write(b"HTTP/1.1 200 OK\r\n\r\n")
        await writer.drain()
        writer.close()

    async def scenario() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        base = f"http://127.0.0.1:{port}"
        async with server, LeanConnection(base, {"authorization": "Bearer t"}) as connection:
            assert await connection.post("/search", b'{"query":"x"}') == (201, b'{"a":1}')
            assert await connection.post("/search", b"{}") == (429, b'{"b":2}')
            with pytest.raises(ValueError, match="neither length nor chunks"):
                await connection.post("/search", b"{}")
            assert connection.writer is None  # closed; the next post would reconnect

    asyncio.run(scenario())
    request = seen[0].decode()
    assert request.startswith("POST /search HTTP/1.1\r\n")
    assert "\r\nauthorization: Bearer t\r\n" in request
    assert "\r\nContent-Type: application/json\r\n" in request
    assert request.endswith('Content-Length: 13\r\n\r\n{"query":"x"}')


@pytest.fixture
def fake_server(request: pytest.FixtureRequest) -> Iterator[str]:
    """FakeSearch served by uvicorn in a thread; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(
        FakeSearch(metrics=request.param), port=port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "fake server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


TINY_LOAD = [
    "--requests",
    "30",
    "--warmup",
    "3",
    "--warmup-s",
    "0.3",
    "--overload-duration",
    "1",
]


@pytest.mark.bench_run  # every phase of the load run, about 10 s: make test-bench
@pytest.mark.parametrize("fake_server", [True, False], indirect=True, ids=["metrics", "no-metrics"])
def test_main_against_fake_server(
    fake_server: str, demo_data: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with_metrics = request.node.callspec.params["fake_server"]
    argv = [
        "--url",
        fake_server,
        "--data",
        str(demo_data),
        "--out-dir",
        str(tmp_path),
        "--concurrency",
        "1,2",
        "--duration",
        "1",
        "--overload-rate",
        "100",
        "--arrivals",
        "fixed",
        *TINY_LOAD,
    ]
    assert main(argv) == 0
    result = json.loads((tmp_path / "load_fake.json").read_text())
    assert (tmp_path / "load_fake.png").stat().st_size > 0
    assert result["name"] == "fake" and result["url"] == fake_server and result["server"] is None
    sequential = result["sequential"]
    assert sum(sequential["statuses"].values()) == 30 and set(sequential["statuses"]) == {
        "200",
        "429",
    }
    assert sequential["server_took_ms"]["p50"] == 0.5
    lean = result["sequential_lean"]
    assert lean["statuses"] == {"200": 20, "429": 10} and lean["errors"] == {}
    assert lean["client_ms"]["count"] == 20 and lean["server_took_ms"]["p50"] == 0.5
    for key in ("throughput", "throughput_lean"):
        assert [level["concurrency"] for level in result[key]] == [1, 2]
        for level in result[key]:
            assert level["qps_200"] > 0 and level["errors"] == {}
            assert set(level["statuses"]) == {"200", "429"}
    assert result["best"]["qps_200"] == max(lvl["qps_200"] for lvl in result["throughput"])
    overload = result["overload"]
    assert overload["target_rate"] == 100.0 and overload["requests"] == 100
    assert overload["only_200_429"] and overload["server_up"]
    assert overload["retry_after"]["missing"] == 0
    assert 1 <= overload["max_in_flight"] <= 100
    assert overload["retry_after"]["values"] == {"1": overload["statuses"]["429"]}
    assert result["metrics_endpoint"] is with_metrics
    if not with_metrics:
        assert not any("metrics" in phase for phase in [sequential, *result["throughput"]])
    else:
        for phase in [
            sequential,
            lean,
            *result["throughput"],
            *result["throughput_lean"],
            overload,
        ]:
            encode = phase["metrics"]["stage_seconds"]["encode"]
            assert encode["mean_s"] == pytest.approx(0.002)
            assert (
                encode["count"]
                == phase["metrics"]["delta"]['xc_stage_seconds_count{model="astra",stage="encode"}']
            )
        assert sequential["metrics"]["stage_seconds"]["encode"]["count"] == 33  # warm-up too
        assert "mean ms per stage" in format_summary(result)


@pytest.mark.slow
@pytest.mark.bench_run  # make test-bench, not make test
def test_main_starts_the_service_on_the_demo_bundle(
    demo_bundle: Path, demo_data: Path, tmp_path: Path
) -> None:
    argv = [
        "--bundle",
        str(demo_bundle),
        "--data",
        str(demo_data),
        "--out-dir",
        str(tmp_path),
        "--concurrency",
        "4",
        "--duration",
        "2",
        "--server-env",
        "XC_LOG_LEVEL=error",
        *TINY_LOAD,
    ]
    assert main(argv) == 0
    result = json.loads((tmp_path / "load_demo.json").read_text())
    assert {
        "name",
        "command",
        "date",
        "machine",
        "url",
        "server",
        "client",
        "settings",
        "sequential",
        "sequential_lean",
        "throughput",
        "throughput_lean",
        "best",
        "overload",
        "metrics_endpoint",
    } <= set(result)
    assert result["machine"]["cpu_count"] >= 1
    assert result["server"]["env"] == {"XC_LOG_LEVEL": "error"}
    assert result["sequential"]["client_ms"]["count"] == 30
    assert result["sequential"]["server_took_ms"]["count"] == 30
    assert result["sequential_lean"]["server_took_ms"]["count"] == 30
    level = result["throughput"][0]
    assert level["concurrency"] == 4 and level["qps_200"] > 0
    assert level["server_cpu_s"] is not None and level["server_cpu_s"] > 0
    overload = result["overload"]
    assert overload["target_rate"] == pytest.approx(4 * result["best"]["qps_200"], rel=0.01)
    lean_level = result["throughput_lean"][0]
    assert lean_level["concurrency"] == 4 and lean_level["qps_200"] > 0
    for phase in (result["sequential"], result["sequential_lean"], level, lean_level, overload):
        assert set(phase["statuses"]) <= {"200", "429"}
        assert phase["errors"] == {}
    assert overload["only_200_429"] and overload["server_up"]
    assert overload["statuses"].get("200", 0) > 0
    assert (tmp_path / "load_demo.png").exists()
