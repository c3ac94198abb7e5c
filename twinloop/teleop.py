"""Teleoperation core: operator input -> actions and episode events, ROS-free and device-independent.

Every device (keyboard, SpaceMouse, gamepad) is read into the same :class:`DeviceSample` once per
control step: four axes in [-1, 1] (dx, dy, dz, dyaw), whether the deadman is engaged, whether the
gripper was toggled, and the operator's commands (episode events). Then

- :class:`ActionMapper` turns it into ``[dx, dy, dz, dyaw, gripper]``: deadband, scaling to metres
  and radians per step, and the deadman rule: **without the deadman the action is zero motion and
  the gripper keeps its last command**, whatever the axes say;
- :class:`EpisodeStateMachine` turns commands into ``/twinloop/episode`` payloads and refuses
  events out of order (``success`` before ``start``) with a :class:`TwinloopError`.

Readers: :class:`JoyReader` for axes + buttons (gamepad ``sensor_msgs/Joy``, SpaceMouse twist +
buttons), :class:`KeyboardReader` for terminal bytes (:class:`KeyDecoder` turns escape sequences
into key names). Times are plain floats in seconds from a monotonic clock the caller passes in.
See docs/teleop.md for the key and button maps.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import TwinloopError
from .topics import ACTION_NAMES, EPISODE_EVENTS

__all__ = [
    "EVENT_KEYS",
    "GRIPPER_CLOSED",
    "GRIPPER_KEY",
    "GRIPPER_OPEN",
    "HELP_KEYS",
    "MOTION_KEYS",
    "ActionMapper",
    "DeviceSample",
    "EpisodeStateMachine",
    "GamepadConfig",
    "JoyConfig",
    "JoyReader",
    "KeyDecoder",
    "KeyboardConfig",
    "KeyboardReader",
    "SpaceMouseConfig",
    "TeleopConfig",
    "apply_deadband",
    "key_help",
]

GRIPPER_OPEN, GRIPPER_CLOSED = -1.0, 1.0
N_AXES = 4  # dx, dy, dz, dyaw: the first four ACTION_NAMES


# ----- mapping -------------------------------------------------------------------------------
@dataclass(frozen=True)
class TeleopConfig:
    """Device-independent scaling (one ROS parameter per field in teleop_node)."""

    max_translation: float = 0.02  # EE move per control step at full deflection, m (norm-capped)
    max_yaw: float = 0.1  # yaw change per control step at full deflection, rad
    deadband: float = 0.1  # fraction of full deflection around the centre that commands nothing
    input_timeout_s: float = 0.5  # device input older than this stops motion (dropped driver)

    def __post_init__(self) -> None:
        if not 0.0 < self.max_translation <= 0.1:
            msg = f"max_translation must be in (0, 0.1] m per step, got {self.max_translation}"
            raise TwinloopError(msg)
        if not 0.0 < self.max_yaw <= 0.5:
            msg = f"max_yaw must be in (0, 0.5] rad per step, got {self.max_yaw}"
            raise TwinloopError(msg)
        if not 0.0 <= self.deadband < 1.0:
            msg = f"deadband must be in [0, 1), got {self.deadband}"
            raise TwinloopError(msg)
        if not 0.0 < self.input_timeout_s <= 10.0:
            msg = f"input_timeout_s must be in (0, 10] s, got {self.input_timeout_s}"
            raise TwinloopError(msg)


def _finite(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    try:
        v = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as err:
        msg = f"{what} is not a numeric vector: {values!r}"
        raise TwinloopError(msg) from err
    if v.ndim != 1:
        msg = f"{what} must be a flat vector, got shape {v.shape}"
        raise TwinloopError(msg)
    if not np.isfinite(v).all():
        msg = f"{what} has NaN or inf: {v.tolist()}"
        raise TwinloopError(msg)
    return v


def apply_deadband(values: Sequence[float] | np.ndarray, deadband: float) -> np.ndarray:
    """Clip to [-1, 1], zero where ``|v| <= deadband``, rescale the rest to run from 0 to 1.

    The rescaling keeps the output continuous: just outside the band it is just above zero,
    and full deflection stays 1.
    """
    if not 0.0 <= deadband < 1.0:
        msg = f"deadband must be in [0, 1), got {deadband}"
        raise TwinloopError(msg)
    v = np.clip(_finite(values, "axes"), -1.0, 1.0)
    magnitude = np.maximum(np.abs(v) - deadband, 0.0) / (1.0 - deadband)
    return np.sign(v) * magnitude


@dataclass(frozen=True)
class DeviceSample:
    """One control step of operator input, whatever the device."""

    # dx, dy, dz, dyaw in [-1, 1]
    axes: np.ndarray = field(default_factory=lambda: np.zeros(N_AXES))
    deadman: bool = False  # motion (and the gripper) is allowed only while this is True
    toggle_gripper: bool = False  # the gripper control was pressed since the last sample
    commands: tuple[str, ...] = ()  # episode events (EPISODE_EVENTS) and "help", in order
    stale: bool = False  # the deadman is engaged but the device went silent: motion stopped


class ActionMapper:
    """``DeviceSample`` -> ``[dx, dy, dz, dyaw, gripper]``; nothing moves without the deadman."""

    def __init__(self, config: TeleopConfig | None = None) -> None:
        self.config = cfg = config or TeleopConfig()
        self._scale = np.array([cfg.max_translation] * 3 + [cfg.max_yaw])
        self.gripper = GRIPPER_OPEN  # latched gripper command, -1 open .. +1 closed
        self.ignored_toggles = 0  # gripper toggles refused because the deadman was released

    def reset_gripper(self) -> None:
        """Open the gripper (a new episode starts open)."""
        self.gripper = GRIPPER_OPEN

    def __call__(self, sample: DeviceSample) -> np.ndarray:
        axes = _finite(sample.axes, "axes")
        if axes.shape != (N_AXES,):
            msg = f"axes must hold {N_AXES} values {ACTION_NAMES[:N_AXES]}, got {axes.shape}"
            raise TwinloopError(msg)
        out = np.zeros(len(ACTION_NAMES))
        if not sample.deadman:
            self.ignored_toggles += int(sample.toggle_gripper)
            out[4] = self.gripper
            return out
        if sample.toggle_gripper:
            self.gripper = GRIPPER_CLOSED if self.gripper < 0 else GRIPPER_OPEN
        out[:N_AXES] = apply_deadband(axes, self.config.deadband) * self._scale
        norm = float(np.linalg.norm(out[:3]))
        if norm > self.config.max_translation:  # diagonals move no faster than the axes
            out[:3] *= self.config.max_translation / norm
        out[4] = self.gripper
        return out


# ----- joysticks: gamepad and SpaceMouse -----------------------------------------------------
_EVENT_FIELDS = ("start", "success", "failure", "discard", "quit")


@dataclass(frozen=True)
class JoyConfig:
    """Axis and button map of a joystick-like device (``sensor_msgs/Joy`` indices).

    Defaults: an Xbox-style pad under joy's ``game_controller_node`` (SDL order, sticks
    forward/left positive). ``-1`` leaves an axis or button unused.
    """

    axes: tuple[int, ...] = (1, 0, 3, 2)  # input axis for dx, dy, dz, dyaw: left stick, right stick
    signs: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)  # +1.0 or -1.0 per action axis
    deadman_button: int = 9  # LB: motion only while held
    deadman_toggle: bool = False  # True: a press arms, the next disarms (silence disarms too)
    gripper_button: int = 0  # A: toggles the gripper (only with the deadman)
    start_button: int = 11  # D-pad up
    success_button: int = 14  # D-pad right: end the episode, keep it
    failure_button: int = 12  # D-pad down: end the episode as a failure, keep it
    discard_button: int = 13  # D-pad left: drop the episode, re-record it
    quit_button: int = 4  # Back: stop teleoperation

    def __post_init__(self) -> None:
        if len(self.axes) != N_AXES or any(int(i) != i or i < -1 for i in self.axes):
            msg = f"axes must be {N_AXES} indices (-1 = unused) for {ACTION_NAMES[:N_AXES]}, got {self.axes}"
            raise TwinloopError(msg)
        if len(self.signs) != N_AXES or any(s not in (-1.0, 1.0) for s in self.signs):
            msg = f"signs must be {N_AXES} values of +1.0 or -1.0, got {self.signs}"
            raise TwinloopError(msg)
        if self.deadman_button < 0:
            msg = f"deadman_button must be a button index >= 0, got {self.deadman_button}"
            raise TwinloopError(msg)
        buttons = self.buttons()
        if any(b < -1 for b in buttons.values()):
            msg = f"button indices must be >= 0 (or -1 = unused), got {buttons}"
            raise TwinloopError(msg)
        used = [b for b in buttons.values() if b >= 0]
        if len(used) != len(set(used)):
            msg = f"each button can have one role only, got {buttons}"
            raise TwinloopError(msg)

    def buttons(self) -> dict[str, int]:
        """Role -> button index (``deadman``, ``gripper`` and the episode events)."""
        roles = {"deadman": self.deadman_button, "gripper": self.gripper_button}
        roles.update({e: getattr(self, f"{e}_button") for e in _EVENT_FIELDS})
        return roles


@dataclass(frozen=True)
class GamepadConfig(JoyConfig):
    """Xbox-style pad on ``/joy`` (the :class:`JoyConfig` defaults)."""


@dataclass(frozen=True)
class SpaceMouseConfig(JoyConfig):
    """3Dconnexion SpaceMouse: axes index the 6-vector (lin x, y, z, ang x, y, z) of spacenav's
    twist; buttons are those of ``/spacenav/joy`` (0 = left, 1 = right)."""

    axes: tuple[int, ...] = (0, 1, 2, 5)  # linear x, y, z and angular z
    deadman_button: int = 0  # left button: motion only while held
    gripper_button: int = 1  # right button toggles the gripper
    start_button: int = -1  # two buttons only: episode events come from the keyboard
    success_button: int = -1
    failure_button: int = -1
    discard_button: int = -1
    quit_button: int = -1


class JoyReader:
    """Axes and buttons of a joystick-like device -> :class:`DeviceSample`.

    Buttons act on their rising edge (0 -> pressed) except the deadman in hold mode; a button
    beyond the message's length counts as released. Motion needs fresh axes: with no axes update
    for ``input_timeout_s`` the deadman counts as released (and a toggled one disarms).
    """

    def __init__(self, config: JoyConfig, *, input_timeout_s: float = 0.5) -> None:
        if not input_timeout_s > 0:
            msg = f"input_timeout_s must be positive, got {input_timeout_s}"
            raise TwinloopError(msg)
        self.config = config
        self.input_timeout_s = input_timeout_s
        self._roles = config.buttons()
        self._axes = np.zeros(N_AXES)
        self._axes_time: float | None = None
        self._pressed: dict[str, bool] = dict.fromkeys(self._roles, False)
        self._armed = False  # deadman_toggle mode
        self._toggle = False
        self._commands: list[str] = []

    def update_axes(self, values: Sequence[float], now: float) -> None:
        """Take the device's axis vector; raises TwinloopError (and keeps the old axes) if the
        map needs an index the vector lacks, or a value is NaN or inf."""
        v = _finite(values, "joystick axes")
        out = np.zeros(N_AXES)
        for k, (index, sign) in enumerate(zip(self.config.axes, self.config.signs, strict=True)):
            if index < 0:
                continue
            if index >= v.size:
                msg = (
                    f"the device sends {v.size} axes but axis {index} is mapped to "
                    f"{ACTION_NAMES[k]}: set the axes map for this device"
                )
                raise TwinloopError(msg)
            out[k] = sign * v[index]
        self._axes, self._axes_time = out, now

    def update_buttons(self, buttons: Sequence[int]) -> None:
        """Take the device's button states (non-zero = pressed); edges become commands."""
        for role, index in self._roles.items():
            if index < 0:
                continue
            down = index < len(buttons) and int(buttons[index]) != 0
            if down and not self._pressed[role]:
                self._on_press(role)
            self._pressed[role] = down

    def _on_press(self, role: str) -> None:
        if role == "deadman":
            self._armed = not self._armed
        elif role == "gripper":
            self._toggle = True
        else:
            self._commands.append(role)

    def fresh(self, now: float) -> bool:
        return self._axes_time is not None and now - self._axes_time <= self.input_timeout_s

    def sample(self, now: float) -> DeviceSample:
        """The input of this control step; consumes the toggle and commands."""
        engaged = self._armed if self.config.deadman_toggle else self._pressed["deadman"]
        fresh = self.fresh(now)
        if not fresh:
            self._armed = False  # a silent device never stays armed
        sample = DeviceSample(
            axes=self._axes.copy() if fresh else np.zeros(N_AXES),
            deadman=engaged and fresh,
            toggle_gripper=self._toggle,
            commands=tuple(self._commands),
            stale=engaged and not fresh,
        )
        self._toggle, self._commands = False, []
        return sample


