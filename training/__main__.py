"""Command line: `python -m training {demo,train,merge,evaluate,quantize,lexical}`.

`train` reads a dataset (XC text layout or fastText), trains ASTRA or MACH, writes a bundle,
scores it on the dev split and records those metrics in the manifest. `train --model mach
--reps 0-7` trains only those heads and writes a shard; `merge` joins shards into a bundle.
`train` runs on CUDA when there is a GPU (`--device`), and under `torchrun --nproc_per_node=N`
on N processes: ASTRA with DistributedDataParallel, MACH with the heads spread over the ranks;
rank 0 alone writes the bundle and prints the result.
`evaluate` prints one JSON object on the last line of standard output. `quantize` adds an int8
copy of the encoder to a bundle (and with `--data`, reports its parity and dev metrics).
`lexical` adds ASTRA's BM25 ranker to a bundle built without one (with `--data`, it tunes its
weight and the hybrid's on the dev split, as `train` does).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from service.retrieval import INDEX_TYPES
from training.astra import AstraConfig, train_astra
from training.data import DataError, XCDataset, load_dataset
from training.demo import DEMO_SEED, generate_demo
from training.device import DEVICES, PRECISIONS
from training.distributed import Runtime, barrier, finish, gather_to_main, start
from training.mach import MachConfig
from training.plots import plot_mach_curve, plot_training_curve

CURVE_FILE = "training_curve.png"
MACH_CURVE_FILE = "mach_training_curve.png"
HYBRID_WEIGHTS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5)
CONFIGS = {"astra": AstraConfig, "mach": MachConfig}
LOG = logging.getLogger("training")
FLAG_TYPES = {"int": int, "float": float, "str": str, "int | None": int, "float | None": float}


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config field of either model, so the CLI and the configs never drift apart.

    Flags default to "not given"; each model's config supplies its own default.
    """
    fields = {f.name: f for config in CONFIGS.values() for f in dataclasses.fields(config)}
    for name, field in fields.items():
        defaults = ", ".join(
            f"{model}: {config.__dataclass_fields__[name].default}"
            for model, config in CONFIGS.items()
            if name in config.__dataclass_fields__
        )
        kwargs = {"default": argparse.SUPPRESS, "help": f"default {defaults}"}
        flag = "--" + name.replace("_", "-")
        if field.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            parser.add_argument(flag, type=FLAG_TYPES[str(field.type)], **kwargs)


def _config(args: argparse.Namespace, model: str) -> AstraConfig | MachConfig:
    """The model's config from the flags given (its own defaults otherwise)."""
    config = CONFIGS[model]
    given = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(config) if hasattr(args, f.name)
    }
    return config(**given)


