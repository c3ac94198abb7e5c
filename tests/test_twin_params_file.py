"""twin_node starts from the identified parameters: ``params_file`` (from ``twinloop sysid apply``)
sets the scene's values at start; ``params.<name>`` given at start still wins."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 Jazzy wheels (pip install -e .[ros])")

from std_srvs.srv import Trigger
from twinloop.sim2real.asid.apply import apply_params, scene_params
from twinloop_ros.probe import GraphProbe, ros_env

from twinloop.graph import Graph, GraphProcesses, load_graph

pytestmark = pytest.mark.ros

DOMAIN_ID = 1 + (os.getpid() + 83) % 100  # below 102: DDS ports out of the ephemeral range


def test_scene_params_keeps_this_scenes_parameters() -> None:
    values = {"rod.com_offset": 0.05, "cube.friction": 0.9}
    assert scene_params(values, {"rod.com_offset": None, "rod.mass": None}) == {
        "rod.com_offset": 0.05
    }


def test_twin_node_loads_the_current_version(tmp_path: Path) -> None:
    path = tmp_path / "twin_params.json"
    apply_params(path, "lift_rod", {"rod.com_offset": 0.02}, {"method": "test"})
    apply_params(path, "lift_rod", {"rod.com_offset": 0.061, "rod.mass": 0.5}, {"method": "test"})
    twin = {"task": "lift_rod", "image_width": 64, "image_height": 48, "camera_fps": 5.0,
            "params_file": str(path), "params.rod.mass": 0.7}  # fmt: skip
    graph = Graph("twin", (load_graph("sim").node("twin").with_parameters(twin),))
    env = ros_env(DOMAIN_ID)
    with (
        GraphProcesses(graph, env=env, output=lambda n, line: None),
        pytest.MonkeyPatch.context() as mp,
    ):
        for key, value in env.items():
            mp.setenv(key, value)
        with GraphProbe.open("params_file_test", domain_id=DOMAIN_ID) as probe:
            answer = probe.call(Trigger, "/twin/get_params", Trigger.Request(), timeout=60.0)
    params = json.loads(answer.message)["params"]
    assert params["rod.com_offset"] == pytest.approx(0.061)  # version 2, the current one
    assert params["rod.mass"] == pytest.approx(0.7)  # the explicit start value wins
