"""The agent tests' helpers (agent_models: the tiny model; agent_harness: Redis readers)
are importable here, as the agent tests' own conftest makes them importable there."""

from __future__ import annotations

import sys
from pathlib import Path

_INTEGRATION = Path(__file__).resolve().parents[1] / "integration"
for _folder in ("edge", "services"):
    if str(_INTEGRATION / _folder) not in sys.path:
        sys.path.insert(0, str(_INTEGRATION / _folder))
