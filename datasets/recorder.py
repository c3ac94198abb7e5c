"""The recorder core: synchronized steps from live stamped streams, episode events, streaming commits.

ROS-free; ``twinloop_ros.recorder_node`` is the thin adapter that feeds it messages.

Steps
-----
Sample times lie on a grid ``t_k = t_0 + k / fps`` (the node clock, anchored when recording is
activated). Every *source* (a camera, its depth, joint states, the end-effector pose, the action,
the reward) keeps its newest raw messages, unconverted, in a small ring buffer
(:class:`StampedBuffer`). The step at ``t`` is *resolved* once every source either has a message
stamped at or after ``t`` (nothing nearer can come) or ``wait_s`` has passed since ``t`` (the
transport-lag allowance). Then each source contributes the message nearest to ``t`` (ties go to
the earlier, as :func:`twinloop.datasets.align.nearest_indices` has it) if it lies within the
source's ``tolerance_s``; otherwise the step is *dropped*, never filled in, and counted per source
and reason: ``missing`` (nothing received), ``too_old`` (the nearest is older than
``t - tolerance``), ``too_new`` (the nearest is newer than ``t + tolerance``; a gap in the
stream). A late sampling call does not lose steps: the grid is caught up. A clock that jumps
(sim time starting, a reset) restarts the grid instead.

Episodes
--------
An event's time is its ``stamp`` (seconds, the node clock; teleop_node sends one) or else its
receive time, never earlier than a step already handed out. ``start`` opens an episode, the
steps with ``start <= t < end`` belong to it; ``success`` / ``failure`` (with the start's episode number) commit it once every
step before ``end`` is resolved; ``discard`` throws the open episode away; ``quit`` discards it
and asks the node to stop. Events that do not fit the state (an end without a start, a number that
does not match, a second start) are counted as out of order and logged; a new ``start`` during an
episode discards the unlabelled open one and begins again.

Writing
-------
:class:`EpisodeSink` runs the store's streaming :class:`~twinloop.datasets.store.EpisodeWriter`
on a background thread, in order: steps are converted there (only the chosen raw messages, so the
message callbacks stay cheap), appended, and committed with the episode's metadata. A write error
(a full disk) discards that episode, logs it, and the recorder carries on; committed episodes are
never touched. At most ``max_queue`` steps wait for the disk; more are dropped (``writer:backlog``).
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import math
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .align import StampedBuffer
from .errors import DatasetError

__all__ = [
    "AlignedStep",
    "DroppedStep",
    "EpisodeSink",
    "Recorder",
    "RecorderConfig",
    "SinkResult",
    "SourceConfig",
    "StampedBuffer",
    "StepAligner",
]

log = logging.getLogger(__name__)

NS = 1_000_000_000
CLOCK_JUMP_FORWARD_S = 60.0  # a clock that leaps further ahead restarts the grid (no catch-up)
CLOCK_JUMP_BACK_S = 1.0  # so does a clock that goes back further (sim time reset)
EVENT_STAMP_WINDOW_S = 10.0  # an event stamp further than this from its receive time is ignored
Converter = Callable[[Any], Mapping[str, np.ndarray]]  # one raw message -> data keys of a step


class WriterLike(Protocol):
    def append(self, step: Mapping[str, Any]) -> None: ...
    def commit(self, meta: Mapping[str, Any] | None = None) -> int: ...
    def discard(self) -> None: ...


class StoreLike(Protocol):
    def begin_episode(self) -> WriterLike: ...


# ----- configuration ---------------------------------------------------------------------------
@dataclass(frozen=True)
class SourceConfig:
    """One input stream of the recorder."""

    name: str  # source name; drop reasons read "<name>:<reason>"
    tolerance_s: float  # largest |stamp - sample time| a message may have to count for a step
    wait_s: float = 0.1  # how long past a sample time the step waits for this source's messages
    buffer_len: int = 32  # raw messages kept (ring buffer; older ones fall out)

    def __post_init__(self) -> None:
        if not self.name or ":" in self.name:
            msg = f"a source name must be non-empty and without ':', got {self.name!r}"
            raise DatasetError(msg)
        if not (math.isfinite(self.tolerance_s) and self.tolerance_s > 0):
            msg = f"source {self.name!r}: tolerance_s must be > 0, got {self.tolerance_s}"
            raise DatasetError(msg)
        if not (math.isfinite(self.wait_s) and self.wait_s >= 0):
            msg = f"source {self.name!r}: wait_s must be >= 0, got {self.wait_s}"
            raise DatasetError(msg)
        if self.buffer_len < 2:
            msg = f"source {self.name!r}: buffer_len must be >= 2, got {self.buffer_len}"
            raise DatasetError(msg)


@dataclass(frozen=True)
class RecorderConfig:
    """How the recorder samples and how much it may queue."""

    sources: tuple[SourceConfig, ...]  # the streams every step needs
    fps: float = 10.0  # steps per second (the control rate)
    max_queue: int = 64  # steps waiting for the disk; more are dropped (writer:backlog)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.fps) and 0 < self.fps <= 1000):
            msg = f"fps must be in (0, 1000], got {self.fps}"
            raise DatasetError(msg)
        if not self.sources:
            msg = "the recorder needs at least one source"
            raise DatasetError(msg)
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            msg = f"source names must be unique, got {names}"
            raise DatasetError(msg)
        if self.max_queue < 1:
            msg = f"max_queue must be >= 1, got {self.max_queue}"
            raise DatasetError(msg)

    @property
    def period_ns(self) -> float:
        return NS / self.fps


# ----- buffers and alignment -------------------------------------------------------------------
@dataclass(frozen=True)
class AlignedStep:
    """A resolved step: per source the chosen ``(stamp_ns, raw message)``."""

    t_ns: int
    picks: Mapping[str, tuple[int, Any]]


@dataclass(frozen=True)
class DroppedStep:
    """A step that could not be assembled: ``reasons`` maps source -> why."""

    t_ns: int
    reasons: Mapping[str, str]


class StepAligner:
    """Sample times on a grid, each resolved against the sources' ring buffers (see the module doc)."""

    def __init__(self, config: RecorderConfig) -> None:
        self.config = config
        self.buffers = {s.name: StampedBuffer(s.buffer_len) for s in config.sources}
        self._tol = {s.name: round(s.tolerance_s * NS) for s in config.sources}
        self._wait = {s.name: round(s.wait_s * NS) for s in config.sources}
        self.running = False
        self._t0 = 0  # the first sample time
        self._k = 0  # index of the next grid time to add to the pending queue
        self.pending: deque[int] = deque()  # grid times waiting for their inputs
        self.clock_jumps = 0  # times the grid restarted because the clock jumped
        # end_bound(t): the end time of the ended episode holding sample time t, else None;
        # a sample then takes no message stamped at or after that end (set by the Recorder)
        self.end_bound: Callable[[int], int | None] | None = None

    def _grid(self, k: int) -> int:
        return self._t0 + round(k * self.config.period_ns)

    def start(self, t0_ns: int) -> None:
        """Start the grid at ``t0_ns`` (the first sample time)."""
        self._t0, self._k, self.running = int(t0_ns), 0, True
        self.pending.clear()

    def stop(self) -> None:
        self.running = False
        self.pending.clear()

    @property
    def resolved_until(self) -> int | None:
        """Every grid time before this has been handed out by :meth:`poll`."""
        if not self.running:
            return None
        return self.pending[0] if self.pending else self._grid(self._k)

    def push(self, source: str, stamp_ns: int, item: Any) -> None:
        self.buffers[source].push(stamp_ns, item)

    def _resolved(self, t_ns: int, now_ns: int) -> bool:
        for name, buf in self.buffers.items():
            newest = buf.newest_ns
            if (newest is None or newest < t_ns) and now_ns < t_ns + self._wait[name]:
                return False
        return True

    def poll(self, now_ns: int, *, timeouts: bool = True) -> list[AlignedStep | DroppedStep]:
        """Add the grid times up to ``now_ns``; return the steps resolved so far, in time order.

        ``timeouts=False`` resolves only steps whose inputs are all in (after the caller itself
        stalled, messages may be queued that it has not taken yet).
        """
        if not self.running:
            return []
        out: list[AlignedStep | DroppedStep] = []
        ahead = now_ns - self._grid(self._k)
        if ahead > CLOCK_JUMP_FORWARD_S * NS or ahead < -CLOCK_JUMP_BACK_S * NS:
            # The clock jumped (sim time started or was reset, the wall clock was set): the steps
            # waiting are resolved with what there is, and the grid starts again at now.
            log.warning("the clock jumped by %+.1f s: sampling restarts there", ahead / NS)
            self.clock_jumps += 1
            out += [self._assemble(t) for t in self.pending]
            if ahead < 0:  # what the buffers hold is stamped after now: another timeline
                for buf in self.buffers.values():
                    buf.clear()
            self.start(now_ns)
        while self._grid(self._k) <= now_ns:
            self.pending.append(self._grid(self._k))
            self._k += 1
        limit = now_ns if timeouts else -1  # -1: no wait allowance has run out
        while self.pending and self._resolved(self.pending[0], limit):
            out.append(self._assemble(self.pending.popleft()))
        horizon = self.resolved_until
        if horizon is not None:
            for name, buf in self.buffers.items():
                buf.prune(horizon - self._tol[name])
        return out

    def flush(self) -> list[AlignedStep | DroppedStep]:
        """Resolve every pending step with what the buffers hold now (at shutdown)."""
        out = [self._assemble(t) for t in self.pending]
        self.pending.clear()
        return out

    def _assemble(self, t_ns: int) -> AlignedStep | DroppedStep:
        picks: dict[str, tuple[int, Any]] = {}
        reasons: dict[str, str] = {}
        end = self.end_bound(t_ns) if self.end_bound is not None else None
        for name, buf in self.buffers.items():
            got = buf.nearest(t_ns, self._tol[name])
            if end is not None and not isinstance(got, str) and got[0] >= end:
                got = buf.newest_before(end, t_ns, self._tol[name])
            if isinstance(got, str):
                reasons[name] = got
            else:
                picks[name] = got
        if reasons:
            return DroppedStep(t_ns, reasons)
        return AlignedStep(t_ns, picks)


