"""ros2_control_mock: plays a ros2_control forward_position_controller + joint_state_broadcaster.

So CI can drive arm_bridge without an arm: std_msgs/Float64MultiArray commands on
``command_topic`` (one value per ``joint_names`` entry, as a forward_position_controller takes
them) become the joints' targets, optionally reached with a first-order lag
(``time_constant_s``); a gripper forward controller on ``gripper_topic`` ("" = none) does the same
for ``gripper_joints``. ``/joint_states`` (``joint_states_topic``) carries the arm joints, then the
gripper joints, with velocities, at ``rate_hz``. A command of the wrong length or with NaN is
logged (throttled), counted and ignored, like the real controller. ``~/stats`` (std_srvs/Trigger)
answers the counters as JSON.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger

from twinloop.arm_bridge import JointMirror, MirrorConfig

from .conversions import joint_state_to_msg
from .errors import RosAdapterError
from .node_utils import COMMAND_QOS, SENSOR_QOS, exit_if_help, main_exit, params_from_dataclass

__all__ = ["ControlMockConfig", "ControlMockNode", "main"]

PANDA_HOME = (0.0, -0.3, 0.0, -2.2, 0.0, 1.9, math.pi / 4)  # the twin's home posture


@dataclass(frozen=True)
class ControlMockConfig:
    """The node's parameters (one ROS parameter per field)."""

    joint_names: tuple[str, ...] = tuple(f"joint{i}" for i in range(1, 8))  # controller's order
    initial_positions: tuple[float, ...] = PANDA_HOME  # rad, one per joint
    command_topic: str = "/forward_position_controller/commands"  # Float64MultiArray in
    gripper_topic: str = "/gripper_controller/commands"  # Float64MultiArray in; "" = no gripper
    gripper_joints: tuple[str, ...] = ("finger_joint1", "finger_joint2")
    gripper_initial: tuple[float, ...] = (0.04, 0.04)  # m per finger (open)
    joint_states_topic: str = "/joint_states"  # JointState out
    rate_hz: float = 50.0  # joint state rate (a real broadcaster runs at the update rate)
    time_constant_s: float = 0.0  # first-order lag towards the command; 0 = reach it at once

    def __post_init__(self) -> None:
        if not 0.0 < self.rate_hz <= 1000.0:
            msg = f"rate_hz must be in (0, 1000], got {self.rate_hz}"
            raise RosAdapterError(msg)
        if not self.command_topic or not self.joint_states_topic:
            msg = "command_topic and joint_states_topic must name topics"
            raise RosAdapterError(msg)
        if set(self.joint_names) & set(self.gripper_joints):
            msg = f"gripper_joints {list(self.gripper_joints)} repeat arm joint names"
            raise RosAdapterError(msg)
        self.arm()  # sizes and values: TwinloopError naming the problem
        self.gripper()

    def arm(self) -> MirrorConfig:
        return MirrorConfig(self.joint_names, self.initial_positions, self.time_constant_s)

    def gripper(self) -> MirrorConfig | None:
        if not self.gripper_topic:
            return None
        return MirrorConfig(self.gripper_joints, self.gripper_initial, self.time_constant_s)


class ControlMockNode(Node):
    def __init__(self) -> None:
        super().__init__("ros2_control_mock")
        self.cfg = cfg = params_from_dataclass(self, ControlMockConfig)
        self.arm = JointMirror(cfg.arm())  # bad sizes or values fail the start
        gripper_cfg = cfg.gripper()
        self.gripper = JointMirror(gripper_cfg) if gripper_cfg else None
        self.counts: Counter[str] = Counter()
        self._dt = 1.0 / cfg.rate_hz
        self._names = list(cfg.joint_names) + (list(cfg.gripper_joints) if self.gripper else [])
        self._pub = self.create_publisher(JointState, cfg.joint_states_topic, SENSOR_QOS)
        self.create_subscription(
            Float64MultiArray, cfg.command_topic, self._on_arm_command, COMMAND_QOS
        )
        if self.gripper is not None:
            self.create_subscription(
                Float64MultiArray, cfg.gripper_topic, self._on_gripper_command, COMMAND_QOS
            )
        self.create_service(Trigger, "~/stats", self._on_stats)
        self.create_timer(self._dt, self._tick)
        self.get_logger().info(
            f"mock forward_position_controller: {len(cfg.joint_names)} joints on "
            f"{cfg.command_topic}, gripper {cfg.gripper_topic or 'none'}, "
            f"{cfg.joint_states_topic} at {cfg.rate_hz} Hz, lag {cfg.time_constant_s} s"
        )

    def _on_arm_command(self, msg: Float64MultiArray) -> None:
        self._apply(self.arm, msg, "commands")

    def _on_gripper_command(self, msg: Float64MultiArray) -> None:
        if self.gripper is not None:
            self._apply(self.gripper, msg, "gripper_commands")

    def _apply(self, mirror: JointMirror, msg: Float64MultiArray, counter: str) -> None:
        try:
            mirror.command(msg.data)
        except ValueError as err:
            self.counts["dropped_" + counter] += 1
            self.get_logger().error(f"dropping command: {err}", throttle_duration_sec=1.0)
            return
        self.counts[counter] += 1

    def _tick(self) -> None:
        pos = [self.arm.step(self._dt)]
        vel = [self.arm.velocities]
        if self.gripper is not None:
            pos.append(self.gripper.step(self._dt))
            vel.append(self.gripper.velocities)
        self._pub.publish(
            joint_state_to_msg(
                self._names,
                np.concatenate(pos),
                np.concatenate(vel),
                stamp=self.get_clock().now().to_msg(),
            )
        )

    def _on_stats(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        response.success = True
        response.message = json.dumps(dict(self.counts))
        return response


def main() -> None:
    exit_if_help(__doc__, ControlMockConfig)
    main_exit(ControlMockNode)


if __name__ == "__main__":
    main()
