"""The live view (twinloop.live and live_view_node): what is logged is read back from the .rrd file.

The core tests log through LiveLogger's save sink and read the recording with rerun's own reader
(rerun.chunk.RrdReader). The node test runs live_view_node as its own process over real DDS on
its own ROS_DOMAIN_ID, plays camera, reward, action, joint and episode topics to it, stops it and
reads its .rrd file.
"""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from twinloop.errors import TwinloopError
from twinloop.live import LiveConfig, LiveLogger, episode_event_text
from twinloop.topics import ACTION_NAMES

pytest.importorskip("rerun", reason="needs rerun-sdk (pip install -e .[live])")

import pyarrow as pa
from rerun.chunk import RrdReader

T0 = 1_700_000_000_000_000_000  # robot time of the first message, ns
MS = 1_000_000


def read_rrd(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Rows per entity path, in robot-time order (static rows first, with time None)."""
    rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for chunk in RrdReader(path).stream().to_chunks():
        batch = chunk.to_record_batch()
        names = [n for n in batch.schema.names if n not in ("rerun.controls.RowId", "log_time")]
        times: list[int | None] = [None] * batch.num_rows
        if "robot_time" in names:
            names.remove("robot_time")
            times = batch.column("robot_time").cast(pa.int64()).to_pylist()
        for i in range(batch.num_rows):
            row = {n: batch.column(n)[i].as_py() for n in names}
            rows[chunk.entity_path].append({"time": times[i], **row})
    for entity_rows in rows.values():
        entity_rows.sort(key=lambda r: -1 if r["time"] is None else r["time"])
    return dict(rows)


def timed(rows: list[dict[str, Any]], column: str) -> list[tuple[int, Any]]:
    """(robot time, first value of ``column``) of the rows that have it."""
    return [(r["time"], r[column][0]) for r in rows if r["time"] is not None and r.get(column)]


def frame(value: int, shape: tuple[int, int] = (48, 64)) -> np.ndarray:
    img = np.zeros((*shape, 3), np.uint8)
    img[..., 0] = value  # red varies by frame; green is a gradient, blue a constant
    img[..., 1] = np.linspace(0, 255, shape[1], dtype=np.uint8)[None, :]
    img[..., 2] = 200
    return img


# ----- core: LiveLogger -> .rrd ---------------------------------------------------------------
def test_frames_rewards_actions_and_events_are_in_the_recording(tmp_path: Path) -> None:
    path = tmp_path / "live.rrd"
    cfg = LiveConfig(sink="save", path=str(path), max_fps=10.0, max_width=32)
    with LiveLogger(cfg) as live:
        logged = [live.log_frame("color", T0 + i * 50 * MS, frame(10 * i)) for i in range(6)]
        assert live.log_frame("wrist", T0 + 10 * MS, frame(99, (20, 30)))  # under max_width
        assert live.log_frame("color", T0 - 1000 * MS, frame(77))  # clock went back: a restart
        for i in range(3):
            live.log_reward(T0 + i * 100 * MS, 0.25 * i, i == 2, camera="color")
        live.log_action(T0 + 5 * MS, [0.01, -0.02, 0.0, 0.1, 1.0], source="action")
        live.log_action(T0 + 5 * MS, [0.01, -0.01, 0.0, 0.1, 1.0], source="safe_action")
        live.log_joint_state(T0 + 7 * MS, ["j1", "j2"], [0.5, -0.25])
        live.log_episode_event(T0, {"event": "start", "episode": 3, "task": "push_cube"})
        live.log_episode_event(T0 + 300 * MS, {"event": "failure", "episode": 3})
        stats = live.stats()
    assert logged == [True, False, True, False, True, False]  # 10 fps cap on 20 fps stamps
    assert stats == {
        "actions/action": 1,
        "actions/safe_action": 1,
        "events": 2,
        "frame_bytes/color": 4 * 32 * 24 * 3,
        "frame_bytes/wrist": 20 * 30 * 3,
        "frames/color": 4,
        "frames/wrist": 1,
        "frames_skipped/color": 3,
        "joint_states": 1,
        "rewards": 3,
    }
    rows = read_rrd(path)
    assert {
        "/camera/color",
        "/camera/wrist",
        "/reward/color/value",
        "/reward/color/success",
        "/action/action",
        "/action/safe_action",
        "/joints",
        "/events",
    } <= set(rows)

    color = rows["/camera/color"]
    assert [r["time"] for r in color] == [T0 - 1000 * MS, T0, T0 + 100 * MS, T0 + 200 * MS]
    fmt = color[1]["Image:format"][0]
    assert (fmt["width"], fmt["height"]) == (32, 24)  # downscaled, aspect kept
    pixels = np.array(color[2]["Image:buffer"][0], np.uint8).reshape(24, 32, 3)
    assert (pixels[..., 0] == 20).all() and (pixels[..., 2] == 200).all()  # frame 2, RGB order
    assert pixels[0, 0, 1] < pixels[0, -1, 1]  # the green gradient survives the downscale
    wrist = rows["/camera/wrist"][0]
    assert wrist["time"] == T0 + 10 * MS
    assert (wrist["Image:format"][0]["width"], wrist["Image:format"][0]["height"]) == (30, 20)

    values = timed(rows["/reward/color/value"], "Scalars:scalars")
    assert values == [(T0, 0.0), (T0 + 100 * MS, 0.25), (T0 + 200 * MS, 0.5)]
    success = timed(rows["/reward/color/success"], "Scalars:scalars")
    assert [v for _, v in success] == [0.0, 0.0, 1.0]

    action = rows["/action/safe_action"]
    assert action[0]["time"] is None and action[0]["SeriesLines:names"] == list(ACTION_NAMES)
    assert action[1]["time"] == T0 + 5 * MS
    assert action[1]["Scalars:scalars"] == pytest.approx([0.01, -0.01, 0.0, 0.1, 1.0])
    assert rows["/action/action"][1]["Scalars:scalars"][1] == pytest.approx(-0.02)
    joints = rows["/joints"]
    assert joints[0]["SeriesLines:names"] == ["j1", "j2"]
    assert joints[1]["Scalars:scalars"] == [0.5, -0.25]

    events = [(r["time"], r["TextLog:text"][0], r["TextLog:level"][0]) for r in rows["/events"]]
    assert events == [
        (T0, "episode 3: start (task=push_cube)", "INFO"),
        (T0 + 300 * MS, "episode 3: failure", "WARN"),
    ]


def test_the_rate_cap_keeps_max_fps_of_a_faster_jittery_camera(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    img = frame(1, (4, 4))
    for fps, cap, want in (
        (15.0, 10.0, 10.0),
        (30.0, 10.0, 10.0),
        (10.0, 10.0, 10.0),
        (9.0, 10.0, 9.0),
    ):
        cfg = LiveConfig(sink="save", path=str(tmp_path / f"{fps}.rrd"), max_fps=cap)
        with LiveLogger(cfg) as live:
            stamps = T0 + (np.arange(300) * 1e9 / fps + rng.normal(0.0, 3e6, 300)).astype(np.int64)
            logged = sum(live.log_frame("color", int(t), img) for t in stamps)
        assert logged / (300 / fps) == pytest.approx(want, abs=0.05), (fps, cap)


def test_jpeg_frames_are_smaller_and_decode_to_the_frame(tmp_path: Path) -> None:
    cv2 = pytest.importorskip("cv2")
    path = tmp_path / "jpeg.rrd"
    img = frame(120, (96, 128))
    with LiveLogger(LiveConfig(sink="save", path=str(path), jpeg_quality=90, max_fps=0)) as live:
        live.log_frame("color", T0, img)
        live.log_frame("color", T0 + MS, img)  # max_fps 0: no cap
        stats = live.stats()
    assert stats["frames/color"] == 2
    assert stats["frame_bytes/color"] < 2 * img.nbytes // 5
    rows = read_rrd(path)["/camera/color"]
    assert [r["time"] for r in rows] == [T0, T0 + MS]
    assert rows[0]["EncodedImage:media_type"] == ["image/jpeg"]
    blob = np.array(rows[0]["EncodedImage:blob"][0], np.uint8)
    decoded = cv2.cvtColor(cv2.imdecode(blob, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert decoded.shape == img.shape
    assert np.abs(decoded.astype(int) - img.astype(int)).mean() < 3.0


def test_bad_inputs_are_refused_with_their_name(tmp_path: Path) -> None:
    path = tmp_path / "bad.rrd"
    with LiveLogger(LiveConfig(sink="save", path=str(path))) as live:
        with pytest.raises(TwinloopError, match=r"\(H, W, 3\) uint8 RGB, got \(4, 4\) float64"):
            live.log_frame("color", T0, np.zeros((4, 4)))
        with pytest.raises(TwinloopError, match="camera 'a/b' must be letters"):
            live.log_frame("a/b", T0, frame(1))
        with pytest.raises(TwinloopError, match="stamp must be integer nanoseconds >= 0, got -1"):
            live.log_reward(-1, 0.5, False)
        with pytest.raises(TwinloopError, match=r"action of action: 3 values but 5 names"):
            live.log_action(T0, [0.0, 0.0, 0.0])
        with pytest.raises(TwinloopError, match="reward must be a number, got 'high'"):
            live.log_reward(T0, "high", False)  # type: ignore[arg-type]
        assert live.stats() == {}
    with pytest.raises(TwinloopError, match=r"bad\.rrd exists"):
        LiveLogger(LiveConfig(sink="save", path=str(path)))
    LiveLogger(LiveConfig(sink="save", path=str(path), overwrite=True)).close()
    with pytest.raises(TwinloopError, match=r"unknown live view sink 'tv'. Available: \['spawn'"):
        LiveConfig(sink="tv")
    with pytest.raises(TwinloopError, match="the save sink needs path"):
        LiveConfig(sink="save")
    with pytest.raises(TwinloopError, match=r"jpeg_quality must be in 1\.\.100"):
        LiveConfig(jpeg_quality=101)
    with pytest.raises(TwinloopError, match="max_fps must be >= 0"):
        LiveConfig(max_fps=-1.0)


def test_episode_event_text() -> None:
    payload = {"event": "success", "episode": 2, "steps": 40, "task": "open drawer"}
    assert episode_event_text(payload) == "episode 2: success (steps=40, task=open drawer)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_sink_listens_for_viewers() -> None:
    port = _free_port()
    live = LiveLogger(LiveConfig(sink="serve", grpc_port=port))
    try:
        assert live.url == f"rerun+http://127.0.0.1:{port}/proxy"
        with socket.create_connection(("127.0.0.1", port), timeout=2.0):
            pass  # a viewer can connect
        live.log_reward(T0, 0.5, True)
    finally:
        live.close()


def test_without_rerun_the_error_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "rerun", None)  # `import rerun` raises ImportError
    path = tmp_path / "live.rrd"
    with pytest.raises(TwinloopError, match=r"rerun-sdk.*pip install 'twinloop\[live\]'"):
        LiveLogger(LiveConfig(sink="save", path=str(path)))
    assert not path.exists()


# ----- the node over real DDS -----------------------------------------------------------------
DOMAIN_ID = 1 + (os.getpid() + 67) % 100  # below 102: DDS ports out of the ephemeral range
TOPICS = {"color": "/camera/camera/color/image_raw", "wrist": "/camera/wrist/color/image_raw"}


@pytest.fixture
def ros() -> Iterator[Any]:
    """The ROS modules the node test needs (skips without the ROS 2 wheels)."""
    pytest.importorskip("rclpy", reason="needs the ROS 2 Jazzy wheels (pip install -e .[ros])")
    import twinloop_ros.conversions as conversions
    import twinloop_ros.node_utils as node_utils
    import twinloop_ros.probe as probe

    yield conversions, node_utils, probe


def _node_command(params: dict[str, Any]) -> list[str]:
    from twinloop.graph import NodeSpec, find_executable

    spec = NodeSpec("live_view", "twinloop_ros", "live_view_node", params)
    return [str(find_executable(spec)), *spec.ros_args()]


@pytest.mark.ros
def test_node_logs_the_graph_into_an_rrd_file(tmp_path: Path, ros: Any) -> None:
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import String

    from twinloop.graph import Graph, GraphProcesses, NodeSpec

    conv, utils, probe_mod = ros
    path = tmp_path / "node.rrd"
    params: dict[str, Any] = {
        "sink": "save",
        "path": str(path),
        "cameras": list(TOPICS),
        "image_topics": list(TOPICS.values()),
        "max_fps": 0.0,
        "max_width": 0,
        "report_period_s": 0.3,
    }
    graph = Graph("test", (NodeSpec("live_view", "twinloop_ros", "live_view_node", params),))
    env = probe_mod.ros_env(DOMAIN_ID)
    lines: list[str] = []
    with GraphProcesses(graph, env=env, output=lambda _n, line: lines.append(line)) as procs:
        with pytest.MonkeyPatch.context() as mp:
            for key, value in env.items():
                mp.setenv(key, value)
            with probe_mod.GraphProbe.open("live_test", domain_id=DOMAIN_ID) as probe:
                node = probe.node
                images = {
                    c: node.create_publisher(Image, t, utils.SENSOR_QOS) for c, t in TOPICS.items()
                }
                reward = node.create_publisher(JointState, "/twinloop/reward", utils.COMMAND_QOS)
                safe = node.create_publisher(JointState, "/twinloop/safe_action", utils.COMMAND_QOS)
                joints = node.create_publisher(JointState, "/joint_states", utils.SENSOR_QOS)
                episode = node.create_publisher(String, "/twinloop/episode", utils.COMMAND_QOS)
                pubs = [*images.values(), reward, safe, joints, episode]
                probe.spin_until(
                    lambda: all(p.get_subscription_count() > 0 for p in pubs),
                    15.0,
                    "the live view's subscriptions",
                )
                stamp = conv.stamp_from_ns
                episode.publish(conv.episode_event_to_msg("start", 0, task="push_cube"))
                probe.spin_for(0.05)
                for i in range(4):
                    t = stamp(T0 + i * 100 * MS)
                    images["color"].publish(conv.image_to_msg(frame(10 * i), stamp=t))
                    reward_msg = conv.joint_state_to_msg(
                        ["reward", "success"], [0.1 * i, float(i == 3)], stamp=t
                    )
                    reward_msg.header.frame_id = "color"
                    reward.publish(reward_msg)
                    safe.publish(conv.action_to_msg([0.01 * i, 0, 0, 0, 1], stamp=t))
                    joints.publish(conv.joint_state_to_msg(["j1"], [0.1 * i], stamp=t))
                    probe.spin_for(0.1)
                images["wrist"].publish(
                    conv.image_to_msg(frame(5, (20, 30)), stamp=stamp(T0 + 50 * MS))
                )
                # bad messages: counted and dropped, the node goes on
                depth = conv.image_to_msg(np.zeros((8, 8), np.float32), stamp=stamp(T0))
                images["color"].publish(depth)
                probe.spin_for(0.05)
                images["color"].publish(conv.image_to_msg(frame(1)))  # unstamped
                probe.spin_for(0.05)
                reward.publish(conv.joint_state_to_msg(["r"], [1.0], stamp=stamp(T0)))
                episode.publish(String(data="not json"))
                probe.spin_for(0.05)
                episode.publish(conv.episode_event_to_msg("success", 0))

                want = {
                    "frames/color": 4,
                    "frames/wrist": 1,
                    "rewards": 4,
                    "actions/safe_action": 4,
                    "joint_states": 4,
                    "events": 2,
                    "rejected/camera/color/encoding": 1,
                    "rejected/camera/color/unstamped": 1,
                    "rejected/reward/names": 1,
                    "rejected/episode/payload": 1,
                }

                def counts() -> dict[str, int]:
                    reports = [line for line in lines if "live view counts: " in line]
                    if not reports:
                        return {}
                    return dict(ast.literal_eval(reports[-1].split("live view counts: ", 1)[1]))

                probe.spin_until(
                    lambda: all(counts().get(k) == n for k, n in want.items()),
                    10.0,
                    f"the node's counts to reach {want} (last: {counts()})",
                )
                assert procs.running() == ["live_view"]
        codes = procs.stop()
    assert codes == {"live_view": 0}
    assert any("dropping a camera/color message (encoding)" in line for line in lines)

    rows = read_rrd(path)
    color = rows["/camera/color"]
    assert [r["time"] for r in color] == [T0 + i * 100 * MS for i in range(4)]
    pixels = np.array(color[3]["Image:buffer"][0], np.uint8).reshape(48, 64, 3)
    assert np.array_equal(pixels, frame(30))
    assert [r["time"] for r in rows["/camera/wrist"]] == [T0 + 50 * MS]
    values = timed(rows["/reward/color/value"], "Scalars:scalars")
    assert values == [(T0 + i * 100 * MS, pytest.approx(0.1 * i)) for i in range(4)]
    success = timed(rows["/reward/color/success"], "Scalars:scalars")
    assert [v for _, v in success] == [0.0, 0.0, 0.0, 1.0]
    actions = timed(rows["/action/safe_action"], "Scalars:scalars")
    assert actions == [(T0 + i * 100 * MS, pytest.approx(0.01 * i)) for i in range(4)]
    assert len(timed(rows["/joints"], "Scalars:scalars")) == 4
    texts = [r["TextLog:text"][0] for r in rows["/events"]]
    assert texts == ["episode 0: start (task=push_cube)", "episode 0: success"]


@pytest.mark.ros
def test_node_switched_off_exits_cleanly_and_bad_params_exit_2(tmp_path: Path, ros: Any) -> None:
    env = {**os.environ, **ros[2].ros_env(DOMAIN_ID)}
    off = subprocess.run(
        _node_command({"enabled": False}), env=env, capture_output=True, text=True, timeout=30
    )
    assert off.returncode == 0, off.stderr
    assert "switched off" in off.stdout + off.stderr
    bad = subprocess.run(
        _node_command({"sink": "save"}), env=env, capture_output=True, text=True, timeout=30
    )
    assert bad.returncode == 2
    assert "the save sink needs path" in bad.stdout + bad.stderr
