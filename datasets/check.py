"""Store inspection: a summary (``store_info``) and a full invariant check (``check_store``).

``check_store`` reads the zarr files directly, so it also reports on stores that
``EpisodeStore.open`` refuses, and it never modifies anything.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .store import SCHEMA_VERSION, EpisodeStore, key_spec

__all__ = ["CheckReport", "check_store", "store_info"]

_INTRINSICS_FIELDS = ("width", "height", "fx", "fy", "ppx", "ppy", "model", "coeffs")
_SCAN_BLOCK_BYTES = 64 * 1024 * 1024


@dataclass
class CheckReport:
    """What ``check_store`` found: problems break an invariant; notes are recoverable leftovers."""

    path: Path
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    n_episodes: int = 0
    n_steps: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def store_info(store: EpisodeStore) -> dict[str, Any]:
    """A JSON-able summary: counts, attrs, per-key shape/dtype/chunks/compression, outcomes."""
    attrs = store.attrs
    metas = attrs.get("episodes", [])
    keys: dict[str, dict[str, Any]] = {}
    for k in store.keys:
        arr = store.array(k)
        stored = arr.nbytes_stored()
        keys[k] = {
            "shape": [store.n_steps, *arr.shape[1:]],
            "dtype": str(arr.dtype),
            "chunks": list(arr.chunks),
            "nbytes": int(arr.nbytes),
            "stored_bytes": int(stored),
            "compression_ratio": round(arr.nbytes / stored, 2) if stored else None,
        }
    judged = [m["success"] for m in metas if m.get("success") is not None]
    lengths = store.episode_lengths
    return {
        "path": str(store.path),
        "schema_version": attrs.get("schema_version"),
        "episodes": store.n_episodes,
        "steps": store.n_steps,
        "fps": attrs.get("fps"),
        "task": attrs.get("task", ""),
        "tasks": sorted({m.get("task", "") for m in metas}),
        "robot_profile": attrs.get("robot_profile", ""),
        "cameras": sorted(attrs.get("camera_intrinsics") or {}),
        "created": attrs.get("created"),
        "success_rate": (sum(judged) / len(judged)) if judged else None,
        "successes": int(sum(judged)),
        "judged_episodes": len(judged),
        "dropped_steps": int(sum(int(m.get("dropped_steps", 0) or 0) for m in metas)),
        "episode_length": {
            "min": int(lengths.min()) if len(lengths) else 0,
            "mean": float(lengths.mean()) if len(lengths) else 0.0,
            "max": int(lengths.max()) if len(lengths) else 0,
        },
        "duration_s": float(sum(float(m.get("duration_s") or 0.0) for m in metas)),
        "stored_bytes": int(sum(v["stored_bytes"] for v in keys.values())),
        "keys": keys,
    }


def check_store(
    path: str | os.PathLike[str],
    *,
    decode_all: bool = True,
    progress: Callable[[int], None] | None = None,
) -> CheckReport:
    """Verify every invariant of the store at ``path`` without modifying it.

    ``decode_all`` reads every chunk of every array (finds corrupt chunks, NaN in float keys);
    without it only float arrays are scanned. ``progress`` is called with bytes scanned.
    """
    import zarr

    path = Path(path)
    rep = CheckReport(path)
    if not (path / "zarr.json").is_file():
        rep.problems.append("not a zarr store (no zarr.json)")
        return rep
    try:
        root = zarr.open_group(str(path), mode="r")
        attrs: dict[str, Any] = dict(root.attrs.asdict())
    except Exception as err:  # a broken root is itself the finding
        rep.problems.append(f"root group unreadable: {err}")
        return rep
    version = attrs.get("schema_version")
    if not isinstance(version, int):
        rep.problems.append("attr schema_version missing or not an int")
    elif version > SCHEMA_VERSION:
        rep.problems.append(f"schema_version {version} is newer than supported ({SCHEMA_VERSION})")
        return rep
    fps = attrs.get("fps")
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        rep.problems.append(f"attr fps must be a positive number, got {fps!r}")
    intr = attrs.get("camera_intrinsics") or {}
    if not isinstance(intr, dict):
        rep.problems.append("attr camera_intrinsics is not a mapping")
        intr = {}
    for cam, k in intr.items():
        missing = [f for f in _INTRINSICS_FIELDS if not isinstance(k, dict) or f not in k]
        if missing:
            rep.problems.append(f"camera_intrinsics[{cam!r}] lacks {', '.join(missing)}")
    ends = _check_ends(root, rep)
    if ends is None:
        return rep
    n_steps = int(ends[-1]) if len(ends) else 0
    rep.n_episodes, rep.n_steps = len(ends), n_steps
    arrays = _check_arrays(root, rep, n_steps, intr)
    _check_meta(attrs, rep, ends)
    nan_keys = set(attrs.get("nan_keys") or [])
    for key, arr in arrays.items():
        scan_float = arr.dtype.kind == "f" and key not in nan_keys
        if n_steps and (decode_all or scan_float):
            _scan(key, arr, n_steps, scan_float, rep, progress)
    partials = sum(name.endswith(".partial") for _d, _s, files in os.walk(path) for name in files)
    if partials:
        rep.notes.append(f"{partials} temporary *.partial files of an interrupted write")
    return rep


def _check_ends(root: Any, rep: CheckReport) -> np.ndarray | None:
    try:
        arr = root["meta/episode_ends"]
    except KeyError:
        rep.problems.append("meta/episode_ends is missing")
        return None
    if arr.ndim != 1 or arr.dtype != np.int64:
        rep.problems.append(f"meta/episode_ends must be 1-D int64, got {arr.dtype} {arr.shape}")
        return None
    try:
        ends = np.asarray(arr[:])
    except Exception as err:
        rep.problems.append(f"meta/episode_ends unreadable: {err}")
        return None
    if len(ends) and ends[-1] == 0:
        rep.notes.append(
            "the last end index was never written (torn commit; rolled back on append)"
        )
        ends = ends[:-1]
    if len(ends) and ends[0] < 1:
        rep.problems.append(f"episode 0 ends at {ends[0]} (episodes need at least one step)")
    bad = np.flatnonzero(np.diff(ends) < 1)
    for i in bad[:10]:
        rep.problems.append(f"episode_ends not increasing: episode {i + 1} ends at {ends[i + 1]}")
    if len(bad) > 10:
        rep.problems.append(f"... {len(bad) - 10} more non-increasing end indices")
    return ends


def _check_arrays(root: Any, rep: CheckReport, n_steps: int, intr: dict) -> dict[str, Any]:
    try:
        data = root["data"]
    except KeyError:
        rep.problems.append("group data/ is missing")
        return {}
    arrays = dict(data.arrays())
    if n_steps and not arrays:
        rep.problems.append(f"episodes end at step {n_steps} but data/ holds no arrays")
    for key, arr in sorted(arrays.items()):
        if arr.ndim < 1:
            rep.problems.append(f"data/{key} is a scalar array")
            continue
        if arr.shape[0] < n_steps:
            rep.problems.append(
                f"data/{key} has {arr.shape[0]} rows, fewer than the {n_steps} committed steps"
            )
        elif arr.shape[0] > n_steps:
            rep.notes.append(
                f"data/{key} has {arr.shape[0] - n_steps} uncommitted rows (torn append; "
                "rolled back when opened for appending)"
            )
        spec = key_spec(key)
        if spec is not None:
            if arr.dtype != spec.dtype:
                rep.problems.append(f"data/{key} has dtype {arr.dtype}, expected {spec.dtype}")
            step = arr.shape[1:]
            if spec.step_shape is not None and (
                len(step) != len(spec.step_shape)
                or any(
                    s is not None and s != d for s, d in zip(spec.step_shape, step, strict=False)
                )
            ):
                want = tuple("*" if s is None else s for s in spec.step_shape)
                rep.problems.append(f"data/{key} steps have shape {step}, expected {want}")
        for prefix in ("image_", "depth_"):
            cam = intr.get(key[len(prefix) :]) if key.startswith(prefix) else None
            if isinstance(cam, dict) and "width" in cam and "height" in cam:
                if tuple(arr.shape[1:3]) != (cam["height"], cam["width"]):
                    rep.problems.append(
                        f"data/{key} frames are {arr.shape[2]}x{arr.shape[1]}, the intrinsics "
                        f"say {cam['width']}x{cam['height']}"
                    )
    return arrays


def _check_meta(attrs: dict, rep: CheckReport, ends: np.ndarray) -> None:
    metas = attrs.get("episodes")
    if not isinstance(metas, list):
        rep.problems.append("attr episodes (per-episode metadata) is missing or not a list")
        return
    if len(metas) < len(ends):
        rep.notes.append(
            f"{len(ends) - len(metas)} committed episode(s) lack metadata (crash after the "
            "commit; rebuilt from the arrays on open)"
        )
    elif len(metas) > len(ends):
        rep.problems.append(f"{len(metas)} metadata entries for {len(ends)} episodes")
    lengths = np.diff(ends, prepend=0)
    for i, m in enumerate(metas[: len(ends)]):
        if not isinstance(m, dict):
            rep.problems.append(f"metadata of episode {i} is not a mapping")
            continue
        if m.get("n_steps") != int(lengths[i]):
            rep.problems.append(
                f"metadata of episode {i} says n_steps={m.get('n_steps')}, the episode has "
                f"{int(lengths[i])}"
            )
        dropped = m.get("dropped_steps", 0)
        if not isinstance(dropped, int) or dropped < 0:
            rep.problems.append(f"metadata of episode {i}: dropped_steps {dropped!r} is not >= 0")


def _scan(
    key: str,
    arr: Any,
    n_steps: int,
    scan_float: bool,
    rep: CheckReport,
    progress: Callable[[int], None] | None,
) -> None:
    row_bytes = max(1, math.prod(arr.shape[1:]) * arr.dtype.itemsize)
    # Read whole chunks: a block is a multiple of the chunk length.
    chunk = arr.chunks[0]
    rows = max(chunk, (_SCAN_BLOCK_BYTES // row_bytes) // chunk * chunk)
    bad = 0
    for start in range(0, n_steps, rows):
        stop = min(n_steps, start + rows)
        try:
            block = np.asarray(arr[start:stop])
        except Exception as err:
            rep.problems.append(f"data/{key} rows {start}:{stop} unreadable: {err}")
            return
        if scan_float:
            bad += int((~np.isfinite(block)).reshape(len(block), -1).any(axis=1).sum())
        if progress is not None:
            progress((stop - start) * row_bytes)
    if bad:
        rep.problems.append(f"data/{key} has NaN/inf in {bad} steps")
