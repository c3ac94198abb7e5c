"""Live reward inference: the newest frame of every camera, batched, on one worker thread.

:class:`RewardRuntime` sits between a frame source (the reward node, a benchmark, a test) and a
:class:`~twinloop.vlm_reward.base.RewardModel`:

- each camera has ONE waiting slot: a new frame replaces the one that waits (counted as
  ``skipped``), so nothing queues up behind a slow model;
- one worker thread takes the newest frame of every camera that has one, stacks frames of the
  same size (and state layout) into batches of at most ``max_batch``, runs the model and calls
  ``on_result(camera, stamp, reward, success, latency_s)`` per frame. With a model that keeps up
  it runs at the camera rate; otherwise at its own rate, always on the newest frames;
- a frame that fails (a bad array, a size the model refuses, an exception in the model) is logged
  (throttled), counted by reason, and the worker goes on; in a batch that fails, each frame is
  tried alone so one bad frame does not take the others down;
- :meth:`RewardRuntime.watch` polls a checkpoint file (inode, mtime, size); on a change it loads
  a private copy of it (:func:`load_model_snapshot`, same reward type) on the watcher thread and
  the worker swaps models between two batches. A file that fails to load leaves the old model in
  place, with the error logged and in the stats.

The stamp is opaque to the runtime (the node passes the image's stamp in nanoseconds) and comes
back unchanged with the result. Latency is measured from :meth:`RewardRuntime.submit` (or the
``received`` time given to it) to the result. ROS-free: the node is a thin adapter over this.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from .base import RewardBatch, RewardModel, load_reward_model
from .errors import RewardError

__all__ = [
    "FileSignature",
    "ResultCallback",
    "RewardRuntime",
    "RuntimeConfig",
    "file_signature",
    "load_model_snapshot",
]

log = logging.getLogger(__name__)

# on_result(camera, stamp, reward, success, latency_s); called on the worker thread.
ResultCallback = Callable[[str, int, float, bool, float], None]
# (inode, mtime_ns, size) of a checkpoint file; None while it does not exist.
FileSignature = tuple[int, int, int] | None


@dataclass(frozen=True)
class RuntimeConfig:
    """How the runtime batches, watches and keeps its statistics."""

    cameras: tuple[str, ...] = ("color",)  # camera names; frames are submitted per camera
    max_batch: int = 8  # most frames in one model call (same size and state layout)
    task: str = ""  # task sentence handed to the model with every batch
    watch_period_s: float = 1.0  # how often a watched checkpoint file is checked
    stats_window: int = 2000  # latency and forward-time samples kept for the percentiles
    rate_window_s: float = 5.0  # input and output rates count the events of this many seconds
    error_log_period_s: float = 5.0  # at most one log line per failure reason per period
    join_timeout_s: float = 30.0  # close() waits this long for a model call in flight

    def __post_init__(self) -> None:
        if not self.cameras or len(set(self.cameras)) != len(self.cameras):
            msg = f"cameras must be unique names, at least one, got {list(self.cameras)}"
            raise RewardError(msg)
        if not all(isinstance(c, str) and c for c in self.cameras):
            msg = f"camera names must be non-empty strings, got {list(self.cameras)}"
            raise RewardError(msg)
        if self.max_batch < 1:
            msg = f"max_batch must be >= 1, got {self.max_batch}"
            raise RewardError(msg)
        if self.stats_window < 1:
            msg = f"stats_window must be >= 1, got {self.stats_window}"
            raise RewardError(msg)
        for name in ("watch_period_s", "rate_window_s", "join_timeout_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0.0):
                msg = f"{name} must be a positive number of seconds, got {value}"
                raise RewardError(msg)
        if not (math.isfinite(self.error_log_period_s) and self.error_log_period_s >= 0.0):
            msg = f"error_log_period_s must be >= 0, got {self.error_log_period_s}"
            raise RewardError(msg)


def file_signature(path: str | os.PathLike[str]) -> FileSignature:
    """``(inode, mtime_ns, size)`` of ``path``, or None if it does not exist.

    An atomic replace (a new inode) and an in-place rewrite (mtime, size) both change it.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (int(st.st_ino), int(st.st_mtime_ns), int(st.st_size))


