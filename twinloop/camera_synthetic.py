"""Synthetic RealSense recordings: camera_node and its tests without a camera.

:func:`write_recording` builds a librealsense ``software_device`` with an "RGB Camera" (rgb8) and
a "Stereo Module" (z16, with ``depth_units``) sensor, records it with ``rs.recorder`` to a
``.db3`` file and injects frames whose content is known: colour pixel ``(y, x)`` of frame ``n`` is
``(n % 256, x % 256, y % 256)`` and every raw depth value of frame ``n`` is
:func:`depth_raw_value` (``n``), which is ``500 + n`` mm after scaling. Frame numbers listed in
``skip`` are left out (dropped frames), and each frame in ``late`` comes that many ms later than
its period says (it and every later frame: a late frame shifts the schedule, as on a camera whose
exposure grew).

Frames are injected at the pace of their timestamps (``realtime=True``), because a recording
plays back at the pace it was captured; the librealsense pipeline loses frames of a recording
that was written faster than it plays.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .camera import require_pyrealsense2
from .errors import TwinloopError
from .sim2real.physics import CameraIntrinsics

__all__ = [
    "RecordedFrame",
    "SyntheticRecording",
    "depth_raw_value",
    "synthetic_color",
    "write_recording",
]

# D435-like calibration: colour 640x480 with small inverse Brown-Conrady coefficients (as a D455
# reports), depth 424x240 with a wider field of view, 15 mm to the left of the colour imager.
COLOR_INTRINSICS = CameraIntrinsics(
    width=640,
    height=480,
    fx=615.5,
    fy=615.9,
    ppx=321.2,
    ppy=242.7,
    model="inverse_brown_conrady",
    coeffs=(0.01, -0.02, 0.001, 0.002, 0.003),
)
DEPTH_INTRINSICS = CameraIntrinsics(
    width=424, height=240, fx=210.0, fy=210.0, ppx=212.0, ppy=120.0, model="brown_conrady"
)
DEPTH_TO_COLOR_M = (-0.015, 0.0, 0.0)


@dataclass(frozen=True)
class SyntheticRecording:
    """What to record (all frames carry known content, see the module docstring)."""

    n_frames: int = 30  # frame numbers 0 .. n_frames - 1 (less those in `skip`)
    fps: int = 30  # nominal rate of both streams
    color: CameraIntrinsics = COLOR_INTRINSICS  # colour size and calibration
    depth: CameraIntrinsics | None = DEPTH_INTRINSICS  # None: colour only
    depth_units: float = 0.0001  # metres per z16 unit (D405-like; D435 uses 0.001)
    skip: tuple[int, ...] = ()  # frame numbers not recorded (dropped on the "camera")
    late: tuple[tuple[int, float], ...] = ()  # (frame number, extra delay in ms)
    t0_ms: float = 1000.0  # timestamp of frame 0
    domain: str = "hardware_clock"  # hardware_clock | global_time | system_time
    serial: str = "000000000001"  # serial number the recording reports
    realtime: bool = True  # inject at the pace of the timestamps (see the module docstring)

    def __post_init__(self) -> None:
        if self.n_frames < 1 or not 0 < self.fps <= 300:
            msg = f"need n_frames >= 1 and fps in (0, 300], got {self.n_frames}, {self.fps}"
            raise TwinloopError(msg)
        if not (math.isfinite(self.depth_units) and self.depth_units > 0):
            msg = f"depth_units must be positive, got {self.depth_units}"
            raise TwinloopError(msg)
        if self.domain not in ("hardware_clock", "global_time", "system_time"):
            msg = f"unknown timestamp domain {self.domain!r}"
            raise TwinloopError(msg)
        if any(d < 0 for _, d in self.late):
            msg = f"late delays must be >= 0 ms, got {self.late}"
            raise TwinloopError(msg)

    def timestamps_ms(self) -> dict[int, float]:
        """Frame number -> device timestamp (ms) of every recorded frame."""
        period = 1000.0 / self.fps
        extra = dict(self.late)
        out, shift = {}, 0.0
        for n in range(self.n_frames):
            shift += extra.get(n, 0.0)
            if n not in self.skip:
                out[n] = self.t0_ms + n * period + shift
        return out


@dataclass(frozen=True)
class RecordedFrame:
    number: int
    timestamp_ms: float


def synthetic_color(n: int, height: int, width: int) -> np.ndarray:
    """Colour frame ``n``: R = n % 256, G = x % 256, B = y % 256."""
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = n % 256
    img[..., 1] = (np.arange(width) % 256)[None, :]
    img[..., 2] = (np.arange(height) % 256)[:, None]
    return img


def depth_raw_value(n: int, depth_units: float) -> int:
    """The z16 value of every depth pixel of frame ``n``: (500 + n) mm in device units."""
    return round((500 + n) / (depth_units * 1000.0))


def _rs_intrinsics(rs: Any, intr: CameraIntrinsics) -> Any:
    out = rs.intrinsics()
    out.width, out.height = intr.width, intr.height
    out.fx, out.fy, out.ppx, out.ppy = intr.fx, intr.fy, intr.ppx, intr.ppy
    out.model = getattr(rs.distortion, intr.model)
    out.coeffs = list(intr.coeffs)
    return out


def _video_stream(rs: Any, kind: Any, fmt: Any, bpp: int, uid: int, intr: Any, fps: int) -> Any:
    vs = rs.video_stream()
    vs.type, vs.index, vs.uid = kind, 0, uid
    vs.width, vs.height, vs.fps, vs.bpp, vs.fmt = intr.width, intr.height, fps, bpp, fmt
    vs.intrinsics = intr
    return vs


def _inject(
    rs: Any, sensor: Any, profile: Any, pixels: np.ndarray, n: int, ts: float, spec: Any
) -> None:
    frame = rs.software_video_frame()
    frame.pixels = pixels
    frame.bpp = pixels.dtype.itemsize * (pixels.shape[2] if pixels.ndim == 3 else 1)
    frame.stride = pixels.shape[1] * frame.bpp
    frame.timestamp = ts
    frame.domain = getattr(rs.timestamp_domain, spec.domain)
    frame.frame_number = n
    frame.profile = profile
    if pixels.dtype == np.uint16:
        frame.depth_units = spec.depth_units
    sensor.on_video_frame(frame)


def write_recording(
    path: str | Path, spec: SyntheticRecording = SyntheticRecording()
) -> list[RecordedFrame]:
    """Record ``spec`` to ``path`` (a new ``.db3`` file); the frames as recorded, in order."""
    rs = require_pyrealsense2()
    path = Path(path)
    if path.suffix != ".db3":
        msg = f"librealsense records to .db3 files, got {str(path)!r}"
        raise TwinloopError(msg)
    if path.exists():
        msg = f"{str(path)!r} exists: refusing to overwrite it"
        raise TwinloopError(msg)
    device = rs.software_device()
    device.register_info(rs.camera_info.name, "Synthetic RealSense")
    device.register_info(rs.camera_info.serial_number, spec.serial)
    color_sensor = device.add_sensor("RGB Camera")
    color_sensor.add_read_only_option(rs.option.frames_queue_size, 16)
    color_intr = _rs_intrinsics(rs, spec.color)
    color_profile = color_sensor.add_video_stream(
        _video_stream(rs, rs.stream.color, rs.format.rgb8, 3, 0, color_intr, spec.fps), True
    ).as_video_stream_profile()
    sensors: list[tuple[Any, Any]] = [(color_sensor, color_profile)]
    if spec.depth is not None:
        depth_sensor = device.add_sensor("Stereo Module")
        depth_sensor.add_read_only_option(rs.option.depth_units, spec.depth_units)
        depth_sensor.add_read_only_option(rs.option.frames_queue_size, 16)
        depth_intr = _rs_intrinsics(rs, spec.depth)
        depth_profile = depth_sensor.add_video_stream(
            _video_stream(rs, rs.stream.depth, rs.format.z16, 2, 1, depth_intr, spec.fps), True
        ).as_video_stream_profile()
        extrinsics = rs.extrinsics()
        extrinsics.rotation = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        extrinsics.translation = list(DEPTH_TO_COLOR_M)
        depth_profile.register_extrinsics_to(color_profile, extrinsics)
        sensors.append((depth_sensor, depth_profile))

    recorder = rs.recorder(str(path), device)
    for sensor, profile in sensors:
        sensor.open(profile)
        sensor.start(lambda frame: None)
    recorded = []
    stamps = spec.timestamps_ms()
    try:
        start = time.monotonic()
        for n, ts in stamps.items():
            if spec.realtime:
                time.sleep(max(0.0, start + (ts - spec.t0_ms) / 1000.0 - time.monotonic()))
            color = synthetic_color(n, spec.color.height, spec.color.width)
            _inject(rs, color_sensor, color_profile, color, n, ts, spec)
            if spec.depth is not None:
                raw = np.full(
                    (spec.depth.height, spec.depth.width),
                    depth_raw_value(n, spec.depth_units),
                    np.uint16,
                )
                _inject(rs, sensors[1][0], sensors[1][1], raw, n, ts, spec)
            recorded.append(RecordedFrame(n, ts))
    finally:
        for sensor, _ in sensors:
            sensor.stop()
            sensor.close()
        recorder.pause()
        del recorder  # closing the recorder writes the file
    return recorded
