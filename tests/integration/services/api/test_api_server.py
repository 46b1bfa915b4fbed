"""The API as deployed: a real uvicorn over TCP, and ``slimspect api serve`` as a process
serving HTTP and Fleet.Heartbeat (gRPC) together, driven by the operator commands
(``slimspect stations``, ``slimspect rollout ...``) and stopped by SIGTERM."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
import redis.asyncio as aioredis
from aggregator_harness import new_namespace, run_async
from api_harness import Api, Sent, free_port, heartbeat, now_ms, send_through_aggregator
from click.testing import CliRunner

from services.api.app import create_app
from services.api.context import ApiContext
from services.api.keys import ApiKeyStore
from services.api.server import start_http
from services.api.settings import ApiSettings
from slimspect.cli import cli
from slimspect.v1 import fleet_pb2_grpc

pytestmark = pytest.mark.timeout(180)
WIDE = {"COLUMNS": "200"}  # rich tables: wide enough for full station names


def test_accepted_connections_have_nagle_off(api: Api) -> None:
    """With Nagle on, a response written in two parts waits for the client's delayed ACK
    (40 ms on Linux): the query benchmark's p99 was ~80 ms until _listen fixed it."""

    async def main() -> list[int]:
        server = await start_http(create_app(api.ctx), "127.0.0.1", 0)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
                assert (await http.get("/healthz")).status_code == 200
                # the keep-alive connection is still open: look at the server's end of it
                return [
                    conn.transport.get_extra_info("socket").getsockopt(
                        socket.IPPROTO_TCP, socket.TCP_NODELAY
                    )
                    for conn in server.server.server_state.connections
                ]
        finally:
            await server.stop()

    flags = run_async(main())
    assert flags and all(flags), flags


def test_real_uvicorn_serves_the_api_and_counts_requests(api: Api) -> None:
    async def main() -> dict[str, Any]:
        server = await start_http(create_app(api.ctx), "127.0.0.1", 0)
        try:
            base = f"http://127.0.0.1:{server.port}"
            async with httpx.AsyncClient(base_url=base) as http:
                key = {"X-API-Key": api.viewer}
                return {
                    "health": await http.get("/healthz"),
                    "page": await http.get("/v1/defects", params={"limit": 3}, headers=key),
                    "bad": await http.get("/v1/defects", params={"limit": -3}, headers=key),
                    "metrics": (await http.get("/metrics")).text,
                }
        finally:
            await server.stop()

    out = run_async(main())
    assert out["health"].json()["status"] == "ok"
    assert len(out["page"].json()["items"]) == 3
    assert out["bad"].status_code == 422
    assert "limit (query)" in out["bad"].json()["detail"]
    metrics = out["metrics"]
    assert 'slimspect_api_requests_total{method="GET",route="/v1/defects",status="200"}' in metrics
    assert 'route="/v1/defects",status="422"' in metrics
    assert "slimspect_api_request_seconds_bucket" in metrics


def test_redis_down_is_503_not_500() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there

    async def main() -> tuple[Any, Any]:
        client = aioredis.Redis.from_url(url)
        ctx = ApiContext(
            settings=ApiSettings(redis_url=url), redis=client, keys=ApiKeyStore(client)
        )
        transport = httpx.ASGITransport(app=create_app(ctx))
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            health = await http.get("/healthz")
            defects = await http.get("/v1/defects", headers={"X-API-Key": "ssk_x"})
        await client.aclose()
        return health, defects

    health, defects = run_async(main())
    assert health.status_code == 503 and health.json()["redis"].startswith("unavailable")
    assert defects.status_code == 503 and "Redis" in defects.json()["detail"]


# --- `slimspect api serve` -----------------------------------------------------------------


