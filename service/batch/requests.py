"""The batch input format: JSONL, one `{"custom_id", "query", "k"?, "model"?}` per line.

Every line is checked before anything is scored, with the online limits (query length and
characters, k, model name) plus a `custom_id` that is present, at most 256 characters and
unique in the file. A file with bad lines is refused as a whole, naming each bad line (the
first `MAX_REPORTED_ERRORS`), so a job never half-runs on input its author did not mean. A line
is read by `service.validation.strict_json`: a repeated key, nesting too deep or a number too
long is a bad line like any other, never a server error.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from service.validation import (
    JsonRefused,
    ModelName,
    bounded_query,
    strict_json,
    validation_details,
)

MAX_CUSTOM_ID_CHARS = 256
MAX_REPORTED_ERRORS = 20


@dataclass(kw_only=True, frozen=True)
class BatchRequest:
    """One valid input line."""

    line: int  # 1-based line number in the input
    custom_id: str
    query: str
    k: int
    model: str | None


class BatchInputError(ValueError):
    """The input has bad lines; `problems` holds "line N: field: reason" strings."""

    def __init__(self, problems: list[str], bad_lines: int) -> None:
        shown = problems[:MAX_REPORTED_ERRORS]
        more = (
            f" (first {len(shown)} of {len(problems)} problems)" if problems[len(shown) :] else ""
        )
        super().__init__(f"{bad_lines} bad line(s){more}: " + "; ".join(shown))
        self.problems = problems
        self.bad_lines = bad_lines

    def __reduce__(self) -> tuple[type, tuple[list[str], int]]:
        """Pickled by its fields (it crosses from the input checker's process)."""
        return type(self), (self.problems, self.bad_lines)


def line_model(max_query_chars: int, max_k: int, default_k: int) -> type[BaseModel]:
    """The pydantic model of one input line, with the service's limits."""

    class BatchLine(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True, str_strip_whitespace=True)
        field_limits: ClassVar[dict[str, str]] = {
            "custom_id": f"a string of 1 to {MAX_CUSTOM_ID_CHARS} characters, unique in the file",
            "query": f"a string of 1 to {max_query_chars} characters after trimming whitespace",
            "k": f"an integer from 1 to {max_k}",
            "model": "one of 'astra', 'mach', 'hybrid', or null",
        }

        custom_id: Annotated[str, StringConstraints(min_length=1, max_length=MAX_CUSTOM_ID_CHARS)]
        query: bounded_query(max_query_chars)
        k: int = Field(default=default_k, ge=1, le=max_k)
        model: ModelName | None = None

    return BatchLine


def iter_requests(
    lines: Iterable[str], max_query_chars: int = 512, max_k: int = 1000, default_k: int = 10
) -> Iterator[BatchRequest]:
    """Each valid request of a JSONL text as it is read (blank lines skipped); once every line
    is read, `BatchInputError` if any was bad. Memory: one line, plus the custom_ids seen."""
    model = line_model(max_query_chars, max_k, default_k)
    limits: dict[str, str] = model.field_limits
    problems: list[str] = []
    bad_lines: set[int] = set()
    seen: dict[str, int] = {}
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            fields: Any = strict_json(text)
            line = model.model_validate(fields)
        except JsonRefused as exc:
            bad_lines.add(number)
            problems.append(f"line {number}: {exc}")
            continue
        except ValidationError as exc:
            bad_lines.add(number)
            problems += [
                f"line {number}: {detail['msg']}"
                for detail in validation_details(exc.errors(), limits)
            ]
            continue
        custom_id = line.custom_id
        if custom_id in seen:
            bad_lines.add(number)
            problems.append(
                f"line {number}: custom_id: {custom_id!r} repeats line {seen[custom_id]}"
            )
            continue
        seen[custom_id] = number
        yield (
            BatchRequest(
                line=number,
                custom_id=custom_id,
                query=line.query,
                k=line.k,
                model=line.model,
            )
        )
    if problems:
        raise BatchInputError(problems, len(bad_lines))


def parse_requests(
    lines: Iterable[str], max_query_chars: int = 512, max_k: int = 1000, default_k: int = 10
) -> list[BatchRequest]:
    """Every request of a JSONL text (blank lines skipped), or `BatchInputError`."""
    return list(iter_requests(lines, max_query_chars, max_k, default_k))


class NotUtf8(ValueError):
    """A JSONL file has a byte that is not UTF-8, at `offset` from its start."""

    def __init__(self, offset: int) -> None:
        super().__init__(f"invalid byte at offset {offset}")
        self.offset = offset

    def __reduce__(self) -> tuple[type, tuple[int]]:
        """Pickled by its offset (it crosses from the input checker's process)."""
        return type(self), (self.offset,)


def utf8_lines(handle: IO[bytes]) -> Iterator[str]:
    """The lines of a binary JSONL file, decoded one at a time (`NotUtf8` names the byte)."""
    offset = 0
    for raw in handle:
        try:
            yield raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            raise NotUtf8(offset + exc.start) from exc
        offset += len(raw)
