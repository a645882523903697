"""A served MACH process at K labels: a bundle written, loaded by `python -m service`, queried
over HTTP, and the process's memory read from /proc.

    python -m bench.mach_served --labels 1000000 50000000      # about 15 min, 9 GB of disk

`bench.mach_heads` and `bench.mach_decode` time the output layer and the decoding on their own;
this is the whole served path at the paper's size. For each K it writes a bundle as training
would leave it, with nothing of a model's quality in it: the base encoder (exported once into
`--cache-dir`), K synthetic product titles and ids, MACH heads of K's shape (R = 16, hidden 128,
B the power of two nearest K/256) with random weights exported by `training.mach.bundle`
(external data past 1 GiB), the manifest (`service.bundle.write_manifest`), then the int8
heads and fp32 rows of `python -m training quantize` (`training.quantize.quantize_mach_heads`).
It starts `python -m service` on it (`XC_THREADS=1`, the cache off, `XC_MACH_PRECISION=auto`),
times how long it takes to answer /readyz, reads the process's memory (VmRSS, its anonymous and
file-backed parts, and VmHWM, the peak during load), sends `--queries` distinct searches one
after another (`model: mach`, k = 10), and reads the memory again with the server's own stage
times from /metrics. Results go to `bench/results/mach_served.json` and `.png` (BENCHMARKS.md, "MACH
decoding"); the bundle is deleted after each K unless `--keep`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import torch
from tqdm import tqdm

from bench.load import latency_summary, parse_prometheus, stage_seconds
from bench.mach_decode import default_buckets
from bench.provenance import command_line, machine
from bench.server import free_port, server_process
from service.bundle import (
    ENCODER_FILE,
    LABEL_IDS_FILE,
    LABEL_TITLES_FILE,
    MACH_HEADS_FILE,
    TOKENIZER_FILE,
    LabelSpec,
    MachSpec,
    utc_now,
    write_manifest,
)
from training.mach.bundle import encoder_dir, export_heads
from training.mach.heads import MachConfig, MachHead, MachHeads
from training.quantize import quantize_mach_heads

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
MIB = 1 << 20

# Words the synthetic titles and queries are made of: titles look like a hardware catalog's
# ("dewalt cordless drill 1/2 in. 00012345"), about 38 characters, each one unique by its number.
BRANDS = ("dewalt", "ryobi", "milwaukee", "behr", "glacier bay", "husky", "everbilt", "ge")
NOUNS = ("drill", "paint", "faucet", "screw", "hose", "lamp", "shelf", "saw", "valve", "tile")
KINDS = ("cordless", "brushed", "white", "outdoor", "led", "steel", "copper", "vinyl")
SIZES = ("1/2 in.", "3/4 in.", "60w", "2x4", "1 gal.", "5 ft.", "10 oz.", "12v")


def write_titles(path_titles: Path, path_ids: Path, num_labels: int, seed: int) -> None:
    """K distinct synthetic titles and ids, one a line, written a million at a time."""
    rng = np.random.default_rng(seed)
    chunk = 1_000_000
    with (
        path_titles.open("w", encoding="utf-8", newline="\n") as titles,
        path_ids.open("w", encoding="utf-8", newline="\n") as ids,
    ):
        for start in tqdm(range(0, num_labels, chunk), desc="titles", unit="M", leave=False):
            stop = min(num_labels, start + chunk)
            picks = rng.integers(0, 8, size=(stop - start, 4))
            titles.write(
                "".join(
                    f"{BRANDS[b]} {KINDS[c]} {NOUNS[n % 10]} {SIZES[s]} {i:08d}\n"
                    for i, (b, c, n, s) in zip(range(start, stop), picks.tolist(), strict=True)
                )
            )
            ids.write("".join(f"P{i:09d}\n" for i in range(start, stop)))


def write_bundle(bundle: Path, num_labels: int, args: argparse.Namespace) -> dict:
    """A MACH bundle of K labels with random heads, quantised as `training quantize` leaves it;
    returns the seconds each step took and the files' sizes."""
    steps: dict[str, float] = {}
    bundle.mkdir(parents=True)
    start = time.perf_counter()
    source, encoder_spec = encoder_dir(None, args.cache_dir)
    for name in (ENCODER_FILE, TOKENIZER_FILE):
        shutil.copyfile(source / name, bundle / name)
    write_titles(bundle / LABEL_TITLES_FILE, bundle / LABEL_IDS_FILE, num_labels, args.seed)
    steps["labels_s"] = time.perf_counter() - start
    buckets = default_buckets(num_labels)
    config = MachConfig(
        repetitions=args.reps, buckets=buckets, hidden=args.hidden, ngram_dim=0, seed=args.seed
    )
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    heads = MachHeads([MachHead(encoder_spec.dim, config) for _ in range(args.reps)], "bce")
    export_heads(heads.eval(), encoder_spec.dim, bundle / MACH_HEADS_FILE)
    del heads
    steps["heads_s"] = time.perf_counter() - start
    family = config.hash_family(num_labels)
    created = utc_now()
    start = time.perf_counter()
    write_manifest(
        bundle,
        {
            "name": bundle.name,
            "version": created,
            "created_at": created,
            "kinds": ["mach"],
            "default_model": "mach",
            "labels": LabelSpec(count=num_labels).model_dump(),
            "encoder": encoder_spec.model_dump(),
            "mach": MachSpec(
                reps=args.reps,
                buckets=buckets,
                hash_seed=config.hash_seed,
                hash_prime=family.prime,
                hidden=args.hidden,
                loss="bce",
                top_buckets=config.top_buckets,
            ),
            "training": {"mach": {"synthetic": "random weights, bench.mach_served"}},
        },
    )
    steps["manifest_s"] = time.perf_counter() - start
    start = time.perf_counter()
    quantize_mach_heads(bundle)
    steps["quantize_s"] = time.perf_counter() - start
    files = {p.name: p.stat().st_size for p in sorted(bundle.iterdir()) if p.is_file()}
    return {
        "buckets": buckets,
        "steps_s": {k: round(v, 1) for k, v in steps.items()},
        "file_bytes": files,
    }


