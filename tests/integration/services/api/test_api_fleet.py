"""``/v1/stations``, ``/v1/rollouts`` and ``/v1/audit`` over the real rollout service, with
heartbeats sent to the Fleet gRPC server and events through the aggregator."""

from __future__ import annotations

from typing import Any

import pytest
from aggregator_harness import new_namespace, run_async
from api_harness import Sent, fleet_api, heartbeat, now_ms, send_through_aggregator

pytestmark = pytest.mark.timeout(120)


def test_stations_merge_heartbeats_and_events(scratch_url: str) -> None:
    ns = new_namespace()
    both, events_only, beats_only = ns.station(0), ns.station(1), ns.station(2)
    t = now_ms() - 5000
    sent = [
        Sent(both, "e1", "cam0", t, ("scratches",), (0.5,), False, 1),
        Sent(events_only, "e2", "cam1", t + 1, ("pitted",), (0.75,), True, 1),
    ]
    run_async(send_through_aggregator(scratch_url, ns, sent))

    async def main() -> dict[str, Any]:
        async with fleet_api(scratch_url) as (api, fleet):
            await fleet.beat(heartbeat(both, "1.0.0", fps=9.5))
            await fleet.beat(heartbeat(beats_only, "1.0.0"))
            async with api.client(api.viewer) as http:
                return {
                    "all": (await http.get("/v1/stations")).json(),
                    "one": (await http.get(f"/v1/stations/{events_only}")).json(),
                    "none": await http.get(f"/v1/stations/{ns.station(7)}"),
                }

    out = run_async(main())
    rows = {s["station"]: s for s in out["all"]}
    assert list(rows) == [both, events_only, beats_only]
    assert rows[both]["status"] == "online"
    assert rows[both]["last_event_ms"] == t
    assert rows[both]["fleet"]["fps"] == 9.5
    assert rows[both]["model_version"] == "1.0.0"
    assert rows[events_only]["status"] == "no heartbeat"
    assert rows[events_only]["fleet"] is None and rows[events_only]["last_heartbeat_ms"] is None
    assert (rows[events_only]["model_name"], rows[events_only]["model_version"]) == (
        "steel-yolo",
        "1.0.0",
    )
    assert rows[beats_only]["last_event_ms"] is None
    assert rows[beats_only]["last_heartbeat_ms"] is not None
    assert out["one"] == rows[events_only]
    assert out["none"].status_code == 404


def test_rollout_lifecycle_with_roles_and_audit(scratch_url: str) -> None:
    ns = new_namespace()
    canary = ns.station(0)

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with fleet_api(scratch_url) as (api, fleet):
            await fleet.beat(heartbeat(canary, "1.0.0", fps=10))
            viewer, operator = api.client(api.viewer), api.client(api.operator)
            async with viewer, operator:
                body = {"model_name": "steel-yolo", "version": "1.1.0", "stations": [canary]}
                out["viewer_start"] = await viewer.post("/v1/rollouts", json=body)
                r = await operator.post("/v1/rollouts", json={**body, "reason": "better mAP"})
                out["start"] = r
                rid = r.json()["id"]
                out["early_promote"] = await operator.post(f"/v1/rollouts/{rid}/promote", json={})
                reply = await fleet.beat(heartbeat(canary, "1.0.0", fps=10))
                out["told"] = (reply.model_version, reply.channel)
                await fleet.beat(heartbeat(canary, "1.1.0", fps=10))
                out["progress"] = (await viewer.get(f"/v1/rollouts/{rid}")).json()
                out["viewer_promote"] = await viewer.post(f"/v1/rollouts/{rid}/promote")
                out["promote"] = await operator.post(
                    f"/v1/rollouts/{rid}/promote", json={"reason": "looks good"}
                )
                out["promote_again"] = await operator.post(f"/v1/rollouts/{rid}/promote")
                r2 = await operator.post(
                    "/v1/rollouts", json={**body, "version": "1.2.0", "share": None}
                )
                rid2 = r2.json()["id"]
                out["rollback"] = await operator.post(
                    f"/v1/rollouts/{rid2}/rollback", json={"reason": "fps drop"}
                )
                out["list"] = (await viewer.get("/v1/rollouts")).json()
                out["active"] = (
                    await viewer.get("/v1/rollouts", params={"active_only": True})
                ).json()
                out["audit"] = (await viewer.get("/v1/audit")).json()
                out["audit_one"] = (
                    await viewer.get("/v1/audit", params={"rollout_id": rid})
                ).json()
                out["missing"] = await viewer.get("/v1/rollouts/ro-000000000000")
                out["bad_id"] = await viewer.get("/v1/rollouts/nope")
                out["invalid"] = await operator.post(
                    "/v1/rollouts", json={**body, "share": 0.5}
                )  # share AND stations
                out["extra_field"] = await operator.post("/v1/rollouts", json={**body, "x": 1})
                out["ids"] = (rid, rid2)
        return out

    out = run_async(main())
    rid, rid2 = out["ids"]
    assert out["viewer_start"].status_code == 403
    assert "needs operator" in out["viewer_start"].json()["detail"]
    assert out["start"].status_code == 201, out["start"].text
    started = out["start"].json()
    assert (started["state"], started["created_by"], started["reason"]) == (
        "active",
        "test-operator",
        "better mAP",
    )
    assert out["early_promote"].status_code == 409
    assert out["early_promote"].json()["blockers"]
    assert out["told"] == ("1.1.0", "canary")
    progress = out["progress"]
    assert progress["rollout"]["id"] == rid
    assert [s["station"] for s in progress["stations"]] == [canary]
    assert progress["stations"][0]["on_version"] is True
    assert progress["gate"]["verdict"] == "promote"
    assert out["viewer_promote"].status_code == 403
    assert out["promote"].status_code == 200, out["promote"].text
    assert out["promote"].json()["state"] == "promoted"
    assert out["promote_again"].status_code == 409
    assert out["rollback"].status_code == 200 and out["rollback"].json()["state"] == "rolled_back"
    assert [r["id"] for r in out["list"]] == [rid2, rid]
    assert out["active"] == []
    actions = [(a["action"], a["actor"]) for a in out["audit"]]
    assert ("start", "test-operator") in actions
    assert ("promote", "test-operator") in actions
    assert ("rollback", "test-operator") in actions
    assert ("promote_refused", "test-operator") in actions
    assert {a["rollout_id"] for a in out["audit_one"]} == {rid}
    assert out["missing"].status_code == 404
    assert out["bad_id"].status_code == 422
    assert out["invalid"].status_code == 422, out["invalid"].text
    assert out["extra_field"].status_code == 422


def test_without_a_rollout_service_the_routes_say_so(api: Any) -> None:
    async def main() -> Any:
        async with api.client(api.operator) as http:
            return await http.get("/v1/rollouts"), await http.get("/v1/stations")

    rollouts, stations = run_async(main())
    assert rollouts.status_code == 503 and "rollout service" in rollouts.json()["detail"]
    assert stations.status_code == 200  # the event side alone still lists stations
