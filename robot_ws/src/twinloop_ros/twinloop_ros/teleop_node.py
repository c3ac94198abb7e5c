"""teleop_node: a human teleoperator drives the arm with a keyboard, a SpaceMouse or a gamepad.

A thin adapter over :mod:`twinloop.teleop`: the device is read into a ``DeviceSample`` once per
control step (``control_hz``), :class:`~twinloop.teleop.ActionMapper` applies deadband, scaling
and the deadman, and the node publishes ``[dx, dy, dz, dyaw, gripper]`` on /twinloop/action
(JointState, ``header.frame_id`` ``"teleop"``; safety_node limits it before it reaches the arm).
Episode keys or buttons go through :class:`~twinloop.teleop.EpisodeStateMachine` to
/twinloop/episode (JSON ``{"event", "episode", "stamp", "operator", "device", ...}``); an event
out of order is logged and ignored.

Devices (``device`` parameter):

- ``keyboard``: keys from the terminal on stdin (or ``tty``) in cbreak mode (no echo, no line
  buffering; Ctrl-C still stops the node). A motion key is its own deadman: it moves the arm for
  ``keyboard.hold_s`` after each press or auto-repeat. Run the node in its own terminal.
- ``spacemouse``: spacenav's /spacenav/twist (Twist, or TwistStamped with ``twist_stamped``) and
  /spacenav/joy buttons, or the HID device through pyspacemouse (``spacemouse_source``).
- ``gamepad``: /joy (sensor_msgs/Joy from joy's game_controller_node); Xbox-style map by default.

With a SpaceMouse or gamepad the terminal (when stdin is one) also gives the episode keys.
Nothing moves without the deadman; input older than ``input_timeout_s`` stops motion. Bad
messages are logged (throttled), counted and dropped. See docs/teleop.md.

Supervising a policy (``publish_actions: false``): the node publishes no action at all, only
/twinloop/deadman (True while the deadman is held and the device streams) and the episode
events. With safety_node's ``deadman_sources: ["*"]`` the policy's actions then reach the arm
only while the operator holds the deadman (graph_finetune_robot.yaml).
"""

from __future__ import annotations

import atexit
import getpass
import os
import select
import sys
import termios
import threading
import time
import tty
from dataclasses import dataclass
from typing import Any

from geometry_msgs.msg import Twist, TwistStamped
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.task import Future
from sensor_msgs.msg import JointState, Joy
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger

from twinloop.teleop import (
    ActionMapper,
    DeviceSample,
    EpisodeStateMachine,
    GamepadConfig,
    JoyConfig,
    JoyReader,
    KeyboardConfig,
    KeyboardReader,
    SpaceMouseConfig,
    TeleopConfig,
    key_help,
)

from .conversions import action_to_msg, episode_event_to_msg
from .errors import RosAdapterError
from .node_utils import COMMAND_QOS, SENSOR_QOS, main_exit, params_from_dataclass, qos_for

__all__ = ["DEVICES", "RawTerminal", "TeleopNode", "TeleopNodeConfig", "main"]

