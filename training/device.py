"""Where and in what precision training computes: device resolution and autocast.

`auto` trains on CUDA when torch sees a GPU. On CUDA the encoder's forward passes run under
bf16 autocast where the GPU supports bf16 (bf16 keeps fp32's exponent range, so unlike fp16 it
needs no loss scaling); on CPU training stays in fp32 unless bf16 is asked for. Losses, the
classifier head and the optimiser always work in fp32.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch

CPU = torch.device("cpu")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    """`auto` → `cuda:<local_rank>` when CUDA is available, else `cpu`; `cuda` without a GPU
    (or without a GPU for this local rank) is an error rather than a silent CPU run."""
    if requested not in DEVICES:
        raise ValueError(f"device: expected one of {', '.join(DEVICES)}, got {requested!r}")
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("device: cuda was requested but torch.cuda.is_available() is False")
    if local_rank >= torch.cuda.device_count():
        raise ValueError(
            f"device: local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible); "
            "start at most one process per GPU"
        )
    return torch.device("cuda", local_rank)


def resolve_precision(requested: str, device: torch.device) -> str:
    """`auto` → bf16 on a CUDA device that supports it, fp32 otherwise (CPU included)."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested != "auto":
        return requested
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """The autocast context of the encoder's forward passes (disabled, so a no-op, in fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
