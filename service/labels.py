"""A bundle's label files (titles, ids), read by offset: a product's text is read when shown.

At 50M products the titles and ids held as Python strings take 8.2 GiB (BENCHMARKS.md, "MACH
decoding"), sixteen times MACH's int8 model. `LabelLines` keeps only where every
BLOCK_LINES-th line ends (half a byte a label) and reads a line's block with one `pread` when a
result shows it; the kernel's page cache keeps the lines queries return. A file of up to 64 MB
(a million titles) is simply held as one bytes object. Each file is checked once when the
bundle loads: UTF-8 throughout, as many lines as the manifest says, so a query never meets a
bad title. `pread` rather than a memory map: a map of a file truncated under a running server
kills it (SIGBUS), a read comes back short."""

from __future__ import annotations

import codecs
import os
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, overload

import numpy as np

CHUNK = 64 << 20  # bytes scanned at a time: the load never holds a copy of the whole file
# Files up to this size are held as one bytes object instead: a title costs 1.5 µs cut from it,
# 2.1 µs by pread (1M titles, warm page cache, blocks of BLOCK_LINES); a catalog of a million
# titles (about 40 MB) is served from memory.
IN_MEMORY_BYTES = 64 << 20
NEWLINE = 10
# Lines per block: only a block's last line end is kept (int64), half a byte a line, where every
# line's end took 8 (763 MiB for the titles and ids of 50M labels, now 48 MiB). A line costs a
# read of its block (about 0.6 KB of titles) and a split: 2.1 µs by pread against 1.6 µs when
# every end was kept, 1.5 against 0.8 µs held in memory (1M titles of 3-9 words, 100,000
# random lines, an ad-hoc timing, session 16); 20 lines a 10-result page, +0.01-0.02 ms.
BLOCK_LINES = 16


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
        self._block_ends, self._count = _block_ends(self._file)
        if self._count != count:
            raise LabelFileError(f"{self._count} lines, manifest says {count} labels")
        _check_utf8(self._file)
        size = int(self._block_ends[-1]) + 1 if self._count else 0
        self._held: bytes | None = None
        if size <= IN_MEMORY_BYTES:
            self._held = os.pread(self._file.fileno(), size, 0)

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[str]:
        for block in range(len(self._block_ends)):
            lines = self._block_bytes(block).split(b"\n")
            yield from (line.decode("utf-8", errors="replace") for line in lines)

    def _text(self, i: int) -> str:
        within = i % BLOCK_LINES
        lines = self._block_bytes(i // BLOCK_LINES).split(b"\n", within + 1)
        line = lines[within] if within < len(lines) else b""  # short if the file was cut since
        return line.decode("utf-8", errors="replace")  # checked at load

    def _block_bytes(self, block: int) -> bytes:
        """One block's lines, joined by (and without the last) newline."""
        start = int(self._block_ends[block - 1]) + 1 if block else 0
        end = int(self._block_ends[block])
        if self._held is not None:
            return self._held[start:end]
        return os.pread(self._file.fileno(), end - start, start)


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


def _block_ends(handle: BinaryIO) -> tuple[np.ndarray, int]:
    """Offsets (int64) of the "\\n" ending each block of BLOCK_LINES lines, the last block's
    whatever its length, and the number of lines."""
    kept = [np.zeros(0, np.int64)]
    lines = 0
    last_end = -1
    for offset, chunk in _chunks(handle):
        ends = np.flatnonzero(np.frombuffer(chunk, np.uint8) == NEWLINE)
        first = (BLOCK_LINES - 1 - lines) % BLOCK_LINES  # this chunk's first block-ending line
        kept.append(ends[first::BLOCK_LINES].astype(np.int64) + offset)
        if len(ends):
            last_end = int(ends[-1]) + offset
        lines += len(ends)
    if lines % BLOCK_LINES:
        kept.append(np.array([last_end], np.int64))
    return np.concatenate(kept), lines


def _check_utf8(handle: BinaryIO) -> None:
    """Decode the whole file once, keeping nothing."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        for _, chunk in _chunks(handle):
            decoder.decode(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise LabelFileError(f"not UTF-8 ({exc})") from exc
