"""numpy <-> ROS message conversions: round trips and clear errors, no ROS graph needed."""

from __future__ import annotations

import array
import json
import time

import numpy as np
import pytest

pytest.importorskip(
    "sensor_msgs.msg", reason="needs the ROS 2 message wheels (pip install -e .[ros])"
)

from geometry_msgs.msg import PoseStamped
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from twinloop.sim2real.physics import CameraIntrinsics
from twinloop_ros.conversions import (
    REWARD_TASK_PREFIX,
    action_from_msg,
    action_to_msg,
    camera_info_from_intrinsics,
    episode_event_from_msg,
    episode_event_to_msg,
    image_from_msg,
    image_to_msg,
    intrinsics_from_camera_info,
    joint_state_to_msg,
    json_from_msg,
    json_to_msg,
    pose_from_msg,
    pose_to_msg,
    reward_from_msg,
    reward_to_msg,
    rgb_from_msg,
    sim_state_from_msg,
    sim_state_to_msg,
    stamp_from_ns,
    stamp_to_ns,
)
from twinloop_ros.errors import RosAdapterError

from twinloop.topics import ACTION_NAMES

RNG = np.random.default_rng(0)


def test_stamp_round_trip() -> None:
    ns = 1_795_770_753_725_301_849
    stamp = stamp_from_ns(ns)
    assert (stamp.sec, stamp.nanosec) == (1_795_770_753, 725_301_849)
    assert stamp_to_ns(stamp) == ns
    with pytest.raises(RosAdapterError, match="negative"):
        stamp_from_ns(-1)


# ----- images ------------------------------------------------------------------------------------
def test_rgb_round_trip() -> None:
    img = RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    msg = image_to_msg(img, stamp=stamp_from_ns(5), frame_id="camera_color_optical_frame")
    assert (msg.encoding, msg.height, msg.width, msg.step) == ("rgb8", 48, 64, 64 * 3)
    assert msg.header.frame_id == "camera_color_optical_frame"
    assert stamp_to_ns(msg.header.stamp) == 5
    assert isinstance(msg.data, array.array)
    out = image_from_msg(msg)
    assert out.dtype == np.uint8 and out.shape == img.shape
    np.testing.assert_array_equal(out, img)
    np.testing.assert_array_equal(rgb_from_msg(msg), img)


def test_depth_round_trip() -> None:
    depth = RNG.integers(0, 65536, (48, 64), dtype=np.uint16)
    msg = image_to_msg(depth)
    assert (msg.encoding, msg.step, msg.is_bigendian) == ("16UC1", 128, 0)
    out = image_from_msg(msg)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, depth)


def test_non_contiguous_input_is_encoded_correctly() -> None:
    img = RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    view = img[::2, ::2]
    np.testing.assert_array_equal(image_from_msg(image_to_msg(view)), view)


def _raw(encoding: str, width: int, height: int, step: int, data: bytes, big: int = 0) -> Image:
    msg = Image()
    msg.encoding, msg.width, msg.height, msg.step, msg.is_bigendian = (
        encoding,
        width,
        height,
        step,
        big,
    )
    msg.data = array.array("B", data)
    return msg


def test_row_padding_is_honoured() -> None:
    img = RNG.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    padded = np.zeros((4, 20), dtype=np.uint8)  # 15 bytes of pixels + 5 of padding per row
    padded[:, :15] = img.reshape(4, 15)
    padded[:, 15:] = 0xAB
    out = image_from_msg(_raw("rgb8", 5, 4, 20, padded.tobytes()))
    np.testing.assert_array_equal(out, img)


def test_big_endian_depth_is_swapped() -> None:
    depth = np.array([[1, 256], [1000, 65535]], dtype=np.uint16)
    out = image_from_msg(_raw("16UC1", 2, 2, 4, depth.astype(">u2").tobytes(), big=1))
    np.testing.assert_array_equal(out, depth)


