"""reward_node over real DDS: the node runs as its own process, this process plays the cameras.

The node scores frames with the VLM-RMs CLIP reward on a tiny random-weight open_clip model the
test writes itself (tests/helpers_clip.py), loaded from a reward checkpoint that the test later
replaces (hot swap). The expected rewards are computed in this process with the same checkpoint.
One node for the module, on its own ROS_DOMAIN_ID.
"""

from __future__ import annotations

import array
import json
import os
import subprocess
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("rclpy", reason="needs the ROS 2 Jazzy wheels (pip install -e .[ros])")

from helpers_clip import make_tiny_open_clip
from helpers_reward import constant_classifier
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from twinloop.vlm_reward.base import (
    RewardBatch,
    RewardModel,
    load_reward_model,
    save_reward_model,
)
from twinloop.vlm_reward.clip_reward import ClipReward, ClipRewardConfig
from twinloop_ros.conversions import (
    episode_event_to_msg,
    image_to_msg,
    reward_from_msg,
    stamp_from_ns,
    stamp_to_ns,
)
from twinloop_ros.node_utils import COMMAND_QOS, SENSOR_QOS
from twinloop_ros.probe import GraphProbe, ros_env

from twinloop.graph import Graph, GraphProcesses, NodeSpec

pytestmark = pytest.mark.ros

DOMAIN_ID = 1 + (os.getpid() + 53) % 100  # below 102: DDS ports out of the ephemeral range
TASK_DOMAIN_ID = 1 + (os.getpid() + 54) % 100  # the node with one model per task
TOPICS = {"color": "/camera/camera/color/image_raw", "wrist": "/camera/wrist/color/image_raw"}
DEPTH_TOPIC = "/camera/camera/aligned_depth_to_color/image_raw"  # pairs with the first camera
GOAL = ("a red cube on the green mark",)
BASELINE = ("a robot arm above a table",)
OTHER_GOAL = ("an open drawer",)
OTHER_BASELINE = ("a closed drawer",)
NODE_ENV = {"OMP_NUM_THREADS": "1"}

torch.set_num_threads(1)


def frames(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(n)]


def rewards_of(model: RewardModel, images: list[np.ndarray]) -> np.ndarray:
    """What the node should publish: one frame per call, as the node scores them."""
    return np.array([model(RewardBatch(frames=img[None])).rewards[0] for img in images])


@dataclass
class Setup:
    checkpoint: Path
    clip: dict[str, str]  # the tiny open_clip fields of ClipRewardConfig
    threshold: float  # success threshold of the first model


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    root = tmp_path_factory.mktemp("reward_node")
    tiny = make_tiny_open_clip(root)
    clip = {
        "model_name": tiny.model_name,
        "checkpoint": tiny.checkpoint,
        "model_config": tiny.model_config,
        "device": "cpu",
        "precision": "fp32",
    }
    probe = ClipReward(ClipRewardConfig(goal_prompts=GOAL, baseline_prompts=BASELINE, **clip))
    threshold = float(np.median(rewards_of(probe, frames(8, seed=1))))
    config = ClipRewardConfig(
        goal_prompts=GOAL, baseline_prompts=BASELINE, success_threshold=threshold, **clip
    )
    checkpoint = save_reward_model(ClipReward(config, encoder=probe.encoder), root / "reward.st")
    return Setup(checkpoint, clip, threshold)


