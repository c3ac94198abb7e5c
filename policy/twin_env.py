"""The twin as a policy environment: dataset-layout observations, normalised actions, RL rewards.

Every observation is built the way a recorded dataset row is (``observation_row``) and then
turned into a policy observation with the same :class:`~twinloop.policy.obs.ObsSpec` helpers
the offline buffers use, so one ObsSpec serves datasets, the twin and the robot alike.

Rewards (``reward=``), the conventions of :class:`~twinloop.policy.buffers.RewardSpec`:
``"success"`` -1 per step and 0 with termination on the step that reaches success (RoboFuME);
``"success01"`` 0/1 with termination on success; ``"dense"`` the task's privileged dense reward
in [0, 1] (terminates on success unless ``terminate_on_success=False``).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from .errors import PolicyError
from .obs import ObsSpec, images_from_rows, state_from_rows, unnormalize_action

__all__ = ["REWARDS", "NpObs", "PolicyTwinEnv", "obs_from_row"]

log = logging.getLogger(__name__)

REWARDS = ("success", "success01", "dense")
NpObs = dict[str, np.ndarray]  # "state" (S,) float32, optionally "image" (3, s, s) uint8


def obs_from_row(row: dict[str, np.ndarray], spec: ObsSpec) -> NpObs:
    """One dataset-layout row (unbatched values) -> policy observation (unbatched numpy)."""
    rows = {k: np.asarray(v)[None] for k, v in row.items()}
    obs: NpObs = {"state": state_from_rows(rows, spec)[0]}
    if spec.image_key:
        obs["image"] = images_from_rows(rows, spec)[0]
    return obs


class PolicyTwinEnv:
    """The twin driven by policy actions in [-1, 1]; gym-like ``reset`` / ``step``."""

    def __init__(
        self,
        task: str,
        obs: ObsSpec,
        *,
        reward: str = "success",
        twin_config: Any = None,
        seed: int = 0,
        camera: Any = None,
        terminate_on_success: bool = True,
    ) -> None:
        from twinloop.sim2real.scene import CameraConfig
        from twinloop.sim2real.twin import Twin, TwinConfig

        if reward not in REWARDS:
            msg = f"unknown env reward {reward!r}. Available: {list(REWARDS)}"
            raise PolicyError(msg)
        if obs.image_key and obs.image_key != "image_color":
            msg = f"the twin renders 'image_color', the ObsSpec asks for {obs.image_key!r}"
            raise PolicyError(msg)
        render = bool(obs.image_key)
        cfg = twin_config or TwinConfig(task=task)
        if cfg.task != task:
            msg = f"twin_config is for task {cfg.task!r}, the env for {task!r}"
            raise PolicyError(msg)
        if render and camera is None and twin_config is None:
            side = max(2 * obs.image_size, 64)  # render 2x and area-downsample, like a dataset
            camera = CameraConfig(width=side, height=side)
        replace: dict[str, Any] = {"render": render, "depth": False}
        if camera is not None:
            replace["camera"] = camera
        self.config = dataclasses.replace(cfg, **replace)
        self.spec = obs
        self.reward_kind = reward
        self.terminate_on_success = terminate_on_success
        self.twin = Twin(self.config)
        self.max_steps = int(self.twin.task.max_steps)
        self._seed = seed
        self._episodes = 0
        self._row: dict[str, np.ndarray] | None = None
        first = self.reset(seed)  # also checks the ObsSpec against the twin's rows
        self.state_dim = int(first["state"].shape[0])
        self._episodes = 0

    @property
    def action_dim(self) -> int:
        return self.spec.action_dim

    def _observe(self, row: dict[str, np.ndarray]) -> NpObs:
        return obs_from_row(row, self.spec)

    def _make_row(self, image: np.ndarray | None) -> dict[str, np.ndarray]:
        from twinloop.sim2real.record import observation_row

        self._row = observation_row(self.twin, image)
        return self._row

    def reset(self, seed: int | None = None) -> NpObs:
        """Start an episode (``seed`` None: the env's seed + the episode count)."""
        if seed is None:
            seed = self._seed + self._episodes
        self._episodes += 1
        observation = self.twin.reset(seed=seed)
        return self._observe(self._make_row(observation.image))

    def step(self, action: np.ndarray) -> tuple[NpObs, float, bool, bool, dict[str, Any]]:
        """Apply a normalised action; returns (obs, reward, terminated, truncated, info).

        ``info``: ``success``, ``progress`` (dense task reward), ``steps`` and ``row`` (the
        dataset-layout row of the new observation, for reward models).
        """
        a = np.asarray(action, dtype=np.float32).reshape(-1)
        if a.shape != (self.action_dim,) or not np.isfinite(a).all():
            msg = f"action must be {self.action_dim} finite values in [-1, 1], got {a.tolist()}"
            raise PolicyError(msg)
        metric = unnormalize_action(np.clip(a, -1.0, 1.0), self.spec.action_scale)
        result = self.twin.step(metric.astype(np.float64))
        row = self._make_row(result.observation.image)
        success = bool(result.success)
        if self.reward_kind == "success":
            reward = 0.0 if success else -1.0
        elif self.reward_kind == "success01":
            reward = 1.0 if success else 0.0
        else:
            reward = float(result.reward)
        terminated = success and (self.terminate_on_success or self.reward_kind != "dense")
        truncated = not terminated and self.twin.steps >= self.max_steps
        info = {
            "success": success,
            "progress": float(result.reward),
            "steps": self.twin.steps,
            "row": row,
        }
        return self._observe(row), reward, terminated, truncated, info

    def close(self) -> None:
        self.twin.close()

    def __enter__(self) -> PolicyTwinEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
