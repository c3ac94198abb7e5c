"""Graph profiles: loading, validation, overrides, both launchers' views, and the process launcher.

The process-launcher tests run small shell scripts as "nodes", so they need no ROS.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import signal
import stat
import sys
import sysconfig
import time
import types
from pathlib import Path
from typing import Any, ClassVar

import psutil
import pytest
import yaml

from twinloop.errors import TwinloopError
from twinloop.graph import (
    Graph,
    GraphProcesses,
    NodeExit,
    NodeSpec,
    available_profiles,
    config_dirs,
    format_param_value,
    load_graph,
    parse_graph,
    parse_override,
)

REPO = Path(__file__).resolve().parent.parent
PKG = REPO / "robot_ws" / "src" / "twinloop_ros"


def write_graph(tmp_path: Path, data: Any, name: str = "graph_test.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def node(name: str = "a", **kw: Any) -> dict[str, Any]:
    return {"name": name, "package": "twinloop_ros", "executable": "x", **kw}


# ----- the shipped profiles ----------------------------------------------------------------------
def test_sim_profile() -> None:
    graph = load_graph("sim")
    assert graph.profile == "sim"
    assert graph.names == ("twin", "safety", "scripted_teleop", "recorder", "live_view")
    assert graph.node("live_view").parameters["enabled"] is False  # on with --set
    assert graph.source == PKG / "config" / "graph_sim.yaml"
    twin = graph.node("twin")
    assert (twin.executable, twin.package) == ("twin_node", "twinloop_ros")
    assert twin.parameters["task"] == "push_cube"
    assert twin.parameters["camera_fps"] == 15.0
    assert (twin.parameters["image_width"], twin.parameters["image_height"]) == (320, 240)
    assert twin.parameters["realtime"] is True
    assert graph.node("safety").parameters["workspace_low"] == (0.25, -0.35, 0.01)
    assert graph.node("scripted_teleop").required
    assert graph.node("scripted_teleop").parameters["reset_service"] == "/twin/reset"
    assert not twin.required


def test_robot_profile_has_the_same_format() -> None:
    graph = load_graph("robot")
    assert set(graph.names) == {"camera", "arm_bridge", "safety", "teleop", "recorder", "live_view"}
    # the safety node is the same executable with the same limits in both profiles
    assert graph.node("safety").parameters == load_graph("sim").node("safety").parameters


def test_finetune_robot_profile() -> None:
    """Online fine-tuning on the real cell: the robot's camera, arm and safety layer, the actor,
    learner, reward and runner nodes; the operator starts episodes, the learned reward ends them."""
    graph = load_graph("finetune_robot")
    assert graph.names == ("camera", "arm_bridge", "safety", "teleop", "reward", "policy",
                           "learner", "episode_runner", "live_view")  # fmt: skip
    assert graph.node("safety").required and graph.node("arm_bridge").required
    # the robot profile's limits, and every action source (the policy too) needs the deadman
    safety = dict(graph.node("safety").parameters)
    assert safety.pop("deadman_sources") == ("*",)
    assert safety == load_graph("robot").node("safety").parameters
    runner = graph.node("episode_runner").parameters
    assert graph.node("episode_runner").required
    assert runner["reset_service"] == "" and runner["success_source"] == "reward"
    assert runner["success_frames"] == 3
    assert graph.node("learner").parameters["reward_source"] == "topic"
    for name in ("policy", "learner"):  # robot policies see images, no privileged state
        params = graph.node(name).parameters
        assert params["image_key"] == "image_color" and params["state_keys"] == ("proprio",)
    assert graph.node("teleop").parameters["publish_actions"] is False  # supervises only
    assert "twin" not in graph.names


def test_profile_parameters_are_node_parameters() -> None:
    """Every parameter a shipped profile sets is a field of one of the configs its node reads (a
    typo would otherwise be ignored until the node runs on its default)."""
    pytest.importorskip("rclpy", reason="needs the ROS 2 Jazzy wheels")
    import dataclasses
    import importlib

    ros = "twinloop_ros."
    configs = {  # executable -> the dataclasses its node reads its parameters into
        "camera_node": [ros + "camera_node:CameraNodeConfig", "twinloop.camera:RealSenseConfig"],
        "arm_bridge": [ros + "arm_bridge:ArmBridgeNodeConfig", "twinloop.arm_bridge:ArmProfile"],
        "safety_node": [ros + "safety_node:SafetyNodeConfig", "twinloop.safety:LimiterConfig",
                        "twinloop.safety:SafetyConfig"],
        "teleop_node": [ros + "teleop_node:TeleopNodeConfig", "twinloop.teleop:TeleopConfig"],
        "reward_node": [ros + "reward_node:RewardNodeConfig"],
        "policy_node": [ros + "policy_node:PolicyNodeConfig"],
        "learner_node": [ros + "learner_node:LearnerNodeConfig"],
        "episode_runner_node": [ros + "episode_runner_node:EpisodeRunnerNodeConfig"],
    }  # fmt: skip
    checked = 0
    for profile in ("finetune_robot", "finetune_sim", "robot"):
        for n in load_graph(profile).nodes:
            if n.executable not in configs:
                continue
            fields: set[str] = set()
            for target in configs[n.executable]:
                module, cls = target.split(":")
                config = getattr(importlib.import_module(module), cls)
                fields |= {f.name for f in dataclasses.fields(config)}
            unknown = sorted(k for k in set(n.parameters) - fields if "." not in k)
            assert not unknown, (profile, n.name, unknown)
            checked += 1
    assert checked >= 15


def test_profiles_are_found_in_the_checkout_first() -> None:
    dirs = config_dirs()
    assert dirs[0] == PKG / "config"
    assert Path(sys.prefix) / "share" / "twinloop_ros" / "config" in dirs
    assert {"sim", "robot"} <= set(available_profiles())


def test_unknown_profile_lists_the_available_ones() -> None:
    expected = r"unknown graph profile 'lab'.*\['finetune_robot', 'finetune_sim', 'robot', 'sim'\]"
    with pytest.raises(TwinloopError, match=expected):
        load_graph("lab")


def test_load_by_path_and_search_dirs(tmp_path: Path) -> None:
    path = write_graph(tmp_path, {"nodes": [node("n1")]}, name="graph_mine.yaml")
    assert load_graph(path).profile == "mine"
    assert load_graph("mine", search_dirs=[tmp_path]).names == ("n1",)
    with pytest.raises(TwinloopError, match="does not exist"):
        load_graph(tmp_path / "nope.yaml")


# ----- validation --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "match"),
    [
        ("nodes: [a, b", "not valid YAML"),
        ("- 1\n- 2\n", "expected a mapping with a 'nodes' list"),
        ({"nodes": []}, "'nodes' must be a non-empty list"),
        ({"nodes": [node()], "extra": 1}, r"unknown keys \['extra'\]"),
        ({"nodes": ["twin"]}, "node #0 must be a mapping"),
        (
            {"nodes": [{"name": "a", "package": "p"}]},
            r"node #0 \(a\): missing keys \['executable'\]",
        ),
        ({"nodes": [node(paramters={})]}, r"unknown keys \['paramters'\]"),
        ({"nodes": [node("a"), node("a")]}, "duplicate node name 'a'"),
        ({"nodes": [node("1twin")]}, "a node name is letters"),
        ({"nodes": [node(required="yes")]}, "required must be true or false"),
        ({"nodes": [node(parameters={"x": None})]}, r"parameter 'x' has no value \(write ''"),
        ({"nodes": [node(parameters={"x": []})]}, "an empty list has no ROS parameter type"),
        ({"nodes": [node(parameters={"x": [1, "a"]})]}, "a list must hold one type"),
        ({"nodes": [node(parameters={"x": [[1], [2]]})]}, "nested lists"),
        ({"nodes": [node(parameters={"x": float("nan")})]}, "not a finite number"),
        ({"nodes": [node(parameters={"bad-name": 1})]}, "not a valid parameter name"),
        ({"nodes": [node(parameters=[1, 2])]}, "parameters must be a mapping"),
        ({"nodes": [node(remappings=["a:=b"])]}, "remappings must be a mapping"),
        ({"nodes": [node(remappings={"/a": ""})]}, "must map a name to a name"),
        ({"nodes": [node(executable="bin/x")]}, "executable must be a plain name"),
    ],
)
def test_bad_graph_files_raise(tmp_path: Path, data: Any, match: str) -> None:
    with pytest.raises(TwinloopError, match=match):
        load_graph(write_graph(tmp_path, data))


def test_nested_parameters_become_dotted_names() -> None:
    graph = parse_graph(
        {"nodes": [node(parameters={"params": {"cube": {"mass": 0.2}}, "n": 1})]}, profile="p"
    )
    assert dict(graph.node("a").parameters) == {"params.cube.mass": 0.2, "n": 1}


def test_graph_is_immutable() -> None:
    spec = load_graph("sim").node("twin")
    with pytest.raises(TypeError):
        spec.parameters["task"] = "x"  # type: ignore[index]


def test_empty_sections_are_allowed() -> None:
    graph = parse_graph(
        yaml.safe_load("nodes:\n- {name: a, package: p, executable: x, parameters:}"), profile="p"
    )
    assert dict(graph.node("a").parameters) == {}


# ----- overrides ---------------------------------------------------------------------------------
def test_overrides_are_typed_like_yaml() -> None:
    graph = load_graph(
        "sim",
        overrides=[
            "twin.task=open_drawer",
            "twin.camera_fps=30",
            "twin.realtime=false",
            "twin.params.cube.mass=0.2",
            "safety.workspace_low=[0.3, -0.3, 0.02]",
            "scripted_teleop.results_path=",
        ],
    )
    twin = graph.node("twin").parameters
    assert twin["task"] == "open_drawer" and twin["camera_fps"] == 30 and twin["realtime"] is False
    assert twin["params.cube.mass"] == 0.2
    assert graph.node("safety").parameters["workspace_low"] == (0.3, -0.3, 0.02)
    assert graph.node("scripted_teleop").parameters["results_path"] == ""
    assert load_graph("sim").node("twin").parameters["task"] == "push_cube"  # not mutated


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("twin.task", "must look like node.parameter=value"),
        ("task=open_drawer", "must look like node.parameter=value"),
        ("twin.task=[1, 2", "not valid YAML"),
        ("twin.task={a: 1}", "not a ROS parameter value"),
        ("twin.bad-name=1", "not a valid parameter name"),
    ],
)
def test_bad_overrides_raise(text: str, match: str) -> None:
    with pytest.raises(TwinloopError, match=match):
        parse_override(text)


def test_override_of_an_unknown_node_lists_the_nodes() -> None:
    with pytest.raises(TwinloopError, match=r"no node 'camera'.*'twin', 'safety'"):
        load_graph("sim", overrides=["camera.fps=30"])


def test_override_exponent_floats_are_floats() -> None:
    assert parse_override("twin.x=1e-5") == ("twin", "x", 1e-5)
    assert parse_override('twin.x="1e-5"') == ("twin", "x", "1e-5")


def test_only_and_without() -> None:
    graph = load_graph("sim")
    assert graph.only("safety", "twin").names == ("twin", "safety")
    assert graph.without("scripted_teleop").names == ("twin", "safety", "recorder", "live_view")
    with pytest.raises(TwinloopError, match="no node 'x'"):
        graph.only("x")
    with pytest.raises(TwinloopError, match="has no nodes"):
        graph.without(*graph.names)


# ----- the command line and the launch file ------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "text"),
    [
        (True, "true"),
        (3, "3"),
        (15.0, "15.0"),
        (1e-5, "1.0e-05"),
        ("push_cube", '"push_cube"'),
        ("true", '"true"'),
        ("", '""'),
        ((0.25, -0.35), "[0.25, -0.35]"),
        (("a", "b"), '["a", "b"]'),
    ],
)
def test_param_values_keep_their_type_on_the_command_line(value: Any, text: str) -> None:
    assert format_param_value(value) == text
    parsed = yaml.safe_load(text)
    assert parsed == (list(value) if isinstance(value, tuple) else value)
    assert type(parsed) is (list if isinstance(value, tuple) else type(value))


def test_ros_args() -> None:
    spec = NodeSpec(
        name="twin",
        package="twinloop_ros",
        executable="twin_node",
        parameters={"task": "push_cube", "camera_fps": 15.0, "depth": False, "low": [0, 0.5]},
        remappings={"/joint_states": "/twin/joint_states"},
    )
    assert spec.ros_args() == [
        "--ros-args",
        "-r",
        "__node:=twin",
        "-p",
        'task:="push_cube"',
        "-p",
        "camera_fps:=15.0",
        "-p",
        "depth:=false",
        "-p",
        "low:=[0.0, 0.5]",
        "-r",
        "/joint_states:=/twin/joint_states",
    ]


def test_launch_kwargs() -> None:
    graph = load_graph("sim", overrides=["twin.params.cube.mass=0.2"])
    kwargs = {k["name"]: k for k in graph.launch_kwargs()}
    twin = kwargs["twin"]
    assert twin["package"] == "twinloop_ros" and twin["executable"] == "twin_node"
    assert twin["parameters"][0]["task"] == "push_cube"
    assert twin["parameters"][0]["params.cube.mass"] == 0.2
    assert kwargs["safety"]["parameters"][0]["workspace_low"] == [0.25, -0.35, 0.01]
    assert kwargs["scripted_teleop"]["required"] is True and twin["required"] is False
    spec = NodeSpec("n", "p", "x", remappings={"/a": "/b"})
    assert spec.launch_kwargs()["remappings"] == [("/a", "/b")]
    assert spec.launch_kwargs()["parameters"] == []


def _fake_launch_modules(monkeypatch: pytest.MonkeyPatch, share: Path) -> list[dict[str, Any]]:
    """Stand-ins for launch, launch_ros and ament_index_python (not available as wheels)."""
    made: list[dict[str, Any]] = []

    class Recorder:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.args, self.kwargs = args, kwargs

    class Node(Recorder):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            made.append(kwargs)

    class LaunchConfiguration:
        values: ClassVar[dict[str, str]] = {
            "profile": "sim",
            "overrides": "twin.task=lift_rod 'scripted_teleop.episodes=4'",
        }

        def __init__(self, name: str) -> None:
            self.name = name

        def perform(self, context: Any) -> str:
            return self.values[self.name]

    modules = {
        "launch": types.SimpleNamespace(LaunchContext=object, LaunchDescription=Recorder),
        "launch.actions": types.SimpleNamespace(
            DeclareLaunchArgument=Recorder, OpaqueFunction=Recorder, Shutdown=Recorder
        ),
        "launch.substitutions": types.SimpleNamespace(LaunchConfiguration=LaunchConfiguration),
        "launch_ros": types.SimpleNamespace(),
        "launch_ros.actions": types.SimpleNamespace(Node=Node),
        "ament_index_python": types.SimpleNamespace(),
        "ament_index_python.packages": types.SimpleNamespace(
            get_package_share_directory=lambda pkg: str(share)
        ),
    }
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return made


def test_launch_file_builds_nodes_from_the_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    made = _fake_launch_modules(monkeypatch, share=PKG)  # the checkout mirrors the share dir
    spec = importlib.util.spec_from_file_location(
        "twinloop_launch", PKG / "launch" / "twinloop.launch.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    actions = description.args[0]
    opaque = actions[-1]
    nodes = opaque.kwargs["function"](context=None)
    assert [n["name"] for n in made] == [
        "twin",
        "safety",
        "scripted_teleop",
        "recorder",
        "live_view",
    ]
    assert len(nodes) == 5
    by_name = {n["name"]: n for n in made}
    assert by_name["twin"]["parameters"][0]["task"] == "lift_rod"
    assert by_name["scripted_teleop"]["parameters"][0]["episodes"] == 4
    assert by_name["twin"]["on_exit"] is None
    assert by_name["scripted_teleop"]["on_exit"] is not None  # required: shuts the launch down
    assert "required" not in by_name["twin"]


def test_package_installs_what_the_launch_file_needs() -> None:
    setup = (PKG / "setup.py").read_text()
    for needle in ("launch/*.py", "config/*.yaml", "package.xml", "resource/"):
        assert needle in setup
    xml = (PKG / "package.xml").read_text()
    assert '<package format="3">' in xml and "<build_type>ament_python</build_type>" in xml
    for dep in ("rclpy", "sensor_msgs", "std_msgs", "geometry_msgs", "std_srvs", "trajectory_msgs"):
        assert f"<exec_depend>{dep}</exec_depend>" in xml
    assert (PKG / "resource" / "twinloop_ros").is_file()


# ----- the process launcher (shell scripts stand in for nodes) -----------------------------------
@pytest.fixture
def fake_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An ament-style prefix with lib/<package>/<executable> scripts."""
    lib = tmp_path / "prefix" / "lib" / "fake"
    lib.mkdir(parents=True)
    scripts = {
        "echo_args": 'echo "args: $*"; echo "err line" >&2; exec sleep 30',
        "exit_code": 'sleep "${DELAY:-0.2}"; exit "${CODE:-0}"',
        "stubborn": "trap '' INT; trap '' TERM; while true; do sleep 0.1; done",
        "spawner": 'sleep 60 & echo "child $!"; wait',
    }
    for name, body in scripts.items():
        path = lib / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(tmp_path / "prefix"))
    return tmp_path


