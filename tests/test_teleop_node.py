"""teleop_node over real DDS: gamepad (/joy), SpaceMouse (/spacenav/*) and keyboard (a pty).

Each test starts the node as its own process on a private ROS_DOMAIN_ID and plays the device
from this process: a GraphProbe publishes sensor_msgs/Joy and geometry_msgs/Twist like joy's
game_controller_node and the spacenav driver do, or writes key bytes (arrow escape sequences
included) into the pseudo-terminal that is the node's stdin. The probe checks /twinloop/action
and /twinloop/episode.
"""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import termios
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 Jazzy wheels (pip install -e .[ros])")

from geometry_msgs.msg import Twist
from sensor_msgs.msg import JointState, Joy
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger
from twinloop_ros.conversions import action_from_msg, stamp_to_ns
from twinloop_ros.node_utils import SENSOR_QOS
from twinloop_ros.probe import GraphProbe, ros_env

from twinloop.graph import Graph, GraphProcesses, NodeSpec, find_executable
from twinloop.topics import ACTION_NAMES

pytestmark = pytest.mark.ros

# 1..50, a quarter turn away from test_ros_graph's 1 + pid % 50 (and below its 51..100).
DOMAIN_ID = 1 + (os.getpid() + 25) % 50
START_TIMEOUT = 60.0  # a loaded 2-core machine takes a few seconds to start a node
SPEC = NodeSpec(name="teleop", package="twinloop_ros", executable="teleop_node")
LB, A, BACK, UP, DOWN, LEFT, RIGHT = 9, 0, 4, 11, 12, 13, 14  # game_controller_node buttons


@pytest.fixture
def probe() -> Iterator[GraphProbe]:
    with GraphProbe.open("teleop_probe", domain_id=DOMAIN_ID) as p:
        yield p


@contextmanager
def teleop_graph(params: dict[str, Any]) -> Iterator[GraphProcesses]:
    graph = Graph(profile="teleop_test", nodes=(SPEC.with_parameters(params),))
    with GraphProcesses(graph, env=ros_env(DOMAIN_ID), output=lambda _n, _l: None) as procs:
        yield procs


class Listener:
    """/twinloop/action and /twinloop/episode as this test sees them."""

    def __init__(self, probe: GraphProbe) -> None:
        self.probe = probe
        self.actions: list[JointState] = probe.collect(JointState, "/twinloop/action")
        self.events: list[String] = probe.collect(String, "/twinloop/episode")

    def wait_ready(self) -> None:
        self.probe.spin_until(lambda: self.actions, START_TIMEOUT, "the first teleop action")

    def payloads(self) -> list[dict[str, Any]]:
        return [json.loads(m.data) for m in self.events]

    def values(self, since: int = 0) -> np.ndarray:
        return np.array([action_from_msg(m) for m in self.actions[since:]]).reshape(-1, 5)