def test_bgr_is_turned_into_rgb() -> None:
    rgb = RNG.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    msg = _raw("bgr8", 4, 3, 12, np.ascontiguousarray(rgb[..., ::-1]).tobytes())
    np.testing.assert_array_equal(rgb_from_msg(msg), rgb)


def test_image_from_bytes_data() -> None:
    img = RNG.integers(0, 256, (2, 3, 3), dtype=np.uint8)
    msg = image_to_msg(img)
    msg.data = img.tobytes()  # slow path but legal
    np.testing.assert_array_equal(image_from_msg(msg), img)


@pytest.mark.parametrize(
    ("msg", "match"),
    [
        (_raw("yuv422", 2, 2, 4, bytes(8)), "unsupported image encoding 'yuv422'"),
        (_raw("rgb8", 4, 2, 6, bytes(12)), "step 6 is smaller than a row"),
        (_raw("rgb8", 4, 2, 12, bytes(20)), "has 20 bytes.*needs 24"),
        (_raw("16UC1", 0, 2, 0, b""), "no pixels"),
    ],
)
def test_bad_image_messages_raise(msg: Image, match: str) -> None:
    with pytest.raises(RosAdapterError, match=match):
        image_from_msg(msg)


@pytest.mark.parametrize(
    "img",
    [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 4), np.uint8), np.zeros((4,), np.uint8)],
)
def test_unencodable_images_raise(img: np.ndarray) -> None:
    with pytest.raises(RosAdapterError, match="cannot encode"):
        image_to_msg(img)


def test_image_to_msg_is_fast() -> None:
    img = RNG.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    image_to_msg(img)
    t0 = time.perf_counter()
    for _ in range(10):
        image_to_msg(img)
    per_frame = (time.perf_counter() - t0) / 10
    assert per_frame < 0.02, f"{per_frame * 1e3:.1f} ms per 640x480 frame"


# ----- camera info -------------------------------------------------------------------------------
def test_camera_info_round_trip() -> None:
    intr = CameraIntrinsics(320, 240, 230.5, 231.0, 159.5, 119.5)
    msg = camera_info_from_intrinsics(intr, stamp=stamp_from_ns(7), frame_id="cam")
    assert (msg.width, msg.height, msg.header.frame_id) == (320, 240, "cam")
    np.testing.assert_allclose(np.reshape(msg.k, (3, 3)), intr.k_matrix())
    np.testing.assert_allclose(
        np.reshape(msg.p, (3, 4)), np.hstack([intr.k_matrix(), np.zeros((3, 1))])
    )
    assert msg.distortion_model == "plumb_bob" and list(msg.d) == [0.0] * 5
    assert intrinsics_from_camera_info(msg) == intr


def test_camera_info_with_bad_k_raises() -> None:
    msg = camera_info_from_intrinsics(CameraIntrinsics(8, 8, 1.0, 1.0, 3.5, 3.5))
    msg.k = [0.0] * 9
    with pytest.raises(RosAdapterError, match="fx, fy > 0"):
        intrinsics_from_camera_info(msg)


# ----- actions, joints, poses --------------------------------------------------------------------
def test_action_round_trip() -> None:
    action = [0.01, -0.02, 0.005, 0.1, 1.0]
    msg = action_to_msg(action, stamp=stamp_from_ns(9))
    assert list(msg.name) == list(ACTION_NAMES)
    np.testing.assert_array_equal(action_from_msg(msg), action)


def test_action_names_in_another_order_are_mapped() -> None:
    msg = JointState(name=list(reversed(ACTION_NAMES)), position=[5.0, 4.0, 3.0, 2.0, 1.0])
    np.testing.assert_array_equal(action_from_msg(msg), [1.0, 2.0, 3.0, 4.0, 5.0])