def fake_graph(*nodes: NodeSpec) -> Graph:
    return Graph(profile="fake", nodes=nodes)


def fake(name: str, exe: str, **kw: Any) -> NodeSpec:
    return NodeSpec(name=name, package="fake", executable=exe, **kw)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def assert_gone(pids: list[int], within_s: float = 5.0) -> None:
    """Every pid is gone (or a zombie) within ``within_s``: a SIGKILLed process on a loaded
    machine can take a moment before the kernel reaps it."""
    deadline = time.monotonic() + within_s
    for pid in pids:
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(pid), f"pid {pid} still runs {within_s} s after the stop"


def test_output_is_prefixed_and_logged(fake_prefix: Path) -> None:
    lines: list[tuple[str, str]] = []
    graph = fake_graph(fake("talker", "echo_args", parameters={"a": 1, "s": "x y"}))
    with GraphProcesses(
        graph, output=lambda n, line: lines.append((n, line)), log_dir=fake_prefix / "logs"
    ) as procs:
        deadline = time.monotonic() + 10
        while len(lines) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert procs.poll() is None
    assert ("talker", 'args: --ros-args -r __node:=talker -p a:=1 -p s:="x y"') in lines
    assert ("talker", "err line") in lines
    assert "err line" in procs.logs("talker")
    log_text = (fake_prefix / "logs" / "talker.log").read_text()
    assert "err line" in log_text and "--ros-args" in log_text