class Served:
    """``slimspect api serve`` in a child process; its JSON log lines are read as they come."""

    def __init__(self, redis_url: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLIMSPECT_")}
        env |= {
            "SLIMSPECT_API_REDIS_URL": redis_url,
            "SLIMSPECT_ROLLOUT_SOAK_S": "0",
            "SLIMSPECT_ROLLOUT_AUTO_PROMOTE": "false",
            "SLIMSPECT_ROLLOUT_SWEEP_INTERVAL_S": "0",
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "slimspect.cli", "api", "serve", "--port", "0"]
            + ["--fleet-port", "0", "--log-level", "INFO"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        serving = self.wait_for("serving", timeout=60)
        self.base = "http://" + serving["address"]
        self.fleet = serving["fleet_address"]

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def wait_for(self, msg: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            self.seen.append(line)
            record = json.loads(line)  # every line is JSON
            if record["msg"] == msg:
                return record
        raise AssertionError(f"no {msg!r} log line; output so far:\n{''.join(self.seen)}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(20)


@pytest.fixture
def served(scratch_url: str) -> Iterator[Served]:
    server = Served(scratch_url)
    try:
        yield server
    finally:
        server.stop()


def _run(args: list[str], **env: str) -> Any:
    return CliRunner().invoke(cli, args, env={**WIDE, **env})


def test_serve_http_and_fleet_with_the_operator_commands(served: Served, scratch_url: str) -> None:
    ns = new_namespace()
    station, quiet = ns.station(0), ns.station(1)
    sent = [Sent(quiet, "e1", "cam0", now_ms() - 1000, ("pitted",), (0.5,), False, 1)]
    run_async(send_through_aggregator(scratch_url, ns, sent))

    keys = {}
    for role in ("viewer", "operator"):
        r = _run(["api", "key", "add", "--role", role, f"cli-{role}", "--redis-url", scratch_url])
        assert r.exit_code == 0, r.output
        keys[role] = r.stdout.strip().splitlines()[-1]
    token = _run(["aggregator", "token", "add", station, "--redis-url", scratch_url])
    station_token = token.stdout.strip().splitlines()[-1]

    channel = grpc.insecure_channel(served.fleet)
    stub = fleet_pb2_grpc.FleetStub(channel)
    auth = [("authorization", f"Bearer {station_token}")]
    reply = stub.Heartbeat(heartbeat(station, "1.0.0", fps=10), metadata=auth, timeout=10)
    assert reply.heartbeat_interval_s > 0

    api = ["--api", served.base]
    viewer, operator = ["--key", keys["viewer"]], ["--key", keys["operator"]]

    listed = _run(["stations", *api, *viewer])
    assert listed.exit_code == 0, listed.output
    assert station in listed.output and quiet in listed.output
    assert "online" in listed.output and "no heartbeat" in listed.output

    refused = _run(["rollout", "start", "steel-yolo", "1.1.0", "--station", station, *api, *viewer])
    assert refused.exit_code == 1 and "403" in refused.output and "operator" in refused.output

    started = _run(
        ["rollout", "start", "steel-yolo", "1.1.0", "--station", station, "--reason", "ci"]
        + [*api, *operator]
    )
    assert started.exit_code == 0, started.output
    rollout_id = next(w for w in started.output.split() if w.startswith("ro-"))

    early = _run(["rollout", "promote", rollout_id, *api, *operator])
    assert early.exit_code == 1 and "409" in early.output and "blockers" in early.output

    stub.Heartbeat(heartbeat(station, "1.0.0", fps=10), metadata=auth, timeout=10)
    told = stub.Heartbeat(heartbeat(station, "1.1.0", fps=10), metadata=auth, timeout=10)
    assert (told.model_version, told.channel) == ("1.1.0", "canary")

    # The key from the environment, like an operator's shell.
    status = _run(
        ["rollout", "status", rollout_id],
        SLIMSPECT_API_URL=served.base,
        SLIMSPECT_API_KEY=keys["viewer"],
    )
    assert status.exit_code == 0, status.output
    assert "gate: promote" in status.output and station in status.output

    promoted = _run(["rollout", "promote", rollout_id, "--reason", "green", *api, *operator])
    assert promoted.exit_code == 0, promoted.output
    assert "promoted" in promoted.output

    late = _run(["rollout", "rollback", rollout_id, *api, *operator])
    assert late.exit_code == 1 and "not active" in late.output

    history = _run(["rollout", "list", "--model", "steel-yolo", *api, *viewer])
    assert history.exit_code == 0 and rollout_id in history.output and "promoted" in history.output

    r = httpx.get(f"{served.base}/v1/audit", headers={"X-API-Key": keys["viewer"]})
    assert [(a["action"], a["actor"]) for a in r.json()][:2] == [
        ("promote", "cli-operator"),
        ("promote_refused", "cli-operator"),
    ]
    channel.close()
    assert served.stop() == 0
    served.wait_for("stopped", timeout=5)


def test_client_commands_fail_clearly(served: Served) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    unreachable = _run(["stations", "--api", nowhere, "--key", "k"])
    assert unreachable.exit_code == 1
    assert f"cannot reach the API at {nowhere}" in unreachable.output

    no_key = _run(["stations", "--api", served.base])
    assert no_key.exit_code == 1
    assert "401" in no_key.output and "SLIMSPECT_API_KEY" in no_key.output

    bad_id = _run(["rollout", "status", "nope", "--api", served.base, "--key", "ssk_unknown"])
    assert bad_id.exit_code == 1 and "401" in bad_id.output
    assert "Traceback" not in unreachable.output + no_key.output + bad_id.output
