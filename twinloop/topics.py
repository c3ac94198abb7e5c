"""The topic contract of DESIGN.md: names, message layouts and rates, ROS-free.

Nodes import these names so the contract lives in one place. Message *types* are named as
strings (``"sensor_msgs/Image"``); only robot_ws/ imports the actual ROS classes.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ACTION_NAMES", "EPISODE_EVENTS", "TOPICS", "Topic"]

# /twinloop/action and /twinloop/safe_action are sensor_msgs/JointState messages whose ``name``
# lists these components and ``position`` holds the values: metres, radians, and the gripper
# command in [-1, 1] (-1 open, +1 closed). JointState is the standard stamped, named vector type.
ACTION_NAMES: tuple[str, ...] = ("dx", "dy", "dz", "dyaw", "gripper")

# /twinloop/episode carries std_msgs/String with a JSON object {"event": ..., "episode": n, ...}.
EPISODE_EVENTS: tuple[str, ...] = ("start", "success", "failure", "discard", "quit")


@dataclass(frozen=True)
class Topic:
    name: str
    msg_type: str
    sensor: bool  # best-effort sensor-data QoS (True) or reliable command QoS (False)
    doc: str


TOPICS: dict[str, Topic] = {
    t.name: t
    for t in (
        Topic("/camera/camera/color/image_raw", "sensor_msgs/Image", True, "rgb8 camera frames"),
        Topic(
            "/camera/camera/color/camera_info",
            "sensor_msgs/CameraInfo",
            True,
            "K, D of the colour camera",
        ),
        Topic(
            "/camera/camera/aligned_depth_to_color/image_raw",
            "sensor_msgs/Image",
            True,
            "16UC1 depth in mm, aligned to colour",
        ),
        Topic("/joint_states", "sensor_msgs/JointState", True, "arm and finger joints"),
        Topic("/twinloop/ee_pose", "geometry_msgs/PoseStamped", True, "end-effector (TCP) pose"),
        Topic(
            "/twinloop/action", "sensor_msgs/JointState", False, "EE delta + gripper, ACTION_NAMES"
        ),
        Topic(
            "/twinloop/safe_action",
            "sensor_msgs/JointState",
            False,
            "the action after the safety layer",
        ),
        Topic(
            "/twinloop/reward",
            "sensor_msgs/JointState",
            False,
            "names [reward, success]; header stamp = the camera frame's stamp",
        ),
        Topic("/twinloop/episode", "std_msgs/String", False, "JSON episode events"),
        Topic("/twinloop/estop", "std_msgs/Bool", False, "True latches the software e-stop"),
        Topic("/twinloop/deadman", "std_msgs/Bool", False, "teleop deadman, fresh True to move"),
        Topic("/twinloop/safety_status", "std_msgs/String", False, "JSON safety state and counts"),
        Topic("/twinloop/recorder/status", "std_msgs/String", False, "JSON recorder state, drops"),
        Topic(
            "/twinloop/reward/status", "std_msgs/String", False, "JSON reward rates, latency, drops"
        ),
        Topic("/twinloop/sim/state", "std_msgs/String", False, "twin only: JSON privileged state"),
        Topic(
            "/twin/switch_task",
            "std_msgs/String",
            False,
            "twin only: a task name; reset-free switch of the twin's task without a reset",
        ),
        Topic(
            "/twinloop/policy/weights",
            "std_msgs/String",
            False,
            "JSON {version, path}: new policy weights from learner_node (transient local)",
        ),
        Topic(
            "/twinloop/policy/status",
            "std_msgs/String",
            False,
            "JSON policy_node version, rate, jitter, held-still counts",
        ),
        Topic(
            "/twinloop/learner/status",
            "std_msgs/String",
            False,
            "JSON learner_node version, env steps, updates, buffer, assembly counts",
        ),
    )
}
