"""Scripted experts: waypoint state machines on the twin's privileged state.

They stand in for a teleoperator in CI and the demo. ``noise`` adds Gaussian noise to the
commanded motion (as a fraction of the largest step), so one expert can produce clean demos,
sloppy demos and failures for the success classifier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import TwinError
from .scene import CUBE_HALF, DRAWER_Z, HANDLE_GAP, ROD_RADIUS
from .twin import Twin, TwinConfig

__all__ = ["EXPERTS", "ScriptedExpert", "make_expert"]

OPEN, CLOSED = -1.0, 1.0


@dataclass
class Waypoint:
    pos: np.ndarray
    yaw: float
    gripper: float
    tol: float = 0.01  # m, reached when this close
    hold: int = 0  # extra steps to stay once reached (e.g. while the fingers close)
    speed: float | None = None  # m per step; None = the twin's largest step


class ScriptedExpert:
    """Base class: follow waypoints planned from privileged state; subclasses plan."""

    task = ""

    def __init__(
        self, config: TwinConfig | None = None, *, noise: float = 0.0, seed: int | None = None
    ) -> None:
        if noise < 0:
            msg = f"expert noise must be >= 0, got {noise}"
            raise TwinError(msg)
        self.config = config or TwinConfig(task=self.task)
        self.noise = noise
        self.rng = np.random.default_rng(seed)
        self.reset()

    def reset(self) -> None:
        self.phase = 0
        self._held = 0

    def plan(self, state: dict[str, np.ndarray]) -> list[Waypoint]:
        raise NotImplementedError

    def act(self, state: dict[str, np.ndarray]) -> np.ndarray:
        """Next metric action ``[dx, dy, dz, dyaw, gripper]`` from the privileged state.

        ``state`` is what :meth:`Twin.privileged_state` returns (it can come over a topic).
        """
        state = {k: np.asarray(v, dtype=float) for k, v in state.items()}
        waypoints = self.plan(state)
        self.phase = min(self.phase, len(waypoints) - 1)
        wp = waypoints[self.phase]
        ee = state["ee_pos"]
        err = wp.pos - ee
        yaw_err = _wrap(wp.yaw - float(state["ee_yaw"]))
        if np.linalg.norm(err) < wp.tol and abs(yaw_err) < 0.05:
            if self._held >= wp.hold:
                self.phase = min(self.phase + 1, len(waypoints) - 1)
                self._held = 0
            else:
                self._held += 1
        cfg = self.config
        step = err.copy()
        norm = float(np.linalg.norm(step))
        limit = min(cfg.max_translation, wp.speed or cfg.max_translation)
        if norm > limit:
            step *= limit / norm
        dyaw = float(np.clip(yaw_err, -cfg.max_yaw, cfg.max_yaw))
        if self.noise > 0:
            step = step + self.rng.normal(0.0, self.noise * cfg.max_translation, 3)
            dyaw += float(self.rng.normal(0.0, self.noise * cfg.max_yaw))
        return np.array([*step, dyaw, wp.gripper])


def _wrap(angle: float) -> float:
    return (angle + math.pi) % (2 * math.pi) - math.pi


def _half_turn(angle: float) -> float:
    """The equivalent hand yaw in [-pi/2, pi/2] for a grasp symmetric under a half turn."""
    angle = _wrap(angle)
    if angle > math.pi / 2:
        angle -= math.pi
    elif angle < -math.pi / 2:
        angle += math.pi
    return angle


class PushCubeExpert(ScriptedExpert):
    task = "push_cube"

    def plan(self, state: dict[str, np.ndarray]) -> list[Waypoint]:
        cube, goal = state["cube_pos"], state["goal_pos"]
        u = goal[:2] - cube[:2]
        u /= max(float(np.linalg.norm(u)), 1e-6)
        behind = cube[:2] - u * (CUBE_HALF + 0.035)
        low = CUBE_HALF * 0.8
        if self.phase <= 1:  # fingers across the push direction, fixed once pushing
            self._yaw = _half_turn(math.atan2(u[1], u[0]))  # closed fingers: symmetric
        yaw = getattr(self, "_yaw", _half_turn(math.atan2(u[1], u[0])))
        # Push along the cube-goal line; the sideways error of the hand from that line is
        # corrected gently (the cube follows the hand, so a hard correction only turns it).
        behind_now = cube[:2] - u * (CUBE_HALF + 0.008)
        ee = state["ee_pos"][:2]
        off = ee - behind_now
        lateral = off - u * float(off @ u)
        if self.phase == 2 and (np.linalg.norm(lateral) > 0.015 or abs(float(off @ u)) > 0.03):
            self.phase = 0  # the cube got away from the hand: go round and line up again
        push = ee - 0.5 * lateral + u * min(0.03, float(np.linalg.norm(goal[:2] - cube[:2])))
        return [
            Waypoint(np.array([*behind, 0.07]), yaw, CLOSED, tol=0.01),
            Waypoint(np.array([*behind, low]), yaw, CLOSED, tol=0.004),
            Waypoint(np.array([*push, low]), yaw, CLOSED, tol=0.0, speed=0.012),
        ]


class OpenDrawerExpert(ScriptedExpert):
    task = "open_drawer"

    def plan(self, state: dict[str, np.ndarray]) -> list[Waypoint]:
        handle = state["handle_pos"]
        hook_x = handle[0] + HANDLE_GAP / 2  # between the bar and the drawer face
        travel = float(state["drawer_travel"])
        if self.phase <= 1:  # pull from where the hook went in
            self._hook_x = hook_x
        x0 = getattr(self, "_hook_x", hook_x)
        return [
            Waypoint(np.array([x0, 0.0, DRAWER_Z + 0.09]), 0.0, CLOSED, tol=0.015),
            Waypoint(np.array([x0, 0.0, DRAWER_Z]), 0.0, CLOSED, tol=0.01),
            Waypoint(np.array([x0 - 0.85 * travel, 0.0, DRAWER_Z]), 0.0, CLOSED, tol=0.005),
        ]


class CloseDrawerExpert(ScriptedExpert):
    task = "close_drawer"

    def plan(self, state: dict[str, np.ndarray]) -> list[Waypoint]:
        handle = state["handle_pos"]
        opening = float(state["drawer_opening"])
        start_x = handle[0] - 0.035  # in front of the bar
        shut_x = start_x + opening + 0.01
        if self.phase == 0:
            self._start_x = start_x
        x0 = getattr(self, "_start_x", start_x)
        return [
            Waypoint(np.array([x0, 0.0, DRAWER_Z + 0.09]), 0.0, CLOSED, tol=0.015),
            Waypoint(np.array([x0, 0.0, DRAWER_Z]), 0.0, CLOSED, tol=0.01),
            Waypoint(np.array([shut_x, 0.0, DRAWER_Z]), 0.0, CLOSED, tol=0.005),
        ]


class LiftRodExpert(ScriptedExpert):
    """Grasps at the rod's true centre of mass (privileged), so it lifts level."""

    task = "lift_rod"

    def plan(self, state: dict[str, np.ndarray]) -> list[Waypoint]:
        com, axis = state["rod_com"], state["rod_axis"]
        rod_yaw = math.atan2(axis[1], axis[0])  # direction of the long axis
        yaw = _half_turn(rod_yaw)  # hand y (finger travel) across the rod: hand yaw = axis angle
        if self.phase <= 1:
            self._grasp = com.copy()
        g = getattr(self, "_grasp", com)
        return [
            Waypoint(np.array([g[0], g[1], 0.12]), yaw, OPEN, tol=0.01),
            Waypoint(np.array([g[0], g[1], ROD_RADIUS + 0.002]), yaw, OPEN, tol=0.006),
            Waypoint(np.array([g[0], g[1], ROD_RADIUS + 0.002]), yaw, CLOSED, tol=0.02, hold=5),
            Waypoint(np.array([g[0], g[1], 0.2]), yaw, CLOSED, tol=0.01),
        ]


EXPERTS: dict[str, type[ScriptedExpert]] = {
    e.task: e for e in (PushCubeExpert, OpenDrawerExpert, CloseDrawerExpert, LiftRodExpert)
}


def make_expert(
    twin_or_task: Twin | str, *, noise: float = 0.0, seed: int | None = None
) -> ScriptedExpert:
    """The scripted expert for a twin's current task, or for a task name (default limits)."""
    if isinstance(twin_or_task, Twin):
        name, config = twin_or_task.task.name, twin_or_task.config
    else:
        name, config = twin_or_task, None
    try:
        cls = EXPERTS[name]
    except KeyError:
        msg = f"no scripted expert for task {name!r}. Available: {sorted(EXPERTS)}"
        raise TwinError(msg) from None
    if config is None:
        config = TwinConfig(task=name)
    return cls(config, noise=noise, seed=seed)
