"""reward_node: a reward model scores the newest camera frames and publishes /twinloop/reward.

A thin adapter over :class:`twinloop.vlm_reward.runtime.RewardRuntime` (docs/reward_node.md):

- the model: ``reward_type`` (clip | success_classifier | preference | keypoints) built from
  ``config`` (a JSON object of the reward config's fields, e.g. prompts and model name), or
  loaded from ``checkpoint`` (a reward checkpoint of ``base.save_reward_model``) when that file
  exists. The checkpoint file is watched: when it changes (or appears) it is loaded in the
  background and swapped in between two batches; a file that fails to load keeps the old model;
- subscribes ``image_topics`` (one per ``cameras`` name) with sensor QoS of depth 1, converts
  each Image to an RGB array once (rgb8, bgr8, rgba8, bgra8, mono8), and hands it to the runtime,
  which keeps only the newest frame per camera and runs the model on one worker thread;
- optional inputs for rewards that read more than pixels (keypoints): ``depth_topic`` (16UC1 mm,
  paired with the first camera's frame of the same stamp: state ``depth``), ``camera_info_topic``
  (state ``camera_k``, the 3x3 K) and ``ee_pose_topic`` (the newest pose: state ``ee_pose``,
  xyz + quaternion wxyz);
- publishes ``reward_topic`` (sensor_msgs/JointState, name [reward, success], header.stamp = the
  frame's stamp, frame_id = the camera name) and a JSON status on ``status_topic`` every
  ``status_period_s`` (input/output rates, latency p50/p99, model forward time, skipped frames,
  failed frames by reason, hot swaps, model type).

One model per task (reset-free RoboFuME: the forward and the backward task each have their own
success classifier): ``task_checkpoints`` ``[open_drawer=A.safetensors, close_drawer=B...]``
instead of ``checkpoint``. The node listens to ``episode_topic``; a ``start`` event naming a task
switches to that task's model for every frame stamped at or after the event's ``stamp_ns`` (its
arrival time when it has none). Before the first such event the first task's model scores. Each
reward then carries a third name ``task:<name>`` (the task it was scored for), so the episode
runner and the learner can ignore a flag scored for the other task (a frame in flight across a
switch). These checkpoints are loaded once, not watched.

Bad frames (unknown encodings, sizes that disagree with step and data, unstamped frames, sizes
the model refuses) are logged (throttled), counted in the status and dropped; the node keeps
running. Bad parameters (unknown reward type, config that is not JSON or not valid) end the start
with exit code 2.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.qos import QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import String
from twinloop.vlm_reward.base import RewardModel, config_from_dict, make_reward_model
from twinloop.vlm_reward.errors import RewardError
from twinloop.vlm_reward.routing import TaskRoutedReward, parse_task_checkpoints
from twinloop.vlm_reward.runtime import RewardRuntime, file_signature, load_model_snapshot

from twinloop.images import COLOR_ENCODINGS, DEPTH_ENCODINGS

from .conversions import (
    episode_event_from_msg,
    image_from_msg,
    json_to_msg,
    pose_from_msg,
    reward_to_msg,
    rgb_from_msg,
    stamp_from_ns,
    stamp_to_ns,
)
from .errors import RosAdapterError
from .node_utils import COMMAND_QOS, exit_if_help, main_exit, params_from_dataclass

__all__ = ["REWARD_NAMES", "RewardNode", "RewardNodeConfig", "main"]

REWARD_NAMES = ("reward", "success")  # JointState names of /twinloop/reward
TRAINED_TYPES = ("success_classifier", "preference")  # reward types that need a checkpoint file
BAD_LOG_PERIOD_S = 2.0  # a bad frame is logged at most this often per camera and reason
# Frames: best effort, keep only the newest (an older frame waiting in DDS is worth nothing here).
FRAME_QOS = QoSProfile(
    history=QoSHistoryPolicy.KEEP_LAST, depth=1, reliability=QoSReliabilityPolicy.BEST_EFFORT
)


@dataclass(frozen=True)
class RewardNodeConfig:
    """The node's parameters (one ROS parameter per field)."""

    reward_type: str = "clip"  # clip | success_classifier | preference | keypoints
    config: str = "{}"  # JSON object of the reward config's fields (used without a checkpoint file)
    checkpoint: str = ""  # reward checkpoint (safetensors); loaded if it exists, watched for swaps
    watch_period_s: float = 1.0  # how often the checkpoint file is checked for a change
    task_checkpoints: tuple[str, ...] = ()  # TASK=PATH per task (reset-free), instead of checkpoint
    episode_topic: str = "/twinloop/episode"  # start events switch the task (task_checkpoints)
    task: str = ""  # task sentence handed to the model with every batch
    cameras: tuple[str, ...] = ("color",)  # camera names (frame_id of their rewards)
    image_topics: tuple[str, ...] = ("/camera/camera/color/image_raw",)  # one per camera
    camera_info_topic: str = ""  # first camera's CameraInfo -> state camera_k; "" = none
    depth_topic: str = ""  # aligned 16UC1 depth of the first camera -> state depth; "" = none
    depth_tolerance_s: float = 0.005  # largest |depth stamp - frame stamp| for a pair
    ee_pose_topic: str = ""  # PoseStamped -> state ee_pose (xyz + wxyz); "" = none
    reward_topic: str = "/twinloop/reward"
    status_topic: str = "/twinloop/reward/status"
    max_batch: int = 8  # most frames in one model call
    status_period_s: float = 1.0  # seconds between two status messages
    threads: int = 0  # torch CPU threads for the model; 0 = torch's default

    def __post_init__(self) -> None:
        if len(self.cameras) != len(self.image_topics) or not all(self.image_topics):
            msg = (
                f"image_topics needs one topic per camera {list(self.cameras)}, "
                f"got {list(self.image_topics)}"
            )
            raise RosAdapterError(msg)
        for name in ("watch_period_s", "status_period_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0.0):
                msg = f"{name} must be a positive number of seconds, got {value}"
                raise RosAdapterError(msg)
        if not (math.isfinite(self.depth_tolerance_s) and self.depth_tolerance_s >= 0.0):
            msg = f"depth_tolerance_s must be >= 0, got {self.depth_tolerance_s}"
            raise RosAdapterError(msg)
        if self.threads < 0:
            msg = f"threads must be >= 0, got {self.threads}"
            raise RosAdapterError(msg)
        if self.task_checkpoints:
            if self.checkpoint:
                msg = "set checkpoint or task_checkpoints, not both"
                raise RosAdapterError(msg)
            try:
                paths = parse_task_checkpoints(self.task_checkpoints)
            except RewardError as err:
                raise RosAdapterError(f"task_checkpoints: {err}") from None
            if "" in paths:
                msg = f"task_checkpoints needs TASK=PATH items, got {list(self.task_checkpoints)}"
                raise RosAdapterError(msg)
        if not self.reward_topic or not self.status_topic:
            msg = "reward_topic and status_topic must name topics"
            raise RosAdapterError(msg)

    def config_values(self) -> dict[str, Any]:
        """The ``config`` parameter parsed as a JSON object."""
        try:
            values = json.loads(self.config or "{}")
        except json.JSONDecodeError as err:
            msg = f"config must be a JSON object of {self.reward_type} config fields: {err}"
            raise RosAdapterError(msg) from err
        if not isinstance(values, dict):
            msg = f"config must be a JSON object, got {type(values).__name__}"
            raise RosAdapterError(msg)
        return values


def build_model(cfg: RewardNodeConfig) -> tuple[RewardModel, str]:
    """The model the node starts with and where it came from (for the log)."""
    if cfg.task_checkpoints:
        paths = parse_task_checkpoints(cfg.task_checkpoints)
        models: dict[str, RewardModel] = {}
        for task, file in paths.items():
            if not file.exists():
                msg = f"task_checkpoints: the reward checkpoint of {task!r}, {file}, does not exist"
                raise RosAdapterError(msg)
            try:
                models[task] = load_model_snapshot(file, expect_type=cfg.reward_type)
            except RewardError as err:
                raise RosAdapterError(f"task_checkpoints ({task}): {err}") from None
        where = ", ".join(f"{t}: {f}" for t, f in paths.items())
        return TaskRoutedReward(models), f"one checkpoint per task ({where})"
    path = Path(cfg.checkpoint) if cfg.checkpoint else None
    if path is not None and path.exists():
        model = load_model_snapshot(path, expect_type=cfg.reward_type)
        ignored = " (the config parameter is not used: the file holds its own)"
        return model, f"checkpoint {path}" + (ignored if cfg.config_values() else "")
    if cfg.reward_type in TRAINED_TYPES:
        # An untrained classifier or preference net would publish meaningless rewards.
        msg = (
            f"reward_type {cfg.reward_type!r} needs a trained checkpoint: set checkpoint:= to a "
            f"file from `twinloop reward train-classifier` or `twinloop reward label`"
            + (f" ({path} does not exist)" if path is not None else "")
        )
        raise RosAdapterError(msg)
    values = cfg.config_values()
    model = make_reward_model(config_from_dict(cfg.reward_type, values))
    where = "config" if path is None else f"config (until {path} appears)"
    return model, where


class RewardNode(Node):
    def __init__(self) -> None:
        super().__init__("reward")
        self.cfg = cfg = params_from_dataclass(self, RewardNodeConfig)
        if cfg.threads:
            import torch

            torch.set_num_threads(cfg.threads)
        signature = file_signature(cfg.checkpoint) if cfg.checkpoint else None
        t0 = time.perf_counter()
        model, source = build_model(cfg)
        self.get_logger().info(
            f"{cfg.reward_type} reward model from {source} in {time.perf_counter() - t0:.1f} s"
        )
        self._pub = self.create_publisher(JointState, cfg.reward_topic, COMMAND_QOS)
        self._status_pub = self.create_publisher(String, cfg.status_topic, COMMAND_QOS)
        self._runtime = RewardRuntime(
            model,
            cameras=cfg.cameras,
            max_batch=cfg.max_batch,
            task=cfg.task,
            on_result=self._publish,
            watch_period_s=cfg.watch_period_s,
        )
        self._bad_log: dict[tuple[str, str], tuple[float, int]] = {}  # last report, held back
        self._camera_k: np.ndarray | None = None
        self._ee_pose: np.ndarray | None = None
        self._depths: deque[tuple[int, np.ndarray]] = deque(maxlen=8)  # (stamp ns, depth)
        self._held: tuple[Image, float] | None = None  # first camera's frame waiting for depth
        self._depth_camera = cfg.cameras[0]
        # one model per task: (from stamp ns, task) switches, and the task each frame went in with
        routed = isinstance(model, TaskRoutedReward)
        self._tasks: tuple[str, ...] = tuple(model.models) if routed else ()
        self._switches: deque[tuple[int, str]] = deque([(0, self._tasks[0])] if routed else [],
                                                       maxlen=16)  # fmt: skip
        self._scored: OrderedDict[tuple[str, int], str] = OrderedDict()
        self._scored_lock = threading.Lock()  # filled here, emptied on the runtime's worker
        if routed:
            self.create_subscription(String, cfg.episode_topic, self._on_event, COMMAND_QOS)
        for camera, topic in zip(cfg.cameras, cfg.image_topics, strict=True):
            self.create_subscription(Image, topic, partial(self._on_image, camera), FRAME_QOS)
        if cfg.depth_topic:
            self.create_subscription(Image, cfg.depth_topic, self._on_depth, FRAME_QOS)
        if cfg.camera_info_topic:
            self.create_subscription(CameraInfo, cfg.camera_info_topic, self._on_info, FRAME_QOS)
        if cfg.ee_pose_topic:
            self.create_subscription(PoseStamped, cfg.ee_pose_topic, self._on_pose, FRAME_QOS)
        self.create_timer(cfg.status_period_s, self._publish_status)
        self._runtime.start()
        if cfg.checkpoint:
            self._runtime.watch(cfg.checkpoint, loaded=signature)
        self.get_logger().info(
            f"scoring {dict(zip(cfg.cameras, cfg.image_topics, strict=True))} -> "
            f"{cfg.reward_topic} (max batch {cfg.max_batch}"
            + (f", watching {cfg.checkpoint}" if cfg.checkpoint else "")
            + ")"
        )

    def destroy_node(self) -> None:
        self._runtime.close()  # the worker stops before the publisher goes away
        super().destroy_node()

    # ----- inputs ------------------------------------------------------------------------------
    def _warn(self, key: tuple[str, str], text: str) -> None:
        """A warning at most every BAD_LOG_PERIOD_S per ``key``, saying how many were held back."""
        now = time.monotonic()
        last, held = self._bad_log.get(key, (-math.inf, 0))
        if now - last < BAD_LOG_PERIOD_S:
            self._bad_log[key] = (last, held + 1)
            return
        self._bad_log[key] = (now, 0)
        more = f" ({held} more like it since the last report)" if held else ""
        self.get_logger().warning(text + more)

    def _reject(self, camera: str, reason: str, detail: str) -> None:
        self._runtime.reject(camera, reason, detail)
        self._warn((camera, reason), f"dropping a frame of camera {camera} ({reason}): {detail}")

    def _on_image(self, camera: str, msg: Image) -> None:
        received = time.monotonic()
        if msg.encoding not in COLOR_ENCODINGS:
            detail = f"encoding {msg.encoding!r}, expected one of {list(COLOR_ENCODINGS)}"
            self._reject(camera, "encoding", detail)
            return
        if stamp_to_ns(msg.header.stamp) <= 0:
            self._reject(camera, "unstamped", "the frame has no header stamp")
            return
        if self.cfg.depth_topic and camera == self._depth_camera:
            if self._held is not None:  # its depth never came; a newer frame takes its place
                self._reject(camera, "no_depth", "no depth frame with its stamp arrived")
            self._held = (msg, received)
            self._pair_depth()
            return
        self._submit(camera, msg, received, {})

    def _submit(
        self, camera: str, msg: Image, received: float, state: dict[str, np.ndarray]
    ) -> None:
        try:
            rgb = rgb_from_msg(msg)
        except RosAdapterError as err:
            self._reject(camera, "size", str(err))
            return
        if self._ee_pose is not None:
            state["ee_pose"] = self._ee_pose
        if self._camera_k is not None and camera == self._depth_camera:
            state["camera_k"] = self._camera_k
        stamp = stamp_to_ns(msg.header.stamp)
        task = self._task_at(stamp)
        if task:
            with self._scored_lock:
                self._scored[(camera, stamp)] = task
                while len(self._scored) > 64:  # frames replaced before scoring never come back
                    self._scored.popitem(last=False)
        try:
            self._runtime.submit(
                camera, rgb, stamp, state=state, received=received, task=task or None
            )
        except RewardError as err:  # counted by the runtime
            self._warn((camera, "bad_frame"), f"dropping a frame of camera {camera}: {err}")

    def _on_depth(self, msg: Image) -> None:
        camera = self._depth_camera
        if msg.encoding not in DEPTH_ENCODINGS:
            detail = f"depth encoding {msg.encoding!r}, expected one of {list(DEPTH_ENCODINGS)}"
            self._warn((camera, "depth"), f"dropping a depth frame: {detail}")
            return
        try:
            depth = image_from_msg(msg)
        except RosAdapterError as err:
            self._warn((camera, "depth"), f"dropping a depth frame: {err}")
            return
        self._depths.append((stamp_to_ns(msg.header.stamp), depth))
        self._pair_depth()

    def _pair_depth(self) -> None:
        """Submit the held frame with the depth of its stamp, once that depth is here."""
        if self._held is None:
            return
        msg, received = self._held
        stamp = stamp_to_ns(msg.header.stamp)
        tol = int(self.cfg.depth_tolerance_s * 1e9)
        match = [d for s, d in self._depths if abs(s - stamp) <= tol]
        if match:
            self._held = None
            self._submit(self._depth_camera, msg, received, {"depth": match[-1]})
        elif self._depths and self._depths[-1][0] > stamp + tol:  # depth has moved past it
            self._held = None
            self._reject(self._depth_camera, "no_depth", "no depth frame with its stamp arrived")

    def _task_at(self, stamp_ns: int) -> str:
        """The task whose model scores a frame of this stamp ("" with one model)."""
        task = ""
        for since, name in self._switches:
            if since <= stamp_ns:
                task = name
        return task

    def _on_event(self, msg: String) -> None:
        """A start event naming a task switches models from the event's stamp on."""
        try:
            event = episode_event_from_msg(msg)
        except RosAdapterError as err:
            self._warn(("event", "bad"), f"dropping an episode event: {err}")
            return
        task = event.get("task")
        if event.get("event") != "start" or not isinstance(task, str) or not task:
            return
        if task not in self._tasks:
            self._warn(("event", "task"), f"episode task {task!r} has no reward model "
                       f"(have {list(self._tasks)}); keeping {self._switches[-1][1]}")  # fmt: skip
            return
        stamp = event.get("stamp_ns")
        if not isinstance(stamp, int) or isinstance(stamp, bool) or stamp <= 0:
            stamp = int(self.get_clock().now().nanoseconds)
        if task != self._switches[-1][1]:
            self.get_logger().info(f"scoring {task} from now on (episode {event.get('episode')})")
        self._switches.append((max(stamp, self._switches[-1][0]), task))

    def _on_info(self, msg: CameraInfo) -> None:
        k = np.asarray(msg.k, dtype=np.float32)
        if k.shape != (9,) or not np.isfinite(k).all() or k[0] <= 0 or k[4] <= 0:
            self._warn(("info", "bad"), f"dropping a camera_info with K {k.tolist()}")
            return
        self._camera_k = k.reshape(3, 3)

    def _on_pose(self, msg: PoseStamped) -> None:
        try:
            pos, quat = pose_from_msg(msg)
        except RosAdapterError as err:
            self._warn(("ee_pose", "bad"), f"dropping an ee pose: {err}")
            return
        self._ee_pose = np.concatenate([pos, quat]).astype(np.float32)

    # ----- outputs -----------------------------------------------------------------------------
    def _publish(
        self, camera: str, stamp: int, reward: float, success: bool, latency_s: float
    ) -> None:
        """The runtime's result callback (worker thread): one JointState per scored frame."""
        with self._scored_lock:
            task = self._scored.pop((camera, stamp), "")
        self._pub.publish(
            reward_to_msg(reward, success, stamp=stamp_from_ns(stamp), frame_id=camera, task=task)
        )

    def status(self) -> dict[str, Any]:
        return {
            **self._runtime.stats(),
            "reward_type": self.cfg.reward_type,
            **({"task": self._switches[-1][1], "tasks": list(self._tasks)} if self._tasks else {}),
            "reward_topic": self.cfg.reward_topic,
        }

    def _publish_status(self) -> None:
        self._status_pub.publish(json_to_msg(self.status()))


def main() -> None:
    exit_if_help(__doc__, RewardNodeConfig)
    # The runtime and the models log with Python logging (hot swaps, failures): to stderr.
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="[%(levelname)s] [reward] %(name)s: %(message)s",
    )
    main_exit(RewardNode)


if __name__ == "__main__":
    main()
