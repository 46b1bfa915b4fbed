"""The publish stage's optional last step: a canary rollout of the version it published.

It goes through the HTTP API, as an operator would (``POST /v1/rollouts``, with the key
in ``SLIMSPECT_API_KEY``), so it is authorized and written to the audit log like any
other rollout; the rollout service's gate then promotes or rolls it back. The variables
are checked before the pipeline starts (:func:`check_canary_env`): a missing key should
not surface after an hour of training. A rerun whose version already has a rollout (an
attempt that failed after starting it) adopts that rollout instead of starting another.
"""

from __future__ import annotations

import os
import urllib.error
from collections.abc import Mapping
from typing import Any

from slimspect.api_client import Api, ApiRequestError
from trainer.pipeline.config import CanarySection, PipelineConfig
from trainer.pipeline.records import PipelineError

__all__ = ["check_canary_env", "start_canary"]

URL_VAR, KEY_VAR = "SLIMSPECT_API_URL", "SLIMSPECT_API_KEY"


def check_canary_env(config: PipelineConfig, environ: Mapping[str, str] = os.environ) -> None:
    """PipelineError when ``publish.canary`` is set but the API's URL or key is not."""
    p = config.publish
    if not (p.enabled and p.canary):
        return
    missing = [v for v in (URL_VAR, KEY_VAR) if not environ.get(v)]
    if missing:
        raise PipelineError(
            f"publish.canary starts a rollout through the API: set {' and '.join(missing)} "
            "(the API's URL and an operator key), or remove publish.canary"
        )


def start_canary(
    canary: CanarySection,
    name: str,
    version: str,
    run_id: str,
    environ: Mapping[str, str] = os.environ,
) -> dict[str, Any]:
    """Start (or adopt) the canary rollout of ``name/version``; returns the rollout."""
    url = environ.get(URL_VAR, "")
    api = Api(url, environ.get(KEY_VAR))
    try:
        for rollout in api.rollouts():
            if rollout["model_name"] == name and rollout["version"] == version:
                return rollout
        body = {
            "model_name": name,
            "version": version,
            "channel": "canary",
            "share": canary.share,
            "stations": canary.stations,
            "soak_s": canary.soak_s,
            "reason": f"published by pipeline run {run_id}",
        }
        return api.post("/v1/rollouts", {k: v for k, v in body.items() if v is not None})
    except ApiRequestError as exc:
        raise PipelineError(
            f"the API refused the canary rollout of {name}/{version}: {exc}"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        raise PipelineError(f"cannot reach the API at {url} to start the canary: {exc}") from None
