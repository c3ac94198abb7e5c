"""RolloutExecutor (the ROS-free core of sysid_node) against the in-process collect_rollout."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from twinloop.sim2real.asid.executor import CellObservation, RolloutExecutor, tracked_body
from twinloop.sim2real.asid.explore import RandomExplorer, collect_rollout
from twinloop.sim2real.asid.rollout import ee_pose, object_pose
from twinloop.sim2real.errors import TwinError
from twinloop.sim2real.twin import Twin, TwinConfig

COM = "rod.com_offset"


@pytest.fixture
def rod_twin() -> Iterator[Twin]:
    twin = Twin(TwinConfig(task="lift_rod", render=False), params={COM: 0.05})
    yield twin
    twin.close()


def observe(twin: Twin, body: str) -> CellObservation:
    """What the twin's /twinloop/sim/state carries, as the sysid node reads it."""
    state = twin.privileged_state()
    return CellObservation(
        ee_pos=state["ee_pos"],
        ee_yaw=float(state["ee_yaw"]),
        gripper_opening=float(state["gripper_opening"]),
        object_pose=np.concatenate([state[f"{body}_pos"], state[f"{body}_quat"]]),
    )


def drive(twin: Twin, executor: RolloutExecutor, seed: int) -> None:
    body = executor.body
    twin.reset(seed=seed)
    executor.start(ee_pose(twin), object_pose(twin, body))
    while (action := executor.next_action(observe(twin, body))) is not None:
        twin.step(action)
        executor.record(action, ee_pose(twin), object_pose(twin, body))


@pytest.mark.parametrize(("task", "seed"), [("lift_rod", 0), ("lift_rod", 3), ("push_cube", 1)])
def test_executor_gives_the_rollout_collect_rollout_gives(task: str, seed: int) -> None:
    twin = Twin(TwinConfig(task=task, render=False))
    try:
        expected = collect_rollout(twin, RandomExplorer(seed), 12, seed=seed, meta={"k": 1})
        executor = RolloutExecutor(RandomExplorer(seed), 12, task=task, seed=seed)
        assert executor.phase == "idle"
        drive(twin, executor, seed)
    finally:
        twin.close()
    assert executor.done and executor.phase == "done"
    got = executor.rollout({"k": 1})
    approach = expected.meta["approach_steps"]
    assert approach > 5 and got.steps == expected.steps == approach + 12
    assert np.array_equal(got.actions, expected.actions)
    np.testing.assert_allclose(got.object_pose, expected.object_pose, rtol=0, atol=1e-9)
    np.testing.assert_allclose(got.ee_pose, expected.ee_pose, rtol=0, atol=1e-9)
    assert dict(got.meta) == dict(expected.meta)
    assert (got.task, got.control_hz, got.robot_profile) == (
        expected.task, expected.control_hz, expected.robot_profile
    )  # fmt: skip


def test_executor_records_what_was_executed_not_what_was_asked(rod_twin: Twin) -> None:
    executor = RolloutExecutor(RandomExplorer(0), 3, task="lift_rod", seed=0)
    rod_twin.reset(seed=0)
    executor.start(ee_pose(rod_twin), object_pose(rod_twin, "rod"))
    asked = executor.next_action(observe(rod_twin, "rod"))
    assert asked is not None
    clipped = np.clip(asked, -0.01, 0.01)
    rod_twin.step(clipped)
    executor.record(clipped, ee_pose(rod_twin), object_pose(rod_twin, "rod"))
    assert np.array_equal(executor.rollout().actions[0], clipped)
    assert not np.array_equal(clipped, asked)


def test_executor_protocol_errors(rod_twin: Twin) -> None:
    executor = RolloutExecutor(RandomExplorer(0), 2, task="lift_rod")
    rod_twin.reset(seed=0)
    obs = observe(rod_twin, "rod")
    with pytest.raises(TwinError, match="start"):
        executor.next_action(obs)
    with pytest.raises(TwinError, match="nothing recorded"):
        executor.rollout()
    executor.start(ee_pose(rod_twin), object_pose(rod_twin, "rod"))
    with pytest.raises(TwinError, match="started already"):
        executor.start(ee_pose(rod_twin), object_pose(rod_twin, "rod"))
    with pytest.raises(TwinError, match="without an action"):
        executor.record(np.zeros(5), ee_pose(rod_twin), object_pose(rod_twin, "rod"))
    assert executor.next_action(obs) is not None
    with pytest.raises(TwinError, match="not recorded"):
        executor.next_action(obs)
    with pytest.raises(TwinError, match="executed action must be 5 finite"):
        executor.record(np.array([0.0, 0.0, np.nan, 0.0, 1.0]), np.zeros(7), np.zeros(7))
    with pytest.raises(TwinError, match="steps >= 1"):
        RolloutExecutor(RandomExplorer(0), 0, task="lift_rod")
    with pytest.raises(TwinError, match="supports the tasks"):
        tracked_body("open_drawer")
    with pytest.raises(TwinError, match="object_pose must be 7"):
        CellObservation(np.zeros(3), 0.0, 0.0, np.zeros(6))
    with pytest.raises(TwinError, match="ee_yaw must be a finite"):
        CellObservation(np.zeros(3), float("nan"), 0.0, np.zeros(7))
