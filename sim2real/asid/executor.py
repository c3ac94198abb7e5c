"""The exploration rollout as a stateful core: observations in, metric actions out (ROS-free).

:class:`RolloutExecutor` runs what :func:`.explore.collect_rollout` runs in-process (the scripted
approach to a pre-contact pose, then ``steps`` explorer steps), but driven from outside: a caller
(the ROS 2 ``sysid_node``, a robot driver, a test with an in-process twin) feeds it what the cell
observes and executes the actions it returns::

    ex = RolloutExecutor(explorer, steps, task="lift_rod", seed=0)
    ex.start(ee_pose7, object_pose7)                 # the poses before the first action
    while (action := ex.next_action(obs)) is not None:
        executed = execute(action)                  # e.g. what the safety layer passed
        ex.record(executed, ee_pose7, object_pose7)  # the poses after the step
        obs = ...
    rollout = ex.rollout(meta)

The rollout holds what was *executed* (``record``'s action), so it replays exactly what the cell
did even where a safety layer clipped the request.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from twinloop.sim2real.errors import TwinError
from twinloop.sim2real.twin import ACTION_DIM

from .explore import ApproachController, Explorer, observation_from, to_twin_action
from .rollout import SysIdRollout

__all__ = ["TRACKED_BODIES", "CellObservation", "RolloutExecutor", "tracked_body"]

# The tracked (free-floating) object of each task system identification supports.
TRACKED_BODIES = {"push_cube": "cube", "lift_rod": "rod"}


def tracked_body(task: str) -> str:
    """The object whose pose a rollout on ``task`` tracks."""
    try:
        return TRACKED_BODIES[task]
    except KeyError:
        msg = (
            f"system identification supports the tasks {sorted(TRACKED_BODIES)} (a free-floating "
            f"object to track), got {task!r}"
        )
        raise TwinError(msg) from None


def _vector(name: str, value: Any, size: int) -> np.ndarray:
    x = np.asarray(value, dtype=np.float64).reshape(-1)
    if x.shape != (size,) or not np.isfinite(x).all():
        msg = f"{name} must be {size} finite numbers, got {np.asarray(value).tolist()}"
        raise TwinError(msg)
    return x


@dataclass(frozen=True)
class CellObservation:
    """What the cell observes at one step: the hand (position, yaw, gripper opening) and the
    tracked object's pose (position + wxyz quaternion; a pose tracker on the robot)."""

    ee_pos: np.ndarray  # (3,) m
    ee_yaw: float  # rad
    gripper_opening: float  # m
    object_pose: np.ndarray  # (7,)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ee_pos", _vector("ee_pos", self.ee_pos, 3))
        object.__setattr__(self, "object_pose", _vector("object_pose", self.object_pose, 7))
        for name in ("ee_yaw", "gripper_opening"):
            value = float(getattr(self, name))
            if not math.isfinite(value):
                msg = f"{name} must be a finite number, got {value}"
                raise TwinError(msg)
            object.__setattr__(self, name, value)

    def proprio(self) -> np.ndarray:
        """[ee_x, ee_y, ee_z, sin yaw, cos yaw, gripper_opening], as ``Twin.proprio()``."""
        yaw = self.ee_yaw
        return np.array(
            [*self.ee_pos, math.sin(yaw), math.cos(yaw), self.gripper_opening], dtype=np.float32
        )


