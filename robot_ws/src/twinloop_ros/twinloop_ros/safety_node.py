"""safety_node: every action bound for the arm passes through twinloop.safety.SafetyLayer.

A thin adapter (docs/safety.md has the rules):

- subscribes /twinloop/action (sensor_msgs/JointState, ACTION_NAMES; ``header.frame_id`` names
  the source, e.g. ``teleop``), /joint_states and /twinloop/ee_pose (the arm's state),
  /twinloop/estop and /twinloop/deadman (std_msgs/Bool);
- publishes /twinloop/safe_action with the incoming stamp (holds are stamped now) and
  /twinloop/safety_status (std_msgs/String JSON) at ``status_hz``;
- serves ``~/reset_estop`` (std_srvs/Trigger): clears a latched e-stop once its input is False;
- runs the watchdog: no accepted action for ``watchdog_ms`` -> a hold command, then one more
  every ``watchdog_ms`` while silent.

Bad messages (wrong names, NaN, stale or missing stamps) are logged (throttled), counted in the
status and dropped; the node keeps running. Parameters: the fields of
:class:`twinloop.safety.LimiterConfig`, :class:`twinloop.safety.SafetyConfig` and
:class:`SafetyNodeConfig`; bad values end the start with exit code 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger

from twinloop.safety import LimiterConfig, SafetyConfig, SafetyDecision, SafetyLayer

from .conversions import (
    action_from_msg,
    action_to_msg,
    json_to_msg,
    pose_from_msg,
    stamp_from_ns,
    stamp_to_ns,
)
from .errors import RosAdapterError
from .node_utils import COMMAND_QOS, main_exit, params_from_dataclass, qos_for

__all__ = ["DEADMAN_TOPIC", "ESTOP_TOPIC", "STATUS_TOPIC", "SafetyNode", "SafetyNodeConfig", "main"]

ESTOP_TOPIC = "/twinloop/estop"  # std_msgs/Bool: True latches the software e-stop
DEADMAN_TOPIC = "/twinloop/deadman"  # std_msgs/Bool: True while the operator holds the deadman
STATUS_TOPIC = "/twinloop/safety_status"  # std_msgs/String: JSON of SafetyLayer.status()


@dataclass(frozen=True)
class SafetyNodeConfig:
    """The node's own parameters (the limits are LimiterConfig and SafetyConfig)."""

    status_hz: float = 2.0  # rate of /twinloop/safety_status

    def __post_init__(self) -> None:
        if not 0.0 < self.status_hz <= 100.0:
            msg = f"status_hz must be in (0, 100], got {self.status_hz}"
            raise RosAdapterError(msg)