# ----- keyboard ------------------------------------------------------------------------------
# key -> (action axis, direction). The base frame: x forward, y left, z up, yaw counter-clockwise.
MOTION_KEYS: dict[str, tuple[int, float]] = {
    "w": (0, 1.0),
    "s": (0, -1.0),
    "a": (1, 1.0),
    "d": (1, -1.0),
    "r": (2, 1.0),
    "f": (2, -1.0),
    "q": (3, 1.0),
    "e": (3, -1.0),
}
# LeRobot's recorder keys (right = save, left = re-record, Esc = stop) plus start and failure.
EVENT_KEYS: dict[str, str] = {
    "up": "start",
    "enter": "start",
    "right": "success",
    "down": "failure",
    "left": "discard",
    "esc": "quit",
}
GRIPPER_KEY = "space"
HELP_KEYS = ("h", "?")

_ARROWS = {"A": "up", "B": "down", "C": "right", "D": "left"}
_NAMED = {" ": "space", "\r": "enter", "\n": "enter", "\t": "tab", "\x7f": "backspace"}


def key_help() -> str:
    """The keyboard map, one line (logged at start and on ``h``)."""
    motion = "w/s x+/-, a/d y+/-, r/f z+/-, q/e yaw+/-, space gripper"
    events = "up/Enter start, right success, down failure, left discard, Esc quit"
    return f"keys: {motion}; {events}; h help"


