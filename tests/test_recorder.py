"""The recorder core (twinloop.datasets.recorder) with synthetic stamps: no ROS, no real time."""

from __future__ import annotations

import errno
import json
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twinloop.datasets.align import align_nearest
from twinloop.datasets.errors import DatasetError
from twinloop.datasets.recorder import (
    NS,
    AlignedStep,
    DroppedStep,
    Recorder,
    RecorderConfig,
    SourceConfig,
    StampedBuffer,
    StepAligner,
)
from twinloop.datasets.store import EpisodeStore, EpisodeWriter

MS = 1_000_000
T0 = 1_700_000_000 * NS  # a realistic epoch stamp


# ----- helpers ---------------------------------------------------------------------------------
class FakeWriter:
    def __init__(self, store: FakeStore) -> None:
        self.store = store
        self.steps: list[dict[str, Any]] = []

    def append(self, step: Mapping[str, Any]) -> None:
        if self.store.gate is not None:
            self.store.gate.wait(5.0)
        if self.store.fail_on_step is not None and len(self.steps) == self.store.fail_on_step:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.steps.append(dict(step))

    def commit(self, meta: Mapping[str, Any] | None = None) -> int:
        self.store.committed.append((self.steps, dict(meta or {})))
        self.store.open = None
        return len(self.store.committed) - 1

    def discard(self) -> None:
        self.store.discarded += 1
        self.store.open = None


class FakeStore:
    def __init__(self) -> None:
        self.committed: list[tuple[list[dict[str, Any]], dict[str, Any]]] = []
        self.discarded = 0
        self.open: FakeWriter | None = None
        self.fail_on_step: int | None = None
        self.gate: threading.Event | None = None

    def begin_episode(self) -> FakeWriter:
        if self.open is not None:
            raise DatasetError("a writer is already open")
        self.open = FakeWriter(self)
        return self.open


def value(key: str) -> Any:
    """Converter: the raw item is the value itself."""
    return lambda raw: {key: np.asarray(raw)}


def make_recorder(
    store: Any = None,
    *,
    fps: float = 10.0,
    tolerance_s: float = 0.03,
    wait_s: float = 0.1,
    sources: tuple[str, ...] = ("cam", "joints"),
    max_queue: int = 64,
) -> tuple[Recorder, Any]:
    store = store if store is not None else FakeStore()
    cfg = RecorderConfig(
        sources=tuple(SourceConfig(s, tolerance_s, wait_s) for s in sources),
        fps=fps,
        max_queue=max_queue,
    )
    converters = {s: value(f"x_{s}") for s in sources}
    return Recorder(cfg, store, converters, meta={"task": "push", "operator": "op"}), store


class Sim:
    """A simulated clock: streams publish on their period, arrive ``lag_ms`` later; the recorder
    ticks every ``tick_ms``. Values are the stamps in ms. ``gaps``: (from, to) ms without messages."""

    def __init__(self, rec: Recorder, streams: Mapping[str, float], *, lag_ms: float = 3.0) -> None:
        self.rec, self.streams, self.lag = rec, dict(streams), lag_ms
        self.gaps: dict[str, list[tuple[float, float]]] = {n: [] for n in streams}
        self.sent = dict.fromkeys(streams, -1)  # index of the last message delivered
        self.now = 0.0

    def run(
        self,
        until_ms: float,
        events: Mapping[float, dict[str, Any]] | None = None,
        tick_ms: float = 5.0,
    ) -> None:
        """Advance to ``until_ms``; each event is delivered at the first tick at or after its time."""
        todo = sorted((events or {}).items())
        while self.now < until_ms or todo:
            self.now += tick_ms
            for name, period in self.streams.items():
                while (self.sent[name] + 1) * period + self.lag <= self.now:
                    self.sent[name] += 1
                    t = self.sent[name] * period
                    if not any(a <= t < b for a, b in self.gaps[name]):
                        self.rec.push(name, T0 + round(t * MS), float(t))
            while todo and todo[0][0] <= self.now:
                at, payload = todo.pop(0)
                self.rec.event(payload, T0 + round(at * MS))
            self.rec.tick(T0 + round(self.now * MS))

    def close(self) -> list[Any]:
        return self.rec.close(T0 + round(self.now * MS))


