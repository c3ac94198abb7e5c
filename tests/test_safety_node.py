"""safety_node over real DDS: the node runs as its own process, this process plays the rest.

The test process is the policy/teleop (publishes /twinloop/action), the arm (publishes
/joint_states and /twinloop/ee_pose at 20 Hz), the e-stop button and the deadman, and reads
/twinloop/safe_action and /twinloop/safety_status. One node for the module, on its own
ROS_DOMAIN_ID; each test leaves the e-stop released and reset.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 Jazzy wheels (pip install -e .[ros])")

from geometry_msgs.msg import PoseStamped
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger
from twinloop_ros.conversions import (
    action_to_msg,
    joint_state_to_msg,
    pose_to_msg,
    stamp_from_ns,
    stamp_to_ns,
)
from twinloop_ros.node_utils import COMMAND_QOS, SENSOR_QOS
from twinloop_ros.probe import GraphProbe, ros_env

from twinloop.graph import GraphProcesses, load_graph
from twinloop.safety import PANDA_UPPER

pytestmark = pytest.mark.ros

# Away from test_ros_graph's 1..100 pattern where possible; below 102 (DDS ports).
DOMAIN_ID = 1 + (os.getpid() + 37) % 100
WATCHDOG_MS = 300.0
HOME_Q = [0.0, -0.3, 0.0, -2.2, 0.0, 1.9, math.pi / 4]
JOINTS = [f"joint{i}" for i in range(1, 8)]


@dataclass
class Cell:
    """The test's stand-in for the arm, the e-stop button and the deadman."""

    probe: GraphProbe
    q: list[float] = field(default_factory=lambda: list(HOME_Q))
    ee: list[float] = field(default_factory=lambda: [0.5, 0.0, 0.3])
    deadman: bool | None = None  # None: not published
    safe: list[JointState] = field(default_factory=list)
    safe_times: list[float] = field(default_factory=list)
    status: list[dict] = field(default_factory=list)
    status_times: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        node = self.probe.node
        self._joints = node.create_publisher(JointState, "/joint_states", SENSOR_QOS)
        self._pose = node.create_publisher(PoseStamped, "/twinloop/ee_pose", SENSOR_QOS)
        self._deadman = node.create_publisher(Bool, "/twinloop/deadman", COMMAND_QOS)
        self._estop = node.create_publisher(Bool, "/twinloop/estop", COMMAND_QOS)
        self._actions = node.create_publisher(JointState, "/twinloop/action", COMMAND_QOS)
        node.create_subscription(JointState, "/twinloop/safe_action", self._on_safe, COMMAND_QOS)
        node.create_subscription(String, "/twinloop/safety_status", self._on_status, COMMAND_QOS)
        node.create_timer(0.05, self._publish_state)

    def _on_safe(self, msg: JointState) -> None:
        self.safe.append(msg)
        self.safe_times.append(time.monotonic())

    def _on_status(self, msg: String) -> None:
        self.status.append(json.loads(msg.data))
        self.status_times.append(time.monotonic())

    def _publish_state(self) -> None:
        stamp = self.probe.node.get_clock().now().to_msg()
        self._joints.publish(joint_state_to_msg(JOINTS, self.q, stamp=stamp))
        self._pose.publish(pose_to_msg(self.ee, [0.0, 1.0, 0.0, 0.0], stamp=stamp))
        if self.deadman is not None:
            self._deadman.publish(Bool(data=self.deadman))

    # ----- actions -----------------------------------------------------------------------------
    def now_ns(self) -> int:
        return int(self.probe.node.get_clock().now().nanoseconds)

    def send(
        self,
        action: list[float],
        *,
        age_ms: float = 0.0,
        source: str = "",
        stamp_ns: int | None = None,
    ) -> None:
        ns = self.now_ns() - int(age_ms * 1e6) if stamp_ns is None else stamp_ns
        msg = action_to_msg(action, stamp=stamp_from_ns(ns) if ns > 0 else None)
        msg.header.frame_id = source
        self._actions.publish(msg)

    def send_raw(self, msg: JointState) -> None:
        self._actions.publish(msg)

    def estop(self, asserted: bool) -> None:
        self._estop.publish(Bool(data=asserted))

    def reset_estop(self) -> Trigger.Response:
        return self.probe.call(Trigger, "/safety/reset_estop", Trigger.Request())

    def exchange(self, action: list[float], **kw: object) -> np.ndarray:
        """Send one action and return the safe action it produced (within 3 s)."""
        start = len(self.safe)
        self.send(action, **kw)  # type: ignore[arg-type]
        self.probe.spin_until(lambda: len(self.safe) > start, 3.0, "a safe action")
        return np.array(self.safe[start].position)

    def settle(self, seconds: float = 0.3) -> None:
        self.probe.spin_for(seconds)

    def latest_status(self) -> dict:
        start = len(self.status)
        self.probe.spin_until(lambda: len(self.status) > start, 3.0, "a safety status")
        return self.status[-1]


