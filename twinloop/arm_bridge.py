"""The arm bridge's core: /twinloop/safe_action -> the arm's own interface, ROS-free.

A *profile* (``config/arm_profiles.yaml`` of twinloop_ros) says how a driver wants to be
commanded: ``ros2_control`` (joint position targets for a forward_position_controller, from IK on
the arm's kinematics) or ``moveit_servo`` (a Cartesian twist per action), which topics it reads
and writes, and how its gripper is driven. :class:`ArmBridge` turns actions
``[dx, dy, dz, dyaw, gripper]`` (``twinloop.topics.ACTION_NAMES``) and joint states into those
commands and computes the end-effector pose by forward kinematics; the node only converts
messages (``twinloop_ros/arm_bridge.py``).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from .errors import TwinloopError
from .safety import check_action

if TYPE_CHECKING:
    from twinloop.sim2real.kinematics import ArmKinematics, IKResult

__all__ = [
    "ARM_PROFILES_FILE",
    "GRIPPER_INTERFACES",
    "INTERFACES",
    "ArmBridge",
    "ArmProfile",
    "JointCommand",
    "JointMirror",
    "MirrorConfig",
    "check_action",
    "default_profiles_path",
    "gripper_value",
    "load_profiles",
    "quat_multiply",
    "resolve_profile",
    "twist_from_action",
]

ARM_PROFILES_FILE = "arm_profiles.yaml"
INTERFACES = ("ros2_control", "moveit_servo")
# How the gripper is driven: a forward command controller (std_msgs/Float64MultiArray, one value
# per gripper joint), a JointTrajectoryController (trajectory_msgs/JointTrajectory), a
# control_msgs/GripperCommand action server, or not at all.
GRIPPER_INTERFACES = ("float64_multi_array", "joint_trajectory", "gripper_command_action", "none")
MODELS = ("panda", "mjcf")
_TOPIC_FORBIDDEN = set(" \t\n\"'")


@dataclass(frozen=True)
class ArmProfile:
    """How one arm driver is commanded. Every field is also a node parameter of arm_bridge."""

    name: str  # the profile's name in arm_profiles.yaml
    interface: str  # "ros2_control" (joint position targets) or "moveit_servo" (twists)
    command_topic: str  # Float64MultiArray (ros2_control) or TwistStamped (moveit_servo) topic
    joint_names: tuple[str, ...]  # the driver's arm joints, in the controller's command order
    joint_states_topic: str = "/joint_states"  # sensor_msgs/JointState of the arm
    base_frame_id: str = "base_link"  # frame of /twinloop/ee_pose and of the actions
    twist_frame: str = "base_link"  # header.frame_id of the servo twists
    publish_ee_pose: bool = True  # publish /twinloop/ee_pose by FK (off if the driver does)
    model: str = "panda"  # kinematics: "panda" (the twin's, from its DH table) or "mjcf"
    mjcf_path: str = ""  # the arm's MJCF for model "mjcf" (relative: to the profiles file)
    model_joints: tuple[str, ...] = ()  # the model's names for joint_names (same order); () = same
    ee_frame: str = "ee_site"  # site (or body) of the model at the TCP
    tcp_offset: tuple[float, ...] = (0.0, 0.0, 0.0)  # TCP in the ee_frame's axes, m
    base_body: str = ""  # the model's body that is base_frame_id; "" = the model's world
    max_joint_step: float = 0.2  # largest joint change per command, rad (ros2_control)
    max_lag: float = 0.05  # the EE target may lead the measured EE by at most this, m
    gripper_interface: str = "none"  # one of GRIPPER_INTERFACES
    gripper_topic: str = ""  # topic or action name of the gripper
    gripper_joints: tuple[str, ...] = ()  # joints the gripper command names / fills
    gripper_open: float = 0.04  # command value for gripper -1 (open)
    gripper_closed: float = 0.0  # command value for gripper +1 (closed)
    gripper_max_effort: float = 40.0  # max_effort of GripperCommand goals, N
    gripper_time_s: float = 0.5  # time_from_start of JointTrajectory gripper points, s
    description: str = ""  # one line for humans

    def __post_init__(self) -> None:
        self._check_choice("interface", INTERFACES)
        self._check_choice("gripper_interface", GRIPPER_INTERFACES)
        self._check_choice("model", MODELS)
        for key in ("command_topic", "joint_states_topic"):
            self._check_topic(key, getattr(self, key))
        for key in ("base_frame_id", "twist_frame", "ee_frame"):
            if not getattr(self, key):
                self._fail(key, "must not be empty")
        self._check_names("joint_names", self.joint_names, allow_empty=False)
        self._check_names("model_joints", self.model_joints, allow_empty=True)
        if self.model_joints and len(self.model_joints) != len(self.joint_names):
            self._fail(
                "model_joints",
                f"has {len(self.model_joints)} names for {len(self.joint_names)} joint_names",
            )
        if self.model == "panda" and len(self.joint_names) != 7:
            self._fail("joint_names", f"the panda model has 7 joints, got {len(self.joint_names)}")
        if len(self.tcp_offset) != 3 or not all(math.isfinite(v) for v in self.tcp_offset):
            self._fail("tcp_offset", f"must be 3 finite numbers (m), got {list(self.tcp_offset)}")
        self._check_positive("max_joint_step", upper=math.pi)
        self._check_positive("max_lag", upper=1.0)
        self._check_positive("gripper_time_s", upper=60.0)
        for key in ("gripper_open", "gripper_closed", "gripper_max_effort"):
            if not math.isfinite(getattr(self, key)):
                self._fail(key, f"must be a finite number, got {getattr(self, key)}")
        self._check_gripper()

    # ----- validation helpers ------------------------------------------------------------------
    def _fail(self, key: str, problem: str) -> None:
        msg = f"arm profile {self.name!r}: {key} {problem}"
        raise TwinloopError(msg)

    def _check_choice(self, key: str, choices: Sequence[str]) -> None:
        if getattr(self, key) not in choices:
            self._fail(key, f"must be one of {list(choices)}, got {getattr(self, key)!r}")

    def _check_topic(self, key: str, value: str) -> None:
        if not value or _TOPIC_FORBIDDEN & set(value):
            self._fail(key, f"must be a ROS name, got {value!r}")

    def _check_names(self, key: str, names: Sequence[str], *, allow_empty: bool) -> None:
        if not names and not allow_empty:
            self._fail(key, "must list at least one name")
        if any(not n for n in names) or len(set(names)) != len(names):
            self._fail(key, f"must hold distinct non-empty names, got {list(names)}")

    def _check_positive(self, key: str, *, upper: float) -> None:
        value = getattr(self, key)
        if not 0.0 < value <= upper:
            self._fail(key, f"must be in (0, {upper}], got {value}")

    def _check_gripper(self) -> None:
        kind = self.gripper_interface
        if kind == "none":
            return
        self._check_topic("gripper_topic", self.gripper_topic)
        self._check_names("gripper_joints", self.gripper_joints, allow_empty=True)
        if kind in ("float64_multi_array", "joint_trajectory") and not self.gripper_joints:
            self._fail("gripper_joints", f"must list the gripper's joints for {kind}")

    # ----- derived -----------------------------------------------------------------------------
    @property
    def needs_kinematics(self) -> bool:
        """IK for joint targets (ros2_control) or FK for /twinloop/ee_pose."""
        return self.interface == "ros2_control" or self.publish_ee_pose

    @property
    def kinematic_joints(self) -> tuple[str, ...]:
        """The model's names of the arm joints (in joint_names order)."""
        if self.model_joints:
            return self.model_joints
        if self.model == "panda":
            from twinloop.sim2real.kinematics import PANDA_JOINTS

            return PANDA_JOINTS
        return self.joint_names

    def build_kinematics(self) -> ArmKinematics:
        """The arm's kinematics for this profile (TwinloopError naming the profile and key)."""
        from twinloop.sim2real.errors import TwinError
        from twinloop.sim2real.kinematics import ArmKinematics, KinematicsConfig

        if self.model == "mjcf" and not self.mjcf_path:
            self._fail(
                "mjcf_path",
                "is empty but model is 'mjcf': give the arm's MJCF file "
                "(-p mjcf_path:=/path/to/arm.xml)",
            )
        try:
            return ArmKinematics(
                KinematicsConfig(
                    mjcf_path=self.mjcf_path if self.model == "mjcf" else None,
                    joints=self.kinematic_joints,
                    ee_frame=self.ee_frame,
                    tcp_offset=(self.tcp_offset[0], self.tcp_offset[1], self.tcp_offset[2]),
                    base_body=self.base_body or None,
                )
            )
        except TwinError as err:
            msg = f"arm profile {self.name!r}: {err}"
            raise TwinloopError(msg) from err

    def parameters(self) -> dict[str, Any]:
        """The fields a node exposes as parameters (all but name and description)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("name", "description")
        }


# ----- profile files ---------------------------------------------------------------------------
_FIELDS = {f.name: f for f in dataclasses.fields(ArmProfile)}
_REQUIRED = tuple(
    n
    for n, f in _FIELDS.items()
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and n != "name"
)
_EXTENDS = "extends"


def default_profiles_path() -> Path:
    """``arm_profiles.yaml`` from the checkout, ``<sys.prefix>/share`` or AMENT_PREFIX_PATH."""
    from .graph import config_dirs

    dirs = config_dirs()
    for d in dirs:
        path = d / ARM_PROFILES_FILE
        if path.is_file():
            return path
    msg = f"{ARM_PROFILES_FILE} not found (looked in {[str(d) for d in dirs]})"
    raise TwinloopError(msg)


def _coerce_field(profile: str, key: str, value: Any) -> Any:
    """A YAML value checked against the field's type (ints pass for floats, lists for tuples)."""
    default = _FIELDS[key].default
    where = f"arm profile {profile!r}: {key}"
    if key in _REQUIRED:
        kind: Any = tuple if key == "joint_names" else str
    else:
        kind = type(default)
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind is str:
        if isinstance(value, str):
            return value
    elif kind is tuple:
        if isinstance(value, (list, tuple)):
            numeric = key == "tcp_offset"
            ok = all(
                (isinstance(v, (int, float)) and not isinstance(v, bool))
                if numeric
                else isinstance(v, str)
                for v in value
            )
            if ok:
                return tuple(float(v) for v in value) if numeric else tuple(value)
    expected = {bool: "true or false", float: "a number", str: "a string", tuple: "a list"}[kind]
    msg = f"{where} must be {expected}, got {value!r}"
    raise TwinloopError(msg)


