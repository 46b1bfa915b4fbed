"""The ``station.yaml`` of a simulated station of the embedded stack.

Every key is the agent's own (edge_agent/settings.py); the core only writes the file, so
``slimspect agent --config`` validates it as it would any station's. The cameras are the
agent's ``synthetic`` source (steel-like frames with occasional dark defects), two per
station with seeds of their own, so no two cameras of the stack see the same frames.

No model version is given: a station starts, reports "no model" in its heartbeat and on
``/healthz`` (503), and installs the version the fleet assigns once one is published and
rolled out (the API's ``SLIMSPECT_ROLLOUT_DEFAULT_MODEL`` names the model).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from slimspect.embedded.credentials import write_secret
from slimspect.embedded.ports import HOST
from slimspect.settings import StoreSettings

STATION_PREFIX = "station-"


def station_name(index: int) -> str:
    """``station-1``, ``station-2``, ... (1-based, as on the factory floor)."""
    return f"{STATION_PREFIX}{index}"


@dataclass(frozen=True)
class StationPlan:
    name: str
    index: int
    metrics_port: int
    directory: Path  # holds station.yaml; the agent's state_dir is directory/state

    @property
    def config_path(self) -> Path:
        return self.directory / "station.yaml"


def write_station_config(
    plan: StationPlan,
    *,
    token_file: Path,
    aggregator_port: int,
    fleet_port: int,
    store: StoreSettings,
    model_name: str,
    fps: float = 2.0,
) -> Path:
    """Writes ``station.yaml`` (mode 0600: it holds the store's secret key); returns its path."""
    secret = store.secret_key.get_secret_value() if store.secret_key else None
    config = {
        "station": plan.name,
        "state_dir": str(plan.directory / "state"),
        "token_file": str(token_file),
        "uplink": {"endpoint": f"{HOST}:{aggregator_port}"},
        "fleet": {"endpoint": f"{HOST}:{fleet_port}"},
        "store": {
            "endpoint": store.endpoint,
            "access_key": store.access_key,
            "secret_key": secret,
            "bucket": store.bucket,
            "secure": False,
            "trusted_keys": [str(p) for p in store.trusted_keys],
        },
        "model": {"name": model_name},
        "runtime": {"intra_op_threads": 1},
        "cameras": [
            {"id": "top", "type": "synthetic", "fps": fps, "seed": 2 * plan.index},
            {
                "id": "side",
                "type": "synthetic",
                "fps": fps,
                "seed": 2 * plan.index + 1,
                "defect_rate": 0.3,
            },
        ],
        "metrics": {"host": HOST, "port": plan.metrics_port},
    }
    header = (
        "# Written by 'slimspect up' on every start (ports change); edits are overwritten.\n"
        "# Every key: edge_agent/settings.py.\n"
    )
    write_secret(plan.config_path, header + yaml.safe_dump(config, sort_keys=False))
    return plan.config_path
