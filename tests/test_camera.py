"""twinloop.camera (the ROS-free core of camera_node) on real librealsense recordings.

A librealsense software_device records synthetic frames with known content, intrinsics, depth
units and timestamps (twinloop.camera_synthetic); RealSenseCamera plays them back through the
same rs.pipeline + rs.align code a live camera uses. Real-time playback may lose a frame when
this (2-core, shared) machine is busy, exactly as a camera would: the tests check that every
frame that comes out is the recorded one, and that every frame that did not is counted.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyrealsense2", reason="needs pyrealsense2 (x86_64 wheels)")

from twinloop.sim2real.physics import CameraIntrinsics

from twinloop.camera import (
    Capture,
    FrameTracker,
    RealSenseCamera,
    RealSenseConfig,
    StampMapper,
    depth_to_mm,
    ms_to_ns,
    ros_distortion,
)
from twinloop.camera_synthetic import (
    COLOR_INTRINSICS,
    DEPTH_INTRINSICS,
    RecordedFrame,
    SyntheticRecording,
    depth_raw_value,
    synthetic_color,
    write_recording,
)
from twinloop.errors import TwinloopError

log = logging.getLogger(__name__)

BASE_NS = 1_700_000_000_123_456_789  # what the injected clock says when the first frame comes


def _half(intr: CameraIntrinsics) -> CameraIntrinsics:
    """The same camera at half the resolution (cheaper to play on a busy machine)."""
    return replace(
        intr,
        width=intr.width // 2,
        height=intr.height // 2,
        fx=intr.fx / 2,
        fy=intr.fy / 2,
        ppx=intr.ppx / 2,
        ppy=intr.ppy / 2,
    )


# 30 frames at 30 fps; 10 and 11 never recorded (dropped), 20 and after 50 ms late.
SPEC = SyntheticRecording(
    color=_half(COLOR_INTRINSICS),
    depth=_half(DEPTH_INTRINSICS),
    skip=(10, 11),
    late=((20, 50.0),),
)


@dataclass
class Played:
    camera: RealSenseCamera
    captures: list[Capture]

    def frames(self, stream: str) -> list:  # type: ignore[type-arg]
        return [getattr(c, stream) for c in self.captures if getattr(c, stream) is not None]

    def issues(self, kind: str, stream: str) -> list[str]:
        return [
            i.message
            for c in self.captures
            for i in c.issues
            if (i.kind, i.stream) == (kind, stream)
        ]


def play(path: Path, **overrides: object) -> Played:
    cfg = RealSenseConfig(playback_file=str(path), **overrides)  # type: ignore[arg-type]
    camera = RealSenseCamera(cfg, now_ns=lambda: BASE_NS)
    captures = []
    deadline = time.monotonic() + 30.0
    with camera:
        while not camera.finished and time.monotonic() < deadline:
            captures.append(camera.read())
    assert camera.finished, "the recording did not end within 30 s"
    return Played(camera, captures)


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[RecordedFrame]]:
    path = tmp_path_factory.mktemp("camera") / "synthetic.db3"
    frames = write_recording(path, SPEC)
    return path, frames


@pytest.fixture(scope="module")
def played(recording: tuple[Path, list[RecordedFrame]]) -> Played:
    return play(recording[0])


def _exact_ns(ms: float) -> int:
    return int((Decimal(ms) * 1_000_000).to_integral_value(ROUND_HALF_EVEN))


# ----- the recording as it plays back -------------------------------------------------------
def test_the_recording_holds_what_was_written(recording: tuple[Path, list[RecordedFrame]]) -> None:
    path, frames = recording
    assert [f.number for f in frames] == [n for n in range(30) if n not in (10, 11)]
    assert frames[20 - 2].timestamp_ms - frames[19 - 2].timestamp_ms == pytest.approx(
        1000 / 30 + 50
    )
    camera = RealSenseCamera(RealSenseConfig(playback_file=str(path)))
    assert camera.device.serial == SPEC.serial and camera.device.is_playback
    assert camera.color_fps == 30.0 and camera.color_format == "rgb8"
    assert camera.depth_scale == pytest.approx(SPEC.depth_units, rel=1e-6)
    intr, want = camera.intrinsics, SPEC.color
    assert (intr.width, intr.height) == (want.width, want.height)
    assert [intr.fx, intr.fy, intr.ppx, intr.ppy] == pytest.approx(
        [want.fx, want.fy, want.ppx, want.ppy], rel=1e-6
    )
    # librealsense's inverse Brown-Conrady becomes ROS plumb_bob with the same 5 coefficients
    assert intr.model == "plumb_bob"
    assert intr.coeffs == pytest.approx(want.coeffs, abs=1e-7)


def test_colour_frames_come_back_as_recorded(
    played: Played, recording: tuple[Path, list[RecordedFrame]]
) -> None:
    recorded = {f.number: f.timestamp_ms for f in recording[1]}
    colour = played.frames("color")
    numbers = [f.number for f in colour]
    log.info("colour frames played: %s", numbers)
    assert len(colour) >= 0.8 * len(recorded), f"only {numbers} of {sorted(recorded)}"
    assert numbers == sorted(set(numbers)) and set(numbers) <= set(recorded)
    first = colour[0]
    for f in colour:
        assert (
            f.image.shape == (SPEC.color.height, SPEC.color.width, 3) and f.image.dtype == np.uint8
        )
        np.testing.assert_array_equal(
            f.image, synthetic_color(f.number, f.image.shape[0], f.image.shape[1])
        )
        assert f.timestamp_ms == pytest.approx(recorded[f.number], abs=1e-6)
        assert f.domain == "hardware_clock"
        # stamp_mode auto on a recording: the first frame's node time plus the device interval
        assert f.stamp_ns == BASE_NS + _exact_ns(f.timestamp_ms) - _exact_ns(first.timestamp_ms)


def test_depth_is_aligned_to_colour_and_in_millimetres(played: Played) -> None:
    depth = played.frames("depth")
    assert len(depth) >= 0.8 * 28
    by_number = {f.number: f for f in played.frames("color")}
    for f in depth:
        # aligned to colour: the colour size, not the 212x120 of the depth imager
        assert f.image.shape == (SPEC.color.height, SPEC.color.width) and f.image.dtype == np.uint16
        # raw (500 + n) mm / 0.1 mm per unit, scaled back to mm; the flat scene covers the view
        assert (f.image == 500 + f.number).all(), np.unique(f.image)
        if f.number in by_number:  # same device timestamp, same stamp as its colour frame
            assert f.stamp_ns == by_number[f.number].stamp_ns


def test_dropped_and_late_frames_are_counted_and_reported(played: Played) -> None:
    stats, numbers = played.camera.color_stats, [f.number for f in played.frames("color")]
    assert stats.frames == len(numbers)
    # every gap in the counter is counted: the two never recorded, plus any the playback lost
    gaps = sum(b - a - 1 for a, b in itertools.pairwise(numbers))
    assert stats.dropped == gaps and numbers[0] < 10 and numbers[-1] > 11 and stats.dropped >= 2
    dropped = played.issues("dropped", "color")
    assert len(dropped) == sum(1 for a, b in itertools.pairwise(numbers) if b > a + 1)
    if 9 in numbers and 12 in numbers:
        assert "color frame 12 follows 9: 2 frame(s) dropped" in dropped[0]
    if 19 in numbers and 20 in numbers:  # the late frame, unless the playback lost its neighbour
        late = played.issues("late", "color")
        assert stats.late >= 1 and any("frame 20 came 83.3 ms after frame 19" in m for m in late)
    # the syncer hands colour frames over again with the next depth frame: never returned twice
    assert stats.repeated > 0
    assert played.camera.timeouts == 0
    summary = played.camera.summary()
    assert f"colour: {len(numbers)} frames, {stats.dropped} dropped" in summary


def test_colour_only_and_mismatched_streams(tmp_path: Path) -> None:
    path = tmp_path / "colour_only.db3"
    write_recording(path, replace(SPEC, n_frames=6, depth=None, skip=(), late=()))
    played = play(path, enable_depth=False)
    assert [f.number for f in played.frames("color")][-1] == 5
    assert played.frames("depth") == []
    with pytest.raises(
        TwinloopError, match=r"cannot open recording .*colour and depth wanted.*It offers: \['color"
    ):
        RealSenseCamera(RealSenseConfig(playback_file=str(path)))  # depth is enabled by default


def test_device_stamps_need_a_host_clock_domain(tmp_path: Path) -> None:
    now_ms = time.time() * 1000.0
    path = tmp_path / "global.db3"
    write_recording(
        path, replace(SPEC, n_frames=4, skip=(), late=(), domain="global_time", t0_ms=now_ms)
    )
    played = play(path, stamp_mode="device")
    for f in played.frames("color"):
        assert f.domain == "global_time"
        assert f.stamp_ns == _exact_ns(f.timestamp_ms)  # the device's host-clock time as it is
    hardware = tmp_path / "hardware.db3"
    write_recording(hardware, replace(SPEC, n_frames=8, skip=(), late=()))
    with pytest.raises(
        TwinloopError, match="stamp_mode 'device' needs timestamps in the host clock"
    ):
        play(hardware, stamp_mode="device")


# ----- bad input at start --------------------------------------------------------------------
def test_bad_sources_fail_at_start_naming_the_problem(
    tmp_path: Path, recording: tuple[Path, list[RecordedFrame]]
) -> None:
    with pytest.raises(TwinloopError, match="does not exist"):
        RealSenseCamera(RealSenseConfig(playback_file=str(tmp_path / "missing.db3")))
    with pytest.raises(TwinloopError, match="must be a RealSense recording"):
        RealSenseConfig(playback_file="frames.mp4")
    with pytest.raises(TwinloopError, match=r"is of camera '000000000001', not serial_no '42'"):
        RealSenseCamera(RealSenseConfig(playback_file=str(recording[0]), serial_no="42"))
    # No camera with this serial is connected (none at all on CI machines).
    with pytest.raises(TwinloopError, match="no RealSense camera"):
        RealSenseCamera(RealSenseConfig(serial_no="no-such-serial"))
    not_a_recording = tmp_path / "junk.db3"
    not_a_recording.write_bytes(b"not a recording")
    with pytest.raises(TwinloopError, match="cannot open recording"):
        RealSenseCamera(RealSenseConfig(playback_file=str(not_a_recording)))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("stamp_mode", "ros", "unknown stamp_mode 'ros'"),
        ("color_width", 0, "color_width must be in"),
        ("depth_fps", 0, "depth_fps must be in"),
        ("wait_timeout_s", float("nan"), "wait_timeout_s must be in"),
        ("frame_queue_size", -1, "frame_queue_size must be in"),
    ],
)
def test_config_validates_itself(field: str, value: object, message: str) -> None:
    with pytest.raises(TwinloopError, match=message):
        RealSenseConfig(**{field: value})  # type: ignore[arg-type]


# ----- the pure pieces -----------------------------------------------------------------------
def test_frame_tracker_counts_gaps_lateness_repeats_and_restarts() -> None:
    tracker = FrameTracker("color", fps=30.0)
    period = 1000.0 / 30.0
    events = []
    for number, t in [
        (0, 0.0),
        (1, period),
        (1, period),
        (4, 4 * period),
        (5, 7 * period),
        (2, 8 * period),
        (3, 9 * period),
    ]:
        new, issues = tracker.update(number, t)
        events.append((new, [i.kind for i in issues]))
    assert events == [
        (True, []),
        (True, []),
        (False, []),  # the same frame again
        (True, ["dropped"]),  # 2 and 3 never came
        (True, ["late"]),  # 100 ms after the previous one at 30 fps
        (True, ["restart"]),  # the counter went back
        (True, []),
    ]
    s = tracker.stats
    assert (s.frames, s.dropped, s.late, s.repeated, s.restarts) == (6, 2, 1, 1, 1)


def test_stamp_mapper_modes() -> None:
    clock = iter([5_000_000_000, 9_000_000_000])
    first = StampMapper("first_frame", live=True, now_ns=lambda: next(clock))
    assert first(2000.0, "global_time") == (5_000_000_000, None)
    assert first(2033.5, "global_time") == (5_033_500_000, None)
    stamp, issue = first(10.0, "global_time")  # the device clock restarted
    assert stamp == 9_000_000_000 and issue is not None and issue.kind == "clock"

    auto_live = StampMapper("auto", live=True, now_ns=lambda: 1)
    assert auto_live(1_795_770_753_725.25, "global_time") == (1_795_770_753_725_250_000, None)
    assert auto_live.resolved == "device"
    auto_hw = StampMapper("auto", live=True, now_ns=lambda: 7)
    assert auto_hw(123.0, "hardware_clock") == (7, None) and auto_hw.resolved == "first_frame"
    auto_file = StampMapper("auto", live=False, now_ns=lambda: 7)
    assert auto_file(1e12, "global_time") == (7, None) and auto_file.resolved == "first_frame"
    with pytest.raises(TwinloopError, match="stamp_mode 'device' needs"):
        StampMapper("device", live=True, now_ns=lambda: 0)(1.0, "hardware_clock")


def test_ms_to_ns_is_exact_to_the_float() -> None:
    for ms in (0.0, 1033.333333, 1_795_770_753_725.25, 1_795_770_753_725.123456, 2.5e-7):
        assert ms_to_ns(ms) == _exact_ns(ms), ms
    assert round(1_795_770_753_725.25 * 1e6) != 1_795_770_753_725_250_000  # what it avoids


def test_depth_to_mm() -> None:
    raw = np.array([[0, 1000, 65535]], np.uint16)
    np.testing.assert_array_equal(depth_to_mm(raw, 0.001), raw)  # D400 default: already mm
    np.testing.assert_array_equal(
        depth_to_mm(np.array([[0, 5003, 5005, 65535]], np.uint16), 0.0001), [[0, 500, 500, 6554]]
    )
    np.testing.assert_array_equal(
        depth_to_mm(np.array([[100, 7000]], np.uint16), 0.01), [[1000, 0]]
    )  # 70 m: no data
    np.testing.assert_array_equal(
        depth_to_mm(np.array([[depth_raw_value(7, 0.0001)]], np.uint16), 0.0001), [[507]]
    )
    with pytest.raises(TwinloopError, match="uint16"):
        depth_to_mm(np.zeros((2, 2), np.float32), 0.001)
    with pytest.raises(TwinloopError, match="depth scale"):
        depth_to_mm(raw, 0.0)


def test_ros_distortion() -> None:
    assert ros_distortion("brown_conrady", (0.1, 0.2, 0.0, 0.0, 0.3)) == (
        "plumb_bob",
        (0.1, 0.2, 0.0, 0.0, 0.3),
    )
    assert ros_distortion("inverse_brown_conrady", (0.0,) * 5)[0] == "plumb_bob"
    assert ros_distortion("none", (1.0,) * 5) == ("plumb_bob", (0.0,) * 5)
    assert ros_distortion("kannala_brandt4", (0.1, 0.2, 0.3, 0.4, 0.0)) == (
        "equidistant",
        (0.1, 0.2, 0.3, 0.4),
    )
    with pytest.raises(TwinloopError, match="no ROS equivalent"):
        ros_distortion("ftheta", (0.5,))
