"""The process's heap after a bundle loads: long-lived objects out of the collector's walk, and
the memory that loading freed given back to the system.

Every process that loads an engine and keeps it (the server at each load and reload, the batch
CLI, each Ray actor) calls `settle_heap` once the engine is ready.
"""

from __future__ import annotations

import ctypes
import functools
import gc
from collections.abc import Callable


def settle_heap() -> None:
    """Collect garbage, move every object alive now (the engine, its labels, the app) out of
    the collector's sight (`gc.freeze`), and give the C heap's free pages back to the system
    (`release_c_heap`).

    A large answer makes tens of thousands of short-lived objects, and each full collection
    they set off walked the whole heap with the interpreter lock held: freezing the long-lived
    objects took the largest answer (256 queries at k = 100) from 42 to 17 ms, time during
    which no other request could run. Frozen objects are still freed when their last reference
    goes; unfreezing first means an engine replaced by a reload is looked at once more.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    release_c_heap()


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim` in this process, or None (musl, macOS, Windows have none)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError, TypeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_c_heap() -> bool:
    """Return the pages that C code freed but glibc kept to the system (`malloc_trim(0)`);
    False where the C library has no such call.

    Loading a bundle frees more than it keeps: ONNX Runtime copies each weight matrix into the
    layout its kernels read (prepacking) and frees the original, and glibc holds freed memory
    in the loading thread's arena for reuse instead of unmapping it. Measured on a MACH bundle
    of 10M labels (int8 heads): the heads' session alone holds 143 MiB of anonymous memory
    after loading and 76 MiB after this call; the served process 338 MiB before this change
    and 276 MiB after it (BENCHMARKS.md, "MACH decoding"). Nothing in use moves.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
