"""A light synthetic robot cell for recorder tests and benchmarks (``python -m twinloop_ros.synthetic_sensors``).

Publishes what the recorder subscribes to, on the contract's topics and QoS, stamped ``now`` at
publication: ``--cameras`` rgb8 cameras (``/camera/<name>/color/image_raw`` and ``camera_info``;
the first camera also on the realsense-ros names ``/camera/camera/color/...``) at ``--camera-hz``,
optional 16UC1 depth, ``/joint_states`` (7 arm + 2 finger joints) and ``/twinloop/ee_pose`` at
``--joint-hz``, ``/twinloop/action`` at ``--action-hz``, and episode events on ``/twinloop/episode``
(``start``, then ``success`` / ``failure`` after ``--episode-s``, a ``--gap-s`` pause, next).

Frames are precomputed (a moving gradient with some texture, so they compress like a scene, not
like noise) and published from prebuilt buffers, so the publisher stays light. When done it prints
one JSON line: messages sent per stream, achieved rates, the episodes announced and timer lag.
"""

from __future__ import annotations

import argparse
import array
import json
import sys
import time
from typing import Any

import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import String

from .conversions import action_to_msg, episode_event_to_msg, pose_to_msg
from .node_utils import COMMAND_QOS, SENSOR_QOS

__all__ = ["SyntheticSensors", "camera_topics", "main", "make_frames"]

JOINTS = [f"joint{i}" for i in range(1, 8)] + ["finger_joint1", "finger_joint2"]


def camera_topics(name: str, index: int) -> dict[str, str]:
    """Topics of camera ``name``: the first one keeps the realsense-ros names of the contract."""
    ns = "/camera/camera" if index == 0 else f"/camera/{name}"
    return {
        "image": f"{ns}/color/image_raw",
        "info": f"{ns}/color/camera_info",
        "depth": f"{ns}/aligned_depth_to_color/image_raw",
    }


