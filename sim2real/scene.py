"""The tabletop cell: table, arm, camera and task objects, built with ``mujoco.MjSpec``.

World frame: origin at the arm base on the table top, x forward (away from the arm), z up.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import mujoco
import numpy as np

from .arm import ArmConfig, arm_spec
from .errors import TwinError

__all__ = ["OBJECTS", "CameraConfig", "build_scene"]

OBJECTS = ("cube", "drawer", "rod")
TABLE_FRICTION = 0.1  # low, so an object's own friction (MuJoCo takes the max) sets its sliding

# Cube
CUBE_HALF = 0.025
# Drawer: cabinet front face at x = CABINET_X, drawer slides towards -x (towards the arm).
CABINET_X = 0.68
DRAWER_Z = 0.09  # drawer centre height
HANDLE_GAP = 0.07  # handle bar stands this far in front of the drawer face
# Rod
ROD_HALF_LENGTH = 0.15
ROD_RADIUS = 0.014


@dataclass(frozen=True)
class CameraConfig:
    """A pinhole RGB-D camera looking at the cell, with RealSense-like intrinsics."""

    pos: tuple[float, float, float] = (0.15, -0.6, 0.6)  # camera position in the world, m
    lookat: tuple[float, float, float] = (0.55, 0.05, 0.05)  # point at the image centre
    # Orientation in the world as a MuJoCo camera quaternion (w, x, y, z; the camera looks along
    # its -z, y up). Set (e.g. from a camera calibration, see twinloop.sim2real.calibration),
    # it replaces lookat, so any orientation, roll included, can be given. None: look at lookat.
    quat: tuple[float, float, float, float] | None = None
    fovy: float = 55.0  # vertical field of view, degrees (D435 colour: ~42)
    width: int = 320  # image width, px
    height: int = 240  # image height, px

    def __post_init__(self) -> None:
        if not 8 <= self.width <= 4096 or not 8 <= self.height <= 4096:
            msg = f"camera size must be 8..4096 px, got {self.width}x{self.height}"
            raise TwinError(msg)
        if not 1.0 < self.fovy < 170.0:
            msg = f"camera fovy must be in (1, 170) degrees, got {self.fovy}"
            raise TwinError(msg)
        if self.quat is not None:
            q = np.asarray(self.quat, dtype=float)
            if q.shape != (4,) or not np.isfinite(q).all() or abs(np.linalg.norm(q) - 1.0) > 1e-3:
                msg = f"camera quat must be a unit quaternion (w, x, y, z), got {self.quat}"
                raise TwinError(msg)
        elif np.allclose(self.pos, self.lookat):
            msg = "camera pos and lookat coincide"
            raise TwinError(msg)

    def xyaxes(self) -> list[float]:
        """MuJoCo camera x and y axes (camera looks along -z) for this pose."""
        forward = np.subtract(self.lookat, self.pos).astype(float)
        forward /= np.linalg.norm(forward)
        up = np.array([0.0, 0.0, 1.0])
        right = np.cross(forward, up)
        if np.linalg.norm(right) < 1e-6:  # looking straight down
            right = np.array([0.0, -1.0, 0.0])
        right /= np.linalg.norm(right)
        cam_up = np.cross(right, forward)
        return [*right.tolist(), *cam_up.tolist()]


def build_scene(objects: Iterable[str], *, arm: ArmConfig, camera: CameraConfig) -> mujoco.MjSpec:
    """Build the cell with the given task objects and return the (uncompiled) spec."""
    objects = tuple(objects)
    unknown = [o for o in objects if o not in OBJECTS]
    if unknown:
        msg = f"unknown scene objects {unknown}. Available: {list(OBJECTS)}"
        raise TwinError(msg)
    spec = arm_spec(arm)  # the arm file's own compiler settings stay in force for it
    spec.modelname = "twinloop_cell"
    spec.option.timestep = 0.002
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    spec.option.cone = mujoco.mjtCone.mjCONE_ELLIPTIC  # elliptic cones + impratio: grasps hold
    spec.option.impratio = 10.0
    spec.visual.global_.offwidth = max(640, camera.width)
    spec.visual.global_.offheight = max(480, camera.height)
    spec.visual.headlight.ambient = [0.45, 0.45, 0.45]
    spec.visual.headlight.diffuse = [0.5, 0.5, 0.5]
    world = spec.worldbody
    world.add_light(pos=[0.4, 0, 1.5], dir=[0, 0, -1], diffuse=[0.6, 0.6, 0.6], castshadow=False)
    world.add_geom(
        name="table",
        type=mujoco.mjtGeom.mjGEOM_BOX,
        size=[0.6, 0.6, 0.02],
        pos=[0.45, 0, -0.02],
        rgba=[0.55, 0.42, 0.3, 1],
        friction=[TABLE_FRICTION, 0.005, 0.0001],
        contype=1,
        conaffinity=1 | 2,
    )
    orientation = (
        {"xyaxes": camera.xyaxes()} if camera.quat is None else {"quat": list(camera.quat)}
    )
    world.add_camera(name="camera", pos=list(camera.pos), fovy=camera.fovy, **orientation)
    if "cube" in objects:
        _add_cube(spec)
    if "drawer" in objects:
        _add_drawer(spec)
    if "rod" in objects:
        _add_rod(spec)
    return spec


def _add_cube(spec: mujoco.MjSpec) -> None:
    body = spec.worldbody.add_body(name="cube", pos=[0.45, 0.0, CUBE_HALF])
    body.add_freejoint(name="cube_joint")
    body.add_geom(
        name="cube",
        type=mujoco.mjtGeom.mjGEOM_BOX,
        size=[CUBE_HALF] * 3,
        mass=0.1,
        rgba=[0.85, 0.15, 0.15, 1],
        friction=[0.5, 0.005, 0.0001],
        condim=3,
    )
    spec.worldbody.add_site(
        name="goal",
        type=mujoco.mjtGeom.mjGEOM_CYLINDER,
        size=[0.035, 0.0005, 0],
        pos=[0.45, 0.15, 0.0005],
        rgba=[0.1, 0.8, 0.2, 0.6],
    )


def _add_drawer(spec: mujoco.MjSpec) -> None:
    wall = [0.35, 0.35, 0.38, 1]
    depth, half_w, half_h = 0.16, 0.12, 0.06
    cab = spec.worldbody.add_body(name="cabinet", pos=[CABINET_X + depth, 0, 0])
    box = mujoco.mjtGeom.mjGEOM_BOX
    t = 0.01
    top = DRAWER_Z + half_h + t
    # sides, top, back (the cabinet is open at the front, x = CABINET_X)
    for y in (-(half_w + t), half_w + t):
        cab.add_geom(type=box, size=[depth, t, top / 2], pos=[0, y, top / 2], rgba=wall)
    cab.add_geom(type=box, size=[depth, half_w + 2 * t, t], pos=[0, 0, top], rgba=wall)
    cab.add_geom(type=box, size=[t, half_w, top / 2], pos=[depth, 0, top / 2], rgba=wall)
    cab.add_geom(
        type=box, size=[depth, half_w, t / 2], pos=[0, 0, DRAWER_Z - half_h - t], rgba=wall
    )
    drawer = spec.worldbody.add_body(name="drawer", pos=[CABINET_X + depth - t, 0, DRAWER_Z])
    drawer.add_joint(
        name="drawer_joint",
        type=mujoco.mjtJoint.mjJNT_SLIDE,
        axis=[-1, 0, 0],
        range=[0.0, 0.2],
        limited=True,
        damping=5.0,
        frictionloss=0.5,
        armature=0.05,
    )
    color = [0.75, 0.6, 0.35, 1]
    inner = depth - 2 * t
    drawer.add_geom(
        type=box, size=[inner, half_w - 0.004, t / 2], pos=[0, 0, -half_h + t], rgba=color, mass=0.3
    )
    for y in (-(half_w - 0.004 - t / 2), half_w - 0.004 - t / 2):
        drawer.add_geom(
            type=box, size=[inner, t / 2, half_h - t], pos=[0, y, 0], rgba=color, mass=0.1
        )
    drawer.add_geom(
        type=box, size=[t / 2, half_w - 0.004, half_h - t], pos=[inner, 0, 0], rgba=color, mass=0.1
    )
    front_x = -inner - t / 2
    drawer.add_geom(
        name="drawer_front",
        type=box,
        size=[t / 2, half_w, half_h],
        pos=[front_x, 0, 0],
        rgba=color,
        mass=0.2,
    )
    # Handle: a bar along y on two standoffs, HANDLE_GAP in front of the face.
    hx = front_x - t / 2 - HANDLE_GAP
    steel = [0.7, 0.7, 0.75, 1]
    drawer.add_geom(
        name="handle",
        type=mujoco.mjtGeom.mjGEOM_CAPSULE,
        fromto=[hx, -0.07, 0.0, hx, 0.07, 0.0],
        size=[0.008, 0, 0],
        rgba=steel,
        mass=0.05,
    )
    for y in (-0.07, 0.07):
        drawer.add_geom(
            type=mujoco.mjtGeom.mjGEOM_CAPSULE,
            fromto=[hx, y, 0.0, front_x - t / 2, y, 0.0],
            size=[0.006, 0, 0],
            rgba=steel,
            mass=0.01,
        )
    drawer.add_site(name="handle_site", pos=[hx, 0, 0], size=[0.005, 0, 0], rgba=[0, 0, 0, 0])


def _add_rod(spec: mujoco.MjSpec) -> None:
    body = spec.worldbody.add_body(name="rod", pos=[0.5, 0.0, ROD_RADIUS])
    body.add_freejoint(name="rod_joint")
    body.add_geom(
        name="rod",
        type=mujoco.mjtGeom.mjGEOM_CAPSULE,
        fromto=[0, -ROD_HALF_LENGTH, 0, 0, ROD_HALF_LENGTH, 0],
        size=[ROD_RADIUS, 0, 0],
        mass=0.3,
        rgba=[0.2, 0.35, 0.85, 1],
        friction=[1.0, 0.005, 0.0001],
        condim=3,
    )
    # Ends painted so a camera can tell the rod's orientation.
    body.add_geom(
        type=mujoco.mjtGeom.mjGEOM_SPHERE,
        size=[ROD_RADIUS * 1.05, 0, 0],
        pos=[0, ROD_HALF_LENGTH, 0],
        rgba=[0.95, 0.8, 0.1, 1],
        mass=0.0,
        contype=0,
        conaffinity=0,
    )


def quat_yaw(yaw: float) -> np.ndarray:
    """Quaternion (w, x, y, z) of a rotation by ``yaw`` about world z."""
    return np.array([math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)])
