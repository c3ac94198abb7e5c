"""Export an :class:`EpisodeStore` as a LeRobot v3.0 dataset (parquet + mp4), without LeRobot.

Layout written (LeRobotDataset ``codebase_version`` "v3.0")::

    <out>/meta/info.json                          features, fps, totals, path templates, chunks
    <out>/meta/stats.json                         per-feature min/max/mean/std/count/quantiles
    <out>/meta/tasks.parquet                      task text (pandas index "task") -> task_index
    <out>/meta/episodes/chunk-000/file-000.parquet  one row per episode: length, tasks,
                                                  dataset_from/to_index, data and video file
                                                  locations, from/to_timestamp, stats/<feature>/*
    <out>/data/chunk-000/file-000.parquet         one row per frame: observation.state, action,
                                                  timestamp, frame_index, episode_index, index,
                                                  task_index, next.reward, next.done, ...
    <out>/videos/observation.images.<camera>/chunk-000/file-000.mp4

Episodes are concatenated into files until a file reaches its size limit (data 100 MB, video
500 MB by default); ``chunks_size`` files make a chunk directory. Timestamps follow LeRobot:
``timestamp = frame_index / fps`` within an episode, the episode's frames start at
``from_timestamp`` in its video file. The store's own sample times and dropped-step counts stay
in the store (a dropped step shortens the LeRobot timeline by one frame).

The dataset is written to a temporary directory next to ``out`` and renamed into place when
complete, so ``out`` never holds a half-written export.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from twinloop.topics import ACTION_NAMES

from .errors import DatasetError

__all__ = [
    "CODEBASE_VERSION",
    "ExportReport",
    "LeRobotExportConfig",
    "export_lerobot",
]

log = logging.getLogger(__name__)

CODEBASE_VERSION = "v3.0"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
_POSE_NAMES = ("ee_x", "ee_y", "ee_z", "ee_qw", "ee_qx", "ee_qy", "ee_qz")
_RESERVED = {"action", "reward", "success", "timestamp"}
_VIDEO_BLOCK_BYTES = 32 * 1024 * 1024  # frames read from the store per block


@dataclass(frozen=True)
class LeRobotExportConfig:
    """What goes where in the LeRobot dataset."""

    repo_id: str = "twinloop/dataset"  # Hub-style name, recorded in the dataset card fields
    state_keys: tuple[str, ...] | None = None  # concatenated into observation.state
    # (None: joint_pos and ee_pose, those the store has)
    vcodec: str = "libx264"  # PyAV encoder; libx264 -> "h264" in info.json (libsvtav1: av1)
    crf: int = 23  # constant rate factor: lower is better quality, larger files
    gop: int = 2  # keyframe interval in frames (LeRobot uses 2 for fast random access)
    pix_fmt: str = "yuv420p"  # video pixel format (even width and height needed for 4:2:0)
    chunks_size: int = 1000  # files per chunk directory
    data_files_size_in_mb: float = 100.0  # start a new data file past this size
    video_files_size_in_mb: float = 500.0  # start a new video file past this size
    robot_type: str | None = None  # None: the store's robot_profile (or null)
    episodes: tuple[int, ...] | None = None  # export only these store episodes (in this order)

    def __post_init__(self) -> None:
        if not self.repo_id or " " in self.repo_id:
            msg = f"repo_id must be a non-empty name without spaces, got {self.repo_id!r}"
            raise DatasetError(msg)
        if not 0 <= self.crf <= 63:
            msg = f"crf must be in [0, 63], got {self.crf}"
            raise DatasetError(msg)
        if self.gop < 1:
            msg = f"gop must be >= 1, got {self.gop}"
            raise DatasetError(msg)
        if self.chunks_size < 1:
            msg = f"chunks_size must be >= 1, got {self.chunks_size}"
            raise DatasetError(msg)
        if not (self.data_files_size_in_mb > 0 and self.video_files_size_in_mb > 0):
            msg = "data_files_size_in_mb and video_files_size_in_mb must be positive"
            raise DatasetError(msg)
        if self.state_keys is not None and not self.state_keys:
            msg = "state_keys must name at least one key (or be None for the default)"
            raise DatasetError(msg)


@dataclass
class ExportReport:
    out: Path
    episodes: int = 0
    frames: int = 0
    videos: dict[str, int] = field(default_factory=dict)  # video key -> files written
    data_files: int = 0
    seconds: float = 0.0


# ----- features -------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Plan:
    fps: float
    cameras: dict[str, str]  # store key image_<cam> -> feature observation.images.<cam>
    state_keys: tuple[str, ...]
    state_names: list[str]
    extras: dict[str, str]  # store key -> feature observation.<key>
    has_action: bool
    has_reward: bool
    has_success: bool
    features: dict[str, dict[str, Any]]


def _names_for(key: str, width: int, meta: dict[str, Any]) -> list[str]:
    if key == "joint_pos" and len(meta.get("joint_names") or []) == width:
        return [str(n) for n in meta["joint_names"]]
    if key == "joint_vel" and len(meta.get("joint_names") or []) == width:
        return [f"{n}.vel" for n in meta["joint_names"]]
    if key == "ee_pose" and width == 7:
        return list(_POSE_NAMES)
    return [f"{key}_{i}" for i in range(width)]


def _dtype_name(dtype: np.dtype) -> str:
    return "bool" if dtype.kind == "b" else str(np.dtype(dtype))


def _plan_features(store: Any, config: LeRobotExportConfig) -> _Plan:
    keys = set(store.keys)
    meta0 = store.episode_meta(0)
    cameras = {
        k: f"observation.images.{k[len('image_') :]}"
        for k in sorted(keys)
        if k.startswith("image_")
    }
    for k in sorted(keys):
        if k.startswith("depth_"):
            log.info("%s: depth is not exported (LeRobot videos are lossy 8-bit colour)", k)
    if config.state_keys is None:
        state_keys = tuple(k for k in ("joint_pos", "ee_pose") if k in keys)
    else:
        state_keys = config.state_keys
        missing = [k for k in state_keys if k not in keys]
        if missing:
            msg = f"state keys {missing} are not in the store; it has {sorted(keys)}"
            raise DatasetError(msg)
    state_names: list[str] = []
    for k in state_keys:
        arr = store.array(k)
        if arr.ndim > 2 or arr.dtype.kind not in "biuf":
            msg = (
                f"state key {k!r} must be a numeric vector per step, got step shape {arr.shape[1:]}"
            )
            raise DatasetError(msg)
        width = int(arr.shape[1]) if arr.ndim == 2 else 1
        state_names += _names_for(k, width, meta0)
    features: dict[str, dict[str, Any]] = {}
    fps = float(store.fps)
    if cameras:
        _check_encoder(config.vcodec)
    for key, feat in cameras.items():
        h, w = (int(d) for d in store.array(key).shape[1:3])
        if config.pix_fmt in ("yuv420p", "yuv420p10le") and (h % 2 or w % 2):
            msg = (
                f"{key}: {w}x{h} frames cannot be encoded as {config.pix_fmt} (needs even sizes); "
                "use pix_fmt yuv444p"
            )
            raise DatasetError(msg)
        features[feat] = {
            "dtype": "video",
            "shape": [h, w, 3],
            "names": ["height", "width", "channels"],
            "info": {
                "video.height": h,
                "video.width": w,
                "video.codec": _codec_label(config.vcodec),
                "video.pix_fmt": config.pix_fmt,
                "video.is_depth_map": False,
                "video.fps": _fps_value(fps),
                "video.channels": 3,
                "has_audio": False,
            },
        }
    if state_keys:
        features["observation.state"] = {
            "dtype": "float32",
            "shape": [len(state_names)],
            "names": state_names,
        }
    extras: dict[str, str] = {}
    for k in sorted(keys - set(state_keys) - _RESERVED - set(cameras)):
        arr = store.array(k)
        if k.startswith("depth_") or arr.ndim > 2 or arr.dtype.kind not in "biuf":
            if not k.startswith("depth_"):
                log.info("%s: step shape %s is not exported", k, arr.shape[1:])
            continue
        width = int(arr.shape[1]) if arr.ndim == 2 else 1
        extras[k] = f"observation.{k}"
        features[extras[k]] = {
            "dtype": _dtype_name(arr.dtype),
            "shape": [width],
            "names": _names_for(k, width, meta0) if arr.ndim == 2 else None,
        }
    has_action = "action" in keys
    if has_action:
        width = int(store.array("action").shape[1])
        features["action"] = {
            "dtype": "float32",
            "shape": [width],
            "names": list(ACTION_NAMES) if width == len(ACTION_NAMES) else None,
        }
    else:
        log.warning("the store has no action key; the LeRobot dataset has no 'action' feature")
    has_reward, has_success = "reward" in keys, "success" in keys
    if has_reward:
        features["next.reward"] = {"dtype": "float32", "shape": [1], "names": None}
    if has_success:
        features["next.success"] = {"dtype": "bool", "shape": [1], "names": None}
    features["next.done"] = {"dtype": "bool", "shape": [1], "names": None}
    features["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
    for k in ("frame_index", "episode_index", "index", "task_index"):
        features[k] = {"dtype": "int64", "shape": [1], "names": None}
    return _Plan(
        fps=fps,
        cameras=cameras,
        state_keys=state_keys,
        state_names=state_names,
        extras=extras,
        has_action=has_action,
        has_reward=has_reward,
        has_success=has_success,
        features=features,
    )


def _check_encoder(vcodec: str) -> None:
    import av

    try:
        av.codec.Codec(vcodec, "w")
    except Exception as err:  # av raises UnknownCodecError (a ValueError) or others
        msg = f"cannot encode video with {vcodec!r}: this PyAV has no such encoder ({err})"
        raise DatasetError(msg) from err


def _codec_label(vcodec: str) -> str:
    return {"libx264": "h264", "libsvtav1": "av1", "libaom-av1": "av1", "libx265": "hevc"}.get(
        vcodec, vcodec
    )


def _fps_value(fps: float) -> int | float:
    return int(fps) if float(fps).is_integer() else float(fps)


# ----- stats ----------------------------------------------------------------------------------
def _stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """LeRobot per-feature stats over axis 0 of a (T, D) float array."""
    out = {
        "min": values.min(axis=0),
        "max": values.max(axis=0),
        "mean": values.mean(axis=0),
        "std": values.std(axis=0),
        "count": np.array([values.shape[0]], dtype=np.int64),
    }
    for name, q in QUANTILES.items():
        out[name] = np.quantile(values, q, axis=0)
    return out


def _image_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel stats in [0, 1], shape (3, 1, 1), over (sampled, downsampled) frames."""
    n = frames.shape[0]
    take = np.unique(np.round(np.linspace(0, n - 1, min(n, 100))).astype(int))
    f = frames[take]
    step = max(1, int(max(f.shape[1:3]) // 150)) if max(f.shape[1:3]) >= 300 else 1
    px = f[:, ::step, ::step].reshape(-1, 3).astype(np.float64) / 255.0
    s = _stats(px)
    out = {k: v.reshape(3, 1, 1) for k, v in s.items() if k != "count"}
    out["count"] = np.array([n], dtype=np.int64)
    return out


def _aggregate(stats: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Dataset stats from episode stats (exact mean/std/min/max; quantiles count-weighted)."""
    counts = np.array([float(s["count"][0]) for s in stats])
    total = counts.sum()
    w = counts / total
    means = np.stack([s["mean"] for s in stats])
    shape = (-1,) + (1,) * (means.ndim - 1)
    mean = (means * w.reshape(shape)).sum(axis=0)
    var = sum(
        wi * (s["std"] ** 2 + (s["mean"] - mean) ** 2) for wi, s in zip(w, stats, strict=True)
    )
    out = {
        "min": np.min(np.stack([s["min"] for s in stats]), axis=0),
        "max": np.max(np.stack([s["max"] for s in stats]), axis=0),
        "mean": mean,
        "std": np.sqrt(var),
        "count": np.array([int(total)], dtype=np.int64),
    }
    for name in QUANTILES:
        out[name] = (np.stack([s[name] for s in stats]) * w.reshape(shape)).sum(axis=0)
    return out


def _jsonable(stats: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
    return {f: {k: np.asarray(v).tolist() for k, v in s.items()} for f, s in stats.items()}


# ----- files ----------------------------------------------------------------------------------
class _Cursor:
    """chunk/file indices of the file being filled; rolls over at a size limit."""

    def __init__(self, chunks_size: int, limit_mb: float) -> None:
        self.chunk, self.file = 0, 0
        self.chunks_size, self.limit = chunks_size, limit_mb * 1024 * 1024

    def advance(self) -> None:
        self.file += 1
        if self.file >= self.chunks_size:
            self.chunk, self.file = self.chunk + 1, 0


class _DataWriter:
    """Frames go to data/chunk-XXX/file-YYY.parquet, one row group per episode."""

    def __init__(self, root: Path, config: LeRobotExportConfig) -> None:
        self.root = root
        self.cursor = _Cursor(config.chunks_size, config.data_files_size_in_mb)
        self.writer: Any = None
        self.bytes = 0
        self.files = 0

    def write(self, table: Any) -> tuple[int, int]:
        import pyarrow.parquet as pq

        if self.writer is not None and self.bytes >= self.cursor.limit:
            self.close()
            self.cursor.advance()
        if self.writer is None:
            path = self.root / DATA_PATH.format(
                chunk_index=self.cursor.chunk, file_index=self.cursor.file
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(path, table.schema, compression="snappy")
            self.bytes = 0
            self.files += 1
        self.writer.write_table(table)
        self.bytes += table.nbytes
        return self.cursor.chunk, self.cursor.file

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class _VideoWriter:
    """Frames of one camera go to videos/<key>/chunk-XXX/file-YYY.mp4 (PyAV)."""

    def __init__(self, root: Path, key: str, fps: float, config: LeRobotExportConfig) -> None:
        self.root, self.key, self.config = root, key, config
        self.rate = Fraction(fps).limit_denominator(1001)
        self.cursor = _Cursor(config.chunks_size, config.video_files_size_in_mb)
        self.container: Any = None
        self.stream: Any = None
        self.frames = 0  # frames in the current file
        self.bytes = 0  # encoded bytes in the current file
        self.files = 0
        self.path: Path | None = None

    def _open(self, height: int, width: int) -> None:
        import av

        self.path = self.root / VIDEO_PATH.format(
            video_key=self.key, chunk_index=self.cursor.chunk, file_index=self.cursor.file
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        container = av.open(str(self.path), mode="w")
        try:
            stream: Any = container.add_stream(self.config.vcodec, rate=self.rate)
        except Exception as err:  # unknown or unavailable encoder
            container.close()
            msg = f"cannot encode video with {self.config.vcodec!r}: {err}"
            raise DatasetError(msg) from err
        self.container = container
        stream.width, stream.height = width, height
        stream.pix_fmt = self.config.pix_fmt
        stream.time_base = 1 / self.rate
        opts = {"g": str(self.config.gop), "crf": str(self.config.crf)}
        if self.config.vcodec == "libx264":
            opts["preset"] = "veryfast"
        stream.options = opts
        self.stream = stream
        self.frames = 0
        self.bytes = 0
        self.files += 1

    def begin_episode(self, height: int, width: int) -> tuple[int, int, float]:
        """Open (or roll over to) the file for the next episode; (chunk, file, from_timestamp)."""
        # Encoded bytes so far (the encoder may hold back a few frames): a size estimate.
        if self.container is not None and self.bytes >= self.cursor.limit:
            self.close()
            self.cursor.advance()
        if self.container is None:
            self._open(height, width)
        return self.cursor.chunk, self.cursor.file, self.frames / float(self.rate)

    def add(self, frames: np.ndarray) -> None:
        import av

        for img in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame = frame.reformat(format=self.config.pix_fmt)
            frame.pts = self.frames
            self.frames += 1
            for packet in self.stream.encode(frame):
                self.bytes += packet.size
                self.container.mux(packet)

    def close(self) -> None:
        if self.container is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)
            self.container.close()
            self.container, self.stream = None, None


def _tasks_table(tasks: list[str]) -> Any:
    """meta/tasks.parquet: a pandas frame with index "task" and column task_index."""
    import pyarrow as pa

    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": "task",
                "field_name": "task",
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.0",
    }
    table = pa.table(
        {
            "task_index": pa.array(range(len(tasks)), type=pa.int64()),
            "task": pa.array(tasks, type=pa.string()),
        }
    )
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


# ----- export ---------------------------------------------------------------------------------
def _episode_table(
    plan: _Plan, ep: dict[str, np.ndarray], *, n: int, episode: int, start: int, task_index: int
) -> tuple[Any, dict[str, np.ndarray]]:
    """The frame rows of one episode as an Arrow table, and the arrays behind them."""
    import pyarrow as pa

    cols: dict[str, np.ndarray] = {}
    if plan.state_keys:
        parts = [ep[k].reshape(n, -1).astype(np.float32) for k in plan.state_keys]
        cols["observation.state"] = np.concatenate(parts, axis=1)
    for key, feat in plan.extras.items():
        cols[feat] = ep[key].reshape(n, -1) if ep[key].ndim == 2 else ep[key].reshape(n)
    if plan.has_action:
        cols["action"] = ep["action"].astype(np.float32)
    if plan.has_reward:
        cols["next.reward"] = ep["reward"].astype(np.float32).reshape(n)
    if plan.has_success:
        cols["next.success"] = ep["success"].astype(bool).reshape(n)
    done = np.zeros(n, dtype=bool)
    done[-1] = True
    cols["next.done"] = done
    cols["timestamp"] = (np.arange(n) / plan.fps).astype(np.float32)
    cols["frame_index"] = np.arange(n, dtype=np.int64)
    cols["episode_index"] = np.full(n, episode, dtype=np.int64)
    cols["index"] = np.arange(start, start + n, dtype=np.int64)
    cols["task_index"] = np.full(n, task_index, dtype=np.int64)
    arrays = {}
    for name, values in cols.items():
        if values.ndim == 2:
            flat = pa.array(values.reshape(-1))
            arrays[name] = pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
        else:
            arrays[name] = pa.array(values)
    return pa.table(arrays), cols


def _prepare_out(out: Path, overwrite: bool) -> Path:
    if out.exists():
        if not overwrite:
            msg = f"{out} exists; pass overwrite (--overwrite) to replace it"
            raise DatasetError(msg)
        if out.is_dir() and not ((out / "meta" / "info.json").is_file() or not any(out.iterdir())):
            msg = f"{out} exists and is not a LeRobot dataset; refusing to overwrite it"
            raise DatasetError(msg)
        if not out.is_dir():
            msg = f"{out} exists and is not a directory"
            raise DatasetError(msg)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    return tmp


def export_lerobot(
    store_path: str | Path,
    out: str | Path,
    config: LeRobotExportConfig | None = None,
    *,
    overwrite: bool = False,
    on_episode: Callable[[int], None] | None = None,
) -> ExportReport:
    """Write the store's episodes as a LeRobot v3.0 dataset at ``out``; returns a report."""
    from .store import EpisodeStore

    config = config or LeRobotExportConfig()
    out = Path(out)
    started = time.monotonic()
    with EpisodeStore.open(store_path, mode="r") as store:
        if store.n_episodes == 0:
            msg = f"{store_path} holds no episodes; nothing to export"
            raise DatasetError(msg)
        episodes = _episode_list(store.n_episodes, config.episodes)
        plan = _plan_features(store, config)
        tmp = _prepare_out(out, overwrite)
        try:
            report = _write(store, plan, episodes, tmp, config, on_episode)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    report.out = out
    report.seconds = time.monotonic() - started
    log.info(
        "exported %d episodes (%d frames) to %s in %.1f s",
        report.episodes,
        report.frames,
        out,
        report.seconds,
    )
    return report


def _episode_list(n: int, chosen: Sequence[int] | None) -> list[int]:
    if chosen is None:
        return list(range(n))
    out = []
    for i in chosen:
        j = i + n if i < 0 else i
        if not 0 <= j < n:
            msg = f"episode {i} out of range: the store has {n} episodes"
            raise DatasetError(msg)
        out.append(j)
    if len(set(out)) != len(out):
        msg = f"duplicate episodes in {list(chosen)}"
        raise DatasetError(msg)
    if not out:
        msg = "no episodes chosen"
        raise DatasetError(msg)
    return out


def _write(
    store: Any,
    plan: _Plan,
    episodes: list[int],
    root: Path,
    config: LeRobotExportConfig,
    on_episode: Callable[[int], None] | None,
) -> ExportReport:
    import pyarrow as pa
    import pyarrow.parquet as pq

    report = ExportReport(out=root)
    data = _DataWriter(root, config)
    videos = {feat: _VideoWriter(root, feat, plan.fps, config) for feat in plan.cameras.values()}
    lowdim_keys = [*plan.state_keys, *plan.extras]
    lowdim_keys += [k for k in ("action", "reward", "success") if k in store.keys]
    tasks: dict[str, int] = {}
    rows: list[dict[str, Any]] = []
    all_stats: dict[str, list[dict[str, np.ndarray]]] = {}
    index = 0
    try:
        for new_i, src_i in enumerate(episodes):
            meta = store.episode_meta(src_i)
            task = str(meta.get("task") or store.attrs.get("task") or "")
            task_index = tasks.setdefault(task, len(tasks))
            ep = store.get_episode(src_i, keys=sorted(set(lowdim_keys))) if lowdim_keys else {}
            sl = store.episode_slice(src_i)
            n = int(sl.stop - sl.start)
            table, cols = _episode_table(
                plan, ep, n=n, episode=new_i, start=index, task_index=task_index
            )
            chunk, file = data.write(table)
            row: dict[str, Any] = {
                "episode_index": new_i,
                "tasks": [task],
                "length": n,
                "data/chunk_index": chunk,
                "data/file_index": file,
                "dataset_from_index": index,
                "dataset_to_index": index + n,
            }
            ep_stats = {name: _stats(_as_2d(v)) for name, v in cols.items()}
            for key, feat in plan.cameras.items():
                row.update(_encode_episode(store, src_i, key, videos[feat], feat, ep_stats))
            row["meta/episodes/chunk_index"] = 0
            row["meta/episodes/file_index"] = 0
            for feat, s in ep_stats.items():
                all_stats.setdefault(feat, []).append(s)
                for stat, value in s.items():
                    row[f"stats/{feat}/{stat}"] = np.asarray(value).tolist()
            rows.append(row)
            index += n
            report.episodes += 1
            report.frames += n
            if on_episode is not None:
                on_episode(new_i)
    finally:
        data.close()
        for v in videos.values():
            v.close()
    report.data_files = data.files
    report.videos = {feat: v.files for feat, v in videos.items()}
    ep_path = root / EPISODES_PATH.format(chunk_index=0, file_index=0)
    ep_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), ep_path)
    pq.write_table(_tasks_table(list(tasks)), root / "meta" / "tasks.parquet")
    stats = {feat: _aggregate(s) for feat, s in all_stats.items()}
    _write_json(root / "meta" / "stats.json", _jsonable(stats))
    _write_json(root / "meta" / "info.json", _info(store, plan, config, report, len(tasks), data))
    return report


def _as_2d(values: np.ndarray) -> np.ndarray:
    v = values.astype(np.float64) if values.dtype.kind == "b" else values
    return v.reshape(v.shape[0], -1) if v.ndim > 1 else v.reshape(-1, 1)


def _encode_episode(
    store: Any,
    episode: int,
    key: str,
    video: _VideoWriter,
    feat: str,
    ep_stats: dict[str, dict[str, np.ndarray]],
) -> dict[str, Any]:
    h, w = (int(d) for d in store.array(key).shape[1:3])
    chunk, file, t0 = video.begin_episode(h, w)
    sampled: list[np.ndarray] = []
    n = 0
    sl = store.episode_slice(episode)
    length = sl.stop - sl.start
    take = set(np.round(np.linspace(0, length - 1, min(length, 100))).astype(int).tolist())
    for block in store.iter_episode_blocks(episode, keys=[key], block_bytes=_VIDEO_BLOCK_BYTES):
        frames = block[key]
        video.add(frames)
        sampled += [frames[i - n] for i in range(n, n + len(frames)) if i in take]
        n += len(frames)
    stats = _image_stats(np.stack(sampled))
    stats["count"] = np.array([n], dtype=np.int64)
    ep_stats[feat] = stats
    return {
        f"videos/{feat}/chunk_index": chunk,
        f"videos/{feat}/file_index": file,
        f"videos/{feat}/from_timestamp": t0,
        f"videos/{feat}/to_timestamp": t0 + n / video.rate,
    }


def _info(
    store: Any,
    plan: _Plan,
    config: LeRobotExportConfig,
    report: ExportReport,
    n_tasks: int,
    data: _DataWriter,
) -> dict[str, Any]:
    robot = config.robot_type or store.attrs.get("robot_profile") or None
    return {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": robot,
        "total_episodes": report.episodes,
        "total_frames": report.frames,
        "total_tasks": n_tasks,
        "chunks_size": config.chunks_size,
        "data_files_size_in_mb": _fps_value(config.data_files_size_in_mb),
        "video_files_size_in_mb": _fps_value(config.video_files_size_in_mb),
        "fps": _fps_value(plan.fps),
        "splits": {"train": f"0:{report.episodes}"},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if plan.cameras else None,
        "features": plan.features,
        "twinloop": {  # provenance (LeRobot ignores unknown keys)
            "repo_id": config.repo_id,
            "source_store": str(store.path),
            "camera_intrinsics": store.attrs.get("camera_intrinsics", {}),
        },
    }


def _write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=4, allow_nan=False) + "\n")