def make_frames(width: int, height: int, n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` rgb frames of a moving gradient with a textured patch (compressible, not constant)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    texture = rng.integers(0, 40, (height, width, 3), dtype=np.uint8)
    frames = []
    for k in range(n):
        shift = 2 * np.pi * k / max(n, 1)
        r = 127 + 100 * np.sin(xx / 40 + shift)
        g = 127 + 100 * np.cos(yy / 30 - shift)
        b = (xx + yy + 8 * k) % 256
        img = np.stack([r, g, b], axis=-1).astype(np.uint8)
        y0, x0 = int((height // 4) * (1 + np.sin(shift))), width // 3
        patch = img[y0 : y0 + height // 3, x0 : x0 + width // 3]  # a view: textured in place
        patch += texture[: patch.shape[0], : patch.shape[1]]
        frames.append(img)
    return frames


class SyntheticSensors(Node):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__("synthetic_sensors")
        self.args = args
        self.sent: dict[str, int] = {}
        self.lag_ms: list[float] = []  # camera timer lateness
        self.episodes: list[dict[str, Any]] = []
        self._cams: list[dict[str, Any]] = []
        frames = make_frames(args.width, args.height, args.frames)
        depth = (np.arange(args.width * args.height, dtype=np.uint16) % 4000).reshape(
            args.height, args.width
        )
        for i, name in enumerate(args.cameras):
            topics = camera_topics(name, i)
            cam: dict[str, Any] = {
                "name": name,
                "image": self.create_publisher(Image, topics["image"], SENSOR_QOS),
                "info": self.create_publisher(CameraInfo, topics["info"], SENSOR_QOS),
                "buffers": [array.array("B", f.tobytes()) for f in frames],
                "depth": None,
            }
            if args.depth:
                cam["depth"] = self.create_publisher(Image, topics["depth"], SENSOR_QOS)
                cam["depth_buffer"] = array.array("B", depth.tobytes())
            self._cams.append(cam)
            self.sent[f"image_{name}"] = 0
        self._joints = self.create_publisher(JointState, "/joint_states", SENSOR_QOS)
        self._pose = self.create_publisher(PoseStamped, "/twinloop/ee_pose", SENSOR_QOS)
        self._action = self.create_publisher(JointState, "/twinloop/action", COMMAND_QOS)
        self._events = self.create_publisher(String, "/twinloop/episode", COMMAND_QOS)
        self.sent.update(joint_states=0, ee_pose=0, action=0)
        self._last: dict[str, float] = {}  # stream -> time.monotonic() of its last publication
        self.max_gap_ms: dict[str, float] = {}  # stream -> largest interval between publications
        self._frame = 0
        self._t0 = time.monotonic()
        self._cam_next = self._t0 + 1.0 / args.camera_hz  # when the camera timer is due
        self._episode = -1
        self._phase = "wait"  # wait (for subscribers) -> gap -> running -> gap ... -> done
        self._phase_until = 0.0
        self.finished = False
        self.create_timer(1.0 / args.camera_hz, self._cameras)
        self.create_timer(1.0 / args.joint_hz, self._joint_state)
        self.create_timer(1.0 / args.action_hz, self._action_cb)
        self.create_timer(0.01, self._schedule)

    def _stamp(self) -> Any:
        return self.get_clock().now().to_msg()

    def _sent(self, stream: str) -> None:
        now = time.monotonic()
        self.sent[stream] += 1
        if stream in self._last:
            gap = (now - self._last[stream]) * 1e3
            self.max_gap_ms[stream] = max(self.max_gap_ms.get(stream, 0.0), gap)
        self._last[stream] = now

    def _cameras(self) -> None:
        now = time.monotonic()
        self.lag_ms.append((now - self._cam_next) * 1e3)
        self._cam_next = max(self._cam_next + 1.0 / self.args.camera_hz, now - 0.5)
        stamp = self._stamp()
        w, h = self.args.width, self.args.height
        for cam in self._cams:
            msg = Image()
            msg.header.stamp, msg.header.frame_id = stamp, f"{cam['name']}_optical_frame"
            msg.height, msg.width, msg.encoding, msg.step = h, w, "rgb8", 3 * w
            msg.data = cam["buffers"][self._frame % len(cam["buffers"])]
            cam["image"].publish(msg)
            self._sent(f"image_{cam['name']}")
            info = CameraInfo()
            info.header = msg.header
            info.width, info.height = w, h
            f = 0.8 * w
            info.k = [f, 0.0, w / 2, 0.0, f, h / 2, 0.0, 0.0, 1.0]
            info.p = [f, 0.0, w / 2, 0.0, 0.0, f, h / 2, 0.0, 0.0, 0.0, 1.0, 0.0]
            info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
            info.distortion_model, info.d = "plumb_bob", [0.0] * 5
            cam["info"].publish(info)
            if cam["depth"] is not None:
                d = Image()
                d.header = msg.header
                d.height, d.width, d.encoding, d.step = h, w, "16UC1", 2 * w
                d.data = cam["depth_buffer"]
                cam["depth"].publish(d)
        self._frame += 1

    def _joint_state(self) -> None:
        t = time.monotonic() - self._t0
        q = 0.3 * np.sin(t + np.arange(len(JOINTS)))
        msg = JointState(
            name=JOINTS,
            position=q.tolist(),
            velocity=(0.3 * np.cos(t + np.arange(len(JOINTS)))).tolist(),
        )
        stamp = self._stamp()
        msg.header.stamp = stamp
        self._joints.publish(msg)
        self._pose.publish(
            pose_to_msg([0.5 + 0.1 * np.sin(t), 0.0, 0.2], [1.0, 0.0, 0.0, 0.0], stamp=stamp)
        )
        self._sent("joint_states")
        self._sent("ee_pose")

    def _action_cb(self) -> None:
        t = time.monotonic() - self._t0
        action = [0.01 * np.sin(t), 0.01 * np.cos(t), 0.0, 0.0, -1.0]
        self._action.publish(action_to_msg(action, stamp=self._stamp()))
        self._sent("action")

    def _schedule(self) -> None:
        now = time.monotonic()
        args = self.args
        if self._phase == "wait":
            if self._events.get_subscription_count() >= args.wait_subscribers:
                self._phase, self._phase_until = "gap", now + args.gap_s
            return
        if now < self._phase_until or self._phase == "done":
            return
        if self._phase == "running":
            ok = self._episode % 2 == 0 or args.all_success
            event = "success" if ok else "failure"
            self._events.publish(episode_event_to_msg(event, self._episode, task="synthetic"))
            self.episodes[-1]["event"] = event
            if args.episodes and self._episode + 1 >= args.episodes:
                self._phase, self._phase_until = "done", now
                self.finished = True
            else:
                self._phase, self._phase_until = "gap", now + args.gap_s
        else:
            self._episode += 1
            self._events.publish(episode_event_to_msg("start", self._episode, task="synthetic"))
            self.episodes.append({"episode": self._episode, "start": time.time()})
            self._phase, self._phase_until = "running", now + args.episode_s

    def summary(self) -> dict[str, Any]:
        elapsed = time.monotonic() - self._t0
        lag = np.asarray(self.lag_ms[1:] or [0.0])
        return {
            "sent": self.sent,
            "elapsed_s": round(elapsed, 3),
            "rates_hz": {k: round(v / elapsed, 2) for k, v in self.sent.items()},
            "episodes": self.episodes,
            "max_gap_ms": {k: round(v, 1) for k, v in self.max_gap_ms.items()},
            "camera_timer_lag_ms": {
                "p50": float(np.percentile(lag, 50)),
                "p99": float(np.percentile(lag, 99)),
                "max": float(lag.max()),
            },
        }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cameras", nargs="+", default=["color"], help="camera names (default: color)")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--depth", action="store_true", help="also publish 16UC1 depth")
    p.add_argument("--frames", type=int, default=8, help="distinct precomputed frames (cycled)")
    p.add_argument("--camera-hz", type=float, default=30.0)
    p.add_argument("--joint-hz", type=float, default=100.0)
    p.add_argument("--action-hz", type=float, default=30.0)
    p.add_argument(
        "--episodes", type=int, default=0, help="episodes to announce (0: until stopped)"
    )
    p.add_argument("--episode-s", type=float, default=2.0, help="episode length, s")
    p.add_argument("--gap-s", type=float, default=0.5, help="pause before each episode, s")
    p.add_argument(
        "--all-success", action="store_true", help="every episode succeeds (default: odd ones fail)"
    )
    p.add_argument(
        "--wait-subscribers", type=int, default=1, help="episode-topic readers to wait for"
    )
    p.add_argument(
        "--duration", type=float, default=0.0, help="stop after this many s (0: after the episodes)"
    )
    p.add_argument(
        "--linger-s",
        type=float,
        default=1.0,
        help="keep publishing this long after the last episode",
    )
    args = p.parse_args(argv)
    for name in ("camera_hz", "joint_hz", "action_hz"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be > 0")
    if args.width < 1 or args.height < 1 or args.frames < 1:
        p.error("--width, --height and --frames must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rclpy.init()
    node = None
    try:
        node = SyntheticSensors(args)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        deadline = time.monotonic() + args.duration if args.duration > 0 else None
        done_at = None
        while rclpy.ok():
            executor.spin_once(timeout_sec=0.01)
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            if node.finished:
                done_at = done_at or now
                if now - done_at >= args.linger_s:
                    break
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            sys.stdout.write(json.dumps(node.summary()) + "\n")
            sys.stdout.flush()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