@dataclass
class Cell:
    """The test's cameras and its view of the node's outputs."""

    probe: GraphProbe
    procs: GraphProcesses
    lines: list[str]
    rewards: list[JointState] = field(default_factory=list)
    status: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.pubs = {c: self.probe.publisher(Image, t, SENSOR_QOS) for c, t in TOPICS.items()}
        self.depth_pub = self.probe.publisher(Image, DEPTH_TOPIC, SENSOR_QOS)
        self.probe.node.create_subscription(
            JointState, "/twinloop/reward", self.rewards.append, COMMAND_QOS
        )
        self.probe.node.create_subscription(
            String, "/twinloop/reward/status", self._on_status, COMMAND_QOS
        )

    def _on_status(self, msg: String) -> None:
        self.status.append(json.loads(msg.data))

    def now_ns(self) -> int:
        return int(self.probe.node.get_clock().now().nanoseconds)

    def send(
        self,
        camera: str,
        img: np.ndarray | Image,
        *,
        period: float = 0.15,
        depth: bool = True,
    ) -> int:
        """Publish one frame (stamped now unless a message is given) and, for the colour camera,
        its depth frame with the same stamp; the frame's stamp."""
        if isinstance(img, Image):
            msg = img
        else:
            msg = image_to_msg(img, stamp=stamp_from_ns(self.now_ns()))
        self.pubs[camera].publish(msg)
        if depth and camera == "color":
            self.send_depth(stamp_to_ns(msg.header.stamp), period=0.0)
        self.probe.spin_for(period)
        return stamp_to_ns(msg.header.stamp)

    def send_depth(self, stamp: int, *, period: float = 0.15) -> None:
        depth = np.full((48, 64), 800, dtype=np.uint16)
        self.depth_pub.publish(image_to_msg(depth, stamp=stamp_from_ns(stamp)))
        self.probe.spin_for(period)

    def rewards_for(self, stamps: list[int], timeout: float = 30.0) -> dict[int, JointState]:
        def by_stamp() -> dict[int, JointState]:
            return {stamp_to_ns(m.header.stamp): m for m in self.rewards}

        self.probe.spin_until(
            lambda: set(stamps) <= set(by_stamp()), timeout, f"rewards for {len(stamps)} frames"
        )
        found = by_stamp()
        return {s: found[s] for s in stamps}

    def latest_status(self, timeout: float = 10.0) -> dict:
        start = len(self.status)
        self.probe.spin_until(lambda: len(self.status) > start, timeout, "a reward status")
        return self.status[-1]

    def score(self, img: np.ndarray) -> float:
        stamp = self.send("color", img)
        return float(self.rewards_for([stamp])[stamp].position[0])


@pytest.fixture(scope="module")
def cell(setup: Setup) -> Iterator[Cell]:
    params: dict[str, Any] = {
        "reward_type": "clip",
        "checkpoint": str(setup.checkpoint),
        "watch_period_s": 0.2,
        "status_period_s": 0.3,
        "cameras": list(TOPICS),
        "image_topics": list(TOPICS.values()),
        "depth_topic": DEPTH_TOPIC,
        "threads": 1,
    }
    graph = Graph("test", (NodeSpec("reward", "twinloop_ros", "reward_node", params),))
    lines: list[str] = []
    env = {**ros_env(DOMAIN_ID), **NODE_ENV}
    with GraphProcesses(graph, env=env, output=lambda _n, line: lines.append(line)) as procs:
        with pytest.MonkeyPatch.context() as mp:
            for key, value in ros_env(DOMAIN_ID).items():
                mp.setenv(key, value)
            with GraphProbe.open("reward_test", domain_id=DOMAIN_ID) as probe:
                c = Cell(probe, procs, lines)
                probe.spin_until(lambda: c.status, 60.0, "the reward node's first status")
                pubs = [*c.pubs.values(), c.depth_pub]
                probe.spin_until(
                    lambda: all(p.get_subscription_count() > 0 for p in pubs),
                    10.0,
                    "the image subscriptions",
                )
                yield c


def test_rewards_carry_the_frame_stamps_and_match_the_model(cell: Cell, setup: Setup) -> None:
    model = load_reward_model(setup.checkpoint, expect_type="clip")
    images = frames(8, seed=1)
    sent: list[tuple[str, int, int]] = []  # camera, stamp, image index
    for i, img in enumerate(images):
        camera = "wrist" if i % 4 == 3 else "color"
        sent.append((camera, cell.send(camera, img), i))
    got = cell.rewards_for([s for _, s, _ in sent])
    want = rewards_of(model, images)
    for camera, stamp, i in sent:
        msg = got[stamp]
        assert msg.header.frame_id == camera
        assert list(msg.name) == ["reward", "success"]
        assert msg.position[0] == pytest.approx(float(want[i]), abs=1e-4)
        assert msg.position[1] == (1.0 if want[i] >= setup.threshold else 0.0)
    assert {m.position[1] for m in got.values()} == {0.0, 1.0}  # the threshold is the median
    status = cell.latest_status()
    assert status["model_type"] == "clip" and status["reward_type"] == "clip"
    assert status["cameras"]["wrist"]["results"] >= 2 and status["cameras"]["color"]["results"] >= 6
    assert status["latency_ms"]["p50"] >= status["forward_ms"]["p50"] > 0.0
    assert status["skipped"] == 0 and status["failed"] == 0


