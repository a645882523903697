"""Several processes training one model: the torchrun process group and the collectives used.

`torchrun --nproc_per_node=N -m training train ...` starts N copies of the CLI with RANK,
WORLD_SIZE and LOCAL_RANK set. `start` joins them into one process group (nccl on GPUs, gloo on
CPU) only when WORLD_SIZE > 1, so a plain `python -m training` run never touches
torch.distributed, and every helper below is the identity in a single process.
"""

# No `from __future__ import annotations`: DDP checks the comm hook's annotations at runtime.
import os
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from training.device import CPU, autocast, resolve_device, resolve_precision

# Rank 0 evaluates on dev and writes checkpoints and the bundle while the others wait at a
# barrier; on a large catalog on CPU that outlasts torch's default 30-minute collective timeout.
RANK_WAIT = timedelta(hours=3)


@dataclass(kw_only=True, frozen=True)
class Runtime:
    """Where this process trains: its device, its precision and its place among the ranks."""

    device: torch.device = CPU
    precision: str = "fp32"
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs progress and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether there are other ranks to talk to."""
        return self.world_size > 1

    def autocast(self) -> AbstractContextManager:
        """Autocast context of the forward passes in this runtime's precision."""
        return autocast(self.device, self.precision)

    def shard(self, rows: int, rank: int | None = None) -> tuple[int, int]:
        """The contiguous share [lo, hi) of `rows` of this rank (or of `rank`); shares differ
        by at most one row, and are empty when there are fewer rows than ranks."""
        rank = self.rank if rank is None else rank
        return rank * rows // self.world_size, (rank + 1) * rows // self.world_size

    def shard_sizes(self, rows: int) -> list[int]:
        """The number of rows in every rank's share, in rank order."""
        return [hi - lo for lo, hi in (self.shard(rows, r) for r in range(self.world_size))]

    def describe(self) -> str:
        """What runs where, e.g. "rank 1 of 4 on cuda:1 (nccl)" or "one process on cpu"."""
        if not self.distributed:
            return f"one process on {self.device}"
        return f"rank {self.rank} of {self.world_size} on {self.device} ({dist.get_backend()})"


def start(device: str = "auto", precision: str = "auto") -> Runtime:
    """The runtime of this process, joining torchrun's process group when there is one."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    runtime = Runtime(
        device=resolved,
        precision=resolve_precision(precision, resolved),
        rank=int(os.environ.get("RANK", "0")),
        world_size=world_size,
    )
    if runtime.distributed and not dist.is_initialized():
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=RANK_WAIT)
    return runtime


def finish(runtime: Runtime) -> None:
    """Wait for every rank, then leave the process group."""
    if runtime.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(runtime: Runtime) -> None:
    """Wait until every rank gets here."""
    if runtime.distributed:
        dist.barrier()


def data_parallel(module: torch.nn.Module, runtime: Runtime) -> torch.nn.Module:
    """`module` under DistributedDataParallel with *summed* gradients (identity in one process).

    Each rank's loss is its share of the global batch's loss (already divided by the global
    batch size), so the gradient of the whole batch is the sum over ranks, not DDP's mean.
    Parameters that get no gradient (BERT's unused pooler) are found every step.
    """
    if not runtime.distributed:
        return module
    device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
    ddp = torch.nn.parallel.DistributedDataParallel(
        module, device_ids=device_ids, find_unused_parameters=True, forward_sync_buffers=False
    )
    ddp.register_comm_hook(None, _sum_hook)
    return ddp


def _sum_hook(_state: None, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    work = dist.all_reduce(bucket.buffer(), async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


def sum_over_ranks(tensors: list[torch.Tensor], runtime: Runtime) -> list[torch.Tensor]:
    """The element-wise sums over ranks of same-shaped tensors, in one all-reduce."""
    if not runtime.distributed:
        return tensors
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    parts = flat.split([t.numel() for t in tensors])
    return [part.view_as(t) for part, t in zip(parts, tensors, strict=True)]


def gather_rows(local: torch.Tensor, runtime: Runtime, sizes: list[int]) -> torch.Tensor:
    """All ranks' rows stacked in rank order, `sizes[r]` rows from rank r.

    This rank's rows stay the live tensor (gradients flow into them); the others' are copies.
    """
    if not runtime.distributed:
        return local
    width = max(sizes)
    padded = local.new_zeros((width, *local.shape[1:]))
    padded[: len(local)] = local.detach()
    parts = [torch.empty_like(padded) for _ in range(runtime.world_size)]
    dist.all_gather(parts, padded)
    rows = [part[:size] for part, size in zip(parts, sizes, strict=True)]
    rows[runtime.rank] = local
    return torch.cat(rows)


def gather_objects(obj: Any, runtime: Runtime) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not runtime.distributed:
        return [obj]
    out: list[Any] = [None] * runtime.world_size
    dist.all_gather_object(out, obj)
    return out


def gather_to_main(obj: Any, runtime: Runtime) -> list[Any] | None:
    """Every rank's `obj`, in rank order, on rank 0 (None on the others)."""
    if not runtime.distributed:
        return [obj]
    out: list[Any] | None = [None] * runtime.world_size if runtime.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_array(
    array: np.ndarray | None, shape: tuple[int, ...], runtime: Runtime
) -> np.ndarray:
    """Rank 0's float32 `array` on every rank (the others pass None)."""
    if not runtime.distributed:
        assert array is not None
        return array
    if runtime.is_main:
        assert array is not None
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(runtime.device)
    else:
        tensor = torch.empty(shape, dtype=torch.float32, device=runtime.device)
    dist.broadcast(tensor, src=0)
    return tensor.cpu().numpy()