def load_model_snapshot(
    path: str | os.PathLike[str], *, expect_type: str | None = None, **kwargs: Any
) -> RewardModel:
    """:func:`load_reward_model` from a private copy of ``path``, deleted once loaded.

    safetensors memory-maps the file it loads, and a model may keep those tensors as they are:
    a checkpoint later rewritten in place would change (or, truncated, crash with SIGBUS) the
    model in use. The copy is unlinked at once, so nobody can write to it.
    """
    source = Path(path)
    try:
        data = source.read_bytes()
    except OSError as err:
        msg = f"cannot read reward checkpoint {source}: {err}"
        raise RewardError(msg) from err
    fd, tmp = tempfile.mkstemp(prefix=f".{source.stem}-", suffix=".safetensors")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        model = load_reward_model(tmp, expect_type=expect_type, **kwargs)
    except RewardError as err:  # name the real file, not the copy
        raise RewardError(str(err).replace(tmp, str(source))) from err
    finally:
        os.unlink(tmp)
    return model


@dataclass
class _Frame:
    camera: str
    frame: np.ndarray  # (H, W, 3) uint8
    stamp: int
    state: Mapping[str, np.ndarray]
    received: float  # time.monotonic() when it arrived
    task: str | None = None  # the task the frame is scored for (None: the runtime's task)


@dataclass
class _CameraCounts:
    received: int = 0
    results: int = 0
    skipped: int = 0
    failed: int = 0


@dataclass
class _Stats:
    cameras: dict[str, _CameraCounts]
    window: int
    failed_by: dict[str, int] = field(default_factory=dict)
    last_errors: deque[dict[str, str]] = field(default_factory=lambda: deque(maxlen=5))
    inputs: deque[float] = field(default_factory=deque)  # arrival times in the rate window
    outputs: deque[float] = field(default_factory=deque)
    latency_s: deque[float] = field(init=False)
    forward_s: deque[float] = field(init=False)
    batch_sizes: deque[int] = field(init=False)
    batches: int = 0
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.latency_s = deque(maxlen=self.window)
        self.forward_s = deque(maxlen=self.window)
        self.batch_sizes = deque(maxlen=self.window)


def _pct_ms(values: Sequence[float], q: float) -> float | None:
    return round(1e3 * float(np.percentile(values, q)), 3) if len(values) else None


def _check_frame(frame: Any) -> np.ndarray:
    if not isinstance(frame, np.ndarray):
        msg = f"a frame must be a numpy array, got {type(frame).__name__}"
        raise RewardError(msg)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        msg = f"a frame must be (H, W, 3) uint8 RGB, got shape {frame.shape} {frame.dtype}"
        raise RewardError(msg)
    if min(frame.shape[:2]) < 8:
        msg = f"a frame of {frame.shape[1]}x{frame.shape[0]} is too small; need at least 8x8"
        raise RewardError(msg)
    return frame


