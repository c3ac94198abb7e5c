"""RealSense colour + aligned depth from pyrealsense2, ROS-free: the core of ``camera_node``.

:class:`RealSenseCamera` runs one ``rs.pipeline`` for a live camera (``serial_no``) or a recording
(``playback_file``, a ``.db3`` or legacy ``.bag`` file played through the same pipeline with
``config.enable_device_from_file(path, repeat_playback=False)``). Each :meth:`RealSenseCamera.read`
returns the frames that are new since the last call, already converted at the edge:

- colour as ``(H, W, 3) uint8`` RGB (``rgb8``; a recording in bgr8/rgba8/bgra8/yuyv is converted);
- depth aligned to colour (``rs.align(rs.stream.color)``), as ``(H, W) uint16`` millimetres at the
  colour resolution: raw z16 times the device depth scale (``depth_units``), 0 = no measurement;
- the colour intrinsics as :class:`~twinloop.sim2real.physics.CameraIntrinsics` (also those of
  the aligned depth), with the distortion model named as ROS names it.

Frame numbers of each stream are tracked (:class:`FrameTracker`): a gap is counted as dropped
frames, an interval over 1.5 frame periods between consecutive numbers as a late frame, a counter
that goes back as a restart, and the frameset the syncer hands over again (same number) is not
returned twice. Every such event comes back as an :class:`Issue` for the caller to log.

Time stamps (:class:`StampMapper`): ``frame.get_timestamp()`` is milliseconds in the frame's
timestamp domain. ``hardware_clock`` is the camera's own clock (arbitrary origin); ``global_time``
(the librealsense default on D400 cameras) is that clock translated into the host's system clock,
milliseconds since the Unix epoch; ``system_time`` is the host's clock when the frame reached the
driver. ``stamp_mode`` chooses how a timestamp becomes a host/ROS time in nanoseconds:

- ``first_frame``: ``stamp = now_at_first_frame + (t - t_first)``; the first frame fixes one offset
  between the device clock and the node clock, kept for the whole run (intervals are the device's,
  exactly; stamps are late by the first frame's delivery latency, a constant);
- ``device``: ``stamp = t`` taken as Unix-epoch time; only for ``global_time`` / ``system_time``;
- ``auto`` (default): ``device`` for a live camera in the ``global_time`` / ``system_time`` domain,
  else ``first_frame`` (the ``hardware_clock`` domain, and every recording, whose stamps are from
  the past).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import TwinloopError
from .sim2real.physics import CameraIntrinsics

try:  # x86_64 wheels on PyPI; other machines build librealsense with its Python bindings
    import pyrealsense2 as rs
except ImportError:  # pragma: no cover - depends on the machine
    rs = None

__all__ = [
    "STAMP_MODES",
    "Capture",
    "Frame",
    "FrameTracker",
    "Issue",
    "RealSenseCamera",
    "RealSenseConfig",
    "StampMapper",
    "StreamStats",
    "depth_to_mm",
    "intrinsics_from_rs",
    "ms_to_ns",
    "require_pyrealsense2",
    "ros_distortion",
]

log = logging.getLogger(__name__)

STAMP_MODES = ("auto", "first_frame", "device")
PLAYBACK_SUFFIXES = (".db3", ".bag")
LATE_FACTOR = 1.5  # an interval over this many frame periods between consecutive frames is late
EPOCH_DOMAINS = ("global_time", "system_time")  # timestamps in ms since the Unix epoch
COLOR_FORMATS = ("rgb8", "bgr8", "rgba8", "bgra8", "yuyv")  # colour formats turned into RGB


# ----- configuration -------------------------------------------------------------------------
@dataclass(frozen=True)
class RealSenseConfig:
    """What to stream and from where (one ROS parameter per field in camera_node)."""

    serial_no: str = ""  # camera serial number; empty: the only connected camera
    playback_file: str = ""  # a .db3 (or legacy .bag) recording to play instead of a camera
    color_width: int = 640  # colour width, px (live camera; a recording plays as recorded)
    color_height: int = 480  # colour height, px
    color_fps: int = 30  # colour frames per second
    enable_depth: bool = True  # also stream depth, aligned to colour, in mm
    depth_width: int = 640  # depth width before alignment, px (848x480 is the D435 optimum)
    depth_height: int = 480  # depth height before alignment, px
    depth_fps: int = 30  # depth frames per second
    stamp_mode: str = "auto"  # auto | first_frame | device: see the module docstring
    wait_timeout_s: float = 1.0  # a read with no frame for this long counts as a timeout
    frame_queue_size: int = 0  # framesets buffered for the reader; 0: 4 live, 32 playback

    def __post_init__(self) -> None:
        for name in ("color_width", "color_height", "depth_width", "depth_height"):
            if not 0 < getattr(self, name) <= 4096:
                msg = f"{name} must be in (0, 4096] px, got {getattr(self, name)}"
                raise TwinloopError(msg)
        for name in ("color_fps", "depth_fps"):
            if not 0 < getattr(self, name) <= 300:
                msg = f"{name} must be in (0, 300], got {getattr(self, name)}"
                raise TwinloopError(msg)
        if self.stamp_mode not in STAMP_MODES:
            msg = f"unknown stamp_mode {self.stamp_mode!r}. Available: {list(STAMP_MODES)}"
            raise TwinloopError(msg)
        if not (math.isfinite(self.wait_timeout_s) and 0.0 < self.wait_timeout_s <= 60.0):
            msg = f"wait_timeout_s must be in (0, 60] s, got {self.wait_timeout_s}"
            raise TwinloopError(msg)
        if not 0 <= self.frame_queue_size <= 1024:
            msg = f"frame_queue_size must be in [0, 1024], got {self.frame_queue_size}"
            raise TwinloopError(msg)
        if self.playback_file and not self.playback_file.lower().endswith(PLAYBACK_SUFFIXES):
            msg = (
                f"playback_file must be a RealSense recording ({' or '.join(PLAYBACK_SUFFIXES)}), "
                f"got {self.playback_file!r}"
            )
            raise TwinloopError(msg)

    @property
    def is_playback(self) -> bool:
        return bool(self.playback_file)


# ----- frames, issues, statistics ------------------------------------------------------------
@dataclass(frozen=True)
class Frame:
    """One converted frame."""

    image: np.ndarray  # (H, W, 3) uint8 RGB, or (H, W) uint16 depth in mm (aligned to colour)
    number: int  # the device's frame counter
    timestamp_ms: float  # frame.get_timestamp(), ms in `domain`
    domain: str  # hardware_clock | global_time | system_time
    stamp_ns: int  # host/ROS time (StampMapper)


@dataclass(frozen=True)
class Issue:
    """Something the caller should log: a dropped, late or out-of-order frame, a timeout."""

    kind: str  # dropped | late | restart | unaligned | timeout | clock
    stream: str  # color | depth | camera
    message: str


@dataclass(frozen=True)
class Capture:
    """What one read returned: the new colour and depth frames (either may be None)."""

    color: Frame | None = None
    depth: Frame | None = None
    issues: tuple[Issue, ...] = ()


@dataclass
class StreamStats:
    """Counters of one stream."""

    frames: int = 0  # new frames received (all published but the unaligned depth frames)
    dropped: int = 0  # frame numbers that never arrived (gaps in the counter)
    late: int = 0  # frames that came over LATE_FACTOR periods after the previous one
    repeated: int = 0  # framesets the syncer handed over again (not returned twice)
    restarts: int = 0  # times the frame counter went back (camera restarted)
    unaligned: int = 0  # depth frames that came without a colour frame to align to

    def summary(self) -> str:
        return (
            f"{self.frames} frames, {self.dropped} dropped, {self.late} late, "
            f"{self.restarts} restarts, {self.unaligned} unaligned, {self.repeated} repeated"
        )


class FrameTracker:
    """Follows one stream's frame counter and device timestamps; pure, no librealsense."""

    def __init__(self, stream: str, fps: float, stats: StreamStats | None = None) -> None:
        self.stream = stream
        self.period_ms = 1000.0 / fps
        self.stats = stats if stats is not None else StreamStats()
        self.last_number: int | None = None
        self.last_ms: float | None = None

    def update(self, number: int, timestamp_ms: float) -> tuple[bool, list[Issue]]:
        """``(is_new, issues)`` for a frame; a repeated frame is not new and changes nothing."""
        issues: list[Issue] = []
        last, last_ms = self.last_number, self.last_ms
        if last is not None and last_ms is not None:
            if number == last:
                self.stats.repeated += 1
                return False, issues
            if number < last:
                self.stats.restarts += 1
                issues.append(
                    Issue(
                        "restart",
                        self.stream,
                        f"{self.stream} frame counter went back from {last} to {number} "
                        "(camera restarted?): following the new count",
                    )
                )
            elif number > last + 1:
                missing = number - last - 1
                self.stats.dropped += missing
                issues.append(
                    Issue(
                        "dropped",
                        self.stream,
                        f"{self.stream} frame {number} follows {last}: {missing} frame(s) dropped "
                        f"({self.stats.dropped} in all)",
                    )
                )
            elif timestamp_ms - last_ms > LATE_FACTOR * self.period_ms:
                self.stats.late += 1
                issues.append(
                    Issue(
                        "late",
                        self.stream,
                        f"{self.stream} frame {number} came {timestamp_ms - last_ms:.1f} ms after "
                        f"frame {last} (period {self.period_ms:.1f} ms; {self.stats.late} late "
                        "in all)",
                    )
                )
        self.last_number, self.last_ms = number, timestamp_ms
        self.stats.frames += 1
        return True, issues


