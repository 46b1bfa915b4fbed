"""What every route needs, built once per app: settings, Redis, key store, model store,
rollout service, metrics. Routes get it with ``Depends(context)``; tests build their own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

import redis.asyncio as aioredis
from fastapi import Depends, Request

from services.api.events import DefectIndex
from services.api.keys import ApiKeyStore
from services.api.metrics import Metrics
from services.api.settings import ApiSettings
from slimspect.store import ModelStore

if TYPE_CHECKING:
    from services.rollout.service import RolloutService


@dataclass
class ApiContext:
    settings: ApiSettings
    redis: aioredis.Redis
    keys: ApiKeyStore
    store: ModelStore | None = None
    rollout: RolloutService | None = None
    metrics: Metrics = field(default_factory=Metrics)
    clock: Callable[[], float] = time.time

    @property
    def index(self) -> DefectIndex:
        return DefectIndex(self.redis, scan_budget=self.settings.scan_budget)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)


def context(request: Request) -> ApiContext:
    return request.app.state.context


Ctx = Annotated[ApiContext, Depends(context)]