DEVICES = ("keyboard", "spacemouse", "gamepad")
SPACEMOUSE_SOURCES = ("topic", "pyspacemouse")
FRAME_ID = "teleop"
KEY_POLL_HZ = 50.0  # terminal reads per second (key times are taken when read)
RESET_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class TeleopNodeConfig:
    """The node's parameters (one ROS parameter per field; TeleopConfig's fields too)."""

    device: str = "keyboard"  # keyboard | spacemouse | gamepad
    control_hz: float = 10.0  # actions per second on /twinloop/action
    operator: str = ""  # name in every episode event; "" = the login name
    task: str = ""  # task text added to start events
    first_episode: int = 0  # number of the first episode
    idle_publish: bool = True  # zero actions while the deadman is released; False: one, then none
    # False: supervise a policy: the deadman and the episode buttons only, never an action
    publish_actions: bool = True
    keyboard_events: bool = True  # spacemouse/gamepad: also read episode keys from the terminal
    tty: str = ""  # terminal to read keys from ("" = stdin), e.g. /dev/pts/3
    spacemouse_source: str = "topic"  # topic (spacenav driver) | pyspacemouse (HID, no driver)
    twist_stamped: bool = False  # /spacenav/twist is TwistStamped (spacenav's use_twist_stamped)
    reset_service: str = ""  # std_srvs/Trigger called before each start (sim: /twin/reset)
    exit_on_quit: bool = True  # exit 0 after the quit event

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            msg = f"unknown device {self.device!r}. Available: {list(DEVICES)}"
            raise RosAdapterError(msg)
        if not 0.0 < self.control_hz <= 100.0:
            msg = f"control_hz must be in (0, 100], got {self.control_hz}"
            raise RosAdapterError(msg)
        if self.spacemouse_source not in SPACEMOUSE_SOURCES:
            msg = (
                f"unknown spacemouse_source {self.spacemouse_source!r}. "
                f"Available: {list(SPACEMOUSE_SOURCES)}"
            )
            raise RosAdapterError(msg)
        if self.first_episode < 0:
            msg = f"first_episode must be >= 0, got {self.first_episode}"
            raise RosAdapterError(msg)
        if not self.publish_actions and self.device == "keyboard":
            msg = (
                "publish_actions false (supervising a policy) needs a deadman button: use device "
                "spacemouse or gamepad (a keyboard's motion keys are its only deadman)"
            )
            raise RosAdapterError(msg)


class RawTerminal:
    """Key bytes from a terminal in cbreak mode; the old mode comes back on :meth:`close`."""

    def __init__(self, path: str = "") -> None:
        self._own = bool(path)
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY) if path else sys.stdin.fileno()
        except (OSError, ValueError) as err:
            msg = f"cannot open the terminal {path or 'stdin'}: {err}"
            raise RosAdapterError(msg) from err
        if not os.isatty(self.fd):
            self._close_fd()
            msg = (
                f"{path or 'stdin'} is not a terminal: the keyboard needs one. Run teleop_node in "
                "its own terminal (ros2 run twinloop_ros teleop_node), or set tty to a terminal"
            )
            raise RosAdapterError(msg)
        self._saved: list[Any] | None = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd, termios.TCSANOW)  # no echo, no line buffering; ISIG stays on
        atexit.register(self.close)
        self.eof = False

    def read(self) -> bytes:
        """The bytes waiting now (never blocks); sets ``eof`` when the terminal is gone."""
        if self.eof or self._saved is None:
            return b""
        try:
            ready, _, _ = select.select([self.fd], [], [], 0.0)
            data = os.read(self.fd, 1024) if ready else b""
        except OSError:
            data, ready = b"", [self.fd]
        if ready and not data:
            self.eof = True
        return data

    def close(self) -> None:
        if self._saved is not None:
            try:
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            except termios.error:
                pass  # the terminal is gone
            self._saved = None
            self._close_fd()
        atexit.unregister(self.close)

    def _close_fd(self) -> None:
        if self._own:
            os.close(self.fd)


class PySpaceMouse:
    """The SpaceMouse read directly over HID with pyspacemouse (optional package), in a thread."""

    def __init__(self) -> None:
        try:
            import pyspacemouse
        except ImportError as err:
            msg = (
                "spacemouse_source 'pyspacemouse' needs the pyspacemouse package (pip install "
                "pyspacemouse; Debian libhidapi-dev); or run the spacenav driver and use 'topic'"
            )
            raise RosAdapterError(msg) from err
        self._mod = pyspacemouse
        if not pyspacemouse.open():
            msg = "pyspacemouse found no SpaceMouse: check the USB cable and hidraw permissions"
            raise RosAdapterError(msg)
        self._lock = threading.Lock()
        self._latest: tuple[list[float], list[int], float] | None = None
        self._stop = threading.Event()
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name="pyspacemouse", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                s = self._mod.read()
            except Exception as err:  # the device went away: stop; the reader goes stale
                self.error = repr(err)
                return
            if s is not None:
                # pyspacemouse: x right, y forward, z up -> spacenav's x forward, y left, z up.
                axes = [s.y, -s.x, s.z, s.roll, s.pitch, s.yaw]
                buttons = list(getattr(s, "buttons", getattr(s, "button", [])))
                with self._lock:
                    self._latest = (axes, buttons, time.monotonic())
            self._stop.wait(0.005)

    def latest(self) -> tuple[list[float], list[int], float] | None:
        with self._lock:
            return self._latest

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)
        try:
            self._mod.close()
        except Exception:  # closing a device that went away
            pass


