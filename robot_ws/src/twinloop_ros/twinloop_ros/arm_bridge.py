"""arm_bridge: /twinloop/safe_action -> the arm driver's own interface, picked by a profile.

A thin adapter over :class:`twinloop.arm_bridge.ArmBridge`. ``profile`` names an entry of
``config/arm_profiles.yaml`` (or of ``profiles_file``); every key of the profile is also a
parameter of this node (``-p mjcf_path:=/path/arm.xml`` overrides one key):

- ``ros2_control``: each safe action becomes joint position targets (IK on the arm's kinematics,
  warm-started, limited to ``max_joint_step``) published as std_msgs/Float64MultiArray on
  ``command_topic`` (a forward_position_controller's ``~/commands``). It needs fresh joint states
  (``joint_state_timeout_s``); without them the action is dropped and counted.
- ``moveit_servo``: each safe action becomes a geometry_msgs/TwistStamped on ``command_topic``
  (linear = delta * control_hz, angular.z = dyaw * control_hz, frame ``twist_frame``).
- the gripper goes to ``gripper_topic`` as Float64MultiArray, JointTrajectory, or a
  control_msgs/GripperCommand action goal (when control_msgs is installed; otherwise logged as
  unsupported and counted), whenever the command changes.
- ``/twinloop/ee_pose`` (PoseStamped in ``base_frame_id``, the joint state's stamp) is computed
  from ``joint_states_topic`` by forward kinematics when ``publish_ee_pose`` is true.

Bad input (NaN joint angles, missing joint names, malformed actions) is logged, throttled, and
counted; the node keeps running. ``~/stats`` (std_srvs/Trigger) answers the counters as JSON.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import PoseStamped, TwistStamped
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from twinloop.arm_bridge import (
    ArmBridge,
    ArmProfile,
    check_action,
    load_profiles,
    resolve_profile,
)

from .conversions import (
    action_from_msg,
    float64_array_to_msg,
    pose_to_msg,
    stamp_to_ns,
    twist_to_msg,
)
from .errors import RosAdapterError
from .node_utils import (
    COMMAND_QOS,
    declare_params,
    exit_if_help,
    main_exit,
    params_from_dataclass,
    qos_for,
)

__all__ = ["ArmBridgeNode", "ArmBridgeNodeConfig", "main"]

SAFE_ACTION_TOPIC = "/twinloop/safe_action"
EE_POSE_TOPIC = "/twinloop/ee_pose"


@dataclass(frozen=True)
class ArmBridgeNodeConfig:
    """The node's own parameters; the profile's keys are declared as parameters too."""

    profile: str = "ros2_control"  # a profile of arm_profiles.yaml
    profiles_file: str = ""  # a profiles YAML file; "" = the package's config/arm_profiles.yaml
    control_hz: float = 10.0  # rate of /twinloop/safe_action: one action spans 1/control_hz s
    joint_state_timeout_s: float = 0.5  # ros2_control: older joint states do not command the arm
    ee_pose_max_hz: float = 100.0  # /twinloop/ee_pose at most this often (drivers publish at 1 kHz)

    def __post_init__(self) -> None:
        if not 0.0 < self.control_hz <= 1000.0:
            msg = f"control_hz must be in (0, 1000], got {self.control_hz}"
            raise RosAdapterError(msg)
        if not self.joint_state_timeout_s > 0.0:
            msg = f"joint_state_timeout_s must be positive, got {self.joint_state_timeout_s}"
            raise RosAdapterError(msg)
        if not self.ee_pose_max_hz > 0.0:
            msg = f"ee_pose_max_hz must be positive, got {self.ee_pose_max_hz}"
            raise RosAdapterError(msg)
        if not self.profile:
            msg = "profile must name an arm profile"
            raise RosAdapterError(msg)


class ArmBridgeNode(Node):
    def __init__(self) -> None:
        super().__init__("arm_bridge")
        self.cfg = cfg = params_from_dataclass(self, ArmBridgeNodeConfig)
        path = cfg.profiles_file or None
        shipped = resolve_profile(cfg.profile, path)  # unknown profile: fails the start
        values = declare_params(self, shipped.parameters())
        self.profile: ArmProfile = resolve_profile(cfg.profile, path, overrides=values)
        self.bridge = ArmBridge(self.profile, control_hz=cfg.control_hz)
        self.counts: Counter[str] = Counter()
        self._q: np.ndarray | None = None
        self._q_ns = 0
        self._last_pose_ns = 0
        self._pose_period_ns = int(1e9 / cfg.ee_pose_max_hz)

        p = self.profile
        if p.interface == "ros2_control":
            self._command_pub = self.create_publisher(
                Float64MultiArray, p.command_topic, COMMAND_QOS
            )
        else:
            self._command_pub = self.create_publisher(TwistStamped, p.command_topic, COMMAND_QOS)
        self._pose_pub = (
            self.create_publisher(PoseStamped, EE_POSE_TOPIC, qos_for(EE_POSE_TOPIC))
            if p.publish_ee_pose
            else None
        )
        self._gripper = _GripperSender(self, p)
        self.create_subscription(
            JointState, p.joint_states_topic, self._on_joint_state, qos_for("/joint_states")
        )
        self.create_subscription(
            JointState, SAFE_ACTION_TOPIC, self._on_safe_action, qos_for(SAFE_ACTION_TOPIC)
        )
        self.create_service(Trigger, "~/stats", self._on_stats)
        self.get_logger().info(
            f"arm bridge ready: profile {p.name} ({p.interface} on {p.command_topic}), joint states "
            f"from {p.joint_states_topic}, gripper {p.gripper_interface}"
            + (f" on {p.gripper_topic}" if p.gripper_interface != "none" else "")
            + (f", {EE_POSE_TOPIC} by FK in {p.base_frame_id}" if p.publish_ee_pose else "")
        )

    # ----- inputs ----------------------------------------------------------------------------
    def _on_joint_state(self, msg: JointState) -> None:
        self.counts["joint_states"] += 1
        try:
            q = self.bridge.joints_from_state(msg.name, msg.position)
        except ValueError as err:
            self.counts["dropped_joint_states"] += 1
            self.get_logger().error(f"dropping joint_states: {err}", throttle_duration_sec=1.0)
            return
        now_ns = self.get_clock().now().nanoseconds
        self._q, self._q_ns = q, now_ns
        if self._pose_pub is None or now_ns - self._last_pose_ns < self._pose_period_ns:
            return
        self._last_pose_ns = now_ns
        pos, quat = self.bridge.ee_pose(q)
        stamp = msg.header.stamp if stamp_to_ns(msg.header.stamp) > 0 else None
        pose = pose_to_msg(
            pos,
            quat,
            stamp=stamp or self.get_clock().now().to_msg(),
            frame_id=self.profile.base_frame_id,
        )
        self._pose_pub.publish(pose)
        self.counts["ee_poses"] += 1

    def _on_safe_action(self, msg: JointState) -> None:
        self.counts["actions"] += 1
        try:
            action = check_action(action_from_msg(msg))
        except ValueError as err:
            self._drop("dropped_actions", f"dropping safe_action: {err}")
            return
        if self.profile.interface == "moveit_servo":
            linear, angular = self.bridge.twist(action)
            self._command_pub.publish(
                twist_to_msg(
                    linear,
                    angular,
                    stamp=self.get_clock().now().to_msg(),
                    frame_id=self.profile.twist_frame,
                )
            )
            self.counts["commands"] += 1
        elif not self._joint_command(action):
            return
        value = self.bridge.gripper(float(action[4]))
        if value is not None:
            self._gripper.send(value)

    def _joint_command(self, action: np.ndarray) -> bool:
        age_s = (self.get_clock().now().nanoseconds - self._q_ns) / 1e9
        if self._q is None or age_s > self.cfg.joint_state_timeout_s:
            what = "none yet" if self._q is None else f"the last is {age_s:.2f} s old"
            self._drop(
                "dropped_stale",
                f"dropping safe_action: no fresh {self.profile.joint_states_topic} ({what})",
            )
            self.bridge.reset()
            return False
        try:
            command = self.bridge.joint_command(action, self._q)
        except ValueError as err:
            self._drop("dropped_actions", f"dropping safe_action: {err}")
            return False
        self._command_pub.publish(float64_array_to_msg(command.positions))
        self.counts["commands"] += 1
        if command.clipped:
            self.counts["clipped_commands"] += 1
            self.get_logger().warning(
                f"joint step cut to max_joint_step={self.profile.max_joint_step} rad",
                throttle_duration_sec=5.0,
            )
        if command.ik_pos_error > 0.01:
            self.get_logger().warning(
                f"IK misses the target by {command.ik_pos_error * 1000:.0f} mm "
                "(out of reach or at a joint limit)",
                throttle_duration_sec=5.0,
            )
        return True

    def _drop(self, counter: str, message: str) -> None:
        self.counts[counter] += 1
        self.get_logger().error(message, throttle_duration_sec=1.0)

    def _on_stats(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        response.success = True
        response.message = json.dumps(
            {"profile": self.profile.name, "interface": self.profile.interface, **self.counts}
        )
        return response


class _GripperSender:
    """Sends gripper values the way the profile says; counts what it could not send."""

    def __init__(self, node: ArmBridgeNode, profile: ArmProfile) -> None:
        self._node = node
        self._profile = profile
        self._pub: Any = None
        self._action: Any = None
        self._goal_type: Any = None
        kind = profile.gripper_interface
        if kind == "float64_multi_array":
            self._pub = node.create_publisher(Float64MultiArray, profile.gripper_topic, COMMAND_QOS)
        elif kind == "joint_trajectory":
            self._pub = node.create_publisher(JointTrajectory, profile.gripper_topic, COMMAND_QOS)
        elif kind == "gripper_command_action":
            self._make_action_client()

    def _make_action_client(self) -> None:
        try:  # control_msgs comes with a ROS install, not with the PyPI wheels CI uses
            from control_msgs.action import GripperCommand
            from rclpy.action import ActionClient
        except ImportError:
            self._node.get_logger().warning(
                f"gripper: {self._profile.gripper_topic} is a control_msgs/GripperCommand action "
                "and control_msgs is not installed here: gripper commands are not sent"
            )
            return
        self._goal_type = GripperCommand
        self._action = ActionClient(self._node, GripperCommand, self._profile.gripper_topic)

    def send(self, value: float) -> None:
        p, node = self._profile, self._node
        kind = p.gripper_interface
        if kind == "none":
            return
        if kind == "float64_multi_array":
            self._pub.publish(float64_array_to_msg([value] * len(p.gripper_joints)))
        elif kind == "joint_trajectory":
            secs = int(p.gripper_time_s)
            point = JointTrajectoryPoint(
                positions=[value] * len(p.gripper_joints),
                time_from_start=Duration(sec=secs, nanosec=int((p.gripper_time_s - secs) * 1e9)),
            )
            self._pub.publish(JointTrajectory(joint_names=list(p.gripper_joints), points=[point]))
        elif self._action is None:
            node.counts["gripper_unsupported"] += 1
            return
        elif not self._action.server_is_ready():
            node._drop("gripper_unavailable", f"gripper action {p.gripper_topic} is not available")
            return
        else:
            goal = self._goal_type.Goal()
            goal.command.position = float(value)
            goal.command.max_effort = float(p.gripper_max_effort)
            self._action.send_goal_async(goal)
        node.counts["gripper_commands"] += 1


def _profiles_help() -> str:
    try:
        profiles = load_profiles()
    except ValueError as err:
        return f"arm profiles: {err}"
    lines = ["profiles (config/arm_profiles.yaml; each key is also a parameter):"]
    lines += [f"  {n}: {p.interface} on {p.command_topic}" for n, p in profiles.items()]
    lines.append("profile keys: " + ", ".join(sorted(next(iter(profiles.values())).parameters())))
    return "\n".join(lines)


def main() -> None:
    exit_if_help(__doc__, ArmBridgeNodeConfig, extra=_profiles_help())
    main_exit(ArmBridgeNode)


if __name__ == "__main__":
    main()
