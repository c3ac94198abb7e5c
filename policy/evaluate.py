"""Success rate of a policy in the twin: deterministic actions, fixed seeds per episode.

Episode ``i`` of every evaluation resets the twin with ``seed + i``, so evaluations at different
points of training see the same initial states and their success rates are comparable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from .errors import PolicyError

__all__ = ["EvalEnv", "EvalResult", "act_np", "evaluate"]


class EvalEnv(Protocol):
    max_steps: int

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]: ...
    def step(
        self, action: np.ndarray
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]: ...


class _Actor(Protocol):
    device: torch.device

    def act(self, obs: dict[str, torch.Tensor], *, deterministic: bool = True) -> torch.Tensor: ...


@dataclass(frozen=True)
class EvalResult:
    success_rate: float  # fraction of episodes that reached success
    mean_return: float  # mean undiscounted return under the env's reward
    mean_length: float  # mean steps per episode
    successes: list[bool]  # per episode, in seed order

    def as_dict(self) -> dict[str, Any]:
        return {
            "success_rate": self.success_rate,
            "mean_return": self.mean_return,
            "mean_length": self.mean_length,
            "successes": list(self.successes),
        }


def act_np(algo: _Actor, obs: Mapping[str, np.ndarray], *, deterministic: bool) -> np.ndarray:
    """One unbatched numpy observation -> one (A,) numpy action in [-1, 1]."""
    batch = {
        key: torch.as_tensor(np.asarray(value)[None]).to(algo.device) for key, value in obs.items()
    }
    action = algo.act(batch, deterministic=deterministic)
    return action[0].detach().cpu().numpy().astype(np.float32)


def evaluate(algo: _Actor, env: EvalEnv, episodes: int, *, seed: int) -> EvalResult:
    """Run ``episodes`` deterministic episodes; episode ``i`` starts from ``seed + i``."""
    if episodes < 1:
        msg = f"evaluate needs episodes >= 1, got {episodes}"
        raise PolicyError(msg)
    successes: list[bool] = []
    returns: list[float] = []
    lengths: list[int] = []
    for i in range(episodes):
        obs = env.reset(seed=seed + i)
        total, steps, success = 0.0, 0, False
        while True:
            obs, reward, terminated, truncated, info = env.step(
                act_np(algo, obs, deterministic=True)
            )
            total += reward
            steps += 1
            success = success or bool(info.get("success", False))
            if terminated or truncated or steps >= env.max_steps:
                break
        successes.append(success)
        returns.append(total)
        lengths.append(steps)
    return EvalResult(
        success_rate=float(np.mean(successes)),
        mean_return=float(np.mean(returns)),
        mean_length=float(np.mean(lengths)),
        successes=successes,
    )
