"""What a policy observes, built the same way from a dataset, the twin and live ROS messages.

An :class:`ObsSpec` names dataset keys whose values are concatenated into ``obs["state"]`` and,
optionally, an image key resized to ``image_size``. ``"proprio"`` is derived where it is not
stored: EE position, sin/cos of the EE yaw (from the ``ee_pose`` quaternion) and the gripper
opening (sum of the finger joints at the end of ``joint_pos``), exactly the twin's proprio, so
a policy trained on recorded data reads live /twinloop/ee_pose + /joint_states unchanged.
Actions are stored metric (m, rad, gripper in [-1, 1]) and normalised to [-1, 1] by
``action_scale`` for learning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .errors import PolicyError

__all__ = [
    "TWIN_ACTION_SCALE",
    "ObsSpec",
    "default_state_keys",
    "images_from_rows",
    "normalize_action",
    "proprio_from_pose",
    "state_from_rows",
    "unnormalize_action",
]

TWIN_ACTION_SCALE = (0.03, 0.03, 0.03, 0.2, 1.0)  # TwinConfig max_translation x3, max_yaw, gripper
PRIVILEGED = {  # the twin's true object state per task, for state-based runs
    "push_cube": ("priv_cube_pos", "priv_goal_pos"),
    "open_drawer": ("priv_drawer_opening", "priv_handle_pos"),
    "close_drawer": ("priv_drawer_opening", "priv_handle_pos"),
    "lift_rod": ("priv_rod_pos", "priv_rod_axis"),
}


def default_state_keys(task: str, *, privileged: bool) -> tuple[str, ...]:
    """``("proprio",)`` plus, for state-based runs in the twin, the task's privileged keys."""
    if not privileged:
        return ("proprio",)
    if task not in PRIVILEGED:
        msg = f"no privileged state known for task {task!r}. Available: {sorted(PRIVILEGED)}"
        raise PolicyError(msg)
    return ("proprio", *PRIVILEGED[task])


@dataclass(frozen=True)
class ObsSpec:
    state_keys: tuple[str, ...] = ("proprio",)  # dataset keys concatenated into obs["state"]
    image_key: str = ""  # dataset image key (e.g. "image_color"); "" = state-only policy
    image_size: int = 0  # images are resized to image_size x image_size (84 or 100 typical)
    action_scale: tuple[float, ...] = TWIN_ACTION_SCALE  # metric action / scale = [-1, 1]
    fingers: int = 2  # finger joints at the end of joint_pos (for the derived gripper opening)

    def __post_init__(self) -> None:
        if not self.state_keys and not self.image_key:
            msg = "an ObsSpec needs state_keys, an image_key, or both"
            raise PolicyError(msg)
        if bool(self.image_key) != bool(self.image_size):
            msg = f"image_key and image_size go together, got {self.image_key!r}, {self.image_size}"
            raise PolicyError(msg)
        if not self.action_scale or any(s <= 0 for s in self.action_scale):
            msg = f"action_scale must be positive, got {self.action_scale}"
            raise PolicyError(msg)

    @property
    def action_dim(self) -> int:
        return len(self.action_scale)

    def needed_keys(self) -> list[str]:
        keys = [k for k in self.state_keys if k != "proprio"]
        if "proprio" in self.state_keys:
            keys.append("proprio|ee_pose+joint_pos")
        if self.image_key:
            keys.append(self.image_key)
        return keys


def proprio_from_pose(ee_pose: np.ndarray, joint_pos: np.ndarray, fingers: int = 2) -> np.ndarray:
    """(N, 7) pos + quat (w, x, y, z) and (N, J) joints -> (N, 6) twin proprio."""
    pose = np.asarray(ee_pose, dtype=np.float64).reshape(-1, 7)
    joints = np.asarray(joint_pos, dtype=np.float64).reshape(len(pose), -1)
    w, x, y, z = pose[:, 3], pose[:, 4], pose[:, 5], pose[:, 6]
    # yaw of the hand's x axis in the table plane: atan2(R[1,0], R[0,0]) of the quaternion
    yaw = np.arctan2(2 * (x * y + w * z), 1 - 2 * (y * y + z * z))
    grip = joints[:, -fingers:].sum(axis=1) if fingers else np.zeros(len(pose))
    return np.column_stack([pose[:, :3], np.sin(yaw), np.cos(yaw), grip]).astype(np.float32)


def _column(rows: Mapping[str, np.ndarray], key: str, spec: ObsSpec) -> np.ndarray:
    if key in rows:
        value = np.asarray(rows[key], dtype=np.float32)
        return value.reshape(len(value), -1)
    if key == "proprio" and "ee_pose" in rows and "joint_pos" in rows:
        return proprio_from_pose(rows["ee_pose"], rows["joint_pos"], spec.fingers)
    msg = f"observation key {key!r} is missing (have {sorted(rows)}; need {spec.needed_keys()})"
    raise PolicyError(msg)


def state_from_rows(rows: Mapping[str, np.ndarray], spec: ObsSpec) -> np.ndarray:
    """(N, S) float32 state from named (N, ...) arrays; PolicyError naming a missing/NaN key."""
    if not spec.state_keys:
        n = len(next(iter(rows.values())))
        return np.zeros((n, 0), dtype=np.float32)
    parts = [_column(rows, key, spec) for key in spec.state_keys]
    n = len(parts[0])
    for key, part in zip(spec.state_keys, parts, strict=True):
        if len(part) != n:
            msg = f"observation key {key!r} has {len(part)} rows, {spec.state_keys[0]!r} has {n}"
            raise PolicyError(msg)
        if not np.isfinite(part).all():
            msg = f"observation key {key!r} holds NaN or inf"
            raise PolicyError(msg)
    return np.concatenate(parts, axis=1)


def images_from_rows(rows: Mapping[str, np.ndarray], spec: ObsSpec) -> np.ndarray:
    """(N, 3, S, S) uint8 from the (N, H, W, 3) image key, resized with area interpolation."""
    import cv2

    if spec.image_key not in rows:
        msg = f"image key {spec.image_key!r} is missing (have {sorted(rows)})"
        raise PolicyError(msg)
    frames = np.asarray(rows[spec.image_key])
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        msg = f"{spec.image_key!r} must be (N, H, W, 3) uint8, got {frames.shape} {frames.dtype}"
        raise PolicyError(msg)
    size = spec.image_size
    out = np.empty((len(frames), 3, size, size), dtype=np.uint8)
    for i, frame in enumerate(frames):
        small = (
            frame
            if frame.shape[:2] == (size, size)
            else cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)
        )
        out[i] = small.transpose(2, 0, 1)
    return out


def normalize_action(action: np.ndarray, scale: tuple[float, ...]) -> np.ndarray:
    a = np.asarray(action, dtype=np.float32)
    if a.shape[-1] != len(scale):
        msg = f"actions have {a.shape[-1]} values, the spec's action_scale has {len(scale)}"
        raise PolicyError(msg)
    if not np.isfinite(a).all():
        msg = "actions hold NaN or inf"
        raise PolicyError(msg)
    return np.clip(a / np.asarray(scale, dtype=np.float32), -1.0, 1.0)


def unnormalize_action(action: np.ndarray, scale: tuple[float, ...]) -> np.ndarray:
    return np.asarray(action, dtype=np.float32) * np.asarray(scale, dtype=np.float32)