def ev(event: str, episode: int = 0, **extra: Any) -> dict[str, Any]:
    return {"event": event, "episode": episode, **extra}


# ----- StampedBuffer ---------------------------------------------------------------------------
def test_buffer_nearest_tolerance_and_reasons() -> None:
    buf = StampedBuffer(8)
    assert buf.nearest(100, 10) == "missing"
    for s in (100, 200, 300):
        buf.push(s, f"m{s}")
    assert buf.nearest(190, 15) == (200, "m200")
    assert buf.nearest(150, 60) == (100, "m100")  # a tie goes to the earlier stamp
    assert buf.nearest(360, 50) == "too_old"
    assert buf.nearest(40, 50) == "too_new"
    assert buf.nearest(250, 49) in ("too_old", "too_new")


def test_buffer_keeps_order_bounds_and_prunes() -> None:
    buf = StampedBuffer(4)
    for s in (100, 300, 200, 400, 500):  # 200 arrives late
        buf.push(s, s)
    assert len(buf) == 4 and buf.newest_ns == 500
    assert buf.nearest(210, 15) == (200, 200)
    buf.prune(450)  # nothing before 400 can be the nearest to a time >= 450
    assert buf.nearest(0, 10**9) == (400, 400)
    buf.prune(10_000)
    assert len(buf) == 1, "the newest message is always kept (to tell too_old from missing)"


# ----- StepAligner -----------------------------------------------------------------------------
def test_aligner_waits_for_a_newer_message_or_the_wait_allowance() -> None:
    cfg = RecorderConfig((SourceConfig("a", 0.02, 0.1), SourceConfig("b", 0.02, 0.1)), fps=10)
    al = StepAligner(cfg)
    al.start(T0)
    al.push("a", T0 - 5 * MS, "a0")
    al.push("b", T0 + 2 * MS, "b0")
    assert al.poll(T0 + 1 * MS) == [], "a has nothing at or after t yet: the step waits"
    al.push("a", T0 + 30 * MS, "a1")
    (step,) = al.poll(T0 + 31 * MS)
    assert isinstance(step, AlignedStep) and step.t_ns == T0
    assert step.picks == {"a": (T0 - 5 * MS, "a0"), "b": (T0 + 2 * MS, "b0")}
    # The step at T0 + 100 ms: b goes quiet; after wait_s the step resolves as a drop.
    al.push("a", T0 + 101 * MS, "a2")
    assert al.poll(T0 + 150 * MS) == []
    (dropped,) = al.poll(T0 + 200 * MS)
    assert isinstance(dropped, DroppedStep) and dropped.reasons == {"b": "too_old"}


def test_aligner_catches_up_after_a_late_poll() -> None:
    cfg = RecorderConfig((SourceConfig("a", 0.01, 0.05, buffer_len=64),), fps=20)
    al = StepAligner(cfg)
    al.start(T0)
    for k in range(40):
        al.push("a", T0 + k * 25 * MS, k)
    steps = al.poll(T0 + 900 * MS)  # one call, 0.9 s late
    assert [s.t_ns for s in steps] == [T0 + k * 50 * MS for k in range(19)]
    assert all(isinstance(s, AlignedStep) for s in steps)
    assert [s.picks["a"][1] for s in steps] == [2 * k for k in range(19)]  # type: ignore[union-attr]