def test_bad_frames_are_counted_and_good_ones_still_scored(cell: Cell) -> None:
    before = cell.latest_status()["failed_by"]
    stamp = stamp_from_ns(cell.now_ns())
    depth_like = image_to_msg(np.zeros((48, 64), np.float32), stamp=stamp)  # 32FC1
    truncated = image_to_msg(frames(1, seed=2)[0], stamp=stamp)
    truncated.data = array.array("B", bytes(100))
    unstamped = image_to_msg(frames(1, seed=3)[0])
    tiny = image_to_msg(np.zeros((4, 4, 3), np.uint8), stamp=stamp)
    for msg in (depth_like, truncated, unstamped, tiny):
        cell.send("color", msg)
    good = [cell.send("color", img) for img in frames(2, seed=4)]
    assert len(cell.rewards_for(good)) == 2

    def failed() -> dict[str, int]:
        now = cell.status[-1]["failed_by"]
        return {k: n - before.get(k, 0) for k, n in now.items() if n != before.get(k, 0)}

    cell.probe.spin_until(lambda: len(failed()) >= 4, 10.0, "the failures")
    assert failed() == {"encoding": 1, "size": 1, "unstamped": 1, "bad_frame": 1}
    assert cell.procs.running() == ["reward"]
    assert any("dropping a frame of camera color (encoding)" in line for line in cell.lines)
    assert any("image data truncated" in e["error"] for e in cell.status[-1]["last_errors"])


def test_a_frame_of_the_first_camera_waits_for_its_depth(cell: Cell) -> None:
    img_a, img_b, img_c = frames(3, seed=6)
    waiting = cell.send("color", img_a, depth=False, period=0.5)
    assert waiting not in {stamp_to_ns(m.header.stamp) for m in cell.rewards}
    cell.send_depth(waiting)
    assert cell.rewards_for([waiting])[waiting].header.frame_id == "color"
    # depth first, frame second: paired as well
    stamp = cell.now_ns()
    cell.send_depth(stamp, period=0.05)
    cell.send("color", image_to_msg(img_b, stamp=stamp_from_ns(stamp)), depth=False)
    cell.rewards_for([stamp])
    # a frame whose depth never comes is dropped (counted) when the next one takes its place
    before = cell.latest_status()["failed_by"].get("no_depth", 0)
    lost = cell.send("color", img_c, depth=False)
    kept = cell.send("color", img_a)
    cell.rewards_for([kept])
    assert lost not in {stamp_to_ns(m.header.stamp) for m in cell.rewards}
    cell.probe.spin_until(
        lambda: cell.status[-1]["failed_by"].get("no_depth", 0) == before + 1, 10.0, "no_depth"
    )
    wrist = cell.send("wrist", img_b, depth=False)  # the other camera needs no depth
    cell.rewards_for([wrist])


def test_hot_swap_of_the_checkpoint_changes_the_rewards(cell: Cell, setup: Setup) -> None:
    img = frames(1, seed=5)[0]
    old = load_reward_model(setup.checkpoint, expect_type="clip")
    assert cell.score(img) == pytest.approx(float(rewards_of(old, [img])[0]), abs=1e-4)
    config = ClipRewardConfig(
        goal_prompts=OTHER_GOAL, baseline_prompts=OTHER_BASELINE, **setup.clip
    )
    new = ClipReward(config)
    want_new = float(rewards_of(new, [img])[0])
    assert abs(want_new - float(rewards_of(old, [img])[0])) > 1e-3
    save_reward_model(new, setup.checkpoint)  # atomic replace, as a learner writes it
    cell.probe.spin_until(
        lambda: cell.status and cell.status[-1]["swaps"] == 1, 30.0, "the hot swap"
    )
    assert cell.score(img) == pytest.approx(want_new, abs=1e-4)
    # a broken file: the node logs it, keeps the model it has and keeps publishing
    setup.checkpoint.write_bytes(b"half a checkpoint")  # in place: the loaded model is a copy
    cell.probe.spin_until(
        lambda: cell.status and cell.status[-1]["swap_failures"] == 1, 30.0, "the failed swap"
    )
    assert "is not a safetensors file" in cell.status[-1]["last_swap_error"]
    assert cell.score(img) == pytest.approx(want_new, abs=1e-4)
    assert any("hot swap: cannot load" in line for line in cell.lines)


