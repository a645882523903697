"""Where each part of serving runs: `XC_DEVICE` (auto | cpu | cuda) resolved once per load.

Three parts can use a GPU, each through its own library, and each may be missing from an
install: the query encoder and the MACH heads (ONNX Runtime's CUDA provider, from the `gpu`
extra's onnxruntime-gpu), ASTRA retrieval (faiss-gpu) and MACH decoding (CuPy). `cpu` keeps
everything on the CPU; `auto` puts each part on the GPU when its library can reach a device;
`cuda` demands the encoder on the GPU (a `cuda` request that silently ran on the CPU would be
a surprise measured in milliseconds) and moves the other parts when they can, saying so when
they cannot. The plan is logged as one line at load, so what runs where is never a guess.
`open_session` opens the ONNX Runtime sessions (the encoder's, MACH's heads') on the planned
providers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import faiss
import onnxruntime as ort

from service.bundle import BundleError

log = logging.getLogger(__name__)

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
INSTALL_HINT = "install the gpu extra (pip install 'xc-search[gpu]') on a machine with CUDA"


class DeviceError(RuntimeError):
    """XC_DEVICE=cuda was asked for but the encoder cannot run on a GPU here."""


@dataclass(frozen=True)
class Capabilities:
    """What the installed libraries can reach: probed, not assumed."""

    onnxruntime_cuda: bool
    faiss_gpus: int
    cupy_gpus: int


NO_GPU = Capabilities(onnxruntime_cuda=False, faiss_gpus=0, cupy_gpus=0)


@dataclass(kw_only=True, frozen=True)
class DevicePlan:
    """The device of each serving part, decided once from the request and the capabilities."""

    requested: str
    encoder_providers: tuple[str, ...]
    faiss_gpu: bool
    cupy_gpu: bool

    @property
    def encoder_on_gpu(self) -> bool:
        """Whether the encoder and the MACH heads run on ONNX Runtime's CUDA provider."""
        return self.encoder_providers[0] == CUDA_PROVIDER

    def describe(self) -> dict[str, str]:
        """One entry per part, for the load log line and `/v1/models`."""
        return {
            "requested": self.requested,
            "encoder": self.encoder_providers[0],
            "astra_index": "faiss-gpu (exact)" if self.faiss_gpu else "faiss-cpu",
            "mach_decode": "cupy (exact, dense)" if self.cupy_gpu else "numpy (top-m buckets)",
        }


def cupy_module() -> ModuleType | None:
    """CuPy when it is installed and sees a CUDA device, else None."""
    try:
        import cupy  # the gpu extra's array library; absent from CPU installs

        return cupy if cupy.cuda.runtime.getDeviceCount() > 0 else None
    except Exception:  # ImportError, or a CUDA runtime without a usable device
        return None


def probe_capabilities() -> Capabilities:
    """Ask ONNX Runtime, FAISS and CuPy which GPUs they can use."""
    get_num_gpus = getattr(faiss, "get_num_gpus", None)
    cupy = cupy_module()
    return Capabilities(
        onnxruntime_cuda=CUDA_PROVIDER in ort.get_available_providers(),
        faiss_gpus=int(get_num_gpus()) if get_num_gpus is not None else 0,
        cupy_gpus=int(cupy.cuda.runtime.getDeviceCount()) if cupy is not None else 0,
    )


def plan_devices(requested: str, capabilities: Capabilities) -> DevicePlan:
    """Decide each part's device; raises DeviceError for `cuda` without a CUDA encoder."""
    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device {requested!r}: expected auto, cpu or cuda")
    if requested == "cpu":
        return DevicePlan(
            requested=requested, encoder_providers=(CPU_PROVIDER,), faiss_gpu=False, cupy_gpu=False
        )
    if requested == "cuda" and not capabilities.onnxruntime_cuda:
        raise DeviceError(
            f"XC_DEVICE=cuda: onnxruntime has no {CUDA_PROVIDER} "
            f"(available: {', '.join(ort.get_available_providers())}); {INSTALL_HINT}, "
            "or set XC_DEVICE=auto or cpu"
        )
    providers = (CUDA_PROVIDER, CPU_PROVIDER) if capabilities.onnxruntime_cuda else (CPU_PROVIDER,)
    return DevicePlan(
        requested=requested,
        encoder_providers=providers,
        faiss_gpu=capabilities.faiss_gpus > 0,
        cupy_gpu=capabilities.cupy_gpus > 0,
    )


def resolve_device(requested: str) -> DevicePlan:
    """Probe this machine, plan, and log the plan (warning when `cuda` leaves parts on CPU)."""
    plan = plan_devices(requested, probe_capabilities())
    parts = plan.describe()
    log.info("device plan", extra=parts)
    if requested == "cuda" and not (plan.faiss_gpu and plan.cupy_gpu):
        log.warning(
            "XC_DEVICE=cuda: some parts stay on the CPU",
            extra={"astra_index": parts["astra_index"], "mach_decode": parts["mach_decode"]},
        )
    return plan


def open_session(
    model_path: Path, threads: int, providers: Sequence[str] = (CPU_PROVIDER,)
) -> ort.InferenceSession:
    """An ONNX Runtime session on `providers` (a plan's `encoder_providers`); BundleError names
    a file it cannot load."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(model_path), options, providers=list(providers))
    except Exception as exc:  # onnxruntime raises its own exception types
        raise BundleError(f"{model_path}: ONNX Runtime cannot load it ({exc})") from exc
