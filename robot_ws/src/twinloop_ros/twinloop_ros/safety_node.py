"""safety_node: every action bound for the arm passes through twinloop.safety.ActionLimiter.

Subscribes /twinloop/action (policy or teleop) and the latest /twinloop/ee_pose, publishes the
limited command on /twinloop/safe_action with the incoming stamp. An action that cannot be made
safe (NaN, wrong names or length) is logged (throttled) and dropped: nothing reaches the arm.
Parameters: max_translation, max_yaw, workspace_low, workspace_high (see LimiterConfig).
"""

from __future__ import annotations

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import JointState

from twinloop.safety import ActionLimiter, LimiterConfig

from .conversions import action_from_msg, action_to_msg, pose_from_msg, stamp_to_ns
from .node_utils import main_exit, params_from_dataclass, qos_for

__all__ = ["SafetyNode", "main"]

EE_POSE_TIMEOUT_S = 1.0  # an older end-effector pose is not used for the workspace check


class SafetyNode(Node):
    def __init__(self) -> None:
        super().__init__("safety")
        self._limiter = ActionLimiter(params_from_dataclass(self, LimiterConfig))
        self._ee_pos: np.ndarray | None = None
        self._ee_received_ns = 0
        self._pub = self.create_publisher(
            JointState, "/twinloop/safe_action", qos_for("/twinloop/safe_action")
        )
        self.create_subscription(
            JointState, "/twinloop/action", self._on_action, qos_for("/twinloop/action")
        )
        self.create_subscription(
            PoseStamped, "/twinloop/ee_pose", self._on_ee_pose, qos_for("/twinloop/ee_pose")
        )
        cfg = self._limiter.config
        self.get_logger().info(
            f"limiting actions: max_translation={cfg.max_translation} m, max_yaw={cfg.max_yaw} "
            f"rad, workspace {cfg.workspace_low}..{cfg.workspace_high}"
        )

    def _on_ee_pose(self, msg: PoseStamped) -> None:
        try:
            self._ee_pos, _ = pose_from_msg(msg)
        except ValueError as err:
            self.get_logger().error(f"dropping ee pose: {err}", throttle_duration_sec=1.0)
            return
        self._ee_received_ns = self.get_clock().now().nanoseconds

    def _current_ee(self) -> list[float] | None:
        age_s = (self.get_clock().now().nanoseconds - self._ee_received_ns) / 1e9
        if self._ee_pos is None or age_s > EE_POSE_TIMEOUT_S:
            self.get_logger().warning(
                "no fresh /twinloop/ee_pose: the workspace box is not enforced here",
                throttle_duration_sec=5.0,
            )
            return None
        return self._ee_pos.tolist()

    def _on_action(self, msg: JointState) -> None:
        try:
            command = self._limiter(action_from_msg(msg), ee_pos=self._current_ee())
        except ValueError as err:  # RosAdapterError (structure) or TwinloopError (values)
            self.get_logger().error(f"dropping action: {err}", throttle_duration_sec=1.0)
            return
        stamp = msg.header.stamp  # the command keeps the stamp of the action it came from
        if stamp_to_ns(stamp) == 0:
            stamp = self.get_clock().now().to_msg()
        self._pub.publish(action_to_msg(command, stamp=stamp))


def main() -> None:
    main_exit(SafetyNode)


if __name__ == "__main__":
    main()
