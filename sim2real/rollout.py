"""Run scripted-expert episodes in the twin without ROS (CLI, tests, benchmarks)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from .experts import make_expert
from .twin import Twin

__all__ = ["EpisodeResult", "run_expert_episodes"]


@dataclass(frozen=True)
class EpisodeResult:
    episode: int
    seed: int
    success: bool
    steps: int
    ret: float  # sum of the task's dense reward
    frames: list[np.ndarray] = field(default_factory=list, repr=False)  # when frames were kept


def run_expert_episodes(
    twin: Twin,
    episodes: int,
    *,
    seed: int = 0,
    noise: float = 0.0,
    keep_frames: int = 0,
    on_step: Callable[[int, int], None] | None = None,
) -> Iterator[EpisodeResult]:
    """Yield one result per episode; episode i is seeded ``seed + i``.

    ``keep_frames`` > 0 keeps that many evenly spaced camera frames per episode.
    """
    for i in range(episodes):
        ep_seed = seed + i
        obs = twin.reset(seed=ep_seed)
        expert = make_expert(twin, noise=noise, seed=ep_seed)
        frames = [obs.image] if keep_frames and obs.image is not None else []
        total, success, steps = 0.0, False, 0
        for steps in range(1, twin.task.max_steps + 1):
            result = twin.step(expert.act(twin.privileged_state()))
            total += result.reward
            if keep_frames and result.observation.image is not None:
                frames.append(result.observation.image)
            if on_step is not None:
                on_step(i, steps)
            if result.success:
                success = True
                break
        if keep_frames and frames:
            idx = np.linspace(0, len(frames) - 1, keep_frames).round().astype(int)
            frames = [frames[j] for j in idx]
        yield EpisodeResult(i, ep_seed, success, steps, total, frames)