def test_aligner_restarts_the_grid_when_the_clock_jumps() -> None:
    cfg = RecorderConfig((SourceConfig("a", 0.02, 0.05),), fps=10)
    al = StepAligner(cfg)
    al.start(0)  # a sim-time node activated before the first /clock: now() was 0
    al.push("a", T0, "x")
    (step,) = al.poll(T0)  # not 1.7e10 steps of catch-up: one, at now
    assert al.clock_jumps == 1 and step.t_ns == T0
    assert al.poll(T0 + 100 * MS) == [] and al.pending == deque([T0 + 100 * MS])
    # sim time reset: the clock goes back 5 s; the waiting step is resolved as it stands, the
    # buffers (stamped in the old timeline) are emptied
    out = al.poll(T0 - 5 * NS)
    assert al.clock_jumps == 2 and out == [DroppedStep(T0 + 100 * MS, {"a": "too_old"})]
    assert len(al.buffers["a"]) == 0
    assert al.pending == deque([T0 - 5 * NS])


@settings(max_examples=60, deadline=None)
@given(
    a=st.lists(st.integers(0, 2000), min_size=0, max_size=60),
    b=st.lists(st.integers(0, 2000), min_size=1, max_size=60),
    tol=st.integers(1, 80),
    fps=st.sampled_from([10.0, 30.0, 50.0]),
)
def test_online_alignment_equals_offline_alignment(
    a: list[int], b: list[int], tol: int, fps: float
) -> None:
    """Streamed in stamp order with enough wait, the recorder picks what align_nearest picks."""
    stamps = {"a": np.array(sorted(set(a)), dtype=np.int64) * MS,
              "b": np.array(sorted(set(b)), dtype=np.int64) * MS}  # fmt: skip
    cfg = RecorderConfig(
        tuple(SourceConfig(n, tol / 1000, wait_s=0.1, buffer_len=200) for n in stamps), fps=fps
    )
    al = StepAligner(cfg)
    al.start(0)
    arrivals = sorted((int(s), n) for n, arr in stamps.items() for s in arr)
    out: list[AlignedStep | DroppedStep] = []
    for s, n in arrivals:
        out += al.poll(s)  # messages arrive at their stamp, the recorder polls as they come
        al.push(n, s, int(s))
    out += al.poll(2500 * MS)  # later: every step up to 2.4 s has resolved
    times = np.array([o.t_ns for o in out], dtype=np.int64)
    assert len(times) == int(2.4 * fps) + 1
    np.testing.assert_array_equal(times, np.round(np.arange(len(times)) * 1e9 / fps))
    offline = align_nearest(stamps, times, tol * MS)
    for k, o in enumerate(out):
        assert isinstance(o, AlignedStep) == bool(offline.valid[k])
        if isinstance(o, AlignedStep):
            for n in stamps:
                assert o.picks[n][0] == stamps[n][offline.indices[n][k]]


# ----- episodes ----------------------------------------------------------------------------------
def test_episode_is_committed_with_metadata_after_its_steps_resolve() -> None:
    rec, store = make_recorder()
    sim = Sim(rec, {"cam": 100 / 3, "joints": 10}, lag_ms=8)
    rec.activate(T0)
    sim.run(5, {5: ev("start", 3, task="")})
    sim.run(500)
    assert rec.status()["state"] == "recording" and rec.status()["episode"] == 3
    sim.run(505, {505: ev("success", 3, task="push the cube", steps=7)})
    assert store.committed == [], "the step at 500 ms is still waiting for its camera frame"
    assert rec.status()["ending"] == [3]
    sim.run(600)
    sim.close()
    (steps, meta) = store.committed[0]
    # grid: T0, +100, ... ; the episode holds t in [start, end) = [T0+5ms, T0+505ms)
    assert [round(s["timestamp"] * 1e3 - T0 / MS) for s in steps] == [100, 200, 300, 400, 500]
    assert all(abs(s["stamp_cam"] - s["timestamp"]) <= 0.03 for s in steps)
    assert steps[0]["x_joints"] == 100.0 and steps[0]["stamp_joints"] == (T0 + 100 * MS) / NS
    assert steps[1]["x_cam"] == pytest.approx(200.0)  # the frame at 200 ms, not 166.7 or 233.3
    assert meta["task"] == "push the cube" and meta["operator"] == "op"
    assert meta["success"] is True and meta["episode_id"] == 3
    assert meta["dropped_steps"] == 0 and meta["steps_expected"] == 5
    assert meta["events"] == {"steps": 7}
    assert meta["duration_s"] == pytest.approx(0.5)
    assert rec.finished["committed"] == 1