def _profile_from_mapping(name: str, data: Mapping[str, Any], base_dir: Path | None) -> ArmProfile:
    unknown = sorted(set(data) - set(_FIELDS) - {"name"})
    if unknown:
        msg = f"arm profile {name!r}: unknown keys {unknown}. Allowed: {sorted(set(_FIELDS) - {'name'})}"
        raise TwinloopError(msg)
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        msg = f"arm profile {name!r}: missing keys {missing}"
        raise TwinloopError(msg)
    values = {k: _coerce_field(name, k, v) for k, v in data.items() if k != "name"}
    mjcf = values.get("mjcf_path", "")
    if mjcf and base_dir is not None and not os.path.isabs(os.path.expanduser(mjcf)):
        values["mjcf_path"] = str(base_dir / mjcf)
    elif mjcf:
        values["mjcf_path"] = os.path.expanduser(mjcf)
    return ArmProfile(name=name, **values)


def _merged(name: str, raw: Mapping[str, Any], chain: tuple[str, ...] = ()) -> dict[str, Any]:
    """A profile's mapping with ``extends: other`` resolved (the child's keys win)."""
    if name in chain:
        msg = f"arm profile {name!r}: 'extends' loops: {' -> '.join((*chain, name))}"
        raise TwinloopError(msg)
    entry = raw[name]
    if not isinstance(entry, Mapping):
        msg = f"arm profile {name!r} must be a mapping of keys, got {type(entry).__name__}"
        raise TwinloopError(msg)
    parent = entry.get(_EXTENDS)
    own = {k: v for k, v in entry.items() if k != _EXTENDS}
    if parent is None:
        return own
    if parent not in raw:
        msg = f"arm profile {name!r} extends unknown profile {parent!r}. Available: {sorted(raw)}"
        raise TwinloopError(msg)
    return {**_merged(parent, raw, (*chain, name)), **own}