class RolloutExecutor:
    """Approach, then ``steps`` explorer steps; one :meth:`next_action` per :meth:`record`."""

    def __init__(
        self,
        explorer: Explorer,
        steps: int,
        *,
        task: str,
        seed: int = 0,
        control_hz: float = 10.0,
        robot_profile: str = "panda",
    ) -> None:
        if steps < 1:
            msg = f"a rollout needs steps >= 1, got {steps}"
            raise TwinError(msg)
        if not control_hz > 0:
            msg = f"control_hz must be > 0, got {control_hz}"
            raise TwinError(msg)
        self.explorer = explorer
        self.steps = int(steps)
        self.task = task
        self.body = tracked_body(task)
        self.seed = int(seed)
        self.control_hz = float(control_hz)
        self.robot_profile = robot_profile
        self._approach: ApproachController | None = None
        self._actions: list[np.ndarray] = []
        self._ee: list[np.ndarray] = []
        self._obj: list[np.ndarray] = []
        self._pending: np.ndarray | None = None  # returned by next_action, not yet recorded
        self._approach_steps: int | None = None  # set when the approach is over
        self._explored = 0

    # ----- state ------------------------------------------------------------------------------
    @property
    def phase(self) -> str:
        """``idle`` (before start), ``approach``, ``explore`` or ``done``."""
        if self._approach is None:
            return "idle"
        if self._approach_steps is None:
            return "approach"
        return "done" if self._explored >= self.steps else "explore"

    @property
    def recorded(self) -> int:
        """Actions recorded so far."""
        return len(self._actions)

    @property
    def done(self) -> bool:
        return self.phase == "done"

    # ----- driving ----------------------------------------------------------------------------
    def start(self, ee_pose: np.ndarray, object_pose: np.ndarray) -> None:
        """The poses before the first action (EE and object, position + wxyz quaternion)."""
        if self._approach is not None:
            msg = "this rollout has started already; make a new RolloutExecutor"
            raise TwinError(msg)
        obj = _vector("object_pose", object_pose, 7)
        self._ee.append(_vector("ee_pose", ee_pose, 7))
        self._obj.append(obj)
        self._approach = ApproachController(self.body, obj, np.random.default_rng(self.seed))

    def next_action(self, obs: CellObservation) -> np.ndarray | None:
        """The next metric action ``[dx, dy, dz, dyaw, gripper]``, or None when the rollout is
        over. Each action must be :meth:`record`-ed before the next is asked for."""
        if self._approach is None:
            msg = "call start() with the initial poses before asking for actions"
            raise TwinError(msg)
        if self._pending is not None:
            msg = "the previous action was not recorded: call record() after every step"
            raise TwinError(msg)
        action: np.ndarray | None = None
        if self._approach_steps is None:
            action = self._approach(obs.ee_pos)
            if action is None:
                self._approach_steps = len(self._actions)
        if action is None and self._explored < self.steps:
            o = observation_from(
                obs.proprio(), obs.object_pose, obs.ee_pos, self._explored, self.steps
            )
            action = to_twin_action(self.explorer(o), self.explorer.dims)
        self._pending = action
        return None if action is None else action.copy()

    def record(
        self, executed_action: np.ndarray, ee_pose: np.ndarray, object_pose: np.ndarray
    ) -> None:
        """The action the cell executed for the last :meth:`next_action` and the poses after it."""
        if self._pending is None:
            msg = "record() without an action from next_action()"
            raise TwinError(msg)
        a = _vector("executed action", executed_action, ACTION_DIM)
        ee, obj = _vector("ee_pose", ee_pose, 7), _vector("object_pose", object_pose, 7)
        self._actions.append(a)
        self._ee.append(ee)
        self._obj.append(obj)
        self._pending = None
        if self._approach_steps is not None:
            self._explored += 1

    def rollout(self, meta: Mapping[str, Any] | None = None) -> SysIdRollout:
        """The recorded rollout (provenance like :func:`.explore.collect_rollout`'s)."""
        if not self._actions:
            msg = "nothing recorded yet: a rollout needs at least one executed action"
            raise TwinError(msg)
        approach_steps = (
            len(self._actions) if self._approach_steps is None else self._approach_steps
        )
        info = {
            "explorer": self.explorer.name,
            "seed": self.seed,
            "approach_steps": approach_steps,
            **dict(meta or {}),
        }
        return SysIdRollout(
            task=self.task,
            control_hz=self.control_hz,
            robot_profile=self.robot_profile,
            actions=np.asarray(self._actions),
            ee_pose=np.asarray(self._ee),
            object_pose=np.asarray(self._obj),
            meta=info,
        )
