"""Bodies of `PUT /products` and `DELETE /products/{id}` (`service.catalog.routes`)."""

from __future__ import annotations

import unicodedata
from typing import Annotated, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from pydantic_core import PydanticCustomError

from service.validation import bounded_query

PRODUCT_ID_MAX_CHARS = 128
# Unicode categories no id may hold: control (Cc) and format (Cf) characters.
FORBIDDEN_ID_CATEGORIES = frozenset({"Cc", "Cf"})
ID_CHARACTERS = "without whitespace, control or format characters"


def _check_product_id(product_id: str) -> str:
    """Reject whitespace, control and format characters: ids are keys, typed into URLs, logs
    and files, and an invisible character (U+200B zero width space, U+202E right-to-left
    override, ...) would make two ids that look the same, or one that reads backwards."""
    for position, char in enumerate(product_id):
        if char.isspace() or unicodedata.category(char) in FORBIDDEN_ID_CATEGORIES:
            raise PydanticCustomError(
                "product_id_character",
                "must be 1 to {limit} characters " + ID_CHARACTERS + " "
                "(found {char} at position {position})",
                {"limit": PRODUCT_ID_MAX_CHARS, "char": f"U+{ord(char):04X}", "position": position},
            )
    return product_id


ProductId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=PRODUCT_ID_MAX_CHARS, strip_whitespace=False),
    AfterValidator(_check_product_id),
]


def products_request_model(max_products: int = 1000, max_title_chars: int = 512) -> type[BaseModel]:
    """Build the `PUT /products` body model with the configured limits (see `Settings`)."""
    Title = bounded_query(max_title_chars)
    id_limit = f"1 to {PRODUCT_ID_MAX_CHARS} characters {ID_CHARACTERS}"
    title_limit = f"1 to {max_title_chars} characters after trimming whitespace"

    class Product(BaseModel):
        """A product to create, or to give a new title."""

        model_config = ConfigDict(extra="forbid", strict=True, str_strip_whitespace=True)

        id: ProductId = Field(
            description="External product id: one of the bundle's (changes its title) or a new "
            f"one (adds a product); {id_limit}.",
            examples=["D101996"],
        )
        title: Title = Field(
            description=f"Product title, embedded by the bundle's encoder; {title_limit}, no "
            "control characters other than tab and newline.",
            examples=["Cedar Lane 20-Volt Cordless Drill Driver Kit in Blue"],
        )

    class ProductsUpsert(BaseModel):
        """Products to create or retitle, each id at most once."""

        model_config = ConfigDict(extra="forbid", strict=True)
        field_limits: ClassVar[dict[str, str]] = {
            "products": f"a list of 1 to {max_products} objects with id ({id_limit}) and title "
            f"({title_limit}), each id at most once",
        }

        products: list[Product] = Field(
            min_length=1,
            max_length=max_products,
            description=f"1 to {max_products} products; searchable as soon as the answer arrives.",
        )

    return ProductsUpsert


class ProductsUpserted(BaseModel):
    """What a PUT /products changed, and the catalog version it made."""

    created: int = Field(description="Products that did not exist (or had been deleted).")
    updated: int = Field(description="Products whose title changed.")
    unchanged: int = Field(description="Products that already had this title (nothing done).")
    catalog_version: int = Field(description="Catalog changes so far (unchanged if none).")
    version: str = Field(description="The version answers carry from now on.")
    took_ms: float = Field(description="Server-side time, embedding included, in milliseconds.")


class ProductDeleted(BaseModel):
    """A deleted product, and the catalog version its deletion made."""

    id: str = Field(description="The deleted product's id.")
    catalog_version: int = Field(description="Catalog changes so far.")
    version: str = Field(description="The version answers carry from now on.")