def parse_reps(text: str | None, total: int) -> range:
    """`--reps 0-7` (inclusive) or `--reps 3` -> a range inside 0..total-1 (all when None)."""
    if text is None:
        return range(total)
    try:
        first, _, last = text.partition("-")
        reps = range(int(first), int(last or first) + 1)
    except ValueError:
        raise ValueError(f"reps: expected A-B or A, got {text!r}") from None
    if not reps or reps.start < 0 or reps.stop > total:
        raise ValueError(f"reps: {text!r} is not inside 0-{total - 1}")
    return reps


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="generate the deterministic demo catalog")
    demo.add_argument("--out", type=Path, required=True)
    demo.add_argument("--products", type=int, default=2000)
    demo.add_argument("--seed", type=int, default=DEMO_SEED)

    train = commands.add_parser("train", help="train a model and write a bundle")
    train.add_argument("--data", type=Path, required=True, help="dataset dir or fastText file")
    train.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    train.add_argument("--model", choices=["astra", "mach"], default="astra")
    train.add_argument("--index", choices=["auto", *INDEX_TYPES], default="auto")
    train.add_argument(
        "--reps", default=None, help="mach: heads to train, e.g. 0-7 (a shard); default all"
    )
    train.add_argument(
        "--encoder-from",
        type=Path,
        default=None,
        help="mach: add the heads to this ASTRA bundle, on its encoder (default: base encoder)",
    )
    train.add_argument("--default-model", choices=["astra", "mach", "hybrid"], default=None)
    train.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="default: models/.checkpoints/<bundle name>",
    )
    train.add_argument(
        "--device", choices=DEVICES, default="auto", help="auto: cuda when available, else cpu"
    )
    train.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="astra encoder forward passes; auto: bf16 autocast on CUDA, fp32 on CPU",
    )
    _add_config_flags(train)

    merge = commands.add_parser("merge", help="join MACH shards into one bundle")
    merge.add_argument("--shards", type=Path, nargs="+", required=True)
    merge.add_argument("--out", type=Path, required=True)
    merge.add_argument("--default-model", choices=["astra", "mach", "hybrid"], default=None)

    evaluate = commands.add_parser("evaluate", help="score a bundle on a split")
    evaluate.add_argument("--bundle", type=Path, required=True)
    evaluate.add_argument("--data", type=Path, required=True)
    evaluate.add_argument("--split", choices=["dev", "tst", "trn", "train"], default="dev")
    evaluate.add_argument("--model", choices=["astra", "mach", "hybrid"], default=None)
    evaluate.add_argument("--hybrid-weight", type=float, default=None)
    evaluate.add_argument("--precision", choices=["fp32", "int8"], default="fp32")
    evaluate.add_argument("--lexical-weight", type=float, default=None)
    lexical = commands.add_parser(
        "lexical", help="add ASTRA's lexical (BM25) ranker to a bundle built without one"
    )
    lexical.add_argument("--bundle", type=Path, required=True)
    lexical.add_argument(
        "--data", type=Path, default=None, help="dataset the bundle was trained on: tune on dev"
    )

    quantize = commands.add_parser(
        "quantize", help="add an int8 copy of the encoder to a bundle (XC_ENCODER_PRECISION)"
    )
    quantize.add_argument("--bundle", type=Path, required=True)
    quantize.add_argument(
        "--data", type=Path, default=None, help="report fp32/int8 parity and dev metrics on it"
    )
    return parser


def _runtime_meta(runtime: Runtime) -> dict:
    """Where a run trained, as recorded in the manifest."""
    return {
        "device": runtime.device.type,
        "precision": runtime.precision,
        "world_size": runtime.world_size,
    }


def _train(args: argparse.Namespace, runtime: Runtime) -> dict | None:
    """Train ASTRA and, on rank 0, write and score the bundle (None on the other ranks)."""
    from training.export import write_bundle

    dataset = load_dataset(args.data)
    config = _config(args, "astra")
    checkpoints = args.checkpoint_dir or args.out.parent / ".checkpoints" / args.out.name
    result = train_astra(
        dataset,
        config,
        checkpoint_dir=checkpoints,
        cache_dir=args.out.parent / ".cache",
        runtime=runtime,
    )
    if not runtime.is_main:
        return None
    result.model.cpu()  # the ONNX export traces on the CPU
    curve = checkpoints / CURVE_FILE
    checkpoints.mkdir(parents=True, exist_ok=True)
    plot_training_curve(result.losses, result.dev_history, curve, f"ASTRA on {dataset.name}")
    trained_labels = len(result.model.trained_ids)
    write_bundle(
        args.out,
        encoder=result.model.encoder,
        query_max_length=config.query_max_length,
        classifiers=result.model.all_classifiers(),
        label_titles=dataset.label_titles,
        label_ids=dataset.label_ids,
        trained_labels=trained_labels,
        index_type=args.index,
        training={
            "model": "astra",
            "dataset": dataset.name,
            "data_path": str(args.data),
            "split": config.train_split,
            "points": len(dataset.split(config.train_split)),
            "labels": dataset.num_labels,
            "trained_labels": trained_labels,
            "steps": len(result.losses),
            "seconds": round(result.seconds, 1),
            "final_loss": result.losses[-1] if result.losses else None,
            "dev_history": result.dev_history,
            "config": dataclasses.asdict(config),
            **_runtime_meta(runtime),
        },
        extra_files={CURVE_FILE: curve},
    )
    metrics = _dev_metrics(args.out, dataset, config.train_split)
    return {"bundle": str(args.out), "seconds": round(result.seconds, 1), **metrics}


