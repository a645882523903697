"""Keeping the catalog fresh: upsert throughput, and search latency while updates stream in.

    python -m bench.catalog --bundle models/homedepot --data ../shared/data/homedepot/xc \
        [--batch 100] [--products 3000] [--searches 400] [--deletes 500] [--paced-rate 100]

Over HTTP against a real `python -m service` process with a fresh catalog store, in phases:

1. `idle`: sequential single-query searches (dev queries, k = 10, the bundle's default model).
2. `upsert`: `PUT /products` batches of `--batch` new products, back to back, alone.
3. `streaming`: the same searches while a second client PUTs batches back to back.
4. `paced`: the same, with the PUTs paced at `--paced-rate` products/s (a feed, not a bulk load).
5. `delete`: `--deletes` trained products deleted one request at a time.
6. `overlay`: the searches again with everything the phases added and deleted in the overlay.
7. `restart`: seconds until /readyz when the store's changes are re-applied at start, against
   the first start with an empty store.

New products take real catalog titles (shuffled) under new ids. After the run a query for the
last new title must return its product (a sanity check). Results go to
`bench/results/catalog.json` and a plot beside it.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import threading
import time
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import httpx

from bench.load import latency_summary
from bench.provenance import command_line, machine, versions
from bench.server import free_port, server_process
from service.bundle import read_lines, read_manifest
from training.data import load_dataset

RESULTS = Path(__file__).resolve().parent / "results"
K = 10
TIMEOUT_S = 120


class Products:
    """New products to PUT: catalog titles in a seeded shuffle, under ids `bench-<n>`.

    Titles with control characters (mojibake in the Home Depot catalog: 28 of 54,667) are
    skipped, as the API refuses them.
    """

    def __init__(self, titles: list[str], seed: int) -> None:
        self.titles = [title for title in titles if not _has_control_characters(title)]
        random.Random(seed).shuffle(self.titles)
        self.made = 0
        self.lock = threading.Lock()

    def batch(self, size: int) -> list[dict[str, str]]:
        """The next `size` products."""
        with self.lock:
            start, self.made = self.made, self.made + size
        return [self.product(n) for n in range(start, start + size)]

    def product(self, n: int) -> dict[str, str]:
        """The n-th new product."""
        return {"id": f"bench-{n}", "title": self.titles[n % len(self.titles)]}


def _has_control_characters(text: str) -> bool:
    return any(unicodedata.category(char) == "Cc" for char in text)


def put_batch(client: httpx.Client, products: list[dict[str, str]]) -> float:
    """PUT one batch; its wall milliseconds."""
    start = time.perf_counter()
    response = client.put("/products", json={"products": products})
    if response.is_error:
        raise RuntimeError(f"PUT /products: {response.status_code} {response.text}")
    return (time.perf_counter() - start) * 1000


def upsert_summary(batch_ms: list[float], products: int, seconds: float) -> dict[str, Any]:
    """Products per second over a phase, and the PUT latency."""
    return {
        "products": products,
        "seconds": round(seconds, 3),
        "products_per_s": round(products / seconds, 1) if seconds > 0 else None,
        "put_ms": latency_summary(batch_ms),
    }


def search_latency(client: httpx.Client, queries: list[str]) -> dict[str, Any]:
    """Sequential single-query searches: latency summary in milliseconds."""
    times = []
    for query in queries:
        start = time.perf_counter()
        response = client.post("/search", json={"query": query, "k": K})
        response.raise_for_status()
        times.append((time.perf_counter() - start) * 1000)
    return latency_summary(times)


def upsert_alone(client: httpx.Client, products: Products, total: int, size: int) -> dict:
    """PUT `total` products in batches of `size`, back to back."""
    times = []
    start = time.perf_counter()
    for _ in range(0, total, size):
        times.append(put_batch(client, products.batch(size)))
    return upsert_summary(times, len(times) * size, time.perf_counter() - start)


@contextmanager
def streaming_updates(
    base: str, products: Products, size: int, rate: float | None
) -> Iterator[dict[str, Any]]:
    """PUT batches from another thread while the block runs (paced at `rate` products/s, or
    back to back); the yielded dict gets the upsert summary when the block ends."""
    stop = threading.Event()
    times: list[float] = []
    outcome: dict[str, Any] = {}

    def stream() -> None:
        with httpx.Client(base_url=base, timeout=TIMEOUT_S) as client:
            while not stop.is_set():
                started = time.perf_counter()
                times.append(put_batch(client, products.batch(size)))
                if rate is not None:
                    stop.wait(max(0.0, size / rate - (time.perf_counter() - started)))

    thread = threading.Thread(target=stream, name="updates")
    start = time.perf_counter()
    thread.start()
    try:
        yield outcome
    finally:
        stop.set()
        thread.join()
    outcome.update(upsert_summary(times, len(times) * size, time.perf_counter() - start))


def delete_products(client: httpx.Client, ids: list[str]) -> dict[str, Any]:
    """DELETE each product, one request at a time."""
    times = []
    start = time.perf_counter()
    for product in ids:
        began = time.perf_counter()
        client.delete(f"/products/{product}").raise_for_status()
        times.append((time.perf_counter() - began) * 1000)
    seconds = time.perf_counter() - start
    return {
        "deleted": len(ids),
        "deletes_per_s": round(len(ids) / seconds, 1),
        "delete_ms": latency_summary(times),
    }


@contextmanager
def timed_server(bundle: Path, env: dict[str, str]) -> Iterator[tuple[str, float]]:
    """A server on the bundle; yields its base URL and the seconds it took to be ready."""
    start = time.perf_counter()
    with server_process(bundle, free_port(), 0, env=env) as server:
        yield server.base, time.perf_counter() - start


def plot(results: dict[str, Any], path: Path) -> None:
    """Search latency p50 / p99 per phase, with the upsert rate running meanwhile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = ["idle", "streaming", "paced", "overlay"]
    labels = []
    for phase in phases:
        rate = results[phase].get("upserts", {}).get("products_per_s")
        labels.append(f"{phase}\n({rate:.0f} products/s)" if rate else phase)
    figure, axis = plt.subplots(figsize=(7, 4))
    for offset, stat in ((-0.2, "p50"), (0.2, "p99")):
        values = [results[phase]["search_ms"][stat] for phase in phases]
        axis.bar([i + offset for i in range(len(phases))], values, width=0.4, label=stat)
    axis.set_xticks(range(len(phases)), labels)
    axis.set_ylabel("search latency, ms (k = 10, one client)")
    axis.set_title(f"{results['bundle']}: searching while the catalog changes")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    """Run the phases and write the results JSON and plot."""
    parser = argparse.ArgumentParser(prog="python -m bench.catalog", description=__doc__)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="dataset of the dev queries")
    parser.add_argument("--batch", type=int, default=100, help="products per PUT")
    parser.add_argument("--products", type=int, default=3000, help="products PUT alone")
    parser.add_argument("--searches", type=int, default=400, help="searches per phase")
    parser.add_argument("--deletes", type=int, default=500, help="trained products deleted")
    parser.add_argument("--paced-rate", type=float, default=100.0, help="products/s when paced")
    parser.add_argument("--precision", choices=["fp32", "int8"], default="fp32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "catalog.json")
    args = parser.parse_args(argv)

    manifest = read_manifest(args.bundle)
    titles = read_lines(args.bundle / manifest.labels.titles)
    count = manifest.labels.count
    ids_file = manifest.labels.ids
    trained_ids = read_lines(args.bundle / ids_file) if ids_file else list(map(str, range(count)))
    queries = load_dataset(args.data).split("dev").texts[: args.searches]
    products = Products(titles, args.seed)
    deleted = random.Random(args.seed).sample(trained_ids, args.deletes)
    results: dict[str, Any] = {
        "bundle": manifest.name,
        "bundle_version": manifest.version,
        "labels": manifest.labels.count,
        "model": manifest.default_model,
        "precision": args.precision,
        "batch": args.batch,
        "date": date.today().isoformat(),
        "command": command_line("bench.catalog", argv),
        "machine": machine(),
        "versions": versions(["onnxruntime", "faiss-cpu", "numpy"]),
    }
    with tempfile.TemporaryDirectory(prefix="xc-catalog-bench-") as data_dir:
        env = {"XC_DATA_DIR": data_dir, "XC_ENCODER_PRECISION": args.precision}
        with timed_server(args.bundle, env) as (base, ready_s):
            results["start_s"] = round(ready_s, 2)
            with httpx.Client(base_url=base, timeout=TIMEOUT_S) as client:
                search_latency(client, queries[:20])  # warm the connection and caches
                results["idle"] = {"search_ms": search_latency(client, queries)}
                print("idle", results["idle"], flush=True)
                results["upsert"] = upsert_alone(client, products, args.products, args.batch)
                print("upsert", results["upsert"], flush=True)
                for phase, rate in (("streaming", None), ("paced", args.paced_rate)):
                    with streaming_updates(base, products, args.batch, rate) as upserts:
                        searched = search_latency(client, queries)
                    results[phase] = {"search_ms": searched, "upserts": upserts}
                    print(phase, results[phase], flush=True)
                results["delete"] = delete_products(client, deleted)
                print("delete", results["delete"], flush=True)
                results["overlay"] = {
                    "search_ms": search_latency(client, queries),
                    "catalog": client.get("/v1/models").json()["data"][0]["catalog"],
                }
                print("overlay", results["overlay"], flush=True)
        with (
            timed_server(args.bundle, env) as (base, ready_s),
            httpx.Client(base_url=base, timeout=TIMEOUT_S) as client,
        ):
            catalog = client.get("/v1/models").json()["data"][0]["catalog"]
            last = products.product(products.made - 1)
            body = {"query": last["title"], "k": K}
            found = client.post("/search", json=body).json()["results"]
            if last["id"] not in [hit["id"] for hit in found]:
                raise AssertionError(f"{last} not found after the restart")
        results["restart"] = {"ready_s": round(ready_s, 2), "catalog": catalog}
        print("restart", results["restart"], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.out.with_suffix(".png"))
    print(f"wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
