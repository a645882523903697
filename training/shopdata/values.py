"""One cell of an export as text or as a number, whatever type its format gave it.

CSV gives strings; JSON lines and Parquet give numbers, booleans, nulls, and nested objects
and lists (an `attributes` column). Rendering them the same way keeps an id `123` in a Parquet
products file equal to the `"123"` of a CSV log, and turns nested attributes into text that
BM25 and the encoder can use ("colour red; voltage 20V").
"""

from __future__ import annotations

import math
from typing import Any

from training.shopdata.formats import Refusal, RowRefused


def cell_text(value: Any) -> str:
    """A cell as stripped text: null is "", integral floats lose ".0", objects become
    "key value; key value" and lists "a; b"."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) < 2**53:
            return str(int(value))
        return repr(value)
    if isinstance(value, dict):
        parts = (_pair(k, v) for k, v in value.items())
        return "; ".join(p for p in parts if p)
    if isinstance(value, list | tuple):
        if isinstance(value, tuple) and len(value) == 2:  # a Parquet map entry (key, value)
            return _pair(value[0], value[1])
        return "; ".join(t for t in (cell_text(v) for v in value) if t)
    return str(value).strip()


def _pair(key: Any, value: Any) -> str:
    """One "key value" of a rendered object; "" when the value is empty."""
    text = cell_text(value)
    return f"{cell_text(key)} {text}" if text else ""


def cell_number(value: Any, field: str, what: str, *, absent: float | None = 0.0) -> float | None:
    """A cell as a finite non-negative number; empty gives `absent`; else the row is refused.

    `what` names the quantity in the message ("count", "grade").
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return absent
    if isinstance(value, bool):
        raise RowRefused(Refusal("not a number", f"{what} is not a number ({value!r})", field))
    if isinstance(value, int | float):
        number = float(value)
    else:
        try:
            number = float(str(value).strip())
        except ValueError:
            detail = f"{what} is not a number ({cell_text(value)!r})"
            raise RowRefused(Refusal("not a number", detail, field)) from None
    if not math.isfinite(number):
        raise RowRefused(Refusal("not a number", f"{what} is not finite ({value!r})", field))
    if number < 0:
        detail = f"negative {what} ({cell_text(value)}) (must be >= 0)"
        raise RowRefused(Refusal(f"negative {what}", detail, field))
    return number
