"""Downstream task of the rod setting: lift the rod level (ASID's rod experiment).

The task policy is the scripted grasp-and-lift of ``lift_rod`` with one free parameter the robot
cannot see: where along the rod to grasp (``grasp_offset``, m from the rod's geometric centre
along its long axis). Lifting off the centre of mass tilts the rod. :func:`tune_grasp` trains that
policy in a twin, i.e. picks the offset with the least tilt there:

- in the *identified* twin (ASID): the twin with the estimated ``rod.com_offset``;
- *domain randomised* (the baseline): the offset with the least mean tilt over twins whose
  parameters are drawn from the prior.

:func:`lift_tilt` deploys a grasp offset on a twin (the robot's stand-in with hidden parameters)
and measures the tilt after the lift.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from twinloop.sim2real.experts import LiftRodExpert, Waypoint
from twinloop.sim2real.tasks import rod_tilt
from twinloop.sim2real.twin import Twin, TwinConfig

__all__ = ["GraspOffsetPolicy", "lift_tilt", "tune_grasp", "tune_grasp_randomized"]

LIFT_STEPS = 60  # the lift_rod episode budget


class GraspOffsetPolicy(LiftRodExpert):
    """The lift expert, grasping at ``rod centre + grasp_offset * axis`` (not at the true CoM)."""

    def __init__(self, grasp_offset: float, config: TwinConfig | None = None) -> None:
        self.grasp_offset = float(grasp_offset)
        super().__init__(config or TwinConfig(task="lift_rod"))

    def plan(self, state: dict[str, np.ndarray]) -> list[Waypoint]:
        state = dict(state)
        state["rod_com"] = state["rod_pos"] + self.grasp_offset * state["rod_axis"]
        return super().plan(state)


FAILED_TILT = 90.0  # deg, reported when the rod was not lifted (a rod left lying is level)
LIFTED_Z = 0.05  # m, the rod's centre of mass must end above this for a lift to count


def lift_tilt(twin: Twin, grasp_offset: float, *, seed: int = 0) -> float:
    """Run the lift with ``grasp_offset`` on ``twin``; the rod's tilt (deg) at the end, or
    FAILED_TILT when the rod did not come up (the grasp missed or slipped)."""
    policy = GraspOffsetPolicy(grasp_offset, twin.config)
    twin.reset(seed=seed)
    for _ in range(LIFT_STEPS):
        twin.step(policy.act(twin.privileged_state()))
    if twin.physics.body_com("rod")[2] < LIFTED_Z:
        return FAILED_TILT
    return rod_tilt(twin.physics)


def _grid(low: float, high: float, n: int) -> np.ndarray:
    return np.linspace(low, high, n)


def tune_grasp(
    params: Mapping[str, float],
    *,
    offsets: Sequence[float] | None = None,
    seeds: Sequence[int] = (0,),
    refine: int = 2,
) -> float:
    """The grasp offset with the least tilt in the twin with ``params`` (coarse grid, refined)."""
    twin = Twin(TwinConfig(task="lift_rod", render=False), params=params)
    try:
        grid = np.asarray(offsets if offsets is not None else _grid(-0.1, 0.1, 11))
        best = float(grid[0])
        for _ in range(refine + 1):
            tilts = [np.mean([lift_tilt(twin, g, seed=s) for s in seeds]) for g in grid]
            best = float(grid[int(np.argmin(tilts))])
            step = float(np.diff(grid).mean()) if len(grid) > 1 else 0.01
            grid = _grid(best - step, best + step, 5)
        return best
    finally:
        twin.close()


def tune_grasp_randomized(
    prior: Mapping[str, tuple[float, float]],
    *,
    draws: int = 8,
    offsets: Sequence[float] | None = None,
    seed: int = 0,
) -> float:
    """Domain randomisation: the offset with the least mean tilt over ``draws`` twins whose
    parameters are sampled from ``prior``."""
    rng = np.random.default_rng(seed)
    samples = [{k: float(rng.uniform(*b)) for k, b in prior.items()} for _ in range(draws)]
    grid = np.asarray(offsets if offsets is not None else _grid(-0.1, 0.1, 21))
    twin = Twin(TwinConfig(task="lift_rod", render=False))
    try:
        mean_tilt = np.zeros(len(grid))
        for i, values in enumerate(samples):
            twin.set_params(values)
            mean_tilt += [lift_tilt(twin, g, seed=i) for g in grid]
        return float(grid[int(np.argmin(mean_tilt))])
    finally:
        twin.close()
