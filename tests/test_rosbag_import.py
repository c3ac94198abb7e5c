"""rosbag2 -> EpisodeStore: alignment, message decoding, round trips (MCAP and sqlite3), bad bags.

Bags are written here with ``rosbags`` (no ROS install) in the realsense-ros / ros2_control
topic names, with known stamps and synthetic frames whose pixels encode the frame number.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from twinloop.datasets.align import align_nearest, nearest_indices, sample_grid
from twinloop.datasets.errors import DatasetError
from twinloop.datasets.rosbag_decode import (
    decode_color,
    decode_depth,
    header_stamp_ns,
    intrinsics_from_info,
    joint_state_values,
)
from twinloop.datasets.rosbag_import import (
    DEFAULT_TOPICS,
    RosbagImportConfig,
    find_bags,
    import_rosbags,
    parse_topic_overrides,
)
from twinloop.datasets.store import EpisodeStore

from twinloop.topics import ACTION_NAMES

TS = get_typestore(Stores.ROS2_JAZZY)
T = TS.types
T0 = 1_700_000_000_000_000_000  # ns, a calendar date
MS = 1_000_000
H, W = 12, 16
JOINTS = ("joint1", "joint2", "joint3", "finger_joint1")
IMAGE_TOPIC = DEFAULT_TOPICS["image_color"]
DEPTH_TOPIC = DEFAULT_TOPICS["depth_color"]
INFO_TOPIC = DEFAULT_TOPICS["info_color"]


# ----- message builders ------------------------------------------------------------------------
def header(ns: int, frame_id: str = "") -> Any:
    return T["std_msgs/msg/Header"](
        stamp=T["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9),
        frame_id=frame_id,
    )


def color_frame(k: int) -> np.ndarray:
    """A frame whose pixels encode its number k (exactly recoverable)."""
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.stack([np.full((H, W), k % 256), (yy * 16 + k) % 256, (xx * 8 + 3 * k) % 256], -1)
    return img.astype(np.uint8)


def depth_frame(k: int) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    return (1000 + 10 * k + yy * W + xx).astype(np.uint16)


def image_msg(
    ns: int,
    img: np.ndarray,
    *,
    encoding: str | None = None,
    step: int | None = None,
    data: np.ndarray | None = None,
    bigendian: bool = False,
) -> Any:
    img = np.ascontiguousarray(img)
    if encoding is None:
        encoding = "rgb8" if img.ndim == 3 else "16UC1"
    if bigendian:
        img = img.byteswap()
    raw = img.view(np.uint8).reshape(-1) if data is None else data
    return T["sensor_msgs/msg/Image"](
        header=header(ns, "camera_color_optical_frame"),
        height=img.shape[0],
        width=img.shape[1],
        encoding=encoding,
        is_bigendian=int(bigendian),
        step=step if step is not None else img.strides[0],
        data=np.asarray(raw, dtype=np.uint8),
    )


def info_msg(ns: int, width: int = W, height: int = H) -> Any:
    fx, fy, cx, cy = 20.0, 21.0, (width - 1) / 2, (height - 1) / 2
    return T["sensor_msgs/msg/CameraInfo"](
        header=header(ns, "camera_color_optical_frame"),
        height=height,
        width=width,
        distortion_model="plumb_bob",
        d=np.array([0.1, -0.02, 0.0, 0.0, 0.001]),
        k=np.array([fx, 0, cx, 0, fy, cy, 0, 0, 1.0]),
        r=np.eye(3).reshape(-1),
        p=np.array([fx, 0, cx, 0, 0, fy, cy, 0, 0, 0, 1.0, 0]),
        binning_x=0,
        binning_y=0,
        roi=T["sensor_msgs/msg/RegionOfInterest"](
            x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
        ),
    )


def joint_values(ns: int) -> tuple[np.ndarray, np.ndarray]:
    t = (ns - T0) / 1e9
    pos = np.array([np.sin(t), np.cos(t), 0.1 * t, 0.04 - 0.01 * t])
    return pos, np.array([np.cos(t), -np.sin(t), 0.1, -0.01])


def joint_msg(ns: int, names: tuple[str, ...] = JOINTS) -> Any:
    pos, vel = joint_values(ns)
    order = [JOINTS.index(n) for n in names]
    return T["sensor_msgs/msg/JointState"](
        header=header(ns),
        name=list(names),
        position=pos[order],
        velocity=vel[order],
        effort=np.zeros(0),
    )


def pose_values(ns: int) -> np.ndarray:
    t = (ns - T0) / 1e9
    return np.array([0.5 + 0.01 * t, -0.1 * t, 0.2, 0.0, 1.0, 0.0, 0.0])


def pose_msg(ns: int) -> Any:
    v = pose_values(ns)
    P = T["geometry_msgs/msg/Pose"]
    return T["geometry_msgs/msg/PoseStamped"](
        header=header(ns, "base_link"),
        pose=P(
            position=T["geometry_msgs/msg/Point"](x=v[0], y=v[1], z=v[2]),
            orientation=T["geometry_msgs/msg/Quaternion"](x=v[4], y=v[5], z=v[6], w=v[3]),
        ),
    )


def action_values(ns: int) -> np.ndarray:
    t = (ns - T0) / 1e9
    return np.array([0.01 * t, -0.01, 0.002, 0.05, 1.0 if t > 0.5 else -1.0])


def action_msg(ns: int) -> Any:
    names = list(ACTION_NAMES[::-1])  # any order is fine
    vals = dict(zip(ACTION_NAMES, action_values(ns), strict=True))
    return T["sensor_msgs/msg/JointState"](
        header=header(ns),
        name=names,
        position=np.array([vals[n] for n in names]),
        velocity=np.zeros(0),
        effort=np.zeros(0),
    )


def event_msg(event: str) -> Any:
    return T["std_msgs/msg/String"](data=json.dumps({"event": event, "episode": 0}))


# ----- a recording -------------------------------------------------------------------------------
@dataclass
class Recording:
    """Messages on topics, with bag (receive) times 2 ms after their stamps."""

    records: list[tuple[str, str, int, Any]] = field(default_factory=list)
    frame_stamps: list[int] = field(default_factory=list)

    def add(self, topic: str, msgtype: str, ns: int, msg: Any) -> None:
        self.records.append((topic, msgtype, ns + 2 * MS, msg))


def make_recording(
    *,
    seconds: float = 1.0,
    cam_hz: float = 30.0,
    js_hz: float = 100.0,
    act_hz: float = 10.0,
    js_gap: tuple[float, float] | None = None,
    image_override: Callable[[int, int], Any] | None = None,
    depth: bool = True,
    events: tuple[str, ...] = (),
) -> Recording:
    rec = Recording()
    n_frames = round(seconds * cam_hz)
    rec.add(INFO_TOPIC, "sensor_msgs/msg/CameraInfo", T0, info_msg(T0))
    for k in range(n_frames):
        ns = T0 + round(k * 1e9 / cam_hz)
        rec.frame_stamps.append(ns)
        msg = image_override(k, ns) if image_override else None
        rec.add(IMAGE_TOPIC, "sensor_msgs/msg/Image", ns, msg or image_msg(ns, color_frame(k)))
        if depth:
            rec.add(DEPTH_TOPIC, "sensor_msgs/msg/Image", ns, image_msg(ns, depth_frame(k)))
    # joint states from 50 ms before the first frame to the end, 1 ms off the grid
    for j in range(-5, round(seconds * js_hz)):
        ns = T0 + round(j * 1e9 / js_hz) + MS
        if js_gap and js_gap[0] <= (ns - T0) / 1e9 <= js_gap[1]:
            continue
        rec.add("/joint_states", "sensor_msgs/msg/JointState", ns, joint_msg(ns))
        rec.add("/twinloop/ee_pose", "geometry_msgs/msg/PoseStamped", ns, pose_msg(ns))
    for j in range(round(seconds * act_hz)):
        ns = T0 + round(j * 1e9 / act_hz) + 7 * MS
        rec.add("/twinloop/action", "sensor_msgs/msg/JointState", ns, action_msg(ns))
    for e in events:
        rec.add("/twinloop/episode", "std_msgs/msg/String", T0 + 500 * MS, event_msg(e))
    return rec


def write_bag(path: Path, rec: Recording, storage: str = "mcap") -> Path:
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    conns: dict[str, Any] = {}
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        for topic, msgtype, bag_ns, msg in sorted(rec.records, key=lambda r: r[2]):
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=TS)
            writer.write(conns[topic], bag_ns, TS.serialize_cdr(msg, msgtype))
    return path


def storage_file(bag: Path) -> Path:
    return next(p for p in bag.iterdir() if p.suffix in (".mcap", ".db3"))


# ----- alignment -------------------------------------------------------------------------------
def test_nearest_indices_picks_nearest_within_tolerance() -> None:
    stamps = np.array([0, 10, 20, 40])
    idx, ok = nearest_indices(stamps, np.array([-3, 4, 5, 6, 29, 31, 70]), tolerance=5)
    assert idx.tolist() == [0, 0, 0, 1, 2, 3, 3]  # tie at 5 goes to the earlier stamp
    assert ok.tolist() == [True, True, True, True, False, False, False]


def test_nearest_indices_previous_mode_is_causal() -> None:
    stamps = np.array([0, 10, 20])
    idx, ok = nearest_indices(stamps, np.array([-1, 9, 10, 35]), 10, mode="previous")
    assert idx.tolist() == [-1, 0, 1, 2]
    assert ok.tolist() == [False, True, True, False]


def test_align_drops_a_step_missed_by_any_source_and_counts_it() -> None:
    al = align_nearest(
        {"cam": np.array([0, 100, 200, 300]), "js": np.array([0, 95, 290])},
        np.array([0, 100, 200, 300]),
        tolerance={"cam": 10, "js": 10},
    )
    assert al.valid.tolist() == [True, True, False, True]
    assert al.dropped_by() == {"cam": 0, "js": 1}
    assert al.n_dropped == 1
    assert al.skew({"cam": np.array([0, 100, 200, 300]), "js": np.array([0, 95, 290])})[
        "js"
    ].tolist() == [0, 5, 10]


def test_align_rejects_unsorted_stamps_and_empty_sources() -> None:
    with pytest.raises(ValueError, match="sorted"):
        align_nearest({"cam": np.array([0, 20, 10])}, np.array([0]), 1)
    with pytest.raises(ValueError, match="at least one source"):
        align_nearest({}, np.array([0]), 1)
    idx, ok = nearest_indices(np.array([], dtype=np.int64), np.array([1, 2]), 5)
    assert idx.tolist() == [-1, -1] and not ok.any()


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(-1000, 1000), min_size=1, max_size=30),
    st.lists(st.integers(-1200, 1200), min_size=1, max_size=30),
    st.integers(0, 300),
)
def test_nearest_indices_matches_brute_force(stamps: list[int], times: list[int], tol: int) -> None:
    s, t = np.array(sorted(stamps)), np.array(times)
    idx, ok = nearest_indices(s, t, tol)
    for i, ti in enumerate(t):
        d = np.abs(s - ti)
        best = int(np.flatnonzero(d == d.min())[0])  # ties: the earliest
        assert d[idx[i]] == d.min()
        assert s[idx[i]] == s[best]
        assert ok[i] == (d.min() <= tol)


def test_sample_grid_is_exact_in_nanoseconds() -> None:
    grid = sample_grid(T0, T0 + 10**9, 30.0)
    assert grid.size == 31 and grid[0] == T0 and grid[-1] == T0 + 10**9
    assert grid[3] == T0 + 100_000_000
    assert sample_grid(5, 4, 10.0).size == 0


# ----- decoding --------------------------------------------------------------------------------
def test_decode_color_encodings_and_padded_rows() -> None:
    img = color_frame(7)
    assert np.array_equal(decode_color(image_msg(0, img)), img)
    assert np.array_equal(decode_color(image_msg(0, img[..., ::-1].copy(), encoding="bgr8")), img)
    mono = img[..., 0].copy()
    assert np.array_equal(
        decode_color(image_msg(0, mono, encoding="mono8")), np.stack([mono] * 3, -1)
    )
    padded = np.zeros((H, W * 3 + 4), dtype=np.uint8)
    padded[:, : W * 3] = img.reshape(H, -1)
    msg = image_msg(0, img, step=W * 3 + 4, data=padded.reshape(-1))
    assert np.array_equal(decode_color(msg), img)


def test_decode_depth_little_and_big_endian() -> None:
    d = depth_frame(3)
    assert np.array_equal(decode_depth(image_msg(0, d)), d)
    assert np.array_equal(decode_depth(image_msg(0, d, bigendian=True)), d)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"encoding": "yuv422"}, "unsupported colour image encoding 'yuv422'"),
        ({"step": W * 3 - 1}, "step .* disagrees with encoding rgb8"),
        ({"data": np.zeros(W * 3 * H - 5, np.uint8)}, "truncated"),
        ({"data": np.zeros(W * 3 * H + 5, np.uint8)}, "size and step disagree"),
        ({"encoding": "16UC1"}, "unsupported colour image encoding '16UC1'"),
    ],
)
def test_decode_color_rejects_bad_messages(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(DatasetError, match=match):
        decode_color(image_msg(0, color_frame(0), **kwargs))


def test_header_stamp_from_serialized_bytes() -> None:
    ns = T0 + 123_456_789
    raw = TS.serialize_cdr(image_msg(ns, color_frame(0)), "sensor_msgs/msg/Image")
    assert header_stamp_ns(raw) == ns
    raw_js = TS.serialize_cdr(joint_msg(ns), "sensor_msgs/msg/JointState")
    assert header_stamp_ns(raw_js) == ns


def test_joint_state_reordered_by_name_and_intrinsics() -> None:
    ns = T0 + 250 * MS
    pos, vel = joint_state_values(joint_msg(ns, names=JOINTS[::-1]), JOINTS)
    want_pos, want_vel = joint_values(ns)
    assert np.allclose(pos, want_pos) and vel is not None and np.allclose(vel, want_vel)
    with pytest.raises(DatasetError, match="differ from the episode's joints"):
        joint_state_values(joint_msg(ns, names=JOINTS[:3]), JOINTS)
    intr = intrinsics_from_info(info_msg(0))
    assert intr["width"] == W and intr["fx"] == 20.0 and intr["ppy"] == (H - 1) / 2
    assert intr["model"] == "plumb_bob" and len(intr["coeffs"]) == 5


# ----- round trips -----------------------------------------------------------------------------
@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_round_trip_frames_stamps_and_joints(tmp_path: Path, storage: str) -> None:
    rec = make_recording(seconds=1.0, events=("success",))
    bag = write_bag(tmp_path / "ep0", rec, storage)
    report = import_rosbags([bag], tmp_path / "store", RosbagImportConfig(fps=10.0, task="push"))
    assert report.failed == [] and len(report.imported) == 1
    with EpisodeStore.open(tmp_path / "store") as store:
        assert store.n_episodes == 1
        assert set(store.keys) == {
            "image_color",
            "depth_color",
            "joint_pos",
            "joint_vel",
            "ee_pose",
            "action",
            "timestamp",
        }
        ep = store.get_episode(0)
        meta = store.episode_meta(0)
        attrs = store.attrs
    # 30 Hz camera sampled at 10 Hz from the first frame: frames 0, 3, ..., 27 exactly
    n = len(ep["timestamp"])
    assert n == 10 and meta["dropped_steps"] == 0 and meta["n_steps"] == 10
    stamps = np.array(rec.frame_stamps[::3])
    assert np.array_equal(np.round(ep["timestamp"] * 1e9 - T0), stamps - T0)
    for i in range(n):
        assert np.array_equal(ep["image_color"][i], color_frame(3 * i))
        assert np.array_equal(ep["depth_color"][i], depth_frame(3 * i))
        # joint states at 100 Hz, 1 ms off the grid: the nearest is 1 ms after the step time
        js_ns = int(stamps[i]) + MS
        pos, vel = joint_values(js_ns)
        assert np.allclose(ep["joint_pos"][i], pos, atol=1e-6)
        assert np.allclose(ep["joint_vel"][i], vel, atol=1e-6)
        assert np.allclose(ep["ee_pose"][i], pose_values(js_ns), atol=1e-6)
        # actions at 10 Hz, 7 ms after the step time
        assert np.allclose(ep["action"][i], action_values(int(stamps[i]) + 7 * MS), atol=1e-6)
    assert ep["image_color"].dtype == np.uint8 and ep["depth_color"].dtype == np.uint16
    assert ep["joint_pos"].dtype == np.float32 and ep["timestamp"].dtype == np.float64
    intr = attrs["camera_intrinsics"]["color"]
    assert (intr["width"], intr["height"], intr["fx"], intr["fy"]) == (W, H, 20.0, 21.0)
    assert intr["coeffs"] == [0.1, -0.02, 0.0, 0.0, 0.001]
    assert attrs["fps"] == 10.0
    assert meta["success"] is True and meta["success_source"] == "episode_event"
    assert meta["source"] == str(bag) and meta["storage"] == storage
    assert meta["joint_names"] == list(JOINTS) and meta["task"] == "push"
    assert meta["max_skew_ms"]["image_color"] == 0.0
    assert meta["max_skew_ms"]["joint_states"] == pytest.approx(1.0)


def test_missing_inputs_drop_steps_never_fill(tmp_path: Path) -> None:
    # no joint states between 0.28 s and 0.52 s: steps at 0.3, 0.4 and 0.5 s have none within 50 ms
    rec = make_recording(seconds=1.0, js_gap=(0.25, 0.55))
    bag = write_bag(tmp_path / "gap", rec, "mcap")
    import_rosbags([bag], tmp_path / "store", RosbagImportConfig(fps=10.0, tolerance=0.02))
    with EpisodeStore.open(tmp_path / "store") as store:
        ep, meta = store.get_episode(0), store.episode_meta(0)
    kept_ms = np.round((ep["timestamp"] * 1e9 - T0) / MS).astype(int).tolist()
    assert kept_ms == [0, 100, 200, 600, 700, 800, 900]
    assert meta["dropped_steps"] == 3 and meta["dropped_by_source"]["joint_states"] == 3
    assert meta["success"] is False and meta["success_source"] == "unknown"
    # the frames stay those of the kept times (nothing shifted into the gap)
    assert np.array_equal(ep["image_color"][3], color_frame(18))


def test_topics_are_configurable_and_can_be_switched_off(tmp_path: Path) -> None:
    rec = make_recording(seconds=0.5, depth=False)
    rec.records = [
        (r[0].replace("/camera/camera/", "/cam/"), *r[1:]) if r[0].startswith("/camera") else r
        for r in rec.records
    ]
    bag = write_bag(tmp_path / "cam", rec, "sqlite3")
    topics = parse_topic_overrides(
        [
            "image_color=/cam/color/image_raw",
            "info_color=/cam/color/camera_info",
            "depth_color=",
            "ee_pose=",
        ]
    )
    report = import_rosbags(
        [bag], tmp_path / "store", RosbagImportConfig(fps=5.0, topics=topics, tolerance=0.05)
    )
    assert report.failed == []
    with EpisodeStore.open(tmp_path / "store") as store:
        assert "ee_pose" not in store.keys and "depth_color" not in store.keys
        assert store.n_steps == 3 and store.attrs["camera_intrinsics"]["color"]["width"] == W
    with pytest.raises(DatasetError, match="unknown source key 'camera'"):
        parse_topic_overrides(["camera=/x"])
    with pytest.raises(DatasetError, match="KEY=/topic"):
        parse_topic_overrides(["image_color"])


# ----- bad bags --------------------------------------------------------------------------------
def test_bad_image_names_topic_and_message_index(tmp_path: Path) -> None:
    def bad(k: int, ns: int) -> Any:
        return image_msg(ns, color_frame(k), encoding="yuv422") if k == 6 else None

    bag = write_bag(tmp_path / "bad", make_recording(image_override=bad), "mcap")
    report = import_rosbags([bag], tmp_path / "store", RosbagImportConfig(fps=10.0))
    assert report.imported == []
    ((path, err),) = report.failed
    assert path == bag
    assert f"{IMAGE_TOPIC} message 6" in err and "yuv422" in err and str(bag) in err
    assert not (tmp_path / "store").exists()  # nothing imported: no empty store left behind


def test_bad_image_dropped_and_counted_when_asked(tmp_path: Path) -> None:
    def bad(k: int, ns: int) -> Any:
        if k == 6:  # the frame of the step at 0.2 s; truncated data
            return image_msg(ns, color_frame(k), data=np.zeros(10, np.uint8))
        return None

    bag = write_bag(tmp_path / "bad", make_recording(image_override=bad), "sqlite3")
    cfg = RosbagImportConfig(fps=10.0, drop_bad_messages=True)
    report = import_rosbags([bag], tmp_path / "store", cfg)
    assert report.failed == []
    with EpisodeStore.open(tmp_path / "store") as store:
        ep, meta = store.get_episode(0), store.episode_meta(0)
    assert len(ep["timestamp"]) == 9 and meta["dropped_steps"] == 1
    assert len(meta["bad_messages"]) == 1 and "message 6" in meta["bad_messages"][0]
    assert "truncated" in meta["bad_messages"][0]
    assert np.array_equal(ep["image_color"][2], color_frame(9))  # step 0.3 s follows 0.1 s


def test_image_size_must_match_camera_info(tmp_path: Path) -> None:
    rec = make_recording(seconds=0.5)
    rec.records = [
        r if r[0] != INFO_TOPIC else (*r[:3], info_msg(T0, width=640)) for r in rec.records
    ]
    bag = write_bag(tmp_path / "size", rec, "mcap")
    report = import_rosbags([bag], tmp_path / "store", RosbagImportConfig())
    ((_, err),) = report.failed
    assert "camera_info" in err and "640" in err


def test_wrong_message_type_on_a_topic(tmp_path: Path) -> None:
    rec = make_recording(seconds=0.3)
    rec.records.append(("/twinloop/ee_pose", "sensor_msgs/msg/JointState", T0, joint_msg(T0)))
    rec.records = [
        r
        for r in rec.records
        if not (r[0] == "/twinloop/ee_pose" and r[1] != "sensor_msgs/msg/JointState")
    ]
    bag = write_bag(tmp_path / "type", rec, "mcap")
    report = import_rosbags([bag], tmp_path / "store", RosbagImportConfig())
    ((_, err),) = report.failed
    assert "/twinloop/ee_pose" in err and "expected geometry_msgs/msg/PoseStamped" in err


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_corrupt_bag_is_an_error_naming_the_file_others_still_imported(
    tmp_path: Path, storage: str
) -> None:
    good0 = write_bag(tmp_path / "bags" / "a_good", make_recording(seconds=0.5), storage)
    broken = write_bag(tmp_path / "bags" / "b_broken", make_recording(seconds=0.5), storage)
    good1 = write_bag(tmp_path / "bags" / "c_good", make_recording(seconds=0.5), storage)
    f = storage_file(broken)
    raw = f.read_bytes()
    if storage == "mcap":
        f.write_bytes(raw[: len(raw) // 2])  # truncated mid-file
    else:
        f.write_bytes(raw[:100] + b"\x5a" * (len(raw) - 100))  # garbage pages
    report = import_rosbags([tmp_path / "bags"], tmp_path / "store", RosbagImportConfig())
    assert [p for p, _ in report.imported] == [good0, good1]
    ((path, err),) = report.failed
    assert path == broken and str(broken) in err
    with EpisodeStore.open(tmp_path / "store") as store:
        assert store.n_episodes == 2 and store.n_steps == 10
        assert [store.episode_meta(i)["source"] for i in range(2)] == [str(good0), str(good1)]


def test_find_bags_and_a_missing_topic_across_bags(tmp_path: Path) -> None:
    a = write_bag(tmp_path / "in" / "a", make_recording(seconds=0.3), "mcap")
    b = write_bag(tmp_path / "in" / "b", make_recording(seconds=0.3, depth=False), "sqlite3")
    single = tmp_path / "single.mcap"
    os.link(storage_file(a), single)
    assert find_bags([tmp_path / "in", single]) == [a, b, single]
    with pytest.raises(DatasetError, match="neither a rosbag2"):
        find_bags([tmp_path / "in" / "a" / "metadata.yaml"])
    report = import_rosbags([a, b], tmp_path / "store", RosbagImportConfig())
    ((path, err),) = report.failed
    assert path == b and "depth_color" in err and DEPTH_TOPIC in err


def test_append_and_refusals(tmp_path: Path) -> None:
    a = write_bag(tmp_path / "a", make_recording(seconds=0.3), "mcap")
    b = write_bag(tmp_path / "b", make_recording(seconds=0.3), "mcap")
    out = tmp_path / "store"
    import_rosbags([a], out, RosbagImportConfig())
    with pytest.raises(DatasetError, match="exists"):
        import_rosbags([b], out, RosbagImportConfig())
    with pytest.raises(DatasetError, match="recorded at 10 fps"):
        import_rosbags([b], out, RosbagImportConfig(fps=5.0), mode="append")
    report = import_rosbags([b], out, RosbagImportConfig(operator="ana"), mode="append")
    assert report.imported == [(b, 1)]
    with EpisodeStore.open(out) as store:
        assert store.n_episodes == 2 and store.episode_meta(1)["operator"] == "ana"
    # overwrite with nothing importable keeps the old store; with a good bag replaces it
    broken = tmp_path / "broken.mcap"
    broken.write_bytes(b"\x89MCAP0\r\n garbage")
    report = import_rosbags([broken], out, RosbagImportConfig(), mode="overwrite")
    assert report.imported == [] and len(report.failed) == 1
    with EpisodeStore.open(out) as store:
        assert store.n_episodes == 2
    import_rosbags([b], out, RosbagImportConfig(), mode="overwrite")
    with EpisodeStore.open(out) as store:
        assert store.n_episodes == 1 and store.episode_meta(0)["source"] == str(b)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "broken.mcap", "store"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError, match="not an episode store"):
        import_rosbags([b], tmp_path / "file", RosbagImportConfig(), mode="overwrite")


def test_config_validation() -> None:
    with pytest.raises(DatasetError, match="fps"):
        RosbagImportConfig(fps=0)
    with pytest.raises(DatasetError, match="absolute"):
        RosbagImportConfig(topics={"image_color": "camera/image"})
    with pytest.raises(DatasetError, match="not a source"):
        RosbagImportConfig(tolerances={"image_wrist": 0.1})
    with pytest.raises(DatasetError, match="no step source"):
        RosbagImportConfig(topics={"info_color": "/x"})
    assert RosbagImportConfig(fps=20).tolerance_of("action") == pytest.approx(0.025)


# ----- CLI -------------------------------------------------------------------------------------
def twinloop(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    return subprocess.run(
        [sys.executable, "-m", "twinloop", *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=120,
        env=env,
    )


def test_cli_help() -> None:
    out = twinloop("dataset", "import-rosbag2", "--help").stdout
    assert "usage: twinloop dataset import-rosbag2" in out and "--topic" in out


def test_cli_import_reports_failures_and_keeps_the_rest(tmp_path: Path) -> None:
    write_bag(tmp_path / "bags" / "a", make_recording(seconds=0.5), "mcap")
    bad = write_bag(tmp_path / "bags" / "b", make_recording(seconds=0.5), "sqlite3")
    storage_file(bad).write_bytes(b"not a database")
    out = tmp_path / "store"
    proc = twinloop(
        "dataset",
        "import-rosbag2",
        str(tmp_path / "bags"),
        "--out",
        str(out),
        "--fps",
        "10",
        "--tolerance",
        "0.05",
        "--tolerance",
        "action=0.06",
        "--task",
        "push the cube",
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert "1 of 2 bags imported" in proc.stdout
    assert str(bad) in proc.stdout + proc.stderr
    with EpisodeStore.open(out) as store:
        assert store.n_episodes == 1 and store.episode_meta(0)["task"] == "push the cube"


# ----- what the ROS nodes publish ----------------------------------------------------------------
def test_twin_episode_serialized_by_the_node_conversions(tmp_path: Path) -> None:
    """Messages built by twinloop_ros.conversions (what twin_node publishes), serialized by rclpy."""
    pytest.importorskip("rclpy", reason="needs the ROS 2 Jazzy wheels")
    from twinloop.sim2real.experts import make_expert
    from twinloop.sim2real.scene import CameraConfig
    from twinloop.sim2real.twin import Twin, TwinConfig
    from twinloop_ros.conversions import (
        action_to_msg,
        camera_info_from_intrinsics,
        episode_event_to_msg,
        image_to_msg,
        joint_state_to_msg,
        pose_to_msg,
        stamp_from_ns,
        to_cdr,
    )

    twin = Twin(TwinConfig(task="push_cube", depth=True, camera=CameraConfig(width=48, height=32)))
    obs = twin.reset(seed=3)
    expert = make_expert(twin, seed=3)
    phys = twin.physics
    records: list[tuple[str, str, int, bytes]] = []
    truth: list[dict[str, np.ndarray]] = []

    def put(topic: str, msgtype: str, ns: int, msg: Any) -> None:
        records.append((topic, msgtype, ns + 3 * MS, to_cdr(msg)))

    try:
        for _ in range(12):
            ns = T0 + round(phys.time * 1e9)
            stamp = stamp_from_ns(ns)
            action = expert.act(twin.privileged_state())
            put(IMAGE_TOPIC, "sensor_msgs/msg/Image", ns, image_to_msg(obs.image, stamp=stamp))
            put(DEPTH_TOPIC, "sensor_msgs/msg/Image", ns, image_to_msg(obs.depth, stamp=stamp))
            info = camera_info_from_intrinsics(twin.intrinsics, stamp=stamp)
            put(INFO_TOPIC, "sensor_msgs/msg/CameraInfo", ns, info)
            pos, vel = phys.joint_positions(), phys.joint_velocities()
            js = joint_state_to_msg(phys.joint_names, pos, vel, stamp=stamp)
            put("/joint_states", "sensor_msgs/msg/JointState", ns, js)
            pose = pose_to_msg(phys.ee_pos(), phys.ee_quat(), stamp=stamp)
            put("/twinloop/ee_pose", "geometry_msgs/msg/PoseStamped", ns, pose)
            act = action_to_msg(action, stamp=stamp_from_ns(ns + 5 * MS))
            put("/twinloop/action", "sensor_msgs/msg/JointState", ns + 5 * MS, act)
            truth.append(
                {
                    "image": obs.image,
                    "depth": obs.depth,
                    "pos": pos,
                    "ee": np.concatenate([phys.ee_pos(), phys.ee_quat()]),
                    "action": np.asarray(action),
                }
            )
            obs = twin.step(action).observation
        event = episode_event_to_msg("failure", 0)
        put("/twinloop/episode", "std_msgs/msg/String", T0 + 10**9, event)
        joint_names = list(phys.joint_names)
        intr = twin.intrinsics
    finally:
        twin.close()
    bag = tmp_path / "twin_bag"
    conns: dict[str, Any] = {}
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        for topic, msgtype, bag_ns, raw in sorted(records, key=lambda r: r[2]):
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=TS)
            writer.write(conns[topic], bag_ns, raw)
    report = import_rosbags([bag], tmp_path / "store", RosbagImportConfig(fps=10.0))
    assert report.failed == []
    with EpisodeStore.open(tmp_path / "store") as store:
        ep, meta, attrs = store.get_episode(0), store.episode_meta(0), store.attrs
    assert len(ep["timestamp"]) == 12 and meta["dropped_steps"] == 0
    assert meta["joint_names"] == joint_names and meta["success"] is False
    assert meta["success_source"] == "episode_event"
    for i, t in enumerate(truth):
        assert np.array_equal(ep["image_color"][i], t["image"])
        assert np.array_equal(ep["depth_color"][i], t["depth"])
        assert np.allclose(ep["joint_pos"][i], t["pos"], atol=1e-6)
        assert np.allclose(ep["ee_pose"][i], t["ee"], atol=1e-6)
        assert np.allclose(ep["action"][i], t["action"], atol=1e-6)
    got = attrs["camera_intrinsics"]["color"]
    assert (got["width"], got["height"]) == (intr.width, intr.height)
    assert got["fx"] == pytest.approx(intr.fx) and got["ppx"] == pytest.approx(intr.ppx)


def test_trailing_bytes_after_a_message_are_tolerated(tmp_path: Path) -> None:
    """rclpy.serialization leaves up to 12 bytes after some JointState messages."""
    rec = make_recording(seconds=0.3, depth=False)
    bag = tmp_path / "padded"
    conns: dict[str, Any] = {}
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        for i, (topic, msgtype, bag_ns, msg) in enumerate(sorted(rec.records, key=lambda r: r[2])):
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=TS)
            raw = bytes(TS.serialize_cdr(msg, msgtype))
            if msgtype == "sensor_msgs/msg/JointState":
                raw += bytes(4 * (1 + i % 3))  # 4, 8 or 12 bytes
            writer.write(conns[topic], bag_ns, raw)
    report = import_rosbags([bag], tmp_path / "store", RosbagImportConfig())
    assert report.failed == []
    with EpisodeStore.open(tmp_path / "store") as store:
        ep = store.get_episode(0)
    assert np.allclose(ep["joint_pos"][1], joint_values(T0 + 101 * MS)[0], atol=1e-6)