def test_required_node_ends_the_graph(fake_prefix: Path) -> None:
    graph = fake_graph(fake("long", "echo_args"), fake("job", "exit_code", required=True))
    with GraphProcesses(graph) as procs:
        pids = list(procs.pids.values())
        assert procs.wait(timeout=20) == 0
        assert procs.ended == NodeExit("job", 0, True)
        assert procs.returncodes()["long"] is None  # still running until stop
    assert procs.returncodes()["long"] is not None
    assert_gone(pids)


def test_failing_node_ends_the_graph_with_its_code(fake_prefix: Path) -> None:
    graph = fake_graph(fake("long", "echo_args"), fake("bad", "exit_code"))
    with GraphProcesses(graph, env={"CODE": "3"}) as procs:
        assert procs.wait(timeout=20) == 3
        assert procs.ended is not None and procs.ended.name == "bad"


def test_wait_times_out(fake_prefix: Path) -> None:
    with GraphProcesses(fake_graph(fake("long", "echo_args"))) as procs:
        t0 = time.monotonic()
        assert procs.wait(timeout=0.3) is None
        assert time.monotonic() - t0 < 5


def test_clean_exit_of_an_optional_node_does_not_end_the_graph(fake_prefix: Path) -> None:
    graph = fake_graph(fake("long", "echo_args"), fake("once", "exit_code"))
    with GraphProcesses(graph, env={"DELAY": "0"}) as procs:
        assert procs.wait(timeout=1.0) is None
        assert procs.returncodes()["once"] == 0


