"""RewardRuntime: latest-frame slots, batching, stamps, failures and checkpoint hot swap.

The model is a test double (the mean pixel value times a weight ``scale``, optionally slow),
registered for the test only, so hot swap goes through the real save/load of base.py.
"""

from __future__ import annotations

import sys
import threading
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from twinloop.vlm_reward import base
from twinloop.vlm_reward.base import RewardBatch, RewardOutput, save_reward_model
from twinloop.vlm_reward.errors import RewardError
from twinloop.vlm_reward.runtime import (
    RewardRuntime,
    RuntimeConfig,
    file_signature,
    load_model_snapshot,
)

DOUBLE_MODULE = "_test_pixel_mean"


@dataclass(frozen=True)
class PixelMeanConfig:
    type: ClassVar[str] = "test_pixel_mean"
    scale: float = 1.0  # reward = scale * mean pixel / 255 (the weight is a tensor)
    delay_s: float = 0.0  # each call sleeps this long (a slow model)
    size: tuple[int, ...] = ()  # (H, W) the model takes; () = any


@dataclass(frozen=True)
class OtherConfig(PixelMeanConfig):
    type: ClassVar[str] = "test_other"


class PixelMeanReward:
    def __init__(self, config: PixelMeanConfig) -> None:
        self.config = config
        self.scale = torch.tensor([float(config.scale)])
        self.batch_sizes: list[int] = []
        self.gate: threading.Event | None = None  # set: calls wait for it

    def __call__(self, batch: RewardBatch) -> RewardOutput:
        if self.gate is not None:
            self.gate.wait(10.0)
        frames = batch.frames
        if self.config.size and tuple(frames.shape[1:3]) != tuple(self.config.size):
            msg = f"frames must be {self.config.size}, got {frames.shape[1:3]}"
            raise RewardError(msg)
        if np.any(frames[:, 0, 0, 0] == 253):
            raise RuntimeError("unlucky frame")
        self.batch_sizes.append(len(frames))
        time.sleep(self.config.delay_s)
        rewards = frames.mean(axis=(1, 2, 3)) / 255.0 * float(self.scale[0])
        if np.any(frames[:, 0, 0, 0] == 254):
            rewards[frames[:, 0, 0, 0] == 254] = np.nan
        return RewardOutput(rewards.astype(np.float32), rewards > 0.5)

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale}

    def load_state_dict(self, state: Any) -> None:
        self.scale = state["scale"]  # kept as given (no copy), as ClipReward does


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The double as reward types test_pixel_mean / test_other (undone after the test)."""
    module = types.ModuleType(f"twinloop.vlm_reward.{DOUBLE_MODULE}")
    module.__dict__.update(
        PixelMeanConfig=PixelMeanConfig, OtherConfig=OtherConfig, PixelMeanReward=PixelMeanReward
    )
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(
        base.REGISTRY, "test_pixel_mean", f"{DOUBLE_MODULE}:PixelMeanConfig:PixelMeanReward"
    )
    monkeypatch.setitem(base.REGISTRY, "test_other", f"{DOUBLE_MODULE}:OtherConfig:PixelMeanReward")
    yield


@dataclass
class Results:
    items: list[tuple[str, int, float, bool, float]] = field(default_factory=list)

    def __call__(self, camera: str, stamp: int, reward: float, success: bool, lat: float) -> None:
        self.items.append((camera, stamp, reward, success, lat))

    def stamps(self, camera: str = "color") -> list[int]:
        return [s for c, s, *_ in self.items if c == camera]


def frame(value: int, h: int = 24, w: int = 32) -> np.ndarray:
    return np.full((h, w, 3), value, dtype=np.uint8)


def test_config_is_validated() -> None:
    with pytest.raises(RewardError, match="max_batch must be >= 1"):
        RuntimeConfig(max_batch=0)
    with pytest.raises(RewardError, match="cameras must be unique"):
        RuntimeConfig(cameras=("a", "a"))
    with pytest.raises(RewardError, match="watch_period_s must be a positive"):
        RuntimeConfig(watch_period_s=0.0)
    with pytest.raises(RewardError, match="not a reward model"):
        RewardRuntime(object())


def test_stamps_and_rewards_come_back_with_their_frames() -> None:
    results = Results()
    with RewardRuntime(PixelMeanReward(PixelMeanConfig()), on_result=results) as rt:
        for i in range(5):
            rt.submit("color", frame(50 * i), stamp=1_000 + i)
            assert rt.wait_idle(5.0)
    assert results.stamps() == [1_000, 1_001, 1_002, 1_003, 1_004]
    rewards = [r for _, _, r, _, _ in results.items]
    np.testing.assert_allclose(rewards, [50 * i / 255 for i in range(5)], rtol=1e-6)
    assert [s for *_, s, _ in results.items] == [r > 0.5 for r in rewards]
    stats = rt.stats()
    assert stats["results"] == 5 and stats["skipped"] == 0 and stats["failed"] == 0
    assert stats["latency_ms"]["p50"] >= stats["forward_ms"]["p50"] > 0.0
    assert stats["model_type"] == "test_pixel_mean"


def test_a_slow_model_sees_only_the_newest_frames() -> None:
    results = Results()
    model = PixelMeanReward(PixelMeanConfig(delay_s=0.15))
    waiting = []
    with RewardRuntime(model, on_result=results) as rt:
        for i in range(30):  # 100 Hz for 0.3 s into a model that needs 150 ms a frame
            rt.submit("color", frame(i), stamp=i)
            waiting.append(rt.stats()["waiting"])
            time.sleep(0.01)
        assert rt.wait_idle(10.0)
        stats = rt.stats()
    stamps = results.stamps()
    assert max(waiting) == 1, "one slot per camera: nothing queues up"
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert stamps[-1] == 29, "the newest frame is always scored"
    assert 2 <= len(stamps) <= 10, stamps  # ~0.45 s of work for 0.3 s of frames, not 30 calls
    assert stats["skipped"] == 30 - len(stamps) and stats["received"] == 30
    assert stats["results"] == len(stamps) and stats["failed"] == 0
    assert stats["cameras"]["color"]["skipped"] == stats["skipped"]
    # the latency of a scored frame is about one model call, not the length of a backlog
    assert stats["latency_ms"]["p99"] < 1e3 * (2 * 0.15 + 0.25)


def test_cameras_are_batched_and_split_by_max_batch_and_size() -> None:
    results = Results()
    model = PixelMeanReward(PixelMeanConfig())
    model.gate = threading.Event()
    cams = ("a", "b", "c", "d")
    with RewardRuntime(model, cameras=cams, max_batch=2, on_result=results) as rt:
        rt.submit("a", frame(1), stamp=0)  # the worker takes it and waits at the gate
        time.sleep(0.2)
        for k, cam in enumerate(cams):  # the next round: 3 frames of one size, one of another
            rt.submit(cam, frame(20 + k, h=16 if cam == "d" else 24), stamp=100 + k)
        model.gate.set()
        assert rt.wait_idle(5.0)
        stats = rt.stats()
    assert sorted(model.batch_sizes) == [1, 1, 1, 2]  # first frame; a+b; c; d (other size)
    assert sorted(s for _, s, *_ in results.items) == [0, 100, 101, 102, 103]
    for cam, stamp, reward, _, _ in results.items:
        assert reward == pytest.approx((1 if stamp == 0 else stamp - 80) / 255, rel=1e-5), cam
    assert stats["batches"] == 4 and stats["batch_size_mean"] == pytest.approx(5 / 4)


def test_failures_are_counted_and_the_worker_keeps_going() -> None:
    results = Results()
    model = PixelMeanReward(PixelMeanConfig(size=(24, 32)))
    with RewardRuntime(model, cameras=("a", "b"), on_result=results, max_batch=4) as rt:
        with pytest.raises(RewardError, match=r"must be \(H, W, 3\) uint8"):
            rt.submit("a", np.zeros((24, 32), np.uint8), stamp=1)
        with pytest.raises(RewardError, match="unknown camera 'x'"):
            rt.submit("x", frame(1), stamp=1)
        rt.submit("a", frame(1, h=48, w=64), stamp=2)  # a size the model refuses
        assert rt.wait_idle(5.0)
        model.gate = threading.Event()  # hold the worker so the next two share a batch
        rt.submit("a", frame(100), stamp=3)
        time.sleep(0.2)
        rt.submit("a", frame(253), stamp=4)  # the model raises on this one...
        rt.submit("b", frame(60), stamp=5)  # ...and its batch mate still gets a reward
        model.gate.set()
        assert rt.wait_idle(5.0)
        model.gate = None
        rt.submit("a", frame(254), stamp=6)  # a NaN reward is not published
        assert rt.wait_idle(5.0)
        rt.reject("b", "encoding", "32FC1 is not a colour encoding")
        stats = rt.stats()
    assert sorted(s for _, s, *_ in results.items) == [3, 5]
    assert stats["failed_by"] == {
        "bad_frame": 1,
        "rejected": 1,
        "error:RuntimeError": 1,
        "non_finite": 1,
        "encoding": 1,
    }
    assert stats["failed"] == 5 and stats["results"] == 2
    assert stats["cameras"]["a"]["failed"] == 4 and stats["cameras"]["b"]["failed"] == 1
    assert any("frames must be (24, 32)" in e["error"] for e in stats["last_errors"])


def test_a_failing_consumer_is_counted_not_fatal() -> None:
    calls = []

    def on_result(camera: str, stamp: int, *_: Any) -> None:
        calls.append(stamp)
        if stamp == 1:
            raise ValueError("publisher gone")

    with RewardRuntime(PixelMeanReward(PixelMeanConfig()), on_result=on_result) as rt:
        for stamp in (1, 2):
            rt.submit("color", frame(5), stamp=stamp)
            assert rt.wait_idle(5.0)
        assert rt.stats()["failed_by"] == {"callback": 1}
    assert calls == [1, 2]


def test_rates_follow_the_input(tmp_path: Path) -> None:
    with RewardRuntime(PixelMeanReward(PixelMeanConfig()), rate_window_s=1.0) as rt:
        t_end = time.monotonic() + 1.2
        n = 0
        while time.monotonic() < t_end:
            rt.submit("color", frame(n % 200), stamp=n)
            n += 1
            time.sleep(0.02)  # ~50 Hz minus scheduling
        rt.wait_idle(5.0)
        stats = rt.stats()
    assert stats["input_hz"] == pytest.approx(n / 1.2, rel=0.35)
    assert stats["output_hz"] == pytest.approx(stats["input_hz"], rel=0.2)


def test_hot_swap_changes_the_outputs_between_batches(
    registered: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "reward.safetensors"
    save_reward_model(PixelMeanReward(PixelMeanConfig(scale=1.0)), path)
    model = base.load_reward_model(path, expect_type="test_pixel_mean")
    results = Results()
    with RewardRuntime(model, on_result=results, watch_period_s=0.05) as rt:
        rt.watch(path)

        def score(stamp: int) -> float:
            rt.submit("color", frame(100), stamp=stamp)
            assert rt.wait_idle(5.0)
            return results.items[-1][2]

        assert score(1) == pytest.approx(100 / 255, rel=1e-6)
        newer = PixelMeanReward(PixelMeanConfig())
        newer.scale = torch.tensor([2.0])  # new weights, same config
        save_reward_model(newer, path)
        deadline = time.monotonic() + 10.0
        while rt.stats()["swaps"] < 1 and time.monotonic() < deadline:
            score(2)
        assert rt.stats()["swaps"] == 1
        assert score(3) == pytest.approx(200 / 255, rel=1e-6)
        assert rt.model is not model

        # a broken file and a file of another reward type: the current model stays
        with caplog.at_level("ERROR", logger="twinloop.vlm_reward.runtime"):
            path.write_bytes(b"not a checkpoint")
            assert not rt.poll_checkpoint()
            save_reward_model(PixelMeanReward(OtherConfig(scale=5.0)), path)
            assert not rt.poll_checkpoint()
            assert not rt.poll_checkpoint()  # the same broken file is not retried
        stats = rt.stats()
        assert stats["swap_failures"] == 2 and stats["swaps"] == 1
        assert (
            "holds a 'test_other' reward model, expected 'test_pixel_mean'"
            in (stats["last_swap_error"])
        )
        assert "cannot load" in caplog.text
        assert score(4) == pytest.approx(200 / 255, rel=1e-6)
        assert stats["checkpoint"] == str(path)


def test_watch_loads_a_checkpoint_that_appears_later(registered: None, tmp_path: Path) -> None:
    path = tmp_path / "later.safetensors"
    rt = RewardRuntime(PixelMeanReward(PixelMeanConfig()))
    rt.watch(path, loaded=file_signature(path))  # None: no file yet
    try:
        assert file_signature(path) is None and not rt.poll_checkpoint()
        model = PixelMeanReward(PixelMeanConfig(scale=3.0))
        model.scale = torch.tensor([3.0])
        save_reward_model(model, path)
        assert rt.poll_checkpoint()  # the worker is not running: swapped at once
        assert float(rt.model.state_dict()["scale"][0]) == 3.0
    finally:
        rt.close()


def test_a_checkpoint_rewritten_in_place_leaves_the_loaded_model_alone(
    registered: None, tmp_path: Path
) -> None:
    path = tmp_path / "reward.safetensors"
    model = PixelMeanReward(PixelMeanConfig())
    model.scale = torch.tensor([2.0])
    save_reward_model(model, path)
    loaded = load_model_snapshot(path, expect_type="test_pixel_mean")
    with path.open("r+b") as f:  # same inode, same size, other bytes (safetensors maps files)
        f.write(bytes(path.stat().st_size))
    assert float(loaded.state_dict()["scale"][0]) == 2.0
    assert list(tmp_path.iterdir()) == [path], "the private copy is gone"
    with pytest.raises(RewardError, match=f"{path} is not a safetensors file"):
        load_model_snapshot(path)
    with pytest.raises(RewardError, match="cannot read reward checkpoint"):
        load_model_snapshot(tmp_path / "missing.safetensors")


class TaskRecordingReward(PixelMeanReward):
    """PixelMeanReward that records the task and the stamps (pixel values) of every batch."""

    def __init__(self, config: PixelMeanConfig) -> None:
        super().__init__(config)
        self.calls: list[tuple[str, list[int]]] = []

    def __call__(self, batch: RewardBatch) -> RewardOutput:
        out = super().__call__(batch)
        self.calls.append((batch.task, [int(v) for v in batch.frames[:, 0, 0, 0]]))
        return out


def test_frames_of_two_tasks_are_scored_by_their_own_model_never_in_one_batch() -> None:
    from twinloop.vlm_reward.routing import TaskRoutedReward

    forward = TaskRecordingReward(PixelMeanConfig(scale=1.0))
    backward = TaskRecordingReward(PixelMeanConfig(scale=2.0))
    routed = TaskRoutedReward({"open_drawer": forward, "close_drawer": backward})
    gate = threading.Event()
    forward.gate = backward.gate = gate
    results = Results()
    cams = ("a", "b", "c", "d", "e")
    tasks = {"a": "open_drawer", "b": "close_drawer", "c": "open_drawer", "d": None,
             "e": "close_drawer"}  # fmt: skip
    with RewardRuntime(
        routed, cameras=cams, max_batch=8, task="close_drawer", on_result=results
    ) as rt:
        rt.submit("a", frame(10), stamp=10, task="open_drawer")  # held at the gate
        time.sleep(0.2)
        for k, cam in enumerate(cams):  # one round: all five wait together, same size
            rt.submit(cam, frame(20 + k), stamp=20 + k, task=tasks[cam])
        gate.set()
        assert rt.wait_idle(5.0)
        stats = rt.stats()
    assert stats["results"] == 6 and stats["failed"] == 0
    # each model saw only batches of its own task; the frames of a task shared one batch
    assert forward.calls == [("open_drawer", [10]), ("open_drawer", [20, 22])]
    assert {task for task, _ in backward.calls} == {"close_drawer"}
    assert sorted(v for _, values in backward.calls for v in values) == [21, 23, 24]
    assert ("close_drawer", [21, 24]) in backward.calls
    # camera d had no task: the runtime's task ("close_drawer") picked the backward model
    got = {stamp: reward for _, stamp, reward, _, _ in results.items}
    want = {10: 10 / 255, 20: 20 / 255, 22: 22 / 255, 21: 42 / 255, 23: 46 / 255, 24: 48 / 255}
    assert got == pytest.approx(want, rel=1e-5)


def test_a_task_without_a_model_is_counted_and_the_others_still_scored() -> None:
    from twinloop.vlm_reward.routing import TaskRoutedReward

    routed = TaskRoutedReward({"open_drawer": PixelMeanReward(PixelMeanConfig())})
    results = Results()
    with RewardRuntime(routed, cameras=("a", "b"), on_result=results) as rt:
        rt.submit("a", frame(30), stamp=1, task="lift_rod")
        rt.submit("b", frame(40), stamp=2, task="open_drawer")
        assert rt.wait_idle(5.0)
        stats = rt.stats()
    assert [s for _, s, *_ in results.items] == [2]
    assert stats["failed_by"] == {"rejected": 1}
    assert any("no reward model for task 'lift_rod'" in e["error"] for e in stats["last_errors"])
