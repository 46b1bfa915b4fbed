"""``/v1/models``: the published model versions, from the model store.

The store client (minio) blocks, so it runs in a worker thread. Without a store (the API
was started without ``SLIMSPECT_API_MODEL_STORE=true``) the route answers 503 and says
how to configure one, rather than an empty list that would look like "no models".
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query

from services.api.auth import viewer
from services.api.context import Ctx
from services.api.responses import ModelVersionOut
from services.api.routes.common import errors
from slimspect.errors import StoreError
from slimspect.manifest import NAME_PATTERN

NO_STORE = (
    "no model store configured: start the API with SLIMSPECT_API_MODEL_STORE=true "
    "(or `slimspect api serve --model-store`) and SLIMSPECT_STORE_* describing the S3 store"
)

router = APIRouter(
    prefix="/v1",
    tags=["models"],
    dependencies=[Depends(viewer)],
    responses=errors(401, 403, 422, 503),
)


@router.get("/models", response_model=list[ModelVersionOut])
async def list_models(
    ctx: Ctx,
    name: Annotated[str | None, Query(pattern=NAME_PATTERN, description="one model")] = None,
    latest: Annotated[bool, Query(description="only the newest version of each model")] = False,
) -> list[ModelVersionOut]:
    """Complete (signed) versions in the store, by name and age; ``latest`` marks the newest."""
    if ctx.store is None:
        raise HTTPException(503, NO_STORE)
    try:
        versions = await asyncio.to_thread(ctx.store.list, name)
    except StoreError as exc:
        raise HTTPException(503, f"model store: {exc}") from None
    newest = {}
    for v in versions:  # sorted by name, then age: the last of each name is its newest
        newest[v.name] = v
    rows = [
        ModelVersionOut(
            name=v.name,
            version=v.version,
            created_at=v.created_at.isoformat(),
            format=v.format,
            size_bytes=v.size_bytes,
            sha256=v.sha256,
            latest=newest[v.name] is v,
        )
        for v in versions
    ]
    return [r for r in rows if r.latest] if latest else rows
