"""A local Ray head: ``ray start --head --block`` as a child process, on free ports.

``--block`` keeps ``ray start`` in the foreground for as long as the cluster runs, so the
head is one tracked process (its GCS, raylet and workers are its descendants) and stops on
SIGTERM like any other: ``ray start`` handles it by stopping every process it started.

Every port Ray would otherwise take at a fixed default is set to a free one: the GCS (6379,
where the shared test Redis listens), the Ray Client server (10001), the dashboard agent
(52365) and the metrics, runtime-env and agent gRPC ports, so a second Ray on the machine
(a test session's ``ray.init``) never collides. The dashboard is off unless asked for (it
needs ``ray[default]``). Where Ray listens is Ray's choice, not loopback: ``ray start``
replaces a loopback ``--node-ip-address`` by the machine's address and its servers bind
all interfaces; token authentication is on (:func:`ray_auth_env`). The address to connect
to is the one it writes into its temp dir (:func:`ray_address`).

The head gets a temp dir of its own (``/tmp/slimspect-ray-<hash of the state dir>``), not
Ray's default ``/tmp/ray``: ``ray start`` writes the cluster's address into
``<temp dir>/ray_current_cluster``, and a plain ``ray.init()`` anywhere on the machine (a
test session, a benchmark) would find it in ``/tmp/ray`` and join this cluster instead of
starting its own. It is short, not under the state dir: Ray creates unix sockets in it,
whose names may not exceed 107 bytes.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

from slimspect.embedded.ports import HOST, pick_ports

# What `ray start --block` prints once the node runs and its address is written.
RAY_READY_LINE = "This command will now block forever"
ADDRESS_FILE = "ray_current_cluster"


def ray_installed() -> bool:
    """Whether Ray can be imported here (the ``train`` extra), without importing it."""
    return importlib.util.find_spec("ray") is not None


@dataclass(frozen=True)
class RayPorts:
    gcs: int
    client: int
    dashboard: int
    dashboard_agent_http: int
    dashboard_agent_grpc: int
    runtime_env_agent: int
    metrics: int

    @classmethod
    def pick(cls) -> RayPorts:
        return cls(*pick_ports(7))


def ray_auth_env(token_file: Path) -> dict[str, str]:
    """Token authentication with the token in ``token_file``, for the head and its drivers.

    Explicit, not Ray's default: Ray turns token auth on when ``~/.ray/auth_token`` exists,
    but a driver given an explicit address reads that file only when ``RAY_AUTH_MODE`` is
    ``token``; with both set here the stack works whatever ``~/.ray`` holds.
    """
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}


def ray_address(temp_dir: Path) -> str | None:
    """The GCS address ``ray start`` wrote into its temp dir (``ray.init(address=...)``)."""
    try:
        return (temp_dir / ADDRESS_FILE).read_text().strip() or None
    except FileNotFoundError:
        return None


def ray_head_argv(ports: RayPorts, *, temp_dir: Path, dashboard: bool = False) -> list[str]:
    """The ``ray start --head --block`` command line, run with this interpreter."""
    argv = [
        sys.executable,
        "-m",
        "ray.scripts.scripts",
        "start",
        "--head",
        "--block",
        f"--port={ports.gcs}",
        f"--ray-client-server-port={ports.client}",
        f"--dashboard-agent-listen-port={ports.dashboard_agent_http}",
        f"--dashboard-agent-grpc-port={ports.dashboard_agent_grpc}",
        f"--runtime-env-agent-port={ports.runtime_env_agent}",
        f"--metrics-export-port={ports.metrics}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    if dashboard:
        argv += [
            "--include-dashboard=true",
            f"--dashboard-host={HOST}",
            f"--dashboard-port={ports.dashboard}",
        ]
    else:
        argv += ["--include-dashboard=false"]
    return argv
