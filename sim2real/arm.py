"""The arm of the twin: a Franka Panda built from its published kinematics, or any MJCF arm.

The built-in arm follows Franka's published modified-DH table (Craig convention), joint limits,
home pose and hand geometry; link shapes are capsules (no meshes, so it renders fast on a CPU).
Any other MJCF arm can be swapped in with :class:`ArmConfig` ``mjcf_path`` as long as it names its
end-effector site, its arm joints and its actuators.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mujoco
import numpy as np

from .errors import TwinError

__all__ = ["PANDA_DH", "PANDA_HOME", "PANDA_LIMITS", "ArmConfig", "arm_spec"]

# Franka Emika Panda / FR3 modified-DH parameters, one row per joint: (a, d, alpha) in m and rad.
# Frame i relative to frame i-1 is RotX(alpha) TransX(a) RotZ(q_i) TransZ(d).
PANDA_DH: tuple[tuple[float, float, float], ...] = (
    (0.0, 0.333, 0.0),
    (0.0, 0.0, -math.pi / 2),
    (0.0, 0.316, math.pi / 2),
    (0.0825, 0.0, math.pi / 2),
    (-0.0825, 0.384, -math.pi / 2),
    (0.0, 0.0, math.pi / 2),
    (0.088, 0.0, math.pi / 2),
)
PANDA_FLANGE_D = 0.107  # flange offset along joint 7's z axis
PANDA_TCP_D = 0.1034  # hand: flange to the point between the fingertips
PANDA_LIMITS: tuple[tuple[float, float], ...] = (
    (-2.8973, 2.8973),
    (-1.7628, 1.7628),
    (-2.8973, 2.8973),
    (-3.0718, -0.0698),
    (-2.8973, 2.8973),
    (-0.0175, 3.7525),
    (-2.8973, 2.8973),
)
PANDA_HOME: tuple[float, ...] = (0.0, -0.3, 0.0, -2.2, 0.0, 1.9, math.pi / 4)
PANDA_FINGER_RANGE = (0.0, 0.04)  # each finger's travel, m
# Published link masses are close to these; exact inertias matter little under gravity comp.
_LINK_MASSES = (4.0, 4.0, 3.0, 3.0, 3.0, 2.0, 1.0)


@dataclass(frozen=True)
class ArmConfig:
    """Which arm the twin uses. Defaults build the Panda; a path swaps in any MJCF arm."""

    mjcf_path: str | None = None  # an MJCF file with the arm; None builds the Panda from DH
    ee_site: str = "ee_site"  # site at the tool centre point, z pointing out of the hand
    joints: tuple[str, ...] = tuple(f"joint{i}" for i in range(1, 8))  # arm joints, base first
    actuators: tuple[str, ...] = tuple(f"actuator{i}" for i in range(1, 8))  # position servos
    gripper_actuator: str | None = "gripper"  # position actuator for the fingers, or None
    gripper_range: tuple[float, float] = (0.0, 0.04)  # actuator target when open .. closed reversed
    home: tuple[float, ...] = PANDA_HOME  # home joint configuration
    base_pos: tuple[float, float, float] = (0.0, 0.0, 0.0)  # arm base position on the table
    finger_joints: tuple[str, ...] = ("finger_joint1", "finger_joint2")

    def __post_init__(self) -> None:
        if len(self.home) != len(self.joints):
            msg = f"home has {len(self.home)} values but the arm has {len(self.joints)} joints"
            raise TwinError(msg)
        if len(self.actuators) != len(self.joints):
            msg = f"{len(self.actuators)} actuators for {len(self.joints)} joints"
            raise TwinError(msg)
        if self.mjcf_path is not None and not Path(self.mjcf_path).is_file():
            msg = f"arm MJCF not found: {self.mjcf_path}"
            raise TwinError(msg)


def _quat_rotx(angle: float) -> list[float]:
    return [math.cos(angle / 2), math.sin(angle / 2), 0.0, 0.0]


def arm_spec(config: ArmConfig) -> mujoco.MjSpec:
    """A spec holding only the arm (built-in Panda, or the configured MJCF file).

    The cell is then added to this spec, so an MJCF arm keeps its own compiler settings
    (angle units, mesh paths) and its names stay exactly as the file has them.
    """
    if config.mjcf_path is None:
        spec = mujoco.MjSpec()
        spec.compiler.degree = False  # every angle in this package is in radians
        _add_panda(spec, config)
        return spec
    return _load_mjcf(config)


def _load_mjcf(config: ArmConfig) -> mujoco.MjSpec:
    try:
        spec = mujoco.MjSpec.from_file(str(config.mjcf_path))
    except Exception as err:  # mujoco raises ValueError with the parser's message
        msg = f"cannot load arm MJCF {config.mjcf_path}: {err}"
        raise TwinError(msg) from err
    site_names = {s.name for s in spec.sites}
    if config.ee_site not in site_names:
        msg = (
            f"arm MJCF {config.mjcf_path} has no site named {config.ee_site!r} "
            f"(sites: {sorted(site_names)}); set ArmConfig.ee_site"
        )
        raise TwinError(msg)
    joint_names = {j.name for j in spec.joints}
    missing = [j for j in config.joints if j not in joint_names]
    if missing:
        msg = f"arm MJCF {config.mjcf_path} lacks joints {missing} (has {sorted(joint_names)})"
        raise TwinError(msg)
    body = spec.worldbody.first_body()
    while body is not None:  # place the arm's root bodies at the base position
        body.pos = np.asarray(body.pos) + np.asarray(config.base_pos)
        body = spec.worldbody.next_body(body)
    return spec


def _add_panda(spec: mujoco.MjSpec, config: ArmConfig) -> None:
    rgba_link = [0.92, 0.92, 0.95, 1.0]
    rgba_joint = [0.25, 0.25, 0.28, 1.0]
    base = spec.worldbody.add_body(name="link0", pos=list(config.base_pos))
    base.add_geom(
        type=mujoco.mjtGeom.mjGEOM_CYLINDER,
        size=[0.06, 0.05, 0],
        pos=[0, 0, 0.05],
        rgba=rgba_joint,
        contype=0,
        conaffinity=0,
    )
    parent = base
    radius = (0.06, 0.06, 0.055, 0.055, 0.05, 0.045, 0.04)
    for i, ((a, d, alpha), (lo, hi)) in enumerate(zip(PANDA_DH, PANDA_LIMITS, strict=True)):
        pos = [a, -d * math.sin(alpha), d * math.cos(alpha)]
        body = parent.add_body(name=f"link{i + 1}", pos=pos, quat=_quat_rotx(alpha))
        body.gravcomp = 1.0
        body.add_joint(
            name=config.joints[i],
            type=mujoco.mjtJoint.mjJNT_HINGE,
            axis=[0, 0, 1],
            range=[lo, hi],
            limited=True,
            damping=2.0,
            armature=0.1,
        )
        # Visual/collision capsule from this joint back to the parent's joint origin.
        if np.linalg.norm(pos) > 1e-6:
            back = _to_child_frame(pos, alpha)
            body.add_geom(
                type=mujoco.mjtGeom.mjGEOM_CAPSULE,
                fromto=[0, 0, 0, *back],
                size=[radius[i], 0, 0],
                rgba=rgba_link,
                contype=2,
                conaffinity=1,
                mass=_LINK_MASSES[i],
            )
        else:
            body.add_geom(
                type=mujoco.mjtGeom.mjGEOM_SPHERE,
                size=[radius[i], 0, 0],
                rgba=rgba_joint,
                contype=2,
                conaffinity=1,
                mass=_LINK_MASSES[i],
            )
        parent = body
    _add_panda_hand(spec, parent, config)
    for i, (name, (lo, hi)) in enumerate(zip(config.joints, PANDA_LIMITS, strict=True)):
        act = spec.add_actuator(name=config.actuators[i], target=name)
        act.trntype = mujoco.mjtTrn.mjTRN_JOINT
        kp, kv = (600.0, 60.0) if i < 4 else (250.0, 20.0)  # about critically damped
        act.set_to_position(kp=kp, kv=kv)
        act.ctrlrange = [lo, hi]
        act.ctrllimited = True


def _to_child_frame(pos: list[float], alpha: float) -> list[float]:
    """Express the parent's origin (at -pos in the parent frame) in the child frame."""
    c, s = math.cos(alpha), math.sin(alpha)
    rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    return list(rot.T @ (-np.asarray(pos)))