@pytest.mark.parametrize(
    ("names", "position", "match"),
    [
        (["dx", "dy", "dz", "dyaw"], [0.0] * 4, "action names must be"),
        (["dx", "dy", "dz", "dyaw", "grip"], [0.0] * 5, "action names must be"),
        (["dx", "dx", "dz", "dyaw", "gripper"], [0.0] * 5, "action names must be"),
        (list(ACTION_NAMES), [0.0] * 4, "5 names but 4 positions"),
    ],
)
def test_bad_action_messages_raise(names: list[str], position: list[float], match: str) -> None:
    with pytest.raises(RosAdapterError, match=match):
        action_from_msg(JointState(name=names, position=position))


def test_action_to_msg_checks_length() -> None:
    with pytest.raises(RosAdapterError, match="must have 5 values"):
        action_to_msg([0.0, 0.0])


def test_nan_action_passes_structure_check() -> None:
    # NaN is the safety layer's business (ActionLimiter / Twin.check_action refuse it).
    msg = action_to_msg([float("nan"), 0, 0, 0, 0])
    assert np.isnan(action_from_msg(msg)[0])


def test_joint_state() -> None:
    msg = joint_state_to_msg(["a", "b"], np.array([1.0, 2.0]), [0.1, 0.2], stamp=stamp_from_ns(3))
    assert list(msg.name) == ["a", "b"]
    assert list(msg.position) == [1.0, 2.0] and list(msg.velocity) == [0.1, 0.2]
    with pytest.raises(RosAdapterError, match="2 joint names but 3 positions"):
        joint_state_to_msg(["a", "b"], [1.0, 2.0, 3.0])
    with pytest.raises(RosAdapterError, match="but 1 velocities"):
        joint_state_to_msg(["a", "b"], [1.0, 2.0], [0.0])


# ----- rewards -----------------------------------------------------------------------------------
def test_reward_round_trip_without_and_with_task() -> None:
    msg = reward_to_msg(-0.25, False, stamp=stamp_from_ns(7_000_000_123), frame_id="wrist")
    assert list(msg.name) == ["reward", "success"] and list(msg.position) == [-0.25, 0.0]
    assert stamp_to_ns(msg.header.stamp) == 7_000_000_123 and msg.header.frame_id == "wrist"
    assert reward_from_msg(msg) == (-0.25, False, "")
    msg = reward_to_msg(0.0, True, stamp=stamp_from_ns(9), frame_id="color", task="close_drawer")
    assert list(msg.name) == ["reward", "success", REWARD_TASK_PREFIX + "close_drawer"]
    assert list(msg.position) == [0.0, 1.0, 1.0]
    assert reward_from_msg(msg) == (0.0, True, "close_drawer")
    # the names may come in another order (a foreign publisher); values follow their names
    other = JointState(name=["task:open_drawer", "success", "reward"], position=[1.0, 0.0, 0.5])
    assert reward_from_msg(other) == (0.5, False, "open_drawer")


@pytest.mark.parametrize(
    ("names", "position", "match"),
    [
        (["reward"], [0.5], r"names \['reward'\] with 1 values, expected"),
        (["reward", "success", "task:a", "task:b"], [0.5, 0.0, 1.0, 1.0], "one 'task:<name>'"),
        (["reward", "success", "progress"], [0.5, 0.0, 0.3], "names .*'progress'"),
        (["reward", "success"], [0.5], "with 1 values"),
        (["reward", "success"], [float("nan"), 0.0], "reward nan is not finite"),
        (["reward", "success"], [float("inf"), 1.0], "reward inf is not finite"),
    ],
)
def test_bad_reward_messages_raise(names: list[str], position: list[float], match: str) -> None:
    with pytest.raises(RosAdapterError, match=match):
        reward_from_msg(JointState(name=names, position=position))