def _pump(probe: GraphProbe, msgs: list[tuple[Any, Any]], seconds: float) -> None:
    """Publish each (publisher, message) at 20 Hz for ``seconds``, like the device drivers."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for pub, msg in msgs:
            pub.publish(msg)
        probe.spin_for(0.05)


def _during(
    probe: GraphProbe, listener: Listener, msgs: list[tuple[Any, Any]], seconds: float = 0.6
) -> np.ndarray:
    """The actions published while ``msgs`` stream, after 0.3 s for them to take effect."""
    _pump(probe, msgs, 0.3)
    start = len(listener.actions)
    _pump(probe, msgs, seconds)
    values = listener.values(start)
    assert len(values) >= 3, f"only {len(values)} actions in {seconds} s"
    return values


def _joy(*pressed: int, **axes: float) -> Joy:
    msg = Joy()
    names = ["lx", "ly", "rx", "ry", "lt", "rt"]
    msg.axes = [float(axes.get(n, 0.0)) for n in names]
    msg.buttons = [int(i in pressed) for i in range(21)]
    return msg


def _expect_all(values: np.ndarray, expected: list[float]) -> None:
    np.testing.assert_allclose(values, np.tile(expected, (len(values), 1)), atol=1e-9)


# ----- gamepad -------------------------------------------------------------------------------
def test_gamepad_moves_only_with_lb_and_publishes_episode_events(probe: GraphProbe) -> None:
    resets: list[float] = []

    def on_reset(_req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        resets.append(time.monotonic())
        res.success, res.message = True, '{"episode": 0}'
        return res

    probe.node.create_service(Trigger, "/test_reset", on_reset)
    listener = Listener(probe)
    deadman: list[Bool] = probe.collect(Bool, "/twinloop/deadman")
    joy = probe.publisher(Joy, "/joy", SENSOR_QOS)
    params = {
        "device": "gamepad",
        "operator": "tester",
        "task": "push_cube",
        "reset_service": "/test_reset",
    }
    with teleop_graph(params) as graph:
        listener.wait_ready()
        # at rest: zero actions at the control rate, named, stamped, frame "teleop"
        start, t0 = len(listener.actions), time.monotonic()
        _pump(probe, [(joy, _joy())], 2.0)
        rate = (len(listener.actions) - start) / (time.monotonic() - t0)
        assert 6.0 <= rate <= 14.0, f"actions at {rate:.1f} Hz, configured 10 Hz"
        msg = listener.actions[-1]
        assert list(msg.name) == list(ACTION_NAMES) and msg.header.frame_id == "teleop"
        assert stamp_to_ns(msg.header.stamp) > 0
        _expect_all(listener.values(start), [0, 0, 0, 0, -1])

        # sticks without LB: nothing moves, A does not close the gripper
        sticks = {"ly": 1.0, "rx": -0.55}
        _expect_all(_during(probe, listener, [(joy, _joy(**sticks))]), [0, 0, 0, 0, -1])
        assert deadman and deadman[-1].data is False  # the safety node will hold teleop
        _pump(probe, [(joy, _joy(A, **sticks))], 0.2)
        _expect_all(_during(probe, listener, [(joy, _joy(**sticks))]), [0, 0, 0, 0, -1])

        # with LB: left stick up = +x at 0.02 m/step, right stick right = -yaw (0.5 * 0.1 rad)
        moving = _during(probe, listener, [(joy, _joy(LB, **sticks))])
        _expect_all(moving, [0.02, 0, 0, -0.05, -1])
        assert deadman[-1].data is True  # LB held: the safety node passes teleop actions
        _pump(probe, [(joy, _joy(LB, A, **sticks))], 0.2)  # A with LB closes the gripper
        _expect_all(_during(probe, listener, [(joy, _joy(LB))]), [0, 0, 0, 0, 1])
        _expect_all(_during(probe, listener, [(joy, _joy(**sticks))]), [0, 0, 0, 0, 1])

        # a bad message is dropped and the node keeps going
        bad = _joy()
        bad.axes = [float("nan")] * 6
        _pump(probe, [(joy, bad)], 0.3)
        _pump(probe, [(joy, _joy())], 1.1)  # past the 1 s log throttle
        short = _joy()
        short.axes = [0.0, 1.0]
        _pump(probe, [(joy, short)], 0.3)
        assert graph.poll() is None

        # episode events: success before start is ignored; start calls the reset service first
        for button in (RIGHT, UP, RIGHT, UP, LEFT, BACK):
            _pump(probe, [(joy, _joy(button))], 0.25)
            _pump(probe, [(joy, _joy())], 0.4)  # start waits for the reset service
        assert graph.wait(timeout=15.0) == 0, "teleop did not exit after quit"
        probe.spin_for(0.3)

    events = listener.payloads()
    assert [(e["event"], e["episode"]) for e in events] == [
        ("start", 0),
        ("success", 0),
        ("start", 1),
        ("discard", 1),
        ("quit", 1),
    ]
    assert all(e["operator"] == "tester" and e["device"] == "gamepad" for e in events)
    assert events[0]["task"] == "push_cube"
    stamps = [e["stamp"] for e in events]
    assert stamps == sorted(stamps) and abs(stamps[-1] - time.time()) < 60
    assert len(resets) == 2  # one reset per start
    logs = graph.logs("teleop")
    assert "'success' ignored: no episode is running" in logs
    assert "dropping /joy" in logs and "NaN" in logs and "sends 2 axes" in logs
    dropped = re.search(r"(\d+) bad messages dropped", logs)
    assert dropped and int(dropped.group(1)) >= 6  # 0.3 s of each bad kind at 20 Hz
    assert "gripper toggle ignored" in logs


def test_a_supervising_gamepad_gates_the_policy_and_sends_no_action(probe: GraphProbe) -> None:
    """publish_actions false + safety_node deadman_sources ["*"] (graph_finetune_robot.yaml):
    the policy's actions reach the arm only while LB is held; the teleop sends no action of
    its own, sticks or not, and its buttons still give the episode events."""
    import math

    from geometry_msgs.msg import PoseStamped
    from twinloop_ros.conversions import action_to_msg, joint_state_to_msg, pose_to_msg
    from twinloop_ros.node_utils import COMMAND_QOS

    from twinloop.graph import load_graph

    safety = load_graph("sim").node("safety").with_parameters({"deadman_sources": ["*"]})
    teleop = SPEC.with_parameters({"device": "gamepad", "publish_actions": False})
    listener = Listener(probe)
    safe: list[JointState] = probe.collect(JointState, "/twinloop/safe_action")
    joy = probe.publisher(Joy, "/joy", SENSOR_QOS)
    joints = probe.publisher(JointState, "/joint_states", SENSOR_QOS)
    pose = probe.publisher(PoseStamped, "/twinloop/ee_pose", SENSOR_QOS)
    actions = probe.publisher(JointState, "/twinloop/action", COMMAND_QOS)
    home = [0.0, -0.3, 0.0, -2.2, 0.0, 1.9, math.pi / 4]

    def policy_step(buttons: tuple[int, ...], seconds: float) -> list[np.ndarray]:
        """The arm's state, the gamepad and one policy action (+1 cm x) at 10 Hz; the safe
        actions that came back."""
        start = len(safe)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            stamp = probe.node.get_clock().now().to_msg()
            joints.publish(
                joint_state_to_msg([f"joint{i}" for i in range(1, 8)], home, stamp=stamp)
            )
            pose.publish(pose_to_msg([0.5, 0.0, 0.3], [0.0, 1.0, 0.0, 0.0], stamp=stamp))
            joy.publish(_joy(*buttons, ly=1.0))  # the stick pushed all the time
            msg = action_to_msg([0.01, 0.0, 0.0, 0.0, 1.0], stamp=stamp)
            msg.header.frame_id = "policy"
            actions.publish(msg)
            probe.spin_for(0.1)
        return [np.array(m.position) for m in safe[start:]]

    graph = Graph(profile="supervise_test", nodes=(teleop, safety))
    lines: list[str] = []
    output = lambda name, line: lines.append(f"[{name}] {line}")  # noqa: E731
    with GraphProcesses(graph, env=ros_env(DOMAIN_ID), output=output) as procs:
        gated = "deadman not held for a 'policy' action"
        deadline = time.monotonic() + START_TIMEOUT
        while not (any(gated in line for line in lines) and joy.get_subscription_count() > 0):
            assert time.monotonic() < deadline, "\n".join(lines[-20:])  # both nodes are up
            policy_step((), 0.2)
        # released: the safety layer passes nothing that moves the arm (the arm holds)
        released = policy_step((), 1.5)
        assert not any(a[:4].any() for a in released), released
        policy_step((LB,), 0.5)
        held = policy_step((LB,), 1.0)
        assert len(held) >= 5, "\n".join(lines[-20:])
        np.testing.assert_allclose(held[-1], [0.01, 0, 0, 0, 1.0])
        policy_step((), 0.5)
        again = policy_step((), 1.0)
        assert not any(a[:4].any() for a in again), again
        _pump(probe, [(joy, _joy(UP))], 0.25)  # start: an episode event, no reset service
        _pump(probe, [(joy, _joy())], 0.5)
        assert procs.poll() is None
        logs = procs.logs("teleop")
    teleop_actions = [m for m in listener.actions if m.header.frame_id == "teleop"]
    assert teleop_actions == [], f"{len(teleop_actions)} teleop actions while supervising"
    assert [e["event"] for e in listener.payloads()] == ["start"]
    assert "supervising with gamepad" in logs and "no actions" in logs


# ----- SpaceMouse ----------------------------------------------------------------------------
def _twist(lin: tuple[float, float, float], ang: tuple[float, float, float]) -> Twist:
    msg = Twist()
    msg.linear.x, msg.linear.y, msg.linear.z = lin
    msg.angular.x, msg.angular.y, msg.angular.z = ang
    return msg


def test_spacenav_twist_mapping_deadman_and_silence(probe: GraphProbe) -> None:
    listener = Listener(probe)
    twist_pub = probe.publisher(Twist, "/spacenav/twist", SENSOR_QOS)
    joy_pub = probe.publisher(Joy, "/spacenav/joy", SENSOR_QOS)
    params = {"device": "spacemouse", "input_timeout_s": 0.5, "idle_publish": False}
    twist = _twist((0.55, 0.0, -1.0), (0.9, 0.9, 1.0))  # roll and pitch are not mapped
    released, held, held_right = Joy(buttons=[]), Joy(buttons=[1]), Joy(buttons=[1, 1])
    with teleop_graph(params) as graph:
        # idle_publish false: silent until the deadman (left button) is held
        probe.spin_until(
            lambda: (
                twist_pub.get_subscription_count() > 0
                and joy_pub.get_subscription_count() > 0
                and probe.node.count_publishers("/twinloop/action") > 0
            ),
            START_TIMEOUT,
            "the teleop node on the graph",
        )
        _pump(probe, [(twist_pub, twist), (joy_pub, released)], 1.5)
        assert listener.actions == [], "actions without the deadman"
        deadline = time.monotonic() + 10.0
        while not listener.actions:
            assert time.monotonic() < deadline, "no action with the deadman held"
            _pump(probe, [(twist_pub, twist), (joy_pub, held)], 0.1)
        # (0.55 - 0.1) / 0.9 = 0.5 of 0.02 m forward; full down limits the norm to 0.02 m
        expected = np.array([0.5, 0.0, -1.0]) / np.linalg.norm([0.5, 0.0, -1.0]) * 0.02
        moving = _during(probe, listener, [(twist_pub, twist), (joy_pub, held)])
        _expect_all(moving, [*expected, 0.1, -1])
        _pump(probe, [(twist_pub, twist), (joy_pub, held_right)], 0.2)  # right button: gripper
        moving = _during(probe, listener, [(twist_pub, twist), (joy_pub, held)])
        _expect_all(moving, [*expected, 0.1, 1])

        # the driver goes silent with the puck deflected and the button held: motion stops
        start = len(listener.actions)
        _pump(probe, [(joy_pub, held)], 1.5)
        stopped = listener.values(start)
        # about 0.5 s (input_timeout_s) more motion, then one zero action (a release), then none
        assert 2 <= len(stopped) <= 10, stopped
        assert stopped[:-1, :4].any(axis=1).all() and not stopped[-1, :4].any(), stopped

        # releasing the deadman: one zero action, then silence
        _pump(probe, [(twist_pub, twist), (joy_pub, held)], 0.5)
        _pump(probe, [(twist_pub, twist), (joy_pub, released)], 0.3)
        start = len(listener.actions)
        _pump(probe, [(twist_pub, twist), (joy_pub, released)], 0.8)
        assert len(listener.actions) == start, "actions after the deadman was released"
        _expect_all(listener.values(start - 1), [0, 0, 0, 0, 1])

        bad = _twist((float("nan"), 0.0, 0.0), (0.0, 0.0, 0.0))
        _pump(probe, [(twist_pub, bad)], 0.3)
        assert graph.poll() is None
        logs = graph.logs("teleop")
    assert "dropping /spacenav/twist" in logs and "NaN" in logs
    assert "no spacemouse input" in logs
    assert "no episode events" in logs  # no event buttons and no terminal


FAKE_PYSPACEMOUSE = """
import collections, time
State = collections.namedtuple("State", "t x y z roll pitch yaw buttons")
def open():
    return True
