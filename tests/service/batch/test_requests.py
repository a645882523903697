"""Batch input lines that the JSON parser itself chokes on are bad lines, named, never a crash."""

from __future__ import annotations

import json
import sys

import pytest

from service.batch.requests import BatchInputError, parse_requests
from service.validation import JsonRefused, strict_json

DEEP = "[" * 100_000 + "]" * 100_000
HUGE_K = '{"custom_id": "a", "query": "drill", "k": ' + "9" * 5000 + "}"
REPEATED = '{"custom_id": "a", "query": "drill", "custom_id": "b"}'


@pytest.mark.parametrize(
    "line, fragment",
    [
        (DEEP, f"nesting depth over the parser's limit (about {sys.getrecursionlimit()} levels)"),
        (HUGE_K, f"a number's size over the limit of {sys.get_int_max_str_digits()} digits"),
        (REPEATED, "the key 'custom_id' appears twice in one object"),
    ],
)
def test_lines_the_parser_refuses_are_named_like_any_bad_line(line: str, fragment: str) -> None:
    good = json.dumps({"custom_id": "ok", "query": "cordless drill"})
    with pytest.raises(BatchInputError) as refused:
        parse_requests([good, line, good.replace("ok", "ok2")])
    [problem] = refused.value.problems
    assert problem.startswith("line 2: ") and fragment in problem
    assert refused.value.bad_lines == 1


def test_strict_json_reads_what_json_reads() -> None:
    text = '{"a": [1, 2.5, "x", null, {"b": true}]}'
    assert strict_json(text) == json.loads(text)
    with pytest.raises(JsonRefused, match="not valid JSON"):
        strict_json('{"a": ')