def _dev_metrics(
    bundle: Path, dataset: XCDataset, split: str, default_model: str | None = None
) -> dict:
    """Dev metrics of every model in a fresh bundle, tuning ASTRA's lexical weight and then the
    hybrid weight on dev first.

    The tuned weights and, unless `default_model` is given, the default model (all by best dev
    nDCG@10) are written into the manifest; nothing is tuned on tst.
    """
    from service.bundle import read_manifest, save_manifest
    from training.evaluate import evaluate_bundle
    from training.lexical import lexical_weight_trials

    manifest = read_manifest(bundle)
    if split == "trn" or not len(dataset.split("dev")):
        return {}
    by_model = {}
    lexical = manifest.astra.lexical if manifest.astra else None
    if lexical is not None:
        trials = lexical_weight_trials(bundle, dataset)
        weight = max(trials, key=lambda w: trials[w]["nDCG@10"])
        astra = manifest.astra.model_copy(
            update={"lexical": lexical.model_copy(update={"weight": weight})}
        )
        manifest = save_manifest(bundle, manifest.model_copy(update={"astra": astra}))
        by_model["astra"] = {
            **trials[weight],
            "lexical_weight_trials": {str(w): trials[w]["nDCG@10"] for w in trials},
        }
    if "hybrid" in manifest.models:
        trials = {
            w: evaluate_bundle(bundle, dataset, "dev", "hybrid", hybrid_weight=w)
            for w in HYBRID_WEIGHTS
        }
        weight = max(trials, key=lambda w: trials[w]["nDCG@10"])
        manifest = manifest.model_copy(
            update={"mach": manifest.mach.model_copy(update={"hybrid_weight": weight})}
        )
        by_model["hybrid"] = {
            **trials[weight],
            "weight_trials": {str(w): trials[w]["nDCG@10"] for w in trials},
        }
    for model in manifest.kinds:
        if model not in by_model:
            by_model[model] = evaluate_bundle(bundle, dataset, "dev", model)
    if default_model is None:
        default_model = max(by_model, key=lambda m: by_model[m]["nDCG@10"])
    metrics = {"dev": by_model[default_model], "dev_by_model": by_model}
    update = {"metrics": metrics, "default_model": default_model}
    save_manifest(bundle, manifest.model_copy(update=update))
    return metrics


def _mach_meta(args: argparse.Namespace, dataset: XCDataset, config: MachConfig) -> dict:
    return {
        "data_path": str(args.data),
        "encoder_from": str(args.encoder_from) if args.encoder_from else None,
        "dataset": dataset.name,
        "split": config.train_split,
        "points": len(dataset.split(config.train_split)),
        "labels": dataset.num_labels,
    }


def _write_mach(
    out: Path,
    dataset: XCDataset,
    config: MachConfig,
    results,
    featurizer,
    meta: dict,
    default_model: str | None,
) -> dict:
    """Stack all heads, export them and write the bundle, then score it on dev."""
    from training.mach import stack_heads
    from training.mach_bundle import write_mach_bundle

    curve = out.parent / ".checkpoints" / out.name / MACH_CURVE_FILE
    curve.parent.mkdir(parents=True, exist_ok=True)
    plot_mach_curve(
        {r.rep: r.epoch_losses for r in results}, curve, f"MACH heads on {dataset.name}"
    )
    encoder_from = Path(meta["encoder_from"]) if meta["encoder_from"] else None
    write_mach_bundle(
        out,
        dataset=dataset,
        heads=stack_heads(results, config),
        featurizer=featurizer,
        config=config,
        encoder_from=encoder_from,
        cache_dir=out.parent / ".cache",
        default_model=default_model,
        training={**meta, "config": dataclasses.asdict(config)},
        extra_files={MACH_CURVE_FILE: curve},
    )
    return {"bundle": str(out), **_dev_metrics(out, dataset, config.train_split, default_model)}