def process_memory(pid: int) -> dict[str, float]:
    """The process's memory in MiB from /proc: resident (anonymous, file-backed), and the peak."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
            fields[key] = round(int(value.split()[0]) * 1024 / MIB, 1)
    return fields


def shopper_queries(count: int, seed: int) -> list[str]:
    """`count` distinct queries from the titles' words, e.g. "behr white paint 1 gal."."""
    rng = np.random.default_rng(seed + 1)
    queries: list[str] = []
    seen: set[str] = set()
    while len(queries) < count:
        b, c, n, s = rng.integers(0, 8, size=4).tolist()
        words = [BRANDS[b], KINDS[c], NOUNS[(n + s) % 10], SIZES[s]]
        text = " ".join(words[: 2 + len(queries) % 3] if len(queries) % 2 else words[1:])
        text = f"{text} {len(queries)}" if text in seen else text
        seen.add(text)
        queries.append(text)
    return queries


def serve_and_query(bundle: Path, args: argparse.Namespace) -> dict:
    """Start the server on `bundle`, measure its load, memory and search latency over HTTP."""
    env = {"XC_CACHE_ENTRIES": "0", "XC_MACH_PRECISION": "auto", "XC_DATA_DIR": str(args.data_dir)}
    start = time.perf_counter()
    with server_process(bundle, free_port(), threads=1, timeout_s=1800, env=env) as server:
        ready_s = time.perf_counter() - start
        pid = server.process.pid
        loaded = process_memory(pid)
        with httpx.Client(base_url=server.base, timeout=60) as client:
            info = client.get("/v1/models").json()["data"][0] if args.model_info else {}
            queries = shopper_queries(args.queries + args.warmup, args.seed)
            for text in queries[: args.warmup]:
                client.post("/search", json={"query": text, "k": 10, "model": "mach"})
            before = parse_prometheus(client.get("/metrics").text)
            latencies, shown = [], None
            for text in tqdm(queries[args.warmup :], desc="queries", leave=False):
                sent = time.perf_counter()
                response = client.post("/search", json={"query": text, "k": 10, "model": "mach"})
                latencies.append((time.perf_counter() - sent) * 1000)
                response.raise_for_status()
                shown = shown or response.json()
            after = parse_prometheus(client.get("/metrics").text)
        queried = process_memory(pid)
    stages = {  # the server's own stage times, in ms
        stage: {
            f"{key[:-2]}_ms": None if v is None else round(v * 1000, 3)
            for key, v in values.items()
            if key.endswith("_s")
        }
        for stage, values in stage_seconds(before, after).items()
    }
    return {
        "ready_s": round(ready_s, 1),
        "memory_after_load_mib": loaded,
        "memory_after_queries_mib": queried,
        "http_ms": latency_summary(latencies),
        "stage_ms": stages,
        "model_info": info,
        "example": {"query": queries[args.warmup], "results": (shown or {}).get("results", [])[:3]},
    }