def test_stop_escalates_and_kills_grandchildren(fake_prefix: Path) -> None:
    lines: list[str] = []
    graph = fake_graph(fake("stubborn", "stubborn"), fake("spawner", "spawner"))
    procs = GraphProcesses(graph, output=lambda n, line: lines.append(line))
    with procs:
        deadline = time.monotonic() + 10
        while not any(line.startswith("child ") for line in lines) and time.monotonic() < deadline:
            time.sleep(0.05)
        grandchild = int(next(line for line in lines if line.startswith("child ")).split()[1])
        pids = [*procs.pids.values(), grandchild]
        t0 = time.monotonic()
        codes = procs.stop(timeout=0.5)
        assert time.monotonic() - t0 < 10
    assert codes["stubborn"] == -signal.SIGKILL
    assert_gone(pids)
    assert psutil.Process().children(recursive=True) == []


def test_ctrl_c_stops_the_graph(fake_prefix: Path) -> None:
    graph = fake_graph(fake("a", "echo_args"), fake("b", "echo_args"))
    pids: list[int] = []
    with pytest.raises(KeyboardInterrupt), GraphProcesses(graph) as procs:
        pids = list(procs.pids.values())
        raise KeyboardInterrupt
    assert pids and all(code is not None for code in procs.returncodes().values())
    assert_gone(pids)


