"""The sim node graph over real DDS: separate processes, subscribed to from this test process.

twin + safety run as processes (GraphProcesses, as `twinloop launch` starts them); this process
is the consumer and, with no teleop running, the policy. A unique ROS_DOMAIN_ID per session keeps
other graphs on the machine out.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 Jazzy wheels (pip install -e .[ros])")

from sensor_msgs.msg import JointState
from std_srvs.srv import Trigger
from twinloop_ros.conversions import action_to_msg, image_from_msg
from twinloop_ros.probe import GraphProbe, ros_env

from twinloop.graph import GraphProcesses, load_graph

pytestmark = pytest.mark.ros
log = logging.getLogger(__name__)

# 1..50 for the module's graph, +50 for the tests that start their own: below 102, so the DDS
# ports stay out of Linux's ephemeral range, and away from the default domain 0.
DOMAIN_ID = 1 + os.getpid() % 50
CAMERA_FPS = 15.0  # the CI default of graph_sim.yaml (320x240)
Probe = GraphProbe


@pytest.fixture(scope="module")
def graph() -> Iterator[GraphProcesses]:
    lines: dict[str, list[str]] = {}
    procs = GraphProcesses(
        load_graph("sim").only("twin", "safety"),  # no teleop: this test is the policy
        env=ros_env(DOMAIN_ID),
        output=lambda name, line: lines.setdefault(name, []).append(line),
    )
    procs.lines = lines  # type: ignore[attr-defined]
    with procs:
        yield procs


@pytest.fixture(scope="module")
def probe(graph: GraphProcesses) -> Iterator[GraphProbe]:
    with pytest.MonkeyPatch.context() as mp:
        for key, value in ros_env(DOMAIN_ID).items():
            mp.setenv(key, value)
        with GraphProbe.open("test_probe", domain_id=DOMAIN_ID) as p:
            p.spin_until(lambda: p.last_image is not None, 60.0, "the first camera image")
            yield p


def test_camera_stream_rate_and_format(probe: Probe) -> None:
    probe.spin_for(0.5)  # let the stream settle after the first frame
    rate = probe.image_rate(4.0)
    log.info("camera rate %.2f Hz (configured %.1f Hz)", rate, CAMERA_FPS)
    assert rate >= 0.9 * CAMERA_FPS, f"camera at {rate:.1f} Hz, configured {CAMERA_FPS}"
    msg = probe.last_image
    assert msg is not None
    assert (msg.encoding, msg.width, msg.height) == ("rgb8", 320, 240)
    assert msg.header.frame_id == "camera_color_optical_frame"
    img = image_from_msg(msg)
    assert img.shape == (240, 320, 3) and img.std() > 5  # a rendered scene, not a blank frame
    info = probe.last_info
    assert info is not None and (info.width, info.height) == (320, 240)
    assert info.k[0] > 0 and info.distortion_model == "plumb_bob"


def test_joint_states_and_ee_pose(probe: Probe) -> None:
    probe.spin_until(lambda: probe.joint_states and probe.poses, 10.0, "joint states and pose")
    js = probe.joint_states[-1]
    assert len(js.name) == len(js.position) == len(js.velocity) >= 7
    assert js.name[0] == "joint1"
    assert js.header.stamp.sec > 0
    pose = probe.poses[-1]
    assert pose.header.frame_id == "base_link"
    p = pose.pose.position
    assert np.isfinite([p.x, p.y, p.z]).all() and 0.2 < p.x < 0.9


def _drive(probe: Probe, action: list[float], steps: int) -> None:
    probe.publish_actions(action, steps, settle=0.8)  # the arm settles on the last target


def test_actions_move_the_end_effector(probe: Probe) -> None:
    # Home is near the far edge of the workspace box (x <= 0.8): back off first, then go +x.
    _drive(probe, [-0.02, 0.0, 0.0, 0.0, -1.0], steps=8)
    start = probe.poses[-1].pose.position
    _drive(probe, [0.02, 0.0, 0.0, 0.0, -1.0], steps=8)
    end = probe.poses[-1].pose.position
    log.info("ee moved %+.3f m in x for +0.16 m commanded", end.x - start.x)
    assert end.x - start.x > 0.05, f"EE moved {end.x - start.x:+.3f} m in x"
    assert abs(end.y - start.y) < 0.02 and abs(end.z - start.z) < 0.02


def test_bad_actions_are_dropped_and_the_twin_keeps_running(
    probe: Probe, graph: GraphProcesses
) -> None:
    nan_action = action_to_msg([float("nan"), 0.0, 0.0, 0.0, 0.0])
    short = JointState(name=["dx", "dy"], position=[0.1, 0.1])
    probe.publish_actions(nan_action, 3)  # the safety node refuses it
    probe.publish_actions(nan_action, 3, topic="/twinloop/safe_action")  # and so does the twin
    probe.publish_actions(short, 3, topic="/twinloop/safe_action")
    images, poses = len(probe.image_times), len(probe.poses)
    probe.spin_for(1.5)
    assert graph.poll() is None and graph.running() == ["twin", "safety"]
    assert len(probe.image_times) - images >= 10, "the twin stopped publishing images"
    assert len(probe.poses) - poses >= 5, "the twin stopped stepping"
    lines = graph.lines  # type: ignore[attr-defined]
    assert any("dropping action: action has NaN" in line for line in lines["safety"])
    assert any("dropping safe_action" in line for line in lines["twin"])


def _set(probe: Probe, name: str, value: object) -> tuple[bool, str]:
    return probe.set_parameters("twin", {name: value})[0]


def test_physical_parameters_are_validated_by_the_twin(probe: Probe) -> None:
    ok, reason = _set(probe, "params.cube.bogus", 1.0)
    assert not ok and "unknown twin parameter 'cube.bogus'" in reason and "cube.mass" in reason
    ok, reason = _set(probe, "params.cube.mass", 50.0)
    assert not ok and "outside [0.02, 1.0]" in reason
    ok, reason = _set(probe, "params.cube.mass", "heavy")
    assert not ok and "must be a number" in reason
    ok, reason = _set(probe, "bogus", 1)
    assert not ok and "unknown parameter 'bogus'" in reason
    ok, reason = _set(probe, "task", "open_drawer")
    assert not ok and "read-only" in reason
    ok, reason = _set(probe, "params.cube.mass", 0.3)
    assert ok, reason

    answer = probe.call(Trigger, "/twin/get_params", Trigger.Request())
    params = json.loads(answer.message)
    assert answer.success and params["params"]["cube.mass"] == pytest.approx(0.3)
    assert params["specs"]["cube.mass"]["high"] == 1.0

    answer = probe.call(Trigger, "/twin/reset", Trigger.Request())
    assert answer.success and json.loads(answer.message)["episode"] == 1
    assert (
        json.loads(probe.call(Trigger, "/twin/get_params", Trigger.Request()).message)["params"][
            "cube.mass"
        ]
        == 0.3
    )


def test_stop_leaves_no_processes(graph: GraphProcesses, probe: Probe) -> None:
    pids = list(graph.pids.values())
    codes = graph.stop()
    logs = "\n".join(f"[{n}] {graph.logs(n)}" for n in codes)
    assert codes == {"twin": 0, "safety": 0}, f"{codes}\n{logs}"  # SIGINT: a clean exit
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert psutil.Process().children(recursive=True) == []


def test_sim_profile_runs_teleop_episodes_to_the_end(tmp_path: Path) -> None:
    results = tmp_path / "episodes.jsonl"
    graph = load_graph(
        "sim",
        overrides=["scripted_teleop.episodes=1", f"scripted_teleop.results_path={results}"],
    )
    lines: list[str] = []
    with GraphProcesses(
        graph, env=ros_env(DOMAIN_ID + 50), output=lambda n, line: lines.append(f"[{n}] {line}")
    ) as procs:
        code = procs.wait(timeout=40)
    assert code == 0, "\n".join(lines[-30:])
    assert procs.ended is not None and procs.ended.name == "scripted_teleop"
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(records) == 1
    assert set(records[0]) == {"episode", "success", "steps", "return", "task"}
    assert records[0]["episode"] == 0 and records[0]["task"] == "push_cube"
    assert records[0]["success"] is True, records
    assert psutil.Process().children(recursive=True) == []


@pytest.mark.parametrize(
    ("exe", "param", "message"),
    [
        ("twin_node", 'task:="nope"', "unknown task 'nope'"),
        ("twin_node", "params.cube.mass:=7.0", "cube.mass=7.0 is outside"),
        ("safety_node", "max_translation:=5.0", "max_translation must be in"),
        ("scripted_teleop_node", "episodes:=0", "episodes must be >= 1"),
    ],
)
def test_bad_parameters_fail_at_start(exe: str, param: str, message: str) -> None:
    bindir = Path(sysconfig.get_path("scripts"))
    out = subprocess.run(
        [str(bindir / exe), "--ros-args", "-p", param],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **ros_env(DOMAIN_ID + 50)},
        check=False,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in out.stderr
