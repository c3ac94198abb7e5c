"""Pass 1 of the rosbag2 import: read a bag once for stamps, low-dim values, intrinsics, events.

Images are not decoded here (their stamps are read from the serialized header). Also the bag
reading helpers that pass 2 (:mod:`.rosbag_import`) reuses.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DatasetError
from .rosbag_config import (
    _IMAGE_KINDS,
    _MSGTYPES,
    _STEP_KINDS,
    RosbagImportConfig,
    _camera,
    _kind,
)
from .rosbag_decode import (
    action_values,
    header_stamp_ns,
    intrinsics_from_info,
    joint_state_values,
    pose_values,
    reward_values,
)

__all__ = ["BagIndex", "index_bag"]

# The importer's logger: records keep the name they had when this code lived in rosbag_import.py.
log = logging.getLogger(__name__.rpartition(".")[0] + ".rosbag_import")


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
