"""GraphProbe: a client of a running node graph, for tests and diagnostics.

It owns its own rclpy context (so it can sit beside other nodes in one process), subscribes to
the camera, /joint_states and /twinloop/ee_pose, and offers the few things a check needs: spin for
a while or until a condition holds, call a service, publish actions, set another node's
parameters. Used by the real-DDS tests; keeps rclpy inside robot_ws/.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import rclpy
from geometry_msgs.msg import PoseStamped
from rcl_interfaces.srv import SetParameters
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile
from sensor_msgs.msg import CameraInfo, Image, JointState

from .conversions import action_to_msg
from .node_utils import COMMAND_QOS, SENSOR_QOS

__all__ = ["GraphProbe", "ros_env"]

COLOR_TOPIC = "/camera/camera/color/image_raw"
INFO_TOPIC = "/camera/camera/color/camera_info"


def ros_env(domain_id: int) -> dict[str, str]:
    """Environment of an isolated local graph: its own domain, discovery on this host only."""
    return {
        "ROS_DOMAIN_ID": str(domain_id),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"),
    }


class GraphProbe:
    """This process's view of a graph. Create it with :meth:`open`."""

    def __init__(self, context: Context, name: str) -> None:
        self.context = context
        self.node = rclpy.create_node(name, context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.image_times: list[float] = []
        self.last_image: Image | None = None
        self.last_info: CameraInfo | None = None
        self.joint_states: list[JointState] = []
        self.poses: list[PoseStamped] = []
        node = self.node
        node.create_subscription(Image, COLOR_TOPIC, self._on_image, SENSOR_QOS)
        node.create_subscription(CameraInfo, INFO_TOPIC, self._on_info, SENSOR_QOS)
        node.create_subscription(JointState, "/joint_states", self.joint_states.append, SENSOR_QOS)
        node.create_subscription(PoseStamped, "/twinloop/ee_pose", self.poses.append, SENSOR_QOS)

    @classmethod
    @contextmanager
    def open(cls, name: str = "probe", *, domain_id: int | None = None) -> Iterator[GraphProbe]:
        """A probe on ``domain_id`` (default: ROS_DOMAIN_ID), shut down on exit."""
        context = Context()
        kwargs: dict[str, Any] = {"context": context}
        if domain_id is not None:
            kwargs["domain_id"] = domain_id
        rclpy.init(**kwargs)
        probe = None
        try:
            probe = cls(context, name)
            yield probe
        finally:
            if probe is not None:
                probe.executor.shutdown()
                probe.node.destroy_node()
            rclpy.try_shutdown(context=context)

    def _on_image(self, msg: Image) -> None:
        self.image_times.append(time.monotonic())
        self.last_image = msg

    def _on_info(self, msg: CameraInfo) -> None:
        self.last_info = msg

    # ----- spinning ----------------------------------------------------------------------------
    def spin_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.005)

    def spin_until(self, done: Callable[[], Any], timeout: float, what: str) -> None:
        """Spin until ``done()`` is truthy; TimeoutError naming ``what`` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                msg = f"timed out after {timeout} s waiting for {what}"
                raise TimeoutError(msg)
            self.executor.spin_once(timeout_sec=0.01)

    def image_rate(self, seconds: float) -> float:
        """Camera frames per second received over the next ``seconds``."""
        start, t0 = len(self.image_times), time.monotonic()
        self.spin_for(seconds)
        return (len(self.image_times) - start) / (time.monotonic() - t0)

    # ----- talking to the graph ----------------------------------------------------------------
    def call(self, srv_type: Any, name: str, request: Any, timeout: float = 10.0) -> Any:
        client = self.node.create_client(srv_type, name)
        try:
            self.spin_until(client.service_is_ready, timeout, f"service {name}")
            future = client.call_async(request)
            self.spin_until(future.done, timeout, f"an answer from {name}")
            return future.result()
        finally:
            self.node.destroy_client(client)

    def set_parameters(self, node: str, values: Mapping[str, Any]) -> list[tuple[bool, str]]:
        """Set parameters of ``node``; (successful, reason) per parameter."""
        request = SetParameters.Request(
            parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()]
        )
        answer = self.call(SetParameters, f"/{node.lstrip('/')}/set_parameters", request)
        return [(r.successful, r.reason) for r in answer.results]

    def publish_actions(
        self,
        action: Sequence[float] | JointState,
        steps: int,
        *,
        topic: str = "/twinloop/action",
        period: float = 0.1,
        settle: float = 0.0,
    ) -> None:
        """Publish ``action`` ``steps`` times, one per ``period`` s (stamped now)."""
        pub = self.node.create_publisher(JointState, topic, COMMAND_QOS)
        try:
            self.spin_until(lambda: pub.get_subscription_count() > 0, 10.0, f"a reader of {topic}")
            for _ in range(steps):
                if isinstance(action, JointState):
                    msg = action
                else:
                    msg = action_to_msg(action, stamp=self.node.get_clock().now().to_msg())
                pub.publish(msg)
                self.spin_for(period)
            self.spin_for(settle)
        finally:
            self.node.destroy_publisher(pub)

    # ----- generic helpers (any topic, any message type) ------------------------------------
    def collect(self, msg_type: Any, topic: str, qos: QoSProfile = COMMAND_QOS) -> list[Any]:
        """Subscribe to ``topic``; the returned list fills with the messages as the probe spins."""
        received: list[Any] = []
        self.node.create_subscription(msg_type, topic, received.append, qos)
        return received

    def publisher(self, msg_type: Any, topic: str, qos: QoSProfile = COMMAND_QOS) -> Any:
        """A publisher on the probe's node (destroyed with the probe)."""
        return self.node.create_publisher(msg_type, topic, qos)
