"""Command line: `python -m training {demo,train,merge,evaluate,quantize,lexical,distill,ranker}`.

This module only parses flags and hands them to the step that does the work
(`training.pipeline` for train, merge and lexical; `training.demo`, `training.evaluate`,
`training.quantize`); every flag of a model's config comes from its dataclass.

`train` reads a dataset (XC text layout or fastText), trains ASTRA or MACH, writes a bundle,
scores it on the dev split, tunes its weights there and records those metrics and where the
weights came from in the manifest (`metrics.weights`): on `--train-split trn` dev is inside the
training data, so the weights stay the defaults unless `--weights-from BUNDLE` takes them from a
bundle fitted with dev held out. `train --model mach
--reps 0-7` trains only those heads and writes a shard; `merge` joins shards into a bundle.
`train` runs on CUDA when there is a GPU (`--device`), and under `torchrun --nproc_per_node=N`
on N processes: ASTRA with DistributedDataParallel, MACH with the heads spread over the ranks;
rank 0 alone writes the bundle and prints the result.
`evaluate` prints one JSON object on the last line of standard output. `quantize` adds int8
copies of the encoder and of the MACH heads to a bundle (and with `--data`, reports their parity
and dev metrics).
`distill` adds a student encoder with fewer layers to a bundle, distilled from its encoder on
the training split and checked on dev (`XC_ENCODER_SIZE`).
`lexical` adds ASTRA's BM25 ranker to a bundle built without one (with `--data`, it tunes its
weight and the hybrid's on the dev split, as `train` does).
`ranker` trains a learned ranker (LambdaMART) of ASTRA's lexical candidates on the dev split's
graded pairs (and, with `--stack-from`, on half of train's as a bundle fitted on the other half
scores them), cross-validates it against the formula and writes it into the bundle
(`training.ranker`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from service.astra.index import INDEX_TYPES
from training.astra import AstraConfig
from training.data import DataError, load_dataset
from training.demo import DEMO_SEED, generate_demo
from training.device import DEVICES, PRECISIONS
from training.distributed import Runtime, finish, start
from training.mach.heads import MachConfig
from training.shopdata import (
    ShopDataSpec,
    add_shop_data_arguments,
    shop_data_spec_from_args,
    write_xc_dir,
)
from training.student import StudentConfig

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


def _add_data_flags(parser: argparse.ArgumentParser, text: str) -> None:
    """`--data PATH`, or a shop's export given by flags (`--products ... --interactions ...`,
    `training.shopdata`): `_data` says which."""
    parser.add_argument("--data", type=Path, default=None, help=text)
    add_shop_data_arguments(parser)


def _data(args: argparse.Namespace, required: bool = True) -> Path | ShopDataSpec | None:
    """The data the flags name: `--data`, or the shop export `--products`/`--data-config`
    describe (not both); None where neither is given and none is required."""
    spec = shop_data_spec_from_args(args)
    if spec is not None and args.data is not None:
        raise DataError("data: give --data or --products/--data-config, not both")
    if spec is None and args.data is None and required:
        raise DataError("data: required: --data PATH, or --products FILE --interactions FILE")
    return spec if spec is not None else args.data


def _add_export_parser(commands: argparse._SubParsersAction) -> None:
    """`export-xc`: a dataset written in the XC text layout, for research tools."""
    export = commands.add_parser(
        "export-xc",
        help="write a dataset (a shop's export, say) in the XC text layout (lbl_X.txt, ...)",
    )
    _add_data_flags(export, "the dataset to write")
    export.add_argument("--out", type=Path, required=True, help="directory to write")


def _add_distill_parser(commands: argparse._SubParsersAction) -> None:
    """The `distill` subcommand's flags."""
    distill = commands.add_parser(
        "distill",
        help="add a student encoder with fewer layers to a bundle, distilled from its encoder "
        "and checked on dev (XC_ENCODER_SIZE)",
    )
    distill.add_argument("--bundle", type=Path, required=True)
    _add_data_flags(distill, "the bundle's dataset")
    distill.add_argument(
        "--layers",
        default=",".join(map(str, StudentConfig().layers)),
        help="the full encoder's layers the student keeps (default %(default)s)",
    )
    distill.add_argument("--epochs", type=int, default=StudentConfig.epochs)
    distill.add_argument("--seed", type=int, default=StudentConfig.seed)


