"""`torchrun --nproc_per_node=2` training matches one process, and writes its files once.

Two CPU processes (gloo) train on a 60-product demo catalog. Tolerances:

- ASTRA: each rank encodes its own share of every batch, so padding lengths, matrix shapes and
  the order in which the two shares' gradients are summed differ from one process, i.e.
  float32 rounding at ~1e-7 relative. The per-step losses must agree to rtol 1e-5 and the served
  classifier vectors (trained vectors, and cold labels re-embedded by the trained encoder) to
  atol 1e-5, 20x what was measured (losses 3e-7 relative, vectors 5e-7); dev metrics must be
  equal. Raw encoder weights are not compared: Adam divides each gradient by its running RMS,
  so weights whose gradient is zero in exact arithmetic (attention key biases, by the
  softmax's shift invariance) take lr-sized steps of pure rounding noise in either run.
  Dropout is off (`--encoder-dropout 0`): with it, each rank draws its own masks.
- MACH: each head is trained by the same code from its own seed in both runs, so the heads
  must be bitwise equal.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.configs import TINY
from tests.support.paths import REPO
from training.astra import AstraConfig, train_astra
from training.data import XCDataset, read_xc_dir
from training.demo import generate_demo

pytestmark = pytest.mark.slow

TINY_MACH = [
    "--repetitions", "4", "--buckets", "16", "--hidden", "8", "--epochs", "5",
    "--ngram-dim", "1024", "--top-buckets", "4",
]  # fmt: skip


def _flags(config: dict) -> list[str]:
    """Config fields as CLI flags."""
    given = {key: value for key, value in config.items() if value is not None}
    return [
        arg for key, value in given.items() for arg in (f"--{key.replace('_', '-')}", f"{value}")
    ]


def torchrun(args: list[str], processes: int = 2) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=N -m training ARGS`, checked, on the CPU."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc_per_node={processes}", "-m", "training", *args, "--device", "cpu"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, XCDataset]:
    data = generate_demo(tmp_path_factory.mktemp("tiny") / "data", num_products=60, seed=3)
    return data, read_xc_dir(data)


@pytest.fixture(scope="module")
def astra_config(tiny) -> dict:
    """The tiny config, its batch size chosen so that the last batch has one row: one of the
    two ranks then has no rows of its own and must still take part in the step."""
    dataset = tiny[1]
    positives = dataset.split("train").positives(dataset.positive_min_weight)
    usable = sum(1 for p in positives if len(p))
    batch_size = next(b for b in range(16, usable) if usable % b == 1)
    return {
        **TINY,
        "epochs": 1,
        "max_steps": None,
        "batch_size": batch_size,
        "encoder_dropout": 0.0,
    }


@pytest.fixture(scope="module")
def astra_two(tiny, astra_config, tmp_path_factory) -> tuple[Path, Path, str]:
    """An ASTRA bundle trained by two processes -> (bundle, checkpoint dir, stdout)."""
    root = tmp_path_factory.mktemp("astra2")
    bundle, checkpoints = root / "models" / "tiny", root / "checkpoints"
    args = ["train", "--data", str(tiny[0]), "--out", str(bundle)]
    done = torchrun([*args, "--checkpoint-dir", str(checkpoints), *_flags(astra_config)])
    return bundle, checkpoints, done.stdout


def test_astra_on_two_processes_matches_one(tiny, astra_config, astra_two, tmp_path) -> None:
    bundle, checkpoints, _ = astra_two
    one = train_astra(tiny[1], AstraConfig(**astra_config), cache_dir=tmp_path)
    state = torch.load(checkpoints / "epoch_001.pt", weights_only=False)
    assert len(state["losses"]) == len(one.losses) > 2
    np.testing.assert_allclose(state["losses"], one.losses, rtol=1e-5)
    served = np.load(bundle / "classifiers.npy")
    np.testing.assert_allclose(served, one.model.all_classifiers(), rtol=0, atol=1e-5)
    training = json.loads((bundle / "manifest.json").read_text())["training"]
    assert training["world_size"] == 2 and training["device"] == "cpu"
    assert len(training["dev_history"]) == len(one.dev_history) == 1
    for two_ranks, one_rank in zip(training["dev_history"], one.dev_history, strict=True):
        assert two_ranks == pytest.approx(one_rank, abs=1e-9)


def test_astra_on_two_processes_writes_once(astra_two) -> None:
    bundle, checkpoints, stdout = astra_two
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch_001.pt", "training_curve.png"]
    assert [p.name for p in bundle.parent.iterdir() if p.name != ".cache"] == [bundle.name]
    assert (bundle / "manifest.json").is_file()
    printed = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert [p["epoch"] for p in printed if "epoch" in p] == [1]  # rank 0 alone evaluates
    assert [p["bundle"] for p in printed if "bundle" in p] == [str(bundle)]  # and reports


def test_mach_heads_spread_over_two_processes_equal_one(tiny, astra_two, tmp_path) -> None:
    """Rank 0 trains heads 0 and 2, rank 1 head 1; rank 0 alone writes the shard."""
    from service.bundle import load_bundle
    from service.search.encoder import QueryEncoder
    from training.__main__ import _config, _parser
    from training.mach.bundle import SHARD_FILE, SHARD_HEADS, build_featurizer, query_inputs
    from training.mach.heads import train_mach

    data, dataset = tiny
    encoder_from = astra_two[0]
    shard = tmp_path / "shards" / "s"
    args = ["train", "--model", "mach", "--data", str(data), "--out", str(shard), *TINY_MACH]
    torchrun([*args, "--encoder-from", str(encoder_from), "--reps", "0-2"])
    assert sorted(p.name for p in shard.parent.iterdir()) == ["s"]
    assert json.loads((shard / SHARD_FILE).read_text())["reps"] == [0, 1, 2]
    two = torch.load(shard / SHARD_HEADS, weights_only=True)

    config = _config(_parser().parse_args([*args, "--device", "cpu"]), "mach")
    texts = dataset.split("train").texts
    spec = load_bundle(encoder_from).manifest.encoder
    inputs = query_inputs(
        texts,
        QueryEncoder(bundle_dir=encoder_from, spec=spec),
        build_featurizer(texts, config),
        spec.dim,
    )
    positives = dataset.split("train").positives(dataset.positive_min_weight)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in each torchrun process (OMP_NUM_THREADS=1)
    try:
        one, _ = train_mach(inputs, positives, dataset.num_labels, config, range(3))
    finally:
        torch.set_num_threads(threads)
    assert sorted(two) == [r.rep for r in one] == [0, 1, 2]
    for result in one:
        for name, weight in result.head.state_dict().items():
            assert torch.equal(two[result.rep][name], weight), (result.rep, name)