def _add_panda_hand(spec: mujoco.MjSpec, link7: mujoco.MjsBody, config: ArmConfig) -> None:
    # The hand sits on the flange, turned -45 degrees about z like the real one.
    yaw = -math.pi / 4
    hand = link7.add_body(
        name="hand",
        pos=[0, 0, PANDA_FLANGE_D],
        quat=[math.cos(yaw / 2), 0, 0, math.sin(yaw / 2)],
    )
    hand.gravcomp = 1.0
    hand.add_geom(
        type=mujoco.mjtGeom.mjGEOM_BOX,
        size=[0.025, 0.1, 0.03],
        pos=[0, 0, 0.03],
        rgba=[0.95, 0.95, 0.97, 1],
        mass=0.7,
        contype=2,
        conaffinity=1,
    )
    hand.add_site(
        name=config.ee_site, pos=[0, 0, PANDA_TCP_D], size=[0.008, 0, 0], rgba=[1, 0, 0, 0.6]
    )
    for k, sign in enumerate((1.0, -1.0)):
        finger = hand.add_body(name=f"finger{k + 1}", pos=[0, 0, 0.0584])
        finger.gravcomp = 1.0
        finger.add_joint(
            name=config.finger_joints[k],
            type=mujoco.mjtJoint.mjJNT_SLIDE,
            axis=[0, sign, 0],
            range=list(PANDA_FINGER_RANGE),
            limited=True,
            damping=10.0,
            armature=0.05,
        )
        finger.add_geom(
            type=mujoco.mjtGeom.mjGEOM_BOX,
            size=[0.01, 0.006, 0.026],
            pos=[0, sign * 0.006, 0.026],
            rgba=[0.2, 0.2, 0.22, 1],
            mass=0.05,
            friction=[1.5, 0.01, 0.001],
            contype=2,
            conaffinity=1,
            condim=4,
            solref=[0.01, 1],
        )
    # Couple the fingers and drive both through one position actuator (finger opening, m).
    eq = spec.add_equality(
        type=mujoco.mjtEq.mjEQ_JOINT, name1=config.finger_joints[0], name2=config.finger_joints[1]
    )
    eq.data[:5] = [0, 1, 0, 0, 0]
    if config.gripper_actuator:
        act = spec.add_actuator(name=config.gripper_actuator, target=config.finger_joints[0])
        act.trntype = mujoco.mjtTrn.mjTRN_JOINT
        act.set_to_position(kp=2000.0, kv=60.0)
        act.ctrlrange = list(PANDA_FINGER_RANGE)
        act.ctrllimited = True
        act.forcerange = [-70.0, 70.0]
        act.forcelimited = True


def joint_ids(model: mujoco.MjModel, names: Sequence[str]) -> np.ndarray:
    """Qpos addresses of the named joints, with a clear error for a missing name."""
    ids = []
    for name in names:
        jid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)
        if jid < 0:
            msg = f"the twin has no joint named {name!r}"
            raise TwinError(msg)
        ids.append(jid)
    return np.asarray(ids, dtype=np.int64)
