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
import fcntl
import json
import logging
import math
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np

from .errors import DatasetError
from .layout import (  # the names marked F401 are re-exported: they lived here before the split
    _ARRAY_CONFIG,
    _COPY_BLOCK_BYTES,
    _FIXED_KEYS,  # noqa: F401
    _GROW_CHUNKS,  # noqa: F401
    _INTRINSICS_FIELDS,  # noqa: F401
    _RESERVED_ATTRS,
    CHUNK_BYTES,
    IMAGE_CODECS,
    LOWDIM_CHUNK,
    SCHEMA_VERSION,
    KeySpec,
    _check_intrinsics,
    _check_key_name,
    _compressor,
    _ends_problem,
    _exchange_paths,
    _is_image_like,  # noqa: F401
    _is_store_dir,
    _iso_from_stamp,
    _json_default,  # noqa: F401
    _jsonable,
    _now_iso,
    _remove_partials,
    chunk_rows,
    key_spec,
)
from .writer import EpisodeWriter

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

    # ----- rewriting (datasets/edit.py) -------------------------------------------------------
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
        from .edit import drop_episodes

        return drop_episodes(self, indices, out=out, progress=progress)

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
        from .edit import merge

        return merge(
            cls,
            sources,
            dest,
            image_codec=image_codec,
            overwrite=overwrite,
            progress=progress,
        )