def _train_mach(args: argparse.Namespace, runtime: Runtime) -> dict | None:
    """Train the heads `--reps`, rank r taking r, r + N, ...; rank 0 gathers them and writes the
    shard or bundle (None on the other ranks). No communication until the gather."""
    from service.encoder import QueryEncoder
    from training.mach import train_mach
    from training.mach_bundle import build_featurizer, encoder_dir, query_inputs, write_shard

    dataset = load_dataset(args.data)
    config = _config(args, "mach")
    reps = parse_reps(args.reps, config.repetitions)
    split = dataset.split(config.train_split)
    cache = args.out.parent / ".cache"
    if runtime.is_main:  # exports the base encoder once, for every rank sharing this disk
        encoder_dir(args.encoder_from, cache)
    barrier(runtime)
    source, spec = encoder_dir(args.encoder_from, cache)
    featurizer = build_featurizer(split.texts, config)
    inputs = query_inputs(split.texts, QueryEncoder(source, spec), featurizer, spec.dim)
    positives = split.positives(dataset.positive_min_weight)
    mine = reps[runtime.rank :: runtime.world_size]
    LOG.info("mach: %s; heads %s in fp32", runtime.describe(), list(mine))
    trained = train_mach(
        inputs, positives, dataset.num_labels, config, mine, runtime.device, runtime.is_main
    )
    gathered = gather_to_main(trained, runtime)
    if gathered is None:
        return None
    results = sorted((r for part, _ in gathered for r in part), key=lambda r: r.rep)
    seconds = max(part_seconds for _, part_seconds in gathered)  # the slowest rank's wall time
    meta = {
        **_mach_meta(args, dataset, config),
        "dim": spec.dim,
        "seconds": round(seconds, 1),
        **_runtime_meta(runtime),
    }
    if len(reps) < config.repetitions:
        write_shard(args.out, results, config, meta)
        return {
            "shard": str(args.out),
            "reps": f"{reps.start}-{reps.stop - 1}",
            "seconds": meta["seconds"],
        }
    return {
        **_write_mach(args.out, dataset, config, results, featurizer, meta, args.default_model),
        "seconds": meta["seconds"],
    }


def _merge(args: argparse.Namespace) -> dict:
    from training.mach_bundle import build_featurizer, read_shards

    config, results, meta = read_shards(args.shards)
    dataset = load_dataset(meta["data_path"])
    featurizer = build_featurizer(dataset.split(config.train_split).texts, config)
    return _write_mach(args.out, dataset, config, results, featurizer, meta, args.default_model)


def _lexical(args: argparse.Namespace) -> dict:
    """Add the lexical ranker to `--bundle`; with `--data`, tune the weights on its dev split."""
    from service.bundle import read_manifest
    from training.lexical import add_lexical

    spec = add_lexical(args.bundle)
    report: dict = {"bundle": str(args.bundle), "lexical": spec.model_dump()}
    if args.data is not None:
        manifest = read_manifest(args.bundle)
        astra = manifest.training.get("astra", manifest.training)
        split = astra.get("split", "trn")
        report.update(_dev_metrics(args.bundle, load_dataset(args.data), split))
        report["lexical"] = read_manifest(args.bundle).astra.lexical.model_dump()
    return report


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    LOG.setLevel(logging.INFO)
    try:
        if args.command == "demo":
            out = generate_demo(args.out, num_products=args.products, seed=args.seed)
            print(json.dumps({"demo": str(out)}))
        elif args.command == "train":
            runtime = start(args.device, args.precision)
            train = _train_mach if args.model == "mach" else _train
            report = train(args, runtime)
            if report is not None:
                print(json.dumps(report))
            finish(runtime)
        elif args.command == "merge":
            print(json.dumps(_merge(args)))
        elif args.command == "quantize":
            from training.quantize import quantize_and_report  # onnxruntime.quantization: slow

            print(json.dumps(quantize_and_report(args.bundle, args.data)))
        elif args.command == "lexical":
            print(json.dumps(_lexical(args)))
        else:
            from training.evaluate import evaluate_bundle

            dataset = load_dataset(args.data)
            metrics = evaluate_bundle(
                args.bundle,
                dataset,
                args.split,
                args.model,
                hybrid_weight=args.hybrid_weight,
                precision=args.precision,
                lexical_weight=args.lexical_weight,
            )
            print(json.dumps(metrics))
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
