"""Smoke test for benchmarks/recording.py (--quick --no-write): the recorder over real DDS."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 Jazzy wheels (pip install -e .[ros])")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "recording.py"


@pytest.mark.slow
@pytest.mark.ros
def test_recording_benchmark_quick_run() -> None:
    env = {**os.environ, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--no-write"],
        cwd=ROOT,
        env=env,
        timeout=180,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    out = result.stdout
    assert "| episodes committed | 2 / 2 | all |" in out
    m = re.search(r"steps recorded / expected .*? \| (\d+) / (\d+)", out)
    assert m is not None, out
    recorded, expected = int(m[1]), int(m[2])
    assert expected >= 400  # 2 x 8 s at 30 Hz
    assert recorded >= 0.9 * expected, out  # a loaded CI machine may drop a few; the full run says
    for source in ("image_color", "image_wrist", "joint_states", "action"):
        assert f"| {source} |" in out
