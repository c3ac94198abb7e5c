"""The episode store's on-disk layout: constants, key specs, chunking, codecs, attr and path helpers.

Shared by :mod:`.store` (the store), :mod:`.writer` (streaming an episode) and :mod:`.edit`
(rewriting stores); the layout itself is described in :mod:`.store`.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import datetime as _dt
import errno
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DatasetError

__all__ = [
    "CHUNK_BYTES",
    "IMAGE_CODECS",
    "LOWDIM_CHUNK",
    "SCHEMA_VERSION",
    "KeySpec",
    "chunk_rows",
    "key_spec",
]

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
