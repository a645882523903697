"""MACH decoding at scale: exact against fast (top-m buckets) decoding on synthetic label spaces.

    python -m bench.mach_decode                       # K = 1M and 10M, R = 16, 200 queries
    python -m bench.mach_decode --labels 1000000 --queries 50 --scenarios graded

For each label-space size K the bucket table comes from the real hash family and the decoder
from `service.mach.decode`. No trained model is involved: bucket scores are synthetic, drawn in
one of two named scenarios, and scores = log-sigmoid(logit) in both.

- ``graded`` (the default, meant to resemble a trained model): each query has 20-50 related
  labels whose logits fall smoothly from +3 to -2 in order of relevance, the same in every
  repetition up to N(0, 0.5^2) noise (a head that learned the query puts the same labels high);
  every bucket has a background logit N(-6, 1), and a bucket holding related labels takes the
  highest of their logits. So at least 10 labels clearly stand out in all R repetitions, and
  exact decoding's top-10 is made of related labels.
- ``planted`` (the earlier, harsher one): 5 planted labels per query get bucket logits
  N(+2, 1) in every repetition, all other buckets pure noise N(-6, 1). Exact decoding's ranks
  1-5 are the planted labels, but ranks 6-10 are noise labels: ones that happen to sit in
  several of the few noisy buckets that are high by chance. Those buckets are rarely among any
  repetition's top-m, so recall@10 of fast against exact stays low there even though fast finds
  the planted labels; the scenario shows that a top-10 padded with noise cannot be recovered
  from top buckets, not how a trained model decodes.

Queries are decoded one at a time (n = 1, as serving does) and in batches of 32; per-query times
(wall clock) are reported as median and p90, with the n = 1 median of this thread's CPU time
beside them, since the machine's 2 cores may be shared (the load average is recorded). Fast
decoding is swept over top_buckets m with its recall@10 against exact decoding on the same
scores; "truth" is the fraction of the generator's 10 most relevant labels (all 5 planted ones
in ``planted``) in the top-10. Memory compares MACH (output layer R·hidden·B fp32 plus the
decoder's label-major table and inverted index) with a one-vs-all output layer (K·d fp32).
Results go to `bench/results/mach_decode.json` and `bench/results/mach_decode.png`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from service.mach.decode import MachDecoder
from service.mach.hash import HashFamily

RESULTS = Path(__file__).resolve().parent / "results"
MIB = 1 << 20
K_TOP = 10
BATCH = 32
SCENARIOS = ("graded", "planted")


def default_buckets(num_labels: int) -> int:
    """The power of two nearest K/256 (about 256 labels per bucket): 4096 at 1M, 32768 at 10M."""
    return 1 << max(1, round(math.log2(num_labels / 256)))


def _log_sigmoid_(logits: np.ndarray) -> np.ndarray:
    """log-sigmoid(x) = -log(1 + e^-x), in place."""
    np.negative(logits, out=logits)
    np.logaddexp(np.float32(0.0), logits, out=logits)
    np.negative(logits, out=logits)
    return logits


def _synthetic_scores(
    decoder: MachDecoder,
    queries: int,
    args: argparse.Namespace,
    seed: int,
    draw: Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Background logits N(background, noise²) with, per query, `draw`'s labels lifted to their
    logits [count, R] in their buckets (a bucket keeps the max); log-sigmoid of it all."""
    reps, buckets = decoder.reps, decoder.buckets
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((queries, reps, buckets), dtype=np.float32)
    logits *= args.noise
    logits += args.background
    rep_offsets = np.arange(reps) * buckets
    truth = []
    for q in range(queries):
        labels, values = draw(rng)
        where = decoder.label_buckets(labels) + rep_offsets  # [count, R] into the flat [R·B]
        np.maximum.at(logits[q].reshape(-1), where.reshape(-1), values.reshape(-1))
        truth.append(labels)
    return _log_sigmoid_(logits), truth


