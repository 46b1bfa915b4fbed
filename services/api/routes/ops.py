"""``/healthz`` and ``/metrics``: for probes and Prometheus, so they need no key.

``/healthz`` is 200 only when Redis answers (the API can do nothing without it); it says
which backends are configured, but never fails on the model store, which only
``/v1/models`` needs.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from redis.exceptions import RedisError

from services.api.context import Ctx

router = APIRouter(tags=["ops"])


class Health(BaseModel):
    status: str
    redis: str
    model_store: str
    rollout: str


@router.get("/healthz", response_model=Health, responses={503: {"model": Health}})
async def healthz(ctx: Ctx) -> JSONResponse:
    """Liveness and readiness: 200 when Redis answers a PING, else 503."""
    try:
        await ctx.redis.ping()
        redis = "ok"
    except RedisError as exc:
        redis = f"unavailable: {exc}"
    body = Health(
        status="ok" if redis == "ok" else "unavailable",
        redis=redis,
        model_store="configured" if ctx.store is not None else "not configured",
        rollout="configured" if ctx.rollout is not None else "not configured",
    )
    return JSONResponse(body.model_dump(), status_code=200 if redis == "ok" else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
async def metrics(ctx: Ctx) -> Response:
    """Prometheus metrics of this API process."""
    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)
