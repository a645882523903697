"""Rows of a shop's export file: CSV, TSV, JSON lines or Parquet, read one row at a time.

Each file format yields the same `Row`: where it is in the file ("line N", or "row group G,
row R" for Parquet, both counted as pyarrow counts them, from 0) and its values by column name.
The readers above this module never see the format, so products and interactions are read and
refused the same way whatever the shop exported.

Text is UTF-8 (a byte-order mark is accepted). A row whose bytes are not UTF-8 comes back with
a `refusal` instead of failing the whole file: one bad row in a million-row log is the shop's
ordinary reality. Problems with the file itself (missing, unknown extension, a required column
absent, a JSON line that is not an object) raise `DataError` naming the file (and line).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.dataset import DataError

FORMATS: dict[str, str] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
}
_DELIMITERS = {"csv": ",", "tsv": "\t"}
# Lone surrogates U+DC80..U+DCFF are how errors="surrogateescape" carries undecodable bytes.
_ESCAPED_LOW, _ESCAPED_HIGH = "\udc80", "\udcff"


@dataclass(frozen=True)
class Refusal:
    """Why one row is refused: the field at fault (if one is) and what is wrong with it."""

    reason: str
    detail: str
    field: str | None = None

    def message(self, path: Path, location: str) -> str:
        """The full message: "<file>: <location>: field 'x': <detail>"."""
        where = f"field {self.field!r}: " if self.field is not None else ""
        return f"{path}: {location}: {where}{self.detail}"


class RowRefused(Exception):
    """Raised by a row parser to refuse the row it is parsing (caught by the reader's loop)."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.detail)
        self.refusal = refusal


@dataclass(frozen=True)
class Row:
    """One data row: its location in the file and its values, or why it cannot be read."""

    location: str
    values: dict[str, Any]
    refusal: Refusal | None = None


def detect_format(path: Path, fmt: str | None = None) -> str:
    """The format of `path`: `fmt` when given, else from its extension (see FORMATS)."""
    if fmt is not None:
        if fmt not in set(FORMATS.values()):
            known = ", ".join(sorted(set(FORMATS.values())))
            raise DataError(f"{path}: unknown format {fmt!r} (expected one of {known})")
        return fmt
    found = FORMATS.get(path.suffix.lower())
    if found is None:
        raise DataError(
            f"{path}: unknown file extension {path.suffix!r} (expected one of {', '.join(FORMATS)})"
        )
    return found


def _escaped_field(values: dict[str, Any]) -> str | None:
    """The first field whose text carries undecodable bytes (as escaped surrogates), if any."""
    for name, value in values.items():
        if isinstance(value, str) and any(_ESCAPED_LOW <= ch <= _ESCAPED_HIGH for ch in value):
            return name
    return None


def _check_columns(path: Path, present: Sequence[str], required: Sequence[str]) -> None:
    """DataError when a required (mapped) column is not among the file's columns."""
    missing = [c for c in required if c not in present]
    if missing:
        raise DataError(
            f"{path}: column {missing[0]!r} is missing (the file has columns: "
            f"{', '.join(repr(c) for c in present) or 'none'})"
        )


class TableFile:
    """One export file, read row by row; `columns` is its header (or schema) once read.

    For JSON lines there is no header: `columns` is the union of the keys of every line, set
    at the end of the file, where a required column that no line has raises `DataError`.
    """

    def __init__(self, path: str | Path, fmt: str | None = None) -> None:
        self.path = Path(path)
        self.format = detect_format(self.path, fmt)
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such file")
        self.columns: list[str] = []

    def rows(
        self, required: Sequence[str] = (), only: Sequence[str] | None = None
    ) -> Iterator[Row]:
        """Every data row, in file order; `required` columns must exist, `only` limits reads.

        `only` (Parquet) reads just those columns of each row group, where present.
        """
        if self.format in _DELIMITERS:
            yield from self._csv_rows(required)
        elif self.format == "jsonl":
            yield from self._jsonl_rows(required)
        else:
            yield from self._parquet_rows(required, only)

    def _csv_rows(self, required: Sequence[str]) -> Iterator[Row]:
        """CSV/TSV rows with the csv module; the first record is the header."""
        with self.path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
            reader = csv.reader(f, delimiter=_DELIMITERS[self.format])
            try:
                header = next(reader, None)
            except csv.Error as exc:
                raise DataError(f"{self.path}: line 1: cannot parse the header: {exc}") from exc
            if header is None:
                raise DataError(f"{self.path}: empty file, expected a header row")
            header = [h.strip() for h in header]
            if _escaped_field({h: h for h in header}) is not None:
                raise DataError(f"{self.path}: line 1: the header is not valid UTF-8")
            doubled = sorted({h for h in header if header.count(h) > 1})
            if doubled:
                raise DataError(f"{self.path}: line 1: column {doubled[0]!r} appears twice")
            self.columns = header
            _check_columns(self.path, header, required)
            yield from self._csv_records(reader, header)

    def _csv_records(self, reader: Any, header: list[str]) -> Iterator[Row]:
        """The data records after the header; a record starts on the line after the last one."""
        while True:
            start = reader.line_num + 1
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise DataError(f"{self.path}: line {start}: cannot parse CSV: {exc}") from exc
            location = f"line {start}"
            if not record:
                continue
            if len(record) != len(header):
                detail = f"has {len(record)} fields (the header has {len(header)})"
                yield Row(location, {}, Refusal("wrong number of fields", detail))
                continue
            values = dict(zip(header, record, strict=True))
            yield _checked(location, values)

    def _jsonl_rows(self, required: Sequence[str]) -> Iterator[Row]:
        """JSON-lines rows: one JSON object per line, blank lines skipped."""
        seen: dict[str, None] = {}
        with self.path.open("rb") as f:
            for lineno, raw in enumerate(f, start=1):
                if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]
                location = f"line {lineno}"
                text = raw.decode("utf-8", errors="surrogateescape")
                if not text.strip():
                    continue
                if _escaped_field({"": text}) is not None:
                    yield Row(location, {}, Refusal("not UTF-8", "not valid UTF-8"))
                    continue
                values = self._json_object(lineno, text)
                seen.update(dict.fromkeys(values))
                yield _checked(location, values)
        self.columns = list(seen)
        missing = [c for c in required if c not in seen]
        if missing:
            raise DataError(f"{self.path}: no line has field {missing[0]!r}")

    def _json_object(self, lineno: int, text: str) -> dict[str, Any]:
        """Parse one JSON line, which must be an object (else the file is not JSON lines)."""
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{self.path}: line {lineno}: invalid JSON: {exc.msg}") from exc
        if not isinstance(value, dict):
            raise DataError(
                f"{self.path}: line {lineno}: expected a JSON object, got {type(value).__name__}"
            )
        return value

    def _parquet_rows(self, required: Sequence[str], only: Sequence[str] | None) -> Iterator[Row]:
        """Parquet rows, one row group in memory at a time (logs can be larger than memory)."""
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:  # pragma: no cover - pyarrow is in the train extra
            raise DataError(
                f"{self.path}: reading Parquet needs pyarrow (the train extra)"
            ) from exc
        try:
            parquet = pq.ParquetFile(self.path)
        except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
            raise DataError(f"{self.path}: not a readable Parquet file: {exc}") from exc
        self.columns = list(parquet.schema_arrow.names)
        _check_columns(self.path, self.columns, required)
        wanted = None if only is None else [c for c in self.columns if c in set(only)]
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group, columns=wanted)
            for index, values in enumerate(table.to_pylist()):
                yield _checked(f"row group {group}, row {index}", values)


def _checked(location: str, values: dict[str, Any]) -> Row:
    """The row, or a refusal naming its first field whose bytes are not UTF-8."""
    for name, value in values.items():
        if isinstance(value, bytes):
            try:
                values[name] = value.decode("utf-8")
            except UnicodeDecodeError:
                return Row(location, values, _not_utf8(name, value))
    bad = _escaped_field(values)
    if bad is not None:
        raw = values[bad].encode("utf-8", errors="surrogateescape")
        return Row(location, values, _not_utf8(bad, raw))
    return Row(location, values)


def _not_utf8(name: str, raw: bytes) -> Refusal:
    """The refusal of a field whose bytes are not UTF-8 (the bytes shown, shortened)."""
    shown = repr(raw[:40]) + ("..." if len(raw) > 40 else "")
    return Refusal("not UTF-8", f"not valid UTF-8 ({shown})", name)