class RewardRuntime:
    """Latest-frame reward inference on a worker thread; see the module docstring.

    ``load_kwargs`` are passed to :func:`load_model_snapshot` for hot-swapped checkpoints
    (say, a device). Use as a context manager, or call :meth:`start` and :meth:`close`.
    """

    def __init__(
        self,
        model: RewardModel,
        *,
        cameras: Sequence[str] = ("color",),
        max_batch: int = 8,
        task: str = "",
        on_result: ResultCallback | None = None,
        watch_period_s: float = 1.0,
        stats_window: int = 2000,
        rate_window_s: float = 5.0,
        error_log_period_s: float = 5.0,
        load_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = RuntimeConfig(
            cameras=tuple(cameras),
            max_batch=int(max_batch),
            task=task,
            watch_period_s=float(watch_period_s),
            stats_window=int(stats_window),
            rate_window_s=float(rate_window_s),
            error_log_period_s=float(error_log_period_s),
        )
        self._model = self._check_model(model)
        self._on_result = on_result
        self._load_kwargs = dict(load_kwargs or {})
        self._cond = threading.Condition()
        self._slots: dict[str, _Frame | None] = dict.fromkeys(self.config.cameras)
        self._pending: RewardModel | None = None  # staged by swap_model, taken between batches
        self._busy = False
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._watcher: threading.Thread | None = None
        self._watch_path: Path | None = None
        self._watch_sig: FileSignature = None
        self._poll_lock = threading.Lock()  # one check of the file at a time
        self._swaps = 0
        self._swap_failures = 0
        self._last_swap_error = ""
        self._error_log: dict[str, tuple[float, int]] = {}  # reason -> (last log, held back)
        self._stats = self._new_stats()

    # ----- life cycle --------------------------------------------------------------------------
    def __enter__(self) -> RewardRuntime:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        if self._worker is not None:
            return
        self._stop.clear()
        self._worker = threading.Thread(target=self._run, name="reward-worker", daemon=True)
        self._worker.start()

    def close(self) -> None:
        """Stop the worker and the watcher; frames still waiting are dropped."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for thread in (self._worker, self._watcher):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=self.config.join_timeout_s)
                if thread.is_alive():
                    log.warning(
                        "%s did not stop within %.0f s", thread.name, self.config.join_timeout_s
                    )
        self._worker = self._watcher = None

    @property
    def model(self) -> RewardModel:
        """The model in use now (the worker swaps it between batches)."""
        return self._model

    @property
    def model_type(self) -> str:
        return str(getattr(self._model.config, "type", type(self._model).__name__))

    # ----- input -------------------------------------------------------------------------------
    def submit(
        self,
        camera: str,
        frame: np.ndarray,
        stamp: int,
        *,
        state: Mapping[str, np.ndarray] | None = None,
        received: float | None = None,
        task: str | None = None,
    ) -> None:
        """Offer the newest frame of ``camera``: it replaces a frame still waiting (skipped).

        ``stamp`` comes back with the result; ``received`` (time.monotonic(), default now) starts
        the latency clock. ``task``: the ``RewardBatch.task`` this frame is scored with (default
        the runtime's ``task``); frames of different tasks never share a batch (a
        :class:`~twinloop.vlm_reward.routing.TaskRoutedReward` picks its model by it). A frame that is not (H, W, 3) uint8 of at least 8x8 is counted as
        failed (``bad_frame``) and refused with a RewardError.
        """
        now = time.monotonic()
        if camera not in self._slots:
            msg = f"unknown camera {camera!r}. Available: {list(self._slots)}"
            raise RewardError(msg)
        item = _Frame(
            camera,
            frame,
            int(stamp),
            dict(state or {}),
            now if received is None else received,
            task,
        )
        with self._cond:
            counts = self._stats.cameras[camera]
            counts.received += 1
            self._push_time(self._stats.inputs, now)
            try:
                _check_frame(frame)
            except RewardError as err:
                note, error = self._fail_locked(camera, "bad_frame", str(err)), err
            else:
                if self._slots[camera] is not None:
                    counts.skipped += 1
                self._slots[camera] = item
                self._cond.notify_all()
                return
        _emit(note)
        raise error

    def reject(self, camera: str, reason: str, detail: str = "") -> None:
        """Count a frame the caller could not even turn into an array (a bad encoding, say)."""
        with self._cond:
            if camera in self._stats.cameras:
                self._stats.cameras[camera].received += 1
            self._push_time(self._stats.inputs, time.monotonic())
            note = self._fail_locked(camera, reason, detail)
        _emit(note)

    def wait_idle(self, timeout: float) -> bool:
        """Block until no frame waits and no batch runs; False after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._busy or any(s is not None for s in self._slots.values()):
                left = deadline - time.monotonic()
                if left <= 0 or self._worker is None:
                    return False
                self._cond.wait(left)
        return True

    # ----- models and hot swap -------------------------------------------------------------------
    @staticmethod
    def _check_model(model: Any) -> RewardModel:
        if not callable(model) or not hasattr(model, "config"):
            msg = f"{type(model).__name__} is not a reward model (needs __call__ and config)"
            raise RewardError(msg)
        return cast(RewardModel, model)

    def swap_model(self, model: RewardModel) -> None:
        """Use ``model`` from the next batch on (at once when the worker is not running)."""
        model = self._check_model(model)
        with self._cond:
            if self._worker is None:
                self._model = model
                self._swaps += 1
            else:
                self._pending = model
                self._cond.notify_all()

    def watch(
        self,
        path: str | os.PathLike[str],
        *,
        loaded: FileSignature | bool = True,
    ) -> None:
        """Poll the checkpoint at ``path`` every ``watch_period_s``; load and swap on a change.

        ``loaded``: the file signature the current model was loaded from (from
        :func:`file_signature` before loading it), True for "the file as it is now", or False
        to load whatever is there at the first poll.
        """
        self._watch_path = Path(path)
        if loaded is True:
            self._watch_sig = file_signature(path)
        elif loaded is False:
            self._watch_sig = (-1, -1, -1)
        else:
            self._watch_sig = loaded
        if self._watcher is None:
            self._watcher = threading.Thread(
                target=self._watch_loop, name="reward-watcher", daemon=True
            )
            self._watcher.start()

    def poll_checkpoint(self) -> bool:
        """Check the watched file once; on a change load it and stage it. True if staged."""
        with self._poll_lock:
            return self._poll_checkpoint()

    def _poll_checkpoint(self) -> bool:
        path = self._watch_path
        if path is None:
            return False
        sig = file_signature(path)
        if sig == self._watch_sig:
            return False
        self._watch_sig = sig
        if sig is None:
            log.warning("checkpoint %s was removed: keeping the current model", path)
            return False
        expect = self.model_type
        t0 = time.perf_counter()
        try:
            model = load_model_snapshot(path, expect_type=expect, **self._load_kwargs)
        except Exception as err:  # any failure to load keeps the old model running
            with self._cond:
                self._swap_failures += 1
                self._last_swap_error = f"{type(err).__name__}: {err}"
            log.error("hot swap: cannot load %s, keeping the current model: %s", path, err)
            return False
        log.info("hot swap: loaded %s (%s) in %.2f s", path, expect, time.perf_counter() - t0)
        self.swap_model(model)
        return True

    def _watch_loop(self) -> None:
        while not self._stop.wait(self.config.watch_period_s):
            try:
                self.poll_checkpoint()
            except Exception:  # never let the watcher die silently
                log.exception("checkpoint watcher failed; it keeps polling")

    # ----- the worker --------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while (
                    not self._stop.is_set()
                    and self._pending is None
                    and all(s is None for s in self._slots.values())
                ):
                    self._cond.wait()
                if self._stop.is_set():
                    self._busy = False
                    self._cond.notify_all()
                    return
                if self._pending is not None:
                    self._model, self._pending = self._pending, None
                    self._swaps += 1
                frames = [s for s in self._slots.values() if s is not None]
                self._slots = dict.fromkeys(self._slots)
                self._busy = bool(frames)
            try:
                for group in self._batches(frames):
                    self._infer(group)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _batches(self, frames: list[_Frame]) -> list[list[_Frame]]:
        """Frames that stack together (same size, state layout and task), in chunks of max_batch."""
        groups: dict[tuple[Any, ...], list[_Frame]] = {}
        for f in frames:
            layout = tuple(
                sorted((k, np.shape(v), np.asarray(v).dtype.str) for k, v in f.state.items())
            )
            groups.setdefault((f.frame.shape, layout, f.task), []).append(f)
        n = self.config.max_batch
        return [g[i : i + n] for g in groups.values() for i in range(0, len(g), n)]

    def _infer(self, group: list[_Frame]) -> None:
        try:
            batch = RewardBatch(
                frames=np.stack([f.frame for f in group]),
                state={
                    k: np.stack([np.asarray(f.state[k]) for f in group]) for k in group[0].state
                },
                task=self.config.task if group[0].task is None else group[0].task,
            )
            t0 = time.perf_counter()
            out = self._model(batch)
            forward = time.perf_counter() - t0
            rewards = np.asarray(out.rewards, dtype=np.float64).reshape(-1)
            success = np.asarray(out.success).reshape(-1)
        except Exception as err:
            if len(group) > 1:  # find the frame at fault: each one alone
                for f in group:
                    self._infer([f])
                return
            reason = "rejected" if isinstance(err, RewardError) else f"error:{type(err).__name__}"
            self._fail(group[0].camera, reason, str(err))
            return
        if rewards.shape != (len(group),) or success.shape != (len(group),):
            detail = (
                f"the model returned {rewards.size} rewards and {success.size} success flags "
                f"for {len(group)} frames"
            )
            for f in group:
                self._fail(f.camera, "bad_output", detail)
            return
        now = time.monotonic()
        with self._cond:
            st = self._stats
            st.batches += 1
            st.forward_s.append(forward)
            st.batch_sizes.append(len(group))
        for f, r, s in zip(group, rewards, success, strict=True):
            if not math.isfinite(r):
                self._fail(f.camera, "non_finite", f"reward {r} for the frame stamped {f.stamp}")
                continue
            latency = now - f.received
            with self._cond:
                self._stats.cameras[f.camera].results += 1
                self._stats.latency_s.append(latency)
                self._push_time(self._stats.outputs, now)
            if self._on_result is not None:
                try:
                    self._on_result(f.camera, f.stamp, float(r), bool(s), latency)
                except Exception as err:  # a broken consumer must not stop the worker
                    self._fail(f.camera, "callback", f"{type(err).__name__}: {err}")

    # ----- statistics --------------------------------------------------------------------------
    def _new_stats(self) -> _Stats:
        cams = {c: _CameraCounts() for c in self.config.cameras}
        return _Stats(cameras=cams, window=self.config.stats_window)

    def reset_stats(self) -> None:
        """Start counting afresh (a benchmark after its warm-up); swaps are kept."""
        with self._cond:
            self._stats = self._new_stats()

    def _push_time(self, times: deque[float], now: float) -> None:
        times.append(now)
        horizon = now - self.config.rate_window_s
        while times and times[0] < horizon:
            times.popleft()

    def _rate(self, times: deque[float], now: float) -> float:
        span = min(self.config.rate_window_s, now - self._stats.started)
        recent = sum(1 for t in times if t >= now - self.config.rate_window_s)
        return recent / span if span > 0 else 0.0

    def _fail(self, camera: str, reason: str, detail: str) -> None:
        with self._cond:
            note = self._fail_locked(camera, reason, detail)
        _emit(note)

    def _fail_locked(self, camera: str, reason: str, detail: str) -> str | None:
        """Count a failure (the lock is held); the log line to emit after, or None (throttled)."""
        st = self._stats
        if camera in st.cameras:
            st.cameras[camera].failed += 1
        st.failed_by[reason] = st.failed_by.get(reason, 0) + 1
        st.last_errors.append({"camera": camera, "reason": reason, "error": detail[:300]})
        now = time.monotonic()
        last, held = self._error_log.get(reason, (-math.inf, 0))
        if now - last < self.config.error_log_period_s:
            self._error_log[reason] = (last, held + 1)
            return None
        self._error_log[reason] = (now, 0)
        more = f" ({held} more like it since the last report)" if held else ""
        return f"frame of camera {camera} failed ({reason}): {detail}{more}"

    def stats(self) -> dict[str, Any]:
        """Counts, rates, latency and forward-time percentiles (JSON-ready)."""
        now = time.monotonic()
        with self._cond:
            st = self._stats
            cams = {
                name: {
                    "received": c.received,
                    "results": c.results,
                    "skipped": c.skipped,
                    "failed": c.failed,
                }
                for name, c in st.cameras.items()
            }
            latency, forward = list(st.latency_s), list(st.forward_s)
            sizes = list(st.batch_sizes)
            out: dict[str, Any] = {
                "model_type": self.model_type,
                "checkpoint": "" if self._watch_path is None else str(self._watch_path),
                "swaps": self._swaps,
                "swap_failures": self._swap_failures,
                "last_swap_error": self._last_swap_error,
                "received": sum(c["received"] for c in cams.values()),
                "results": sum(c["results"] for c in cams.values()),
                "skipped": sum(c["skipped"] for c in cams.values()),
                "failed": sum(c["failed"] for c in cams.values()),
                "failed_by": dict(st.failed_by),
                "last_errors": list(st.last_errors),
                "input_hz": round(self._rate(st.inputs, now), 3),
                "output_hz": round(self._rate(st.outputs, now), 3),
                "batches": st.batches,
                "waiting": sum(1 for s in self._slots.values() if s is not None),
                "busy": self._busy,
                "cameras": cams,
            }
        out["latency_ms"] = {"p50": _pct_ms(latency, 50), "p99": _pct_ms(latency, 99)}
        out["forward_ms"] = {"p50": _pct_ms(forward, 50), "p99": _pct_ms(forward, 99)}
        out["batch_size_mean"] = round(float(np.mean(sizes)), 3) if sizes else None
        return out


def _emit(note: str | None) -> None:
    if note is not None:
        log.warning("%s", note)
