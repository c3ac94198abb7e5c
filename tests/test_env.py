"""The gymnasium interface of the twin."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from twinloop.sim2real import ENV_IDS, TwinError
from twinloop.sim2real.env import TwinEnv
from twinloop.sim2real.scene import CameraConfig
from twinloop.sim2real.twin import TwinConfig

SMALL = TwinConfig(camera=CameraConfig(width=64, height=48))


@pytest.mark.parametrize("env_id", sorted(ENV_IDS))
def test_registered_ids_make_valid_envs(env_id: str) -> None:
    env = gym.make(env_id, config=SMALL)
    obs, info = env.reset(seed=0)
    assert obs["image"].shape == (48, 64, 3) and obs["image"].dtype == np.uint8
    assert obs["proprio"].shape == (6,)
    assert info["success"] is False
    assert env.unwrapped.twin.task.name == ENV_IDS[env_id]
    env.close()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_passes_gymnasium_env_checker() -> None:
    env = TwinEnv("lift_rod", config=SMALL)
    check_env(env, skip_render_check=True)


def test_seeded_resets_repeat() -> None:
    env = TwinEnv("push_cube", config=SMALL)
    a, _ = env.reset(seed=5)
    cube_a = env.privileged_state()["cube_pos"]
    env.reset(seed=6)
    b, _ = env.reset(seed=5)
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(cube_a, env.privileged_state()["cube_pos"])


def test_normalised_actions_are_scaled_to_metric_steps() -> None:
    env = TwinEnv("push_cube", config=SMALL)
    env.reset(seed=0)
    before = env.privileged_state()["ee_pos"]
    for _ in range(3):
        env.step(np.array([0, 0, -1.0, 0, -1.0]))
    for _ in range(3):  # let the servos catch up with the target
        env.step(np.array([0, 0, 0, 0, -1.0]))
    moved = before[2] - env.privileged_state()["ee_pos"][2]
    assert moved == pytest.approx(3 * SMALL.max_translation, abs=0.005)


def test_sparse_reward_and_reset_params() -> None:
    env = TwinEnv("push_cube", config=SMALL, reward_type="sparse")
    _, info = env.reset(seed=0, options={"params": {"cube.mass": 0.5}})
    assert info["params"]["cube.mass"] == pytest.approx(0.5)
    _, reward, terminated, truncated, info = env.step(np.zeros(5))
    assert reward == 0.0 and not terminated and not truncated and info["success"] is False


def test_episode_truncates_at_the_step_budget() -> None:
    env = TwinEnv("lift_rod", config=SMALL)
    env.reset(seed=0)
    truncated = False
    for _ in range(env.unwrapped.twin.task.max_steps):
        *_, truncated, _ = env.step(np.zeros(5))
    assert truncated


def test_bad_inputs() -> None:
    with pytest.raises(TwinError, match="reward_type"):
        TwinEnv("push_cube", config=SMALL, reward_type="shaped")  # type: ignore[arg-type]
    env = TwinEnv("push_cube", config=SMALL)
    env.reset(seed=0)
    with pytest.raises(TwinError, match="5 finite values"):
        env.step(np.array([np.nan, 0, 0, 0, 0]))
    with pytest.raises(TwinError, match="5 finite values"):
        env.step(np.zeros(4))