class SafetyNode(Node):
    def __init__(self) -> None:
        super().__init__("safety")
        limits = params_from_dataclass(self, LimiterConfig)
        config = params_from_dataclass(self, SafetyConfig)
        node_cfg = params_from_dataclass(self, SafetyNodeConfig)
        self._layer = SafetyLayer(config, limits, clock=self._now_ns)
        self._pub = self.create_publisher(
            JointState, "/twinloop/safe_action", qos_for("/twinloop/safe_action")
        )
        self._status_pub = self.create_publisher(String, STATUS_TOPIC, COMMAND_QOS)
        self.create_subscription(
            JointState, "/twinloop/action", self._on_action, qos_for("/twinloop/action")
        )
        self.create_subscription(
            PoseStamped, "/twinloop/ee_pose", self._on_ee_pose, qos_for("/twinloop/ee_pose")
        )
        self.create_subscription(
            JointState, "/joint_states", self._on_joint_states, qos_for("/joint_states")
        )
        self.create_subscription(Bool, ESTOP_TOPIC, self._on_estop, COMMAND_QOS)
        self.create_subscription(Bool, DEADMAN_TOPIC, self._on_deadman, COMMAND_QOS)
        self.create_service(Trigger, "~/reset_estop", self._on_reset_estop)
        # The watchdog is checked 10 times per period (at most every 20 ms).
        self.create_timer(max(config.watchdog_ms / 10.0, 20.0) / 1e3, self._on_tick)
        self.create_timer(1.0 / node_cfg.status_hz, self._publish_status)
        self.get_logger().info(
            f"safety layer: max_translation={limits.max_translation} m, max_yaw="
            f"{limits.max_yaw} rad, workspace {limits.workspace_low}..{limits.workspace_high}, "
            f"gripper step {config.max_gripper_step}, watchdog {config.watchdog_ms} ms, max age "
            f"{config.max_age_ms} ms, deadman for {list(config.deadman_sources)}, joint margin "
            f"{config.joint_margin} rad ({config.arm_model})"
        )

    def _now_ns(self) -> int:
        return int(self.get_clock().now().nanoseconds)

    # ----- state inputs ----------------------------------------------------------------------
    def _on_ee_pose(self, msg: PoseStamped) -> None:
        try:
            pos, _ = pose_from_msg(msg)
            self._layer.update_ee(pos)
        except ValueError as err:
            self.get_logger().error(f"dropping ee pose: {err}", throttle_duration_sec=1.0)

    def _on_joint_states(self, msg: JointState) -> None:
        try:
            self._layer.update_joints(list(msg.name), list(msg.position), list(msg.velocity))
        except ValueError as err:
            self.get_logger().error(f"dropping joint state: {err}", throttle_duration_sec=1.0)

    def _on_deadman(self, msg: Bool) -> None:
        self._layer.update_deadman(bool(msg.data))

    def _on_estop(self, msg: Bool) -> None:
        latched_before = self._layer.estop_latched
        decision = self._layer.update_estop(bool(msg.data))
        if decision is not None:  # the hold goes out first
            self._publish(decision)
        if self._layer.estop_latched and not latched_before:
            self.get_logger().error(
                "E-STOP latched: every command is a hold until ~/reset_estop "
                "(after the e-stop input is released)"
            )
            self._publish_status()

    def _on_reset_estop(
        self, request: Trigger.Request, response: Trigger.Response
    ) -> Trigger.Response:
        response.success, response.message = self._layer.reset_estop()
        if response.success:
            self.get_logger().warning(f"reset_estop: {response.message}")
        else:
            self.get_logger().error(f"reset_estop refused: {response.message}")
        self._publish_status()
        return response

    # ----- actions ---------------------------------------------------------------------------
    def _on_action(self, msg: JointState) -> None:
        try:
            action = action_from_msg(msg)
        except ValueError as err:
            self._layer.drop("malformed")
            self.get_logger().error(f"dropping action: {err}", throttle_duration_sec=1.0)
            return
        decision = self._layer.filter(
            action, stamp_ns=stamp_to_ns(msg.header.stamp), source=msg.header.frame_id
        )
        if decision.outcome == "dropped":
            self.get_logger().error(
                f"dropping action: {decision.reason}", throttle_duration_sec=1.0
            )
        elif decision.outcome == "held":
            self.get_logger().warning(f"holding: {decision.reason}", throttle_duration_sec=1.0)
        self._publish(decision, stamp_ns=stamp_to_ns(msg.header.stamp))

    def _on_tick(self) -> None:
        decision = self._layer.tick()
        if decision is not None:
            self.get_logger().warning(
                f"no fresh action for {self._layer.config.watchdog_ms:.0f} ms: holding",
                throttle_duration_sec=5.0,
            )
            self._publish(decision)

    def _publish(self, decision: SafetyDecision, *, stamp_ns: int | None = None) -> None:
        """Publish the decision's command: a limited action keeps its stamp, a hold is stamped now."""
        command = decision.command
        if command is None:
            return
        if stamp_ns is None or stamp_ns <= 0 or decision.outcome == "held":
            stamp = self.get_clock().now().to_msg()
        else:
            stamp = stamp_from_ns(stamp_ns)
        self._pub.publish(action_to_msg(np.asarray(command), stamp=stamp))

    def _publish_status(self) -> None:
        self._status_pub.publish(json_to_msg(self._layer.status()))


def main() -> None:
    main_exit(SafetyNode)


if __name__ == "__main__":
    main()