def ms_to_ns(ms: float) -> int:
    """Milliseconds (a float, as librealsense gives them) -> integer ns, exact to the float.

    ``round(ms * 1e6)`` loses up to ~256 ns on epoch times (1.8e18 ns is beyond a double's 53
    bits); the whole and the fractional milliseconds are converted separately instead.
    """
    whole = math.floor(ms)
    return int(whole) * 1_000_000 + round((ms - whole) * 1e6)


class StampMapper:
    """Device timestamps (ms, in a timestamp domain) -> host/ROS nanoseconds (module docstring)."""

    def __init__(self, mode: str, *, live: bool, now_ns: Callable[[], int]) -> None:
        if mode not in STAMP_MODES:
            msg = f"unknown stamp_mode {mode!r}. Available: {list(STAMP_MODES)}"
            raise TwinloopError(msg)
        self.mode, self.live, self._now_ns = mode, live, now_ns
        self.base_ns: int | None = None  # node time of the first frame (first_frame mode)
        self.base_ms: float | None = None  # its device timestamp
        self.last_ms: float | None = None
        self.resolved: str | None = None  # the mode in use once the first frame came

    def _resolve(self, domain: str) -> str:
        if self.mode == "auto":
            return "device" if self.live and domain in EPOCH_DOMAINS else "first_frame"
        if self.mode == "device" and domain not in EPOCH_DOMAINS:
            msg = (
                f"stamp_mode 'device' needs timestamps in the host clock (domain global_time or "
                f"system_time), but the frames are in {domain}: use stamp_mode first_frame or auto"
            )
            raise TwinloopError(msg)
        return self.mode

    def __call__(self, timestamp_ms: float, domain: str) -> tuple[int, Issue | None]:
        if self.resolved is None:
            self.resolved = self._resolve(domain)
            log.info("stamps: %s (frames in the %s domain)", self.resolved, domain)
        if self.resolved == "device":
            return ms_to_ns(timestamp_ms), None
        issue = None
        if self.base_ns is None or self.base_ms is None:
            self.base_ns, self.base_ms = self._now_ns(), timestamp_ms
        elif self.last_ms is not None and timestamp_ms < self.last_ms - 1000.0:
            # The device clock jumped back by over a second (a restart): a new offset.
            issue = Issue(
                "clock",
                "camera",
                f"device clock went back from {self.last_ms:.1f} ms to {timestamp_ms:.1f} ms: "
                "stamps re-based on the node clock",
            )
            self.base_ns, self.base_ms = self._now_ns(), timestamp_ms
        self.last_ms = timestamp_ms if self.last_ms is None else max(self.last_ms, timestamp_ms)
        return self.base_ns + ms_to_ns(timestamp_ms) - ms_to_ns(self.base_ms), issue


