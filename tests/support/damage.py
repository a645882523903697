"""A copy of a bundle with one byte of one file flipped: what the loader must refuse."""

from __future__ import annotations

import shutil
from pathlib import Path


def damaged_copy(bundle: Path, name: str, out: Path) -> Path:
    """Copy `bundle` to `out` and flip the middle byte of its file `name`; returns `out`."""
    shutil.copytree(bundle, out)
    damaged = bytearray((out / name).read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    (out / name).write_bytes(bytes(damaged))
    return out
