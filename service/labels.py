"""A bundle's label files (titles, ids), read by offset: a product's text is read when shown.

At 50M products the titles and ids held as Python strings take 8.2 GiB (BENCHMARKS.md, "MACH
decoding"), sixteen times MACH's int8 model. `LabelLines` keeps only where each line ends (8
bytes a label) and reads a line with one `pread` when a result shows it; the kernel's page cache
keeps the lines queries return. A file of up to 64 MB (a million titles) is simply held as one
bytes object. Each file is checked once when the bundle loads: UTF-8
throughout, as many lines as the manifest says, so a query never meets a bad title. `pread`
rather than a memory map: a map of a file truncated under a running server kills it (SIGBUS),
a read comes back short.
"""

from __future__ import annotations

import codecs
import os
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, overload

import numpy as np

CHUNK = 64 << 20  # bytes scanned at a time: the load never holds a copy of the whole file
# Files up to this size are held as one bytes object instead: a title costs 0.84 µs sliced from
# it, 1.42 µs by pread, 0.25 µs from a list of strings (1M titles, warm); a catalog of a
# million titles (about 40 MB) is served from memory.
IN_MEMORY_BYTES = 64 << 20
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
        self._file = path.open("rb")  # held open: a file replaced by rename is still this one
        weakref.finalize(self, self._file.close)
        self._ends = _line_ends(self._file)
        if len(self._ends) != count:
            raise LabelFileError(f"{len(self._ends)} lines, manifest says {count} labels")
        _check_utf8(self._file)
        size = int(self._ends[-1]) + 1 if len(self._ends) else 0
        self._held: bytes | None = None
        if size <= IN_MEMORY_BYTES:
            self._held = os.pread(self._file.fileno(), size, 0)

    def __len__(self) -> int:
        return len(self._ends)

    def _text(self, i: int) -> str:
        start = int(self._ends[i - 1]) + 1 if i else 0
        end = int(self._ends[i])
        if self._held is not None:
            return self._held[start:end].decode("utf-8")
        raw = os.pread(self._file.fileno(), end - start, start)
        return raw.decode("utf-8", errors="replace")  # checked at load; short if cut since


class NumberedIds(_Texts):
    """The ids of a bundle without an ids file: "0", "1", ... (made when asked for)."""

    def __init__(self, count: int) -> None:
        self._count = count

    def __len__(self) -> int:
        return self._count

    def _text(self, i: int) -> str:
        return str(i)


def _chunks(handle: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """(offset, bytes) of the whole file, `CHUNK` bytes at a time, from its start."""
    handle.seek(0)
    offset = 0
    while chunk := handle.read(CHUNK):
        yield offset, chunk
        offset += len(chunk)


def _line_ends(handle: BinaryIO) -> np.ndarray:
    """Offsets of every "\\n" (int64)."""
    ends = [np.zeros(0, np.int64)]
    for offset, chunk in _chunks(handle):
        block = np.frombuffer(chunk, np.uint8)
        ends.append(np.flatnonzero(block == NEWLINE).astype(np.int64) + offset)
    return np.concatenate(ends)


def _check_utf8(handle: BinaryIO) -> None:
    """Decode the whole file once, keeping nothing."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        for _, chunk in _chunks(handle):
            decoder.decode(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise LabelFileError(f"not UTF-8 ({exc})") from exc
