"""TLS and the station token on both of the agent's channels, against the real aggregator
and the real Fleet server, each with a certificate of a test CA and requiring client
certificates (mutual TLS).

A station with the right CA, its client certificate and its token streams its events and
heartbeats, and takes a model update over the heartbeat. A station that does not trust the
server's CA, one whose certificate another CA signed, and one with a wrong token are each
refused on both channels, with the reason in the agent's status (/healthz): their events
stay in the spool, nothing of theirs is stored, and the fleet never hears of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import pytest
from agent_harness import (
    agent_running,
    fleet_running,
    folder_camera,
    frame_indexes,
    settings_of,
    station_config,
    stored_events,
    wait_until,
    write_frames,
)
from agent_models import MODEL_NAME, publish_good
from aggregator_harness import run_async, running
from cryptography.hazmat.primitives.asymmetric import ec
from test_agent_delivery import http_get
from test_aggregator_ops import _cert, _key_pem, _pem, pki  # noqa: F401 (pki: fixture)

from services.rollout.errors import StationNotFound

pytestmark = [pytest.mark.s3, pytest.mark.timeout(600)]


@pytest.fixture
def rogue(tmp_path: Path) -> dict[str, Path]:
    """Another CA, and a client certificate it signed: trusted by no server here."""
    folder = tmp_path / "rogue"
    folder.mkdir()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("rogue CA", ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    files = {
        "ca.pem": _pem(ca),
        "client.pem": _pem(_cert("client", key, ca, ca_key)),
        "client.key": _key_pem(key),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {name: folder / name for name in files}


def tls_of(ca: Path, cert: Path, key: Path) -> dict[str, str]:
    return {"ca": str(ca), "cert": str(cert), "key": str(key)}


def test_uplink_and_heartbeat_over_mutual_tls_and_what_is_refused(
    tmp_path,
    ns,
    client,
    model_store,
    store_settings,
    tiny_model,
    pki,  # noqa: F811 (fixture)
    rogue,
):
    publish_good(model_store, tiny_model, "1.0.0")
    publish_good(model_store, tiny_model, "2.0.0")
    server_tls = {
        "tls_cert": pki["server.pem"],
        "tls_key": pki["server.key"],
        "tls_ca": pki["ca.pem"],
    }
    good_tls = tls_of(pki["ca.pem"], pki["client.pem"], pki["client.key"])
    refused = {  # station index -> (its TLS, a wrong token?)
        1: ("wrong CA", tls_of(rogue["ca.pem"], pki["client.pem"], pki["client.key"]), False),
        2: (
            "untrusted cert",
            tls_of(pki["ca.pem"], rogue["client.pem"], rogue["client.key"]),
            False,
        ),
        3: ("wrong token", good_tls, True),
    }
    stations = {i: ns.station(i) for i in range(4)}
    for i in stations:
        write_frames(tmp_path / f"scans-{i}", range(4))

    async def scenario():
        async with (
            running(ns, **server_tls) as agg,
            fleet_running(ns, **server_tls) as (fleet, service),
            contextlib.AsyncExitStack() as agents,
        ):

            async def start(i: int, tls: dict[str, str], bad_token: bool = False):
                token = await agg.token(stations[i])
                data = station_config(
                    tmp_path,
                    station=stations[i],
                    token=token + "x" if bad_token else token,
                    uplink_port=agg.port,
                    fleet_port=fleet.port,
                    store=store_settings,
                    cameras=[folder_camera(tmp_path / f"scans-{i}")],
                )
                data["uplink"]["tls"] = tls
                data["fleet"]["tls"] = tls
                return await agents.enter_async_context(agent_running(settings_of(data)))

            good = await start(0, good_tls)
            bad = {i: await start(i, tls, wrong) for i, (_, tls, wrong) in refused.items()}
            await wait_until(
                lambda: len(stored_events(client, stations[0])) >= 4,
                timeout=120,
                what="the TLS station's events",
            )
            await wait_until(
                lambda: _heard_of(service, stations[0]), timeout=60, what="its heartbeat"
            )
            await service.start(MODEL_NAME, "2.0.0", channel="stable", actor="test")
            await wait_until(
                lambda: good.slot.active.version == "2.0.0",
                timeout=120,
                what="the update told over the TLS heartbeat",
            )
            await wait_until(
                lambda: all(
                    a.spool.stats().depth == 4 and a.uplink.last_error and a.heartbeat.last_error
                    for a in bad.values()
                ),
                timeout=60,
                what="the refused stations to have spooled and failed",
            )
            await asyncio.sleep(2.0)  # ample time to have been stored, were anything let in
            errors = {i: (a.uplink.last_error, a.heartbeat.last_error) for i, a in bad.items()}
            healthz = {
                i: await wait_until(
                    lambda a=a: _healthz_with_uplink_error(a),
                    timeout=30,
                    what="/healthz to say why the uplink is down",
                )
                for i, a in bad.items()
            }
            heard = {i: await _heard_of(service, stations[i]) for i in bad}
            depths = {i: a.spool.stats().depth for i, a in bad.items()}
            good_error = (good.uplink.last_error, good.heartbeat.last_error)
        return errors, healthz, heard, depths, good_error

    errors, healthz, heard, depths, good_error = run_async(scenario())
    assert sorted(frame_indexes(stored_events(client, stations[0]))) == [0, 1, 2, 3]
    assert good_error[1] == ""  # its last heartbeat got a reply
    for i, (what, _, _) in refused.items():
        uplink_error, fleet_error = errors[i]
        report = healthz[i]
        assert not stored_events(client, stations[i]), what
        assert depths[i] == 4, what  # kept for when the configuration is fixed
        assert heard[i] is None, what  # the fleet never accepted a heartbeat
        assert report["health"] == "DEGRADED" and report["fleet_error"], (what, report)
        assert f"uplink to the aggregator is down: {report['uplink_error']}" in report["problems"]
        if what == "wrong CA":  # the agent refuses the servers' certificate, and says so
            assert "CERTIFICATE_VERIFY_FAILED" in uplink_error, uplink_error
            assert "CERTIFICATE_VERIFY_FAILED" in report["uplink_error"], report
            assert "CERTIFICATE_VERIFY_FAILED" in fleet_error, fleet_error
        elif what == "untrusted cert":  # the servers close the handshake
            assert uplink_error.startswith(("no connection to", "UNAVAILABLE")), uplink_error
            assert fleet_error.startswith("UNAVAILABLE"), fleet_error
        else:  # TLS is fine; the token is not
            assert uplink_error.startswith("UNAUTHENTICATED"), uplink_error
            assert fleet_error.startswith("UNAUTHENTICATED"), fleet_error


async def _healthz_with_uplink_error(agent) -> dict | None:
    _, body = await asyncio.to_thread(http_get, f"http://127.0.0.1:{agent.http.port}/healthz")
    report = json.loads(body)
    return report if report["uplink_error"] else None


async def _heard_of(service, station: str):
    try:
        return await service.station(station)
    except StationNotFound:
        return None
