"""live_view_node: the running graph, live in rerun (camera frames, rewards, actions, episodes).

A thin adapter over :class:`twinloop.live.LiveLogger` (docs/live_view.md); needs the ``live``
extra (``pip install 'twinloop[live]'``):

- subscribes ``image_topics`` (one per ``cameras`` name, sensor QoS, depth 1) and logs each
  colour frame (rgb8, bgr8, rgba8, bgra8, mono8) at its header stamp on ``camera/<camera>``,
  at most ``max_fps`` per camera, downscaled to ``max_width`` and JPEG-compressed when
  ``jpeg_quality`` is set;
- ``reward_topic`` (JointState [reward, success], frame_id = camera) -> ``reward/<camera>/value``
  and ``reward/<camera>/success``; ``action_topic`` and ``safe_action_topic`` (JointState named
  by ACTION_NAMES) -> ``action/action`` and ``action/safe_action``; ``joint_states_topic`` ->
  ``joints``; ``episode_topic`` (JSON events) -> the ``events`` text log, at the time of arrival;
- the timeline is robot time (``robot_time``): the header stamps, so a reward lines up with the
  frame it scored. Any topic parameter set to "" is not subscribed;
- sinks (``sink``): spawn (a native viewer), serve (gRPC on ``grpc_port``, a web viewer on
  ``web_port``), connect (a viewer at ``url``), save (an .rrd file at ``path``).

``enabled:=false`` makes the node exit 0 at start without importing rerun, so graph files can
list it switched off. Bad messages (unknown encodings, unstamped frames, wrong names, bad JSON)
are logged (throttled), counted and dropped; the node keeps running and logs its counts every
``report_period_s``. Bad parameters and a missing rerun-sdk end the start with exit code 2.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial

from rclpy.node import Node
from rclpy.qos import QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy
from rclpy.task import Future
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String

from twinloop.errors import TwinloopError
from twinloop.images import COLOR_ENCODINGS
from twinloop.live import LiveConfig, LiveLogger, check_entity_name

from .conversions import action_from_msg, episode_event_from_msg, rgb_from_msg, stamp_to_ns
from .errors import RosAdapterError
from .node_utils import COMMAND_QOS, SENSOR_QOS, exit_if_help, main_exit, params_from_dataclass

__all__ = ["LiveViewNode", "LiveViewNodeConfig", "main"]

log = logging.getLogger("twinloop.live_view_node")
BAD_LOG_PERIOD_S = 2.0  # a bad message is logged at most this often per source and reason
# Frames: best effort, keep only the newest (a live view wants the present, not a backlog).
FRAME_QOS = QoSProfile(
    history=QoSHistoryPolicy.KEEP_LAST, depth=1, reliability=QoSReliabilityPolicy.BEST_EFFORT
)


@dataclass(frozen=True)
class LiveViewNodeConfig:
    """The node's topics (one ROS parameter per field); the sink is LiveConfig's parameters."""

    enabled: bool = True  # false: exit 0 at start (a graph can list the node switched off)
    cameras: tuple[str, ...] = ("color",)  # camera names: entity camera/<name>
    image_topics: tuple[str, ...] = ("/camera/camera/color/image_raw",)  # one per camera
    reward_topic: str = "/twinloop/reward"
    action_topic: str = "/twinloop/action"
    safe_action_topic: str = "/twinloop/safe_action"
    joint_states_topic: str = "/joint_states"
    episode_topic: str = "/twinloop/episode"
    report_period_s: float = 30.0  # seconds between two log lines of the counts; 0 = never

    def __post_init__(self) -> None:
        if len(self.cameras) != len(self.image_topics) or not all(self.image_topics):
            msg = (
                f"image_topics needs one topic per camera {list(self.cameras)}, "
                f"got {list(self.image_topics)}"
            )
            raise RosAdapterError(msg)
        if len(set(self.cameras)) != len(self.cameras):
            msg = f"camera names must be unique, got {list(self.cameras)}"
            raise RosAdapterError(msg)
        if not (math.isfinite(self.report_period_s) and self.report_period_s >= 0.0):
            msg = f"report_period_s must be >= 0 seconds, got {self.report_period_s}"
            raise RosAdapterError(msg)


class LiveViewNode(Node):
    def __init__(self) -> None:
        super().__init__("live_view")
        self.cfg = cfg = params_from_dataclass(self, LiveViewNodeConfig)
        self.done = Future()  # completes only when the node is switched off
        self._live: LiveLogger | None = None
        self._rejected: Counter[str] = Counter()
        self._bad_log: dict[tuple[str, str], tuple[float, int]] = {}
        if not cfg.enabled:
            self.get_logger().info("live view switched off (enabled:=false)")
            self.done.set_result(0)
            return
        for camera in cfg.cameras:  # before a viewer is spawned or a file is created
            check_entity_name("camera", camera)
        live_cfg = params_from_dataclass(self, LiveConfig)
        self._live = live = LiveLogger(live_cfg)  # TwinloopError: bad sink or no rerun-sdk
        for camera, topic in zip(cfg.cameras, cfg.image_topics, strict=True):
            self.create_subscription(Image, topic, partial(self._on_image, camera), FRAME_QOS)
        if cfg.reward_topic:
            self.create_subscription(JointState, cfg.reward_topic, self._on_reward, COMMAND_QOS)
        for source, topic in (("action", cfg.action_topic), ("safe_action", cfg.safe_action_topic)):
            if topic:
                callback = partial(self._on_action, source)
                self.create_subscription(JointState, topic, callback, COMMAND_QOS)
        if cfg.joint_states_topic:
            self.create_subscription(
                JointState, cfg.joint_states_topic, self._on_joints, SENSOR_QOS
            )
        if cfg.episode_topic:
            self.create_subscription(String, cfg.episode_topic, self._on_event, COMMAND_QOS)
        if cfg.report_period_s > 0:
            self.create_timer(cfg.report_period_s, self._report)
        self.get_logger().info(
            f"live view ({live_cfg.sink}: {live.url}) of "
            f"{dict(zip(cfg.cameras, cfg.image_topics, strict=True))} at <= {live_cfg.max_fps:g} "
            f"fps per camera, rewards, actions, joint states and episode events"
        )

    def destroy_node(self) -> None:
        if self._live is not None:
            # The ROS context may be shut down by now (Ctrl-C): report through Python logging.
            log.info("final live view counts: %s", self.stats())
            self._live.close()  # the .rrd file is complete after this
        super().destroy_node()

    # ----- bookkeeping -------------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """What was logged (LiveLogger.stats) and what was dropped (``rejected/<source>/<reason>``)."""
        logged = self._live.stats() if self._live is not None else {}
        return {**logged, **{f"rejected/{k}": n for k, n in sorted(self._rejected.items())}}

    def _report(self) -> None:
        self.get_logger().info(f"live view counts: {self.stats()}")

    def _reject(self, source: str, reason: str, detail: str) -> None:
        """Count a dropped message and warn at most every BAD_LOG_PERIOD_S per source and reason."""
        self._rejected[f"{source}/{reason}"] += 1
        key = (source, reason)
        now = time.monotonic()
        last, held = self._bad_log.get(key, (-math.inf, 0))
        if now - last < BAD_LOG_PERIOD_S:
            self._bad_log[key] = (last, held + 1)
            return
        self._bad_log[key] = (now, 0)
        more = f" ({held} more like it since the last report)" if held else ""
        self.get_logger().warning(f"dropping a {source} message ({reason}): {detail}{more}")

    def _stamp(self, source: str, msg: Image | JointState) -> int | None:
        stamp = stamp_to_ns(msg.header.stamp)
        if stamp <= 0:
            self._reject(source, "unstamped", "the message has no header stamp")
            return None
        return stamp

    # ----- inputs ------------------------------------------------------------------------------
    def _on_image(self, camera: str, msg: Image) -> None:
        live = self._live
        if live is None:  # subscriptions exist only with a logger
            return
        source = f"camera/{camera}"
        if msg.encoding not in COLOR_ENCODINGS:
            detail = f"encoding {msg.encoding!r}, expected one of {list(COLOR_ENCODINGS)}"
            self._reject(source, "encoding", detail)
            return
        stamp = self._stamp(source, msg)
        if stamp is None:
            return
        try:
            live.log_frame(camera, stamp, rgb_from_msg(msg))
        except (RosAdapterError, TwinloopError) as err:
            self._reject(source, "size", str(err))

    def _on_reward(self, msg: JointState) -> None:
        live = self._live
        if live is None:
            return
        stamp = self._stamp("reward", msg)
        if stamp is None:
            return
        names = list(msg.name)
        if "reward" not in names or "success" not in names or len(msg.position) != len(names):
            detail = f"names {names} with {len(msg.position)} positions, expected [reward, success]"
            self._reject("reward", "names", detail)
            return
        value = float(msg.position[names.index("reward")])
        success = float(msg.position[names.index("success")]) >= 0.5
        camera = msg.header.frame_id or self.cfg.cameras[0]
        try:
            live.log_reward(stamp, value, success, camera=camera)
        except TwinloopError as err:
            self._reject("reward", "camera", str(err))

    def _on_action(self, source: str, msg: JointState) -> None:
        live = self._live
        if live is None:
            return
        stamp = self._stamp(source, msg)
        if stamp is None:
            return
        try:
            action = action_from_msg(msg)
        except RosAdapterError as err:
            self._reject(source, "names", str(err))
            return
        live.log_action(stamp, action, source=source)

    def _on_joints(self, msg: JointState) -> None:
        live = self._live
        if live is None:
            return
        stamp = self._stamp("joint_states", msg)
        if stamp is None:
            return
        try:
            live.log_joint_state(stamp, list(msg.name), msg.position)
        except TwinloopError as err:
            self._reject("joint_states", "size", str(err))

    def _on_event(self, msg: String) -> None:
        live = self._live
        if live is None:
            return
        try:
            payload = episode_event_from_msg(msg)
        except RosAdapterError as err:
            self._reject("episode", "payload", str(err))
            return
        # Events carry no stamp: they sit on the timeline at their arrival (ROS time, sim time
        # with use_sim_time).
        live.log_episode_event(self.get_clock().now().nanoseconds, payload)


def main() -> None:
    exit_if_help(__doc__, LiveViewNodeConfig, LiveConfig)
    # The core logs with Python logging (the web viewer's address, the final counts): to stderr.
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="[%(levelname)s] [live_view] %(name)s: %(message)s",
    )
    main_exit(LiveViewNode)


if __name__ == "__main__":
    main()
