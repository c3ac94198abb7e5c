"""recorder_node over real DDS: crash safety, bad input, a full disk, the lifecycle.

The recorder runs as its own process (GraphProcesses, as `twinloop launch` starts it); a light
synthetic cell (twinloop_ros.synthetic_sensors) publishes cameras, joint states, pose, actions and
episode events. A unique ROS_DOMAIN_ID per session keeps other graphs on the machine out.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 Jazzy wheels (pip install -e .[ros])")

from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from twinloop.datasets.store import EpisodeStore
from twinloop_ros.conversions import episode_event_to_msg, image_to_msg, joint_state_to_msg
from twinloop_ros.node_utils import COMMAND_QOS, SENSOR_QOS
from twinloop_ros.probe import GraphProbe, ros_env

from twinloop.graph import Graph, GraphProcesses, NodeSpec, fastdds_profile

pytestmark = pytest.mark.ros

DOMAIN_ID = 1 + (os.getpid() + 37) % 100  # below 102: DDS ports out of the ephemeral range
W, H = 320, 240  # 230 KB frames: 9 frames per 2 MB chunk, so a torn append reaches the disk


UDP_ONLY_PROFILE = """<?xml version="1.0" encoding="UTF-8" ?>
<profiles xmlns="http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles">
  <transport_descriptors>
    <transport_descriptor><transport_id>udp</transport_id><type>UDPv4</type></transport_descriptor>
  </transport_descriptors>
  <participant profile_name="udp_only" is_default_profile="true">
    <rtps>
      <userTransports><transport_id>udp</transport_id></userTransports>
      <useBuiltinTransports>false</useBuiltinTransports>
    </rtps>
  </participant>
</profiles>
"""


# ----- processes -------------------------------------------------------------------------------
class Lines(list[str]):
    def wait(self, pattern: str, count: int = 1, timeout: float = 60.0) -> list[str]:
        """Block until ``count`` lines match ``pattern``; their text."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            hits = [line for line in list(self) if rx.search(line)]
            if len(hits) >= count:
                return hits
            if time.monotonic() > deadline:
                tail = "\n".join(self[-40:])
                msg = f"timed out after {timeout} s waiting for {count} x {pattern!r}:\n{tail}"
                raise TimeoutError(msg)
            time.sleep(0.05)


@contextlib.contextmanager
def recorder(
    store: Path, *, fsize_limit: int | None = None, env: dict[str, str] | None = None, **params: Any
) -> Iterator[tuple[GraphProcesses, Lines]]:
    parameters = {
        "store_path": str(store),
        "fps": 10.0,
        "cameras": ["color", "wrist"],
        "image_topics": ["/camera/camera/color/image_raw", "/camera/wrist/color/image_raw"],
        "info_topics": ["/camera/camera/color/camera_info", "/camera/wrist/color/camera_info"],
        "depth_topics": ["/camera/camera/aligned_depth_to_color/image_raw", ""],
        "operator": "pytest",
        **params,
    }
    graph = Graph("test", (NodeSpec("recorder", "twinloop_ros", "recorder_node", parameters),))
    lines = Lines()
    procs = GraphProcesses(
        graph, env={**ros_env(DOMAIN_ID), **(env or {})}, output=lambda _n, line: lines.append(line)
    )
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    if fsize_limit is not None:  # the child inherits a small file-size limit: a "full disk"
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, hard))
    try:
        procs.__enter__()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    try:
        yield procs, lines
    finally:
        procs.__exit__(None, None, None)


