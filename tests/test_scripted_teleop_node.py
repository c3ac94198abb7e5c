"""scripted_teleop_node waits for a recorder that has data before its first episode.

DDS matches each topic on its own: the teleop can see the twin's reset service and the recorder
hear its start event while the recorder has not yet received a single camera frame or joint
state from the twin. An episode started then loses its first steps (a fresh-clone make test saw
15 of 28 steps dropped as missing). With ``recorder_status_topic`` the teleop waits until the
recorder's status shows data on every stream (its own actions aside), and gives up with exit
code 1 and the streams' names when that does not happen in ``service_timeout_s``. This process
plays the twin's reset service and the recorder's status.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 Jazzy wheels (pip install -e .[ros])")

from std_msgs.msg import String
from std_srvs.srv import Trigger
from twinloop_ros.node_utils import COMMAND_QOS
from twinloop_ros.probe import GraphProbe, ros_env

from twinloop.graph import Graph, GraphProcesses, NodeSpec

pytestmark = pytest.mark.ros

DOMAIN_ID = 1 + (os.getpid() + 61) % 100
STATUS = "/test_recorder/status"
START_TIMEOUT = 60.0


@pytest.fixture
def probe() -> Iterator[GraphProbe]:
    with GraphProbe.open("scripted_probe", domain_id=DOMAIN_ID) as p:
        yield p


@contextmanager
def teleop(params: dict[str, Any], lines: list[str]) -> Iterator[GraphProcesses]:
    spec = NodeSpec(
        "scripted_teleop",
        "twinloop_ros",
        "scripted_teleop_node",
        {
            "reset_service": "/test_reset",
            "recorder_status_topic": STATUS,
            "task": "push_cube",
            "exit_when_done": False,
            **params,
        },
    )
    graph = Graph("scripted_test", (spec,))
    with GraphProcesses(graph, env=ros_env(DOMAIN_ID), output=lambda _n, ln: lines.append(ln)) as g:
        yield g


def status(**buffers: int) -> String:
    return String(data=json.dumps({"state": "idle", "queues": {"buffers": buffers}}))


def test_the_first_reset_waits_for_recorder_data(probe: GraphProbe) -> None:
    resets: list[float] = []

    def on_reset(_req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        resets.append(time.monotonic())
        res.success, res.message = True, '{"episode": 1, "seed": 0, "task": "push_cube"}'
        return res

    probe.node.create_service(Trigger, "/test_reset", on_reset)
    pub = probe.publisher(String, STATUS, COMMAND_QOS)
    events = probe.collect(String, "/twinloop/episode")
    lines: list[str] = []
    empty = status(image_color=0, joint_states=0, ee_pose=4, action=0)
    with teleop({}, lines) as graph:
        probe.spin_until(lambda: pub.get_subscription_count() > 0, START_TIMEOUT, "the teleop")
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:  # the service is there, the recorder has no data
            pub.publish(empty)
            probe.spin_for(0.2)
        assert resets == [] and events == [], "an episode started before the recorder had data"
        waiting = "waiting for the recorder: no data on ['image_color', 'joint_states']"
        assert any(waiting in line for line in lines), "\n".join(lines)
        ready = status(image_color=2, joint_states=5, ee_pose=4, action=0)  # actions: the teleop's
        deadline = time.monotonic() + 10.0
        while not resets:
            assert time.monotonic() < deadline, "no reset once the recorder had data"
            pub.publish(ready)
            probe.spin_for(0.2)
        probe.spin_until(lambda: events, 5.0, "the start event")
        assert json.loads(events[0].data)["event"] == "start"
        assert graph.poll() is None


def test_a_recorder_without_data_is_an_error_naming_the_streams(probe: GraphProbe) -> None:
    probe.node.create_service(Trigger, "/test_reset", lambda _q, r: r)
    pub = probe.publisher(String, STATUS, COMMAND_QOS)
    lines: list[str] = []
    # the node's wait counts from its start: leave room for DDS discovery on a loaded machine
    # (with 2 s it gave up before it ever matched the status publisher, in a CI-like run)
    with teleop({"service_timeout_s": 8.0}, lines) as graph:
        deadline = time.monotonic() + START_TIMEOUT
        while graph.poll() is None:
            assert time.monotonic() < deadline, "the teleop kept waiting"
            pub.publish(status(image_color=0, joint_states=3, action=0))
            probe.spin_for(0.2)
        code = graph.poll()
    assert code == 1, "\n".join(lines)
    assert any("the recorder is not receiving: no data on ['image_color']" in ln for ln in lines)
