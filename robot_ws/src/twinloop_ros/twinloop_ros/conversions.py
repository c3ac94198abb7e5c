"""numpy <-> ROS message conversions, done once at the edge of every node.

Pure functions over message classes: no node, no ROS graph, so they are tested with plain pytest.
A message that cannot be converted raises :class:`RosAdapterError` (a ValueError) naming the field
and the problem; nodes log it (throttled) and drop the message.

Conventions:
- images: ``(H, W, 3) uint8`` is ``rgb8``, ``(H, W) uint16`` is ``16UC1`` (depth in mm).
- quaternions are ``(w, x, y, z)`` in numpy, as MuJoCo has them; ROS messages hold ``x, y, z, w``.
- actions are ``sensor_msgs/JointState`` whose ``name`` lists :data:`twinloop.topics.ACTION_NAMES`
  and whose ``position`` holds the values.
"""

from __future__ import annotations

import array
import json
import math
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseStamped
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import String

from twinloop.errors import TwinloopError
from twinloop.images import ENCODINGS, decode_pixels, pixels_to_rgb
from twinloop.topics import ACTION_NAMES, EPISODE_EVENTS

from .errors import RosAdapterError

if TYPE_CHECKING:
    from twinloop.sim2real.physics import CameraIntrinsics

__all__ = [
    "ENCODINGS",
    "REWARD_TASK_PREFIX",
    "action_from_msg",
    "action_to_msg",
    "camera_info_from_intrinsics",
    "episode_event_from_msg",
    "episode_event_to_msg",
    "image_from_msg",
    "image_to_msg",
    "intrinsics_from_camera_info",
    "joint_state_to_msg",
    "json_from_msg",
    "json_to_msg",
    "pose_from_msg",
    "pose_to_msg",
    "reward_from_msg",
    "reward_to_msg",
    "rgb_from_msg",
    "sim_state_from_msg",
    "sim_state_to_msg",
    "stamp_from_ns",
    "stamp_to_ns",
    "to_cdr",
    "to_jsonable",
]

_HOST_BIG_ENDIAN = sys.byteorder == "big"


# ----- time ----------------------------------------------------------------------------------
def stamp_from_ns(ns: int) -> Time:
    """builtin_interfaces/Time from integer nanoseconds."""
    if ns < 0:
        msg = f"a stamp cannot be negative, got {ns} ns"
        raise RosAdapterError(msg)
    sec, nanosec = divmod(int(ns), 1_000_000_000)
    return Time(sec=sec, nanosec=nanosec)


def stamp_to_ns(stamp: Time) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _header(msg: Any, stamp: Time | None, frame_id: str) -> None:
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id


# ----- images --------------------------------------------------------------------------------
def image_to_msg(img: np.ndarray, *, stamp: Time | None = None, frame_id: str = "") -> Image:
    """``(H, W, 3) uint8`` -> rgb8, ``(H, W) uint16`` -> 16UC1 (also mono8, 32FC1)."""
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8:
        encoding = "rgb8"
    elif img.ndim == 2 and img.dtype == np.uint16:
        encoding = "16UC1"
    elif img.ndim == 2 and img.dtype == np.uint8:
        encoding = "mono8"
    elif img.ndim == 2 and img.dtype == np.float32:
        encoding = "32FC1"
    else:
        msg = (
            f"cannot encode an image of shape {img.shape} and dtype {img.dtype}: expected "
            "(H, W, 3) uint8 (rgb8), (H, W) uint16 (16UC1), (H, W) uint8 or (H, W) float32"
        )
        raise RosAdapterError(msg)
    if img.shape[0] == 0 or img.shape[1] == 0:
        msg = f"cannot encode an empty image of shape {img.shape}"
        raise RosAdapterError(msg)
    img = np.ascontiguousarray(img)
    out = Image()
    _header(out, stamp, frame_id)
    out.height, out.width = int(img.shape[0]), int(img.shape[1])
    out.encoding = encoding
    out.is_bigendian = int(_HOST_BIG_ENDIAN and img.dtype.itemsize > 1)
    out.step = int(img.strides[0])
    # array.array is taken as-is by the message; bytes would be checked element by element.
    out.data = array.array("B", img.tobytes())
    return out


def image_from_msg(msg: Image) -> np.ndarray:
    """A new array of shape ``(H, W, C)`` (or ``(H, W)`` for one channel) from any known encoding.

    Row padding (``step`` larger than a row) and byte order are honoured.
    """
    try:
        pixels = decode_pixels(msg)
    except TwinloopError as err:
        raise RosAdapterError(str(err)) from err
    return pixels[..., 0] if pixels.shape[2] == 1 else pixels