# ----- the writer thread -----------------------------------------------------------------------
@dataclass(frozen=True)
class SinkResult:
    """What became of an episode handed to the sink."""

    token: int  # the recorder's episode token
    outcome: str  # "committed" | "discarded" | "failed"
    index: int | None = None  # store index of a committed episode
    n_steps: int = 0
    meta: Mapping[str, Any] = field(default_factory=dict)
    reason: str = ""  # why it was discarded or failed
    commit_latency_s: float | None = None  # end event -> committed on disk


@dataclass
class _SinkEpisode:
    token: int
    writer: WriterLike | None = None
    n_steps: int = 0
    bad: Counter[str] = field(default_factory=Counter)
    failed: str = ""


class EpisodeSink:
    """Writes episodes through a store's streaming writer on a background thread, in order.

    ``converters[source](raw)`` turns a chosen raw message into data keys; the sink adds
    ``timestamp`` (the sample time, s) and ``stamp_<source>`` (each message's own stamp, s). A
    conversion error drops that step (``<source>:bad``); a store error (disk full, a step that does
    not fit the store) ends the episode as ``failed``, its rows rolled back.
    """

    def __init__(
        self,
        store: StoreLike,
        converters: Mapping[str, Converter],
        *,
        max_queue: int = 64,
    ) -> None:
        self._store = store
        self._converters = dict(converters)
        self._max_queue = max_queue
        self._ops: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._queued_steps = 0
        self._results: deque[SinkResult] = deque()
        self._episode: _SinkEpisode | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="recorder-sink", daemon=True)
        self._thread.start()

    # ----- the recorder's side ---------------------------------------------------------------
    @property
    def backlog(self) -> int:
        """Steps queued and not yet written."""
        return self._queued_steps

    def step(self, token: int, step: AlignedStep) -> bool:
        """Queue a step; False (and nothing queued) when ``max_queue`` steps already wait."""
        with self._lock:
            if self._queued_steps >= self._max_queue:
                return False
            self._queued_steps += 1
        self._ops.put(("step", token, step))
        return True

    def commit(self, token: int, meta: Mapping[str, Any], ended_mono: float) -> None:
        self._ops.put(("commit", token, dict(meta), ended_mono))

    def discard(self, token: int, reason: str) -> None:
        self._ops.put(("discard", token, reason))

    def call(self, fn: Callable[[Any], object]) -> None:
        """Run ``fn(store)`` on the writer thread, in order with the writes (e.g. store attrs)."""
        self._ops.put(("call", fn))

    def results(self) -> list[SinkResult]:
        """Finished episodes since the last call (thread-safe)."""
        out = []
        while self._results:
            out.append(self._results.popleft())
        return out

    def close(self, timeout: float | None = None) -> bool:
        """Finish the queued work and stop the thread; False if it did not finish in time."""
        if not self._closed:
            self._closed = True
            self._ops.put(("stop",))
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # ----- the thread ------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            op = self._ops.get()
            try:
                if op[0] == "stop":
                    if self._episode is not None:
                        self._end(self._episode, "discarded", reason="recorder stopped")
                    return
                if op[0] == "step":
                    self._write_step(op[1], op[2])
                elif op[0] == "commit":
                    self._commit(op[1], op[2], op[3])
                elif op[0] == "discard":
                    self._discard(op[1], op[2])
                elif op[0] == "call":
                    op[1](self._store)
            except Exception:  # a bug must not kill the thread: the node would hang on close
                log.exception("recorder sink: %s failed", op[0])
            finally:
                if op[0] == "step":
                    with self._lock:
                        self._queued_steps -= 1

    def _current(self, token: int) -> _SinkEpisode:
        ep = self._episode
        if ep is not None and ep.token != token:  # cannot happen: the recorder orders its ops
            log.error(
                "recorder sink: episode %d left open before %d; discarding it", ep.token, token
            )
            self._end(ep, "discarded", reason="superseded")
            ep = None
        if ep is None:
            ep = self._episode = _SinkEpisode(token)
        return ep

    def _write_step(self, token: int, step: AlignedStep) -> None:
        ep = self._current(token)
        if ep.failed:
            return
        data: dict[str, Any] = {"timestamp": np.float64(step.t_ns / NS)}
        for source, (stamp_ns, raw) in step.picks.items():
            try:
                data.update(self._converters[source](raw))
            except ValueError as err:
                ep.bad[f"{source}:bad"] += 1
                log.warning("dropping a step: %s message: %s", source, err)
                return
            data[f"stamp_{source}"] = np.float64(stamp_ns / NS)
        try:
            if ep.writer is None:
                ep.writer = self._store.begin_episode()
            ep.writer.append(data)
        except (OSError, DatasetError) as err:
            self._fail(ep, err)
            return
        ep.n_steps += 1

    def _fail(self, ep: _SinkEpisode, err: Exception) -> None:
        ep.failed = str(err)
        log.error("recorder: episode discarded, writing it failed: %s", err)
        if ep.writer is not None:
            try:
                ep.writer.discard()
            except (OSError, DatasetError) as err2:
                log.error(
                    "recorder: rolling the episode back failed too (%s); "
                    "it is rolled back when the store is reopened",
                    err2,
                )

    def _commit(self, token: int, meta: dict[str, Any], ended_mono: float) -> None:
        ep = self._current(token)
        if ep.failed:
            self._end(ep, "failed", reason=ep.failed)
            return
        if ep.n_steps == 0 or ep.writer is None:
            self._end(ep, "discarded", reason="no steps were recorded")
            return
        bad = sum(ep.bad.values())
        by_reason = Counter(meta.get("dropped_by_reason", {}))
        by_reason.update(ep.bad)
        meta = {
            **meta,
            "n_steps": ep.n_steps,
            "dropped_steps": int(meta.get("dropped_steps", 0)) + bad,
            "dropped_by_reason": dict(sorted(by_reason.items())),
        }
        try:
            index = ep.writer.commit(meta)
        except (OSError, DatasetError) as err:
            self._fail(ep, err)
            self._end(ep, "failed", reason=str(err))
            return
        latency = time.monotonic() - ended_mono
        self._end(ep, "committed", index=index, meta=meta, latency=latency)

    def _discard(self, token: int, reason: str) -> None:
        ep = self._episode
        if ep is None or ep.token != token:  # nothing of it reached the sink
            self._results.append(SinkResult(token, "discarded", reason=reason))
        elif ep.failed:
            self._end(ep, "failed", reason=ep.failed)
        else:
            self._end(ep, "discarded", reason=reason)

    def _end(
        self,
        ep: _SinkEpisode,
        outcome: str,
        *,
        index: int | None = None,
        meta: Mapping[str, Any] | None = None,
        reason: str = "",
        latency: float | None = None,
    ) -> None:
        if outcome == "discarded" and ep.writer is not None and not ep.failed:
            try:
                ep.writer.discard()
            except (OSError, DatasetError) as err:
                log.error("recorder: discarding failed (%s); rolled back when reopened", err)
        self._episode = None
        self._results.append(
            SinkResult(ep.token, outcome, index, ep.n_steps, meta or {}, reason, latency)
        )