def test_missing_executable_starts_nothing(fake_prefix: Path) -> None:
    graph = fake_graph(fake("a", "echo_args"), fake("b", "no_such_node_exe"))
    procs = GraphProcesses(graph)
    with pytest.raises(
        TwinloopError, match="executable 'no_such_node_exe' of package 'fake' not found"
    ):
        procs.__enter__()
    assert procs.pids == {}
    assert psutil.Process().children(recursive=True) == []


def test_exit_code_of_a_killed_node() -> None:
    assert NodeExit("a", -signal.SIGTERM, False).exit_code == 128 + signal.SIGTERM
    assert NodeExit("a", 3, False).exit_code == 3


def test_console_scripts_are_installed() -> None:
    try:
        dist = importlib.metadata.distribution("twinloop_ros")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("twinloop_ros is not installed: pip install -e robot_ws/src/twinloop_ros")
    scripts = {e.name: e.value for e in dist.entry_points if e.group == "console_scripts"}
    assert scripts == {
        "twin_node": "twinloop_ros.twin_node:main",
        "scripted_teleop_node": "twinloop_ros.scripted_teleop_node:main",
        "safety_node": "twinloop_ros.safety_node:main",
        "camera_node": "twinloop_ros.camera_node:main",
        "arm_bridge": "twinloop_ros.arm_bridge:main",
        "ros2_control_mock": "twinloop_ros.ros2_control_mock:main",
        "teleop_node": "twinloop_ros.teleop_node:main",
        "recorder_node": "twinloop_ros.recorder_node:main",
        "reward_node": "twinloop_ros.reward_node:main",
        "policy_node": "twinloop_ros.policy_node:main",
        "learner_node": "twinloop_ros.learner_node:main",
        "episode_runner_node": "twinloop_ros.episode_runner_node:main",
        "sysid_node": "twinloop_ros.sysid_node:main",
        "live_view_node": "twinloop_ros.live_view_node:main",
    }
    bindir = Path(sysconfig.get_path("scripts"))
    for name in scripts:
        assert os.access(bindir / name, os.X_OK), f"{name} is not in {bindir}"