class TeleopNode(Node):
    def __init__(self) -> None:
        super().__init__("teleop")
        self.cfg = cfg = params_from_dataclass(self, TeleopNodeConfig)
        self._mapper = ActionMapper(params_from_dataclass(self, TeleopConfig))
        self._episodes = EpisodeStateMachine(first_episode=cfg.first_episode)
        self._operator = cfg.operator or _login_name()
        self.done = Future()  # result: the exit code (run_node stops when it completes)
        self.published = self.dropped = self.rejected = 0
        self._was_moving = False
        self._stopped = False
        self._terminal: RawTerminal | None = None
        self._keys: KeyboardReader | None = None
        self._joy: JoyReader | None = None
        self._pysm: PySpaceMouse | None = None
        self._reset_future: Future | None = None
        self._reset_since = 0.0
        self._action_pub = self.create_publisher(
            JointState, "/twinloop/action", qos_for("/twinloop/action")
        )
        self._event_pub = self.create_publisher(
            String, "/twinloop/episode", qos_for("/twinloop/episode")
        )
        # The safety node passes teleop actions only while a fresh deadman True arrives.
        self._deadman_pub = self.create_publisher(Bool, "/twinloop/deadman", COMMAND_QOS)
        self._reset_client = (
            self.create_client(Trigger, cfg.reset_service) if cfg.reset_service else None
        )
        try:
            self._open_device()
        except BaseException:
            self._close_devices()
            raise
        self.create_timer(1.0 / cfg.control_hz, self._tick)

    # ----- devices ---------------------------------------------------------------------------
    def _open_device(self) -> None:
        cfg, timeout = self.cfg, self._mapper.config.input_timeout_s
        kb = params_from_dataclass(self, KeyboardConfig, prefix="keyboard.")
        if cfg.device == "keyboard":
            self._open_terminal(kb, motion=True)
        else:
            gamepad = cfg.device == "gamepad"
            joy_cls: type[JoyConfig] = GamepadConfig if gamepad else SpaceMouseConfig
            joy_cfg = params_from_dataclass(self, joy_cls, prefix=f"{cfg.device}.")
            self._joy = JoyReader(joy_cfg, input_timeout_s=timeout)
            if gamepad:
                self.create_subscription(Joy, "/joy", self._on_gamepad, SENSOR_QOS)
            elif cfg.spacemouse_source == "pyspacemouse":
                self._pysm = PySpaceMouse()
            else:
                twist_type = TwistStamped if cfg.twist_stamped else Twist
                self.create_subscription(twist_type, "/spacenav/twist", self._on_twist, SENSOR_QOS)
                self.create_subscription(Joy, "/spacenav/joy", self._on_spacenav_joy, SENSOR_QOS)
            self._open_event_keys(kb, joy_cfg)
        if self._terminal is not None:
            self.create_timer(1.0 / KEY_POLL_HZ, self._read_keys)
        if not cfg.publish_actions:
            self.get_logger().info(
                f"supervising with {cfg.device} at {cfg.control_hz} Hz, operator "
                f"{self._operator!r}: deadman and episode buttons only, no actions"
            )
            return
        self.get_logger().info(
            f"teleop with {cfg.device} at {cfg.control_hz} Hz, operator {self._operator!r}; "
            f"max {self._mapper.config.max_translation} m and {self._mapper.config.max_yaw} rad "
            f"per step, deadband {self._mapper.config.deadband}"
        )

    def _open_terminal(self, kb: KeyboardConfig, *, motion: bool) -> None:
        self._terminal = RawTerminal(self.cfg.tty)
        self._keys = KeyboardReader(kb, motion=motion)
        self.get_logger().info(key_help() if motion else "episode " + key_help().split("; ")[1])

    def _open_event_keys(self, kb: KeyboardConfig, joy_cfg: JoyConfig) -> None:
        has_terminal = bool(self.cfg.tty) or (sys.stdin is not None and sys.stdin.isatty())
        if self.cfg.keyboard_events and has_terminal:
            self._open_terminal(kb, motion=False)
        elif all(joy_cfg.buttons()[e] < 0 for e in ("start", "success", "failure", "discard")):
            self.get_logger().warning(
                f"no episode events: {self.cfg.device} has no event buttons mapped and there is "
                "no terminal; run teleop_node in a terminal or map the *_button parameters"
            )

    def _close_devices(self) -> None:
        if self._terminal is not None:
            self._terminal.close()
        if self._pysm is not None:
            self._pysm.close()

    # ----- input callbacks -------------------------------------------------------------------
    def _drop(self, what: str, err: Exception) -> None:
        self.dropped += 1
        self.get_logger().error(
            f"dropping {what} ({self.dropped} dropped so far): {err}", throttle_duration_sec=1.0
        )

    def _on_gamepad(self, msg: Joy) -> None:
        if self._joy is None:
            return
        try:
            self._joy.update_axes(msg.axes, time.monotonic())
        except ValueError as err:
            self._drop("/joy", err)
            return
        self._joy.update_buttons(msg.buttons)

    def _on_twist(self, msg: Twist | TwistStamped) -> None:
        if self._joy is None:
            return
        t = msg.twist if isinstance(msg, TwistStamped) else msg
        values = [t.linear.x, t.linear.y, t.linear.z, t.angular.x, t.angular.y, t.angular.z]
        try:
            self._joy.update_axes(values, time.monotonic())
        except ValueError as err:
            self._drop("/spacenav/twist", err)

    def _on_spacenav_joy(self, msg: Joy) -> None:
        if self._joy is not None:
            self._joy.update_buttons(msg.buttons)

    def _read_keys(self) -> None:
        if self._terminal is None or self._keys is None:
            return
        data = self._terminal.read()
        if data:
            self._keys.feed(data, time.monotonic())
        if self._terminal.eof:
            self.get_logger().error("the terminal closed: quitting")
            self._terminal.close()
            self._terminal = None
            self._command("quit")

    def _poll_pyspacemouse(self) -> None:
        if self._pysm is None or self._joy is None:
            return
        latest = self._pysm.latest()
        if latest is not None:
            axes, buttons, stamp = latest
            try:
                self._joy.update_axes(axes, stamp)
            except ValueError as err:
                self._drop("SpaceMouse state", err)
            self._joy.update_buttons(buttons)
        if self._pysm.error is not None:
            self.get_logger().error(f"SpaceMouse: {self._pysm.error}", throttle_duration_sec=5.0)

    # ----- control step ----------------------------------------------------------------------
    def _sample(self, now: float) -> DeviceSample:
        keys = self._keys.sample(now) if self._keys is not None else None
        if self._joy is None:
            return keys or DeviceSample()
        self._poll_pyspacemouse()
        sample = self._joy.sample(now)
        if keys is not None and keys.commands:
            sample = DeviceSample(
                axes=sample.axes,
                deadman=sample.deadman,
                toggle_gripper=sample.toggle_gripper,
                commands=sample.commands + keys.commands,
                stale=sample.stale,
            )
        return sample

    def _tick(self) -> None:
        if self._stopped:
            return
        self._check_reset_timeout()
        now = time.monotonic()
        sample = self._sample(now)
        for command in sample.commands:
            self._command(command)
        if self._stopped:
            return
        if sample.stale:
            self.get_logger().warning(
                f"deadman engaged but no {self.cfg.device} input for more than "
                f"{self._mapper.config.input_timeout_s} s: "
                + ("not moving" if self.cfg.publish_actions else "the deadman reads released"),
                throttle_duration_sec=2.0,
            )
        ignored = self._mapper.ignored_toggles
        action = self._mapper(sample)
        if self._mapper.ignored_toggles > ignored and self.cfg.publish_actions:
            self.get_logger().info("gripper toggle ignored: engage the deadman first")
        self._deadman_pub.publish(Bool(data=bool(sample.deadman and not sample.stale)))
        if not self.cfg.publish_actions:
            return
        if sample.deadman or self.cfg.idle_publish or self._was_moving:
            msg = action_to_msg(action, stamp=self.get_clock().now().to_msg())
            msg.header.frame_id = FRAME_ID
            self._action_pub.publish(msg)
            self.published += 1
        self._was_moving = sample.deadman

    # ----- episode events --------------------------------------------------------------------
    def _command(self, command: str) -> None:
        if command == "help":
            self.get_logger().info(key_help())
        elif command == "start" and self._reset_client is not None:
            self._request_reset()
        else:
            self._submit(command)

    def _submit(self, event: str) -> None:
        extra: dict[str, Any] = {
            "stamp": self.get_clock().now().nanoseconds / 1e9,
            "operator": self._operator,
            "device": self.cfg.device,
        }
        if event == "start" and self.cfg.task:
            extra["task"] = self.cfg.task
        try:
            payloads = self._episodes.submit(event, **extra)
        except ValueError as err:
            self.rejected += 1
            self.get_logger().warning(str(err))
            return
        for p in payloads:
            fields = {k: v for k, v in p.items() if k not in ("event", "episode")}
            self._event_pub.publish(episode_event_to_msg(p["event"], p["episode"], **fields))
            self.get_logger().info(f"episode {p['episode']}: {p['event']}")
        if event == "start":
            self._mapper.reset_gripper()  # every episode starts with the gripper open
        if event == "quit":
            self._quit()

    def _request_reset(self) -> None:
        if self._episodes.state != "idle" or self._reset_client is None:
            self._submit("start")  # refused with the state machine's reason
            return
        if self._reset_future is not None:
            self.get_logger().warning("'start' ignored: a reset is already under way")
            return
        if not self._reset_client.service_is_ready():
            self.rejected += 1
            self.get_logger().error(f"'start' ignored: {self.cfg.reset_service} is not available")
            return
        self._reset_since = time.monotonic()
        self._reset_future = self._reset_client.call_async(Trigger.Request())
        self._reset_future.add_done_callback(self._on_reset_done)

    def _on_reset_done(self, future: Future) -> None:
        if future is not self._reset_future:
            return  # timed out earlier
        self._reset_future = None
        response = future.result()
        if response is None or not response.success:
            reason = response.message if response is not None else "no response"
            self.rejected += 1
            self.get_logger().error(f"'start' ignored: {self.cfg.reset_service} failed: {reason}")
            return
        self._submit("start")

    def _check_reset_timeout(self) -> None:
        waited_s = time.monotonic() - self._reset_since
        if self._reset_future is not None and waited_s > RESET_TIMEOUT_S:
            self._reset_future = None
            self.rejected += 1
            self.get_logger().error(f"'start' ignored: {self.cfg.reset_service} did not answer")

    def _quit(self) -> None:
        self._stopped = True
        self.get_logger().info(
            f"quit: {self.published} actions published, {self.dropped} bad messages dropped, "
            f"{self.rejected} events ignored"
        )
        if self.cfg.exit_on_quit:
            self._event_pub.wait_for_all_acked(Duration(seconds=1.0))
            if not self.done.done():
                self.done.set_result(0)

    def destroy_node(self) -> None:
        self._close_devices()
        super().destroy_node()


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def main() -> None:
    main_exit(TeleopNode)


if __name__ == "__main__":
    main()
