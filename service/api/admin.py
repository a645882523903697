"""`GET /v1/models` (what is served) and `POST /admin/reload` (swap in another bundle version).

`model_info` is the one place that turns a served engine into what the API says about it: the
registry holds engines, not response bodies.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Body, Depends, Request, status

from service.api.auth import (
    ADMIN_RESPONSES,
    AUTH_RESPONSES,
    OPTIONAL_AUTH,
    require_admin_key,
    require_search_key,
)
from service.api.docs import BAD_JSON, NOT_READY
from service.api.errors import ERROR_BODY, api_error
from service.api.routing import api_router
from service.api.schemas import (
    CatalogInfo,
    EncoderInfo,
    IndexInfo,
    LexicalInfo,
    MachInfo,
    ModelInfo,
    ModelsResponse,
    ReloadRequest,
    ReloadResponse,
)
from service.api.state import get_engine, state_of
from service.catalog.view import CatalogView
from service.registry import BundleNotAllowed, EngineRegistry, ReloadInProgress, Served

RELOAD_MAX_BODY_BYTES = 16 * 1024

RELOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: BAD_JSON,
    **ADMIN_RESPONSES,
    409: {**ERROR_BODY, "description": "Another reload is still running."},
    413: {**ERROR_BODY, "description": f"The body is larger than {RELOAD_MAX_BODY_BYTES} bytes."},
    422: {
        **ERROR_BODY,
        "description": "The body is invalid, or the bundle was refused (the message "
        "says why); the old bundle keeps serving.",
    },
}

router = api_router(tags=["models"])


def model_info(served: Served, registry: EngineRegistry) -> ModelInfo:
    """What `/v1/models` says about a served bundle."""
    engine, manifest = served.engine, served.engine.manifest
    index = lexical = mach = catalog = None
    if manifest.astra is not None:
        spec = manifest.astra.index
        index = IndexInfo(type=spec.type, metric=spec.metric, params=spec.params)
    if manifest.mach is not None:
        mach = MachInfo(
            repetitions=manifest.mach.reps,
            buckets=manifest.mach.buckets,
            top_buckets=manifest.mach.top_buckets,
            hybrid_weight=engine.hybrid_weight,
            precision=engine.mach.precision,
            exact=engine.mach.exact is not None,
        )
    if engine.lexical is not None:
        lexical = LexicalInfo(
            weight=engine.lexical_weight,
            terms=len(engine.lexical.terms),
            ranker=engine.ranker is not None,
        )
    if isinstance(engine.catalog, CatalogView):
        view = engine.catalog
        catalog = CatalogInfo(
            version=view.version,
            served_version=engine.version,
            added=view.added,
            changed=view.changed,
            deleted=view.removed,
        )
    encoder = EncoderInfo(
        base_model=manifest.encoder.base_model,
        dim=manifest.encoder.dim,
        max_length=manifest.encoder.max_length,
        precision=engine.encoder.precision,
        size=engine.encoder.size,
        providers=list(engine.encoder.providers),
    )
    return ModelInfo(
        name=manifest.name,
        version=manifest.version,
        created_at=manifest.created_at,
        path=registry.shown_path(served.path),
        loaded_at=served.loaded_at.isoformat(timespec="seconds"),
        models=list(engine.models),
        default_model=engine.default_model,
        labels=manifest.labels.count,
        encoder=encoder,
        index=index,
        lexical=lexical,
        mach=mach,
        devices=engine.devices.describe(),
        catalog=catalog,
    )


@router.get(
    "/v1/models",
    summary="The loaded bundle",
    operation_id="models",
    response_description="The bundle being served and its parameters.",
    responses={**AUTH_RESPONSES, 503: NOT_READY},
    dependencies=[Depends(require_search_key), Depends(get_engine)],
    openapi_extra=OPTIONAL_AUTH,
)
async def models(request: Request) -> ModelsResponse:
    """Name, version, models, label count, encoder and index parameters of the bundle."""
    registry = state_of(request).registry
    assert registry.served is not None  # get_engine answered 503 otherwise
    return ModelsResponse(data=[model_info(registry.served, registry)])


@router.post(
    "/admin/reload",
    summary="Load a bundle version and swap it in",
    operation_id="reload",
    response_description="The bundle served before and the one served now.",
    responses=RELOAD_RESPONSES,
    dependencies=[Depends(require_admin_key)],
    openapi_extra=OPTIONAL_AUTH,
)
async def reload(
    request: Request, body: Annotated[ReloadRequest | None, Body()] = None
) -> ReloadResponse:
    """Load, warm and atomically swap in a bundle; refused bundles leave the old one."""
    registry = state_of(request).registry
    refused = status.HTTP_422_UNPROCESSABLE_CONTENT
    try:
        path = registry.bundle(body.bundle) if body is not None and body.bundle else None
    except BundleNotAllowed as exc:
        raise api_error(refused, ["body", "bundle"], str(exc), "bundle_not_allowed") from exc
    try:
        previous, current, took = await registry.reload(path)
    except ReloadInProgress as exc:
        raise api_error(status.HTTP_409_CONFLICT, [], str(exc), "reload_in_progress") from exc
    except Exception as exc:
        msg = f"bundle: refused, the old bundle keeps serving: {registry.shown_error(exc)}"
        raise api_error(refused, ["body", "bundle"], msg, "bundle_refused") from exc
    return ReloadResponse(
        previous=model_info(previous, registry) if previous is not None else None,
        current=model_info(current, registry),
        load_s=round(took, 3),
    )
