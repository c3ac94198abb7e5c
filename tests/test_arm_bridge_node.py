"""arm_bridge and ros2_control_mock over real DDS: separate processes, probed from this process.

Three graphs: bridge + mock (a forward_position_controller stand-in), bridge in the moveit_servo
profile (+ one without joint states), and bridge + twin (the bridge's FK of the twin's joint
states against the twin's own end-effector pose). A unique ROS_DOMAIN_ID keeps other graphs out.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 Jazzy wheels (pip install -e .[ros])")

from geometry_msgs.msg import PoseStamped, TwistStamped
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger
from twinloop_ros.conversions import (
    action_to_msg,
    float64_array_to_msg,
    stamp_to_ns,
    twist_from_msg,
)
from twinloop_ros.node_utils import COMMAND_QOS, SENSOR_QOS
from twinloop_ros.probe import GraphProbe, ros_env

from twinloop.graph import Graph, GraphProcesses, NodeSpec

pytestmark = pytest.mark.ros
log = logging.getLogger(__name__)

# Away from test_ros_graph's 1..100 pattern (pid % 50) by an odd offset; below 102 for DDS ports.
DOMAIN_ID = 1 + (os.getpid() + 37) % 100
SAFE_ACTION = "/twinloop/safe_action"
ARM = [f"joint{i}" for i in range(1, 8)]


def _node(
    name: str, exe: str, params: dict[str, Any], remap: dict[str, str] | None = None
) -> NodeSpec:
    return NodeSpec(name, "twinloop_ros", exe, parameters=params, remappings=remap or {})


@pytest.fixture
def ros_domain() -> Iterator[int]:
    with pytest.MonkeyPatch.context() as mp:
        for key, value in ros_env(DOMAIN_ID).items():
            mp.setenv(key, value)
        yield DOMAIN_ID


def _run(nodes: tuple[NodeSpec, ...]) -> GraphProcesses:
    lines: dict[str, list[str]] = {}
    procs = GraphProcesses(
        Graph("arm_bridge_test", nodes),
        env=ros_env(DOMAIN_ID),
        output=lambda name, line: lines.setdefault(name, []).append(line),
    )
    procs.lines = lines  # type: ignore[attr-defined]
    return procs


def _publish(
    probe: GraphProbe, msg_type: Any, topic: str, msgs: list[Any], readers: int, qos: Any
) -> None:
    """Publish ``msgs`` once ``readers`` subscriptions (this probe's own included) are matched."""
    pub = probe.node.create_publisher(msg_type, topic, qos)
    try:
        probe.spin_until(
            lambda: pub.get_subscription_count() >= readers, 20.0, f"readers of {topic}"
        )
        probe.spin_for(0.2)
        for msg in msgs:
            pub.publish(msg)
            probe.spin_for(0.05)
    finally:
        probe.node.destroy_publisher(pub)


def _stats(probe: GraphProbe, node: str) -> dict[str, Any]:
    answer = probe.call(Trigger, f"/{node}/stats", Trigger.Request(), timeout=20.0)
    assert answer.success
    return json.loads(answer.message)


def _assert_clean_stop(graph: GraphProcesses) -> None:
    pids = list(graph.pids.values())
    codes = graph.stop()
    assert set(codes.values()) == {0}, f"{codes}\n" + "\n".join(graph.logs(n) for n in codes)
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


# ----- bridge + ros2_control mock --------------------------------------------------------------
@pytest.fixture(scope="module")
def control_graph() -> Iterator[GraphProcesses]:
    with _run(
        (
            _node("mock", "ros2_control_mock", {"time_constant_s": 0.05, "rate_hz": 50.0}),
            _node("arm_bridge", "arm_bridge", {"profile": "ros2_control"}),
        )
    ) as procs:
        yield procs


def test_safe_actions_move_the_mock_arm_the_commanded_way(
    control_graph: GraphProcesses, ros_domain: int
) -> None:
    with GraphProbe.open("arm_probe", domain_id=ros_domain) as probe:
        probe.spin_until(lambda: probe.poses and probe.joint_states, 60.0, "FK poses")
        assert probe.poses[-1].header.frame_id == "base_link"
        start = probe.poses[-1].pose.position
        q0 = np.array(probe.joint_states[-1].position[:7])
        probe.publish_actions([0.02, 0.0, 0.0, 0.0, -1.0], 5, topic=SAFE_ACTION, settle=0.6)
        end = probe.poses[-1].pose.position
        js = probe.joint_states[-1]
        log.info("ee moved %+.4f m in x for +0.10 m commanded", end.x - start.x)
        assert end.x - start.x == pytest.approx(0.10, abs=0.01)
        assert abs(end.y - start.y) < 0.005 and abs(end.z - start.z) < 0.005
        assert list(js.name[:7]) == ARM
        assert np.linalg.norm(np.array(js.position[:7]) - q0) > 0.05
        assert js.position[7] == pytest.approx(0.04, abs=1e-3)  # open, as commanded

        probe.publish_actions([0.0, 0.0, 0.0, 0.0, 1.0], 2, topic=SAFE_ACTION, settle=0.5)
        assert probe.joint_states[-1].position[7] == pytest.approx(0.0, abs=1e-3)  # closed
        stats = _stats(probe, "arm_bridge")
        assert stats["commands"] >= 7 and stats["gripper_commands"] == 2
        assert stats.get("dropped_actions", 0) == 0 and stats.get("dropped_stale", 0) == 0


def test_bad_joint_states_and_commands_are_logged_counted_and_ignored(
    control_graph: GraphProcesses, ros_domain: int
) -> None:
    nan_joints = JointState(name=ARM, position=[0.0, 0.0, float("nan"), 0.0, 0.0, 0.0, 0.0])
    wrong_names = JointState(name=["shoulder_pan_joint", "elbow_joint"], position=[0.0, 0.0])
    with GraphProbe.open("bad_input_probe", domain_id=ros_domain) as probe:
        probe.spin_until(lambda: probe.poses, 60.0, "FK poses")
        before = _stats(probe, "arm_bridge")
        # readers of /joint_states: this probe and the bridge. The log is throttled (1 s per
        # call site): the second kind of bad message comes after that, so both are logged.
        _publish(probe, JointState, "/joint_states", [nan_joints] * 3, 2, SENSOR_QOS)
        probe.spin_for(1.2)
        _publish(probe, JointState, "/joint_states", [wrong_names] * 3, 2, SENSOR_QOS)
        probe.publish_actions(action_to_msg([float("nan"), 0, 0, 0, 0]), 2, topic=SAFE_ACTION)
        bad_command = float64_array_to_msg([1.0, 2.0])  # 2 values for 7 joints
        topic = "/forward_position_controller/commands"
        _publish(probe, Float64MultiArray, topic, [bad_command], 1, COMMAND_QOS)
        poses = len(probe.poses)
        probe.spin_for(1.0)
        after = _stats(probe, "arm_bridge")
        mock = _stats(probe, "mock")
    dropped = after.get("dropped_joint_states", 0) - before.get("dropped_joint_states", 0)
    assert dropped == 6, after
    assert after["dropped_actions"] - before.get("dropped_actions", 0) == 2
    assert mock["dropped_commands"] == 1
    assert len(probe.poses) - poses >= 10, "the bridge stopped publishing poses"
    assert control_graph.running() == ["mock", "arm_bridge"]
    lines = "\n".join(control_graph.lines["arm_bridge"])  # type: ignore[attr-defined]
    assert "dropping joint_states: joint state has NaN or inf for ['joint3']" in lines
    assert "dropping joint_states: joint state lacks the arm joints ['joint1'" in lines
    assert "dropping safe_action: action has NaN" in lines
    assert "command has 2 values for 7 joints" in "\n".join(control_graph.lines["mock"])  # type: ignore[attr-defined]


def test_control_graph_stops_cleanly(control_graph: GraphProcesses) -> None:
    _assert_clean_stop(control_graph)


# ----- MoveIt Servo profile --------------------------------------------------------------------
def test_moveit_servo_profile_publishes_twists(ros_domain: int) -> None:
    servo = _node(
        "servo_bridge", "arm_bridge", {"profile": "moveit_servo", "publish_ee_pose": False}
    )
    lonely = _node(  # ros2_control without any joint states: it must not command the arm
        "lonely_bridge",
        "arm_bridge",
        {"profile": "ros2_control", "joint_states_topic": "/nothing", "command_topic": "/lonely"},
    )
    franka = _node(  # a GripperCommand-action gripper, on a machine without control_msgs
        "franka_bridge",
        "arm_bridge",
        {"profile": "franka_ros2", "command_topic": "/franka_twists", "publish_ee_pose": False},
    )
    twists: list[TwistStamped] = []
    franka_twists: list[TwistStamped] = []
    commands: list[Float64MultiArray] = []
    with (
        _run((servo, lonely, franka)) as graph,
        GraphProbe.open("servo_probe", domain_id=ros_domain) as probe,
    ):
        probe.node.create_subscription(
            TwistStamped, "/servo_node/delta_twist_cmds", twists.append, COMMAND_QOS
        )
        probe.node.create_subscription(
            TwistStamped, "/franka_twists", franka_twists.append, COMMAND_QOS
        )
        probe.node.create_subscription(Float64MultiArray, "/lonely", commands.append, COMMAND_QOS)
        for topic in ("/servo_node/delta_twist_cmds", "/lonely", "/franka_twists"):
            probe.spin_until(lambda t=topic: probe.node.count_publishers(t), 60.0, topic)
        action = action_to_msg([0.01, -0.02, 0.005, 0.05, -1.0])
        _publish(probe, JointState, SAFE_ACTION, [action] * 3, 3, COMMAND_QOS)  # all 3 bridges
        probe.spin_for(0.5)
        assert len(twists) == 3, twists
        t = twists[-1]
        assert t.header.frame_id == "base_link" and stamp_to_ns(t.header.stamp) > 0
        linear, angular = twist_from_msg(t)
        np.testing.assert_allclose(linear, [0.1, -0.2, 0.05])  # delta * control_hz (10)
        np.testing.assert_allclose(angular, [0.0, 0.0, 0.5])
        assert commands == []
        stats = _stats(probe, "lonely_bridge")
        assert stats["dropped_stale"] == 3 and stats.get("commands", 0) == 0
        assert not probe.poses  # publish_ee_pose: false, and the lonely one has no joints
        lines = "\n".join(graph.lines["lonely_bridge"])  # type: ignore[attr-defined]
        assert "no fresh /nothing (none yet)" in lines

        assert len(franka_twists) == 3 and franka_twists[-1].header.frame_id == "fr3_link0"
        stats = _stats(probe, "franka_bridge")
        lines = "\n".join(graph.lines["franka_bridge"])  # type: ignore[attr-defined]
        if importlib.util.find_spec("control_msgs") is None:  # the PyPI wheels: no GripperCommand
            assert stats["gripper_unsupported"] == 1  # sent once: the command did not change
            assert "control_msgs is not installed here: gripper commands are not sent" in lines
        else:  # a ROS install, but no gripper server in this graph
            assert stats["gripper_unavailable"] == 1
            assert "gripper action /fr3_gripper/gripper_action is not available" in lines
        _assert_clean_stop(graph)


# ----- against the twin ------------------------------------------------------------------------
def test_bridge_fk_of_the_twins_joint_states_matches_the_twins_ee_pose(ros_domain: int) -> None:
    twin = _node(
        "twin",
        "twin_node",
        {"image_width": 64, "image_height": 48, "camera_fps": 2.0, "control_hz": 10.0},
    )
    bridge = _node(
        "arm_bridge",
        "arm_bridge",
        {
            "profile": "ros2_control",
            "command_topic": "/bridge/commands",
            "gripper_interface": "none",
        },
        remap={"/twinloop/ee_pose": "/bridge/ee_pose"},
    )
    fk: list[PoseStamped] = []
    with (
        _run((twin, bridge)) as graph,
        GraphProbe.open("twin_probe", domain_id=ros_domain) as probe,
    ):
        probe.node.create_subscription(PoseStamped, "/bridge/ee_pose", fk.append, SENSOR_QOS)
        probe.spin_until(lambda: len(fk) >= 3 and probe.poses, 90.0, "poses from twin and bridge")
        # the twin moves (it consumes the safe actions itself); the bridge only watches
        probe.publish_actions([-0.02, 0.01, -0.01, 0.1, 0.0], 8, topic=SAFE_ACTION, settle=0.5)
        twin_poses = {stamp_to_ns(p.header.stamp): p for p in probe.poses}
        pairs = [
            (twin_poses[stamp_to_ns(p.header.stamp)], p)
            for p in fk
            if stamp_to_ns(p.header.stamp) in twin_poses
        ]
        _assert_clean_stop(graph)
    assert len(pairs) >= 10, f"{len(pairs)} poses with matching stamps"
    pos_err, rot_err = [], []
    for a, b in pairs:
        pa, pb = a.pose.position, b.pose.position
        pos_err.append(np.linalg.norm([pa.x - pb.x, pa.y - pb.y, pa.z - pb.z]))
        qa, qb = a.pose.orientation, b.pose.orientation
        dot = abs(qa.w * qb.w + qa.x * qb.x + qa.y * qb.y + qa.z * qb.z)
        rot_err.append(2 * np.arccos(min(1.0, dot)))
    moved = np.linalg.norm(
        [
            pairs[-1][0].pose.position.x - pairs[0][0].pose.position.x,
            pairs[-1][0].pose.position.y - pairs[0][0].pose.position.y,
        ]
    )
    log.info(
        "FK vs twin over %d poses: max %.2f mm, %.4f rad (hand moved %.3f m)",
        len(pairs),
        1000 * max(pos_err),
        max(rot_err),
        moved,
    )
    assert moved > 0.05, "the twin did not move: the comparison would be trivial"
    assert max(pos_err) < 0.003 and max(rot_err) < 0.01
    assert all(b.header.frame_id == "base_link" for _, b in pairs)


# ----- start-up errors and --help --------------------------------------------------------------
@pytest.mark.parametrize(
    ("exe", "params", "message"),
    [
        ("arm_bridge", ["profile:=kuka"], "unknown arm profile 'kuka'. Available: ["),
        ("arm_bridge", ["profile:=ur_robot_driver"], "'ur_robot_driver': mjcf_path is empty"),
        ("arm_bridge", ["max_joint_step:=-1.0"], "'ros2_control': max_joint_step must be in (0"),
        ("ros2_control_mock", ["initial_positions:=[0.0]"], "initial_positions has 1 values"),
    ],
)
def test_bad_parameters_fail_at_start(exe: str, params: list[str], message: str) -> None:
    args = [str(Path(sysconfig.get_path("scripts")) / exe), "--ros-args"]
    for p in params:
        args += ["-p", p]
    out = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **ros_env(DOMAIN_ID)},
        check=False,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in out.stdout + out.stderr


@pytest.mark.parametrize(
    ("exe", "text"), [("arm_bridge", "xarm_ros2"), ("ros2_control_mock", "time_constant_s")]
)
def test_help(exe: str, text: str) -> None:
    out = subprocess.run(
        [str(Path(sysconfig.get_path("scripts")) / exe), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert text in out.stdout and "--ros-args" in out.stdout