# ----- conversions ---------------------------------------------------------------------------
def ros_distortion(model: str, coeffs: tuple[float, ...]) -> tuple[str, tuple[float, ...]]:
    """A librealsense distortion model name and coefficients -> ROS ``distortion_model`` and D.

    Brown-Conrady variants are ``plumb_bob`` (k1, k2, p1, p2, k3; as realsense-ros does; note
    ``inverse_brown_conrady`` is the undistorting direction, and D435/D415 colour coefficients
    are zero), Kannala-Brandt is ``equidistant`` (k1..k4), no distortion is ``plumb_bob`` zeros.
    """
    c = tuple(float(v) for v in coeffs) + (0.0,) * 5
    if model in ("brown_conrady", "modified_brown_conrady", "inverse_brown_conrady"):
        return "plumb_bob", c[:5]
    if model == "none":
        return "plumb_bob", (0.0,) * 5
    if model == "kannala_brandt4":
        return "equidistant", c[:4]
    msg = f"the camera's distortion model {model!r} has no ROS equivalent"
    raise TwinloopError(msg)


def intrinsics_from_rs(intr: Any) -> CameraIntrinsics:
    """``rs.intrinsics`` -> CameraIntrinsics with the ROS distortion model and D."""
    model, coeffs = ros_distortion(str(intr.model).rsplit(".", 1)[-1], tuple(intr.coeffs))
    return CameraIntrinsics(
        width=int(intr.width),
        height=int(intr.height),
        fx=float(intr.fx),
        fy=float(intr.fy),
        ppx=float(intr.ppx),
        ppy=float(intr.ppy),
        model=model,
        coeffs=coeffs,
    )


