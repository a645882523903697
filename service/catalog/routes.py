"""`PUT /products` and `DELETE /products/{id}`: keep the served catalog fresh without retraining.

A PUT embeds the new or retitled products with the served bundle's encoder (in a worker thread,
in batches), writes them to the catalog store and swaps in the engine bound to the new snapshot
before it answers, so the next search finds them; a DELETE hides a product from every model at
once. What each model does with the changes is in `service.catalog.view`. Changes are serialised:
one runs at a time, in the order they arrive.

No `from __future__ import annotations`: the PUT body model is built from the settings, and
FastAPI can only resolve it when annotations are evaluated.
"""

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Request, status

from service.api.auth import ADMIN_RESPONSES, OPTIONAL_AUTH, require_admin_key
from service.api.docs import BAD_JSON, RETRY_AFTER_HEADER
from service.api.errors import ERROR_BODY, api_error
from service.api.routing import api_router
from service.api.state import RETRY_AFTER_S, EngineDep, state_of
from service.catalog.changes import CatalogFull, UnknownProduct
from service.catalog.schemas import (
    PRODUCT_ID_MAX_CHARS,
    ProductDeleted,
    ProductsUpserted,
    products_request_model,
)
from service.catalog.view import served_version
from service.search.engine import SearchEngine
from service.settings import Settings
from service.storage import StoreUnavailable

# A JSON string character takes at most 6 bytes (\uXXXX); ids, titles and keys per product.
ESCAPED_CHAR_BYTES = 6
PRODUCT_OVERHEAD_BYTES = 64
NOT_READY = {
    **ERROR_BODY,
    "headers": RETRY_AFTER_HEADER,
    "description": "The bundle is not loaded yet (or failed to load), or the change could not be "
    "saved (a full disk, a busy database: the message says which); nothing changed.",
}
DELETE_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {**ERROR_BODY, "description": "No product has this id (or it is deleted)."},
    422: {**ERROR_BODY, "description": "The id is over its length limit."},
    503: NOT_READY,
}


def products_max_body_bytes(settings: Settings) -> int:
    """The largest PUT /products body: every product at its limits, every character escaped."""
    per_product = (PRODUCT_ID_MAX_CHARS + settings.max_title_chars) * ESCAPED_CHAR_BYTES
    return settings.max_upsert_products * (per_product + PRODUCT_OVERHEAD_BYTES) + 1024


def not_saved(exc: StoreUnavailable) -> HTTPException:
    """The 503 for a change the store refused: what failed, and that nothing changed."""
    msg = f"catalog: the change was not saved, nothing changed ({exc}); retry later"
    headers = {"Retry-After": str(RETRY_AFTER_S)}
    return api_error(status.HTTP_503_SERVICE_UNAVAILABLE, [], msg, "catalog_unavailable", headers)


def _check_unique_ids(products: list[tuple[str, str]]) -> None:
    """422 naming the first id given twice."""
    first: dict[str, int] = {}
    for position, (product_id, _) in enumerate(products):
        if first.setdefault(product_id, position) != position:
            msg = (
                f"products.{position}.id: {product_id!r} repeats products."
                f"{first[product_id]}.id; give each id at most once"
            )
            loc: list[str | int] = ["body", "products", position, "id"]
            raise api_error(422, loc, msg, "product_id_repeated")


async def upsert(
    products: list[tuple[str, str]], request: Request, engine: SearchEngine
) -> ProductsUpserted:
    """Apply a PUT: embed, store and publish the changes before answering."""
    start = time.perf_counter()
    _check_unique_ids(products)
    state = state_of(request)
    async with state.catalog_writes:
        try:
            result = await asyncio.to_thread(state.catalogs.upsert, engine, products)
        except StoreUnavailable as exc:
            raise not_saved(exc) from exc
        except CatalogFull as exc:
            msg = (
                f"products: would make {exc.changes} products differ from the bundle, limit "
                f"{exc.limit} (XC_MAX_CATALOG_CHANGES); retrain the bundle to fold the changes "
                "in (DELETE still works)"
            )
            code = status.HTTP_422_UNPROCESSABLE_CONTENT
            raise api_error(code, ["body", "products"], msg, "catalog_full") from exc
        state.registry.refresh_catalog()
    return ProductsUpserted(
        created=result.created,
        updated=result.updated,
        unchanged=result.unchanged,
        catalog_version=result.version,
        version=served_version(engine.manifest.version, result.version),
        took_ms=round((time.perf_counter() - start) * 1000, 3),
    )


async def delete_product(
    product_id: Annotated[
        str,
        Path(
            min_length=1,
            max_length=PRODUCT_ID_MAX_CHARS,
            description="The product's external id (as in search results).",
        ),
    ],
    request: Request,
    engine: EngineDep,
) -> ProductDeleted:
    """Remove a product from every model's results, from the next search on."""
    state = state_of(request)
    async with state.catalog_writes:
        try:
            version = await asyncio.to_thread(state.catalogs.delete, engine, product_id)
        except StoreUnavailable as exc:
            raise not_saved(exc) from exc
        except UnknownProduct as exc:
            msg = f"product_id: there is no product {product_id!r} (or it is deleted already)"
            raise api_error(
                status.HTTP_404_NOT_FOUND, ["path", "product_id"], msg, "product_not_found"
            ) from exc
        state.registry.refresh_catalog()
    return ProductDeleted(
        id=product_id,
        catalog_version=version,
        version=served_version(engine.manifest.version, version),
    )


def make_catalog_router(settings: Settings) -> APIRouter:
    """The /products routes, behind the API key when one is set (the PUT body's limits are
    the settings')."""
    ProductsUpsert = products_request_model(settings.max_upsert_products, settings.max_title_chars)
    router = api_router(
        tags=["catalog"], dependencies=[Depends(require_admin_key)], responses=ADMIN_RESPONSES
    )
    max_body = products_max_body_bytes(settings)

    @router.put(
        "/products",
        summary="Create products or change their titles (batch upsert)",
        operation_id="upsert_products",
        response_description="How many products were created, retitled or left as they were.",
        openapi_extra=OPTIONAL_AUTH,
        responses={
            400: BAD_JSON,
            413: {**ERROR_BODY, "description": f"The body is larger than {max_body} bytes."},
            422: {
                **ERROR_BODY,
                "description": "A field is missing, of the wrong type or over its limit, an id "
                "repeats, or the catalog would hold more changes than XC_MAX_CATALOG_CHANGES.",
            },
            503: NOT_READY,
        },
    )
    async def upsert_products(
        body: ProductsUpsert, request: Request, engine: EngineDep
    ) -> ProductsUpserted:
        """Embed new or retitled products and make them searchable before answering.

        An id of the bundle changes that product's title; another id adds a product. Products
        that already have the given title are left alone (`unchanged`).
        """
        products = [(product.id, product.title) for product in body.products]
        return await upsert(products, request, engine)

    router.add_api_route(
        "/products/{product_id:path}",
        delete_product,
        methods=["DELETE"],
        summary="Delete a product",
        operation_id="delete_product",
        response_description="The deleted product and the catalog version.",
        openapi_extra=OPTIONAL_AUTH,
        responses=DELETE_RESPONSES,
    )
    return router
