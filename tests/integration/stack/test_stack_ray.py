"""``slimspect up`` with its Ray head: Ray starts on its own ports and temp dir, answers, and
``down`` stops its whole process tree (GCS, raylet, workers, agents)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from stack_harness import process_tree, slimspect, survivors

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

pytest.importorskip("ray")


def test_up_with_ray_and_down(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    result = slimspect("up", "--stations", "0", "--state-dir", str(state_dir), timeout_s=600)
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        recorded = json.loads((state_dir / "stack.json").read_text())
        names = [s["name"] for s in recorded["services"]]
        assert names == ["redis", "s3", "ray", "aggregator", "api"]
        temp_dir = Path(recorded["endpoints"]["ray_temp_dir"])
        assert temp_dir.is_dir() and not temp_dir.is_relative_to("/tmp/ray")
        # Recorded in its own temp dir, so a plain ray.init() elsewhere does not join it.
        address = (temp_dir / "ray_current_cluster").read_text().strip()
        assert recorded["endpoints"]["ray"] == address
        env_sh = (state_dir / "env.sh").read_text()
        assert f"RAY_ADDRESS='{address}'" in env_sh
        assert f"RAY_AUTH_TOKEN_PATH='{recorded['credentials']['ray_token']}'" in env_sh

        status = slimspect("status", "--state-dir", str(state_dir), "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        ray_row = next(r for r in json.loads(status.stdout) if r["name"] == "ray")
        assert ray_row["alive"] and ray_row["answering"]

        # A driver connects through the recorded address and token (as env.sh sets them).
        probe = (
            "import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); "
            "print(ray.get(ray.remote(lambda: 41 + 1).remote())); ray.shutdown()"
        )
        token = recorded["credentials"]["ray_token"]
        env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": token}
        env.pop("RAY_AUTH_TOKEN", None)
        answer = subprocess.run(
            [sys.executable, "-c", probe, recorded["endpoints"]["ray"]],
            env=env,
            check=False, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert answer.stdout.strip().endswith("42"), answer.stderr[-3000:]

        tree = process_tree([s["pid"] for s in recorded["services"]], state_dir)
        ray_pid = names.index("ray")
        assert len(tree) > len(names)  # ray start's GCS, raylet, ... are in the tree
        assert recorded["services"][ray_pid]["pid"] in tree
    finally:
        down = slimspect("down", "--state-dir", str(state_dir))
    assert down.returncode == 0, down.stdout + down.stderr
    assert "stopped: ray" in down.stdout, down.stdout  # on SIGTERM, not killed after a drain
    assert survivors(tree) == []
    assert not temp_dir.exists()