@pytest.mark.parametrize("tolerance_s", [0.05, 0.03])
def test_the_last_step_takes_no_frame_from_after_the_end_event(tolerance_s: float) -> None:
    # the frame nearest to the last sample (405 ms for t = 400) came after the end event (403):
    # on the twin it already shows the next episode's reset. Take the one before, or drop.
    rec, store = make_recorder(tolerance_s=tolerance_s)
    sim = Sim(rec, {"cam": 45, "joints": 10}, lag_ms=2)
    rec.activate(T0)
    sim.run(5, {5: ev("start", 0)})
    sim.run(600, {403: ev("success", 0)})
    sim.close()
    (steps, meta) = store.committed[0]
    assert all(s["stamp_cam"] < (T0 + 403 * MS) / NS for s in steps)
    if tolerance_s >= 0.04:  # 360 ms is within 50 ms of 400: taken instead of 405
        assert [round(float(s["x_cam"])) for s in steps] == [90, 180, 315, 360]
        assert meta["dropped_steps"] == 0
    else:  # 360 is 40 ms away: no frame before the end is near enough
        assert len(steps) == 3 and meta["dropped_steps"] == 1
        assert rec.status()["dropped_total"] == {"cam:after_end": 1}


def test_dropped_steps_are_counted_per_source_and_reason_never_filled() -> None:
    rec, store = make_recorder()
    sim = Sim(rec, {"cam": 100 / 3, "joints": 10})
    sim.gaps["cam"] = [(510, 1190)]  # the camera goes quiet for 0.7 s
    sim.gaps["joints"] = [(1750, 1850)]
    rec.activate(T0)
    sim.run(2000, {0: ev("start"), 1950: ev("failure")})
    sim.close()
    (steps, meta) = store.committed[0]
    got = [round(s["timestamp"] * 1e3 - T0 / MS) for s in steps]
    assert got == [0, 100, 200, 300, 400, 500, 1200, 1300, 1400, 1500, 1600, 1700, 1900]
    # 600..1100: the nearest frames (500, 1200) are more than 30 ms away; 1800: the nearest
    # joint states (1740, 1850) are 60 and 50 ms away.
    assert meta["dropped_steps"] == 7
    assert meta["dropped_by_reason"] == {"cam:too_old": 6, "joints:too_new": 1}
    assert meta["success"] is False and meta["steps_expected"] == 20
    assert rec.status()["dropped_total"] == {"cam:too_old": 6, "joints:too_new": 1}


def test_a_source_that_never_arrives_is_missing_and_the_step_waits_only_wait_s() -> None:
    rec, store = make_recorder(sources=("cam", "joints", "reward"))
    sim = Sim(rec, {"cam": 100 / 3, "joints": 10})
    rec.activate(T0)
    sim.run(500, {0: ev("start"), 300: ev("success")})
    assert rec.status()["queues"]["pending_steps"] <= 2, "steps wait at most wait_s (0.1 s)"
    sim.close()
    assert store.committed == [], "every step lacked the reward"
    assert rec.dropped_total == {"reward:missing": 3}
    assert rec.finished == {"discarded": 1}


def test_steps_outside_episodes_are_not_recorded_or_counted() -> None:
    rec, store = make_recorder()
    sim = Sim(rec, {"cam": 20, "joints": 20})
    rec.activate(T0)
    sim.run(1000)
    sim.run(1800, {1000: ev("start", 1), 1350: ev("success", 1), 1355: ev("start", 2)})
    sim.run(2500, {1800: ev("failure", 2)})
    sim.close()
    assert len(store.committed) == 2
    (s1, m1), (s2, m2) = store.committed
    assert len(s1) == 4 and len(s2) == 4  # [1000, 1350) and [1355, 1800)
    assert m1["success"] and not m2["success"]
    assert rec.dropped_total == {}


