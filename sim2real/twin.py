"""The environment loop of the twin: reset, 10 Hz end-effector-delta control, observations.

Actions are metric end-effector deltas, the same units /twinloop/action carries:
``[dx, dy, dz, dyaw, gripper]`` in m, m, m, rad, and gripper in [-1, 1] (-1 open, +1 closed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import mujoco
import numpy as np

from twinloop.topics import ACTION_NAMES

from .arm import ArmConfig
from .errors import TwinError
from .params import TwinParams
from .physics import CameraIntrinsics, Physics, ee_target_quat
from .scene import CameraConfig, build_scene
from .tasks import TASKS, Task, make_task

__all__ = ["ACTION_NAMES", "Observation", "StepResult", "Twin", "TwinConfig"]

ACTION_DIM = len(ACTION_NAMES)


@dataclass(frozen=True)
class TwinConfig:
    """Everything that defines a twin instance; defaults are the CI cell."""

    task: str = "push_cube"  # one of twinloop.sim2real.tasks.TASKS
    control_hz: float = 10.0  # rate of step(); physics runs at 500 Hz underneath
    max_translation: float = 0.03  # largest end-effector move per step, m
    max_yaw: float = 0.2  # largest yaw change per step, rad
    workspace_low: tuple[float, float, float] = (0.25, -0.35, 0.01)  # EE target box, m
    workspace_high: tuple[float, float, float] = (0.8, 0.35, 0.45)
    yaw_limit: float = 2.0  # |target yaw| bound, rad
    max_lag: float = 0.05  # the target may lead the measured EE by at most this much, m
    depth: bool = False  # render aligned depth with every observation
    render: bool = True  # render the camera image with every observation
    arm: ArmConfig = field(default_factory=ArmConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            msg = f"unknown task {self.task!r}. Available: {sorted(TASKS)}"
            raise TwinError(msg)
        if not 0.5 <= self.control_hz <= 100.0:
            msg = f"control_hz must be in [0.5, 100], got {self.control_hz}"
            raise TwinError(msg)
        if self.max_translation <= 0 or self.max_yaw <= 0:
            msg = "max_translation and max_yaw must be positive"
            raise TwinError(msg)
        if any(lo >= hi for lo, hi in zip(self.workspace_low, self.workspace_high, strict=True)):
            msg = f"workspace_low {self.workspace_low} must be below workspace_high {self.workspace_high}"
            raise TwinError(msg)


@dataclass(frozen=True)
class Observation:
    """What the robot's sensors give: camera image (+ depth) and proprioception."""

    image: np.ndarray | None  # (H, W, 3) uint8
    depth: np.ndarray | None  # (H, W) uint16 mm, aligned to image
    proprio: np.ndarray  # float32, see Twin.PROPRIO_NAMES
    time: float  # simulation time, s


@dataclass(frozen=True)
class StepResult:
    observation: Observation
    reward: float  # the task's privileged dense reward in [0, 1] (for oracles and audits)
    success: bool
    truncated: bool  # the task's step budget ran out
    info: dict[str, Any]


