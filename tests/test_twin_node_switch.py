"""Reset-free on the graph: twin_node's run-time task switch and episode_runner_node using it.

twin_node (open_drawer) runs as a process; this test process publishes on /twin/switch_task and
reads /twinloop/sim/state. Then twin + episode_runner (reset_free) run, with this process as the
scripted expert (it answers each sim state with an expert action for the state's task on
/twinloop/safe_action), so successes happen and the runner must switch the task without a reset.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 Jazzy wheels (pip install -e .[ros])")

from std_msgs.msg import String
from std_srvs.srv import Trigger
from twinloop.sim2real.experts import ScriptedExpert, make_expert
from twinloop_ros.conversions import action_to_msg, sim_state_from_msg
from twinloop_ros.probe import GraphProbe, ros_env

from twinloop.graph import Graph, GraphProcesses, NodeSpec, load_graph

pytestmark = pytest.mark.ros

DOMAIN_ID = 1 + (os.getpid() + 53) % 100  # below 102: DDS ports out of the ephemeral range
TWIN = {"task": "open_drawer", "image_width": 64, "image_height": 48, "camera_fps": 5.0}


def twin_graph() -> Graph:
    return Graph("twin", (load_graph("sim").node("twin").with_parameters(TWIN),))


def states_of(msgs: list[String]) -> list[dict]:
    return [sim_state_from_msg(m) for m in msgs]


def test_switch_task_keeps_the_physics_and_refuses_other_objects() -> None:
    lines: list[str] = []
    env = ros_env(DOMAIN_ID)
    with (
        GraphProcesses(twin_graph(), env=env, output=lambda n, line: lines.append(line)) as procs,
        pytest.MonkeyPatch.context() as mp,
    ):
        for key, value in env.items():
            mp.setenv(key, value)
        with GraphProbe.open("switch_test", domain_id=DOMAIN_ID) as probe:
            raw = probe.collect(String, "/twinloop/sim/state")
            switch = probe.publisher(String, "/twin/switch_task")
            probe.spin_until(lambda: len(raw) >= 3, 60.0, "the twin's states")
            probe.spin_until(lambda: switch.get_subscription_count() > 0, 10.0, "switch reader")
            before = states_of(raw)[-1]
            assert before["task"] == "open_drawer" and not before["success"]
            assert before["steps"] >= 2
            opening = float(before["privileged_state"]["drawer_opening"])
            assert opening < 0.02  # the drawer starts (nearly) shut

            n = len(raw)
            switch.publish(String(data="close_drawer"))
            probe.spin_until(
                lambda: any(s["task"] == "close_drawer" for s in states_of(raw[n:])), 10.0,
                "the switched state",
            )  # fmt: skip
            after = next(s for s in states_of(raw[n:]) if s["task"] == "close_drawer")
            # the switch acknowledges with steps 0; the drawer did not move (no reset), and the
            # success is the new task's: a shut drawer is a closed drawer
            assert after["steps"] == 0 and after["episode"] == before["episode"]
            assert float(after["privileged_state"]["drawer_opening"]) == pytest.approx(
                opening, abs=1e-3
            )
            assert after["success"] is True

            for bad, why in (("push_cube", "different objects"), ("fly_away", "unknown task")):
                n = len(raw)
                switch.publish(String(data=bad))
                probe.spin_for(1.0)
                assert procs.poll() is None, "the twin died on a bad switch"
                assert len(raw) - n >= 5, "the twin stopped stepping"
                assert {s["task"] for s in states_of(raw[n:])} == {"close_drawer"}
                assert any("refusing to switch task" in line and why in line for line in lines)

            # a full reset restores the start task
            answer = probe.call(Trigger, "/twin/reset", Trigger.Request())
            assert answer.success and json.loads(answer.message)["task"] == "open_drawer"
        assert procs.stop() == {"twin": 0}


class Expert:
    """Answers every new sim state with an expert action for the state's task."""

    def __init__(self, probe: GraphProbe) -> None:
        self.pub = probe.publisher(type(action_to_msg([0.0] * 5)), "/twinloop/safe_action")
        self.expert: ScriptedExpert | None = None
        self.task = ""
        self.count = 0
        self.states: list[dict] = []
        probe.node.create_subscription(String, "/twinloop/sim/state", self.on_state, 10)
        self.probe = probe

    def on_state(self, msg: String) -> None:
        state = sim_state_from_msg(msg)
        self.states.append(state)
        if state["task"] != self.task or state["steps"] == 0 or self.expert is None:
            self.task = state["task"]
            self.count += 1
            self.expert = make_expert(self.task, noise=0.0, seed=self.count)
        action = self.expert.act(state["privileged_state"])
        stamp = self.probe.node.get_clock().now().to_msg()
        self.pub.publish(action_to_msg(np.asarray(action), stamp=stamp))


def test_runner_switches_the_twin_task_on_success_without_a_reset(tmp_path: Path) -> None:
    results = tmp_path / "runner.jsonl"
    runner = NodeSpec(
        "episode_runner",
        "twinloop_ros",
        "episode_runner_node",
        {
            "episodes": 3,
            "max_steps": 60,
            "reset_free": True,
            "tasks": ["open_drawer", "close_drawer"],
            "reset_every": 10,
            "min_event_readers": 1,  # this process hears every start event
            "drain_s": 0.0,
            "results_path": str(results),
        },
        required=True,
    )
    graph = Graph("reset_free", (*twin_graph().nodes, runner))
    lines: list[str] = []
    env = ros_env(DOMAIN_ID)
    output = lambda name, line: lines.append(f"[{name}] {line}")  # noqa: E731
    with GraphProcesses(graph, env=env, output=output) as procs, pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        with GraphProbe.open("expert", domain_id=DOMAIN_ID) as probe:
            events = probe.collect(String, "/twinloop/episode")
            expert = Expert(probe)
            probe.spin_until(lambda: procs.poll() is not None, 90.0, "the runner's 3 episodes")
        codes = procs.stop()
    log = "\n".join(lines[-40:])
    assert codes["episode_runner"] == 0, log
    records = [json.loads(line) for line in results.read_text().splitlines()]
    episodes = [r for r in records if r["kind"] == "episode"]
    assert [(r["task"], r["success"]) for r in episodes] == [
        ("open_drawer", True), ("close_drawer", True), ("open_drawer", True)
    ], log  # fmt: skip
    final = next(r for r in records if r["kind"] == "final")["runner"]
    assert final["switches"] == 2 and final["resets"] == 1, final
    starts = [json.loads(m.data) for m in events if json.loads(m.data)["event"] == "start"]
    assert [s["task"] for s in starts] == ["open_drawer", "close_drawer", "open_drawer"]
    # no reset between the episodes: one twin episode, and the backward attempt began with the
    # drawer as far open as the forward one left it
    assert {s["episode"] for s in expert.states[-20:]} == {1}
    i = next(i for i, s in enumerate(expert.states) if s["task"] == "close_drawer")
    first_back, last_fwd = expert.states[i], expert.states[i - 1]
    assert last_fwd["task"] == "open_drawer" and last_fwd["success"]
    assert first_back["steps"] == 0
    assert float(first_back["privileged_state"]["drawer_opening"]) == pytest.approx(
        float(last_fwd["privileged_state"]["drawer_opening"]), abs=5e-3
    )
