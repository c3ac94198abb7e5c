"""Reset-free forward/backward episodes in the twin (RoboFuME)."""

from __future__ import annotations

import numpy as np
import pytest
from twinloop.policy.errors import PolicyError
from twinloop.policy.obs import ObsSpec, default_state_keys, normalize_action
from twinloop.policy.reset_free import TASK_KEY, ResetFreeTwinEnv, add_task_column
from twinloop.sim2real.experts import make_expert

SPEC = ObsSpec(state_keys=(*default_state_keys("open_drawer", privileged=True), TASK_KEY))


def _expert_attempt(env: ResetFreeTwinEnv, seed: int) -> tuple[bool, int]:
    expert = make_expert(env.twin, seed=seed)
    for step in range(env.max_steps):
        metric = expert.act(env.twin.privileged_state())
        _, _reward, terminated, truncated, info = env.step(
            normalize_action(metric, SPEC.action_scale)
        )
        if terminated or truncated:
            return bool(info["success"]), step + 1
    return False, env.max_steps


def test_success_switches_task_without_reset() -> None:
    env = ResetFreeTwinEnv("open_drawer", "close_drawer", SPEC, reset_every=3, seed=0)
    try:
        obs = env.reset()
        np.testing.assert_array_equal(obs["state"][-2:], [1.0, 0.0])  # forward task
        ok, _ = _expert_attempt(env, 0)
        assert ok and env.twin.task.name == "open_drawer"
        opening = float(env.twin.privileged_state()["drawer_opening"])
        obs = env.reset()  # success: switch to the backward task, keep the drawer where it is
        assert env.twin.task.name == "close_drawer" and env.phase == 1
        np.testing.assert_array_equal(obs["state"][-2:], [0.0, 1.0])
        assert float(env.twin.privileged_state()["drawer_opening"]) == pytest.approx(opening)
        ok, _ = _expert_attempt(env, 1)
        assert ok
        env.reset()  # third attempt: forward again
        assert env.phase == 0 and env.stats.switches == 2
        env.reset()  # reset_every=3 attempts since the reset: a full reset now
        assert env.stats.resets == 2 and env.phase == 0
        assert env.stats.successes == [1, 1] and env.stats.episodes == [3, 1]
    finally:
        env.close()


def test_failed_attempt_continues_the_same_task() -> None:
    env = ResetFreeTwinEnv("open_drawer", "close_drawer", SPEC, reset_every=0, seed=0)
    try:
        env.reset()
        hold = np.zeros(5, dtype=np.float32)
        for _ in range(env.max_steps):
            _, reward, _terminated, truncated, info = env.step(hold)
            assert reward == -1.0
            if truncated:
                break
        assert truncated and not info["success"]
        env.reset()
        assert env.phase == 0 and env.stats.resets == 1 and env.stats.switches == 0
        assert env.twin.steps == 0  # a fresh step budget, no physics reset
    finally:
        env.close()


def test_bad_configs_are_refused() -> None:
    with pytest.raises(PolicyError, match="task_onehot"):
        ResetFreeTwinEnv("open_drawer", "close_drawer", ObsSpec(), seed=0)
    with pytest.raises(PolicyError, match="different objects"):
        ResetFreeTwinEnv("open_drawer", "push_cube", SPEC, seed=0)
    with pytest.raises(PolicyError, match="reset_every"):
        ResetFreeTwinEnv("open_drawer", "close_drawer", SPEC, reset_every=-1, seed=0)


def test_add_task_column() -> None:
    rows = add_task_column({"a": np.zeros((3, 2))}, 1)
    np.testing.assert_array_equal(rows[TASK_KEY], [[0, 1]] * 3)