def graded_scores(
    decoder: MachDecoder, queries: int, args: argparse.Namespace, seed: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Bucket log-probabilities float32 [queries, R, B] and each query's related labels, best
    first (see the module doc)."""

    def draw(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        count = int(rng.integers(args.related_min, args.related_max + 1))
        labels = rng.choice(decoder.num_labels, count, replace=False)
        relevance = np.linspace(args.top_logit, args.bottom_logit, count, dtype=np.float32)
        noise = rng.standard_normal((count, decoder.reps), dtype=np.float32)
        return labels, relevance[:, None] + args.rep_noise * noise

    return _synthetic_scores(decoder, queries, args, seed, draw)


def planted_scores(
    decoder: MachDecoder, queries: int, args: argparse.Namespace, seed: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Bucket log-probabilities float32 [queries, R, B] and each query's planted labels."""

    def draw(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.choice(decoder.num_labels, args.planted, replace=False)
        noise = rng.standard_normal((args.planted, decoder.reps), dtype=np.float32)
        return labels, args.planted_logit + args.noise * noise

    return _synthetic_scores(decoder, queries, args, seed, draw)


def summarize(ms: list[float]) -> dict[str, float]:
    """Median and p90 of per-query milliseconds."""
    arr = np.asarray(ms)
    return {"p50": float(np.percentile(arr, 50)), "p90": float(np.percentile(arr, 90))}


def timed_decode(decode, scores: np.ndarray, batch: int, desc: str):
    """Decode `scores` in batches: (ids, per-query wall ms, per-query thread-CPU ms)."""
    ids, wall_ms, cpu_ms = [], [], []
    decode(scores[:1])  # warm-up, untimed
    for start in tqdm(range(0, scores.shape[0], batch), desc=desc, unit="batch", leave=False):
        chunk = scores[start : start + batch]
        cpu = time.thread_time()
        began = time.perf_counter()
        _, i = decode(chunk)
        wall_ms.append(1000.0 * (time.perf_counter() - began) / chunk.shape[0])
        cpu_ms.append(1000.0 * (time.thread_time() - cpu) / chunk.shape[0])
        ids.append(i)
    return np.concatenate(ids), wall_ms, cpu_ms


def timings(decode, scores: np.ndarray, desc: str) -> tuple[np.ndarray, dict]:
    """n = 1 and batched timings of `decode`; the ids of the n = 1 run, checked against batched."""
    ids, wall, cpu = timed_decode(decode, scores, 1, f"{desc} n1")
    row = {"n1": summarize(wall), "n1_cpu_p50": float(np.median(cpu))}
    batch_ids, wall, _ = timed_decode(decode, scores, BATCH, f"{desc} b{BATCH}")
    row[f"batch{BATCH}"] = summarize(wall)
    if not np.array_equal(ids, batch_ids):
        raise RuntimeError(f"{desc}: decoding differs between n=1 and batches of {BATCH}")
    return ids, row


def recall_at_k(reference: np.ndarray, found: np.ndarray) -> float:
    """Mean overlap of the top-k id sets, divided by k."""
    k = reference.shape[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(reference, found, strict=True)]))


def truth_recall(truth: list[np.ndarray], found: np.ndarray) -> float:
    """Mean fraction of each query's min(k, len) most relevant generator labels in its top-k."""
    k = found.shape[1]
    return float(
        np.mean([len(set(t[:k]) & set(f)) / len(t[:k]) for t, f in zip(truth, found, strict=True)])
    )


def certify_depth(decoder: MachDecoder, scores: np.ndarray, exact_ids: np.ndarray) -> dict:
    """How deep into each repetition's buckets an exact decoder must read to prove its top-k.

    Opening the d best buckets of every repetition bounds every label left unseen by the sum
    over r of each repetition's (d+1)-th best bucket score (its bucket in r is at best that
    one): the threshold rule (Fagin's TA) has proved the top-k once that bound falls to the
    k-th exact score. The smallest such d, as a fraction of B, and the labels the open buckets
    hold, K·(1 - (1 - d/B)^R), say what any decoder that is exact by proof must read.
    """
    fractions, candidates = [], []
    reps, buckets = decoder.reps, decoder.buckets
    for query, ids in zip(scores, exact_ids, strict=True):
        kth = decoder.label_buckets(ids[-1:])[0]  # [R]
        kth_score = float(query[np.arange(reps), kth].sum(dtype=np.float64))
        bound = -np.sort(-query, axis=1).sum(axis=0, dtype=np.float64)  # [B] non-increasing
        depth = int(np.argmax(bound <= kth_score + 1e-4))
        fractions.append(depth / buckets)
        candidates.append(decoder.num_labels * (1 - (1 - depth / buckets) ** reps))
    return {
        "fraction_of_buckets_p50": float(np.median(fractions)),
        "fraction_of_buckets_max": float(np.max(fractions)),
        "candidates_p50": round(float(np.median(candidates))),
    }