def test_out_of_order_events_are_counted_and_do_not_corrupt_episodes() -> None:
    rec, store = make_recorder()
    assert rec.event(ev("start"), T0).startswith("out of order"), "not active yet"
    sim = Sim(rec, {"cam": 10, "joints": 10})
    rec.activate(T0)
    outcomes: list[str] = []
    rec_event = rec.event
    rec.event = lambda p, t: outcomes.append(rec_event(p, t)) or outcomes[-1]  # type: ignore[method-assign]
    sim.run(
        2000,
        {
            1: ev("success"),
            2: ev("start", 0),
            10: ev("start", 0),  # a duplicate
            200: ev("failure", 5),  # not the open episode
            201: {"event": "bogus", "episode": 0},
            300: ev("start", 1),  # during episode 0: the unlabelled 0 is thrown away
            600: ev("success", 1),
            700: ev("start", 2),
            900: ev("discard", 2),
            1000: ev("start", 3),
            1200: ev("quit", 3),
        },
    )
    sim.close()
    assert [o.split(":")[0] for o in outcomes] == [
        "out of order",
        "episode 0 started",
        "out of order",
        "out of order",
        "out of order",
        "episode 1 started",
        "episode 1 ended (success)",
        "episode 2 started",
        "episode 2 discarded",
        "episode 3 started",
        "quit",
    ]
    assert [m["episode_id"] for _, m in store.committed] == [1]
    assert len(store.committed[0][0]) == 3  # 300, 400, 500
    assert rec.quit_requested and rec.out_of_order == 6  # 5 above + the start that replaced 0
    assert rec.finished == {"committed": 1, "discarded": 3}
    assert rec.status()["out_of_order_events"] == 6


def test_event_stamps_place_the_episode_bounds_within_what_is_still_open() -> None:
    rec, store = make_recorder()
    sim = Sim(rec, {"cam": 10, "joints": 10}, lag_ms=40)  # steps resolve 40+ ms late
    rec.activate(T0)
    sim.run(200)
    # received at 230 ms, stamped 180 ms: the step at 200 ms has not been handed out yet
    sim.run(230, {230: ev("start", 0, stamp=(T0 + 180 * MS) / NS)})
    # stamped 10 s in the future (another clock): the receive time is used
    sim.run(610, {610: ev("success", 0, stamp=(T0 + 10**10 + 600 * MS) / NS)})
    sim.run(800)
    sim.close()
    (steps, meta) = store.committed[0]
    got = [round(s["timestamp"] * 1e3 - T0 / MS) for s in steps]
    assert got == [200, 300, 400, 500, 600]
    assert meta["duration_s"] == pytest.approx(0.41)  # from 200 (stamp 180, clamped) to 610
    assert "stamp" not in meta["events"]


def test_close_commits_an_ended_episode_and_discards_the_open_one() -> None:
    rec, store = make_recorder()
    sim = Sim(rec, {"cam": 10, "joints": 10})
    rec.activate(T0)
    sim.run(460, {0: ev("start", 0), 440: ev("success", 0), 455: ev("start", 1)})
    results = sim.close()  # SIGINT right after the success event: the step at 400 ms is pending
    assert [(r.outcome, r.n_steps) for r in results] == [("committed", 5), ("discarded", 0)]
    assert len(store.committed) == 1 and not rec.active


