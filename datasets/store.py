"""The episode store: a zarr 3 directory in the diffusion_policy ReplayBuffer layout, crash-safe.

Layout (see docs/datasets.md)::

    <store>/zarr.json            root group; attrs: schema_version, fps, task, robot_profile,
                                 camera_intrinsics, created, nan_keys, episodes (per-episode metadata)
    <store>/data/<key>           time-major arrays, all episodes concatenated
    <store>/meta/episode_ends    int64 cumulative end index of every committed episode

An episode exists only once its end index is appended to ``meta/episode_ends`` (the commit
point). Data rows are written first, the end index second, the episode's metadata right after.
Every file write is atomic (zarr's LocalStore writes a temporary file and renames it), so a crash
leaves one of: data rows past the last end (rolled back when the store is opened for appending),
an end index whose chunk was never written (it reads as 0 and is rolled back the same way), or a
committed episode without metadata (rebuilt from its arrays). Committed episodes are never lost.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import datetime as _dt
import errno
import fcntl
import json
import logging
import math
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np

from .errors import DatasetError

__all__ = [
    "CHUNK_BYTES",
    "IMAGE_CODECS",
    "LOWDIM_CHUNK",
    "SCHEMA_VERSION",
    "EpisodeStore",
    "EpisodeWriter",
    "KeySpec",
    "chunk_rows",
    "key_spec",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1  # bump on any layout change; older code refuses newer stores
CHUNK_BYTES = 2 * 1024 * 1024  # target chunk size along time (images: 2 frames of 640x480x3)
LOWDIM_CHUNK = 10_000  # at most this many rows per chunk (low-dimensional arrays)
# Write every chunk: skipping all-fill chunks costs a full compare per chunk (5 ms per 2 frames).
_GROW_CHUNKS = 16  # a streaming writer grows arrays this many chunks ahead
_ARRAY_CONFIG: dict[str, Any] = {"write_empty_chunks": True}
_COPY_BLOCK_BYTES = 64 * 1024 * 1024  # block size when copying episodes (merge, drop)
_INTRINSICS_FIELDS = ("width", "height", "fx", "fy", "ppx", "ppy", "model", "coeffs")


# ----- keys ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KeySpec:
    """What a data key must hold: dtype and the shape of one step (None: any size)."""

    dtype: np.dtype
    step_shape: tuple[int | None, ...] | None  # None: any shape (extra keys)
    doc: str = ""

    def __post_init__(self) -> None:
        if self.step_shape is not None and any(d is not None and d < 1 for d in self.step_shape):
            msg = f"step_shape dimensions must be >= 1 or None, got {self.step_shape}"
            raise DatasetError(msg)


_FIXED_KEYS: dict[str, KeySpec] = {
    "joint_pos": KeySpec(np.dtype(np.float32), (None,), "joint positions, rad or m"),
    "joint_vel": KeySpec(np.dtype(np.float32), (None,), "joint velocities"),
    "ee_pose": KeySpec(np.dtype(np.float32), (7,), "end-effector xyz (m) + quaternion wxyz"),
    "action": KeySpec(np.dtype(np.float32), (5,), "[dx, dy, dz, dyaw, gripper]"),
    "reward": KeySpec(np.dtype(np.float32), (), "reward of the step"),
    "success": KeySpec(np.dtype(np.bool_), (), "task success at the step"),
    "timestamp": KeySpec(np.dtype(np.float64), (), "sample time of the step, s"),
}


def key_spec(key: str) -> KeySpec | None:
    """The spec of a standard key (``image_<camera>``, ``depth_<camera>``, ...); None for extras."""
    if key in _FIXED_KEYS:
        return _FIXED_KEYS[key]
    if key.startswith("image_") and len(key) > len("image_"):
        return KeySpec(np.dtype(np.uint8), (None, None, 3), "RGB frame, uint8 HxWx3")
    if key.startswith("depth_") and len(key) > len("depth_"):
        return KeySpec(np.dtype(np.uint16), (None, None), "depth frame, uint16 mm")
    return None


def chunk_rows(step_shape: Sequence[int], dtype: np.dtype) -> int:
    """Rows per chunk along time: about CHUNK_BYTES, at least 1, at most LOWDIM_CHUNK."""
    row_bytes = max(1, math.prod(step_shape) * np.dtype(dtype).itemsize)
    return int(min(LOWDIM_CHUNK, max(1, CHUNK_BYTES // row_bytes)))


def _check_key_name(key: object) -> str:
    if not isinstance(key, str) or not key or "/" in key or key.startswith((".", "_")):
        msg = f"bad data key {key!r}: keys are non-empty strings without '/' or a leading '.'/'_'"
        raise DatasetError(msg)
    return key


def _is_image_like(step_shape: Sequence[int]) -> bool:
    return len(step_shape) >= 2


# Image codecs (frames: 2+ trailing dims). "lz4": fastest, best on clean (twin) frames;
# "lz4-bitshuffle": better on noisy real-camera frames; "zstd": smallest, ~4x slower to write.
IMAGE_CODECS: dict[str, tuple[str, int, str]] = {
    "lz4": ("lz4", 5, "shuffle"),
    "lz4-bitshuffle": ("lz4", 5, "bitshuffle"),
    "zstd": ("zstd", 3, "bitshuffle"),
}


def _compressor(step_shape: Sequence[int], dtype: np.dtype, image_codec: str = "lz4") -> Any:
    from zarr.codecs import BloscCodec, BloscShuffle

    if _is_image_like(step_shape):
        cname, clevel, shuffle = IMAGE_CODECS[image_codec]
        return BloscCodec(
            cname=cname,  # type: ignore[arg-type]  # one of zarr's BloscCname literals
            clevel=clevel,
            shuffle=BloscShuffle(shuffle),
            typesize=dtype.itemsize,
        )
    return BloscCodec(cname="zstd", clevel=5, shuffle=BloscShuffle.shuffle, typesize=dtype.itemsize)


_RESERVED_ATTRS = frozenset(
    {"schema_version", "fps", "task", "robot_profile", "camera_intrinsics", "created"}
    | {"nan_keys", "image_codec", "episodes"}
)


# ----- helpers ---------------------------------------------------------------------------------
def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    msg = f"{type(value).__name__} is not JSON-serialisable"
    raise TypeError(msg)


def _jsonable(value: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(value, default=_json_default, allow_nan=False))
    except (TypeError, ValueError) as err:
        msg = f"{what} must be JSON-serialisable (no NaN): {err}"
        raise DatasetError(msg) from None


def _check_intrinsics(intr: Mapping[str, Any] | None) -> dict[str, Any]:
    if intr is None:
        return {}
    if not isinstance(intr, Mapping):
        msg = f"camera_intrinsics must map camera name -> intrinsics, got {type(intr).__name__}"
        raise DatasetError(msg)
    out: dict[str, Any] = {}
    for cam, k in intr.items():
        if not isinstance(k, Mapping):
            msg = (
                f"camera_intrinsics[{cam!r}] must be a mapping with {', '.join(_INTRINSICS_FIELDS)}"
            )
            raise DatasetError(msg)
        missing = [f for f in _INTRINSICS_FIELDS if f not in k]
        if missing:
            msg = f"camera_intrinsics[{cam!r}] lacks {', '.join(missing)}"
            raise DatasetError(msg)
        for f in ("width", "height"):
            if int(k[f]) < 1:
                msg = f"camera_intrinsics[{cam!r}].{f} must be >= 1, got {k[f]}"
                raise DatasetError(msg)
        out[str(cam)] = _jsonable(dict(k), f"camera_intrinsics[{cam!r}]")
    return out


def _exchange_paths(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False if not supported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def _remove_partials(root: Path) -> int:
    """Delete temporary files a killed zarr write left behind (``*.partial``)."""
    n = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if name.endswith(".partial"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(dirpath, name))
                    n += 1
    return n


def _is_store_dir(path: Path) -> bool:
    return (path / "zarr.json").is_file()


# ----- the store -------------------------------------------------------------------------------
class EpisodeStore:
    """A zarr 3 episode store (diffusion_policy ReplayBuffer layout) with atomic episode commits.

    Create with :meth:`create`, open with :meth:`open`; use as a context manager. ``add_episode``
    writes a whole episode; ``begin_episode`` streams one step at a time with bounded memory.
    """

    def __init__(
        self, path: Path, group: Any, mode: Literal["r", "a"], lock_fd: int | None
    ) -> None:
        # Use EpisodeStore.create / EpisodeStore.open.
        self._path = path
        self._group = group
        self._mode = mode
        self._lock_fd = lock_fd
        self._writer: EpisodeWriter | None = None
        self._closed = False
        self._load()

    # ----- construction ----------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        fps: float,
        task: str = "",
        robot_profile: str = "",
        camera_intrinsics: Mapping[str, Mapping[str, Any]] | None = None,
        nan_keys: Sequence[str] = (),
        image_codec: str = "lz4",
        overwrite: bool = False,
        extra_attrs: Mapping[str, Any] | None = None,
    ) -> EpisodeStore:
        """Create an empty store at ``path`` and open it for appending.

        Refuses an existing path unless ``overwrite`` (which only removes an existing zarr store
        or an empty directory, never other files). ``nan_keys``: float keys allowed to hold NaN.
        ``image_codec``: one of IMAGE_CODECS (frames and depth). ``extra_attrs``: more JSON attrs.
        """
        import zarr

        path = Path(path)
        if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
            msg = f"fps must be a positive number, got {fps!r}"
            raise DatasetError(msg)
        intr = _check_intrinsics(camera_intrinsics)
        if image_codec not in IMAGE_CODECS:
            msg = f"unknown image_codec {image_codec!r}. Available: {sorted(IMAGE_CODECS)}"
            raise DatasetError(msg)
        for key in nan_keys:
            _check_key_name(key)
        if path.exists():
            if not overwrite:
                msg = f"{path} exists; pass overwrite=True to replace it"
                raise DatasetError(msg)
            if path.is_dir() and (_is_store_dir(path) or not any(path.iterdir())):
                shutil.rmtree(path)
            else:
                msg = f"{path} exists and is not a zarr store; refusing to overwrite it"
                raise DatasetError(msg)
        attrs: dict[str, Any] = dict(_jsonable(dict(extra_attrs or {}), "extra_attrs"))
        clash = sorted(_RESERVED_ATTRS & set(attrs))
        if clash:
            msg = f"extra_attrs may not set reserved attrs {clash}"
            raise DatasetError(msg)
        attrs.update(
            schema_version=SCHEMA_VERSION,
            fps=float(fps),
            task=str(task),
            robot_profile=str(robot_profile),
            camera_intrinsics=intr,
            created=_now_iso(),
            nan_keys=sorted(set(nan_keys)),
            image_codec=image_codec,
            episodes=[],
        )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            root = zarr.open_group(str(path), mode="w-", zarr_format=3)
            root.create_group("data")
            meta = root.create_group("meta")
            meta.create_array(
                "episode_ends",
                shape=(0,),
                dtype="int64",
                chunks=(LOWDIM_CHUNK,),
                fill_value=0,
                compressors=_compressor((), np.dtype(np.int64)),
            )
            root.update_attributes(attrs)  # last: a store without schema_version is unfinished
        except OSError as err:
            msg = f"could not create the store at {path}: {err}"
            raise DatasetError(msg) from err
        log.info("created episode store %s (fps %g)", path, fps)
        return cls.open(path, mode="a")

    @classmethod
    def open(cls, path: str | os.PathLike[str], mode: Literal["r", "a"] = "r") -> EpisodeStore:
        """Open an existing store, read-only (``"r"``) or for appending (``"a"``).

        In ``"a"`` mode a torn append (rows past the last committed end, or an end index that was
        never written) is rolled back and logged; ``"r"`` ignores it without touching the files.
        """
        import zarr

        path = Path(path)
        if mode not in ("r", "a"):
            msg = f"mode must be 'r' or 'a', got {mode!r}"
            raise DatasetError(msg)
        if not _is_store_dir(path):
            msg = f"{path} is not an episode store (no zarr.json)"
            raise DatasetError(msg)
        lock_fd = cls._lock(path) if mode == "a" else None
        try:
            try:
                group = zarr.open_group(str(path), mode="r" if mode == "r" else "r+")
            except Exception as err:  # zarr raises several types for a broken store
                msg = f"cannot open {path} as a zarr group: {err}"
                raise DatasetError(msg) from err
            attrs = group.attrs.asdict()
            version = attrs.get("schema_version")
            if not isinstance(version, int):
                msg = f"{path} is not a twinloop episode store (no integer schema_version attr)"
                raise DatasetError(msg)
            if version > SCHEMA_VERSION:
                msg = (
                    f"{path} has schema_version {version}, newer than this code supports "
                    f"({SCHEMA_VERSION}); upgrade twinloop to read it"
                )
                raise DatasetError(msg)
            return cls(path, group, mode, lock_fd)
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise

    @staticmethod
    def _lock(path: Path) -> int:
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            msg = f"{path} is open for appending by another process"
            raise DatasetError(msg) from None
        return fd

    def _load(self) -> None:
        """Read ends, arrays and metadata; in "a" mode repair a torn append."""
        self._attrs = self._group.attrs.asdict()
        self._arrays: dict[str, Any] = {}
        data = self._group["data"]
        for name, arr in data.arrays():
            self._arrays[name] = arr.with_config(_ARRAY_CONFIG)
        self._ends_arr = self._group["meta/episode_ends"]
        ends = np.asarray(self._ends_arr[:], dtype=np.int64)
        repaired = False
        # An end index whose chunk never reached the disk reads as the fill value 0.
        if len(ends) and ends[-1] == 0:
            log.warning("%s: the last end index was never written (torn commit)", self._path)
            ends = ends[:-1]
            if self._mode == "a":
                self._ends_arr.resize((len(ends),))
                repaired = True
        problem = _ends_problem(ends)
        if problem:
            msg = (
                f"{self._path}: corrupt meta/episode_ends: {problem} (run `twinloop dataset check`)"
            )
            raise DatasetError(msg)
        self._ends = ends
        n_steps = int(ends[-1]) if len(ends) else 0
        for key, arr in self._arrays.items():
            length = arr.shape[0]
            if length < n_steps:
                msg = (
                    f"{self._path}: data/{key} has {length} rows but the committed episodes "
                    f"end at {n_steps} (run `twinloop dataset check`)"
                )
                raise DatasetError(msg)
            if length > n_steps:
                # Normal while another process records; a crash leftover when appending.
                log.log(
                    logging.WARNING if self._mode == "a" else logging.DEBUG,
                    "%s: data/%s has %d uncommitted rows (%s)",
                    self._path,
                    key,
                    length - n_steps,
                    "torn append, rolled back" if self._mode == "a" else "ignored",
                )
                if self._mode == "a":
                    arr.resize((n_steps, *arr.shape[1:]))
                    repaired = True
        episodes = list(self._attrs.get("episodes", []))
        if len(episodes) > len(ends):
            log.warning("%s: metadata of uncommitted episodes dropped", self._path)
            episodes = episodes[: len(ends)]
            if self._mode == "a":
                self._group.update_attributes({"episodes": episodes})
                repaired = True
        if len(episodes) < len(ends):
            log.warning(
                "%s: %d committed episode(s) lost their metadata in a crash; rebuilt from the arrays",
                self._path,
                len(ends) - len(episodes),
            )
            for i in range(len(episodes), len(ends)):
                episodes.append(self._rebuild_meta(i))
            if self._mode == "a":
                self._group.update_attributes({"episodes": episodes})
                repaired = True
        self._attrs["episodes"] = episodes
        if repaired:
            n = _remove_partials(self._path)
            log.info("%s: recovered after a crash (%d temporary files removed)", self._path, n)

    def _rebuild_meta(self, i: int) -> dict[str, Any]:
        sl = self.episode_slice(i, _ends=True)
        meta: dict[str, Any] = {
            "task": self._attrs.get("task", ""),
            "success": None,
            "operator": "",
            "dropped_steps": 0,
            "n_steps": sl.stop - sl.start,
            "started": None,
            "duration_s": (sl.stop - sl.start) / float(self._attrs.get("fps", 1.0)),
            "meta_recovered": True,
        }
        if "success" in self._arrays:
            meta["success"] = bool(np.any(self._arrays["success"][sl]))
        if "timestamp" in self._arrays:
            ts = self._arrays["timestamp"][sl]
            meta["started"] = _iso_from_stamp(float(ts[0]))
            meta["duration_s"] = float(ts[-1] - ts[0])
        return meta

    # ----- context manager -------------------------------------------------------------------
    def __enter__(self) -> EpisodeStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Discard an open writer's uncommitted rows, release the append lock. Idempotent."""
        if self._closed:
            return
        if self._writer is not None:
            log.warning("%s: closing with an uncommitted episode; discarding it", self._path)
            with contextlib.suppress(DatasetError):
                self._writer.discard()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        self._closed = True

    def __repr__(self) -> str:
        return (
            f"EpisodeStore({str(self._path)!r}, mode={self._mode!r}, "
            f"episodes={self.n_episodes}, steps={self.n_steps})"
        )

    # ----- reading ---------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self._path

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def n_episodes(self) -> int:
        return len(self._ends)

    @property
    def n_steps(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    @property
    def keys(self) -> list[str]:
        return sorted(self._arrays)

    @property
    def fps(self) -> float:
        return float(self._attrs["fps"])

    @property
    def image_codec(self) -> str:
        """Codec of new image arrays (IMAGE_CODECS); existing arrays keep their own."""
        return str(self._attrs.get("image_codec", "lz4"))

    @property
    def episode_ends(self) -> np.ndarray:
        """Cumulative end indices of the committed episodes (a copy)."""
        return self._ends.copy()

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(self._ends, prepend=0)

    @property
    def attrs(self) -> dict[str, Any]:
        """All store attrs (a copy), ``episodes`` included."""
        return json.loads(json.dumps(self._attrs))

    def array(self, key: str) -> Any:
        """The zarr array behind ``data/<key>`` (read lazily; rows past n_steps are uncommitted)."""
        try:
            return self._arrays[key]
        except KeyError:
            msg = f"no data key {key!r}; the store has {self.keys}"
            raise DatasetError(msg) from None

    def _index(self, i: int) -> int:
        n = self.n_episodes
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            msg = f"episode index must be an int, got {i!r}"
            raise DatasetError(msg)
        j = int(i) + n if i < 0 else int(i)
        if not 0 <= j < n:
            msg = f"episode {i} out of range: the store has {n} episodes"
            raise DatasetError(msg)
        return j

    def episode_slice(self, i: int, *, _ends: bool = False) -> slice:
        """Rows of episode ``i`` in the concatenated arrays (negative i counts from the end)."""
        j = self._index(i) if not _ends else i
        start = int(self._ends[j - 1]) if j > 0 else 0
        return slice(start, int(self._ends[j]))

    def get_episode(self, i: int, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Episode ``i`` as numpy arrays (all keys, or ``keys``)."""
        sl = self.episode_slice(i)
        names = self.keys if keys is None else list(keys)
        return {k: np.asarray(self.array(k)[sl]) for k in names}

    def episode_meta(self, i: int) -> dict[str, Any]:
        """Metadata of episode ``i`` (task, success, operator, dropped_steps, n_steps, ...)."""
        return dict(json.loads(json.dumps(self._attrs["episodes"][self._index(i)])))

    def iter_episode_blocks(
        self, i: int, *, keys: Iterable[str] | None = None, block_bytes: int = _COPY_BLOCK_BYTES
    ) -> Iterator[dict[str, np.ndarray]]:
        """Episode ``i`` in blocks of whole rows (bounded memory, for copying and viewing)."""
        sl = self.episode_slice(i)
        names = self.keys if keys is None else list(keys)
        row_bytes = sum(
            max(1, math.prod(self.array(k).shape[1:])) * self.array(k).dtype.itemsize for k in names
        )
        # Whole chunks of the largest array per block when possible.
        rows = max(1, block_bytes // max(1, row_bytes))
        for start in range(sl.start, sl.stop, rows):
            stop = min(sl.stop, start + rows)
            yield {k: np.asarray(self.array(k)[start:stop]) for k in names}

    # ----- writing ---------------------------------------------------------------------------
    def _writable(self) -> None:
        if self._closed:
            msg = f"{self._path}: the store is closed"
            raise DatasetError(msg)
        if self._mode != "a":
            msg = f"{self._path} is open read-only; open it with mode='a' to write"
            raise DatasetError(msg)

    def _spec_of(self, key: str) -> tuple[np.dtype, tuple[int, ...]] | None:
        arr = self._arrays.get(key)
        if arr is None or self.n_episodes == 0:
            return None
        return np.dtype(arr.dtype), tuple(arr.shape[1:])

    def _normalize(
        self,
        key: str,
        value: Any,
        *,
        leading: bool,
        known: Mapping[str, tuple[np.dtype, tuple[int, ...]]],
    ) -> np.ndarray:
        """Validate one key's rows (``leading``: a time dim first) and cast to the stored dtype."""
        arr = np.asarray(value)
        where = f"{key!r}"
        if arr.dtype == object or arr.dtype.kind not in "biuf":
            msg = f"{where}: dtype {arr.dtype} is not a number or bool dtype"
            raise DatasetError(msg)
        step_shape = arr.shape[1:] if leading else arr.shape
        if leading and arr.ndim < 1:
            msg = f"{where}: expected an array with a time dimension first, got a scalar"
            raise DatasetError(msg)
        spec = key_spec(key)
        fixed = known.get(key)
        if fixed is not None:
            dtype, want = fixed
        elif spec is not None:
            dtype, want = spec.dtype, ()
            if spec.step_shape is not None and (
                len(spec.step_shape) != len(step_shape)
                or any(
                    s is not None and s != d
                    for s, d in zip(spec.step_shape, step_shape, strict=True)
                )
            ):
                shown = tuple("*" if s is None else s for s in spec.step_shape)
                msg = f"{where}: one step must have shape {shown}, got {tuple(step_shape)}"
                raise DatasetError(msg)
        else:
            dtype = arr.dtype
        if fixed is not None and tuple(step_shape) != want:
            msg = f"{where}: one step has shape {tuple(step_shape)}, but the store holds {want}"
            raise DatasetError(msg)
        if arr.dtype != dtype:
            ints = arr.dtype.kind in "iu" and dtype.kind in "iu"
            if not (ints or np.can_cast(arr.dtype, dtype, casting="same_kind")):
                msg = f"{where}: dtype {arr.dtype} cannot be stored as {dtype}"
                raise DatasetError(msg)
            if ints and not np.can_cast(arr.dtype, dtype, casting="safe"):
                info = np.iinfo(dtype)
                if arr.size and (arr.min() < info.min or arr.max() > info.max):
                    msg = f"{where}: values outside the range of {dtype}"
                    raise DatasetError(msg)
            arr = arr.astype(dtype)
        if dtype.kind == "f" and key not in self._attrs.get("nan_keys", ()):
            if not np.isfinite(arr).all():
                msg = (
                    f"{where}: holds NaN or inf (allow NaN with EpisodeStore.create(nan_keys=...))"
                )
                raise DatasetError(msg)
        self._check_camera(key, step_shape)
        return arr if arr.flags.c_contiguous else arr.copy()

    def _check_camera(self, key: str, step_shape: Sequence[int]) -> None:
        for prefix in ("image_", "depth_"):
            if key.startswith(prefix):
                k = self._attrs.get("camera_intrinsics", {}).get(key[len(prefix) :])
                if k is not None and tuple(step_shape[:2]) != (int(k["height"]), int(k["width"])):
                    msg = (
                        f"{key!r}: frames are {step_shape[1]}x{step_shape[0]} but the camera "
                        f"intrinsics say {k['width']}x{k['height']}"
                    )
                    raise DatasetError(msg)

    def _known_specs(self) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
        return {k: s for k in self._arrays if (s := self._spec_of(k)) is not None}

    def _check_keyset(self, keys: Iterable[str]) -> None:
        keys = set(keys)
        if self.n_episodes == 0:
            return
        have = set(self._arrays)
        if keys != have:
            parts = []
            if have - keys:
                parts.append(f"missing {sorted(have - keys)}")
            if keys - have:
                parts.append(f"unknown {sorted(keys - have)}")
            msg = f"episode keys differ from the store's: {'; '.join(parts)}"
            raise DatasetError(msg)

    def validate_episode(self, episode: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Check a whole episode against the store; returns the arrays cast to stored dtypes."""
        if not isinstance(episode, Mapping) or not episode:
            msg = "an episode is a non-empty mapping of key -> array"
            raise DatasetError(msg)
        for key in episode:
            _check_key_name(key)
        self._check_keyset(episode)
        known = self._known_specs()
        out = {k: self._normalize(k, v, leading=True, known=known) for k, v in episode.items()}
        lengths = {k: v.shape[0] for k, v in out.items()}
        if len(set(lengths.values())) != 1:
            msg = f"all keys of an episode need the same length, got {lengths}"
            raise DatasetError(msg)
        if next(iter(lengths.values())) < 1:
            msg = "an episode needs at least one step"
            raise DatasetError(msg)
        return out

    def _ensure_arrays(self, specs: Mapping[str, tuple[np.dtype, tuple[int, ...]]]) -> None:
        """Create the data arrays for a first episode (replacing leftovers of discarded ones)."""
        if self.n_episodes > 0:
            return
        data = self._group["data"]
        for key in list(self._arrays):
            arr = self._arrays[key]
            if key not in specs or (np.dtype(arr.dtype), tuple(arr.shape[1:])) != specs[key]:
                del data[key]
                del self._arrays[key]
        for key, (dtype, step_shape) in specs.items():
            if key in self._arrays:
                continue
            self._arrays[key] = data.create_array(
                key,
                shape=(0, *step_shape),
                dtype=dtype,
                chunks=(chunk_rows(step_shape, dtype), *step_shape),
                fill_value=False if dtype.kind == "b" else 0,
                compressors=_compressor(step_shape, dtype, self.image_codec),
                config=_ARRAY_CONFIG,
            )

    def add_episode(
        self, episode: Mapping[str, np.ndarray], *, meta: Mapping[str, Any] | None = None
    ) -> int:
        """Validate and write one whole episode, then commit it; returns its index.

        Nothing is written when validation fails. A write error (disk full) rolls the partial
        rows back and raises DatasetError; committed episodes stay intact.
        """
        self._writable()
        if self._writer is not None:
            msg = "an episode writer is open; commit or discard it before add_episode"
            raise DatasetError(msg)
        arrays = self.validate_episode(episode)
        meta_in = self._check_meta(meta)
        writer = self.begin_episode()
        try:
            writer.extend(arrays, _validated=True)
            return writer.commit(meta=meta_in)
        finally:
            if self._writer is writer:
                with contextlib.suppress(DatasetError):
                    writer.discard()

    def begin_episode(self) -> EpisodeWriter:
        """Start streaming an episode (one open writer at a time)."""
        self._writable()
        if self._writer is not None:
            msg = "an episode writer is already open; commit or discard it first"
            raise DatasetError(msg)
        self._writer = EpisodeWriter(self)
        return self._writer

    def _check_meta(self, meta: Mapping[str, Any] | None) -> dict[str, Any]:
        if meta is None:
            return {}
        if not isinstance(meta, Mapping) or not all(isinstance(k, str) for k in meta):
            msg = "episode meta must be a mapping with string keys"
            raise DatasetError(msg)
        out = _jsonable(dict(meta), "episode meta")
        if "dropped_steps" in out and (
            not isinstance(out["dropped_steps"], int) or out["dropped_steps"] < 0
        ):
            msg = f"meta dropped_steps must be an int >= 0, got {out['dropped_steps']!r}"
            raise DatasetError(msg)
        if "success" in out and out["success"] is not None and not isinstance(out["success"], bool):
            msg = f"meta success must be a bool or None, got {out['success']!r}"
            raise DatasetError(msg)
        return dict(out)

    def _commit(self, start: int, stop: int, meta: Mapping[str, Any], started: str) -> int:
        """Append the end index (the commit point), then the episode's metadata."""
        index = self.n_episodes
        full = self._episode_meta(start, stop, meta, started)
        try:
            self._ends_arr.resize((index + 1,))
            self._ends_arr[index] = stop
        except OSError as err:
            # Leave no half-written end behind in this process; a crash is handled on open.
            with contextlib.suppress(Exception):
                self._ends_arr.resize((index,))
            msg = f"{self._path}: could not commit episode {index}: {err}"
            raise DatasetError(msg) from err
        self._ends = np.append(self._ends, np.int64(stop))
        episodes = [*self._attrs["episodes"], full]
        self._attrs["episodes"] = episodes
        try:
            self._group.update_attributes({"episodes": episodes})
        except OSError as err:
            msg = (
                f"{self._path}: episode {index} is committed but its metadata could not be "
                f"written ({err}); it is rebuilt from the arrays when the store is reopened"
            )
            raise DatasetError(msg) from err
        log.debug("%s: committed episode %d (%d steps)", self._path, index, stop - start)
        return index

    def _episode_meta(
        self, start: int, stop: int, meta: Mapping[str, Any], started: str
    ) -> dict[str, Any]:
        n = stop - start
        full: dict[str, Any] = {
            "task": self._attrs.get("task", ""),
            "success": None,
            "operator": "",
            "dropped_steps": 0,
            "n_steps": n,
            "started": started,
            "duration_s": n / self.fps,
        }
        if "success" in self._arrays:
            full["success"] = bool(np.any(self._arrays["success"][start:stop]))
        if "timestamp" in self._arrays:
            ts = self._arrays["timestamp"]
            t0, t1 = float(ts[start]), float(ts[stop - 1])
            full["started"] = _iso_from_stamp(t0) or started
            full["duration_s"] = t1 - t0 + 1.0 / self.fps
        full.update(meta)
        full["n_steps"] = n  # always the truth
        return full

    def update_attrs(self, **attrs: Any) -> None:
        """Change store attrs: task, robot_profile, camera_intrinsics, or extra (JSON) attrs.

        ``fps`` only while the store is empty; schema_version, created, nan_keys and episodes
        are managed by the store.
        """
        self._writable()
        protected = {"schema_version", "created", "episodes", "nan_keys", "image_codec"}
        bad = sorted(protected & set(attrs))
        if bad:
            msg = f"attrs {bad} are managed by the store"
            raise DatasetError(msg)
        new = dict(_jsonable(attrs, "store attrs"))
        if "fps" in new:
            if self.n_episodes:
                msg = "fps cannot change once the store holds episodes"
                raise DatasetError(msg)
            fps = new["fps"]
            if not (isinstance(fps, (int, float)) and fps > 0):
                msg = f"fps must be a positive number, got {fps!r}"
                raise DatasetError(msg)
            new["fps"] = float(fps)
        if "camera_intrinsics" in new:
            new["camera_intrinsics"] = _check_intrinsics(new["camera_intrinsics"])
        try:
            self._group.update_attributes(new)
        except OSError as err:
            msg = f"{self._path}: could not write attrs: {err}"
            raise DatasetError(msg) from err
        self._attrs.update(new)

    # ----- rewriting -------------------------------------------------------------------------
    def _copy_episodes_to(
        self, dest: EpisodeStore, indices: Sequence[int], *, progress: bool = False
    ) -> None:
        from tqdm import tqdm

        for i in tqdm(
            indices, desc=f"copy {self._path.name}", unit="episode", disable=not progress
        ):
            meta = self.episode_meta(i)
            meta.pop("n_steps", None)
            writer = dest.begin_episode()
            try:
                for block in self.iter_episode_blocks(i):
                    writer.extend(block)
                writer.commit(meta=meta, started=meta.get("started"))
            except BaseException:
                if dest._writer is writer:
                    writer.discard()
                raise

    def drop_episodes(
        self,
        indices: Iterable[int],
        *,
        out: str | os.PathLike[str] | None = None,
        progress: bool = False,
    ) -> EpisodeStore:
        """Remove episodes by index, rewriting the store (never in place).

        With ``out``, the kept episodes go to a new store there and this one is unchanged;
        without it, a new store is written next to this one and atomically swapped in (this
        object then points at it). Bad index lists (empty, out of range, duplicates, dropping
        everything) are a DatasetError and nothing is touched. Returns the resulting store.
        """
        idx = list(indices)
        if not idx:
            msg = "drop_episodes needs at least one episode index (got none); nothing dropped"
            raise DatasetError(msg)
        norm = [self._index(i) for i in idx]
        if len(set(norm)) != len(norm):
            msg = f"duplicate episode indices in {idx}; nothing dropped"
            raise DatasetError(msg)
        keep = [i for i in range(self.n_episodes) if i not in set(norm)]
        if not keep:
            msg = f"that would drop all {self.n_episodes} episodes; delete the store instead"
            raise DatasetError(msg)
        if out is None:
            self._writable()
        if self._writer is not None:
            msg = "an episode writer is open; commit or discard it first"
            raise DatasetError(msg)
        target = Path(out) if out is not None else None
        if target is not None and target.exists():
            msg = f"{target} exists; drop_episodes never overwrites"
            raise DatasetError(msg)
        tmp = (
            target
            if target is not None
            else self._path.with_name(f".{self._path.name}.drop-{uuid.uuid4().hex[:8]}")
        )
        try:
            new = self._empty_like(tmp)
            try:
                self._copy_episodes_to(new, keep, progress=progress)
            finally:
                new.close()
        except BaseException:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        if target is not None:
            log.info(
                "%s: wrote %d of %d episodes to %s", self._path, len(keep), self.n_episodes, target
            )
            return EpisodeStore.open(target, mode="a")
        self._swap_in(tmp)
        log.info("%s: dropped episodes %s (%d left)", self._path, sorted(norm), len(keep))
        return self

    def _empty_like(self, path: Path) -> EpisodeStore:
        return EpisodeStore.create(
            path,
            fps=self.fps,
            task=self._attrs.get("task", ""),
            robot_profile=self._attrs.get("robot_profile", ""),
            camera_intrinsics=self._attrs.get("camera_intrinsics") or None,
            nan_keys=self._attrs.get("nan_keys", ()),
            image_codec=self.image_codec,
            extra_attrs={k: v for k, v in self._attrs.items() if k not in _RESERVED_ATTRS},
        )

    def _swap_in(self, new_path: Path) -> None:
        """Replace this store's directory by ``new_path`` atomically, then reopen."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if _exchange_paths(new_path, self._path):
            shutil.rmtree(new_path)  # now the old store
        else:
            backup = self._path.with_name(f".{self._path.name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(self._path, backup)
            os.rename(new_path, self._path)
            shutil.rmtree(backup)
        self._lock_fd = self._lock(self._path)
        import zarr

        self._group = zarr.open_group(str(self._path), mode="r+")
        self._load()

    @classmethod
    def merge(
        cls,
        sources: Sequence[str | os.PathLike[str] | EpisodeStore],
        dest: str | os.PathLike[str],
        *,
        image_codec: str | None = None,
        overwrite: bool = False,
        progress: bool = False,
    ) -> EpisodeStore:
        """Concatenate the episodes of ``sources`` into a new store at ``dest``.

        fps, robot profile and the intrinsics of shared cameras must agree; keys and dtypes must
        match (checked per episode). Each episode keeps its own task in its metadata; the store
        task is the common one or "" when they differ. ``image_codec`` recompresses the frames
        (default: the first source's codec).
        """
        if not sources:
            msg = "merge needs at least one source store"
            raise DatasetError(msg)
        dest = Path(dest)
        opened: list[tuple[EpisodeStore, bool]] = []
        try:
            for src in sources:
                if isinstance(src, EpisodeStore):
                    opened.append((src, False))
                else:
                    if Path(src).resolve() == dest.resolve():
                        msg = f"merge destination {dest} is also a source"
                        raise DatasetError(msg)
                    opened.append((cls.open(src, mode="r"), True))
            stores = [s for s, _ in opened]
            first = stores[0]
            fps = {s.fps for s in stores}
            if len(fps) > 1:
                msg = f"cannot merge stores with different fps: {sorted(fps)}"
                raise DatasetError(msg)
            profiles = {s._attrs.get("robot_profile", "") for s in stores} - {""}
            if len(profiles) > 1:
                msg = f"cannot merge stores of different robot profiles: {sorted(profiles)}"
                raise DatasetError(msg)
            intr: dict[str, Any] = {}
            for s in stores:
                for cam, k in (s._attrs.get("camera_intrinsics") or {}).items():
                    if cam in intr and intr[cam] != k:
                        msg = f"cannot merge: camera {cam!r} has different intrinsics in {s.path}"
                        raise DatasetError(msg)
                    intr[cam] = k
            tasks = {s._attrs.get("task", "") for s in stores}
            nan_keys = sorted({k for s in stores for k in s._attrs.get("nan_keys", ())})
            out = cls.create(
                dest,
                fps=first.fps,
                task=tasks.pop() if len(tasks) == 1 else "",
                robot_profile=profiles.pop() if profiles else "",
                camera_intrinsics=intr or None,
                nan_keys=nan_keys,
                image_codec=image_codec or first.image_codec,
                overwrite=overwrite,
                extra_attrs={"merged_from": [str(s.path) for s in stores]},
            )
            try:
                for s in stores:
                    s._copy_episodes_to(out, list(range(s.n_episodes)), progress=progress)
            except BaseException:
                out.close()
                shutil.rmtree(dest, ignore_errors=True)
                raise
            log.info("merged %d stores into %s (%d episodes)", len(stores), dest, out.n_episodes)
            return out
        finally:
            for s, owned in opened:
                if owned:
                    s.close()


def _ends_problem(ends: np.ndarray) -> str | None:
    if len(ends) == 0:
        return None
    if ends[0] < 1:
        return f"episode 0 ends at {ends[0]} (episodes need at least one step)"
    steps = np.diff(ends)
    bad = np.flatnonzero(steps < 1)
    if len(bad):
        i = int(bad[0]) + 1
        return f"end index {ends[i]} of episode {i} is not after {ends[i - 1]}"
    return None


def _iso_from_stamp(t: float) -> str | None:
    # Timestamps below ~1e8 s are clock-relative (sim time), not calendar dates.
    if not math.isfinite(t) or t < 1e8:
        return None
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).isoformat(timespec="milliseconds")


class EpisodeWriter:
    """Streams one episode into the store: ``append`` steps, then ``commit`` or ``discard``.

    Steps are buffered per key and written in whole chunks, so memory stays at about one chunk
    per key (2 MB per camera) however long the episode. Rows written before the commit are
    invisible to readers and rolled back after a crash.
    """

    def __init__(self, store: EpisodeStore) -> None:
        self._store = store
        self._start = store.n_steps
        self._rows = 0  # rows appended (buffered or written)
        self._written: dict[str, int] = {}  # rows of each key already in the zarr array
        self._buffers: dict[str, list[np.ndarray]] = {}
        self._specs: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
        self._chunks: dict[str, int] = {}
        self._started = _now_iso()
        self._open = True

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._open:
            if exc_type is None:
                log.warning("episode writer left without commit(); discarding the episode")
            self.discard()

    @property
    def n_steps(self) -> int:
        """Steps appended so far."""
        return self._rows

    @property
    def is_open(self) -> bool:
        return self._open

    def _check_open(self) -> None:
        if not self._open:
            msg = "this episode writer is closed (committed or discarded)"
            raise DatasetError(msg)

    def append(self, step: Mapping[str, Any]) -> None:
        """Add one step: key -> array of one step's shape (no time dimension)."""
        self._check_open()
        if not isinstance(step, Mapping) or not step:
            msg = "a step is a non-empty mapping of key -> array"
            raise DatasetError(msg)
        store = self._store
        if self._specs:
            if step.keys() != self._specs.keys():
                self._keys_mismatch(step.keys())
        else:
            for key in step:
                _check_key_name(key)
            store._check_keyset(step)
        known = self._specs or store._known_specs()
        rows = {k: store._normalize(k, v, leading=False, known=known) for k, v in step.items()}
        self._add_rows({k: v[None] for k, v in rows.items()}, 1)

    def extend(self, steps: Mapping[str, Any], *, _validated: bool = False) -> None:
        """Add a block of steps: key -> array with the time dimension first."""
        self._check_open()
        store = self._store
        if _validated:
            arrays = dict(steps)
        else:
            if not isinstance(steps, Mapping) or not steps:
                msg = "steps is a non-empty mapping of key -> array (time first)"
                raise DatasetError(msg)
            if self._specs and steps.keys() != self._specs.keys():
                self._keys_mismatch(steps.keys())
            for key in steps:
                _check_key_name(key)
            store._check_keyset(steps)
            known = self._specs or store._known_specs()
            arrays = {
                k: store._normalize(k, v, leading=True, known=known) for k, v in steps.items()
            }
            lengths = {k: v.shape[0] for k, v in arrays.items()}
            if len(set(lengths.values())) != 1:
                msg = f"all keys of a block need the same length, got {lengths}"
                raise DatasetError(msg)
        n = next(iter(arrays.values())).shape[0]
        if n:
            self._add_rows(arrays, n)

    def _keys_mismatch(self, keys: Iterable[str]) -> None:
        keys, have = set(keys), set(self._specs)
        msg = f"step keys differ from the episode's: missing {sorted(have - keys)}, unknown {sorted(keys - have)}"
        raise DatasetError(msg)

    def _add_rows(self, arrays: Mapping[str, np.ndarray], n: int) -> None:
        if not self._specs:
            self._specs = {k: (v.dtype, tuple(v.shape[1:])) for k, v in arrays.items()}
            self._chunks = {k: chunk_rows(s, d) for k, (d, s) in self._specs.items()}
            self._buffers = {k: [] for k in arrays}
            self._written = dict.fromkeys(arrays, 0)
        for k, v in arrays.items():
            self._buffers[k].append(v)
        self._rows += n
        try:
            self._flush(final=False)
        except OSError as err:
            self._fail(err)

    def _flush(self, *, final: bool) -> None:
        store = self._store
        if store.n_episodes == 0 and not any(self._written.values()):
            store._ensure_arrays(self._specs)
        end = self._start + self._rows
        for key, buf in self._buffers.items():
            if not buf:
                continue
            at = self._start + self._written[key]
            chunk = self._chunks[key]
            # Write up to the last chunk boundary (or everything when final).
            stop = end if final else (end // chunk) * chunk
            if stop <= at:
                continue
            block = buf[0] if len(buf) == 1 else np.concatenate(buf, axis=0)
            n = stop - at
            arr = store._arrays[key]
            if arr.shape[0] < stop:
                # Grow ahead (one metadata write per _GROW_CHUNKS chunks); commit trims.
                cap = stop if final else stop + chunk * _GROW_CHUNKS
                arr.resize((cap, *arr.shape[1:]))
            arr[at:stop] = block[:n]
            self._written[key] += n
            self._buffers[key] = [block[n:]] if n < len(block) else []

    def _fail(self, err: OSError) -> None:
        store = self._store
        self._rollback()
        msg = (
            f"{store.path}: writing the episode failed ({err}); the uncommitted episode was "
            f"discarded, the {store.n_episodes} committed episodes are intact"
        )
        raise DatasetError(msg) from err

    def _rollback(self) -> None:
        store = self._store
        self._open = False
        self._buffers = {}
        if store._writer is self:
            store._writer = None
        try:
            for arr in store._arrays.values():
                if arr.shape[0] > self._start:
                    arr.resize((self._start, *arr.shape[1:]))
        except OSError as err:
            log.warning(
                "%s: could not roll back the partial episode now (%s); it is rolled back on "
                "the next open",
                store.path,
                err,
            )

    def commit(self, meta: Mapping[str, Any] | None = None, *, started: str | None = None) -> int:
        """Write the buffered rows, then commit the episode; returns its index.

        ``meta``: task, success, operator, dropped_steps, started, duration_s and free-form
        extras (JSON); n_steps is always computed. An empty episode is a DatasetError and the
        writer stays open.
        """
        self._check_open()
        store = self._store
        meta_in = store._check_meta(meta)
        if self._rows == 0:
            msg = "cannot commit an empty episode (no steps appended); discard() it instead"
            raise DatasetError(msg)
        try:
            self._flush(final=True)
        except OSError as err:
            self._fail(err)
        stop = self._start + self._rows
        if store.n_steps != self._start:
            msg = "the store changed under this writer"
            raise DatasetError(msg)
        try:
            for arr in store._arrays.values():
                if arr.shape[0] != stop:
                    arr.resize((stop, *arr.shape[1:]))
        except OSError as err:
            self._fail(err)
        self._open = False
        store._writer = None
        try:
            return store._commit(self._start, stop, meta_in, started or self._started)
        except DatasetError:
            if store.n_steps == self._start:  # the end index did not make it: roll back rows
                self._rollback()
            raise

    def discard(self) -> None:
        """Drop this episode: buffered rows and rows already written (nothing is committed)."""
        if not self._open:
            return
        n = self._rows
        self._rollback()
        log.info("%s: discarded an uncommitted episode of %d steps", self._store.path, n)
