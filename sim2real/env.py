"""Gymnasium interface of the twin: image + proprio observations, normalised EE-delta actions."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .errors import TwinError
from .twin import ACTION_DIM, Observation, Twin, TwinConfig

__all__ = ["TwinEnv"]


class TwinEnv(gym.Env[dict[str, np.ndarray], np.ndarray]):
    """The twin as a gymnasium Env.

    Actions are in [-1, 1]^5 and scaled to metric deltas (``max_translation`` per axis for xyz,
    ``max_yaw`` for yaw, the gripper as is). Reward is the task's privileged dense reward in
    [0, 1] (``reward_type="dense"``) or 1 on success else 0 (``"sparse"``). An episode
    terminates on success and is truncated at the task's step budget.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}  # noqa: RUF012 (gymnasium API)

    def __init__(
        self,
        task: str = "push_cube",
        *,
        config: TwinConfig | None = None,
        reward_type: Literal["dense", "sparse"] = "dense",
        render_mode: str | None = "rgb_array",
        params: dict[str, float] | None = None,
    ) -> None:
        if reward_type not in ("dense", "sparse"):
            msg = f"reward_type must be 'dense' or 'sparse', got {reward_type!r}"
            raise TwinError(msg)
        config = replace(config, task=task) if config else TwinConfig(task=task)
        self.twin = Twin(config, params=params)
        self.reward_type = reward_type
        self.render_mode = render_mode
        cam = config.camera
        obs: dict[str, spaces.Space[Any]] = {
            "image": spaces.Box(0, 255, (cam.height, cam.width, 3), np.uint8),
            "proprio": spaces.Box(-np.inf, np.inf, (len(Twin.PROPRIO_NAMES),), np.float32),
        }
        if config.depth:
            obs["depth"] = spaces.Box(0, 65535, (cam.height, cam.width), np.uint16)
        self.observation_space = spaces.Dict(obs)  # type: ignore[assignment]
        self.action_space = spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
        self._scale = np.array([config.max_translation] * 3 + [config.max_yaw, 1.0])
        self._last: Observation | None = None

    def _obs(self, o: Observation) -> dict[str, np.ndarray]:
        out = {"proprio": o.proprio}
        if o.image is not None:
            out["image"] = o.image
        if o.depth is not None:
            out["depth"] = o.depth
        return out

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        if options and "params" in options:
            self.twin.set_params(options["params"])
        if seed is None:  # continue the env's own seeded stream
            seed = int(self.np_random.integers(2**31))
        self._last = self.twin.reset(seed=seed)
        return self._obs(self._last), {"success": False, "params": self.twin.get_params()}

    def step(
        self, action: np.ndarray
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        a = np.asarray(action, dtype=float)
        if a.shape != (ACTION_DIM,) or not np.isfinite(a).all():
            msg = f"action must be {ACTION_DIM} finite values in [-1, 1], got {a.tolist()}"
            raise TwinError(msg)
        result = self.twin.step(np.clip(a, -1.0, 1.0) * self._scale)
        self._last = result.observation
        reward = result.reward if self.reward_type == "dense" else float(result.success)
        info = {"success": result.success, "is_success": result.success, **result.info}
        return self._obs(result.observation), reward, result.success, result.truncated, info

    def render(self) -> np.ndarray | None:
        if self._last is not None and self._last.image is not None:
            return self._last.image
        return self.twin.physics.render()

    def set_params(self, values: dict[str, float]) -> None:
        self.twin.set_params(values)

    def get_params(self) -> dict[str, float]:
        return self.twin.get_params()

    def privileged_state(self) -> dict[str, np.ndarray]:
        return self.twin.privileged_state()

    def close(self) -> None:
        self.twin.close()
