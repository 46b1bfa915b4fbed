"""`slimspect data synth` refuses to overwrite a folder unless told (the demo: test_stack_story.py)."""

from __future__ import annotations

import subprocess
import sys


def test_synth_refuses_a_used_folder_unless_told(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    cmd = [
        sys.executable,
        "-m",
        "slimspect.cli",
        "data",
        "synth",
        "--out",
        str(out),
        "--images",
        "4",
        "--size",
        "64",
    ]
    refused = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert refused.returncode == 1
    assert "--overwrite" in refused.stderr and (out / "keep.txt").exists()
    done = subprocess.run([*cmd, "--overwrite"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert not (out / "keep.txt").exists()
