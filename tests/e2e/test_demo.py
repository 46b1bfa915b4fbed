"""`slimspect demo` runs its story end to end, and runs again in the same folder."""

from __future__ import annotations

import subprocess
import sys

import cv2


def run_demo(workdir):
    return subprocess.run(
        [sys.executable, "-m", "slimspect.cli", "demo", "--workdir", str(workdir),
         "--images", "20", "--size", "64", "--seed", "3"],
        capture_output=True, text=True, timeout=300, check=False,
    )


def test_demo_runs_and_reruns(tmp_path):
    for _ in range(2):
        result = run_demo(tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "OK: 20 images" in result.stdout
        assert "demo finished" in result.stdout
    plot = cv2.imread(str(tmp_path / "stats.png"))
    assert plot is not None and plot.shape[0] > 100
    assert (tmp_path / "data" / "data.yaml").exists()


def test_synth_refuses_a_used_folder_unless_told(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    cmd = [sys.executable, "-m", "slimspect.cli", "data", "synth", "--out", str(out),
           "--images", "4", "--size", "64"]
    refused = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert refused.returncode == 1
    assert "--overwrite" in refused.stderr and (out / "keep.txt").exists()
    done = subprocess.run([*cmd, "--overwrite"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert not (out / "keep.txt").exists()