@dataclass(frozen=True)
class KeyboardConfig:
    """Terminal keyboard (``keyboard.*`` parameters of teleop_node)."""

    hold_s: float = 0.15  # a motion key moves the arm this long after each press or auto-repeat
    esc_timeout_s: float = 0.05  # a lone ESC byte is the Esc key (else an arrow key's prefix)

    def __post_init__(self) -> None:
        if not 0.0 < self.hold_s <= 1.0:
            msg = f"hold_s must be in (0, 1] s, got {self.hold_s}"
            raise TwinloopError(msg)
        if not 0.0 < self.esc_timeout_s <= 0.5:
            msg = f"esc_timeout_s must be in (0, 0.5] s, got {self.esc_timeout_s}"
            raise TwinloopError(msg)


class KeyDecoder:
    """Terminal bytes -> key names (``"w"``, ``"space"``, ``"up"``, ``"esc"``, ...).

    Arrow keys arrive as ``ESC [ A`` (or ``ESC O A`` in application mode); a lone ESC is the Esc
    key once ``esc_timeout_s`` passes with nothing after it. Sequences may be split over reads.
    Letters are lower-cased; other escape sequences and non-ASCII bytes are skipped.
    """

    def __init__(self, esc_timeout_s: float = 0.05) -> None:
        self.esc_timeout_s = esc_timeout_s
        self._buf = ""
        self._esc_time = 0.0  # when the pending ESC arrived

    def feed(self, data: bytes, now: float) -> list[str]:
        if data and not self._buf:
            self._esc_time = now
        self._buf += data.decode("ascii", errors="ignore")
        keys: list[str] = []
        while self._buf:
            key, used = self._next(self._buf)
            if used == 0:  # an incomplete escape sequence: wait for more bytes
                break
            self._buf = self._buf[used:]
            if key:
                keys.append(key)
            if self._buf.startswith("\x1b"):
                self._esc_time = now
        return keys

    def flush(self, now: float) -> list[str]:
        """Keys whose bytes are complete by now: a pending lone ESC becomes ``"esc"``."""
        if self._buf and now - self._esc_time >= self.esc_timeout_s:
            self._buf = ""
            return ["esc"]
        return []

    @staticmethod
    def _next(buf: str) -> tuple[str, int]:
        """(key name or "" to skip, characters used); used 0 = incomplete sequence."""
        ch = buf[0]
        if ch != "\x1b":
            if ch in _NAMED:
                return _NAMED[ch], 1
            if ch == "\x03":
                return "ctrl-c", 1
            return (ch.lower(), 1) if ch.isprintable() else ("", 1)
        if len(buf) == 1:
            return "", 0
        if buf[1] not in "[O":
            return "esc", 1  # Esc, then an ordinary key
        for i in range(2, len(buf)):
            if "\x40" <= buf[i] <= "\x7e":  # the final byte of a CSI/SS3 sequence
                return _ARROWS.get(buf[i], "") if i == 2 else "", i + 1
        return "", 0


