"""Nearest-stamp alignment of several timestamped streams onto sample times (ROS-free).

Used by the rosbag2 importer and reusable by a live recorder: each source (camera, joint
states, end-effector pose, action, ...) has sorted stamps; for every sample time the nearest
stamp of each source is picked, and a sample whose nearest stamp of any source is further away
than that source's tolerance is *dropped* (never filled in).

All stamps, times and tolerances share one unit (the importer uses integer nanoseconds; floats
in seconds work the same way)::

    times = sample_grid(start_ns, stop_ns, fps=10.0)
    al = align_nearest({"image": cam_ns, "joints": js_ns}, times, tolerance=50_000_000)
    for k in np.flatnonzero(al.valid):
        frame = frames[al.indices["image"][k]]

``mode="previous"`` picks the latest stamp at or before the sample time instead (causal: what
a live consumer had when the sample was taken); a stamp older than the tolerance drops the
sample.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = ["Alignment", "StampedBuffer", "align_nearest", "nearest_indices", "sample_grid"]

AlignMode = Literal["nearest", "previous"]


@dataclass(frozen=True)
class Alignment:
    """The result of :func:`align_nearest` for ``T`` sample times."""

    times: np.ndarray  # (T,) the sample times, as given
    indices: dict[str, np.ndarray]  # source -> (T,) int64 index into its stamps, -1 if none
    ok: dict[str, np.ndarray]  # source -> (T,) bool: that source was within tolerance
    valid: np.ndarray  # (T,) bool: every source within tolerance (the step is kept)

    @property
    def n_valid(self) -> int:
        return int(self.valid.sum())

    @property
    def n_dropped(self) -> int:
        return int(self.valid.size - self.valid.sum())

    def dropped_by(self) -> dict[str, int]:
        """How many samples each source missed (a sample missed by two sources counts twice)."""
        return {name: int((~ok).sum()) for name, ok in self.ok.items()}

    def skew(self, stamps: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """|stamp - time| of the picked message for each source over the valid samples."""
        out: dict[str, np.ndarray] = {}
        for name, idx in self.indices.items():
            sel = idx[self.valid]
            out[name] = np.abs(np.asarray(stamps[name])[sel] - self.times[self.valid])
        return out


def _check_sorted(name: str, stamps: np.ndarray) -> None:
    if stamps.ndim != 1:
        msg = f"stamps of {name!r} must be one-dimensional, got shape {stamps.shape}"
        raise ValueError(msg)
    if stamps.size > 1 and bool(np.any(np.diff(stamps) < 0)):
        msg = f"stamps of {name!r} must be sorted ascending (sort them and keep the order)"
        raise ValueError(msg)


def nearest_indices(
    stamps: np.ndarray,
    times: np.ndarray,
    tolerance: float,
    *,
    mode: AlignMode = "nearest",
) -> tuple[np.ndarray, np.ndarray]:
    """For each time, the index of the nearest stamp and whether it lies within ``tolerance``.

    ``stamps`` must be sorted ascending. Ties go to the earlier stamp. Returns
    ``(indices (T,) int64, ok (T,) bool)``; ``indices`` is -1 where there is no candidate
    (empty ``stamps``, or nothing at or before the time in ``previous`` mode).
    """
    stamps = np.asarray(stamps)
    times = np.asarray(times)
    _check_sorted("stamps", stamps)
    if tolerance < 0:
        msg = f"tolerance must be >= 0, got {tolerance}"
        raise ValueError(msg)
    if mode not in ("nearest", "previous"):
        msg = f"unknown mode {mode!r}. Available: ['nearest', 'previous']"
        raise ValueError(msg)
    n = stamps.size
    idx = np.full(times.shape, -1, dtype=np.int64)
    if n == 0 or times.size == 0:
        return idx, np.zeros(times.shape, dtype=bool)
    # right: the first stamp strictly after t, so right - 1 is the latest stamp <= t.
    right = np.searchsorted(stamps, times, side="right")
    before = right - 1
    if mode == "previous":
        idx = np.where(before >= 0, before, -1).astype(np.int64)
    else:
        after = np.minimum(right, n - 1)
        before_c = np.maximum(before, 0)
        d_before = np.abs(times - stamps[before_c])
        d_after = np.abs(stamps[after] - times)
        pick_after = (before < 0) | ((right < n) & (d_after < d_before))
        idx = np.where(pick_after, after, before_c).astype(np.int64)
    has = idx >= 0
    ok = np.zeros(times.shape, dtype=bool)
    ok[has] = np.abs(stamps[idx[has]] - times[has]) <= tolerance
    return idx, ok


def align_nearest(
    stamps: Mapping[str, np.ndarray],
    times: np.ndarray,
    tolerance: float | Mapping[str, float],
    *,
    mode: AlignMode = "nearest",
) -> Alignment:
    """Align every source onto ``times``; ``tolerance`` is one value or one per source."""
    if not stamps:
        msg = "align_nearest needs at least one source"
        raise ValueError(msg)
    times = np.asarray(times)
    if times.ndim != 1:
        msg = f"times must be one-dimensional, got shape {times.shape}"
        raise ValueError(msg)
    indices: dict[str, np.ndarray] = {}
    oks: dict[str, np.ndarray] = {}
    valid = np.ones(times.shape, dtype=bool)
    for name, s in stamps.items():
        s = np.asarray(s)
        _check_sorted(name, s)
        if isinstance(tolerance, Mapping):
            if name not in tolerance:
                msg = f"no tolerance given for source {name!r}"
                raise ValueError(msg)
            tol = tolerance[name]
        else:
            tol = tolerance
        idx, ok = nearest_indices(s, times, tol, mode=mode)
        indices[name], oks[name] = idx, ok
        valid &= ok
    return Alignment(times=times, indices=indices, ok=oks, valid=valid)


def sample_grid(start_ns: int, stop_ns: int, fps: float) -> np.ndarray:
    """Sample times ``start + k / fps`` (int64 nanoseconds) up to and including ``stop``."""
    if not fps > 0:
        msg = f"fps must be positive, got {fps}"
        raise ValueError(msg)
    if stop_ns < start_ns:
        return np.zeros(0, dtype=np.int64)
    period = 1e9 / fps
    n = int(np.floor((stop_ns - start_ns) / period + 1e-9)) + 1
    return int(start_ns) + np.round(np.arange(n) * period).astype(np.int64)


class StampedBuffer:
    """The newest raw messages of one source, sorted by stamp (integer ns), bounded."""

    def __init__(self, maxlen: int) -> None:
        self.maxlen = maxlen
        self._stamps: list[int] = []
        self._items: list[Any] = []

    def __len__(self) -> int:
        return len(self._stamps)

    @property
    def newest_ns(self) -> int | None:
        return self._stamps[-1] if self._stamps else None

    def push(self, stamp_ns: int, item: Any) -> None:
        if not self._stamps or stamp_ns >= self._stamps[-1]:
            self._stamps.append(stamp_ns)
            self._items.append(item)
        else:  # out of order (rare): keep the buffer sorted
            i = bisect.bisect_right(self._stamps, stamp_ns)
            self._stamps.insert(i, stamp_ns)
            self._items.insert(i, item)
        if len(self._stamps) > self.maxlen:
            del self._stamps[0], self._items[0]

    def nearest(self, t_ns: int, tolerance_ns: int) -> tuple[int, Any] | str:
        """``(stamp, item)`` nearest to ``t_ns`` within the tolerance, else why not."""
        if not self._stamps:
            return "missing"
        stamps = np.asarray(self._stamps, dtype=np.int64)
        idx, ok = nearest_indices(stamps, np.array([t_ns], dtype=np.int64), tolerance_ns)
        i = int(idx[0])
        if not ok[0]:
            return "too_old" if self._stamps[i] < t_ns else "too_new"
        return self._stamps[i], self._items[i]

    def newest_before(self, before_ns: int, t_ns: int, tolerance_ns: int) -> tuple[int, Any] | str:
        """The newest ``(stamp, item)`` stamped before ``before_ns``, if within the tolerance of
        ``t_ns`` (else ``"after_end"``: only messages from after that time are near enough)."""
        i = bisect.bisect_left(self._stamps, before_ns) - 1
        if i < 0 or abs(self._stamps[i] - t_ns) > tolerance_ns:
            return "after_end"
        return self._stamps[i], self._items[i]

    def prune(self, t_ns: int) -> None:
        """Forget messages that cannot be the nearest to any time >= ``t_ns``."""
        n = 0
        while n + 1 < len(self._stamps) and self._stamps[n + 1] <= t_ns:
            n += 1
        if n:
            del self._stamps[:n], self._items[:n]

    def clear(self) -> None:
        self._stamps.clear()
        self._items.clear()
