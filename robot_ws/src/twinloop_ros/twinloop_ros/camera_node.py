"""camera_node: a RealSense (or a recording of one) on the realsense-ros topics, via pyrealsense2.

A thin adapter over :class:`twinloop.camera.RealSenseCamera` (colour + depth aligned to colour
from one ``rs.pipeline``). With ``camera_namespace: camera`` and ``camera_name: camera`` (the
realsense-ros defaults) it publishes, with sensor-data QoS:

- ``/camera/camera/color/image_raw`` (rgb8) and ``/camera/camera/color/camera_info`` (K, P, D and
  the distortion model from the colour intrinsics);
- with ``enable_depth``: ``/camera/camera/aligned_depth_to_color/image_raw`` (16UC1, millimetres:
  raw z16 times the device depth scale) and ``.../aligned_depth_to_color/camera_info`` (the colour
  intrinsics, which aligned depth shares);

all in frame ``<camera_name>_color_optical_frame``. Each image and its camera_info carry the
stamp of the frame's hardware timestamp (``stamp_mode``, see twinloop.camera and docs/camera.md).

Give ``serial_no`` to pick a camera, or ``playback_file`` (.db3 / .bag) to play a recording
through the same pipeline; the node exits 0 when the recording ends. A missing file, a camera
that is not connected, or a stream mode the camera cannot give fails the start with exit code 2.
Dropped (gaps in the frame counter), late and unaligned frames and timeouts are logged
(throttled per kind) and counted; the counts are logged when the node stops.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.publisher import Publisher
from rclpy.task import Future
from sensor_msgs.msg import CameraInfo, Image

from twinloop.camera import Capture, Frame, RealSenseCamera, RealSenseConfig
from twinloop.errors import TwinloopError

from .conversions import camera_info_from_intrinsics, image_to_msg, stamp_from_ns
from .errors import RosAdapterError
from .node_utils import (
    SENSOR_QOS,
    declare_params,
    exit_if_help,
    main_exit,
    params_from_dataclass,
)

__all__ = ["CameraNode", "CameraNodeConfig", "main", "topic_names"]

_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


@dataclass(frozen=True)
class CameraNodeConfig:
    """The node's own parameters (the camera's are twinloop.camera.RealSenseConfig)."""

    camera_name: str = "camera"  # realsense-ros camera_name: topic prefix and frame-id prefix
    camera_namespace: str = "camera"  # realsense-ros camera_namespace ("" for none)
    wait_for_subscribers_s: float = 0.0  # > 0: stream once each image topic has a reader (or then)

    def __post_init__(self) -> None:
        for key in ("camera_name", "camera_namespace"):
            value = getattr(self, key)
            if not set(value) <= _NAME_CHARS or (value and value[0].isdigit()):
                msg = (
                    f"{key} must be letters, digits and '_' (not starting with a digit), "
                    f"got {value!r}"
                )
                raise RosAdapterError(msg)
        if not self.camera_name:
            msg = "camera_name must not be empty"
            raise RosAdapterError(msg)
        if not 0.0 <= self.wait_for_subscribers_s <= 600.0:
            msg = f"wait_for_subscribers_s must be in [0, 600], got {self.wait_for_subscribers_s}"
            raise RosAdapterError(msg)

    @property
    def frame_id(self) -> str:
        return f"{self.camera_name}_color_optical_frame"


def topic_names(cfg: CameraNodeConfig) -> dict[str, str]:
    """The realsense-ros topic names for ``cfg`` (``/<namespace>/<name>/color/image_raw`` ...)."""
    prefix = "/" + "/".join(p for p in (cfg.camera_namespace, cfg.camera_name) if p)
    return {
        "color": f"{prefix}/color/image_raw",
        "color_info": f"{prefix}/color/camera_info",
        "depth": f"{prefix}/aligned_depth_to_color/image_raw",
        "depth_info": f"{prefix}/aligned_depth_to_color/camera_info",
    }


def _camera_config(node: Node) -> RealSenseConfig:
    """RealSenseConfig from parameters; serial_no must be a string (ROS reads 123 as an int)."""
    descriptor = ParameterDescriptor(dynamic_typing=True, read_only=True)
    serial = node.declare_parameter("serial_no", "", descriptor).value
    if not isinstance(serial, str):
        msg = (
            f"serial_no must be a string, got {serial!r}: quote it, "
            f"-p serial_no:=\"'{serial}'\" (a number would lose leading zeros)"
        )
        raise RosAdapterError(msg)
    defaults = {
        f.name: f.default for f in dataclasses.fields(RealSenseConfig) if f.name != "serial_no"
    }
    return RealSenseConfig(serial_no=serial, **declare_params(node, defaults))


def _refuse_unknown_parameters(node: Node) -> None:
    """A parameter given at start that the node does not have is an error, not ignored.

    rclpy drops undeclared overrides silently, so a graph file written for another camera node
    (``image_width`` instead of ``color_width``) would run with the defaults.
    """
    given = getattr(node, "_parameter_overrides", {})  # rclpy keeps the start values here
    unknown = sorted(
        name
        for name in given
        if not node.has_parameter(name) and not name.startswith("qos_overrides.")
    )
    if unknown:
        declared = node.get_parameters_by_prefix("")
        available = sorted(n for n in declared if n != "start_type_description_service")
        msg = f"unknown parameter(s) {unknown} for camera_node. Available: {available}"
        raise RosAdapterError(msg)


# seconds between two log lines of one kind of frame issue, per stream
_THROTTLE_S = {"dropped": 1.0, "late": 1.0, "restart": 1.0, "clock": 1.0, "unaligned": 5.0}


class CameraNode(Node):
    def __init__(self) -> None:
        super().__init__("camera")
        self.cfg = params_from_dataclass(self, CameraNodeConfig)
        camera_cfg = _camera_config(self)
        _refuse_unknown_parameters(self)
        clock = self.get_clock()
        self.camera = RealSenseCamera(camera_cfg, now_ns=lambda: clock.now().nanoseconds)
        self.topics = topic_names(self.cfg)
        self._frame_id = self.cfg.frame_id
        self._info = camera_info_from_intrinsics(self.camera.intrinsics, frame_id=self._frame_id)
        self._color_pub = self.create_publisher(Image, self.topics["color"], SENSOR_QOS)
        self._color_info_pub = self.create_publisher(
            CameraInfo, self.topics["color_info"], SENSOR_QOS
        )
        self._depth_pub = self._depth_info_pub = None
        if camera_cfg.enable_depth:
            self._depth_pub = self.create_publisher(Image, self.topics["depth"], SENSOR_QOS)
            self._depth_info_pub = self.create_publisher(
                CameraInfo, self.topics["depth_info"], SENSOR_QOS
            )
        self.done = Future()  # run_node stops when it completes; the result is the exit code
        self._stop = threading.Event()
        self._last_logged: dict[tuple[str, str], float] = {}
        self._exit_code: int | None = None
        self._thread = threading.Thread(target=self._run, name="camera-capture", daemon=True)
        self.create_timer(0.1, self._check_done)
        source = (
            camera_cfg.playback_file or f"{self.camera.device.name} {self.camera.device.serial}"
        )
        intr = self.camera.intrinsics
        self.get_logger().info(
            f"camera ready: {source}, colour {intr.width}x{intr.height} at "
            f"{self.camera.color_fps:g} fps"
            + (f", aligned depth (scale {self.camera.depth_scale:g} m)" if self._depth_pub else "")
            + f", topics {self.topics['color']} ..., frame {self._frame_id}"
        )
        self._thread.start()

    # ----- the capture thread ----------------------------------------------------------------
    def _image_publishers(self) -> list[Publisher]:
        return [p for p in (self._color_pub, self._depth_pub) if p is not None]

    def _wait_for_subscribers(self) -> None:
        """Wait (up to wait_for_subscribers_s) until every image topic has a reader."""
        wait = self.cfg.wait_for_subscribers_s
        if wait <= 0.0:
            return
        pubs = self._image_publishers()
        if all(p.get_subscription_count() > 0 for p in pubs):
            return
        self.get_logger().info(f"waiting up to {wait:g} s for a reader of every image topic")
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self._stop.wait(0.05):
                return
            if all(p.get_subscription_count() > 0 for p in pubs):
                self._stop.wait(0.5)  # let the readers match this writer too
                return
        self.get_logger().warning(f"no reader on every image topic after {wait:g} s: starting")

    def _run(self) -> None:
        code = 0
        try:
            self._wait_for_subscribers()
            if self._stop.is_set():
                return
            self.camera.start()
            while not self._stop.is_set():
                capture = self.camera.read()
                if self.camera.finished:
                    self.get_logger().info("the recording has ended")
                    break
                self._publish(capture)
        except TwinloopError as err:
            self.get_logger().error(f"camera stopped: {err}")
            code = 1
        except Exception as err:  # the context shut down under a publish: that is the stop
            if rclpy.ok(context=self.context) and not self._stop.is_set():
                self.get_logger().error(f"camera thread failed: {err!r}")
                code = 1
        finally:
            self.camera.stop()
            self._exit_code = code

    def _publish(self, capture: Capture) -> None:
        for issue in capture.issues:
            self._log_issue(issue.kind, issue.stream, issue.message)
        if capture.color is not None:
            self._send(capture.color, self._color_pub, self._color_info_pub)
        if capture.depth is not None and self._depth_pub is not None:
            self._send(capture.depth, self._depth_pub, self._depth_info_pub)

    def _send(self, frame: Frame, pub: Publisher, info_pub: Publisher | None) -> None:
        stamp = stamp_from_ns(frame.stamp_ns)
        pub.publish(image_to_msg(frame.image, stamp=stamp, frame_id=self._frame_id))
        if info_pub is not None:
            self._info.header.stamp = stamp
            info_pub.publish(self._info)

    def _log_issue(self, kind: str, stream: str, message: str) -> None:
        """Warn, at most once per interval for each (kind, stream): one never hides another."""
        now = time.monotonic()
        key = (kind, stream)
        if now - self._last_logged.get(key, -1e9) >= _THROTTLE_S.get(kind, 5.0):
            self._last_logged[key] = now
            self.get_logger().warning(message)

    def _check_done(self) -> None:
        if self._exit_code is not None and not self.done.done():
            self.get_logger().info(f"frames: {self.camera.summary()}")
            self.done.set_result(self._exit_code)

    def destroy_node(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.camera.cfg.wait_timeout_s + 2.0)
        if not self.done.done():
            self.get_logger().info(f"frames: {self.camera.summary()}")
        self.camera.stop()
        super().destroy_node()


def main() -> None:
    exit_if_help(__doc__, CameraNodeConfig, RealSenseConfig)
    main_exit(CameraNode)


if __name__ == "__main__":
    main()