@pytest.fixture(scope="module")
def graph() -> Iterator[GraphProcesses]:
    lines: dict[str, list[str]] = {}
    procs = GraphProcesses(
        load_graph("sim", overrides=[f"safety.watchdog_ms={WATCHDOG_MS}"]).only("safety"),
        env=ros_env(DOMAIN_ID),
        output=lambda name, line: lines.setdefault(name, []).append(line),
    )
    procs.lines = lines  # type: ignore[attr-defined]
    with procs:
        yield procs


@pytest.fixture(scope="module")
def cell(graph: GraphProcesses) -> Iterator[Cell]:
    with pytest.MonkeyPatch.context() as mp:
        for key, value in ros_env(DOMAIN_ID).items():
            mp.setenv(key, value)
        with GraphProbe.open("safety_test", domain_id=DOMAIN_ID) as probe:
            c = Cell(probe)
            probe.spin_until(lambda: c.status, 60.0, "the safety node's first status")
            probe.spin_until(
                lambda: c._actions.get_subscription_count() > 0, 10.0, "the action subscription"
            )
            c.settle(0.3)  # the node has fresh joint states and EE pose
            yield c


def _hold_like(cmd: np.ndarray, gripper: float) -> bool:
    return bool(np.all(cmd[:4] == 0.0)) and cmd[4] == pytest.approx(gripper)


def test_limits_are_applied_and_the_stamp_is_kept(cell: Cell) -> None:
    start = len(cell.safe)
    stamp = cell.now_ns()
    out = cell.exchange([0.1, 0.05, 0.0, 0.5, -1.0], stamp_ns=stamp)
    assert np.linalg.norm(out[:3]) == pytest.approx(0.03)
    assert out[1] / out[0] == pytest.approx(0.5)  # the direction is kept
    assert out[3] == pytest.approx(0.2) and out[4] == -1.0
    assert stamp_to_ns(cell.safe[start].header.stamp) == stamp
    assert list(cell.safe[start].name) == ["dx", "dy", "dz", "dyaw", "gripper"]
    # the gripper rate limit: at most 0.5 per command
    grips = [cell.exchange([0.0, 0.0, 0.0, 0.0, 1.0])[4] for _ in range(4)]
    assert grips == pytest.approx([-0.5, 0.0, 0.5, 1.0])
    # the workspace box: 1 cm above the floor of the box, a 3 cm move down stops at it
    cell.ee = [0.5, 0.0, 0.02]
    cell.settle(0.2)
    out = cell.exchange([0.0, 0.0, -0.03, 0.0, 1.0])
    assert out[2] == pytest.approx(0.01 - 0.02)
    cell.ee = [0.5, 0.0, 0.3]
    cell.settle(0.2)


def test_bad_messages_are_dropped_and_counted(cell: Cell, graph: GraphProcesses) -> None:
    before = cell.latest_status()["counts"]
    start = len(cell.safe)
    cell.send([float("nan"), 0.0, 0.0, 0.0, 1.0])
    cell.send_raw(JointState(name=["dx", "dy"], position=[0.1, 0.1]))
    cell.send([0.01, 0.0, 0.0, 0.0, 1.0], age_ms=2000.0)  # stale
    cell.send([0.01, 0.0, 0.0, 0.0, 1.0], age_ms=-2000.0)  # from the future
    cell.send([0.01, 0.0, 0.0, 0.0, 1.0], stamp_ns=0)  # unstamped
    cell.settle(0.1)
    assert len(cell.safe) == start or all(
        _hold_like(np.array(m.position), 1.0) for m in cell.safe[start:]
    ), "only watchdog holds may come out"
    after = cell.latest_status()["counts"]
    dropped = {k: after["dropped_by"][k] - before["dropped_by"][k] for k in after["dropped_by"]}
    assert dropped == {"invalid": 1, "malformed": 1, "unstamped": 1, "stale": 1, "future": 1}
    assert after["dropped"] - before["dropped"] == 5
    assert graph.poll() is None and graph.running() == ["safety"]
    out = cell.exchange([0.01, 0.0, 0.0, 0.0, 1.0])  # and it keeps working
    np.testing.assert_allclose(out, [0.01, 0.0, 0.0, 0.0, 1.0])
    logs = graph.lines["safety"]  # type: ignore[attr-defined]
    assert any("dropping action: action has NaN" in line for line in logs)


def test_watchdog_holds_after_silence(cell: Cell) -> None:
    cell.exchange([0.01, 0.0, 0.0, 0.0, 1.0])
    start, t0 = len(cell.safe), time.monotonic()
    cell.settle(1.5)
    holds = cell.safe[start:]
    times = np.array(cell.safe_times[start:]) - t0
    assert 3 <= len(holds) <= 6, f"{len(holds)} holds in 1.5 s with a {WATCHDOG_MS} ms watchdog"
    assert all(_hold_like(np.array(m.position), 1.0) for m in holds)
    assert times[0] > 0.2, "the first hold comes after the watchdog period"
    assert np.all(np.diff(times) > 0.2), f"holds {np.diff(times)} s apart"
    status = cell.latest_status()
    assert status["watchdog"] == "holding" and status["counts"]["watchdog_holds"] >= 3
    start = len(cell.status)
    while len(cell.status) == start:  # actions at 10 Hz keep the watchdog fed
        cell.exchange([0.0, 0.0, 0.0, 0.0, 1.0])
        cell.settle(0.1)
    assert cell.status[-1]["watchdog"] == "ok"


