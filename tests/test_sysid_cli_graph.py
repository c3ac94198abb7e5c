"""`twinloop sysid run --graph`: the rollout through twin_node + safety_node + sysid_node."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 Jazzy wheels (pip install -e .[ros])")

from twinloop.sim2real.asid.rollout import load_rollout

pytestmark = pytest.mark.ros

DOMAIN_ID = 1 + (os.getpid() + 91) % 100  # below 102: DDS ports out of the ephemeral range


def test_sysid_run_on_the_graph(tmp_path: Path) -> None:
    out = tmp_path / "rollout.zarr"
    env = {**os.environ, "ROS_DOMAIN_ID": str(DOMAIN_ID), "MUJOCO_GL": "egl",
           "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}  # fmt: skip
    cmd = [sys.executable, "-m", "twinloop", "sysid", "run", "--graph", "--task", "lift_rod",
           "--true", "rod.com_offset=0.05", "--steps", "8", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "through the graph" in proc.stdout
    rollout = load_rollout(out)
    assert rollout.meta["graph"] is True
    assert rollout.steps == int(rollout.meta["approach_steps"]) + 8
