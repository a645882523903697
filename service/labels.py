"""A bundle's label files (titles, ids), memory-mapped: a product's text is read when shown.

At 50M products the titles and ids held as Python strings take 8.2 GiB (BENCHMARKS.md, "MACH
decoding"), sixteen times MACH's int8 model. `LabelLines` keeps only where each line ends (8
bytes a label) and lets the kernel page in the text of the results a query returns. Each file is
checked once when the bundle loads: UTF-8 throughout, as many lines as the manifest says, so a
query never meets a bad title.
"""

from __future__ import annotations

import codecs
import mmap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import overload

import numpy as np

CHUNK = 64 << 20  # bytes scanned at a time: the load never holds a copy of the whole file
NEWLINE = 10


class LabelFileError(ValueError):
    """A label file that is not UTF-8 or has the wrong number of lines (`service.bundle` names
    the file in its `BundleError`)."""


class _Texts(Sequence[str]):
    """A read-only sequence of texts made on access by `_text(i)`; compared by content."""

    def __len__(self) -> int:
        raise NotImplementedError

    def _text(self, i: int) -> str:
        raise NotImplementedError

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self._text(i) for i in range(*index.indices(len(self)))]
        position = index + len(self) if index < 0 else index
        if not 0 <= position < len(self):
            raise IndexError(f"label {index} out of range ({len(self)} labels)")
        return self._text(position)

    def __iter__(self) -> Iterator[str]:
        return (self._text(i) for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str) or not isinstance(other, Sequence):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]  # compared by content, like a list


class LabelLines(_Texts):
    """The lines of a UTF-8 file written by `write_lines` (each ends with "\\n"), by index."""

    def __init__(self, path: Path, count: int) -> None:
        self.path = path
        size = path.stat().st_size
        self._data: mmap.mmap | bytes = b""
        if size:
            with path.open("rb") as handle:
                self._data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        self._ends = _line_ends(self._data, size)
        if len(self._ends) != count:
            raise LabelFileError(f"{len(self._ends)} lines, manifest says {count} labels")
        _check_utf8(self._data, size)

    def __len__(self) -> int:
        return len(self._ends)

    def _text(self, i: int) -> str:
        start = int(self._ends[i - 1]) + 1 if i else 0
        return self._data[start : int(self._ends[i])].decode("utf-8")


class NumberedIds(_Texts):
    """The ids of a bundle without an ids file: "0", "1", ... (made when asked for)."""

    def __init__(self, count: int) -> None:
        self._count = count

    def __len__(self) -> int:
        return self._count

    def _text(self, i: int) -> str:
        return str(i)


def _line_ends(data: mmap.mmap | bytes, size: int) -> np.ndarray:
    """Offsets of every "\\n" (int64), found `CHUNK` bytes at a time."""
    ends = [np.zeros(0, np.int64)]
    for start in range(0, size, CHUNK):
        block = np.frombuffer(data, np.uint8, count=min(CHUNK, size - start), offset=start)
        ends.append(np.flatnonzero(block == NEWLINE).astype(np.int64) + start)
        del block  # a live view would keep the map from closing
    return np.concatenate(ends)


def _check_utf8(data: mmap.mmap | bytes, size: int) -> None:
    """Decode the whole file once, `CHUNK` bytes at a time, keeping nothing."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        for start in range(0, size, CHUNK):
            decoder.decode(data[start : start + CHUNK])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise LabelFileError(f"not UTF-8 ({exc})") from exc