class KeyboardReader:
    """Key presses -> :class:`DeviceSample`.

    The keyboard's deadman is the key itself: a terminal reports presses (and auto-repeats), not
    releases, so a motion key commands motion for ``hold_s`` after each press or repeat, and for
    at least the next control step after a single tap. Stop pressing and the arm stops within
    ``hold_s``. Space toggles the gripper (the press is the deliberate act). With ``motion=False``
    only episode keys and help are read (for SpaceMouse or gamepad sessions).
    """

    def __init__(self, config: KeyboardConfig | None = None, *, motion: bool = True) -> None:
        self.config = config or KeyboardConfig()
        self.motion = motion
        self.decoder = KeyDecoder(self.config.esc_timeout_s)
        self._last: dict[str, float] = {}  # motion key -> last press time
        self._tapped: set[str] = set()  # pressed since the last sample
        self._toggle = False
        self._commands: list[str] = []
        self.unknown: list[str] = []  # keys with no binding since the last sample

    def feed(self, data: bytes, now: float) -> None:
        self.press(self.decoder.feed(data, now), now)

    def press(self, keys: Iterable[str], now: float) -> None:
        for key in keys:
            if self.motion and key in MOTION_KEYS:
                self._last[key] = now
                self._tapped.add(key)
            elif self.motion and key == GRIPPER_KEY:
                self._toggle = True
            elif key in EVENT_KEYS:
                self._commands.append(EVENT_KEYS[key])
            elif key == "ctrl-c":
                self._commands.append("quit")
            elif key in HELP_KEYS:
                self._commands.append("help")
            else:
                self.unknown.append(key)

    def sample(self, now: float) -> DeviceSample:
        self.press(self.decoder.flush(now), now)
        hold = self.config.hold_s
        active = self._tapped | {k for k, t in self._last.items() if now - t <= hold}
        axes = np.zeros(N_AXES)
        for key in active:
            axis, direction = MOTION_KEYS[key]
            axes[axis] += direction
        toggle = self._toggle
        sample = DeviceSample(
            axes=np.clip(axes, -1.0, 1.0),
            deadman=bool(active) or toggle,
            toggle_gripper=toggle,
            commands=tuple(self._commands),
        )
        self._tapped.clear()
        self._toggle, self._commands = False, []
        return sample