def depth_to_mm(raw: np.ndarray, depth_scale: float) -> np.ndarray:
    """z16 device units -> uint16 millimetres; 0 stays 0 (no data), beyond 65535 mm becomes 0."""
    raw = np.asarray(raw)
    if raw.dtype != np.uint16:
        msg = f"depth must be uint16 (z16), got {raw.dtype}"
        raise TwinloopError(msg)
    if not (math.isfinite(depth_scale) and depth_scale > 0.0):
        msg = f"depth scale must be a positive number of metres per unit, got {depth_scale}"
        raise TwinloopError(msg)
    factor = depth_scale * 1000.0
    if abs(factor - 1.0) < 1e-6:  # the D400 default: units are already millimetres
        return np.array(raw, copy=True)
    mm = np.rint(raw.astype(np.float32) * np.float32(factor))
    mm[mm > 65535.0] = 0.0
    return mm.astype(np.uint16)


def _color_to_rgb(data: np.ndarray, fmt: str) -> np.ndarray:
    if fmt == "rgb8":
        return np.array(data, copy=True)
    if fmt == "bgr8":
        return np.ascontiguousarray(data[..., ::-1])
    if fmt in ("rgba8", "bgra8"):
        rgb = data[..., :3] if fmt == "rgba8" else data[..., 2::-1]
        return np.ascontiguousarray(rgb)
    if fmt == "yuyv":
        import cv2

        return cv2.cvtColor(data.reshape(data.shape[0], -1, 2), cv2.COLOR_YUV2RGB_YUYV)
    msg = f"cannot turn a {fmt} colour stream into RGB. Supported: {list(COLOR_FORMATS)}"
    raise TwinloopError(msg)


def _name(enum_value: Any) -> str:
    """``timestamp_domain.global_time`` -> ``global_time``."""
    return str(enum_value).rsplit(".", 1)[-1]


# ----- the camera ----------------------------------------------------------------------------
@dataclass
class _Device:
    serial: str
    name: str
    is_playback: bool


