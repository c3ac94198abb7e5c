"""Kinematics of an arm alone, from the twin's Panda (DH table) or any MJCF arm: FK and DLS IK.

This is what a robot-side node needs from MuJoCo: no cell, no camera, no dynamics. The built-in
Panda is the very spec the twin uses (:func:`twinloop.sim2real.arm.arm_spec`), so forward
kinematics here equals the twin's end-effector pose for the same joint angles. Any other arm is
an MJCF file naming its joints and an end-effector frame (a site, or a body plus a TCP offset).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mujoco
import numpy as np

from .arm import ArmConfig, arm_spec
from .errors import TwinError

__all__ = ["PANDA_JOINTS", "ArmKinematics", "IKResult", "KinematicsConfig", "quat_about_z"]

PANDA_JOINTS: tuple[str, ...] = ArmConfig().joints  # joint1 .. joint7, the built-in Panda's names
_MOVABLE = (int(mujoco.mjtJoint.mjJNT_HINGE), int(mujoco.mjtJoint.mjJNT_SLIDE))


@dataclass(frozen=True)
class KinematicsConfig:
    """Which arm: the built-in Panda (no path) or an MJCF file; which frame is the tool."""

    mjcf_path: str | None = None  # MJCF of the arm; None builds the twin's Panda from its DH table
    joints: tuple[str, ...] = PANDA_JOINTS  # the arm's joints in the model, base first
    ee_frame: str = "ee_site"  # a site, else a body, at (or before) the tool centre point
    tcp_offset: tuple[float, float, float] = (0.0, 0.0, 0.0)  # TCP in the ee_frame's axes, m
    base_body: str | None = None  # poses are in this fixed body's frame; None: the model's world

    def __post_init__(self) -> None:
        if not self.joints:
            msg = "kinematics needs at least one joint"
            raise TwinError(msg)
        if len(set(self.joints)) != len(self.joints):
            msg = f"joint names repeat: {list(self.joints)}"
            raise TwinError(msg)
        if not self.ee_frame:
            msg = "ee_frame must name a site or a body of the arm"
            raise TwinError(msg)
        if len(self.tcp_offset) != 3 or not np.isfinite(self.tcp_offset).all():
            msg = f"tcp_offset must be 3 finite numbers (x, y, z in m), got {self.tcp_offset}"
            raise TwinError(msg)
        if self.mjcf_path is not None and not Path(self.mjcf_path).is_file():
            msg = f"arm MJCF not found: {self.mjcf_path}"
            raise TwinError(msg)
        if self.base_body == "":
            msg = "base_body must name a body of the arm, or be None for the model's world"
            raise TwinError(msg)


@dataclass(frozen=True)
class IKResult:
    """A DLS IK solution and how far it is from the target."""

    q: np.ndarray  # joint angles, clipped to the joint limits
    pos_error: float  # m, |target - reached|
    rot_error: float  # rad, angle between target and reached orientation
    iterations: int  # iterations used

    def converged(self, pos_tol: float = 1e-3, rot_tol: float = 1e-2) -> bool:
        return self.pos_error <= pos_tol and self.rot_error <= rot_tol


def quat_about_z(angle: float) -> np.ndarray:
    """Quaternion (w, x, y, z) of a rotation by ``angle`` rad about z."""
    return np.array([np.cos(angle / 2), 0.0, 0.0, np.sin(angle / 2)])


class ArmKinematics:
    """Forward and inverse kinematics of one arm, in its base frame.

    The base frame is the model's world, or the fixed body ``base_body`` (for MJCF files whose
    world is not the driver's base frame, such as an arm mounted on a pedestal).
    """

    def __init__(self, config: KinematicsConfig | None = None) -> None:
        self.config = cfg = config or KinematicsConfig()
        self.model = _compile(cfg)
        self.data = mujoco.MjData(self.model)
        m = self.model
        ids = []
        for name in cfg.joints:
            jid = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, name)
            if jid < 0:
                have = [m.joint(i).name for i in range(m.njnt)]
                msg = f"the arm model has no joint named {name!r} (joints: {have})"
                raise TwinError(msg)
            if int(m.jnt_type[jid]) not in _MOVABLE:
                msg = f"joint {name!r} is not a hinge or slide joint"
                raise TwinError(msg)
            ids.append(jid)
        jnt = np.asarray(ids, dtype=np.int64)
        self.qpos_adr = m.jnt_qposadr[jnt].astype(np.int64)
        self.dof_adr = m.jnt_dofadr[jnt].astype(np.int64)
        limited = m.jnt_limited[jnt].astype(bool)
        rng = m.jnt_range[jnt].copy()
        rng[~limited] = (-np.inf, np.inf)  # unlimited joints (continuous UR wrists) stay free
        self.joint_limits = rng
        self._site, self._body = _find_frame(m, cfg.ee_frame)
        self._offset = np.asarray(cfg.tcp_offset, dtype=float)
        self._jacp = np.zeros((3, m.nv))
        self._jacr = np.zeros((3, m.nv))
        self._base_pos, self._base_mat = _base_frame(m, self.data, cfg.base_body)

    @property
    def joint_names(self) -> tuple[str, ...]:
        return self.config.joints

    @property
    def n_joints(self) -> int:
        return len(self.config.joints)

    def check_q(self, q: Sequence[float] | np.ndarray) -> np.ndarray:
        """``q`` as a float vector of the arm's length and finite, else TwinError."""
        arr = np.asarray(q, dtype=float)
        if arr.shape != (self.n_joints,):
            msg = f"expected {self.n_joints} joint angles {list(self.joint_names)}, got {arr.shape}"
            raise TwinError(msg)
        if not np.isfinite(arr).all():
            msg = f"joint angles have NaN or inf: {arr.tolist()}"
            raise TwinError(msg)
        return arr

    def clip(self, q: np.ndarray) -> np.ndarray:
        return np.clip(q, self.joint_limits[:, 0], self.joint_limits[:, 1])

    # ----- forward kinematics ----------------------------------------------------------------
    def _set(self, q: np.ndarray) -> None:
        self.data.qpos[self.qpos_adr] = q
        mujoco.mj_kinematics(self.model, self.data)

    def _frame(self) -> tuple[np.ndarray, np.ndarray]:
        """Position and rotation matrix of the TCP with the current data."""
        d = self.data
        if self._site >= 0:
            pos, mat = d.site_xpos[self._site], d.site_xmat[self._site].reshape(3, 3)
        else:
            pos, mat = d.xpos[self._body], d.xmat[self._body].reshape(3, 3)
        world = pos + mat @ self._offset
        return world, mat.copy()

    def _to_base(self, pos: np.ndarray, mat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World position and rotation matrix -> the base frame's."""
        rt = self._base_mat.T
        return rt @ (pos - self._base_pos), rt @ mat

    def fk(self, q: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """TCP ``(position (3,), quaternion (w, x, y, z))`` for joint angles ``q``."""
        self._set(self.check_q(q))
        pos, mat = self._to_base(*self._frame())
        quat = np.empty(4)
        mujoco.mju_mat2Quat(quat, mat.ravel())
        return pos, quat

    def jacobian(self, q: Sequence[float] | np.ndarray) -> np.ndarray:
        """(6, n) Jacobian of the TCP: linear rows, then angular rows (base-frame axes)."""
        self._set(self.check_q(q))
        return self._jac()

    def _jac(self) -> np.ndarray:
        m, d = self.model, self.data
        mujoco.mj_comPos(m, d)
        point, _ = self._frame()
        body = self._body if self._site < 0 else int(m.site_bodyid[self._site])
        mujoco.mj_jac(m, d, self._jacp, self._jacr, point, body)
        rt = self._base_mat.T
        return np.vstack([rt @ self._jacp[:, self.dof_adr], rt @ self._jacr[:, self.dof_adr]])

    # ----- inverse kinematics ----------------------------------------------------------------
    def solve_ik(
        self,
        target_pos: Sequence[float] | np.ndarray,
        target_quat: Sequence[float] | np.ndarray,
        q_init: Sequence[float] | np.ndarray,
        *,
        iterations: int = 20,
        damping: float = 0.05,
        rot_weight: float = 0.5,
        tol: float = 5e-4,
        posture: np.ndarray | None = None,
        posture_gain: float = 0.05,
    ) -> IKResult:
        """Damped-least-squares IK for the TCP pose, clipped to the joint limits.

        The same scheme as :meth:`twinloop.sim2real.physics.Physics.solve_ik` (which the twin
        uses), for any target orientation and any arm. ``posture`` adds a null-space pull.
        """
        tpos = np.asarray(target_pos, dtype=float)
        tquat = np.asarray(target_quat, dtype=float)
        if tpos.shape != (3,) or tquat.shape != (4,) or not np.isfinite([*tpos, *tquat]).all():
            msg = (
                f"IK target must be a finite position (3,) and quaternion (4,), got {tpos}, {tquat}"
            )
            raise TwinError(msg)
        tquat = tquat / np.linalg.norm(tquat)
        q = self.clip(self.check_q(q_init).copy())
        n = self.n_joints
        quat, neg, diff, err_rot = np.empty(4), np.empty(4), np.empty(4), np.empty(3)
        err_pos = np.zeros(3)
        used = 0
        for used in range(1, iterations + 1):  # noqa: B007 - read after the loop
            self._set(q)
            pos, mat = self._to_base(*self._frame())
            err_pos = tpos - pos
            mujoco.mju_mat2Quat(quat, mat.ravel())
            mujoco.mju_negQuat(neg, quat)
            mujoco.mju_mulQuat(diff, tquat, neg)
            mujoco.mju_quat2Vel(err_rot, diff, 1.0)
            if np.linalg.norm(err_pos) < tol and np.linalg.norm(err_rot) < 10 * tol:
                break
            jac = self._jac()
            jac[3:] *= rot_weight
            err = np.concatenate([err_pos, rot_weight * err_rot])
            jjt = jac @ jac.T + damping**2 * np.eye(6)
            dq = jac.T @ np.linalg.solve(jjt, err)
            if posture is not None:
                null = np.eye(n) - jac.T @ np.linalg.solve(jjt, jac)
                dq += null @ (posture_gain * (np.asarray(posture, dtype=float) - q))
            q = self.clip(q + dq)
        pos, quat = self.fk(q)
        return IKResult(
            q=q,
            pos_error=float(np.linalg.norm(tpos - pos)),
            rot_error=_angle_between(tquat, quat),
            iterations=used,
        )


def _angle_between(q1: np.ndarray, q2: np.ndarray) -> float:
    dot = abs(float(np.dot(q1, q2)) / float(np.linalg.norm(q1) * np.linalg.norm(q2)))
    return 2.0 * math.acos(min(1.0, dot))


def _compile(cfg: KinematicsConfig) -> mujoco.MjModel:
    if cfg.mjcf_path is None:
        if cfg.joints != PANDA_JOINTS:
            msg = f"the built-in Panda's joints are {list(PANDA_JOINTS)}, got {list(cfg.joints)}"
            raise TwinError(msg)
        spec = arm_spec(ArmConfig())
    else:
        try:
            spec = mujoco.MjSpec.from_file(str(cfg.mjcf_path))
        except Exception as err:  # mujoco raises ValueError with the parser's message
            msg = f"cannot load arm MJCF {cfg.mjcf_path}: {err}"
            raise TwinError(msg) from err
    try:
        return spec.compile()
    except ValueError as err:
        msg = f"arm model {cfg.mjcf_path or 'panda'} does not compile: {err}"
        raise TwinError(msg) from err


def _base_frame(
    m: mujoco.MjModel, d: mujoco.MjData, name: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """World pose of the fixed base body (identity for None); TwinError if it can move."""
    if name is None:
        return np.zeros(3), np.eye(3)
    body = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, name)
    if body < 0:
        bodies = [m.body(i).name for i in range(1, m.nbody)]
        msg = f"the arm model has no base body named {name!r} (bodies: {bodies})"
        raise TwinError(msg)
    b = int(body)
    while b > 0:
        if m.body_jntnum[b] > 0:
            msg = f"base body {name!r} is not fixed: joint(s) of body {m.body(b).name!r} move it"
            raise TwinError(msg)
        b = int(m.body_parentid[b])
    mujoco.mj_kinematics(m, d)
    return d.xpos[body].copy(), d.xmat[body].reshape(3, 3).copy()


def _find_frame(m: mujoco.MjModel, name: str) -> tuple[int, int]:
    """(site id, -1) for a site, (-1, body id) for a body, else TwinError listing both."""
    site = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, name)
    if site >= 0:
        return int(site), -1
    body = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, name)
    if body > 0:  # body 0 is the world
        return -1, int(body)
    sites = [m.site(i).name for i in range(m.nsite)]
    bodies = [m.body(i).name for i in range(1, m.nbody)]
    msg = f"the arm model has no site or body named {name!r} (sites: {sites}, bodies: {bodies})"
    raise TwinError(msg)