def bench_scenario(
    decoder: MachDecoder, scenario: str, args: argparse.Namespace, seed: int
) -> dict:
    """Exact and fast decoding of one scenario's scores on one decoder."""
    num_labels = decoder.num_labels
    make = graded_scores if scenario == "graded" else planted_scores
    began = time.perf_counter()
    scores, truth = make(decoder, args.queries, args, seed)
    scores_s = time.perf_counter() - began
    n_exact = args.queries if num_labels <= args.exact_full_below else args.exact_queries
    n_exact = min(n_exact, args.queries)
    tag = f"K={num_labels:,} {scenario}"

    exact_ids, exact = timings(lambda s: decoder.exact(s, K_TOP), scores[:n_exact], f"{tag} exact")
    exact["truth_at_10"] = truth_recall(truth[:n_exact], exact_ids)
    exact["certify"] = certify_depth(decoder, scores[:n_exact], exact_ids)

    fast = []
    for hits in args.min_hits:
        for m in args.top_buckets:
            if m > decoder.buckets:
                continue
            ids, row = timings(
                lambda s, m=m, h=hits: decoder.fast(s, K_TOP, m, h), scores, f"{tag} m={m} h={hits}"
            )
            row = {"top_buckets": m, "min_hits": hits, **row}
            row["recall_at_10"] = recall_at_k(exact_ids, ids[:n_exact])
            row["truth_at_10"] = truth_recall(truth, ids)
            # labels in the top-m buckets of at least one rep, for independent hashes
            row["expected_candidates"] = round(
                num_labels * (1 - (1 - m / decoder.buckets) ** decoder.reps)
            )
            fast.append(row)
    good = [
        row["top_buckets"]
        for row in fast
        if row["recall_at_10"] >= args.target_recall and row["min_hits"] == 1
    ]
    good_filtered = [
        row for row in fast if row["recall_at_10"] >= args.target_recall and row["min_hits"] > 1
    ]
    return {
        "scenario": scenario,
        "scores_s": round(scores_s, 2),
        "exact_queries": n_exact,
        "fast_queries": args.queries,
        "exact_ms": exact,
        "fast": fast,
        "min_top_buckets_for_target_recall": min(good) if good else None,
        "fastest_filtered_at_target_recall": (
            min(good_filtered, key=lambda row: row["n1"]["p50"]) if good_filtered else None
        ),
    }


def bench_labels(num_labels: int, buckets: int, args: argparse.Namespace) -> dict:
    """All measurements for one label-space size."""
    began = time.perf_counter()
    family = HashFamily.for_labels(
        seed=args.seed, reps=args.reps, buckets=buckets, num_labels=num_labels
    )
    if args.membership == "computed":  # what bundles since session 9 serve: no table
        decoder = MachDecoder.computed(family, num_labels)
        table_s = 0.0
    else:
        table = family.bucket_table(num_labels)
        table_s = time.perf_counter() - began
        began = time.perf_counter()
        decoder = MachDecoder(table, buckets)
        del table  # the decoder keeps its own label-major copy
    index_s = time.perf_counter() - began
    scenarios = [
        bench_scenario(decoder, scenario, args, args.seed + 1 + i)
        for i, scenario in enumerate(args.scenarios)
    ]
    mach_layer = args.reps * args.hidden * buckets * 4
    return {
        "labels": num_labels,
        "membership": args.membership,
        "reps": args.reps,
        "buckets": buckets,
        "build_s": {"hash_table": round(table_s, 2), "decoder": round(index_s, 2)},
        "scenarios": scenarios,
        "memory_mib": {
            "mach_output_layer": mach_layer / MIB,
            "table_and_inverted_index": decoder.nbytes / MIB,
            "mach_total": (mach_layer + decoder.nbytes) / MIB,
            "one_vs_all_output_layer": num_labels * args.dim * 4 / MIB,
        },
    }