def require_pyrealsense2() -> Any:
    """The pyrealsense2 module, or TwinloopError saying how to install it."""
    if rs is None:
        msg = (
            "pyrealsense2 is not installed: `pip install pyrealsense2` (x86_64 wheels), or build "
            "librealsense with BUILD_PYTHON_BINDINGS on other machines"
        )
        raise TwinloopError(msg)
    return rs


class RealSenseCamera:
    """A RealSense (or a recording of one) behind one pipeline; see the module docstring.

    The constructor checks everything it can without streaming (file, serial, stream modes) and
    raises TwinloopError naming the problem; :meth:`start` starts streaming; use it as a context
    manager or call :meth:`stop`.
    """

    def __init__(self, cfg: RealSenseConfig, *, now_ns: Callable[[], int] = time.time_ns) -> None:
        self.cfg = cfg
        self._rs = require_pyrealsense2()
        self._pipeline = self._rs.pipeline()
        self._rs_config = self._make_config()
        profile = self._resolve()
        dev = profile.get_device()
        self.device = _Device(
            serial=self._info(dev, "serial_number"),
            name=self._info(dev, "name"),
            is_playback=dev.is_playback(),
        )
        self._check_serial()
        color = profile.get_stream(self._rs.stream.color).as_video_stream_profile()
        self.color_format = _name(color.format())
        if self.color_format not in COLOR_FORMATS:
            msg = (
                f"{self._what()} has a {self.color_format} colour stream; "
                f"camera_node converts {list(COLOR_FORMATS)}"
            )
            raise TwinloopError(msg)
        self.intrinsics = intrinsics_from_rs(color.get_intrinsics())
        self.color_fps = float(color.fps())
        self.depth_scale = 0.0
        self.depth_fps = 0.0
        if cfg.enable_depth:
            depth = profile.get_stream(self._rs.stream.depth).as_video_stream_profile()
            self.depth_fps = float(depth.fps())
            self.depth_scale = float(dev.first_depth_sensor().get_depth_scale())
            if not self.depth_scale > 0.0:
                msg = f"the camera reports a depth scale of {self.depth_scale}: cannot give mm"
                raise TwinloopError(msg)
        if not self.device.is_playback:
            self._enable_global_time(dev)
        self.color_stats = StreamStats()
        self.depth_stats = StreamStats()
        self.timeouts = 0
        self._color = FrameTracker("color", self.color_fps, self.color_stats)
        self._depth = FrameTracker("depth", self.depth_fps or 30.0, self.depth_stats)
        self._stamps = StampMapper(cfg.stamp_mode, live=not cfg.is_playback, now_ns=now_ns)
        self._align = self._rs.align(self._rs.stream.color) if cfg.enable_depth else None
        self._queue: Any = None
        self._started = False
        self.finished = False  # a recording played to its end

    # ----- set-up ----------------------------------------------------------------------------
    def _make_config(self) -> Any:
        r, cfg = self._rs, self.cfg
        config = r.config()
        if cfg.is_playback:
            path = Path(cfg.playback_file).expanduser()
            if not path.is_file():
                msg = f"playback_file {str(path)!r} does not exist (or is not a file)"
                raise TwinloopError(msg)
            config.enable_device_from_file(str(path), repeat_playback=False)
            config.enable_stream(r.stream.color)  # as recorded
            if cfg.enable_depth:
                config.enable_stream(r.stream.depth)
            return config
        serials = self._connected_serials()
        if cfg.serial_no and cfg.serial_no not in serials:
            msg = (
                f"no RealSense camera with serial_no {cfg.serial_no!r} is connected "
                f"(connected: {serials})"
            )
            raise TwinloopError(msg)
        if not serials:
            msg = (
                "no RealSense camera is connected (check the USB 3 cable and the udev rules, "
                "or give playback_file to play a recording)"
            )
            raise TwinloopError(msg)
        if cfg.serial_no:
            config.enable_device(cfg.serial_no)
        elif len(serials) > 1:
            msg = (
                f"{len(serials)} RealSense cameras are connected {serials}: choose one with "
                "serial_no"
            )
            raise TwinloopError(msg)
        config.enable_stream(
            r.stream.color, cfg.color_width, cfg.color_height, r.format.rgb8, cfg.color_fps
        )
        if cfg.enable_depth:
            config.enable_stream(
                r.stream.depth, cfg.depth_width, cfg.depth_height, r.format.z16, cfg.depth_fps
            )
        return config

    def _connected_serials(self) -> list[str]:
        r = self._rs
        return [d.get_info(r.camera_info.serial_number) for d in r.context().query_devices()]

    def _resolve(self) -> Any:
        try:
            return self._rs_config.resolve(self._rs.pipeline_wrapper(self._pipeline))
        except RuntimeError as err:
            msg = f"cannot open {self._what()}: {err}. {self._available_streams()}"
            raise TwinloopError(msg) from err

    def _what(self) -> str:
        cfg = self.cfg
        if cfg.is_playback:
            want = "colour" + (" and depth" if cfg.enable_depth else "")
            return f"recording {cfg.playback_file!r} ({want} wanted)"
        want = f"colour {cfg.color_width}x{cfg.color_height} rgb8 at {cfg.color_fps} fps"
        if cfg.enable_depth:
            want += f", depth {cfg.depth_width}x{cfg.depth_height} z16 at {cfg.depth_fps} fps"
        return f"camera {cfg.serial_no or '(the connected one)'} with {want}"

    def _available_streams(self) -> str:
        """The streams the file or camera offers, for error messages (best effort)."""
        r = self._rs
        try:
            if self.cfg.is_playback:
                ctx = r.context()
                dev = ctx.load_device(str(Path(self.cfg.playback_file).expanduser()))
            else:
                devices = r.context().query_devices()
                dev = next(
                    d
                    for d in devices
                    if not self.cfg.serial_no
                    or d.get_info(r.camera_info.serial_number) == self.cfg.serial_no
                )
            modes = set()
            for sensor in dev.query_sensors():
                for p in sensor.get_stream_profiles():
                    if p.stream_type() in (r.stream.color, r.stream.depth):
                        v = p.as_video_stream_profile()
                        modes.add(
                            f"{_name(p.stream_type())} {v.width()}x{v.height()} "
                            f"{_name(p.format())} at {p.fps()} fps"
                        )
            return f"It offers: {sorted(modes) or 'no colour or depth streams'}"
        except Exception as err:  # the listing is only a hint
            return f"(could not list its streams: {err})"

    def _info(self, dev: Any, key: str) -> str:
        info = getattr(self._rs.camera_info, key)
        return str(dev.get_info(info)) if dev.supports(info) else ""

    def _check_serial(self) -> None:
        want = self.cfg.serial_no
        if self.cfg.is_playback and want and want != self.device.serial:
            msg = (
                f"recording {self.cfg.playback_file!r} is of camera {self.device.serial!r}, "
                f"not serial_no {want!r}"
            )
            raise TwinloopError(msg)

    def _enable_global_time(self, dev: Any) -> None:
        """Ask every sensor for global-time stamps (the D400 default; explicit here)."""
        option = self._rs.option.global_time_enabled
        for sensor in dev.query_sensors():
            try:
                if sensor.supports(option) and not sensor.is_option_read_only(option):
                    sensor.set_option(option, 1.0)
            except RuntimeError as err:  # not fatal: stamp_mode auto copes with any domain
                log.warning("could not enable global time on %s: %s", sensor, err)

    # ----- streaming -------------------------------------------------------------------------
    def start(self) -> None:
        if self._started:
            return
        size = self.cfg.frame_queue_size or (32 if self.cfg.is_playback else 4)
        self._queue = self._rs.frame_queue(size, keep_frames=True)
        try:
            self._pipeline.start(self._rs_config, self._queue)
        except RuntimeError as err:
            msg = f"cannot start {self._what()}: {err}"
            raise TwinloopError(msg) from err
        self._started = True
        log.info("streaming from %s %s", self.device.name, self.device.serial)

    def stop(self) -> None:
        if self._started:
            self._started = False
            try:
                self._pipeline.stop()
            except RuntimeError as err:  # already stopped by librealsense
                log.debug("pipeline stop: %s", err)

    def __enter__(self) -> RealSenseCamera:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _playback_stopped(self) -> bool:
        try:
            playback = self._pipeline.get_active_profile().get_device().as_playback()
            return playback.current_status() == self._rs.playback_status.stopped
        except RuntimeError:
            return True

    def read(self, timeout_s: float | None = None) -> Capture:
        """The frames new since the last read (waits up to ``timeout_s``, default the config's).

        A recording that has played to its end sets :attr:`finished` and returns an empty capture.
        """
        if not self._started:
            msg = "the camera is not streaming: call start() first"
            raise TwinloopError(msg)
        wait_ms = round(1000 * (self.cfg.wait_timeout_s if timeout_s is None else timeout_s))
        # A recording is checked for its end every 100 ms, a camera waits the whole timeout.
        step_ms = min(wait_ms, 100) if self.cfg.is_playback else wait_ms
        waited_ms = 0
        while True:
            ok, frame = self._queue.try_wait_for_frame(step_ms)
            if ok:
                break
            waited_ms += step_ms
            if self.cfg.is_playback and self._playback_stopped():
                ok, frame = self._queue.try_wait_for_frame(0)  # the last ones may still be here
                if ok:
                    break
                self.finished = True
                return Capture()
            if waited_ms >= wait_ms:
                self.timeouts += 1
                issue = Issue(
                    "timeout",
                    "camera",
                    f"no frame for {waited_ms} ms ({self.timeouts} timeouts in all; camera "
                    "unplugged or USB bandwidth short?)",
                )
                return Capture(issues=(issue,))
        return self._convert(frame.as_frameset())

    def _convert(self, frames: Any) -> Capture:
        issues: list[Issue] = []
        color = depth = None
        c = frames.get_color_frame()
        if c:
            color = self._frame(c, self._color, issues, self._color_image)
        if self._align is not None:
            d = frames.get_depth_frame()
            if d:
                new, found = self._depth.update(d.get_frame_number(), d.get_timestamp())
                issues += found
                if new:
                    depth = self._aligned_depth(frames, d, c, issues)
        return Capture(color=color, depth=depth, issues=tuple(issues))

    def _frame(
        self,
        f: Any,
        tracker: FrameTracker,
        issues: list[Issue],
        image: Callable[[Any], np.ndarray],
    ) -> Frame | None:
        number, ts = int(f.get_frame_number()), float(f.get_timestamp())
        new, found = tracker.update(number, ts)
        issues += found
        if not new:
            return None
        return self._stamped(image(f), number, ts, _name(f.get_frame_timestamp_domain()), issues)

    def _stamped(
        self, image: np.ndarray, number: int, ts: float, domain: str, issues: list[Issue]
    ) -> Frame:
        stamp_ns, issue = self._stamps(ts, domain)
        if issue is not None:
            issues.append(issue)
        return Frame(image=image, number=number, timestamp_ms=ts, domain=domain, stamp_ns=stamp_ns)

    def _color_image(self, f: Any) -> np.ndarray:
        return _color_to_rgb(np.asanyarray(f.get_data()), self.color_format)

    def _aligned_depth(self, frames: Any, d: Any, c: Any, issues: list[Issue]) -> Frame | None:
        number, ts = int(d.get_frame_number()), float(d.get_timestamp())
        if not c:
            self.depth_stats.unaligned += 1
            issues.append(
                Issue(
                    "unaligned",
                    "depth",
                    f"depth frame {number} came without a colour frame to align to: not "
                    f"published ({self.depth_stats.unaligned} in all)",
                )
            )
            return None
        if self._align is None:  # depth is disabled: nothing to align
            return None
        aligned = self._align.process(frames).get_depth_frame()
        mm = depth_to_mm(np.asanyarray(aligned.get_data()), self.depth_scale)
        domain = _name(d.get_frame_timestamp_domain())
        return self._stamped(mm, number, ts, domain, issues)

    def summary(self) -> str:
        text = f"colour: {self.color_stats.summary()}"
        if self.cfg.enable_depth:
            text += f"; depth: {self.depth_stats.summary()}"
        return text + f"; {self.timeouts} timeouts"