def test_stop_is_clean(cell: Cell) -> None:
    assert cell.procs.stop() == {"reward": 0}, "\n".join(cell.lines[-30:])


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (["reward_type:=nope"], "unknown reward type 'nope'. Available: ["),
        (["config:=not json"], "config must be a JSON object of clip config fields"),
        (["config:='{}'"], "goal_prompts must hold at least one prompt"),
        (["cameras:=[a, b]"], "image_topics needs one topic per camera ['a', 'b']"),
        (["reward_type:=success_classifier"], "'success_classifier' needs a trained checkpoint"),
        (
            ["reward_type:=preference", "checkpoint:=/nonexistent/pref.safetensors"],
            "(/nonexistent/pref.safetensors does not exist)",
        ),
        (
            [
                "checkpoint:=/x/r.safetensors",
                "task_checkpoints:=[open_drawer=/x/o, close_drawer=/x/c]",
            ],
            "set checkpoint or task_checkpoints, not both",
        ),
        (
            ["task_checkpoints:=[open_drawer=/x/o.safetensors, /x/c.safetensors]"],
            "task_checkpoints: reward checkpoint item '/x/c.safetensors' is not TASK=PATH",
        ),
        (
            ["task_checkpoints:=[/x/o.safetensors]"],
            "task_checkpoints needs TASK=PATH items, got ['/x/o.safetensors']",
        ),
        (
            ["task_checkpoints:=[open_drawer=/x/o, open_drawer=/x/c]"],
            "task 'open_drawer' has two reward checkpoints",
        ),
        (["task_checkpoints:=[1, 2]"], "parameter 'task_checkpoints' must be a list of strings"),
    ],
)
def test_bad_parameters_fail_at_start(params: list[str], message: str) -> None:
    out = start_node(params)
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in out.stderr


def start_node(params: list[str]) -> subprocess.CompletedProcess[str]:
    """Run reward_node with ``-p`` params (it should refuse to start); its completed process."""
    exe = Path(sysconfig.get_path("scripts")) / "reward_node"
    args = [str(exe), "--ros-args"]
    for p in params:
        args += ["-p", p]
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **ros_env(DOMAIN_ID), **NODE_ENV},
        check=False,
    )