def print_table(results: list[dict], args: argparse.Namespace) -> None:
    """The human-readable summary."""
    key = f"batch{BATCH}"
    for res in results:
        mem = res["memory_mib"]
        build = res["build_s"]
        print(
            f"\nK = {res['labels']:,}  R = {res['reps']}  B = {res['buckets']:,}  "
            f"(hash table {build['hash_table']} s, decoder {build['decoder']} s)"
        )
        print(
            f"  memory MiB: MACH output layer (R·{args.hidden}·B fp32)"
            f" {mem['mach_output_layer']:.1f}"
            f" + bucket membership ({res['membership']}) {mem['table_and_inverted_index']:.1f}"
            f" = {mem['mach_total']:.1f}  vs one-vs-all output layer (K·{args.dim} fp32)"
            f" {mem['one_vs_all_output_layer']:.1f}"
            f"  ({mem['one_vs_all_output_layer'] / mem['mach_total']:.1f}x)"
        )
        for sc in res["scenarios"]:
            print(
                f"\n  scenario {sc['scenario']}: exact over {sc['exact_queries']} queries, fast"
                f" over {sc['fast_queries']}; recall@{K_TOP} vs exact over the"
                f" {sc['exact_queries']} exact queries"
            )
            header = (
                f"  {'decoder':<12}{'n=1 p50':>9}{'n=1 p90':>9}{'n=1 cpu':>9}{'b32 p50':>9}"
                f"{'b32 p90':>9}{'recall@10':>11}{'truth':>7}{'~cands':>12}"
            )
            print(header)
            print("  " + "-" * (len(header) - 2))
            ex = sc["exact_ms"]
            print(
                f"  {'exact':<12}{ex['n1']['p50']:>9.2f}{ex['n1']['p90']:>9.2f}"
                f"{ex['n1_cpu_p50']:>9.2f}{ex[key]['p50']:>9.2f}{ex[key]['p90']:>9.2f}"
                f"{1.0:>11.3f}{ex['truth_at_10']:>7.3f}{res['labels']:>12,}"
            )
            for row in sc["fast"]:
                name = f"fast m={row['top_buckets']} h={row['min_hits']}"
                print(
                    f"  {name:<16}{row['n1']['p50']:>9.2f}"
                    f"{row['n1']['p90']:>9.2f}{row['n1_cpu_p50']:>9.2f}{row[key]['p50']:>9.2f}"
                    f"{row[key]['p90']:>9.2f}{row['recall_at_10']:>11.3f}"
                    f"{row['truth_at_10']:>7.3f}{row['expected_candidates']:>12,}"
                )
            best = sc["min_top_buckets_for_target_recall"]
            line = f"  smallest m with recall@{K_TOP} >= {args.target_recall}: {best}"
            if best is not None:
                row = next(r for r in sc["fast"] if r["top_buckets"] == best and r["min_hits"] == 1)
                line += (
                    f"  (fast n=1 p50 {row['n1']['p50']:.2f} ms vs exact"
                    f" {ex['n1']['p50']:.2f} ms, {ex['n1']['p50'] / row['n1']['p50']:.0f}x)"
                )
            print(line)
            if sc["scenario"] == "planted":
                print(
                    "  (planted: exact's ranks 6-10 are noise labels from buckets that are high"
                    " by chance, which top-m rarely opens; see the module doc)"
                )
    print(
        "\n(times: ms per query, wall clock; n=1 cpu = median thread CPU ms at n=1; b32 = batches"
        " of 32, time per batch / 32. recall@10: overlap of fast's and exact's top-10 ids."
        " truth: fraction of the generator's 10 most relevant labels (the 5 planted ones) in"
        " the top-10. ~cands: expected labels in the top-m buckets of some repetition.)"
    )