def test_bad_messages_at_step_time_drop_the_step_and_are_counted() -> None:
    store = FakeStore()
    cfg = RecorderConfig((SourceConfig("cam", 0.03), SourceConfig("joints", 0.03)), fps=10)

    def cam(raw: Any) -> dict[str, np.ndarray]:
        if raw == 200.0:
            raise ValueError("truncated image")
        return {"image_x": np.zeros((2, 2, 3), np.uint8)}

    rec = Recorder(cfg, store, {"cam": cam, "joints": value("joint_pos")})
    sim = Sim(rec, {"cam": 50, "joints": 10})
    rec.activate(T0)
    assert not rec.push("cam", 0, 1.0) and rec.rejected["cam"] == {"unstamped": 1}
    rec.reject("joints", "nan")
    sim.run(600, {0: ev("start"), 500: ev("success")})
    sim.close()
    (steps, meta) = store.committed[0]
    assert len(steps) == 4
    assert meta["dropped_steps"] == 1 and meta["dropped_by_reason"] == {"cam:bad": 1}
    assert meta["steps_expected"] == 5 == meta["n_steps"] + meta["dropped_steps"]
    assert rec.status()["rejected"] == {"cam": {"unstamped": 1}, "joints": {"nan": 1}}


def test_a_full_disk_fails_that_episode_and_recording_goes_on() -> None:
    rec, store = make_recorder()
    sim = Sim(rec, {"cam": 10, "joints": 10})
    rec.activate(T0)
    store.fail_on_step = 2
    sim.run(600, {0: ev("start", 0), 500: ev("success", 0)})
    for _ in range(200):  # the sink thread reports the failure; the recorder keeps ticking
        if rec.finished["failed"]:
            break
        sim.run(sim.now + 5)
        time.sleep(0.01)
    assert rec.finished == {"failed": 1}
    assert "No space left" in str(rec.last_result.reason if rec.last_result else "")
    assert store.discarded == 1 and store.committed == []
    store.fail_on_step = None
    sim.run(sim.now + 500, {sim.now + 10: ev("start", 1), sim.now + 400: ev("success", 1)})
    sim.close()
    assert rec.finished == {"failed": 1, "committed": 1}
    assert [m["episode_id"] for _, m in store.committed] == [1]


def test_a_slow_disk_drops_steps_as_writer_backlog() -> None:
    store = FakeStore()
    store.gate = threading.Event()  # the writer blocks until the gate opens
    rec, _ = make_recorder(store, max_queue=3)
    sim = Sim(rec, {"cam": 10, "joints": 10})
    rec.activate(T0)
    sim.run(1000, {0: ev("start")})
    assert rec.status()["queues"]["writer_backlog"] == 3
    sim.run(1010, {1005: ev("success")})
    store.gate.set()
    sim.close()
    (steps, meta) = store.committed[0]
    assert len(steps) == 3 and meta["dropped_by_reason"] == {"writer:backlog": 8}
    assert meta["steps_expected"] == 11


def test_config_validation() -> None:
    with pytest.raises(DatasetError, match="tolerance_s must be > 0"):
        SourceConfig("a", 0.0)
    with pytest.raises(DatasetError, match="without ':'"):
        SourceConfig("a:b", 0.1)
    with pytest.raises(DatasetError, match="unique"):
        RecorderConfig((SourceConfig("a", 0.1), SourceConfig("a", 0.1)))
    with pytest.raises(DatasetError, match="fps must be in"):
        RecorderConfig((SourceConfig("a", 0.1),), fps=0)
    with pytest.raises(DatasetError, match="no converter for sources"):
        Recorder(RecorderConfig((SourceConfig("a", 0.1),)), FakeStore(), {})
    rec, _ = make_recorder()
    with pytest.raises(DatasetError, match="unknown source 'nope'"):
        rec.push("nope", T0, 1)
    rec.close(T0)


# ----- with the real store -----------------------------------------------------------------------
def _real_converters() -> dict[str, Any]:
    return {
        "image_color": lambda raw: {"image_color": raw},
        "joint_states": lambda raw: {"joint_pos": raw[0], "joint_vel": raw[1]},
        "action": lambda raw: {"action": raw},
    }


