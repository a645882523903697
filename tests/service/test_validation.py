"""The query rules every door shares (`service.validation`)."""

from __future__ import annotations

import sys
import unicodedata

import pytest
from pydantic import TypeAdapter, ValidationError

from service.validation import REFUSED_CONTROL_CHARS, bounded_query


def test_the_refused_characters_are_exactly_the_control_characters_but_tab_and_newline() -> None:
    control = {chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == "Cc"}
    refused = {c for c in map(chr, range(sys.maxunicode + 1)) if REFUSED_CONTROL_CHARS.match(c)}
    assert refused == control - {"\t", "\n"}


def test_a_control_character_is_named_with_its_position() -> None:
    query = TypeAdapter(bounded_query(512))
    assert query.validate_python("drill\tbits\n") == "drill\tbits\n"
    with pytest.raises(ValidationError) as refused:
        query.validate_python("drill\x85bits\x00")
    assert "found U+0085 at position 5" in str(refused.value)
