"""Command line: `python -m training {demo,train,evaluate}`.

`train` reads a dataset (XC text layout or fastText), trains ASTRA, writes a bundle, scores it
on the dev split and records those metrics in the manifest. `evaluate` prints one JSON object
on the last line of standard output.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from training.astra import AstraConfig, train_astra
from training.data import DataError, load_dataset
from training.demo import DEMO_SEED, generate_demo
from training.plots import plot_training_curve

CURVE_FILE = "training_curve.png"


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per AstraConfig field, so the CLI and the config never drift apart."""
    for f in dataclasses.fields(AstraConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        elif f.type in ("int | None",):
            parser.add_argument(flag, type=int, default=f.default)
        else:
            kind = {"int": int, "float": float, "str": str}[str(f.type)]
            parser.add_argument(flag, type=kind, default=f.default)


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
    train.add_argument("--model", choices=["astra"], default="astra")
    train.add_argument("--index", choices=["auto", "flat", "hnsw"], default="auto")
    train.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="default: models/.checkpoints/<bundle name>",
    )
    _add_config_flags(train)

    evaluate = commands.add_parser("evaluate", help="score a bundle on a split")
    evaluate.add_argument("--bundle", type=Path, required=True)
    evaluate.add_argument("--data", type=Path, required=True)
    evaluate.add_argument("--split", choices=["dev", "tst", "trn", "train"], default="dev")
    evaluate.add_argument("--model", default=None)
    return parser


def _train(args: argparse.Namespace) -> dict:
    from service.bundle import save_manifest
    from training.evaluate import evaluate_bundle
    from training.export import write_bundle

    dataset = load_dataset(args.data)
    config = AstraConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(AstraConfig)})
    checkpoints = args.checkpoint_dir or args.out.parent / ".checkpoints" / args.out.name
    result = train_astra(
        dataset, config, checkpoint_dir=checkpoints, cache_dir=args.out.parent / ".cache"
    )
    curve = checkpoints / CURVE_FILE
    checkpoints.mkdir(parents=True, exist_ok=True)
    plot_training_curve(result.losses, result.dev_history, curve, f"ASTRA on {dataset.name}")
    trained_labels = len(result.model.trained_ids)
    manifest = write_bundle(
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
        },
        extra_files={CURVE_FILE: curve},
    )
    metrics = {}
    if config.train_split != "trn" and len(dataset.split("dev")):
        metrics = {"dev": evaluate_bundle(args.out, dataset, "dev")}
        save_manifest(args.out, manifest.model_copy(update={"metrics": metrics}))
    return {"bundle": str(args.out), "seconds": round(result.seconds, 1), **metrics}


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        if args.command == "demo":
            out = generate_demo(args.out, num_products=args.products, seed=args.seed)
            print(json.dumps({"demo": str(out)}))
        elif args.command == "train":
            print(json.dumps(_train(args)))
        else:
            from training.evaluate import evaluate_bundle

            dataset = load_dataset(args.data)
            print(json.dumps(evaluate_bundle(args.bundle, dataset, args.split, args.model)))
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
