"""The exploration rollout ASID identifies from: actions and the observed states they produced.

What a robot observes during exploration (and what the twin replays): the commanded actions
(metric EE deltas, the /twinloop/action units), the end-effector pose and the tracked object's
pose (position + wxyz quaternion; on the robot from a pose tracker, in the twin the body's true
pose). A rollout is saved as a one-episode zarr store (the recorder's layout: ``action``,
``ee_pose``, ``object_pose``; attrs: task, control rate, robot profile, provenance), so the
dataset tools read it too.

:func:`replay` runs the same actions open-loop in a twin from the rollout's initial object pose;
:func:`mismatch` compares two object-pose trajectories (position in m, orientation as an angle),
the objective CEM minimises.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mujoco
import numpy as np
from twinloop.sim2real.arm import ArmConfig
from twinloop.sim2real.errors import TwinError
from twinloop.sim2real.twin import ACTION_DIM, Twin

__all__ = [
    "POSITION_SCALE",
    "ROTATION_SCALE",
    "SysIdRollout",
    "arm_name",
    "load_rollout",
    "mismatch",
    "object_body",
    "object_pose",
    "replay",
    "save_rollout",
    "with_pose_noise",
]

log = logging.getLogger(__name__)

POSITION_SCALE = 0.01  # m: a 1 cm position error costs 1
ROTATION_SCALE = math.radians(5.0)  # rad: a 5 degree orientation error costs 1
SCHEMA = "twinloop.sysid_rollout/1"


def route_mujoco_warnings() -> None:
    """MuJoCo prints instability warnings (of perturbed copies, of diverging candidates) to
    stderr and MUJOCO_LOG.TXT: send them to logging (debug) instead."""
    mj_log = logging.getLogger("mujoco")
    mujoco.set_mju_user_warning(lambda text: mj_log.debug("%s", text.strip()))


def arm_name(arm: ArmConfig) -> str:
    """The robot a twin models: "panda" (built in) or the stem of its arm MJCF file."""
    return "panda" if arm.mjcf_path is None else Path(arm.mjcf_path).stem


def object_body(twin: Twin) -> str:
    """The tracked body of the twin's task: its one free-floating object (cube or rod)."""
    model = twin.physics.model
    for name in twin.task.objects:
        body = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, name)
        if body < 0 or model.body_jntnum[body] != 1:
            continue
        if model.jnt_type[model.body_jntadr[body]] == mujoco.mjtJoint.mjJNT_FREE:
            return name
    msg = (
        f"task {twin.task.name!r} has no free-floating object to track (objects "
        f"{twin.task.objects}); system identification supports the cube and rod tasks"
    )
    raise TwinError(msg)


def object_pose(twin: Twin, body: str) -> np.ndarray:
    """(7,) position + wxyz quaternion of ``body`` in the world."""
    return np.concatenate([twin.physics.body_pos(body), twin.physics.body_quat(body)])


def ee_pose(twin: Twin) -> np.ndarray:
    """(7,) end-effector position + wxyz quaternion."""
    return np.concatenate([twin.physics.ee_pos(), twin.physics.ee_quat()])


