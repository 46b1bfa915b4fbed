"""The rollout policy, pure: canary selection and the promotion gate (no Redis)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.rollout import policy
from services.rollout.models import CanaryStation, Rollout

ROOT = Path(__file__).resolve().parents[3]
STATIONS = [f"st-{i:02d}" for i in range(10)]
NOW = 1_750_000_000_000
SOAK_S = 600.0


# ---- canary selection --------------------------------------------------------------------------


def test_bucket_is_the_first_8_bytes_of_sha256():
    # sha256("st-09") starts 1347a5bb0d1d3d99 (printf %s st-09 | sha256sum)
    assert policy.canary_bucket("st-09") == 0x1347A5BB0D1D3D99 / 2**64
    for name in STATIONS + ["line-a", "x"]:
        expected = int(hashlib.sha256(name.encode()).hexdigest()[:16], 16) / 2**64
        assert policy.canary_bucket(name) == expected
        assert 0 <= policy.canary_bucket(name) < 1


@pytest.mark.parametrize(
    ("share", "expected"),
    [
        (0.05, []),
        (0.25, ["st-05", "st-09"]),  # buckets 0.241, 0.075
        (0.5, ["st-05", "st-06", "st-09"]),  # + st-06 at 0.422
        (0.7, ["st-00", "st-05", "st-06", "st-08", "st-09"]),  # + 0.659, 0.509
        (1.0, STATIONS),
    ],
)
def test_canary_membership_is_the_hard_coded_sha256_one(share, expected):
    assert policy.select_canary(STATIONS, share=share, stations=None) == expected


def test_selection_is_the_same_in_another_process_with_another_hash_seed():
    script = (
        "import json, sys\n"
        "from services.rollout import policy\n"
        "names = json.loads(sys.argv[1])\n"
        "print(json.dumps({str(s): policy.select_canary(names, share=s, stations=None)"
        " for s in (0.1, 0.3, 0.5, 0.9)}))\n"
    )
    names = [f"station-{i}" for i in range(200)]
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", script, json.dumps(names)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env=env,
    )
    there = json.loads(out.stdout)
    here = {
        str(s): policy.select_canary(names, share=s, stations=None) for s in (0.1, 0.3, 0.5, 0.9)
    }
    assert there == here
    assert 5 < len(here["0.1"]) < 40  # about 10 % of 200


@given(
    names=st.lists(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True), max_size=50),
    a=st.floats(min_value=0.001, max_value=1.0),
    b=st.floats(min_value=0.001, max_value=1.0),
)
def test_raising_the_share_only_adds_stations(names, a, b):
    low, high = sorted((a, b))
    small = set(policy.select_canary(names, share=low, stations=None))
    large = set(policy.select_canary(names, share=high, stations=None))
    assert small <= large
    assert set(policy.select_canary(names, share=low, stations=None)) == small  # stable


def test_explicit_station_list_replaces_the_share():
    assert policy.in_canary("st-00", share=None, stations=["st-00"])
    assert not policy.in_canary("st-09", share=None, stations=["st-00"])
    assert policy.select_canary(STATIONS, share=None, stations={"st-01", "zz"}) == ["st-01"]
    assert not policy.in_canary("st-09", share=None, stations=None)


# ---- the gate ----------------------------------------------------------------------------------


def rollout(**overrides: Any) -> Rollout:
    values: dict[str, Any] = {
        "id": "ro-0123456789ab",
        "model_name": "steel-yolo",
        "version": "2.0.0",
        "previous_version": "1.0.0",
        "channel": "canary",
        "share": 0.25,
        "stations": None,
        "state": "active",
        "created_at_ms": NOW - 3_600_000,
        "updated_at_ms": NOW - 3_600_000,
        "created_by": "alice",
        "soak_s": SOAK_S,
        "min_fps_ratio": 0.9,
        "reason": "",
    }
    values.update(overrides)
    return Rollout(**values)


def canary(station: str = "st-05", **overrides: Any) -> CanaryStation:
    """A canary station that soaked 700 s on 2.0.0, healthy, at its baseline FPS."""
    values: dict[str, Any] = {
        "station": station,
        "seen": True,
        "online": True,
        "model_version": "2.0.0",
        "on_version": True,
        "since_ms": NOW - 700_000,
        "soaked_s": 700.0,
        "health": "HEALTHY",
        "fps": 30.0,
        "baseline_fps": 30.0,
        "fps_ratio": 1.0,
        "update_status": "UPDATE_OK",
        "failures": [],
        "unhealthy_heartbeats": 0,
    }
    values.update(overrides)
    return CanaryStation(**values)


def decide(*stations: CanaryStation, ro: Rollout | None = None, **tolerances: int):
    return policy.decide(
        ro or rollout(), list(stations), now_ms=NOW, tolerances=policy.Tolerances(**tolerances)
    )


def test_promotes_a_soaked_healthy_canary_at_baseline_fps():
    d = decide(canary("st-05"), canary("st-09", fps=27.5))
    assert d.verdict == "promote" and d.can_promote and not d.blockers
    assert "2 canary stations ran 2.0.0" in d.reason


def test_waits_for_the_soak():
    d = decide(canary(), canary("st-09", since_ms=NOW - 120_000))
    assert d.verdict == "wait" and not d.can_promote
    assert d.blockers == ["st-09 ran 2.0.0 for 120 s of the 600 s soak"]


def test_waits_while_fps_is_below_the_ratio_of_the_baseline():
    d = decide(canary(fps=26.9))  # < 0.9 x 30
    assert d.verdict == "wait"
    assert "below 0.9 x its 30.0 fps on the previous version" in d.reason
    assert decide(canary(fps=27.0)).verdict == "promote"
    # A station never seen on a previous version has no baseline to compare with.
    assert decide(canary(fps=1.0, baseline_fps=None)).verdict == "promote"


def test_waits_for_stations_not_on_the_version_yet():
    d = decide(canary(), canary("st-09", model_version="1.0.0", on_version=False, since_ms=None))
    assert d.verdict == "wait"
    assert d.blockers == ["st-09 runs 1.0.0, not 2.0.0 yet"]


def test_a_failed_update_blocks_promotion_within_the_tolerance():
    failed = canary(
        "st-09",
        model_version="1.0.0",
        on_version=False,
        since_ms=None,
        update_status="UPDATE_FAILED",
        update_reason="signature mismatch",
        failures=["UPDATE_FAILED at 1 (signature mismatch)"],
    )
    d = decide(canary(), failed, max_update_failures=1)
    assert d.verdict == "wait" and "st-09 runs 1.0.0" in d.reason
    # The station runs the version after all, but its last try of it failed.
    d = decide(canary(update_status="UPDATE_ROLLED_BACK"), max_update_failures=1)
    assert d.verdict == "wait" and "last update to 2.0.0 was UPDATE_ROLLED_BACK" in d.reason


def test_rolls_back_when_failures_exceed_the_tolerance():
    failed = canary("st-09", failures=["UPDATE_FAILED at 1 (smoke test: 0 detections)"])
    d = decide(canary(), failed)  # tolerance 0: any failure
    assert d.verdict == "rollback"
    assert d.reason.startswith("1 failed update to 2.0.0 on the canary (tolerated: 0)")
    assert "st-09: UPDATE_FAILED at 1 (smoke test: 0 detections)" in d.reason
    assert decide(canary(), failed, max_update_failures=1).verdict == "promote"


def test_rolls_back_on_repeated_unhealthy_heartbeats():
    assert decide(canary(unhealthy_heartbeats=3), max_unhealthy_heartbeats=3).verdict == "promote"
    d = decide(canary(unhealthy_heartbeats=4), max_unhealthy_heartbeats=3)
    assert d.verdict == "rollback"
    assert d.reason == "st-05 reported UNHEALTHY 4 times on 2.0.0 (tolerated: 3)"


def test_an_unhealthy_station_now_blocks_promotion():
    d = decide(canary(health="UNHEALTHY", unhealthy_heartbeats=1))
    assert d.verdict == "wait" and d.blockers == ["st-05 is UNHEALTHY"]


def test_offline_stations():
    # Offline after running the version: it may have crashed on it, so it blocks.
    d = decide(canary(), canary("st-09", online=False))
    assert d.verdict == "wait" and d.blockers == ["st-09 went offline while running 2.0.0"]
    # Offline before it ever ran it: ignored, the others carry the canary.
    gone = canary("st-09", online=False, on_version=False, since_ms=None, model_version="1.0.0")
    assert decide(canary(), gone).verdict == "promote"
    # But somebody has to have run it.
    d = decide(gone)
    assert d.verdict == "wait" and d.blockers == ["no online canary station runs 2.0.0 yet"]
    assert decide().verdict == "wait"


def test_the_rollouts_own_soak_and_ratio_apply():
    ro = rollout(soak_s=60.0, min_fps_ratio=0.5)
    assert decide(canary(since_ms=NOW - 61_000, fps=16.0), ro=ro).verdict == "promote"
    assert decide(canary(since_ms=NOW - 59_000, fps=16.0), ro=ro).verdict == "wait"
    assert decide(canary(since_ms=NOW - 61_000, fps=14.0), ro=ro).verdict == "wait"
