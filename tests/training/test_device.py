"""Device and precision selection, and (where there is a GPU) CUDA training matching CPU."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.configs import TINY
from training.astra import AstraConfig, train_astra
from training.data import read_xc_dir
from training.demo import generate_demo
from training.device import autocast, resolve_device, resolve_precision
from training.distributed import Runtime, start

CPU = torch.device("cpu")
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def fake_gpus(monkeypatch: pytest.MonkeyPatch, count: int, bf16: bool = True) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)


def test_auto_picks_cuda_only_when_torch_sees_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gpus(monkeypatch, 0)
    assert resolve_device("auto") == CPU
    fake_gpus(monkeypatch, 2)
    assert resolve_device("auto", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cpu", local_rank=1) == CPU


def test_device_errors_name_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gpus(monkeypatch, 0)
    with pytest.raises(ValueError, match="device: cuda was requested"):
        resolve_device("cuda")
    fake_gpus(monkeypatch, 2)
    with pytest.raises(ValueError, match="device: local rank 2 has no GPU"):
        resolve_device("cuda", local_rank=2)
    with pytest.raises(ValueError, match="device: expected one of"):
        resolve_device("tpu")


def test_precision_is_bf16_on_cuda_and_fp32_on_cpu_by_default(monkeypatch) -> None:
    fake_gpus(monkeypatch, 1, bf16=True)
    assert resolve_precision("auto", torch.device("cuda", 0)) == "bf16"
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"  # asked for explicitly
    fake_gpus(monkeypatch, 1, bf16=False)
    assert resolve_precision("auto", torch.device("cuda", 0)) == "fp32"
    with pytest.raises(ValueError, match="precision: expected one of"):
        resolve_precision("fp16", CPU)


def test_autocast_lowers_matmuls_only_in_bf16() -> None:
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with autocast(CPU, "fp32"):
        assert (a @ b).dtype == torch.float32
    with autocast(CPU, "bf16"):
        assert (a @ b).dtype == torch.bfloat16


def test_a_plain_process_is_one_rank_without_a_process_group(monkeypatch) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    runtime = start("cpu", "auto")
    assert runtime == Runtime(device=CPU, precision="fp32", rank=0, world_size=1)
    assert not torch.distributed.is_initialized()
    assert runtime.shard(7) == (0, 7) and runtime.describe() == "one process on cpu"


def test_shards_cover_the_batch_in_order() -> None:
    for rows, world in [(7, 2), (64, 3), (1, 4), (0, 2)]:
        bounds = [Runtime(rank=r, world_size=world).shard(rows) for r in range(world)]
        assert bounds[0][0] == 0 and bounds[-1][1] == rows
        assert all(hi == lo for (_, hi), (lo, _) in itertools.pairwise(bounds))
        sizes = Runtime(world_size=world).shard_sizes(rows)
        assert max(sizes) - min(sizes) <= 1 and sum(sizes) == rows


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cli_refuses_cuda_without_a_gpu(tmp_path: Path, capsys) -> None:
    from training.__main__ import main

    status = main(
        ["train", "--data", str(tmp_path), "--out", str(tmp_path / "b"), "--device", "cuda"]
    )
    assert status == 2
    assert "error: device: cuda was requested" in capsys.readouterr().err


# --- CUDA (runs only where torch sees a GPU) ---------------------------------------------------

# Dropout masks come from different generators on CPU and CUDA.
TINY_CUDA = {**TINY, "max_steps": 3, "encoder_dropout": 0.0}


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory):
    return read_xc_dir(generate_demo(tmp_path_factory.mktemp("tiny"), num_products=60, seed=3))


@requires_cuda
def test_cuda_training_steps_match_cpu(tiny_dataset, tmp_path: Path) -> None:
    """fp32 on CUDA (no TF32) agrees with CPU to float32 rounding; bf16 autocast to bf16's
    ~3 significant digits on the losses, the first of which is a pure forward comparison."""
    cuda = torch.device("cuda", 0)
    config = AstraConfig(**TINY_CUDA)
    cpu = train_astra(tiny_dataset, config, cache_dir=tmp_path)
    fp32 = train_astra(
        tiny_dataset, config, cache_dir=tmp_path, runtime=Runtime(device=cuda, precision="fp32")
    )
    bf16 = train_astra(
        tiny_dataset, config, cache_dir=tmp_path, runtime=Runtime(device=cuda, precision="bf16")
    )
    assert len(cpu.losses) == len(fp32.losses) == len(bf16.losses) == TINY_CUDA["max_steps"]
    np.testing.assert_allclose(fp32.losses, cpu.losses, rtol=1e-4)
    np.testing.assert_allclose(fp32.model.all_classifiers(), cpu.model.all_classifiers(), atol=1e-4)
    assert fp32.model.trained_vectors.device.type == "cuda"
    np.testing.assert_allclose(bf16.losses, cpu.losses, rtol=5e-2)
    assert bf16.dev_history[-1]["R@10"] == pytest.approx(cpu.dev_history[-1]["R@10"], abs=0.1)


@requires_cuda
def test_cuda_mach_head_matches_cpu() -> None:
    """Same seed, same batches: the head trained on CUDA scores like the CPU one (outputs are
    compared, not weights: Adam turns rounding noise on near-zero gradients into lr-sized steps)."""
    from training.mach.heads import BucketTargets, MachConfig, MachInputs, train_head

    rng = np.random.default_rng(0)
    ids = rng.integers(1, 256, size=(64, 5))
    inputs = MachInputs(
        rng.standard_normal((64, 16)).astype(np.float32), ids, np.ones(ids.shape, np.float32)
    )
    targets = BucketTargets.of([rng.integers(0, 20, size=2) for _ in range(64)], np.arange(20) % 8)
    config = MachConfig(repetitions=1, buckets=8, hidden=8, epochs=3, batch_size=16, ngram_dim=256)
    cpu = train_head(0, inputs, targets, config)
    cuda = train_head(0, inputs, targets, config, device=torch.device("cuda", 0))
    assert next(cuda.head.parameters()).device == CPU  # handed back for stacking and export
    assert cuda.epoch_losses == pytest.approx(cpu.epoch_losses, rel=1e-3)
    with torch.no_grad():
        batch = inputs.batch(np.arange(64))
        torch.testing.assert_close(cuda.head(*batch), cpu.head(*batch), atol=1e-3, rtol=1e-3)
