"""Import rosbag2 recordings (sqlite3 or MCAP) into an :class:`EpisodeStore`, one bag per episode.

Read with the ``rosbags`` library (no ROS install needed). Two passes over each bag:

1. stamps of every message on the configured topics (image stamps are read straight from the
   serialized header, images are not decoded), low-dimensional values, camera intrinsics and
   episode events;
2. images, decoded only where a kept step uses them, streamed into the store step by step
   (memory holds only the frames that pending steps still need).

Steps are sampled on a grid at ``fps`` starting at the first camera frame (or the earliest
message when there is no camera) and running to the last message. Every source is aligned by
nearest stamp (:mod:`twinloop.datasets.align`); a step whose input from any source is missing or
further away than the tolerance is dropped and counted, never filled.

Errors name the bag, the topic and the message index (0-based, per topic, in bag order). A
bag that cannot be read is a :class:`DatasetError` for that bag only; :func:`import_rosbags`
goes on with the others and reports which failed.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .align import align_nearest, sample_grid
from .errors import DatasetError
from .rosbag_decode import (
    action_values,
    decode_color,
    decode_depth,
    header_stamp_ns,
    intrinsics_from_info,
    joint_state_values,
    pose_values,
    reward_values,
)

__all__ = [
    "DEFAULT_TOPICS",
    "REWARD_TOPIC",
    "BagIndex",
    "ImportReport",
    "RosbagImportConfig",
    "find_bags",
    "import_bag",
    "import_rosbags",
    "index_bag",
    "parse_topic_overrides",
]

log = logging.getLogger(__name__)

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


# ----- pass 1: index --------------------------------------------------------------------------
@dataclass
class _Source:
    key: str
    kind: str
    topic: str
    stamps: list[int] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)  # decoded low-dim values (None = bad)
    bad: list[bool] = field(default_factory=list)


@dataclass
class BagIndex:
    """What pass 1 learned about a bag (stamps in ns, low-dim values decoded)."""

    path: Path
    storage: str
    sources: dict[str, _Source]  # step sources present in the bag
    missing: list[str]  # configured step sources whose topic is not in the bag
    intrinsics: dict[str, dict[str, Any]]  # camera -> intrinsics
    joint_names: tuple[str, ...] | None
    has_joint_vel: bool  # every joint state carried velocities
    events: list[dict[str, Any]]
    message_counts: dict[str, int]
    errors: list[str]  # bad messages (only with drop_bad_messages)


def _typestore() -> Any:
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_JAZZY)


def _storage_of(path: Path) -> str:
    if path.is_file():
        return "mcap" if path.suffix == ".mcap" else "sqlite3"
    files = {p.suffix for p in path.iterdir()}
    return "mcap" if ".mcap" in files else "sqlite3" if ".db3" in files else "unknown"


def _read_error(path: Path, err: BaseException) -> DatasetError:
    hint = ""
    if "magic" in str(err).lower():
        hint = " (an MCAP file cut short, e.g. by a crashed recorder: `mcap recover` repairs it)"
    return DatasetError(f"cannot read bag {path}: {type(err).__name__}: {err}{hint}")


def _open_reader(path: Path) -> Any:
    from rosbags.rosbag2 import Reader

    try:
        reader = Reader(path)
        reader.open()
    except Exception as err:  # rosbags raises many types on damaged files
        raise _read_error(path, err) from err
    return reader


def _connections(reader: Any, topics: Mapping[str, str], path: Path) -> dict[int, str]:
    """connection id -> source key, with the message types checked."""
    by_topic = {t: k for k, t in topics.items()}
    conns: dict[int, str] = {}
    for conn in reader.connections:
        key = by_topic.get(conn.topic)
        if key is None:
            continue
        want = _MSGTYPES[_kind(key)]
        if conn.msgtype != want:
            msg = f"bag {path}: topic {conn.topic} ({key}) has type {conn.msgtype}, expected {want}"
            raise DatasetError(msg)
        conns[conn.id] = key
    return conns


def index_bag(path: str | Path, config: RosbagImportConfig) -> BagIndex:
    """Pass 1 over a bag: stamps, low-dim values, intrinsics and events (no image decoding)."""
    path = Path(path)
    topics = config.active_topics()
    store = _typestore()
    reader = _open_reader(path)
    sources: dict[str, _Source] = {}
    intrinsics: dict[str, dict[str, Any]] = {}
    events: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    errors: list[str] = []
    unstamped: set[str] = set()
    state = {"joint_names": config.joint_names}
    try:
        conns = _connections(reader, topics, path)
        for conn, bag_ns, raw in _messages(reader, conns, path):
            key = conns[conn.id]
            kind = _kind(key)
            i = counts.get(key, 0)
            counts[key] = i + 1
            where = f"bag {path}: {topics[key]} message {i}"
            try:
                if kind == "info":
                    if _camera(key) not in intrinsics:
                        msg = _deserialize(store, raw, conn.msgtype)
                        intrinsics[_camera(key)] = intrinsics_from_info(msg)
                elif kind == "episode":
                    events.append(_event(_deserialize(store, raw, conn.msgtype)))
            except DatasetError as err:
                if not config.drop_bad_messages:
                    raise DatasetError(f"{where}: {err}") from err
                errors.append(f"{where}: {err}")
            if kind in ("info", "episode"):
                continue
            # Step sources keep one entry per message, so entry i is message i of the topic.
            src = sources.setdefault(key, _Source(key, kind, topics[key]))
            stamp, value, bad = bag_ns, None, False
            try:
                if config.stamps == "header":
                    stamp = header_stamp_ns(raw)
                if kind not in _IMAGE_KINDS:
                    value = _lowdim(kind, _deserialize(store, raw, conn.msgtype), state)
            except DatasetError as err:
                if not config.drop_bad_messages:
                    raise DatasetError(f"{where}: {err}") from err
                errors.append(f"{where}: {err}")
                bad = True
            if stamp <= 0:  # an unstamped message: fall back on the receive time
                unstamped.add(key)
                stamp = bag_ns
            src.stamps.append(stamp)
            src.values.append(value)
            src.bad.append(bad)
    finally:
        reader.close()
    for key in sorted(unstamped):
        log.warning("bag %s: %s has unstamped messages; used their receive time", path, topics[key])
    missing = [k for k in topics if _kind(k) in _STEP_KINDS and k not in sources]
    js = sources.get("joint_states")
    return BagIndex(
        path=path,
        storage=_storage_of(path),
        sources=sources,
        missing=missing,
        intrinsics=intrinsics,
        joint_names=state["joint_names"] if js is not None else None,
        has_joint_vel=js is not None and all(v is None or v[1] is not None for v in js.values),
        events=events,
        message_counts=counts,
        errors=errors,
    )


def _deserialize(store: Any, raw: bytes, msgtype: str) -> Any:
    try:
        return store.deserialize_cdr(raw, msgtype)
    except Exception as err:  # rosbags raises several types for a damaged message
        # rclpy.serialization (rmw_fastrtps, the Jazzy default) leaves 4-12 trailing bytes after
        # some messages (e.g. JointState), more than the 3 padding bytes rosbags accepts.
        if "size mismatch" in str(err):
            for cut in (4, 8, 12):
                try:
                    return store.deserialize_cdr(raw[: len(raw) - cut], msgtype)
                except Exception:  # cut more, or report the first error
                    continue
        msg = f"cannot deserialize {msgtype}: {type(err).__name__}: {err}"
        raise DatasetError(msg) from err


def _event(msg: Any) -> dict[str, Any]:
    try:
        payload = json.loads(msg.data)
    except json.JSONDecodeError as err:
        raise DatasetError(f"episode event is not JSON: {err}") from err
    if not isinstance(payload, dict):
        raise DatasetError(f"episode event must be a JSON object, got {msg.data!r}")
    return payload


def _messages(reader: Any, conns: Mapping[int, str], path: Path) -> Iterable[Any]:
    selected = [c for c in reader.connections if c.id in conns]
    if not selected:
        return
    gen = reader.messages(connections=selected)
    while True:
        try:
            item = next(gen)
        except StopIteration:
            return
        except Exception as err:  # a truncated or corrupt storage file
            raise _read_error(path, err) from err
        yield item


def _lowdim(kind: str, msg: Any, state: dict[str, Any]) -> Any:
    if kind == "joint_states":
        if state["joint_names"] is None:  # the first joint state fixes the order
            state["joint_names"] = tuple(str(n) for n in msg.name)
        return joint_state_values(msg, state["joint_names"])
    if kind == "ee_pose":
        return pose_values(msg)
    if kind == "action":
        return action_values(msg)
    if kind == "reward":
        return reward_values(msg)
    raise DatasetError(f"no low-dim decoder for {kind}")


# ----- alignment ------------------------------------------------------------------------------
@dataclass
class _Plan:
    times: np.ndarray  # (T,) ns of the kept steps
    picks: dict[str, np.ndarray]  # source -> (T,) bag-order message index per kept step
    grid_steps: int
    dropped_by: dict[str, int]
    max_skew_ms: dict[str, float]


def _plan(index: BagIndex, config: RosbagImportConfig) -> _Plan:
    sorted_stamps: dict[str, np.ndarray] = {}
    orders: dict[str, np.ndarray] = {}
    for key, src in index.sources.items():
        stamps = np.asarray(src.stamps, dtype=np.int64)
        order = np.argsort(stamps, kind="stable")
        sorted_stamps[key], orders[key] = stamps[order], order
    cameras = [k for k, s in index.sources.items() if s.kind == "image"]
    first = (
        min(int(sorted_stamps[k][0]) for k in cameras)
        if cameras
        else min(int(s[0]) for s in sorted_stamps.values())
    )
    last = max(int(s[-1]) for s in sorted_stamps.values())
    grid = sample_grid(first, last, config.fps)
    tol = {k: round(config.tolerance_of(k) * 1e9) for k in sorted_stamps}
    al = align_nearest(sorted_stamps, grid, tol)
    valid = al.valid.copy()
    picks_all = {k: np.where(al.indices[k] >= 0, orders[k][al.indices[k]], -1) for k in orders}
    dropped_by = al.dropped_by()
    for key, src in index.sources.items():  # steps that would use a bad message
        bad = np.asarray(src.bad, dtype=bool)
        if bad.any():
            hit = valid & bad[np.maximum(picks_all[key], 0)]
            dropped_by[key] = dropped_by.get(key, 0) + int(hit.sum())
            valid &= ~hit
    skews = al.skew(sorted_stamps)
    max_skew = {
        k: float(v[valid[al.valid]].max() / 1e6) if valid.any() else 0.0 for k, v in skews.items()
    }
    return _Plan(
        times=grid[valid],
        picks={k: v[valid] for k, v in picks_all.items()},
        grid_steps=int(grid.size),
        dropped_by=dropped_by,
        max_skew_ms=max_skew,
    )


# ----- pass 2: write --------------------------------------------------------------------------
def _lowdim_step(index: BagIndex, key: str, i: int) -> dict[str, Any]:
    src = index.sources[key]
    value = src.values[i]
    if src.kind == "joint_states":
        pos, vel = value
        out: dict[str, Any] = {"joint_pos": pos.astype(np.float32)}
        if index.has_joint_vel:
            out["joint_vel"] = vel.astype(np.float32)
        return out
    if src.kind == "ee_pose":
        return {"ee_pose": value.astype(np.float32)}
    if src.kind == "action":
        return {"action": value.astype(np.float32)}
    reward, success = value
    return {"reward": np.float32(reward), "success": np.bool_(success)}


def _step_keys(index: BagIndex) -> set[str]:
    keys = {"timestamp"}
    for key, src in index.sources.items():
        if src.kind in _IMAGE_KINDS:
            keys.add(key)
        elif src.kind == "joint_states":
            keys.add("joint_pos")
            if index.has_joint_vel:
                keys.add("joint_vel")
        elif src.kind == "reward":
            keys |= {"reward", "success"}
        else:
            keys.add(key)
    return keys


@dataclass(frozen=True)
class _Decoded:
    value: np.ndarray | None
    error: str | None = None


def _decode_image(store: Any, raw: bytes, msgtype: str, kind: str) -> np.ndarray:
    msg = _deserialize(store, raw, msgtype)
    return decode_color(msg) if kind == "image" else decode_depth(msg)


def _stream_steps(
    index: BagIndex, plan: _Plan, config: RosbagImportConfig
) -> Iterable[dict[str, Any] | None]:
    """Yield the kept steps in order (None for a step dropped for a bad image)."""
    image_keys = [k for k, s in index.sources.items() if s.kind in _IMAGE_KINDS]
    n = plan.times.size
    refs: dict[str, dict[int, int]] = {k: {} for k in image_keys}
    for k in image_keys:
        for i in plan.picks[k].tolist():
            refs[k][i] = refs[k].get(i, 0) + 1
    cache: dict[str, dict[int, _Decoded]] = {k: {} for k in image_keys}
    shapes: dict[str, tuple[int, ...]] = {}
    nxt = 0

    def ready(s: int) -> bool:
        return all(int(plan.picks[k][s]) in cache[k] for k in image_keys)

    def build(s: int) -> dict[str, Any] | None:
        step: dict[str, Any] = {"timestamp": np.float64(plan.times[s] / 1e9)}
        dropped = False
        for k in image_keys:
            i = int(plan.picks[k][s])
            dec = cache[k][i]
            refs[k][i] -= 1
            if refs[k][i] == 0:
                del cache[k][i]
            if dec.value is None:
                dropped = True
            else:
                step[k] = dec.value
        for k, src in index.sources.items():
            if src.kind not in _IMAGE_KINDS:
                step.update(_lowdim_step(index, k, int(plan.picks[k][s])))
        return None if dropped else step

    while nxt < n and not image_keys:
        yield build(nxt)
        nxt += 1
    if nxt >= n:
        return
    topics = config.active_topics()
    store = _typestore()
    reader = _open_reader(index.path)
    counts: dict[str, int] = {}
    try:
        conns = _connections(reader, topics, index.path)
        for conn, _t, raw in _messages(reader, conns, index.path):
            key = conns[conn.id]
            i = counts.get(key, 0)
            counts[key] = i + 1
            if key not in refs or i not in refs[key]:
                continue
            where = f"bag {index.path}: {topics[key]} message {i}"
            try:
                img = _decode_image(store, raw, conn.msgtype, index.sources[key].kind)
                if key not in shapes:
                    _check_size(index, key, img.shape)
                if shapes.setdefault(key, img.shape) != img.shape:
                    msg = f"image size changed from {shapes[key]} to {img.shape} within the bag"
                    raise DatasetError(msg)
                cache[key][i] = _Decoded(img)
            except DatasetError as err:
                if not config.drop_bad_messages:
                    raise DatasetError(f"{where}: {err}") from err
                index.errors.append(f"{where}: {err}")
                cache[key][i] = _Decoded(None, str(err))
            while nxt < n and ready(nxt):
                yield build(nxt)
                nxt += 1
    finally:
        reader.close()
    if nxt < n:
        msg = f"bag {index.path}: {n - nxt} steps wait for images that never came (bag changed?)"
        raise DatasetError(msg)


def _check_size(index: BagIndex, key: str, shape: tuple[int, ...]) -> None:
    intr = index.intrinsics.get(_camera(key))
    if intr and intr["width"] and (intr["height"], intr["width"]) != tuple(shape[:2]):
        msg = (
            f"image is {shape[1]}x{shape[0]} but camera_info of {_camera(key)!r} says "
            f"{intr['width']}x{intr['height']}"
        )
        raise DatasetError(msg)


def _success(index: BagIndex, rewards_success: bool | None) -> tuple[bool, str]:
    outcome = [e.get("event") for e in index.events if e.get("event") in ("success", "failure")]
    if outcome:
        return outcome[-1] == "success", "episode_event"
    if rewards_success is not None:
        return rewards_success, "reward"
    return False, "unknown"


def import_bag(
    store: Any,
    path: str | Path,
    config: RosbagImportConfig,
    *,
    index: BagIndex | None = None,
    expected_keys: set[str] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> int:
    """Import one bag as one episode of ``store``; returns the episode index.

    Nothing is committed if anything goes wrong (the partial episode is discarded).
    """
    index = index or index_bag(path, config)
    if not index.sources:
        msg = f"bag {index.path}: none of the topics {sorted(config.active_topics().values())} is in it"
        raise DatasetError(msg)
    keys = _step_keys(index)
    if expected_keys is not None:
        lacking = sorted(expected_keys - keys)
        if lacking:
            msg = (
                f"bag {index.path}: lacks {lacking} that the store's episodes have "
                f"(topics not in the bag: {[config.topics[k] for k in index.missing]})"
            )
            raise DatasetError(msg)
        for extra in sorted(keys - expected_keys):
            log.warning(
                "bag %s: %s is not in the store's episodes; not imported", index.path, extra
            )
        keys &= expected_keys
    plan = _plan(index, config)
    if plan.times.size == 0:
        msg = (
            f"bag {index.path}: no step has every input within tolerance "
            f"({plan.grid_steps} grid steps; missed per source: {plan.dropped_by})"
        )
        raise DatasetError(msg)
    writer = store.begin_episode()
    kept = 0
    rewards_success: bool | None = None
    try:
        for step in _stream_steps(index, plan, config):
            if step is None:
                continue
            if "success" in step:
                rewards_success = bool(rewards_success) or bool(step["success"])
            writer.append({k: v for k, v in step.items() if k in keys})
            kept += 1
            if on_step is not None:
                on_step(1)
        if kept == 0:
            msg = f"bag {index.path}: every step uses a bad message; nothing to import"
            raise DatasetError(msg)
        success, success_source = _success(index, rewards_success)
        meta = {  # started, duration_s and n_steps: the store computes them from timestamp
            "task": config.task or _store_task(store),
            "success": success,
            "operator": config.operator,
            "dropped_steps": int(plan.grid_steps - kept),
            "source": str(index.path),
            "storage": index.storage,
            "success_source": success_source,
            "dropped_by_source": plan.dropped_by,
            "max_skew_ms": plan.max_skew_ms,
            "bad_messages": list(index.errors),
            "topics": {k: s.topic for k, s in index.sources.items()},
            "message_counts": index.message_counts,
        }
        if index.joint_names is not None:
            meta["joint_names"] = list(index.joint_names)
        episode = int(writer.commit(meta=meta))
    except BaseException:
        writer.discard()
        raise
    log.info(
        "%s -> episode %d: %d steps, %d dropped (%s)",
        index.path,
        episode,
        kept,
        plan.grid_steps - kept,
        ", ".join(f"{k} {v}" for k, v in plan.dropped_by.items() if v) or "none missed",
    )
    return episode


def _store_task(store: Any) -> str:
    try:
        return str(store.attrs.get("task", ""))
    except Exception:  # a store without attrs
        return ""


# ----- many bags ------------------------------------------------------------------------------
@dataclass
class ImportReport:
    """What :func:`import_rosbags` did: episodes written and bags that failed (with why)."""

    store: Path
    imported: list[tuple[Path, int]] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    steps: int = 0
    dropped_steps: int = 0
    seconds: float = 0.0


def import_rosbags(
    paths: Sequence[str | Path],
    out: str | Path,
    config: RosbagImportConfig,
    *,
    mode: Literal["create", "append", "overwrite"] = "create",
    robot_profile: str = "",
    progress: bool = False,
) -> ImportReport:
    """Import every bag found in ``paths`` into the store at ``out``, one episode per bag.

    ``mode``: ``create`` refuses an existing store, ``overwrite`` replaces it, ``append`` adds
    to it (the fps must match). A bag that fails is logged and listed in the report; the others
    are still imported.
    """
    from .store import EpisodeStore

    if mode not in ("create", "append", "overwrite"):
        msg = f"mode must be create, append or overwrite, got {mode!r}"
        raise DatasetError(msg)
    out = Path(out)
    if mode == "create" and out.exists():
        msg = f"{out} exists; pass overwrite (--overwrite) or append (--append)"
        raise DatasetError(msg)
    bags = find_bags(paths)
    if not bags:
        msg = f"no rosbag2 found in {[str(p) for p in paths]}"
        raise DatasetError(msg)
    report = ImportReport(store=out)
    start = time.monotonic()
    store: Any = None
    expected: set[str] | None = None
    if mode == "append" and out.exists():
        store = EpisodeStore.open(out, mode="a")
        fps = float(store.attrs.get("fps", config.fps))
        if abs(fps - config.fps) > 1e-9:
            store.close()
            msg = f"{out} was recorded at {fps:g} fps; import with --fps {fps:g} to append"
            raise DatasetError(msg)
        if store.n_episodes:
            expected = set(store.keys)
    # overwrite: build next to the old store and swap it in at the end, so a run that imports
    # nothing (or crashes) leaves the old store as it was.
    target = (
        out.with_name(f".{out.name}.import-{uuid.uuid4().hex[:8]}") if mode == "overwrite" else out
    )
    if mode == "overwrite" and out.exists() and not _replaceable(out):
        msg = f"{out} exists and is not an episode store; refusing to overwrite it"
        raise DatasetError(msg)
    created = False
    bar = _bar(len(bags), progress)
    try:
        for bag in bags:
            try:
                index = index_bag(bag, config)
                if store is None:
                    store = EpisodeStore.create(
                        target, fps=config.fps, task=config.task, robot_profile=robot_profile
                    )
                    created = True
                new_cameras = _check_intrinsics(store, index)
                episode = import_bag(store, bag, config, index=index, expected_keys=expected)
                if new_cameras:  # recorded once a bag that has them was imported
                    have = store.attrs.get("camera_intrinsics") or {}
                    store.update_attrs(camera_intrinsics={**have, **new_cameras})
            except DatasetError as err:
                log.error("%s", err)
                report.failed.append((bag, str(err)))
            else:
                report.imported.append((bag, episode))
                meta = store.episode_meta(episode)
                report.steps += int(meta.get("n_steps", 0))
                report.dropped_steps += int(meta.get("dropped_steps", 0))
                if expected is None:
                    expected = set(store.keys)
            bar.update(1)
            bar.set_postfix(ok=len(report.imported), failed=len(report.failed))
    finally:
        bar.close()
        if store is not None:
            store.close()
    if created and not report.imported:
        log.warning("no bag was imported; removing the empty store %s", target)
        shutil.rmtree(target, ignore_errors=True)
    elif created and target != out:
        _swap_in(target, out)
    report.seconds = time.monotonic() - start
    return report


def _replaceable(path: Path) -> bool:
    return path.is_dir() and ((path / "zarr.json").is_file() or not any(path.iterdir()))


def _swap_in(new: Path, out: Path) -> None:
    """Replace ``out`` by ``new`` (two renames; the old store is deleted last)."""
    old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
    if out.exists():
        out.rename(old)
    new.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    log.info("replaced %s", out)


def _check_intrinsics(store: Any, index: BagIndex) -> dict[str, dict[str, Any]]:
    """Refuse intrinsics that differ from the store's; returns those of new cameras."""
    have = dict(store.attrs.get("camera_intrinsics") or {})
    for cam, intr in index.intrinsics.items():
        if cam in have and have[cam] != intr:
            msg = (
                f"bag {index.path}: camera {cam!r} intrinsics {intr} differ from the store's "
                f"{have[cam]} (import it into its own store)"
            )
            raise DatasetError(msg)
    new = {cam: intr for cam, intr in index.intrinsics.items() if cam not in have}
    for key, src in index.sources.items():
        if (
            src.kind == "image"
            and _camera(key) not in index.intrinsics
            and _camera(key) not in have
        ):
            log.warning("bag %s: no camera_info for camera %r", index.path, _camera(key))
    return new


def _bar(total: int, enabled: bool) -> Any:
    if enabled:
        from tqdm import tqdm

        return tqdm(total=total, unit="bag", desc="import")

    class _Null:
        def update(self, _n: int) -> None: ...
        def set_postfix(self, **_kw: Any) -> None: ...
        def close(self) -> None: ...

    return _Null()
