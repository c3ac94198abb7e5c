"""Reset-free training (RoboFuME): a forward and a backward task take turns instead of resets.

When the success signal of the running task fires, the next "episode" starts from where the arm
and objects are, with the other task (open the drawer, then close it, ...). An attempt that runs
out of steps continues the same task, again without a reset. Every ``reset_every`` episodes a
full reset is made as a fallback (on a robot: a manual or scripted reset; 0 = never).

One policy serves both tasks: the row gains a ``task_onehot`` column (forward = [1, 0], backward
= [0, 1]) that an ObsSpec lists in its state keys; demos recorded for either task carry the same
column (:func:`add_task_column`), so offline data and online rows share one layout.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import PolicyError
from .obs import ObsSpec
from .twin_env import NpObs, PolicyTwinEnv

__all__ = [
    "TASK_KEY",
    "ResetFreeStats",
    "ResetFreeTwinEnv",
    "add_task_column",
    "check_tasks",
    "task_onehot",
]

log = logging.getLogger(__name__)

TASK_KEY = "task_onehot"


def task_onehot(index: int, n: int = 2) -> np.ndarray:
    out = np.zeros(n, dtype=np.float32)
    out[index] = 1.0
    return out


def check_tasks(state_keys: tuple[str, ...], tasks: tuple[str, ...]) -> None:
    """A ``task_onehot`` state key needs the distinct task names its one-hot indexes."""
    if TASK_KEY in state_keys and (not tasks or len(set(tasks)) != len(tasks)):
        msg = (
            f"state key {TASK_KEY!r} needs tasks: the distinct task names of the one-hot "
            f"(forward, backward), got {list(tasks)}"
        )
        raise PolicyError(msg)


def add_task_column(
    rows: Mapping[str, np.ndarray], index: int, n: int = 2
) -> dict[str, np.ndarray]:
    """``rows`` (N, ...) with a ``task_onehot`` (N, n) column for task ``index``."""
    length = len(next(iter(rows.values())))
    return dict(rows) | {TASK_KEY: np.tile(task_onehot(index, n), (length, 1))}


@dataclass
class ResetFreeStats:
    episodes: list[int] = field(default_factory=lambda: [0, 0])  # started, per task
    successes: list[int] = field(default_factory=lambda: [0, 0])  # per task
    resets: int = 0  # full resets (the first one included)
    switches: int = 0  # task switches on success

    def as_dict(self) -> dict[str, Any]:
        return {
            "episodes": list(self.episodes),
            "successes": list(self.successes),
            "resets": self.resets,
            "switches": self.switches,
        }


class ResetFreeTwinEnv(PolicyTwinEnv):
    """Forward/backward task pair on one twin; ``reset()`` only resets every ``reset_every``."""

    def __init__(
        self,
        forward: str,
        backward: str,
        obs: ObsSpec,
        *,
        reset_every: int = 10,
        **kwargs: Any,
    ) -> None:
        from twinloop.sim2real.tasks import make_task

        if reset_every < 0:
            msg = f"reset_every must be >= 0 (0 = never), got {reset_every}"
            raise PolicyError(msg)
        if TASK_KEY not in obs.state_keys:
            msg = f"a reset-free policy needs {TASK_KEY!r} in ObsSpec.state_keys, got {obs.state_keys}"
            raise PolicyError(msg)
        if make_task(forward).objects != make_task(backward).objects:
            msg = f"{forward} and {backward} act on different objects: no reset-free pair"
            raise PolicyError(msg)
        self.tasks = (forward, backward)
        self.reset_every = reset_every
        self.phase = 0
        self.stats = ResetFreeStats()
        self._since_reset = 0
        self._last_success = False
        self._started = False
        super().__init__(forward, obs, **kwargs)
        self.stats = ResetFreeStats()  # the probe reset in __init__ does not count
        self._started = False  # the first reset() is a full one

    def _make_row(self, image: np.ndarray | None) -> dict[str, np.ndarray]:
        row = super()._make_row(image)
        row[TASK_KEY] = task_onehot(self.phase)
        self._row = row
        return row

    def reset(self, seed: int | None = None) -> NpObs:
        """Start the next attempt: a full reset when due, else switch task on success."""
        full = not self._started or (self.reset_every and self._since_reset >= self.reset_every)
        if full:
            self.phase = 0
            if self.twin.task.name != self.tasks[0]:
                self.twin.switch_task(self.tasks[0])
            self._started = True
            self._since_reset = 0
            self.stats.resets += 1
            obs = super().reset(seed)
            self.max_steps = int(self.twin.task.max_steps)
        else:
            if self._last_success:
                self.phase = 1 - self.phase
                self.stats.switches += 1
            self.twin.switch_task(self.tasks[self.phase])  # also restarts the step budget
            self.max_steps = int(self.twin.task.max_steps)
            observation = self.twin.observe()
            obs = self._observe(self._make_row(observation.image))
        self._since_reset += 1
        self._last_success = False
        self.stats.episodes[self.phase] += 1
        return obs

    def step(self, action: np.ndarray) -> tuple[NpObs, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = super().step(action)
        if info["success"] and not self._last_success:
            self.stats.successes[self.phase] += 1
        self._last_success = bool(info["success"])
        info["task"] = self.tasks[self.phase]
        info["phase"] = self.phase
        return obs, reward, terminated, truncated, info