# ----- episode events ------------------------------------------------------------------------
class EpisodeStateMachine:
    """``start`` -> (``success`` | ``failure`` | ``discard``) ... -> ``quit``, numbered episodes.

    States: ``idle`` (between episodes), ``recording`` and ``stopped`` (after ``quit``).
    ``success`` and ``failure`` end the episode and advance the number; ``discard`` drops it
    and the next ``start`` re-records the same number (LeRobot's re-record). ``quit`` during an
    episode discards it first: label an episode before quitting to keep it. An event that does
    not fit the state raises :class:`TwinloopError` and changes nothing.
    """

    def __init__(self, *, first_episode: int = 0) -> None:
        if first_episode < 0:
            msg = f"first_episode must be >= 0, got {first_episode}"
            raise TwinloopError(msg)
        self.state = "idle"
        self.episode = first_episode  # the running episode, or the next one when idle

    def submit(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        """The payloads to publish for ``event`` (``fields`` such as stamp and operator are
        added to each), in order; TwinloopError if the event is unknown or out of order."""
        if event not in EPISODE_EVENTS:
            msg = f"unknown episode event {event!r}. Available: {list(EPISODE_EVENTS)}"
            raise TwinloopError(msg)
        self._check(event)
        n = self.episode
        if event == "start":
            self.state, events = "recording", ["start"]
        elif event in ("success", "failure"):
            self.state, self.episode, events = "idle", n + 1, [event]
        elif event == "discard":
            self.state, events = "idle", ["discard"]
        else:  # quit
            events = ["discard", "quit"] if self.state == "recording" else ["quit"]
            self.state = "stopped"
        return [_payload(e, n, fields) for e in events]

    def _check(self, event: str) -> None:
        if self.state == "stopped":
            msg = f"{event!r} ignored: teleoperation has quit"
        elif self.state == "idle" and event in ("success", "failure", "discard"):
            msg = f"{event!r} ignored: no episode is running (start episode {self.episode} first)"
        elif self.state == "recording" and event == "start":
            msg = (
                f"'start' ignored: episode {self.episode} is running "
                "(end it with success, failure or discard first)"
            )
        else:
            return
        raise TwinloopError(msg)


def _payload(event: str, episode: int, fields: Mapping[str, Any]) -> dict[str, Any]:
    payload = {"event": event, "episode": episode, **fields}
    stamp = payload.get("stamp")
    if stamp is not None and not (isinstance(stamp, (int, float)) and math.isfinite(stamp)):
        msg = f"stamp must be a finite number of seconds, got {stamp!r}"
        raise TwinloopError(msg)
    return payload