def read():  # puck pushed right (x), left button held
    return State(time.time(), 0.55, 0.0, 0.0, 0.0, 0.0, 0.0, [1, 0])
def close():
    pass
"""


def test_pyspacemouse_source_reads_the_device_directly(
    probe: GraphProbe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pyspacemouse.py").write_text(FAKE_PYSPACEMOUSE)  # stands in for the HID device
    paths = [str(tmp_path), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    listener = Listener(probe)
    with teleop_graph({"device": "spacemouse", "spacemouse_source": "pyspacemouse"}) as graph:
        listener.wait_ready()
        probe.spin_for(0.5)
        start = len(listener.actions)
        probe.spin_for(0.5)
        # pyspacemouse x right -> spacenav y left: -(0.55 - 0.1) / 0.9 of 0.02 m
        _expect_all(listener.values(start), [0, -0.01, 0, 0, -1])
        assert graph.poll() is None


# ----- keyboard under a pseudo-terminal --------------------------------------------------------
@contextmanager
def keyboard_node(tmp_path: Path, *params: str) -> Iterator[tuple[subprocess.Popen, int, int]]:
    master, slave = pty.openpty()
    exe = find_executable(SPEC)
    args = [str(exe), "--ros-args", "-r", "__node:=teleop"]
    for p in params:
        args += ["-p", p]
    env = {**os.environ, **ros_env(DOMAIN_ID), "PYTHONUNBUFFERED": "1"}
    with (tmp_path / "teleop.log").open("wb") as log:
        proc = subprocess.Popen(
            args, stdin=slave, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        yield proc, master, slave
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=10.0)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        os.close(master)
        os.close(slave)


def test_keyboard_keys_in_a_terminal_drive_and_label_episodes(
    probe: GraphProbe, tmp_path: Path
) -> None:
    listener = Listener(probe)
    with keyboard_node(tmp_path, "operator:=kb", "keyboard.hold_s:=0.3") as (proc, master, slave):
        listener.wait_ready()
        _expect_all(listener.values(), [0, 0, 0, 0, -1])

        def type_keys(data: bytes, seconds: float, hz: float = 30.0) -> None:
            """Key auto-repeat: ``data`` written ``hz`` times a second."""
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                os.write(master, data)
                probe.spin_for(1.0 / hz)

        type_keys(b"w", 0.3)
        start = len(listener.actions)
        type_keys(b"w", 0.6)
        _expect_all(listener.values(start), [0.02, 0, 0, 0, -1])  # held w: +x
        type_keys(b"q", 0.5)  # past the hold window of w
        start = len(listener.actions)
        type_keys(b"q", 0.6)
        _expect_all(listener.values(start), [0, 0, 0, 0.1, -1])  # held q: +yaw
        probe.spin_for(0.6)  # released: stops within the hold window (0.3 s) and a step
        start = len(listener.actions)
        probe.spin_for(0.6)
        _expect_all(listener.values(start), [0, 0, 0, 0, -1])

        os.write(master, b" ")  # space: the gripper closes and stays closed
        probe.spin_for(0.4)
        start = len(listener.actions)
        probe.spin_for(0.5)
        _expect_all(listener.values(start), [0, 0, 0, 0, 1])

        # right before start is ignored; up/Enter start, right success, down failure,
        # left discard, and a lone Esc quits
        for key in (b"\x1b[C", b"\x1b[A", b"\x1b[C", b"\r", b"\x1b[B", b"\x1b[A", b"\x1b[D"):
            os.write(master, key)
            probe.spin_for(0.25)
        os.write(master, b"\x1b")
        deadline = time.monotonic() + 15.0
        while proc.poll() is None and time.monotonic() < deadline:
            probe.spin_for(0.1)
        probe.spin_for(0.3)
        assert proc.returncode == 0, (tmp_path / "teleop.log").read_text()
        lflag = termios.tcgetattr(slave)[3]
        assert lflag & termios.ICANON and lflag & termios.ECHO, "terminal mode not restored"

    events = listener.payloads()
    assert [(e["event"], e["episode"]) for e in events] == [
        ("start", 0),
        ("success", 0),
        ("start", 1),
        ("failure", 1),
        ("start", 2),
        ("discard", 2),
        ("quit", 2),
    ]
    assert {e["operator"] for e in events} == {"kb"} and {e["device"] for e in events} == {
        "keyboard"
    }
    log = (tmp_path / "teleop.log").read_text()
    assert "'success' ignored: no episode is running" in log
    assert "keys: w/s" in log  # the key map is shown at start


@pytest.mark.parametrize(
    ("params", "match"),
    [
        (["device:=keyboard"], "stdin is not a terminal"),
        (["device:=joystick"], "unknown device 'joystick'. Available"),
        (["device:=gamepad", "gamepad.axes:=[0, 1]"], "axes must be 4 indices"),
        (["device:=gamepad", "max_translation:=0.5"], "max_translation must be in"),
        (["publish_actions:=false"], "needs a deadman button: use device spacemouse or gamepad"),
    ],
)
def test_bad_start_exits_2_with_the_reason(params: list[str], match: str) -> None:
    args = [str(find_executable(SPEC)), "--ros-args"]
    for p in params:
        args += ["-p", p]
    env = {**os.environ, **ros_env(DOMAIN_ID)}
    result = subprocess.run(
        args, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 2
    assert match in result.stdout + result.stderr