def load_profiles(path: str | os.PathLike[str] | None = None) -> dict[str, ArmProfile]:
    """All profiles of a profiles file (default: the shipped arm_profiles.yaml), validated."""
    file = Path(path) if path is not None else default_profiles_path()
    if not file.is_file():
        msg = f"arm profiles file {file} does not exist"
        raise TwinloopError(msg)
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as err:
        msg = f"arm profiles file {file} is not valid YAML: {err}"
        raise TwinloopError(msg) from err
    raw = data.get("profiles") if isinstance(data, Mapping) else None
    if not isinstance(raw, Mapping) or not raw:
        msg = f"arm profiles file {file} needs a non-empty 'profiles:' mapping of name -> keys"
        raise TwinloopError(msg)
    profiles = {}
    for name in raw:
        try:
            profiles[str(name)] = _profile_from_mapping(str(name), _merged(name, raw), file.parent)
        except TwinloopError as err:
            msg = f"{file}: {err}"
            raise TwinloopError(msg) from None
    return profiles


def resolve_profile(
    name: str,
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ArmProfile:
    """The named profile with ``overrides`` (field -> value) applied and validated."""
    profiles = load_profiles(path)
    if name not in profiles:
        msg = f"unknown arm profile {name!r}. Available: {sorted(profiles)}"
        raise TwinloopError(msg)
    profile = profiles[name]
    if not overrides:
        return profile
    unknown = sorted(set(overrides) - set(profile.parameters()))
    if unknown:
        msg = (
            f"arm profile {name!r}: unknown keys {unknown}. Allowed: {sorted(profile.parameters())}"
        )
        raise TwinloopError(msg)
    values = {k: _coerce_field(name, k, v) for k, v in overrides.items()}
    return dataclasses.replace(profile, **values)


# ----- actions -----------------------------------------------------------------------------------
def twist_from_action(
    action: Sequence[float] | np.ndarray, dt: float
) -> tuple[np.ndarray, np.ndarray]:
    """The (linear, angular) velocity that moves by the action's delta in ``dt`` seconds.

    ``linear = [dx, dy, dz] / dt`` (m/s), ``angular = [0, 0, dyaw / dt]`` (rad/s), both in the
    base frame: MoveIt Servo's ``speed_units`` commands.
    """
    if not dt > 0.0:
        msg = f"dt must be positive, got {dt}"
        raise TwinloopError(msg)
    a = check_action(action)
    return a[:3] / dt, np.array([0.0, 0.0, a[3] / dt])


def gripper_value(command: float, open_value: float, closed_value: float) -> float:
    """Gripper command in [-1 open, +1 closed] -> the driver's value (linear in between)."""
    t = (float(np.clip(command, -1.0, 1.0)) + 1.0) / 2.0
    return open_value + t * (closed_value - open_value)


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of quaternions (w, x, y, z): the rotation ``b`` then ``a``."""
    w1, x1, y1, z1 = a
    w2, x2, y2, z2 = b
    return np.array(
        [
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        ]
    )


def _quat_angle(a: np.ndarray, b: np.ndarray) -> float:
    dot = abs(float(np.dot(a, b)) / float(np.linalg.norm(a) * np.linalg.norm(b)))
    return 2.0 * math.acos(min(1.0, dot))


# ----- the bridge ------------------------------------------------------------------------------
@dataclass(frozen=True)
class JointCommand:
    """Joint position targets for one action, and how well IK met the Cartesian target."""

    positions: np.ndarray  # in the profile's joint_names order, rad
    target_pos: np.ndarray  # the EE target the IK aimed at, base frame, m
    ik_pos_error: float  # m
    clipped: bool  # the step was cut to max_joint_step
    info: dict[str, float] = field(default_factory=dict)


class ArmBridge:
    """Actions and joint states in, the profile's commands and the EE pose out (ROS-free).

    For ``ros2_control`` it keeps a Cartesian target like the twin does: each action moves the
    target by its delta (yaw about the base z axis), the target never leads the measured hand by
    more than ``max_lag``, IK is warm-started from the last command, and no joint moves more than
    ``max_joint_step`` per command.
    """

    MAX_ROT_LAG = 0.5  # rad: an orientation target further than this from the hand is re-synced

    def __init__(
        self,
        profile: ArmProfile,
        *,
        control_hz: float = 10.0,
        kinematics: ArmKinematics | None = None,
        gripper_deadband: float = 0.05,
    ) -> None:
        if not 0.0 < control_hz <= 1000.0:
            msg = f"control_hz must be in (0, 1000], got {control_hz}"
            raise TwinloopError(msg)
        self.profile = profile
        self.dt = 1.0 / control_hz
        if kinematics is None and profile.needs_kinematics:
            kinematics = profile.build_kinematics()
        self.kinematics = kinematics
        if kinematics is not None and kinematics.n_joints != len(profile.joint_names):
            msg = (
                f"arm profile {profile.name!r}: the model has {kinematics.n_joints} joints, "
                f"joint_names lists {len(profile.joint_names)}"
            )
            raise TwinloopError(msg)
        self._index = {n: i for i, n in enumerate(profile.joint_names)}
        self._deadband = gripper_deadband
        self._last_gripper: float | None = None
        self.reset()

    def reset(self) -> None:
        """Forget the Cartesian target (the next action starts from the measured pose)."""
        self._target_pos: np.ndarray | None = None
        self._target_quat: np.ndarray | None = None
        self._q_cmd: np.ndarray | None = None
        self._posture: np.ndarray | None = None

    # ----- joint states --------------------------------------------------------------------------
    def joints_from_state(
        self, names: Sequence[str], positions: Sequence[float] | np.ndarray
    ) -> np.ndarray:
        """The arm's joint angles (joint_names order) from a JointState's names and positions.

        Other joints (fingers, a second arm) are ignored; a missing arm joint, a length mismatch
        or a non-finite arm angle is a TwinloopError naming it.
        """
        names = list(names)
        pos = np.asarray(positions, dtype=float).ravel()
        if len(names) != pos.size:
            msg = f"joint state has {len(names)} names but {pos.size} positions"
            raise TwinloopError(msg)
        where = {n: i for i, n in enumerate(names)}
        missing = [n for n in self.profile.joint_names if n not in where]
        if missing:
            msg = (
                f"joint state lacks the arm joints {missing} of profile {self.profile.name!r} "
                f"(it names {names})"
            )
            raise TwinloopError(msg)
        q = pos[[where[n] for n in self.profile.joint_names]]
        bad = [n for n, v in zip(self.profile.joint_names, q, strict=True) if not math.isfinite(v)]
        if bad:
            msg = f"joint state has NaN or inf for {bad}"
            raise TwinloopError(msg)
        return q

    def ee_pose(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """TCP (position, quaternion w x y z) in the base frame for joint angles ``q``."""
        return self._kin().fk(q)

    def _kin(self) -> ArmKinematics:
        if self.kinematics is None:
            msg = f"arm profile {self.profile.name!r} has no kinematics (publish_ee_pose is off)"
            raise TwinloopError(msg)
        return self.kinematics

    # ----- commands ------------------------------------------------------------------------------
    def joint_command(self, action: Sequence[float] | np.ndarray, q: np.ndarray) -> JointCommand:
        """Joint targets that move the hand by the action's delta from the measured ``q``."""
        a = check_action(action)
        kin = self._kin()
        q = kin.check_q(q)
        pos, quat = kin.fk(q)
        if self._target_pos is None or self._target_quat is None or self._q_cmd is None:
            self._target_pos, self._target_quat = pos, quat
            self._q_cmd, self._posture = q.copy(), q.copy()
        target = self._target_pos + a[:3]
        lead = target - pos  # anti wind-up: the target never runs far ahead of the hand
        lead_norm = float(np.linalg.norm(lead))
        if lead_norm > self.profile.max_lag:
            target = pos + lead * (self.profile.max_lag / lead_norm)
        target_quat = quat_multiply(_quat_about_z(a[3]), self._target_quat)
        if _quat_angle(target_quat, quat) > self.MAX_ROT_LAG:
            target_quat = quat
        result: IKResult = kin.solve_ik(target, target_quat, self._q_cmd, posture=self._posture)
        step = result.q - self._q_cmd
        limit = self.profile.max_joint_step
        clipped = bool(np.any(np.abs(step) > limit))
        q_cmd = kin.clip(self._q_cmd + np.clip(step, -limit, limit))
        self._target_pos, self._target_quat, self._q_cmd = target, target_quat, q_cmd
        return JointCommand(
            positions=q_cmd,
            target_pos=target,
            ik_pos_error=result.pos_error,
            clipped=clipped,
            info={"ik_iterations": float(result.iterations), "ik_rot_error": result.rot_error},
        )

    def twist(self, action: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """MoveIt Servo twist (linear m/s, angular rad/s) for one action period."""
        return twist_from_action(action, self.dt)

    def gripper(self, command: float) -> float | None:
        """The driver's gripper value when the command changed by more than the deadband."""
        g = float(np.clip(command, -1.0, 1.0))
        if self._last_gripper is not None and abs(g - self._last_gripper) < self._deadband:
            return None
        self._last_gripper = g
        p = self.profile
        return gripper_value(g, p.gripper_open, p.gripper_closed)


def _quat_about_z(angle: float) -> np.ndarray:
    return np.array([math.cos(angle / 2), 0.0, 0.0, math.sin(angle / 2)])


# ----- a forward_position_controller stand-in (ros2_control_mock's core) ----------------------
@dataclass(frozen=True)
class MirrorConfig:
    """Joints that follow position commands, as a ros2_control forward controller would."""

    joint_names: tuple[str, ...] = (
        "joint1",
        "joint2",
        "joint3",
        "joint4",
        "joint5",
        "joint6",
        "joint7",
    )
    initial_positions: tuple[float, ...] = (0.0, -0.3, 0.0, -2.2, 0.0, 1.9, math.pi / 4)
    time_constant_s: float = 0.0  # first-order lag towards the command; 0 = reach it at once

    def __post_init__(self) -> None:
        if not self.joint_names or len(set(self.joint_names)) != len(self.joint_names):
            msg = f"joint_names must be distinct and non-empty, got {list(self.joint_names)}"
            raise TwinloopError(msg)
        if len(self.initial_positions) != len(self.joint_names):
            msg = (
                f"initial_positions has {len(self.initial_positions)} values for "
                f"{len(self.joint_names)} joints"
            )
            raise TwinloopError(msg)
        if not all(math.isfinite(v) for v in self.initial_positions):
            msg = f"initial_positions must be finite, got {list(self.initial_positions)}"
            raise TwinloopError(msg)
        if not (self.time_constant_s >= 0.0 and math.isfinite(self.time_constant_s)):
            msg = f"time_constant_s must be >= 0, got {self.time_constant_s}"
            raise TwinloopError(msg)


class JointMirror:
    """Positions that move towards the last command with a first-order lag."""

    def __init__(self, config: MirrorConfig | None = None) -> None:
        self.config = config or MirrorConfig()
        self.positions = np.asarray(self.config.initial_positions, dtype=float).copy()
        self.velocities = np.zeros_like(self.positions)
        self.target = self.positions.copy()

    def command(self, values: Sequence[float] | np.ndarray) -> None:
        """A new target (one value per joint, finite), else TwinloopError; nothing changes then."""
        v = np.asarray(values, dtype=float).ravel()
        n = len(self.config.joint_names)
        if v.size != n:
            msg = f"command has {v.size} values for {n} joints {list(self.config.joint_names)}"
            raise TwinloopError(msg)
        if not np.isfinite(v).all():
            msg = f"command has NaN or inf: {v.tolist()}"
            raise TwinloopError(msg)
        self.target = v

    def step(self, dt: float) -> np.ndarray:
        """Advance ``dt`` seconds; the new positions."""
        tau = self.config.time_constant_s
        alpha = 1.0 if tau == 0.0 else 1.0 - math.exp(-dt / tau)
        new = self.positions + alpha * (self.target - self.positions)
        self.velocities = (new - self.positions) / dt if dt > 0 else np.zeros_like(new)
        self.positions = new
        return new