def measure(num_labels: int, args: argparse.Namespace) -> dict:
    """Write the bundle of K labels, serve it, and delete it (unless --keep)."""
    bundle = args.work / f"mach-{num_labels}"
    if bundle.exists():
        shutil.rmtree(bundle)
    try:
        built = write_bundle(bundle, num_labels, args)
        served = serve_and_query(bundle, args)
    finally:
        if not args.keep:
            shutil.rmtree(bundle, ignore_errors=True)
    result = {"labels": num_labels, "reps": args.reps, "hidden": args.hidden, **built, **served}
    print(json.dumps({k: v for k, v in result.items() if k != "example"}), flush=True)
    return result


def plot(record: dict, path: Path) -> None:
    """Memory (anonymous, file-backed) and HTTP latency of the served process against K."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.report import one_vs_all_mib  # the table's figure, drawn

    results = record["results"]
    sizes = [r["labels"] for r in results]
    fig, (memory, latency) = plt.subplots(1, 2, figsize=(10, 4))
    for key, name in (("RssAnon", "anonymous (the process's own)"), ("RssFile", "file-backed")):
        memory.plot(sizes, [r["memory_after_queries_mib"][key] for r in results], "o-", label=name)
    one_vs_all = [one_vs_all_mib(r["labels"]) for r in results]
    memory.plot(sizes, one_vs_all, "k--", label="one-vs-all layer")
    memory.set(
        xscale="log", yscale="log", xlabel="labels K", ylabel="MiB", title="memory after queries"
    )
    memory.legend()
    for key, name in (("p50", "HTTP p50"), ("p90", "HTTP p90")):
        latency.plot(sizes, [r["http_ms"][key] for r in results], "o-", label=name)
    stages = [r["stage_ms"]["retrieve"]["p50_ms"] for r in results]
    latency.plot(sizes, stages, "s--", label="server: MACH layer + decoding p50")
    latency.set(xscale="log", xlabel="labels K", ylabel="ms", title="one search at a time")
    latency.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure each K and write the JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.mach_served", description=__doc__)
    parser.add_argument("--labels", type=int, nargs="+", default=[1_000_000, 50_000_000])
    parser.add_argument("--reps", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--queries", type=int, default=200, help="timed searches per K")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="where bundles are written")
    parser.add_argument("--cache-dir", type=Path, default=REPO / "models" / ".cache")
    parser.add_argument("--keep", action="store_true", help="keep the bundles after measuring")
    parser.add_argument("--model-info", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", type=Path, default=RESULTS / "mach_served.json")
    parser.add_argument("--plot-only", action="store_true", help="redraw the plot from --out")
    args = parser.parse_args(argv)
    if args.plot_only:
        plot(json.loads(args.out.read_text()), args.out.with_suffix(".png"))
        return 0
    with tempfile.TemporaryDirectory(prefix="xc-mach-served-") as tmp:
        args.work = args.work or Path(tmp)
        args.data_dir = Path(tmp) / "data"
        results = [measure(k, args) for k in args.labels]
    record = {
        "command": command_line("bench.mach_served", argv),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "queries": args.queries,
        "results": results,
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    plot(record, args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
