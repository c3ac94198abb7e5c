"""rosbag2 import settings: which topic feeds which store key, the import config, finding bags.

ROS-free and free of any bag reading: the CLI builds a :class:`RosbagImportConfig` from here and
hands it to :func:`~.rosbag_import.import_rosbags`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .errors import DatasetError

__all__ = [
    "DEFAULT_TOPICS",
    "REWARD_TOPIC",
    "RosbagImportConfig",
    "find_bags",
    "parse_topic_overrides",
]

# The importer's logger: records keep the name they had when this code lived in rosbag_import.py.
log = logging.getLogger(__name__.rpartition(".")[0] + ".rosbag_import")

# source key -> topic. realsense-ros and ros2_control names, plus the twinloop topics.
# Keys: image_<camera>, depth_<camera>, info_<camera> (camera_info, into the store attrs),
# joint_states (-> joint_pos, joint_vel), ee_pose, action, episode (/twinloop/episode events,
# -> the episode's success) and, when configured, reward (-> reward, success).
DEFAULT_TOPICS: dict[str, str] = {
    "image_color": "/camera/camera/color/image_raw",
    "depth_color": "/camera/camera/aligned_depth_to_color/image_raw",
    "info_color": "/camera/camera/color/camera_info",
    "joint_states": "/joint_states",
    "ee_pose": "/twinloop/ee_pose",
    "action": "/twinloop/action",
    "episode": "/twinloop/episode",
}
# Not on by default (a reward stream slower than fps would drop steps): --topic reward=...
REWARD_TOPIC = "/twinloop/reward"

_KEY_RE = re.compile(r"^(image|depth|info)_([a-z0-9][a-z0-9_]*)$")
_FIXED_KEYS = ("joint_states", "ee_pose", "action", "reward", "episode")
_MSGTYPES = {
    "image": "sensor_msgs/msg/Image",
    "depth": "sensor_msgs/msg/Image",
    "info": "sensor_msgs/msg/CameraInfo",
    "joint_states": "sensor_msgs/msg/JointState",
    "ee_pose": "geometry_msgs/msg/PoseStamped",
    "action": "sensor_msgs/msg/JointState",
    "reward": "sensor_msgs/msg/JointState",
    "episode": "std_msgs/msg/String",
}
_IMAGE_KINDS = ("image", "depth")
_STEP_KINDS = ("image", "depth", "joint_states", "ee_pose", "action", "reward")


def _kind(key: str) -> str:
    m = _KEY_RE.match(key)
    if m:
        return m.group(1)
    if key in _FIXED_KEYS:
        return key
    msg = (
        f"unknown source key {key!r}. Available: image_<camera>, depth_<camera>, "
        f"info_<camera>, {', '.join(_FIXED_KEYS)}"
    )
    raise DatasetError(msg)


def _camera(key: str) -> str:
    return key.split("_", 1)[1]


@dataclass(frozen=True)
class RosbagImportConfig:
    """How bags become steps. Times in seconds."""

    fps: float = 10.0  # step rate of the store
    topics: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_TOPICS))
    tolerance: float | None = None  # max |stamp - step time| per input; None: half a step
    tolerances: Mapping[str, float] = field(default_factory=dict)  # per source key override
    stamps: Literal["header", "bag"] = "header"  # header.stamp (falls back to bag time if 0)
    joint_names: tuple[str, ...] | None = None  # joint order; None: the first message's
    drop_bad_messages: bool = False  # drop steps that use an undecodable message (else error)
    task: str = ""  # task text of the imported episodes (default: the store's)
    operator: str = ""  # who recorded them

    def __post_init__(self) -> None:
        if not 0 < self.fps <= 1000:
            msg = f"fps must be in (0, 1000], got {self.fps}"
            raise DatasetError(msg)
        if self.tolerance is not None and not self.tolerance >= 0:
            msg = f"tolerance must be >= 0 s, got {self.tolerance}"
            raise DatasetError(msg)
        if self.stamps not in ("header", "bag"):
            msg = f"stamps must be 'header' or 'bag', got {self.stamps!r}"
            raise DatasetError(msg)
        for key, topic in self.topics.items():
            _kind(key)
            if topic and not topic.startswith("/"):
                msg = f"topic of {key!r} must be absolute (start with '/'), got {topic!r}"
                raise DatasetError(msg)
        for key, tol in self.tolerances.items():
            if key not in self.topics:
                msg = f"tolerance given for {key!r}, which is not a source: {sorted(self.topics)}"
                raise DatasetError(msg)
            if not tol >= 0:
                msg = f"tolerance of {key!r} must be >= 0 s, got {tol}"
                raise DatasetError(msg)
        if not any(_kind(k) in _STEP_KINDS and t for k, t in self.topics.items()):
            msg = "no step source configured (need at least one image, depth or state topic)"
            raise DatasetError(msg)

    def tolerance_of(self, key: str) -> float:
        if key in self.tolerances:
            return float(self.tolerances[key])
        return float(self.tolerance) if self.tolerance is not None else 0.5 / self.fps

    def active_topics(self) -> dict[str, str]:
        return {k: t for k, t in self.topics.items() if t}


def parse_topic_overrides(items: Iterable[str]) -> dict[str, str]:
    """``["image_wrist=/wrist/image_raw", "depth_color="]`` -> DEFAULT_TOPICS updated.

    An empty topic switches that source off.
    """
    topics = dict(DEFAULT_TOPICS)
    for item in items:
        key, sep, topic = item.partition("=")
        if not sep:
            msg = f"--topic expects KEY=/topic/name, got {item!r}"
            raise DatasetError(msg)
        _kind(key.strip())
        topics[key.strip()] = topic.strip()
    return topics


# ----- finding bags ---------------------------------------------------------------------------
_STORAGE_SUFFIXES = (".mcap", ".db3")


def find_bags(paths: Sequence[str | Path]) -> list[Path]:
    """Expand BAG_OR_DIR arguments into bags.

    A bag is a rosbag2 directory (it holds ``metadata.yaml``) or a single ``.mcap`` / ``.db3``
    file. Any other directory is searched (recursively, sorted) for bags.
    """
    out: list[Path] = []

    def walk(d: Path) -> None:
        if (d / "metadata.yaml").exists():
            out.append(d)
            return
        for child in sorted(d.iterdir()):
            if child.is_dir():
                walk(child)
            elif child.suffix in _STORAGE_SUFFIXES:
                out.append(child)

    for p in map(Path, paths):
        if not p.exists():
            msg = f"{p} does not exist"
            raise DatasetError(msg)
        if p.is_dir():
            found = len(out)
            walk(p)
            if len(out) == found:
                log.warning("no rosbag2 found in %s", p)
        elif p.suffix in _STORAGE_SUFFIXES:
            out.append(p)
        else:
            msg = f"{p} is neither a rosbag2 directory nor a .mcap / .db3 file"
            raise DatasetError(msg)
    seen: set[Path] = set()
    unique: list[Path] = []
    for bag in out:
        if bag.resolve() not in seen:
            seen.add(bag.resolve())
            unique.append(bag)
    if len(unique) < len(out):
        log.warning("%d bag(s) named more than once; importing each once", len(out) - len(unique))
    return unique
