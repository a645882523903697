"""The rules every input obeys, whatever door it comes through, and the messages that say so.

A query (`/search`), a product title (`PUT /products`) and a batch line (`POST /batches`, the
batch CLI) are all `bounded_query` texts, and a model name is a `ModelName`. Every refusal of a
field names the field and its limit (`"k: must be <= 1000"`): `validation_details` turns
pydantic's errors into those messages, in the `{"loc", "msg", "type"}` items of the one error
shape (`service.api.errors`). `strict_json` reads JSON text the way every door does: a
duplicate key, nesting deeper than the parser goes and an integer too long to convert are
refusals that name the limit, never a crash. Only pydantic here: the offline batch CLI reads
files with the same rules and messages as the HTTP API, without it.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, StringConstraints
from pydantic_core import PydanticCustomError

ModelName = Literal["astra", "mach", "hybrid"]

# Control characters (Unicode category Cc: U+0000-U+001F and U+007F-U+009F, a set the standard
# never changes) other than tab and newline, which a pasted query may legitimately contain.
REFUSED_CONTROL_CHARS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _check_query_text(query: str) -> str:
    """Reject control characters other than tab and newline.

    They mean nothing to a search and usually come from a broken client; rejecting them keeps
    them out of the tokenizer and the logs. (Lone surrogates never get here: pydantic rejects
    strings that are not valid Unicode.) One regular-expression scan: a character-by-character
    loop cost a millisecond of the event loop per 256-query request.
    """
    found = REFUSED_CONTROL_CHARS.search(query)
    if found is not None:
        raise PydanticCustomError(
            "query_control_character",
            "must not contain control characters other than tab and newline "
            "(found {char} at position {position})",
            {"char": f"U+{ord(found.group()):04X}", "position": found.start()},
        )
    return query


def bounded_query(max_chars: int) -> Any:
    """The query type every route and file format shares: 1..max_chars, no control characters.

    Whitespace is trimmed first by the models' `str_strip_whitespace`.
    """
    return Annotated[
        str,
        StringConstraints(min_length=1, max_length=max_chars),
        AfterValidator(_check_query_text),
    ]


def _field_name(loc: Iterable[str | int]) -> str:
    """`("body", "k")` -> `"k"`; the body itself -> `"body"`."""
    parts = [str(part) for part in loc]
    if parts and parts[0] in {"body", "query", "path", "header", "cookie"}:
        parts = parts[1:] or parts
    return ".".join(parts) or "body"


def _describe(error: Mapping[str, Any], field: str, limits: Mapping[str, str]) -> str:
    """The text after `<field>: ` for one pydantic error, naming the limit where there is one."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    # `queries.3` is an element of `queries`: its limit is stated with the list's.
    limit = limits.get(field.split(".")[0])
    expected = f" ({limit})" if limit else ""
    if kind == "missing":
        return f"is required{expected}"
    if kind == "extra_forbidden":
        return f"is not a known field (allowed: {', '.join(limits) or 'none'})"
    if kind == "greater_than_equal":
        return f"must be >= {ctx['ge']}"
    if kind == "less_than_equal":
        return f"must be <= {ctx['le']}"
    if kind == "string_too_short":
        return "must not be empty or whitespace only"
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']} characters after trimming whitespace"
    if kind == "literal_error" and limit:
        return f"must be {limit}"
    if field == "body" and kind in {"model_type", "model_attributes_type", "dict_type"}:
        return f"must be a JSON object with the fields {', '.join(limits) or '(none)'}"
    if kind == "too_short" and limit:
        return f"must be {limit}"
    if kind == "too_long":
        return f"must have at most {ctx['max_length']} items"
    if kind.startswith(("query_", "product_")):  # our own checks already say what is allowed
        return str(error["msg"])
    return f"{error['msg']}{expected}"


def validation_details(
    errors: Iterable[Mapping[str, Any]], limits: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """Turn pydantic/FastAPI validation errors into `ErrorDetail` dicts with readable messages.

    `limits` maps each body field to what it accepts, in words (a request model's
    `field_limits`); it is appended to type errors. `input` and `ctx` are dropped: echoing a
    rejected megabyte query back helps nobody.
    """
    limits = limits or {}
    details = []
    for error in errors:
        loc = list(error.get("loc", ()))
        if error["type"] == "json_invalid":
            # FastAPI puts the character offset where the field name would be.
            position = loc[1] if len(loc) > 1 else "?"
            reason = (error.get("ctx") or {}).get("error", "malformed")
            details.append(
                {
                    "loc": ["body"],
                    "msg": f"body: is not valid JSON ({reason} at position {position})",
                    "type": "json_invalid",
                }
            )
            continue
        if error["type"] in {"query_missing", "query_and_queries"}:
            loc = [*loc, "query"]  # a whole-body check, but about which query field to give
        field = _field_name(loc)
        details.append(
            {
                "loc": loc,
                "msg": f"{field}: {_describe(error, field, limits)}",
                "type": error["type"],
            }
        )
    return details


class JsonRefused(ValueError):
    """A JSON text the service will not read; the message says why and names the limit."""


class DuplicateKey(JsonRefused):
    """An object of the text gives one key twice (JSON parsers would keep either value)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`json.loads`'s object hook: an object whose key repeats is refused, not merged."""
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise DuplicateKey(f"the key {key!r} appears twice in one object; give each key once")
        found[key] = value
    return found


def strict_json(text: str | bytes) -> Any:
    """Parse JSON text (bytes must be UTF-8); `JsonRefused` for invalid JSON, bytes that are not
    UTF-8, a repeated key, nesting deeper than the parser goes, or an integer with more digits
    than Python converts."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except JsonRefused:
        raise
    except json.JSONDecodeError as exc:
        raise JsonRefused(f"not valid JSON ({exc.msg} at column {exc.colno})") from exc
    except UnicodeDecodeError as exc:
        byte = exc.object[exc.start]
        raise JsonRefused(
            f"must be UTF-8 (byte {byte:#04x} at position {exc.start} is not)"
        ) from exc
    except RecursionError as exc:
        limit = sys.getrecursionlimit()
        raise JsonRefused(f"nesting depth over the parser's limit (about {limit} levels)") from exc
    except ValueError as exc:
        if "integer string conversion" not in str(exc):
            raise JsonRefused(f"not valid JSON ({exc})") from exc
        digits = sys.get_int_max_str_digits()
        raise JsonRefused(f"a number's size over the limit of {digits} digits") from exc