def test_help_lists_the_parameters() -> None:
    exe = Path(sysconfig.get_path("scripts")) / "reward_node"
    out = subprocess.run(
        [str(exe), "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    assert "reward_node: a reward model scores the newest camera frames" in out.stdout
    for name in ("reward_type", "config", "checkpoint", "image_topics", "max_batch"):
        assert f"  {name} (" in out.stdout


# ----- one model per task (reset-free) -------------------------------------------------------
def test_task_checkpoints_switch_models_at_the_start_events_stamp(tmp_path: Path) -> None:
    opened = constant_classifier(tmp_path / "open.safetensors", success=True)
    closed = constant_classifier(tmp_path / "close.safetensors", success=False)
    params: dict[str, Any] = {
        "reward_type": "success_classifier",
        "task_checkpoints": [f"open_drawer={opened}", f"close_drawer={closed}"],
        "status_period_s": 0.2,
        "cameras": ["color"],
        "image_topics": [TOPICS["color"]],
        "threads": 1,
    }
    graph = Graph("test", (NodeSpec("reward", "twinloop_ros", "reward_node", params),))
    lines: list[str] = []
    env = {**ros_env(TASK_DOMAIN_ID), **NODE_ENV}
    img = frames(1, seed=7)[0]
    with (
        GraphProcesses(graph, env=env, output=lambda _n, line: lines.append(line)) as procs,
        pytest.MonkeyPatch.context() as mp,
    ):
        for key, value in ros_env(TASK_DOMAIN_ID).items():
            mp.setenv(key, value)
        with GraphProbe.open("reward_task_test", domain_id=TASK_DOMAIN_ID) as probe:
            rewards: list[JointState] = probe.collect(JointState, "/twinloop/reward")
            status: list[dict] = []
            probe.node.create_subscription(
                String, "/twinloop/reward/status", lambda m: status.append(json.loads(m.data)),
                COMMAND_QOS,
            )  # fmt: skip
            image_pub = probe.publisher(Image, TOPICS["color"], SENSOR_QOS)
            event_pub = probe.publisher(String, "/twinloop/episode", COMMAND_QOS)
            probe.spin_until(lambda: status, 60.0, "the reward node's first status")
            probe.spin_until(
                lambda: image_pub.get_subscription_count() and event_pub.get_subscription_count(),
                10.0,
                "the image and episode subscriptions",
            )

            def now() -> int:
                return int(probe.node.get_clock().now().nanoseconds)

            def send(stamp: int) -> int:
                image_pub.publish(image_to_msg(img, stamp=stamp_from_ns(stamp)))
                probe.spin_for(0.15)
                return stamp

            def scored(stamps: list[int]) -> list[tuple[float, bool, str]]:
                def by_stamp() -> dict[int, JointState]:
                    return {stamp_to_ns(m.header.stamp): m for m in rewards}

                probe.spin_until(lambda: set(stamps) <= set(by_stamp()), 20.0, f"{stamps}")
                found = by_stamp()
                return [reward_from_msg(found[s]) for s in stamps]

            def switch(task: str, **stamp: int) -> None:
                event_pub.publish(episode_event_to_msg("start", 1, task=task, **stamp))
                probe.spin_until(lambda: status[-1].get("task") == task, 10.0, f"task {task}")

            # before any start event: the first task's model
            assert status[-1]["tasks"] == ["open_drawer", "close_drawer"]
            assert status[-1]["task"] == "open_drawer"
            first = [send(now()) for _ in range(2)]
            assert scored(first) == [(1.0, True, "open_drawer")] * 2
            some = next(m for m in rewards if stamp_to_ns(m.header.stamp) == first[0])
            assert list(some.name) == ["reward", "success", "task:open_drawer"]
            # the backward task from the event's stamp on; a frame stamped earlier (in flight
            # across the switch) is still scored by the forward model and says so
            at = now()
            switch("close_drawer", stamp_ns=at)
            late = send(at - 50_000_000)
            after = [send(now()) for _ in range(2)]
            assert scored([late]) == [(1.0, True, "open_drawer")]
            assert scored(after) == [(-1.0, False, "close_drawer")] * 2
            # a task without a model is logged and changes nothing
            event_pub.publish(episode_event_to_msg("start", 2, task="lift_rod", stamp_ns=now()))
            probe.spin_for(0.3)
            assert scored([send(now())]) == [(-1.0, False, "close_drawer")]
            # an event without a stamp switches from its arrival on
            switch("open_drawer")
            assert scored([send(now())]) == [(1.0, True, "open_drawer")]
            probe.spin_until(lambda: status[-1]["results"] >= 7, 10.0, "the counts")
            assert status[-1]["failed"] == 0 and status[-1]["model_type"] == "task_routed"
            assert procs.stop() == {"reward": 0}, "\n".join(lines[-30:])
    assert any("episode task 'lift_rod' has no reward model" in line for line in lines)


def test_task_checkpoints_that_do_not_load_name_their_task(tmp_path: Path) -> None:
    opened = constant_classifier(tmp_path / "open.safetensors", success=True)
    missing = tmp_path / "close.safetensors"
    items = f"[open_drawer={opened}, close_drawer={missing}]"
    out = start_node(["reward_type:=success_classifier", f"task_checkpoints:={items}"])
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"the reward checkpoint of 'close_drawer', {missing}, does not exist" in out.stderr
    items = f"[open_drawer={opened}, close_drawer={opened}]"
    out = start_node([f"task_checkpoints:={items}"])  # reward_type clip: the wrong type
    assert out.returncode == 2, out.stdout + out.stderr
    assert "task_checkpoints (open_drawer): " in out.stderr
    assert "holds a 'success_classifier' reward model, expected 'clip'" in out.stderr