def rgb_from_msg(msg: Image) -> np.ndarray:
    """``(H, W, 3) uint8`` RGB from rgb8, bgr8, rgba8, bgra8 or mono8 messages."""
    try:
        return pixels_to_rgb(decode_pixels(msg), msg.encoding)
    except TwinloopError as err:
        raise RosAdapterError(str(err)) from err


# ----- camera info ---------------------------------------------------------------------------
def camera_info_from_intrinsics(
    intr: CameraIntrinsics, *, stamp: Time | None = None, frame_id: str = ""
) -> CameraInfo:
    """CameraInfo with K, P (no stereo baseline), R = I and the distortion model and D."""
    out = CameraInfo()
    _header(out, stamp, frame_id)
    out.width, out.height = int(intr.width), int(intr.height)
    fx, fy, cx, cy = float(intr.fx), float(intr.fy), float(intr.ppx), float(intr.ppy)
    out.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
    out.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    out.p = [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    out.distortion_model = intr.model
    out.d = [float(c) for c in intr.coeffs]
    return out


def intrinsics_from_camera_info(msg: CameraInfo) -> CameraIntrinsics:
    """The inverse of :func:`camera_info_from_intrinsics` (reads K, D and the size)."""
    from twinloop.sim2real.physics import CameraIntrinsics  # lazily: it pulls in mujoco

    k = np.asarray(msg.k, dtype=float)
    if k.shape != (9,) or not np.isfinite(k).all() or k[0] <= 0 or k[4] <= 0:
        msg_ = f"camera_info K must hold 9 finite values with fx, fy > 0, got {k.tolist()}"
        raise RosAdapterError(msg_)
    return CameraIntrinsics(
        width=int(msg.width),
        height=int(msg.height),
        fx=float(k[0]),
        fy=float(k[4]),
        ppx=float(k[2]),
        ppy=float(k[5]),
        model=msg.distortion_model or "plumb_bob",
        coeffs=tuple(float(c) for c in msg.d),
    )


# ----- actions and joint states --------------------------------------------------------------
def action_to_msg(action: Sequence[float] | np.ndarray, *, stamp: Time | None = None) -> JointState:
    """``[dx, dy, dz, dyaw, gripper]`` -> JointState named by ACTION_NAMES."""
    a = np.asarray(action, dtype=float)
    if a.shape != (len(ACTION_NAMES),):
        msg = f"action must have {len(ACTION_NAMES)} values {ACTION_NAMES}, got shape {a.shape}"
        raise RosAdapterError(msg)
    return joint_state_to_msg(ACTION_NAMES, a, stamp=stamp)


def action_from_msg(msg: JointState) -> np.ndarray:
    """The action vector in ACTION_NAMES order (the message may list the names in any order).

    Structure only: NaN and limits are the safety layer's business.
    """
    names = list(msg.name)
    if len(names) != len(set(names)) or set(names) != set(ACTION_NAMES):
        msg_ = f"action names must be {list(ACTION_NAMES)} (any order), got {names}"
        raise RosAdapterError(msg_)
    if len(msg.position) != len(names):
        msg_ = f"action has {len(names)} names but {len(msg.position)} positions"
        raise RosAdapterError(msg_)
    by_name = dict(zip(names, msg.position, strict=True))
    return np.array([by_name[n] for n in ACTION_NAMES], dtype=float)


def joint_state_to_msg(
    names: Sequence[str],
    positions: Sequence[float] | np.ndarray,
    velocities: Sequence[float] | np.ndarray | None = None,
    *,
    stamp: Time | None = None,
) -> JointState:
    pos = np.asarray(positions, dtype=float).ravel()
    if len(names) != pos.size:
        msg = f"{len(names)} joint names but {pos.size} positions"
        raise RosAdapterError(msg)
    out = JointState()
    if stamp is not None:
        out.header.stamp = stamp
    out.name = list(names)
    out.position = pos.tolist()
    if velocities is not None:
        vel = np.asarray(velocities, dtype=float).ravel()
        if vel.size != pos.size:
            msg = f"{pos.size} joint positions but {vel.size} velocities"
            raise RosAdapterError(msg)
        out.velocity = vel.tolist()
    return out


# ----- poses ---------------------------------------------------------------------------------
REWARD_TASK_PREFIX = "task:"  # /twinloop/reward: a third name "task:<name>" (value 1.0)


def reward_to_msg(
    reward: float, success: bool, *, stamp: Time | None = None, frame_id: str = "",
    task: str = "",
) -> JointState:  # fmt: skip
    """/twinloop/reward: names [reward, success] (+ ``task:<name>`` when the model was chosen
    per task, so a consumer can tell which task a flag is about), header = the frame's."""
    names = ["reward", "success"] + ([REWARD_TASK_PREFIX + task] if task else [])
    values = [float(reward), 1.0 if success else 0.0] + ([1.0] if task else [])
    out = joint_state_to_msg(names, values, stamp=stamp)
    out.header.frame_id = frame_id
    return out


def reward_from_msg(msg: JointState) -> tuple[float, bool, str]:
    """(reward, success, task) of a /twinloop/reward message (task "" when it names none);
    RosAdapterError for another layout or a reward that is not finite."""
    names = list(msg.name)
    extra = [n for n in names if n not in ("reward", "success")]
    tasks = [n.removeprefix(REWARD_TASK_PREFIX) for n in extra if n.startswith(REWARD_TASK_PREFIX)]
    if ("reward" not in names or "success" not in names or len(msg.position) != len(names)
            or len(extra) != len(tasks) or len(tasks) > 1):  # fmt: skip
        msg_ = (
            f"names {names} with {len(msg.position)} values, expected "
            f"['reward', 'success'] (+ one '{REWARD_TASK_PREFIX}<name>')"
        )
        raise RosAdapterError(msg_)
    values = dict(zip(names, msg.position, strict=True))
    reward = float(values["reward"])
    if not math.isfinite(reward):
        msg_ = f"reward {reward} is not finite"
        raise RosAdapterError(msg_)
    return reward, float(values["success"]) > 0.5, tasks[0] if tasks else ""


def pose_to_msg(
    pos: Sequence[float] | np.ndarray,
    quat_wxyz: Sequence[float] | np.ndarray,
    *,
    stamp: Time | None = None,
    frame_id: str = "base_link",
) -> PoseStamped:
    p = np.asarray(pos, dtype=float)
    q = np.asarray(quat_wxyz, dtype=float)
    if p.shape != (3,) or q.shape != (4,):
        msg = f"a pose needs a position (3,) and a quaternion (4,), got {p.shape} and {q.shape}"
        raise RosAdapterError(msg)
    out = PoseStamped()
    _header(out, stamp, frame_id)
    out.pose.position.x, out.pose.position.y, out.pose.position.z = (float(v) for v in p)
    o = out.pose.orientation
    o.w, o.x, o.y, o.z = (float(v) for v in q)
    return out


def pose_from_msg(msg: PoseStamped) -> tuple[np.ndarray, np.ndarray]:
    """``(position (3,), quaternion (w, x, y, z))``; raises on non-finite values."""
    p, o = msg.pose.position, msg.pose.orientation
    pos = np.array([p.x, p.y, p.z], dtype=float)
    quat = np.array([o.w, o.x, o.y, o.z], dtype=float)
    if not (np.isfinite(pos).all() and np.isfinite(quat).all()):
        msg_ = f"pose has NaN or inf: position {pos.tolist()}, orientation {quat.tolist()}"
        raise RosAdapterError(msg_)
    return pos, quat


# ----- JSON payloads (std_msgs/String) -------------------------------------------------------
def to_jsonable(value: Any) -> Any:
    """numpy arrays and scalars -> lists and Python numbers, recursively."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def json_to_msg(payload: Mapping[str, Any]) -> String:
    try:
        text = json.dumps(to_jsonable(payload), allow_nan=False)
    except (TypeError, ValueError) as err:
        msg = f"payload cannot be sent as JSON: {err}"
        raise RosAdapterError(msg) from err
    return String(data=text)


def json_from_msg(msg: String) -> dict[str, Any]:
    try:
        payload = json.loads(msg.data)
    except json.JSONDecodeError as err:
        msg_ = f"message is not JSON: {err}"
        raise RosAdapterError(msg_) from err
    if not isinstance(payload, dict):
        msg_ = f"expected a JSON object, got {type(payload).__name__}"
        raise RosAdapterError(msg_)
    return payload


def episode_event_to_msg(event: str, episode: int, **extra: Any) -> String:
    """``{"event": ..., "episode": n, ...}`` for /twinloop/episode."""
    if event not in EPISODE_EVENTS:
        msg = f"unknown episode event {event!r}. Available: {list(EPISODE_EVENTS)}"
        raise RosAdapterError(msg)
    return json_to_msg({"event": event, "episode": int(episode), **extra})


def episode_event_from_msg(msg: String) -> dict[str, Any]:
    payload = json_from_msg(msg)
    if payload.get("event") not in EPISODE_EVENTS:
        msg_ = f"episode event must be one of {list(EPISODE_EVENTS)}, got {payload.get('event')!r}"
        raise RosAdapterError(msg_)
    if not isinstance(payload.get("episode"), int):
        msg_ = f"episode event needs an integer 'episode', got {payload.get('episode')!r}"
        raise RosAdapterError(msg_)
    return payload


_STATE_KEYS = ("task", "episode", "steps", "max_steps", "success", "reward", "privileged_state")


def sim_state_to_msg(
    *,
    task: str,
    episode: int,
    steps: int,
    max_steps: int,
    success: bool,
    reward: float,
    privileged_state: Mapping[str, np.ndarray],
    time: float,
    stamp_ns: int | None = None,
) -> String:
    """The twin's /twinloop/sim/state payload (privileged: for experts and audits only).

    ``stamp_ns``: the stamp of the /joint_states and /twinloop/ee_pose published with it (a
    String has no header), so a reader can put the three in one observation by stamp.
    """
    extra = {} if stamp_ns is None else {"stamp_ns": int(stamp_ns)}
    return json_to_msg(
        {
            **extra,
            "task": task,
            "episode": int(episode),
            "steps": int(steps),
            "max_steps": int(max_steps),
            "success": bool(success),
            "reward": float(reward) if math.isfinite(reward) else None,
            "time": float(time),
            "privileged_state": privileged_state,
        }
    )


def sim_state_from_msg(msg: String) -> dict[str, Any]:
    """The payload with ``privileged_state`` values back as float arrays."""
    payload = json_from_msg(msg)
    missing = [k for k in _STATE_KEYS if k not in payload]
    if missing:
        msg_ = f"sim state lacks {missing}"
        raise RosAdapterError(msg_)
    state = payload["privileged_state"]
    if not isinstance(state, dict):
        msg_ = "sim state 'privileged_state' must be an object of arrays"
        raise RosAdapterError(msg_)
    try:
        payload["privileged_state"] = {k: np.asarray(v, dtype=float) for k, v in state.items()}
    except (TypeError, ValueError) as err:
        msg_ = f"sim state 'privileged_state' holds a non-numeric value: {err}"
        raise RosAdapterError(msg_) from err
    return payload


# ----- arm driver commands (arm_bridge, ros2_control_mock) -----------------------------------
def float64_array_to_msg(values: Sequence[float] | np.ndarray) -> Any:
    """std_msgs/Float64MultiArray holding ``values`` (a forward command controller's command)."""
    from std_msgs.msg import Float64MultiArray

    out = Float64MultiArray()
    out.data = np.asarray(values, dtype=float).ravel().tolist()
    return out


def float64_array_from_msg(msg: Any, *, size: int | None = None) -> np.ndarray:
    """The values of a Float64MultiArray; RosAdapterError on a wrong length or NaN/inf."""
    values = np.asarray(msg.data, dtype=float)
    if size is not None and values.size != size:
        msg_ = f"expected {size} values, got {values.size}"
        raise RosAdapterError(msg_)
    if not np.isfinite(values).all():
        msg_ = f"values have NaN or inf: {values.tolist()}"
        raise RosAdapterError(msg_)
    return values


def twist_to_msg(
    linear: Sequence[float] | np.ndarray,
    angular: Sequence[float] | np.ndarray,
    *,
    stamp: Time | None = None,
    frame_id: str = "base_link",
) -> Any:
    """geometry_msgs/TwistStamped from linear (m/s) and angular (rad/s) 3-vectors."""
    from geometry_msgs.msg import TwistStamped

    lin = np.asarray(linear, dtype=float)
    ang = np.asarray(angular, dtype=float)
    if lin.shape != (3,) or ang.shape != (3,):
        msg = f"a twist needs linear (3,) and angular (3,), got {lin.shape} and {ang.shape}"
        raise RosAdapterError(msg)
    out = TwistStamped()
    _header(out, stamp, frame_id)
    t = out.twist
    t.linear.x, t.linear.y, t.linear.z = (float(v) for v in lin)
    t.angular.x, t.angular.y, t.angular.z = (float(v) for v in ang)
    return out


def twist_from_msg(msg: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(linear (3,), angular (3,))`` of a TwistStamped."""
    t = msg.twist
    return (
        np.array([t.linear.x, t.linear.y, t.linear.z], dtype=float),
        np.array([t.angular.x, t.angular.y, t.angular.z], dtype=float),
    )


def to_cdr(msg: Any) -> bytes:
    """The message serialized as rclpy does (CDR), e.g. to write it into a rosbag2."""
    from rclpy.serialization import serialize_message

    data: bytes = serialize_message(msg)
    return data
