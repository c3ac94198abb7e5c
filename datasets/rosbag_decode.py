"""Turn deserialized ROS 2 messages (as ``rosbags`` gives them) into typed numpy, ROS-free.

Every function takes a message-like object (attributes as in the ROS message definition, arrays
as numpy) and returns numpy values, or raises :class:`DatasetError` saying what is wrong with
the message. The importer adds the topic, the message index and the bag to the error.

Conventions match ``twinloop_ros.conversions`` (the live nodes): colour images are ``(H, W, 3)
uint8`` RGB, depth is ``(H, W) uint16`` millimetres, quaternions are ``(w, x, y, z)``.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from twinloop.errors import TwinloopError
from twinloop.images import COLOR_ENCODINGS, DEPTH_ENCODINGS, decode_pixels, pixels_to_rgb
from twinloop.topics import ACTION_NAMES

from .errors import DatasetError

__all__ = [
    "COLOR_ENCODINGS",
    "DEPTH_ENCODINGS",
    "action_values",
    "decode_color",
    "decode_depth",
    "header_stamp_ns",
    "intrinsics_from_info",
    "joint_state_values",
    "pose_values",
    "reward_values",
]


def header_stamp_ns(raw: bytes | memoryview) -> int:
    """``header.stamp`` in nanoseconds, read straight from a CDR-serialized message.

    Valid for every message type that starts with ``std_msgs/Header`` (Image, CameraInfo,
    JointState, PoseStamped, ...): after the 4-byte encapsulation header come ``int32 sec`` and
    ``uint32 nanosec``. This avoids deserializing whole images just to learn their stamps.
    """
    buf = bytes(memoryview(raw)[:12])
    if len(buf) < 12:
        msg = f"message of {len(buf)} bytes is too short to hold a header stamp"
        raise DatasetError(msg)
    little = buf[1] & 1  # encapsulation id 0x0001 CDR_LE / 0x0000 CDR_BE (+ PL variants)
    sec, nanosec = struct.unpack("<iI" if little else ">iI", buf[4:12])
    if nanosec >= 1_000_000_000:
        msg = f"header stamp has nanosec {nanosec} >= 1e9 (not a stamped message?)"
        raise DatasetError(msg)
    return sec * 1_000_000_000 + nanosec


def _pixels(msg: Any, encodings: dict[str, tuple[np.dtype, int]], kind: str) -> np.ndarray:
    try:
        return decode_pixels(msg, encodings=encodings, kind=kind, exact_size=True)
    except TwinloopError as err:
        raise DatasetError(str(err)) from err


def decode_color(msg: Any) -> np.ndarray:
    """``(H, W, 3) uint8`` RGB from an rgb8, bgr8, rgba8, bgra8 or mono8 ``sensor_msgs/Image``."""
    px = _pixels(msg, COLOR_ENCODINGS, "colour")
    return pixels_to_rgb(px, str(msg.encoding))


def decode_depth(msg: Any) -> np.ndarray:
    """``(H, W) uint16`` millimetres from a 16UC1 / mono16 ``sensor_msgs/Image``."""
    return _pixels(msg, DEPTH_ENCODINGS, "depth")[..., 0]


def joint_state_values(msg: Any, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray | None]:
    """Positions (and velocities, if the message has them) in the order of ``names``."""
    got = [str(n) for n in msg.name]
    pos = np.asarray(msg.position, dtype=np.float64).ravel()
    if len(got) != pos.size:
        msg_ = f"joint state has {len(got)} names but {pos.size} positions"
        raise DatasetError(msg_)
    if len(set(got)) != len(got) or set(got) != set(names):
        msg_ = (
            f"joint state names {got} differ from the episode's joints {list(names)} "
            "(one /joint_states publisher per bag, or pass the joint list)"
        )
        raise DatasetError(msg_)
    order = [got.index(n) for n in names]
    vel_raw = np.asarray(msg.velocity, dtype=np.float64).ravel()
    if vel_raw.size not in (0, pos.size):
        msg_ = f"joint state has {pos.size} positions but {vel_raw.size} velocities"
        raise DatasetError(msg_)
    vel = vel_raw[order] if vel_raw.size == pos.size else None
    values = pos[order]
    if not np.isfinite(values).all():
        msg_ = f"joint positions hold NaN or inf: {values.tolist()}"
        raise DatasetError(msg_)
    return values, vel


def pose_values(msg: Any) -> np.ndarray:
    """``(7,)`` xyz + quaternion (w, x, y, z) from ``geometry_msgs/PoseStamped``."""
    p, o = msg.pose.position, msg.pose.orientation
    out = np.array([p.x, p.y, p.z, o.w, o.x, o.y, o.z], dtype=np.float64)
    if not np.isfinite(out).all():
        msg_ = f"pose holds NaN or inf: {out.tolist()}"
        raise DatasetError(msg_)
    return out


def action_values(msg: Any) -> np.ndarray:
    """``(5,)`` action in ACTION_NAMES order from the JointState layout of /twinloop/action."""
    names = [str(n) for n in msg.name]
    pos = np.asarray(msg.position, dtype=np.float64).ravel()
    if len(names) != len(set(names)) or set(names) != set(ACTION_NAMES):
        msg_ = f"action names must be {list(ACTION_NAMES)} (any order), got {names}"
        raise DatasetError(msg_)
    if pos.size != len(names):
        msg_ = f"action has {len(names)} names but {pos.size} positions"
        raise DatasetError(msg_)
    by_name = dict(zip(names, pos.tolist(), strict=True))
    out = np.array([by_name[n] for n in ACTION_NAMES], dtype=np.float64)
    if not np.isfinite(out).all():
        msg_ = f"action holds NaN or inf: {out.tolist()}"
        raise DatasetError(msg_)
    return out


def reward_values(msg: Any) -> tuple[float, bool]:
    """``(reward, success)`` from the JointState layout of /twinloop/reward."""
    names = [str(n) for n in msg.name]
    pos = np.asarray(msg.position, dtype=np.float64).ravel()
    if "reward" not in names or len(names) != pos.size:
        msg_ = f"reward message must name 'reward' (and 'success') with one value each, got {names}"
        raise DatasetError(msg_)
    by_name = dict(zip(names, pos.tolist(), strict=True))
    reward = float(by_name["reward"])
    if not np.isfinite(reward):
        msg_ = f"reward is {reward}"
        raise DatasetError(msg_)
    return reward, bool(by_name.get("success", 0.0) > 0.5)


def intrinsics_from_info(msg: Any) -> dict[str, Any]:
    """``{width, height, fx, fy, ppx, ppy, model, coeffs}`` from ``sensor_msgs/CameraInfo``."""
    k = np.asarray(msg.k, dtype=np.float64).ravel()
    if k.shape != (9,) or not np.isfinite(k).all() or k[0] <= 0 or k[4] <= 0:
        msg_ = f"camera_info K must hold 9 finite values with fx, fy > 0, got {k.tolist()}"
        raise DatasetError(msg_)
    return {
        "width": int(msg.width),
        "height": int(msg.height),
        "fx": float(k[0]),
        "fy": float(k[4]),
        "ppx": float(k[2]),
        "ppy": float(k[5]),
        "model": str(msg.distortion_model) or "plumb_bob",
        "coeffs": [float(c) for c in np.asarray(msg.d, dtype=np.float64).ravel()],
    }
