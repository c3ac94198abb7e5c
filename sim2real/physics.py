"""Physics layer of the twin: named accessors to the MuJoCo state, IK and rendering.

Like dm_control's Physics: everything a task or a node needs to read from the simulation goes
through a named accessor here, so tasks never index raw arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mujoco
import numpy as np

from twinloop.llvm_guard import avoid_triton_llvm_clash

from .arm import ArmConfig, joint_ids
from .errors import TwinError
from .scene import CameraConfig

__all__ = ["CameraIntrinsics", "Physics", "ee_target_quat", "yaw_of"]


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics in the RealSense convention (pixel centres at integer coordinates)."""

    width: int
    height: int
    fx: float
    fy: float
    ppx: float
    ppy: float
    model: str = "plumb_bob"
    coeffs: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)

    def k_matrix(self) -> np.ndarray:
        return np.array([[self.fx, 0, self.ppx], [0, self.fy, self.ppy], [0, 0, 1.0]])


def ee_target_quat(yaw: float) -> np.ndarray:
    """Orientation (w, x, y, z) of a hand pointing straight down, turned by ``yaw`` about z."""
    # Rz(yaw) * Rx(pi)
    c, s = math.cos(yaw / 2), math.sin(yaw / 2)
    return np.array([0.0, c, s, 0.0])


def yaw_of(xmat: np.ndarray) -> float:
    """Yaw of a downward-pointing hand from its rotation matrix (angle of its x axis in xy)."""
    m = np.asarray(xmat).reshape(3, 3)
    return math.atan2(m[1, 0], m[0, 0])


