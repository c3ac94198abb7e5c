"""ASID's exploration rollout through the ROS 2 graph: twin (hidden CoM) + safety + sysid_node.

The twin runs lockstep (realtime false) with rod.com_offset 0.05 the sysid node does not know;
every action goes /twinloop/action -> safety_node -> /twinloop/safe_action -> twin. Replaying the
saved rollout in an in-process twin with the true CoM reproduces the recorded rod poses (the graph
executed exactly the recorded actions, one per twin step); another CoM does not.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 Jazzy wheels (pip install -e .[ros])")

from twinloop.sim2real.asid.rollout import load_rollout, mismatch, replay
from twinloop.sim2real.twin import Twin, TwinConfig
from twinloop_ros.probe import ros_env

from twinloop.graph import Graph, GraphProcesses, NodeSpec, load_graph

pytestmark = pytest.mark.ros

DOMAIN_ID = 1 + (os.getpid() + 71) % 100  # below 102: DDS ports out of the ephemeral range
COM = "rod.com_offset"
TRUE_COM = 0.05
STEPS = 12
SEED = 0  # the rod moves with this seed (asserted)
TWIN = {
    "task": "lift_rod",
    "image_width": 64,
    "image_height": 48,
    "camera_fps": 2.0,
    "realtime": False,
    # lockstep: no idle holds of the twin during the rollout
    "action_timeout_s": 60.0,
    f"params.{COM}": TRUE_COM,
}
SAFETY = {"watchdog_ms": 60_000.0}  # no watchdog holds between lockstep steps


def sysid_graph(out: Path, **sysid: object) -> Graph:
    sim = load_graph("sim")
    node = NodeSpec(
        "sysid",
        "twinloop_ros",
        "sysid_node",
        {"task": "lift_rod", "steps": STEPS, "seed": SEED, "out": str(out), "settle_s": 0.5,
         "step_timeout_s": 10.0, **sysid},
        required=True,
    )  # fmt: skip
    return Graph(
        "sysid",
        (sim.node("twin").with_parameters(TWIN), sim.node("safety").with_parameters(SAFETY), node),
    )


def test_rollout_through_the_graph_replays_exactly(tmp_path: Path) -> None:
    out = tmp_path / "rollout.zarr"
    lines: list[str] = []
    t0 = time.monotonic()
    with GraphProcesses(
        sysid_graph(out),
        env=ros_env(DOMAIN_ID),
        output=lambda n, line: lines.append(f"[{n}] {line}"),
    ) as procs:
        code = procs.wait(timeout=50.0)
        codes = procs.stop()
    elapsed = time.monotonic() - t0
    log = "\n".join(lines[-40:])
    assert code == 0 and codes["sysid"] == 0, log
    assert out.exists(), log
    assert elapsed < 55.0
    rollout = load_rollout(out)
    approach = int(rollout.meta["approach_steps"])
    assert approach > 5 and rollout.steps == approach + STEPS, rollout.meta
    assert rollout.meta["graph"] is True, log
    assert "true_params" not in rollout.meta  # the node does not know them
    assert any("recorded a" in line for line in lines if line.startswith("[sysid]"))
    # the explorer's planar pushes: dz = dyaw = 0 and the gripper closed after the approach
    explore = rollout.actions[approach:]
    assert np.all(explore[:, 2:4] == 0.0) and np.all(explore[:, 4] == 1.0)
    # what was recorded is what the safety layer passed: planar moves limited to its 3 cm
    # (the explorer asks for up to 3 cm per axis, 4.2 cm diagonally)
    assert np.all(np.linalg.norm(rollout.actions[:, :3], axis=1) <= 0.03 + 1e-6)
    assert rollout.meta["clipped_steps"] >= 1, log
    moved = float(np.linalg.norm(rollout.object_pose[-1, :3] - rollout.object_pose[0, :3]))
    assert moved > 0.005, f"the rod did not move ({moved:.4f} m): choose another SEED"

    twin = Twin(TwinConfig(task="lift_rod", render=False))
    try:
        same = mismatch(replay(twin, rollout, {COM: TRUE_COM}), rollout.object_pose)
        other = mismatch(replay(twin, rollout, {COM: -0.05}), rollout.object_pose)
    finally:
        twin.close()
    assert same < 1e-6, same
    assert other > 1e-2, other


def test_sysid_node_times_out_when_the_twin_does_not_answer(tmp_path: Path) -> None:
    """Safety passes the first action but nobody steps: a clear error and exit 1, no file."""
    out = tmp_path / "rollout.zarr"
    sim = load_graph("sim")
    graph = Graph(
        "no_twin",
        (
            sim.node("safety").with_parameters({**SAFETY, "require_state": False}),
            NodeSpec(
                "sysid", "twinloop_ros", "sysid_node",
                {"out": str(out), "reset_service": "", "start_timeout_s": 3.0, "settle_s": 0.0},
                required=True,
            ),
        ),
    )  # fmt: skip
    lines: list[str] = []
    with GraphProcesses(
        graph, env=ros_env(DOMAIN_ID), output=lambda n, line: lines.append(f"[{n}] {line}")
    ) as procs:
        code = procs.wait(timeout=30.0)
    assert code == 1, "\n".join(lines)
    assert any("sysid rollout failed" in line and "/twinloop/sim/state" in line for line in lines)
    assert not out.exists()


def test_sysid_node_fails_clearly_when_the_twin_stops_mid_rollout(tmp_path: Path) -> None:
    """The twin freezes (SIGSTOP) during a long rollout: exit 1 naming the missing answer."""
    out = tmp_path / "rollout.zarr"
    lines: list[str] = []
    graph = sysid_graph(out, steps=100_000, step_timeout_s=2.0)
    with GraphProcesses(
        graph, env=ros_env(DOMAIN_ID), output=lambda n, line: lines.append(f"[{n}] {line}")
    ) as procs:
        deadline = time.monotonic() + 40.0
        while not any("starting the rollout" in line for line in lines):
            assert time.monotonic() < deadline and procs.poll() is None, "\n".join(lines)
            time.sleep(0.05)
        time.sleep(0.3)  # some steps
        twin = procs.pids["twin"]
        os.kill(twin, signal.SIGSTOP)
        try:
            while procs.returncodes()["sysid"] is None:
                assert time.monotonic() < deadline + 20.0, "\n".join(lines[-20:])
                time.sleep(0.05)
        finally:
            os.kill(twin, signal.SIGCONT)
        codes = procs.returncodes()
    assert codes["sysid"] == 1, "\n".join(lines[-20:])
    assert any("the cell stopped answering" in line for line in lines), "\n".join(lines[-20:])
    assert not out.exists()
