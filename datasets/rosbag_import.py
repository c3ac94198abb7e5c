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

The config and topic mapping live in :mod:`.rosbag_config`, pass 1 in :mod:`.rosbag_index`; their
public names are importable from here too.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .align import align_nearest, sample_grid
from .errors import DatasetError
from .rosbag_config import (
    _IMAGE_KINDS,
    DEFAULT_TOPICS,
    REWARD_TOPIC,
    RosbagImportConfig,
    _camera,
    find_bags,
    parse_topic_overrides,
)
from .rosbag_decode import decode_color, decode_depth
from .rosbag_index import (
    BagIndex,
    _connections,
    _deserialize,
    _messages,
    _open_reader,
    _typestore,
    index_bag,
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