class Twin:
    """A MuJoCo twin of the cell, driven by end-effector deltas at ``control_hz``."""

    PROPRIO_NAMES = ("ee_x", "ee_y", "ee_z", "ee_sin_yaw", "ee_cos_yaw", "gripper_opening")

    def __init__(self, config: TwinConfig | None = None, params: Mapping[str, float] | None = None):
        self.config = config or TwinConfig()
        self.task: Task = make_task(self.config.task)
        spec = build_scene(self.task.objects, arm=self.config.arm, camera=self.config.camera)
        try:
            model = spec.compile()
        except ValueError as err:
            msg = f"the twin's scene does not compile: {err}"
            raise TwinError(msg) from err
        self.physics = Physics(model, self.config.arm, self.config.camera)
        self.params = TwinParams(model, self.task.objects)
        if params:
            self.params.set(params)
        self.n_substeps = max(1, round(1.0 / (self.config.control_hz * model.opt.timestep)))
        self._home = np.asarray(self.config.arm.home, dtype=float)
        self._target_pos = np.zeros(3)
        self._target_yaw = 0.0
        self._q_target = self._home.copy()
        self._grip = -1.0
        self._steps = 0
        self._rng = np.random.default_rng()
        self._low = np.asarray(self.config.workspace_low)
        self._high = np.asarray(self.config.workspace_high)

    # ----- parameters ------------------------------------------------------------------------
    def set_params(self, values: Mapping[str, float]) -> None:
        """Set named physical parameters (all validated before any is written)."""
        self.params.set(values)

    def get_params(self) -> dict[str, float]:
        return self.params.get()

    # ----- episode loop ----------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> Observation:
        """Start an episode; the same seed gives the same initial state."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        phys = self.physics
        mujoco.mj_resetData(phys.model, phys.data)
        phys.reset_arm(self._home, phys.gripper_max_opening())
        self.task.initialize_episode(phys, self._rng)
        mujoco.mj_forward(phys.model, phys.data)
        self._target_pos = phys.ee_pos()
        self._target_yaw = phys.ee_yaw()
        self._q_target = self._home.copy()
        self._grip = -1.0
        self._steps = 0
        for _ in range(self.n_substeps):  # let objects settle on the table
            mujoco.mj_step(phys.model, phys.data)
        return self.observe()

    def switch_task(self, name: str) -> None:
        """Switch to another task on the same objects without a reset (reset-free training)."""
        task = make_task(name)
        if task.objects != self.task.objects:
            msg = f"cannot switch from {self.task.name} to {name}: they use different objects"
            raise TwinError(msg)
        self.task = task
        self._steps = 0

    def check_action(self, action: np.ndarray | list[float]) -> np.ndarray:
        """Validate an action: finite, the right length; raise TwinError otherwise."""
        a = np.asarray(action, dtype=float)
        if a.shape != (ACTION_DIM,):
            msg = f"action must have {ACTION_DIM} values {ACTION_NAMES}, got shape {a.shape}"
            raise TwinError(msg)
        if not np.isfinite(a).all():
            msg = f"action has NaN or inf: {a.tolist()}"
            raise TwinError(msg)
        return a

    def apply_action(self, action: np.ndarray | list[float]) -> None:
        """Turn an EE delta into joint targets (DLS IK) without stepping physics."""
        a = self.check_action(action)
        cfg, phys = self.config, self.physics
        delta = a[:3]
        norm = float(np.linalg.norm(delta))
        if norm > cfg.max_translation:
            delta = delta * (cfg.max_translation / norm)
        ee = phys.ee_pos()
        target = np.clip(self._target_pos + delta, self._low, self._high)
        lead = target - ee  # anti wind-up: the target never runs far ahead of the hand
        lead_norm = float(np.linalg.norm(lead))
        if lead_norm > cfg.max_lag:
            target = ee + lead * (cfg.max_lag / lead_norm)
        self._target_pos = target
        dyaw = float(np.clip(a[3], -cfg.max_yaw, cfg.max_yaw))
        self._target_yaw = float(np.clip(self._target_yaw + dyaw, -cfg.yaw_limit, cfg.yaw_limit))
        self._q_target = phys.solve_ik(
            self._target_pos,
            ee_target_quat(self._target_yaw),
            self._q_target,
            posture=self._home,
        )
        phys.set_arm_targets(self._q_target)
        self._grip = float(np.clip(a[4], -1.0, 1.0))
        phys.set_gripper(phys.gripper_max_opening() * (1.0 - self._grip) / 2.0)

    def step(self, action: np.ndarray | list[float]) -> StepResult:
        """Apply one control step (1 / control_hz seconds of physics) and observe."""
        self.apply_action(action)
        self.advance(self.n_substeps)
        self._steps += 1
        obs = self.observe()
        success = self.task.success(self.physics)
        return StepResult(
            observation=obs,
            reward=self.task.reward(self.physics),
            success=success,
            truncated=self._steps >= self.task.max_steps and not success,
            info={"steps": self._steps, "task": self.task.name},
        )

    def advance(self, n: int) -> None:
        """Run ``n`` physics steps with the current targets (for real-time node loops)."""
        m, d = self.physics.model, self.physics.data
        for _ in range(n):
            mujoco.mj_step(m, d)
        # mj_step leaves positions (xpos, site_xpos) from before its last integration: refresh
        # them so observations, poses and frames all describe the same, current state.
        mujoco.mj_kinematics(m, d)
        if not np.isfinite(d.qpos).all():
            msg = "simulation diverged (non-finite state); reset the twin"
            raise TwinError(msg)

    # ----- observations ----------------------------------------------------------------------
    def proprio(self) -> np.ndarray:
        phys = self.physics
        yaw = phys.ee_yaw()
        return np.array(
            [*phys.ee_pos(), math.sin(yaw), math.cos(yaw), phys.gripper_opening()],
            dtype=np.float32,
        )

    def observe(self) -> Observation:
        cfg = self.config
        return Observation(
            image=self.physics.render() if cfg.render else None,
            depth=self.physics.render_depth() if cfg.depth else None,
            proprio=self.proprio(),
            time=self.physics.time,
        )

    def privileged_state(self) -> dict[str, np.ndarray]:
        """True object state, for scripted experts, oracle rewards and audits."""
        state = self.task.privileged_state(self.physics)
        state["ee_pos"] = self.physics.ee_pos()
        state["ee_yaw"] = np.array(self.physics.ee_yaw())
        state["gripper_opening"] = np.array(self.physics.gripper_opening())
        return state

    def success(self) -> bool:
        return self.task.success(self.physics)

    @property
    def steps(self) -> int:
        return self._steps

    @property
    def intrinsics(self) -> CameraIntrinsics:
        return self.physics.intrinsics()

    def camera_pose(self) -> np.ndarray:
        """Camera-to-world 4x4 (OpenCV axes), see :meth:`Physics.camera_pose`."""
        return self.physics.camera_pose()

    def close(self) -> None:
        self.physics.close()