def _add_bundle_step_parsers(commands: argparse._SubParsersAction) -> None:
    """The flags of the subcommands that add a part to an existing bundle: `lexical`,
    `quantize`, `ranker`."""
    lexical = commands.add_parser(
        "lexical", help="add ASTRA's lexical (BM25) ranker to a bundle built without one"
    )
    lexical.add_argument("--bundle", type=Path, required=True)
    _add_data_flags(lexical, "dataset the bundle was trained on: tune on dev")
    quantize = commands.add_parser(
        "quantize",
        help="add int8 copies of the encoder and MACH heads to a bundle (XC_ENCODER_PRECISION, "
        "XC_MACH_PRECISION)",
    )
    quantize.add_argument("--bundle", type=Path, required=True)
    _add_data_flags(quantize, "report fp32/int8 parity and dev metrics on it")
    ranker = commands.add_parser(
        "ranker",
        help="train a learned ranker of ASTRA's lexical candidates on dev, into the bundle",
    )
    ranker.add_argument("--bundle", type=Path, required=True)
    ranker.add_argument(
        "--stack-from",
        type=Path,
        nargs="+",
        default=[],
        help="bundles of the same recipe fitted on one half of train each (--train-split "
        "train-a, train-b): the ranker also learns from the other half's queries as each scores "
        "them",
    )
    _add_data_flags(ranker, "the bundle's dataset")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="generate the deterministic demo catalog")
    demo.add_argument("--out", type=Path, required=True)
    demo.add_argument("--products", type=int, default=2000)
    demo.add_argument("--seed", type=int, default=DEMO_SEED)

    train = commands.add_parser("train", help="train a model and write a bundle")
    _add_data_flags(train, "dataset: XC dir, fastText file, or a shop export's .toml")
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
        "--weights-from",
        type=Path,
        default=None,
        help="take the dev-tuned weights and default model from this bundle (one fitted on "
        "'train', dev held out): for --train-split trn, whose dev split is inside its data",
    )
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
    _add_data_flags(evaluate, "the bundle's dataset")
    evaluate.add_argument("--split", choices=["dev", "tst", "trn", "train"], default="dev")
    evaluate.add_argument("--model", choices=["astra", "mach", "hybrid"], default=None)
    evaluate.add_argument("--hybrid-weight", type=float, default=None)
    evaluate.add_argument("--precision", choices=["fp32", "int8"], default="fp32")
    evaluate.add_argument("--lexical-weight", type=float, default=None)
    _add_bundle_step_parsers(commands)
    _add_distill_parser(commands)
    _add_export_parser(commands)
    return parser


def _distill(args: argparse.Namespace) -> dict:
    """`distill`: the student's config from the flags, then `distill_bundle`."""
    from training.student_bundle import distill_bundle

    try:
        layers = [int(part) for part in args.layers.split(",")]
    except ValueError:
        raise ValueError(f"layers: expected integers like 0,2,4, got {args.layers!r}") from None
    config = StudentConfig(layers=layers, epochs=args.epochs, seed=args.seed)
    return distill_bundle(args.bundle, _data(args), config)


def _train(args: argparse.Namespace, runtime: Runtime) -> dict | None:
    """`train`: ASTRA, or MACH heads (all of them, or the shard `--reps`)."""
    from training.pipeline import train_astra_bundle, train_mach_bundle

    if args.model == "mach":
        config = _config(args, "mach")
        assert isinstance(config, MachConfig)
        return train_mach_bundle(
            data=_data(args),
            out=args.out,
            config=config,
            reps=parse_reps(args.reps, config.repetitions),
            encoder_from=args.encoder_from,
            default_model=args.default_model,
            runtime=runtime,
        )
    config = _config(args, "astra")
    assert isinstance(config, AstraConfig)
    return train_astra_bundle(
        data=_data(args),
        out=args.out,
        config=config,
        index_type=args.index,
        checkpoint_dir=args.checkpoint_dir,
        runtime=runtime,
    )


def _run(args: argparse.Namespace) -> dict | None:
    """Run the subcommand; its JSON report (None on the non-zero ranks of a torchrun)."""
    if args.command == "demo":
        return {"demo": str(generate_demo(args.out, num_products=args.products, seed=args.seed))}
    if args.command == "train":
        runtime = start(args.device, args.precision)
        report = _train(args, runtime)
        finish(runtime)
        if report is not None and args.weights_from is not None and "shard" not in report:
            from training.pipeline import copy_tuned_weights

            report.update(copy_tuned_weights(args.out, args.weights_from))
        return report
    if args.command == "merge":
        from training.pipeline import merge_shards

        return merge_shards(args.shards, args.out, args.default_model)
    if args.command == "quantize":
        from training.quantize import quantize_and_report  # onnxruntime.quantization: slow

        return quantize_and_report(args.bundle, _data(args, required=False))
    if args.command == "distill":
        return _distill(args)
    if args.command == "ranker":
        from training.ranker import train_ranker

        return train_ranker(args.bundle, _data(args), stack_from=args.stack_from)
    if args.command == "lexical":
        from training.pipeline import add_lexical_ranker

        return add_lexical_ranker(args.bundle, _data(args, required=False))
    if args.command == "export-xc":
        dataset = load_dataset(_data(args))
        return {"xc": str(write_xc_dir(dataset, args.out)), "summary": dataset.source or None}
    from training.evaluate import evaluate_bundle

    return evaluate_bundle(
        args.bundle,
        load_dataset(_data(args)),
        args.split,
        args.model,
        hybrid_weight=args.hybrid_weight,
        precision=args.precision,
        lexical_weight=args.lexical_weight,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point; prints the subcommand's JSON report and returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    LOG.setLevel(logging.INFO)
    try:
        report = _run(args)
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if report is not None:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