def _record_real(
    rec: Recorder,
    episodes: list[tuple[int, float, float, bool]],
    until_ms: float,
    from_ms: float = 0,
) -> None:
    rng = np.random.default_rng(0)
    for t in np.arange(from_ms, until_ms, 10):
        ns = T0 + round(t * MS)
        if round(t) % 30 == 0:
            rec.push("image_color", ns, rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
        q = np.full(7, t / 1000, np.float32)
        rec.push("joint_states", ns, (q, -q))
        if round(t) % 50 == 0:
            rec.push("action", ns, np.array([t / 1000, 0, 0, 0, 1], np.float32))
        for eid, start, end, ok in episodes:
            if t == start:
                rec.event(ev("start", eid), ns)
            if t == end:
                rec.event(ev("success" if ok else "failure", eid), ns)
        rec.tick(ns)


def test_round_trip_through_the_episode_store(tmp_path: Path) -> None:
    store = EpisodeStore.create(tmp_path / "demos.zarr", fps=10.0, task="push", robot_profile="sim")
    cfg = RecorderConfig(
        (
            SourceConfig("image_color", 0.02),
            SourceConfig("joint_states", 0.02),
            SourceConfig("action", 0.03),
        ),
        fps=10.0,
    )
    rec = Recorder(cfg, store, _real_converters(), meta={"robot_profile": "sim", "task": "push"})
    rec.activate(T0)
    _record_real(rec, [(0, 0, 600, True), (1, 800, 1500, False)], 2000)
    rec.close(T0 + 2000 * MS)
    store.close()
    with EpisodeStore.open(tmp_path / "demos.zarr") as ro:
        assert ro.n_episodes == 2 and list(ro.episode_lengths) == [6, 7]
        ep = ro.get_episode(1)
        assert ep["image_color"].shape == (7, 24, 32, 3) and ep["image_color"].dtype == np.uint8
        assert ep["joint_pos"].dtype == np.float32 and ep["joint_pos"].shape == (7, 7)
        assert ep["action"].shape == (7, 5) and ep["timestamp"].dtype == np.float64
        np.testing.assert_allclose(ep["timestamp"] - T0 / NS, np.arange(0.8, 1.5, 0.1), atol=1e-6)
        np.testing.assert_allclose(ep["joint_pos"][:, 0], ep["timestamp"] - T0 / NS, atol=1e-5)
        assert np.all(np.abs(ep["stamp_image_color"] - ep["timestamp"]) <= 0.02)
        meta = [ro.episode_meta(i) for i in range(2)]
        assert [m["success"] for m in meta] == [True, False]
        assert meta[0]["n_steps"] == 6 and meta[0]["dropped_steps"] == 0
        assert meta[0]["task"] == "push" and meta[0]["robot_profile"] == "sim"
        json.dumps(meta)


def test_real_store_write_error_rolls_back_only_that_episode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "demos.zarr"
    store = EpisodeStore.create(path, fps=10.0)
    cfg = RecorderConfig(
        tuple(SourceConfig(n, 0.03) for n in ("image_color", "joint_states", "action")), fps=10.0
    )
    rec = Recorder(cfg, store, _real_converters())
    rec.activate(T0)
    _record_real(rec, [(0, 0, 500, True)], 700)
    assert rec.sink.close() and rec.sink.results()[0].outcome == "committed"

    real_flush = EpisodeWriter._flush
    calls = {"n": 0}

    def full_disk_once(self: EpisodeWriter, *, final: bool) -> None:
        calls["n"] += 1
        if calls["n"] == 3:  # the third step of the next episode hits a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        real_flush(self, final=final)

    monkeypatch.setattr(EpisodeWriter, "_flush", full_disk_once)
    rec = Recorder(cfg, store, _real_converters())  # a new recorder on the open store
    rec.activate(T0 + 1000 * MS)
    _record_real(rec, [(1, 1000, 1400, True), (2, 1600, 2000, True)], 2200, from_ms=1000)
    results = rec.close(T0 + 2200 * MS)
    assert calls["n"] > 3
    assert rec.finished == {"failed": 1, "committed": 1}, results
    assert "episode discarded, writing it failed" in caplog.text
    assert "No space left on device" in caplog.text
    store.close()
    with EpisodeStore.open(path) as ro:
        assert ro.n_episodes == 2
        assert [ro.episode_meta(i)["episode_id"] for i in range(2)] == [0, 2]