class Physics:
    """Owns MjModel/MjData of the cell and exposes named state."""

    def __init__(self, model: mujoco.MjModel, arm: ArmConfig, camera: CameraConfig) -> None:
        self.model = model
        self.data = mujoco.MjData(model)
        self.arm = arm
        self.camera = camera
        self._jnt = joint_ids(model, arm.joints)
        self.qpos_adr = model.jnt_qposadr[self._jnt].astype(np.int64)
        self.dof_adr = model.jnt_dofadr[self._jnt].astype(np.int64)
        self.joint_range = model.jnt_range[self._jnt].copy()
        site = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, arm.ee_site)
        if site < 0:
            msg = f"the arm has no end-effector site named {arm.ee_site!r}"
            raise TwinError(msg)
        self.ee_site = int(site)
        self._act = np.array(
            [mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_ACTUATOR, a) for a in arm.actuators]
        )
        if (self._act < 0).any():
            msg = f"the arm lacks actuators {[a for a, i in zip(arm.actuators, self._act, strict=True) if i < 0]}"
            raise TwinError(msg)
        self._grip_act = -1
        if arm.gripper_actuator:
            self._grip_act = mujoco.mj_name2id(
                model, mujoco.mjtObj.mjOBJ_ACTUATOR, arm.gripper_actuator
            )
        fingers = [
            mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, j) for j in arm.finger_joints
        ]
        self._finger_qpos = [int(model.jnt_qposadr[j]) for j in fingers if j >= 0]
        self._scratch = mujoco.MjData(model)
        self._camera_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, "camera")
        self._renderer: mujoco.Renderer | None = None
        self._depth_renderer: mujoco.Renderer | None = None

    # ----- state accessors -------------------------------------------------------------------
    @property
    def time(self) -> float:
        return float(self.data.time)

    @property
    def joint_names(self) -> tuple[str, ...]:
        return self.arm.joints + self.arm.finger_joints[: len(self._finger_qpos)]

    def joint_positions(self) -> np.ndarray:
        """Arm joints then finger joints (m), as /joint_states lists them."""
        arm = self.data.qpos[self.qpos_adr]
        return np.concatenate([arm, self.data.qpos[self._finger_qpos]])

    def joint_velocities(self) -> np.ndarray:
        arm = self.data.qvel[self.dof_adr]
        fingers = [self.data.qvel[self.model.jnt_dofadr[j]] for j in self._finger_joint_ids()]
        return np.concatenate([arm, np.asarray(fingers, dtype=float)])

    def _finger_joint_ids(self) -> list[int]:
        ids = [
            mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_JOINT, j)
            for j in self.arm.finger_joints
        ]
        return [j for j in ids if j >= 0]

    def arm_qpos(self) -> np.ndarray:
        return self.data.qpos[self.qpos_adr].copy()

    def ee_pos(self) -> np.ndarray:
        return self.data.site_xpos[self.ee_site].copy()

    def ee_quat(self) -> np.ndarray:
        quat = np.empty(4)
        mujoco.mju_mat2Quat(quat, self.data.site_xmat[self.ee_site])
        return quat

    def ee_yaw(self) -> float:
        return yaw_of(self.data.site_xmat[self.ee_site])

    def gripper_opening(self) -> float:
        """Distance between the fingers, m (0 closed)."""
        return float(sum(self.data.qpos[a] for a in self._finger_qpos))

    def body_pos(self, name: str) -> np.ndarray:
        return self.data.body(name).xpos.copy()

    def body_quat(self, name: str) -> np.ndarray:
        return self.data.body(name).xquat.copy()

    def body_com(self, name: str) -> np.ndarray:
        return self.data.body(name).xipos.copy()

    def body_xmat(self, name: str) -> np.ndarray:
        return self.data.body(name).xmat.reshape(3, 3).copy()

    def joint_qpos(self, name: str) -> float:
        return float(self.data.joint(name).qpos[0])

    def set_joint_qpos(self, name: str, value: float) -> None:
        self.data.joint(name).qpos[0] = value

    def set_free_pose(self, joint: str, pos: np.ndarray, quat: np.ndarray) -> None:
        qpos = self.data.joint(joint).qpos
        qpos[:3] = pos
        qpos[3:7] = quat
        self.data.joint(joint).qvel[:] = 0.0

    def site_pos(self, name: str) -> np.ndarray:
        return self.data.site(name).xpos.copy()

    def has_body(self, name: str) -> bool:
        return mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, name) >= 0

    # ----- control ---------------------------------------------------------------------------
    def reset_arm(self, qpos: np.ndarray, gripper_open: float) -> None:
        self.data.qpos[self.qpos_adr] = qpos
        self.data.qvel[self.dof_adr] = 0.0
        for adr in self._finger_qpos:
            self.data.qpos[adr] = gripper_open / 2
        self.data.ctrl[self._act] = qpos
        self.set_gripper(gripper_open)

    def set_arm_targets(self, qpos: np.ndarray) -> None:
        self.data.ctrl[self._act] = qpos

    def set_gripper(self, opening: float) -> None:
        """Command the distance between the fingers, m."""
        if self._grip_act >= 0:
            lo, hi = self.model.actuator_ctrlrange[self._grip_act]
            self.data.ctrl[self._grip_act] = np.clip(opening / 2, lo, hi)

    def gripper_max_opening(self) -> float:
        if self._grip_act < 0:
            return 0.0
        return float(2 * self.model.actuator_ctrlrange[self._grip_act][1])

    # ----- inverse kinematics ----------------------------------------------------------------
    def solve_ik(
        self,
        target_pos: np.ndarray,
        target_quat: np.ndarray,
        q_init: np.ndarray,
        *,
        iterations: int = 6,
        damping: float = 0.05,
        rot_weight: float = 0.5,
        tol: float = 5e-4,
        posture: np.ndarray | None = None,
        posture_gain: float = 0.05,
    ) -> np.ndarray:
        """Damped-least-squares IK for the end-effector site, clipped to the joint limits.

        Warm-started from the last solution at 10 Hz, 2-3 iterations reach the 0.5 mm
        tolerance (measured in benchmarks/twin.py); a far target converges over several calls.
        """
        m, d = self.model, self._scratch
        d.qpos[:] = self.data.qpos
        q = np.clip(np.asarray(q_init, dtype=float), *self.joint_range.T)
        jacp = np.zeros((3, m.nv))
        jacr = np.zeros((3, m.nv))
        quat = np.empty(4)
        err_rot = np.empty(3)
        neg = np.empty(4)
        n = len(q)
        for _ in range(iterations):
            d.qpos[self.qpos_adr] = q
            mujoco.mj_kinematics(m, d)
            mujoco.mj_comPos(m, d)
            err_pos = target_pos - d.site_xpos[self.ee_site]
            mujoco.mju_mat2Quat(quat, d.site_xmat[self.ee_site])
            mujoco.mju_negQuat(neg, quat)
            diff = np.empty(4)
            mujoco.mju_mulQuat(diff, target_quat, neg)
            mujoco.mju_quat2Vel(err_rot, diff, 1.0)
            err = np.concatenate([err_pos, rot_weight * err_rot])
            if np.linalg.norm(err_pos) < tol and np.linalg.norm(err_rot) < 10 * tol:
                break
            mujoco.mj_jacSite(m, d, jacp, jacr, self.ee_site)
            jac = np.vstack([jacp[:, self.dof_adr], rot_weight * jacr[:, self.dof_adr]])
            jjt = jac @ jac.T + damping**2 * np.eye(6)
            dq = jac.T @ np.linalg.solve(jjt, err)
            if posture is not None:  # pull towards a comfortable posture in the null space
                null = np.eye(n) - jac.T @ np.linalg.solve(jjt, jac)
                dq += null @ (posture_gain * (posture - q))
            q = np.clip(q + dq, *self.joint_range.T)
        return q

    # ----- rendering -------------------------------------------------------------------------
    def intrinsics(self) -> CameraIntrinsics:
        w, h = self.camera.width, self.camera.height
        fy = (h / 2) / math.tan(math.radians(self.model.cam_fovy[self._camera_id]) / 2)
        return CameraIntrinsics(w, h, fy, fy, (w - 1) / 2, (h - 1) / 2)

    def camera_pose(self) -> np.ndarray:
        """Camera-to-world transform (4x4) in the OpenCV convention: x right, y down, z forward.

        This is what a hand-eye calibration gives on the robot; with the intrinsics it lifts a
        pixel and its depth to a world point (keypoint rewards).
        """
        scratch = (
            self._scratch
        )  # kinematics on a copy: valid before the first step, no side effects
        scratch.qpos[:] = self.data.qpos
        mujoco.mj_kinematics(self.model, scratch)
        mujoco.mj_camlight(self.model, scratch)
        pose = np.eye(4)
        rot = scratch.cam_xmat[self._camera_id].reshape(3, 3)  # MuJoCo: y up, looks along -z
        pose[:3, :3] = rot @ np.diag([1.0, -1.0, -1.0])
        pose[:3, 3] = scratch.cam_xpos[self._camera_id]
        return pose

    def render(self) -> np.ndarray:
        """RGB image (H, W, 3) uint8 from the cell camera."""
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, self.camera.height, self.camera.width)
            avoid_triton_llvm_clash()  # software GL + a later triton import would segfault
        self._renderer.update_scene(self.data, camera=self._camera_id)
        return self._renderer.render()

    def render_depth(self) -> np.ndarray:
        """Depth (H, W) uint16 in millimetres, aligned to the colour image (0 = no return)."""
        if self._depth_renderer is None:
            self._depth_renderer = mujoco.Renderer(
                self.model, self.camera.height, self.camera.width
            )
            self._depth_renderer.enable_depth_rendering()
            avoid_triton_llvm_clash()
        self._depth_renderer.update_scene(self.data, camera=self._camera_id)
        depth_m = self._depth_renderer.render()
        depth_mm = np.where(np.isfinite(depth_m) & (depth_m < 65.0), depth_m * 1000.0, 0.0)
        return depth_mm.round().astype(np.uint16)

    def close(self) -> None:
        for r in (self._renderer, self._depth_renderer):
            if r is not None:
                r.close()
        self._renderer = self._depth_renderer = None
