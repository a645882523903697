"""Product ids refuse what would make two ids look alike or read backwards."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.catalog.schemas import products_request_model
from service.validation import validation_details

ProductsUpsert = products_request_model()


@pytest.mark.parametrize(
    "product_id, code",
    [
        ("D10\u200b1996", "U+200B"),  # zero width space
        ("\u202eD101996", "U+202E"),  # right-to-left override
        ("D101996\ufeff", "U+FEFF"),  # byte order mark
        ("D10\u00ad1996", "U+00AD"),  # soft hyphen
        ("D10\x001996", "U+0000"),
        ("D10 1996", "U+0020"),
    ],
)
def test_ids_with_format_control_or_space_characters_are_refused(
    product_id: str, code: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        ProductsUpsert.model_validate({"products": [{"id": product_id, "title": "Drill"}]})
    [detail] = validation_details(refused.value.errors(), ProductsUpsert.field_limits)
    assert detail["loc"] == ["products", 0, "id"]
    assert "without whitespace, control or format characters" in detail["msg"]
    assert code in detail["msg"]


def test_ordinary_ids_pass() -> None:
    body = {"products": [{"id": "SKU-123_ä/Ω.7", "title": "Drill"}]}
    assert ProductsUpsert.model_validate(body).products[0].id == "SKU-123_ä/Ω.7"