def test_estop_latches_survives_actions_and_needs_a_reset(cell: Cell) -> None:
    cell.exchange([0.01, 0.0, 0.0, 0.0, 1.0])
    start = len(cell.safe)
    cell.estop(True)
    cell.probe.spin_until(lambda: len(cell.safe) > start, 3.0, "the e-stop hold")
    assert _hold_like(np.array(cell.safe[start].position), 1.0)
    for _ in range(3):
        assert _hold_like(cell.exchange([0.02, 0.0, 0.0, 0.1, -1.0]), 1.0)
    status = cell.latest_status()
    assert status["estop_latched"] and status["estop_input"]
    answer = cell.reset_estop()
    assert not answer.success and "still asserted" in answer.message
    cell.estop(False)
    cell.settle(0.2)
    assert _hold_like(cell.exchange([0.02, 0.0, 0.0, 0.1, 1.0]), 1.0), "release alone is no reset"
    answer = cell.reset_estop()
    assert answer.success and answer.message == "e-stop reset"
    np.testing.assert_allclose(cell.exchange([0.02, 0.0, 0.0, 0.1, 1.0]), [0.02, 0, 0, 0.1, 1.0])
    assert not cell.latest_status()["estop_latched"]


def test_teleop_actions_need_the_deadman(cell: Cell) -> None:
    teleop = {"source": "teleop"}
    assert _hold_like(cell.exchange([0.01, 0.0, 0.0, 0.0, 1.0], **teleop), 1.0)
    np.testing.assert_allclose(cell.exchange([0.01, 0.0, 0.0, 0.0, 1.0]), [0.01, 0, 0, 0, 1.0])
    cell.deadman = True  # published at 20 Hz from now on
    cell.settle(0.2)
    assert cell.latest_status()["deadman"] is True
    np.testing.assert_allclose(
        cell.exchange([0.01, 0.0, 0.0, 0.0, 1.0], **teleop), [0.01, 0, 0, 0, 1.0]
    )
    cell.deadman = None  # the teleop stops publishing it: released after deadman_timeout_ms
    cell.settle(0.5)
    assert _hold_like(cell.exchange([0.01, 0.0, 0.0, 0.0, 1.0], **teleop), 1.0)
    cell.deadman = False
    cell.settle(0.1)
    assert _hold_like(cell.exchange([0.01, 0.0, 0.0, 0.0, 1.0], **teleop), 1.0)
    cell.deadman = None


def test_joint_limit_margin(cell: Cell) -> None:
    q = list(HOME_Q)
    q[6] = PANDA_UPPER[6] - 0.02  # joint 7 inside its 0.05 rad margin
    cell.q = q
    cell.settle(0.2)
    # The hand points down, so joint 7 turns against the world yaw: -dyaw turns it up.
    assert _hold_like(cell.exchange([0.0, 0.0, 0.0, -0.1, 1.0]), 1.0)
    np.testing.assert_allclose(cell.exchange([0.0, 0.0, 0.0, 0.1, 1.0]), [0, 0, 0, 0.1, 1.0])
    assert cell.latest_status()["counts"]["held_by"]["joint_limit"] >= 1
    cell.q = list(HOME_Q)
    cell.settle(0.2)


def test_status_is_published_at_about_2_hz(cell: Cell) -> None:
    cell.settle(0.1)
    times = np.array(cell.status_times)
    # The e-stop and reset publish an extra status at once; the steady rate is the median.
    gap = float(np.median(np.diff(times)))
    assert 0.4 < gap < 0.65, f"status every {gap:.2f} s"
    status = cell.status[-1]
    assert set(status) >= {"estop_latched", "deadman", "watchdog", "counts"}
    assert set(status["counts"]) >= {"dropped", "clipped", "held", "passed", "watchdog_holds"}


def test_stop_is_clean(graph: GraphProcesses, cell: Cell) -> None:
    codes = graph.stop()
    assert codes == {"safety": 0}, graph.logs("safety")


@pytest.mark.parametrize(
    ("param", "message"),
    [
        ('arm_model:="ur5"', "unknown arm_model 'ur5'. Available: ['none', 'panda']"),
        ("watchdog_ms:=0.0", "watchdog_ms must be a positive number"),
        ("status_hz:=0.0", "status_hz must be in (0, 100]"),
    ],
)
def test_bad_parameters_fail_at_start(param: str, message: str) -> None:
    exe = Path(sysconfig.get_path("scripts")) / "safety_node"
    out = subprocess.run(
        [str(exe), "--ros-args", "-p", param],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **ros_env(DOMAIN_ID)},
        check=False,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in out.stderr
