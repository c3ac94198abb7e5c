"""Tasks of the cell: reset distribution, success predicate, dense reward, privileged state.

Like dm_control's Task layer: a task reads and writes the simulation only through Physics and
takes its randomness from the generator it is handed.
"""

from __future__ import annotations

import math
from typing import ClassVar, Protocol

import numpy as np

from .errors import TwinError
from .physics import Physics
from .scene import CUBE_HALF, ROD_RADIUS, quat_yaw

__all__ = ["TASKS", "TASK_PAIRS", "Task", "make_task", "rod_tilt"]


class Task(Protocol):
    name: str
    objects: tuple[str, ...]
    max_steps: int
    text: str  # the task sentence given to VLMs

    def initialize_episode(self, physics: Physics, rng: np.random.Generator) -> None: ...
    def success(self, physics: Physics) -> bool: ...
    def reward(self, physics: Physics) -> float: ...
    def privileged_state(self, physics: Physics) -> dict[str, np.ndarray]: ...


class PushCube:
    """Push the red cube onto the green goal disc."""

    name = "push_cube"
    objects: ClassVar[tuple[str, ...]] = ("cube",)
    max_steps = 80
    text = "push the red cube onto the green target"
    success_radius = 0.03  # m, cube centre to goal centre in the table plane

    def initialize_episode(self, physics: Physics, rng: np.random.Generator) -> None:
        cube = np.array([rng.uniform(0.40, 0.52), rng.uniform(-0.12, -0.05), CUBE_HALF])
        physics.set_free_pose("cube_joint", cube, quat_yaw(rng.uniform(-0.4, 0.4)))
        goal = [cube[0] + rng.uniform(-0.04, 0.04), cube[1] + rng.uniform(0.15, 0.2), 0.0005]
        physics.model.site("goal").pos[:] = goal

    def _distance(self, physics: Physics) -> float:
        diff = physics.body_pos("cube")[:2] - physics.site_pos("goal")[:2]
        return float(np.linalg.norm(diff))

    def success(self, physics: Physics) -> bool:
        return self._distance(physics) < self.success_radius

    def reward(self, physics: Physics) -> float:
        reach = float(np.linalg.norm(physics.ee_pos() - physics.body_pos("cube")))
        return 0.8 * (1 - math.tanh(10 * self._distance(physics))) + 0.2 * (
            1 - math.tanh(10 * reach)
        )

    def privileged_state(self, physics: Physics) -> dict[str, np.ndarray]:
        return {
            "cube_pos": physics.body_pos("cube"),
            "cube_quat": physics.body_quat("cube"),
            "goal_pos": physics.site_pos("goal"),
        }


class _DrawerTask:
    objects: ClassVar[tuple[str, ...]] = ("drawer",)
    max_steps = 60

    def opening(self, physics: Physics) -> float:
        return physics.joint_qpos("drawer_joint")

    def travel(self, physics: Physics) -> float:
        jid = physics.model.joint("drawer_joint").id
        return float(physics.model.jnt_range[jid, 1])

    def privileged_state(self, physics: Physics) -> dict[str, np.ndarray]:
        return {
            "drawer_opening": np.array(self.opening(physics)),
            "drawer_travel": np.array(self.travel(physics)),
            "handle_pos": physics.site_pos("handle_site"),
        }


class OpenDrawer(_DrawerTask):
    """Pull the drawer open (forward task of the reset-free pair)."""

    name = "open_drawer"
    text = "open the drawer"
    open_fraction = 0.6  # success once the drawer is this far open, of its travel

    def initialize_episode(self, physics: Physics, rng: np.random.Generator) -> None:
        physics.set_joint_qpos("drawer_joint", rng.uniform(0.0, 0.02))

    def success(self, physics: Physics) -> bool:
        return self.opening(physics) >= self.open_fraction * self.travel(physics)

    def reward(self, physics: Physics) -> float:
        frac = self.opening(physics) / (self.open_fraction * self.travel(physics))
        return float(np.clip(frac, 0.0, 1.0))


class CloseDrawer(_DrawerTask):
    """Push the drawer shut (backward task of the reset-free pair)."""

    name = "close_drawer"
    text = "close the drawer"
    closed_below = 0.02  # m

    def initialize_episode(self, physics: Physics, rng: np.random.Generator) -> None:
        travel = self.travel(physics)
        physics.set_joint_qpos("drawer_joint", rng.uniform(0.6 * travel, 0.9 * travel))

    def success(self, physics: Physics) -> bool:
        return self.opening(physics) <= self.closed_below

    def reward(self, physics: Physics) -> float:
        return float(np.clip(1.0 - self.opening(physics) / self.travel(physics), 0.0, 1.0))


def rod_tilt(physics: Physics) -> float:
    """Angle of the rod's long axis from the horizontal, degrees."""
    axis = physics.body_xmat("rod")[:, 1]
    return math.degrees(math.asin(min(1.0, abs(float(axis[2])))))


class LiftRod:
    """Lift the rod without tilting it (ASID's rod setting: grasp at the unknown centre of mass)."""

    name = "lift_rod"
    objects: ClassVar[tuple[str, ...]] = ("rod",)
    max_steps = 60
    text = "lift the blue rod and keep it level"
    lift_height = 0.10  # m, centre of mass above the table
    max_tilt_deg = 5.0

    def initialize_episode(self, physics: Physics, rng: np.random.Generator) -> None:
        pos = np.array([rng.uniform(0.45, 0.55), rng.uniform(-0.05, 0.05), ROD_RADIUS])
        physics.set_free_pose("rod_joint", pos, quat_yaw(rng.uniform(-0.3, 0.3)))

    def success(self, physics: Physics) -> bool:
        high = physics.body_com("rod")[2] >= self.lift_height
        return bool(high and rod_tilt(physics) <= self.max_tilt_deg)

    def reward(self, physics: Physics) -> float:
        height = float(np.clip(physics.body_com("rod")[2] / self.lift_height, 0.0, 1.0))
        level = max(0.0, 1.0 - rod_tilt(physics) / 45.0)
        return height * level

    def privileged_state(self, physics: Physics) -> dict[str, np.ndarray]:
        return {
            "rod_pos": physics.body_pos("rod"),
            "rod_quat": physics.body_quat("rod"),
            "rod_com": physics.body_com("rod"),
            "rod_axis": physics.body_xmat("rod")[:, 1],
            "rod_tilt_deg": np.array(rod_tilt(physics)),
        }


TASKS: dict[str, type] = {t.name: t for t in (PushCube, OpenDrawer, CloseDrawer, LiftRod)}
# Forward/backward pairs for reset-free training.
TASK_PAIRS: dict[str, str] = {"open_drawer": "close_drawer", "close_drawer": "open_drawer"}


def make_task(name: str) -> Task:
    try:
        cls = TASKS[name]
    except KeyError:
        msg = f"unknown task {name!r}. Available: {sorted(TASKS)}"
        raise TwinError(msg) from None
    task: Task = cls()
    return task