@contextlib.contextmanager
def synthetic(*args: str) -> Iterator[subprocess.Popen[str]]:
    env = {**os.environ, **ros_env(DOMAIN_ID), "PYTHONUNBUFFERED": "1"}
    profile = fastdds_profile()
    if profile is not None:
        env.setdefault("FASTRTPS_DEFAULT_PROFILES_FILE", str(profile))
    cmd = [sys.executable, "-m", "twinloop_ros.synthetic_sensors", "--width", str(W)]
    cmd += ["--height", str(H), "--cameras", "color", "wrist", "--depth", "--action-hz", "10"]
    proc = subprocess.Popen(
        [*cmd, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def _checksums(store: EpisodeStore, i: int) -> dict[str, float]:
    return {
        k: float(np.asarray(v, dtype=np.float64).sum()) for k, v in store.get_episode(i).items()
    }


# ----- crash safety ------------------------------------------------------------------------------
def test_sigkill_mid_episode_loses_only_that_episode_and_a_restart_appends(tmp_path: Path) -> None:
    store_path = tmp_path / "demos.zarr"
    with synthetic("--episode-s", "2.0", "--gap-s", "0.4"):
        with recorder(store_path) as (procs, lines):
            lines.wait(r"committed episode 1 ", timeout=90)
            lines.wait(r"episode 2 started", timeout=30)
            time.sleep(1.6)  # 16 steps into episode 2: chunks of it are on disk
            pid = procs.pids["recorder"]
            os.kill(pid, signal.SIGKILL)
            procs.wait(timeout=10)
            assert procs.returncodes()["recorder"] == -signal.SIGKILL
        with EpisodeStore.open(store_path, mode="r") as ro:  # read mode: nothing is repaired
            assert ro.n_episodes == 2
            assert ro.array("image_color").shape[0] > ro.n_steps, "no torn append to roll back"
            before = [_checksums(ro, i) for i in range(2)]
            metas = [ro.episode_meta(i) for i in range(2)]
        assert [m["success"] for m in metas] == [True, False]
        assert [m["episode_id"] for m in metas] == [0, 1]
        for m in metas:
            # the last step may go when no message from before the end event is near enough
            # (after_end: the one nearest to it came after the end); nothing else is dropped
            dropped = m.get("dropped_by_reason") or {}
            assert all(reason.endswith(":after_end") for reason in dropped), m
            assert 18 <= m["n_steps"] <= 21 and m["dropped_steps"] <= 1, m
            assert m["operator"] == "pytest" and m["task"] == "synthetic"
            assert set(m["camera_intrinsics"]) == {"color", "wrist"}

        with recorder(store_path) as (procs, lines):
            lines.wait(r"recording into .* \(2 episodes so far\)", timeout=60)
            lines.wait(r"torn append.*rolled back|recovered after a crash", timeout=5)
            hit = lines.wait(r"committed episode 2 ", timeout=60)[0]
            procs.stop()
            assert procs.returncodes() == {"recorder": 0}, "\n".join(lines[-20:])
    assert "0 dropped" in hit, hit
    with EpisodeStore.open(store_path, mode="r") as ro:
        assert ro.n_episodes == 3 and ro.array("image_color").shape[0] == ro.n_steps
        assert [_checksums(ro, i) for i in range(2)] == before, "committed episodes changed"
        ep = ro.get_episode(2)
        assert ep["image_color"].shape[1:] == (H, W, 3) and ep["image_wrist"].shape[1:] == (H, W, 3)
        assert ep["depth_color"].dtype == np.uint16 and "depth_wrist" not in ep
        assert ep["joint_pos"].shape[1] == 9 and ep["action"].shape[1] == 5
        ts = ep["timestamp"]
        np.testing.assert_allclose(np.diff(ts), 0.1, atol=1e-6)
        assert ts[0] > ro.get_episode(1)["timestamp"][-1]
        for key in ("stamp_image_color", "stamp_image_wrist", "stamp_joint_states", "stamp_action"):
            lag = np.abs(ts - ep[key])
            assert lag.max() <= 0.075, (key, lag.max())  # the default tolerance: 0.75 / fps
        assert ro.attrs["camera_intrinsics"]["color"]["width"] == W
    assert psutil.Process().children(recursive=True) == []


# ----- bad input, a full disk, the lifecycle ---------------------------------------------------------
def _change_state(probe: GraphProbe, transition: int) -> bool:
    request = ChangeState.Request()
    request.transition.id = transition
    return bool(probe.call(ChangeState, "/recorder/change_state", request, timeout=30.0).success)


def test_bad_input_and_a_full_disk_are_survived_and_committed_episodes_kept(
    tmp_path: Path,
) -> None:
    store_path = tmp_path / "demos.zarr"
    # One committed episode written offline, in the layout the recorder writes.
    n = 4
    first = {
        "image_color": np.full((n, H, W, 3), 7, np.uint8),
        "image_wrist": np.full((n, H, W, 3), 9, np.uint8),
        "depth_color": np.full((n, H, W), 500, np.uint16),
        "joint_pos": np.zeros((n, 9), np.float32),
        "joint_vel": np.zeros((n, 9), np.float32),
        "ee_pose": np.tile(np.float32([0.5, 0, 0.2, 1, 0, 0, 0]), (n, 1)),
        "action": np.zeros((n, 5), np.float32),
        "timestamp": np.arange(n, dtype=np.float64),
        **{
            f"stamp_{s}": np.arange(n, dtype=np.float64)
            for s in (
                "image_color",
                "image_wrist",
                "depth_color",
                "joint_states",
                "ee_pose",
                "action",
            )
        },
    }
    with EpisodeStore.create(store_path, fps=10.0) as store:
        store.add_episode(first, meta={"task": "offline", "success": True})

    # A file-size limit of 1 MB stands in for a full disk: the image chunks (2 MB) cannot be
    # written. It also rules out Fast DDS's 8 MB shared-memory segment, so the recorder talks UDP.
    udp_only = tmp_path / "udp_only.xml"
    udp_only.write_text(UDP_ONLY_PROFILE)
    with synthetic("--episode-s", "1.5", "--gap-s", "0.3") as syn:
        with (
            recorder(
                store_path,
                autostart=False,
                fsize_limit=1_000_000,
                env={"FASTRTPS_DEFAULT_PROFILES_FILE": str(udp_only)},
            ) as (procs, lines),
            GraphProbe.open("test_recorder_probe", domain_id=DOMAIN_ID) as probe,
        ):
            status: list[String] = []
            probe.node.create_subscription(
                String, "/twinloop/recorder/status", status.append, COMMAND_QOS
            )
            assert _change_state(probe, Transition.TRANSITION_CONFIGURE)
            assert _change_state(probe, Transition.TRANSITION_ACTIVATE)
            lines.wait(r"recording: waiting for episode events")

            image_pub = probe.node.create_publisher(
                Image, "/camera/camera/color/image_raw", SENSOR_QOS
            )
            joints_pub = probe.node.create_publisher(JointState, "/joint_states", SENSOR_QOS)
            event_pub = probe.node.create_publisher(String, "/twinloop/episode", COMMAND_QOS)
            probe.spin_until(lambda: image_pub.get_subscription_count() > 0, 20, "the recorder")
            stamp = probe.node.get_clock().now().to_msg()
            # Small messages (one datagram each): best effort over UDP still loses a few.
            wrong_size = image_to_msg(np.zeros((6, 8, 3), np.uint8), stamp=stamp)
            truncated = image_to_msg(np.zeros((H, W, 3), np.uint8), stamp=stamp)
            truncated.data = truncated.data[:1000]
            bad_step = image_to_msg(np.zeros((6, 8, 3), np.uint8), stamp=stamp)
            bad_step.step = 8  # less than a row of 8 rgb8 pixels
            unknown = image_to_msg(np.zeros((6, 8, 3), np.uint8), stamp=stamp)
            unknown.encoding = "yuv422"
            names = [f"joint{i}" for i in range(1, 8)] + ["finger_joint1", "finger_joint2"]
            nan_joints = joint_state_to_msg(names, [float("nan")] * 9, [0.0] * 9, stamp=stamp)
            for _ in range(3):
                for msg in (wrong_size, truncated, bad_step, unknown, nan_joints):
                    (joints_pub if msg is nan_joints else image_pub).publish(msg)
                    probe.spin_for(0.02)
                event_pub.publish(String(data="not json"))
                event_pub.publish(episode_event_to_msg("success", 99))
                probe.spin_for(0.1)

            # The synthetic cell now runs episodes; their image chunks exceed the file-size limit.
            lines.wait(r"episode discarded, it could not be written", timeout=60)
            probe.spin_until(
                lambda: status and json.loads(status[-1].data)["failed"] >= 1, 15, "status"
            )
            last = json.loads(status[-1].data)
            assert procs.poll() is None, "the recorder must keep running"
            assert last["committed"] == 0 and last["failed"] >= 1
            assert last["episodes_in_store"] == 1
            rejected = last["rejected"]
            assert set(rejected["image_color"]) == {"size", "truncated", "step", "encoding"}
            assert rejected["joint_states"]["nan"] >= 1
            assert rejected["events"] == {"bad": 3}  # reliable
            assert last["out_of_order_events"] >= 3
            assert set(last["queues"]) == {"pending_steps", "writer_backlog", "buffers"}
            joined = "\n".join(lines)
            assert "dropping a image_color message (truncated)" in joined
            assert "out of order: success of episode 99" in joined

            assert _change_state(probe, Transition.TRANSITION_DEACTIVATE)
            assert _change_state(probe, Transition.TRANSITION_CLEANUP)
            lines.wait(r"closed .*demos.zarr \(1 episodes\)", timeout=20)
            assert procs.poll() is None
        assert syn.poll() is None
    with EpisodeStore.open(store_path, mode="a") as store:  # append mode: the repair runs
        assert store.n_episodes == 1 and store.episode_meta(0)["task"] == "offline"
        got = store.get_episode(0)
        for key, value in first.items():
            np.testing.assert_array_equal(got[key], value)
        assert store.array("image_color").shape[0] == n
    assert psutil.Process().children(recursive=True) == []


def test_bad_parameters_and_an_incompatible_store_fail_at_start(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "recorder_node"
    env = {**os.environ, **ros_env(DOMAIN_ID)}

    def run(*params: str) -> subprocess.CompletedProcess[str]:
        args = [str(exe), "--ros-args", *[a for p in params for a in ("-p", p)]]
        return subprocess.run(
            args, capture_output=True, text=True, timeout=60, env=env, check=False
        )

    out = run("fps:=0.0")
    assert out.returncode == 2 and "fps must be in (0, 1000]" in out.stderr
    out = run("cameras:=[a, b]")
    assert out.returncode == 2 and "image_topics needs one topic per camera" in out.stderr
    EpisodeStore.create(tmp_path / "s.zarr", fps=30.0).close()
    out = run(f"store_path:={tmp_path / 's.zarr'}", "fps:=10.0")
    assert out.returncode == 2 and "holds episodes at 30 fps; the recorder runs at 10" in out.stderr
    (tmp_path / "file").write_text("x")
    out = run(f"store_path:={tmp_path / 'file'}")
    assert out.returncode == 2 and "is not an episode store" in out.stderr
    help_out = subprocess.run(
        [str(exe), "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    assert "store_path" in help_out.stdout and "lifecycle" in help_out.stdout


# ----- the demo records ----------------------------------------------------------------------------
def test_demo_records_the_scripted_episodes(tmp_path: Path) -> None:
    env = {**os.environ, **ros_env(DOMAIN_ID)}
    res = subprocess.run(
        [sys.executable, "-m", "twinloop", "demo", "--episodes", "2", "--task", "lift_rod"]
        + ["--runs", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        check=False,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "[demo] recorded 2 episodes" in res.stdout, res.stdout
    records = [
        json.loads(line)
        for line in next(tmp_path.glob("*/episodes.jsonl")).read_text().splitlines()
    ]
    with EpisodeStore.open(next(tmp_path.glob("*/demos.zarr"))) as ro:
        assert ro.n_episodes == 2
        assert ro.attrs["camera_intrinsics"]["color"]["width"] == 320
        for i, rec in enumerate(records):
            meta = ro.episode_meta(i)
            assert meta["task"] == "lift_rod" and meta["success"] is rec["success"] is True
            assert meta["robot_profile"] == "sim" and meta["episode_id"] == rec["episode"]
            # one step per control step: the teleop's steps, give or take the ends
            assert abs(meta["n_steps"] + meta["dropped_steps"] - rec["steps"]) <= 2, (meta, rec)
            assert meta["dropped_steps"] <= 2, meta
        ep = ro.get_episode(0)
        assert ep["image_color"].shape[1:] == (240, 320, 3) and ep["image_color"].std() > 5
        assert ep["joint_pos"].shape[1] == 9 and ep["ee_pose"].shape[1] == 7
        assert np.abs(ep["action"][:, :3]).max() > 0.001, "the expert's actions were recorded"