def test_pose_round_trip_converts_quaternion_order() -> None:
    pos, quat = np.array([0.5, -0.1, 0.3]), np.array([0.0, 1.0, 0.0, 0.0])  # w, x, y, z
    msg = pose_to_msg(pos, quat, stamp=stamp_from_ns(1))
    assert isinstance(msg, PoseStamped) and msg.header.frame_id == "base_link"
    assert (msg.pose.orientation.x, msg.pose.orientation.w) == (1.0, 0.0)
    p, q = pose_from_msg(msg)
    np.testing.assert_array_equal(p, pos)
    np.testing.assert_array_equal(q, quat)


def test_bad_poses_raise() -> None:
    with pytest.raises(RosAdapterError, match="position"):
        pose_to_msg([0.0, 0.0], [1.0, 0.0, 0.0, 0.0])
    msg = pose_to_msg([0.0, 0.0, float("nan")], [1.0, 0.0, 0.0, 0.0])
    with pytest.raises(RosAdapterError, match="NaN"):
        pose_from_msg(msg)


# ----- JSON payloads -----------------------------------------------------------------------------
def test_json_turns_numpy_into_lists() -> None:
    msg = json_to_msg({"a": np.arange(3), "b": np.float32(0.5), "c": {"d": np.array(2.0)}})
    assert json.loads(msg.data) == {"a": [0, 1, 2], "b": 0.5, "c": {"d": 2.0}}
    assert json_from_msg(msg)["a"] == [0, 1, 2]


def test_bad_json_raises() -> None:
    with pytest.raises(RosAdapterError, match="not JSON"):
        json_from_msg(String(data="{nope"))
    with pytest.raises(RosAdapterError, match="JSON object"):
        json_from_msg(String(data="[1, 2]"))
    with pytest.raises(RosAdapterError, match="cannot be sent as JSON"):
        json_to_msg({"x": float("nan")})


def test_episode_events() -> None:
    msg = episode_event_to_msg("success", 3, steps=31, task="push_cube")
    assert episode_event_from_msg(msg) == {
        "event": "success",
        "episode": 3,
        "steps": 31,
        "task": "push_cube",
    }
    with pytest.raises(RosAdapterError, match="unknown episode event 'win'"):
        episode_event_to_msg("win", 0)
    with pytest.raises(RosAdapterError, match="must be one of"):
        episode_event_from_msg(String(data='{"event": "win", "episode": 0}'))
    with pytest.raises(RosAdapterError, match="integer 'episode'"):
        episode_event_from_msg(String(data='{"event": "start"}'))


def test_sim_state_round_trip() -> None:
    state = {"cube_pos": np.array([0.4, -0.1, 0.025]), "ee_yaw": np.array(0.3)}
    msg = sim_state_to_msg(
        task="push_cube",
        episode=2,
        steps=5,
        max_steps=60,
        success=False,
        reward=0.25,
        privileged_state=state,
        time=0.6,
    )
    out = sim_state_from_msg(msg)
    assert (out["task"], out["episode"], out["steps"], out["max_steps"]) == ("push_cube", 2, 5, 60)
    assert out["success"] is False and out["reward"] == 0.25
    np.testing.assert_array_equal(out["privileged_state"]["cube_pos"], state["cube_pos"])
    assert out["privileged_state"]["ee_yaw"].shape == ()
    assert "stamp_ns" not in out
    stamped = sim_state_to_msg(task="push_cube", episode=0, steps=0, max_steps=60, success=False,
                               reward=0.0, privileged_state=state, time=0.0, stamp_ns=123_456)  # fmt: skip
    assert sim_state_from_msg(stamped)["stamp_ns"] == 123_456  # the joint states' stamp


def test_bad_sim_state_raises() -> None:
    with pytest.raises(RosAdapterError, match="lacks"):
        sim_state_from_msg(String(data='{"task": "push_cube"}'))
    bad = {
        "task": "t",
        "episode": 0,
        "steps": 0,
        "max_steps": 1,
        "success": False,
        "reward": 0.0,
        "privileged_state": {"x": "abc"},
    }
    with pytest.raises(RosAdapterError, match="non-numeric"):
        sim_state_from_msg(String(data=json.dumps(bad)))