# ----- the recorder ----------------------------------------------------------------------------
@dataclass
class _Episode:
    token: int  # the recorder's own sequence number
    event_id: int  # "episode" of the start event
    start_ns: int
    started: str  # ISO 8601 UTC
    start_extra: dict[str, Any]
    end_ns: int | None = None
    success: bool | None = None
    end_extra: dict[str, Any] = field(default_factory=dict)
    ended_mono: float = 0.0
    steps: int = 0  # steps handed to the sink
    dropped: Counter[str] = field(default_factory=Counter)  # reason -> count
    dropped_steps: int = 0


class Recorder:
    """Steps from stamped messages, episodes from events, written through an :class:`EpisodeSink`.

    Single-threaded use (one thread calls push, event, tick, status); the sink writes on its own
    thread. All times are integer nanoseconds of one clock (the node's).
    """

    def __init__(
        self,
        config: RecorderConfig,
        store: StoreLike,
        converters: Mapping[str, Converter],
        *,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        missing = [s.name for s in config.sources if s.name not in converters]
        if missing:
            msg = f"no converter for sources {missing}"
            raise DatasetError(msg)
        self.config = config
        self.meta: dict[str, Any] = dict(meta or {})  # defaults of every episode's metadata
        self.aligner = StepAligner(config)
        self.aligner.end_bound = self._end_of
        self.sink = EpisodeSink(store, converters, max_queue=config.max_queue)
        self._episodes: list[_Episode] = []  # open, then ended-but-not-committed, in order
        self._open: _Episode | None = None
        self._tokens = 0
        self.quit_requested = False
        self.rejected: dict[str, Counter[str]] = {s.name: Counter() for s in config.sources}
        self.dropped_total: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        self.out_of_order = 0
        self.finished: Counter[str] = Counter()  # committed / discarded / failed
        # recent dropped steps: (sample time, source -> reason, source -> newest stamp or None)
        self.drop_log: deque[tuple[int, dict[str, str], dict[str, int | None]]] = deque(maxlen=64)
        self.last_result: SinkResult | None = None

    # ----- inputs ------------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self.aligner.running

    def activate(self, now_ns: int) -> None:
        """Start sampling (the first sample time is ``now_ns``)."""
        self.aligner.start(now_ns)

    def deactivate(self, now_ns: int) -> list[SinkResult]:
        """Stop sampling: episodes that ended are committed, the open one is discarded."""
        self._discard_open("recorder deactivated")
        self._drain(self.aligner.poll(now_ns) + self.aligner.flush(), final=True)
        self.aligner.stop()
        return self._collect()

    def push(self, source: str, stamp_ns: int, item: Any) -> bool:
        """Buffer one raw message; False (counted as rejected) for an unusable stamp."""
        if source not in self.aligner.buffers:
            msg = f"unknown source {source!r}. Available: {sorted(self.aligner.buffers)}"
            raise DatasetError(msg)
        if stamp_ns <= 0:
            self.reject(source, "unstamped")
            return False
        self.aligner.push(source, int(stamp_ns), item)
        return True

    def reject(self, source: str, reason: str) -> None:
        """Count a message the node could not use (bad encoding, NaN, ...)."""
        self.rejected.setdefault(source, Counter())[reason] += 1

    def event(self, payload: Mapping[str, Any], now_ns: int) -> str:
        """Handle an episode event; returns what happened, for the log."""
        kind = str(payload.get("event"))
        eid = payload.get("episode")
        extra = {k: v for k, v in payload.items() if k not in ("event", "episode", "stamp")}
        self.events[kind] += 1
        if not self.active:
            return self._out_of_order(f"{kind} while the recorder is not active: ignored")
        now_ns = self._event_time(payload.get("stamp"), now_ns)
        if kind == "start":
            if self._open is not None:
                if self._open.event_id == eid:
                    return self._out_of_order(f"a second start of episode {eid}: ignored")
                self._out_of_order(f"start of {eid} while {self._open.event_id} is open")
                self._discard_open(f"episode {eid} started before it ended")
            self._tokens += 1
            started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
            self._open = _Episode(self._tokens, _int(eid), now_ns, started, extra)
            self._episodes.append(self._open)
            return f"episode {eid} started"
        if kind in ("success", "failure", "discard"):
            if self._open is None or self._open.event_id != eid:
                open_id = None if self._open is None else self._open.event_id
                return self._out_of_order(
                    f"{kind} of episode {eid}, open episode: {open_id}: ignored"
                )
            if kind == "discard":
                self._discard_open("discard event")
                return f"episode {eid} discarded"
            ep, self._open = self._open, None
            ep.end_ns, ep.success, ep.end_extra = now_ns, kind == "success", extra
            ep.ended_mono = time.monotonic()
            return f"episode {eid} ended ({kind})"
        if kind == "quit":
            self.quit_requested = True
            if self._open is not None:
                self._discard_open("quit")
                return "quit: the open episode was discarded"
            return "quit"
        return self._out_of_order(f"unknown event {kind!r}: ignored")

    def _event_time(self, stamp: Any, now_ns: int) -> int:
        """The event's own ``stamp`` (s, same clock) when it has a plausible one, else its receive
        time; never before a step already handed out or the previous episode's end."""
        t = now_ns
        if isinstance(stamp, (int, float)) and not isinstance(stamp, bool) and math.isfinite(stamp):
            ns = round(stamp * NS)
            if abs(ns - now_ns) <= EVENT_STAMP_WINDOW_S * NS:
                t = min(ns, now_ns)
        floor = self.aligner.resolved_until
        if floor is not None:
            t = max(t, floor)
        if self._episodes:
            last = self._episodes[-1]
            t = max(t, last.end_ns if last.end_ns is not None else last.start_ns)
        return t

    def _out_of_order(self, text: str) -> str:
        self.out_of_order += 1
        return f"out of order: {text}"

    def _discard_open(self, reason: str) -> None:
        ep, self._open = self._open, None
        if ep is None:
            return
        self._episodes.remove(ep)
        self.sink.discard(ep.token, reason)

    # ----- sampling ----------------------------------------------------------------------------
    def tick(self, now_ns: int, *, timeouts: bool = True) -> list[SinkResult]:
        """Resolve the steps due by ``now_ns``, hand them to the sink, issue due commits.

        ``timeouts=False`` after the caller stalled (a late timer): only steps whose inputs are
        all in are resolved, so messages still queued are not counted as missing.
        Returns the episodes the sink finished since the last call (committed, discarded, failed).
        """
        self._drain(self.aligner.poll(now_ns, timeouts=timeouts), final=False)
        return self._collect()

    def _drain(self, items: Iterable[AlignedStep | DroppedStep], *, final: bool) -> None:
        for item in items:
            self._commit_ended(item.t_ns)
            ep = self._episode_at(item.t_ns)
            if ep is None:
                continue
            if isinstance(item, DroppedStep):
                self._drop(ep, [f"{s}:{r}" for s, r in item.reasons.items()])
                newest = {s: self.aligner.buffers[s].newest_ns for s in item.reasons}
                self.drop_log.append((item.t_ns, dict(item.reasons), newest))
            elif self.sink.step(ep.token, item):
                ep.steps += 1
            else:
                self._drop(ep, ["writer:backlog"])
        horizon = self.aligner.resolved_until
        if final:
            horizon = None
        self._commit_ended(horizon)

    def _drop(self, ep: _Episode, reasons: list[str]) -> None:
        ep.dropped_steps += 1
        ep.dropped.update(reasons)
        self.dropped_total.update(reasons)

    def _end_of(self, t_ns: int) -> int | None:
        ep = self._episode_at(t_ns)
        return None if ep is None else ep.end_ns

    def _episode_at(self, t_ns: int) -> _Episode | None:
        for ep in self._episodes:
            if ep.start_ns <= t_ns and (ep.end_ns is None or t_ns < ep.end_ns):
                return ep
        return None

    def _commit_ended(self, before_ns: int | None) -> None:
        """Commit every ended episode whose steps (t < end) have all been handed out."""
        while self._episodes:
            ep = self._episodes[0]
            if ep.end_ns is None or (before_ns is not None and ep.end_ns > before_ns):
                return
            self._episodes.pop(0)
            self.sink.commit(ep.token, self._episode_meta(ep), ep.ended_mono)

    def _episode_meta(self, ep: _Episode) -> dict[str, Any]:
        extra = {**ep.start_extra, **ep.end_extra}
        meta = copy.deepcopy(self.meta)  # the node keeps updating its own (camera intrinsics)
        for key in ("task", "operator"):
            if extra.get(key):
                meta[key] = extra.pop(key)
            else:
                extra.pop(key, None)
        meta.update(
            success=bool(ep.success),
            episode_id=ep.event_id,
            started=ep.started,
            duration_s=round(((ep.end_ns or ep.start_ns) - ep.start_ns) / NS, 6),
            fps=self.config.fps,
            dropped_steps=ep.dropped_steps,
            dropped_by_reason=dict(sorted(ep.dropped.items())),
            steps_expected=ep.steps + ep.dropped_steps,
            events=extra,
        )
        return meta

    def _collect(self) -> list[SinkResult]:
        results = self.sink.results()
        for r in results:
            self.finished[r.outcome] += 1
            self.last_result = r
        return results

    # ----- reporting and shutdown --------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """A JSON-able snapshot: state, open episode, drops, queue lengths."""
        ep = self._open
        ending = [e for e in self._episodes if e.end_ns is not None]
        latency = None if self.last_result is None else self.last_result.commit_latency_s
        return {
            "state": "inactive" if not self.active else ("recording" if ep else "idle"),
            "episode": None if ep is None else ep.event_id,
            "steps": 0 if ep is None else ep.steps,
            "dropped": {} if ep is None else dict(ep.dropped),
            "ending": [e.event_id for e in ending],
            "committed": self.finished["committed"],
            "discarded": self.finished["discarded"],
            "failed": self.finished["failed"],
            "dropped_total": dict(self.dropped_total),
            "rejected": {s: dict(c) for s, c in self.rejected.items() if c},
            "events": dict(self.events),
            "out_of_order_events": self.out_of_order,
            "last_commit_latency_s": None if latency is None else round(latency, 4),
            "queues": {
                "pending_steps": len(self.aligner.pending),
                "writer_backlog": self.sink.backlog,
                "buffers": {name: len(b) for name, b in self.aligner.buffers.items()},
            },
        }

    def close(self, now_ns: int, timeout: float | None = 30.0) -> list[SinkResult]:
        """Commit what has ended, discard the open episode, wait for the writes; final results."""
        results = self.deactivate(now_ns) if self.active else self._collect()
        if not self.sink.close(timeout):
            log.error("recorder: the writer did not finish within %s s", timeout)
        return results + self._collect()


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else -1