def plot(results: list[dict], scenarios: list[str], path: Path) -> None:
    """Per scenario: n = 1 time of fast (against m) and exact, and recall@10 against m."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(scenarios), 2, figsize=(11, 4.0 * len(scenarios)), squeeze=False)
    for row_axes, scenario in zip(axes, scenarios, strict=True):
        time_ax, recall_ax = row_axes
        for i, res in enumerate(results):
            sc = next(s for s in res["scenarios"] if s["scenario"] == scenario)
            colour = f"C{i}"
            label = f"K={res['labels']:,} B={res['buckets']:,}"
            for hits, style in ((1, "o-"), (2, "s:")):
                rows = [row for row in sc["fast"] if row["min_hits"] == hits]
                if not rows:
                    continue
                m = [row["top_buckets"] for row in rows]
                name = f"{label}, min_hits {hits}"
                time_ax.plot(
                    m, [row["n1"]["p50"] for row in rows], style, color=colour,
                    label=f"fast, {name}",
                )  # fmt: skip
                recall_ax.plot(
                    m, [row["recall_at_10"] for row in rows], style, color=colour, label=name
                )
            time_ax.axhline(
                sc["exact_ms"]["n1"]["p50"], color=colour, ls="--", label=f"exact, {label}"
            )
        recall_ax.axhline(0.99, color="grey", ls=":", label="0.99")
        for ax in row_axes:
            ax.set_xscale("log")
            ax.set_xlabel("top_buckets m (per repetition)")
            ax.grid(True, which="both", alpha=0.3)
        time_ax.set_yscale("log")
        time_ax.set_ylabel("median ms per query (n = 1)")
        time_ax.set_title(f"{scenario}: MACH decoding time, one query at a time")
        recall_ax.set_ylabel("recall@10 of fast vs exact")
        recall_ax.set_title(f"{scenario}: recall@10 against exact decoding")
        time_ax.legend(fontsize=8)
        recall_ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    """The command line, whose defaults `bench.scale` reuses for its MACH rows."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument(
        "--buckets",
        type=int,
        nargs="+",
        help="B for each --labels entry (default: the power of two nearest K/256)",
    )
    parser.add_argument(
        "--membership",
        choices=("computed", "table"),
        default="computed",
        help="computed (bundles since session 9, no O(K) table) or a label-major table",
    )
    parser.add_argument("--reps", type=int, default=16, help="R, repetitions")
    parser.add_argument("--hidden", type=int, default=128, help="MACH heads' hidden size")
    parser.add_argument("--dim", type=int, default=384, help="one-vs-all classifier dimension")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument(
        "--exact-queries",
        type=int,
        default=50,
        help="queries for exact decoding when K > --exact-full-below (it is O(R·K) per query)",
    )
    parser.add_argument("--exact-full-below", type=int, default=2_000_000)
    parser.add_argument(
        "--top-buckets", type=int, nargs="+", default=[1, 2, 3, 5, 8, 10, 20, 50, 100]
    )
    parser.add_argument(
        "--min-hits",
        type=int,
        nargs="+",
        default=[1, 2],
        help="fast decoding's min_hits: a candidate is in the top buckets of this many heads",
    )
    parser.add_argument("--target-recall", type=float, default=0.99)
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--background", type=float, default=-6.0, help="mean background logit")
    parser.add_argument("--noise", type=float, default=1.0, help="std of background logits")
    parser.add_argument("--related-min", type=int, default=20, help="graded: related labels, min")
    parser.add_argument("--related-max", type=int, default=50, help="graded: related labels, max")
    parser.add_argument("--top-logit", type=float, default=3.0, help="graded: most relevant")
    parser.add_argument("--bottom-logit", type=float, default=-2.0, help="graded: least relevant")
    parser.add_argument(
        "--rep-noise", type=float, default=0.5, help="graded: std of a related label's logit"
    )
    parser.add_argument("--planted", type=int, default=5, help="planted: labels per query")
    parser.add_argument("--planted-logit", type=float, default=2.0, help="planted: mean logit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "mach_decode.json")
    return parser


def main() -> None:
    """Run the benchmark and write its JSON and PNG."""
    parser = build_parser()
    args = parser.parse_args()
    buckets = args.buckets or [default_buckets(k) for k in args.labels]
    if len(buckets) != len(args.labels):
        parser.error("--buckets: give one value per --labels entry")

    load_before = os.getloadavg()
    results = [
        bench_labels(k, b, args)
        for k, b in tqdm(list(zip(args.labels, buckets, strict=True)), desc="label spaces")
    ]
    load_after = os.getloadavg()
    print_table(results, args)
    print(
        f"load average (1, 5, 15 min) before {tuple(round(x, 2) for x in load_before)},"
        f" after {tuple(round(x, 2) for x in load_after)} on {os.cpu_count()} cores"
    )
    report = {
        "date": date.today().isoformat(),
        "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, numpy {np.__version__}",
        "load_average": {"before": load_before, "after": load_after},
        "k": K_TOP,
        "batch": BATCH,
        "config": {
            key: value
            for key, value in vars(args).items()
            if key not in ("out", "labels", "buckets")
        },
        "synthetic_scores": {
            "graded": (
                f"log-sigmoid of logits; background N({args.background}, {args.noise}^2); per"
                f" query {args.related_min}-{args.related_max} related labels with logits"
                f" linspace({args.top_logit}, {args.bottom_logit}) + N(0, {args.rep_noise}^2)"
                " per repetition, a bucket taking the max of its labels' logits"
            ),
            "planted": (
                f"log-sigmoid of logits; background N({args.background}, {args.noise}^2); the"
                f" buckets of {args.planted} planted labels per query take"
                f" max(that, N({args.planted_logit}, {args.noise}^2)). Exact's ranks 6-10 are"
                " noise labels, so recall@10 of fast vs exact is low by construction"
            ),
        },
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    plot(results, args.scenarios, args.out.with_suffix(".png"))
    print(f"\nwrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
