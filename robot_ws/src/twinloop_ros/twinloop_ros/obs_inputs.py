"""Observation subscriptions shared by policy_node and learner_node.

Both feed a :class:`twinloop.policy.actor.LatestObservations` from the same topics (camera,
/joint_states, /twinloop/ee_pose, the twin's /twinloop/sim/state), subscribing only the sources
the ObsSpec needs; a bad message is logged (throttled per kind) and dropped, the node keeps
running.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from twinloop.policy.actor import LatestObservations
from twinloop.policy.errors import PolicyError

from .conversions import pose_from_msg, rgb_from_msg, sim_state_from_msg, stamp_to_ns
from .errors import RosAdapterError
from .node_utils import COMMAND_QOS, SENSOR_QOS

__all__ = ["KeyedThrottle", "ObservationInputs"]


class KeyedThrottle:
    """``ready(key)`` is True at most once per ``period_s`` for each key (log throttling)."""

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self._last: dict[str, float] = {}

    def ready(self, key: str) -> bool:
        now = time.monotonic()
        if now - self._last.get(key, -math.inf) < self.period_s:
            return False
        self._last[key] = now
        return True


class ObservationInputs:
    """Subscribes ``latest``'s sources on ``node`` and writes every message into it.

    ``after`` runs after each accepted message (the learner forms a tick there); ``warn(kind,
    text)`` reports a dropped message.
    """

    def __init__(
        self,
        node: Node,
        latest: LatestObservations,
        *,
        image_topic: str,
        joint_states_topic: str,
        ee_pose_topic: str,
        sim_state_topic: str,
        warn: Callable[[str, str], None],
        after: Callable[[], None] | None = None,
    ) -> None:
        self.node = node
        self.latest = latest
        self._warn = warn
        self._after = after
        sources = latest.sources
        if "image" in sources:
            node.create_subscription(Image, image_topic, self._on_image, SENSOR_QOS)
        if "joints" in sources:
            node.create_subscription(JointState, joint_states_topic, self._on_joints, SENSOR_QOS)
        if "ee_pose" in sources:
            node.create_subscription(PoseStamped, ee_pose_topic, self._on_pose, SENSOR_QOS)
        if "priv" in sources:
            node.create_subscription(String, sim_state_topic, self._on_sim_state, COMMAND_QOS)

    def _update(self, kind: str, update: Callable[[], None]) -> None:
        try:
            update()
            if self._after is not None:
                self._after()
        except (PolicyError, RosAdapterError) as err:
            self._warn(f"bad_{kind}", f"dropping a {kind} message: {err}")

    def _on_image(self, msg: Image) -> None:
        stamp = stamp_to_ns(msg.header.stamp)
        self._update("image", lambda: self.latest.update_image(rgb_from_msg(msg), stamp))

    def _on_joints(self, msg: JointState) -> None:
        stamp = stamp_to_ns(msg.header.stamp)
        pos, vel = np.asarray(msg.position, float), np.asarray(msg.velocity, float)
        self._update("joint state", lambda: self.latest.update_joints(pos, vel, stamp))

    def _on_pose(self, msg: PoseStamped) -> None:
        def update() -> None:
            pos, quat = pose_from_msg(msg)
            self.latest.update_ee_pose(np.concatenate([pos, quat]), stamp_to_ns(msg.header.stamp))

        self._update("ee pose", update)

    def _on_sim_state(self, msg: String) -> None:
        now = int(self.node.get_clock().now().nanoseconds)

        def update() -> None:
            state = sim_state_from_msg(msg)
            # the twin's stamp of the joint state and pose published with it; an older twin's
            # message has none: stamped on arrival, which a busy process makes late
            stamp = state.get("stamp_ns")
            stamp = int(stamp) if isinstance(stamp, int) and stamp > 0 else now
            self.latest.update_privileged(state["privileged_state"], stamp)

        self._update("sim state", update)