@dataclass(frozen=True)
class SysIdRollout:
    """One exploration rollout: T actions, T + 1 observed poses (index 0: before the first)."""

    task: str
    control_hz: float
    robot_profile: str
    actions: np.ndarray  # (T, 5) metric EE deltas
    ee_pose: np.ndarray  # (T + 1, 7)
    object_pose: np.ndarray  # (T + 1, 7)
    meta: Mapping[str, Any] = field(default_factory=dict)  # policy, seed, true params if known

    def __post_init__(self) -> None:
        a = np.asarray(self.actions, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != ACTION_DIM or len(a) == 0:
            msg = f"rollout actions must have shape (T >= 1, {ACTION_DIM}), got {a.shape}"
            raise TwinError(msg)
        for name in ("ee_pose", "object_pose"):
            x = np.asarray(getattr(self, name), dtype=np.float64)
            if x.shape != (len(a) + 1, 7):
                msg = f"rollout {name} must have shape ({len(a) + 1}, 7) for {len(a)} actions, got {x.shape}"
                raise TwinError(msg)
            if not np.isfinite(x).all():
                msg = f"rollout {name} has NaN or inf values"
                raise TwinError(msg)
            object.__setattr__(self, name, x)
        if not np.isfinite(a).all():
            msg = "rollout actions have NaN or inf values"
            raise TwinError(msg)
        if not self.control_hz > 0:
            msg = f"rollout control_hz must be > 0, got {self.control_hz}"
            raise TwinError(msg)
        object.__setattr__(self, "actions", a)

    @property
    def steps(self) -> int:
        return len(self.actions)

    def check_twin(self, twin: Twin, *, min_steps: int = 1) -> None:
        """The twin must match how the rollout was recorded: task, control rate, robot profile."""
        cfg = twin.config
        if self.task != cfg.task:
            msg = f"rollout was recorded on task {self.task!r}, the twin runs {cfg.task!r}"
            raise TwinError(msg)
        if not math.isclose(self.control_hz, cfg.control_hz, rel_tol=1e-6):
            msg = (
                f"rollout was recorded at {self.control_hz:g} Hz, the twin steps at "
                f"{cfg.control_hz:g} Hz; replaying it would compare different time steps"
            )
            raise TwinError(msg)
        if self.robot_profile != arm_name(cfg.arm):
            msg = (
                f"rollout was recorded with robot profile {self.robot_profile!r}, the twin models "
                f"{arm_name(cfg.arm)!r}"
            )
            raise TwinError(msg)
        if self.steps < min_steps:
            msg = f"rollout has {self.steps} steps; identification needs at least {min_steps}"
            raise TwinError(msg)


def replay(
    twin: Twin,
    rollout: SysIdRollout,
    params: Mapping[str, float] | None = None,
    *,
    steps: int | None = None,
) -> np.ndarray:
    """Run the rollout's actions open-loop in ``twin`` (with ``params`` set first) from its
    initial object pose; returns the (T + 1, 7) object poses the twin produced (only the first
    ``steps`` actions and steps + 1 poses when given)."""
    if params:
        twin.set_params(params)
    body = object_body(twin)
    twin.reset(seed=0)
    start = rollout.object_pose[0]
    joint = f"{body}_joint"
    twin.physics.set_free_pose(joint, start[:3], start[3:])
    mujoco.mj_forward(twin.physics.model, twin.physics.data)
    actions = rollout.actions if steps is None else rollout.actions[:steps]
    out = np.empty((len(actions) + 1, 7))
    out[0] = object_pose(twin, body)
    for t, action in enumerate(actions):
        twin.apply_action(action)
        twin.advance(twin.n_substeps)
        out[t + 1] = object_pose(twin, body)
    return out


def with_pose_noise(
    rollout: SysIdRollout,
    position_std: float,
    rotation_std_deg: float,
    *,
    seed: int = 0,
) -> SysIdRollout:
    """The rollout as a pose tracker would have reported it: i.i.d. Gaussian noise on every
    object pose after the first (``position_std`` m per axis, a rotation of ``rotation_std_deg``
    deg per axis). The first pose, from which :func:`replay` starts, stays exact: a robot takes it
    from the object at rest (many frames averaged). A twin standing in for the robot observes its
    objects perfectly; without this, identification in twin-vs-twin experiments is noise-free and
    any contact, however slight, pins the parameters down."""
    if not (math.isfinite(position_std) and position_std >= 0):
        msg = f"position_std must be a finite value >= 0 m, got {position_std}"
        raise TwinError(msg)
    if not (math.isfinite(rotation_std_deg) and rotation_std_deg >= 0):
        msg = f"rotation_std_deg must be a finite value >= 0, got {rotation_std_deg}"
        raise TwinError(msg)
    rng = np.random.default_rng(seed)
    poses = rollout.object_pose.copy()
    n = len(poses) - 1
    poses[1:, :3] += rng.normal(0.0, position_std, (n, 3))
    rotvec = rng.normal(0.0, math.radians(rotation_std_deg), (n, 3))
    for i in range(n):
        angle = float(np.linalg.norm(rotvec[i]))
        if angle == 0.0:
            continue
        dq = np.empty(4)
        mujoco.mju_axisAngle2Quat(dq, rotvec[i] / angle, angle)
        out = np.empty(4)
        mujoco.mju_mulQuat(out, dq, poses[i + 1, 3:])
        poses[i + 1, 3:] = out / np.linalg.norm(out)
    meta = {**dict(rollout.meta), "pose_noise": [float(position_std), float(rotation_std_deg)]}
    return dataclasses.replace(rollout, object_pose=poses, meta=meta)


def quat_angle(q1: np.ndarray, q2: np.ndarray) -> np.ndarray:
    """Rotation angle (rad) between unit quaternions, rowwise; sign-invariant."""
    dot = np.abs(np.sum(q1 * q2, axis=-1)) / (
        np.linalg.norm(q1, axis=-1) * np.linalg.norm(q2, axis=-1)
    )
    return 2.0 * np.arccos(np.clip(dot, 0.0, 1.0))


def mismatch(sim: np.ndarray, real: np.ndarray) -> float:
    """Mean over time of |dp|^2 / POSITION_SCALE^2 + angle^2 / ROTATION_SCALE^2."""
    if sim.shape != real.shape or sim.ndim != 2 or sim.shape[1] != 7:
        msg = f"pose trajectories must both be (T + 1, 7), got {sim.shape} and {real.shape}"
        raise TwinError(msg)
    dp = np.sum((sim[:, :3] - real[:, :3]) ** 2, axis=-1) / POSITION_SCALE**2
    da = quat_angle(sim[:, 3:], real[:, 3:]) ** 2 / ROTATION_SCALE**2
    return float(np.mean(dp + da))


# ----- storage -------------------------------------------------------------------------------------
def save_rollout(rollout: SysIdRollout, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write the rollout as a one-episode episode store (zarr). Poses are stored per step with
    the action that followed them; the final pose goes into the attrs."""
    from twinloop.datasets.store import EpisodeStore

    path = Path(path)
    if path.exists() and not overwrite:
        msg = f"{path} exists; pass overwrite=True (--overwrite) to replace it"
        raise TwinError(msg)
    attrs = {
        "schema": SCHEMA,
        "task": rollout.task,
        "control_hz": rollout.control_hz,
        "robot_profile": rollout.robot_profile,
        "final_ee_pose": rollout.ee_pose[-1].tolist(),
        "final_object_pose": rollout.object_pose[-1].tolist(),
        "meta": _jsonable(dict(rollout.meta)),
        "recorded": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    store = EpisodeStore.create(
        path,
        fps=rollout.control_hz,
        task=rollout.task,
        robot_profile=rollout.robot_profile,
        overwrite=overwrite,
        extra_attrs={"sysid": attrs},
    )
    with store:
        store.add_episode(
            {
                "action": rollout.actions.astype(np.float32),
                "ee_pose": rollout.ee_pose[:-1],
                "object_pose": rollout.object_pose[:-1],
            }
        )
    log.info("saved a %d-step %s rollout to %s", rollout.steps, rollout.task, path)
    return path


def load_rollout(path: str | Path) -> SysIdRollout:
    from twinloop.datasets.errors import DatasetError
    from twinloop.datasets.store import EpisodeStore

    path = Path(path)
    if not path.exists():
        msg = f"no rollout at {path}"
        raise TwinError(msg)
    try:
        store = EpisodeStore.open(path)
    except DatasetError as err:
        msg = f"{path} is not a sysid rollout: {err}"
        raise TwinError(msg) from err
    with store:
        attrs = store.attrs.get("sysid")
        if not isinstance(attrs, Mapping) or attrs.get("schema") != SCHEMA:
            msg = f"{path} is not a sysid rollout (no 'sysid' attrs of schema {SCHEMA})"
            raise TwinError(msg)
        if store.n_episodes != 1:
            msg = f"{path} holds {store.n_episodes} episodes; a sysid rollout holds one"
            raise TwinError(msg)
        ep = store.get_episode(0, ["action", "ee_pose", "object_pose"])
    return SysIdRollout(
        task=str(attrs["task"]),
        control_hz=float(attrs["control_hz"]),
        robot_profile=str(attrs["robot_profile"]),
        actions=ep["action"].astype(np.float64),
        ee_pose=np.vstack([ep["ee_pose"], np.asarray(attrs["final_ee_pose"])[None]]),
        object_pose=np.vstack([ep["object_pose"], np.asarray(attrs["final_object_pose"])[None]]),
        meta=dict(attrs.get("meta", {})),
    )


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x
