"""A small file system that really fills up: a size-limited tmpfs mounted for one test.

Mounting needs root (CI runs as root); elsewhere the tests that need it skip, saying why.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHUNK = 1 << 16


@contextmanager
def small_filesystem(path: Path, size_mib: int) -> Iterator[Path]:
    """Mount a `size_mib` MiB tmpfs on `path` for the block; skip the test if not permitted."""
    path.mkdir(parents=True, exist_ok=True)
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mount.stderr.strip() or 'not permitted'})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Write a file into `directory` until its file system has no byte left; returns it."""
    filler = directory / "filler.bin"
    with filler.open("wb", buffering=0) as handle:
        for size in (CHUNK, 4096, 512, 1):
            block = b"\0" * size
            while True:
                try:
                    handle.write(block)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
        os.fsync(handle.fileno())
    return filler
