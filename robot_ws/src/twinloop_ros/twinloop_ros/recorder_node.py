"""recorder_node: records teleoperated episodes from the live topics into a zarr episode store.

A lifecycle node (rclpy.lifecycle, in the style of the ros2/demos lifecycle talker), a thin
adapter over :class:`twinloop.datasets.recorder.Recorder`:

- configure: open the store at ``store_path`` for appending (or create it), create the
  subscriptions and the status publisher;
- activate: sample synchronized steps at ``fps`` (each source's message nearest to the sample
  time, within ``tolerance_s``; a step that lacks one is dropped and counted, never filled);
- deactivate: stop sampling (an open episode is discarded, ended ones are committed);
- cleanup / shutdown: close the store after the last write.

With ``autostart`` (default) the node configures and activates itself; with an empty
``store_path`` it stays unconfigured (not recording) until one is set and it is configured
(``ros2 lifecycle set /recorder configure``).

Inputs: cameras (``cameras`` names, ``image_topics``, ``info_topics``, optional ``depth_topics``:
data keys ``image_<name>`` rgb uint8 and ``depth_<name>`` uint16 mm), ``/joint_states``
(``joint_pos``, ``joint_vel``), ``/twinloop/ee_pose`` (``ee_pose`` xyz + wxyz), ``/twinloop/action``
(``action``), optionally ``/twinloop/reward`` (``reward``, ``success``), and the episode events
on ``/twinloop/episode`` (``start``, ``success``, ``failure``, ``discard``, ``quit``). Each step also
stores ``timestamp`` (the sample time) and ``stamp_<source>`` (the stamp of the message used).
Image messages are kept raw in a ring buffer and converted on the writer thread, only for the
steps that use them. Status (JSON on ``status_topic``, ~1 Hz): state, open episode, steps,
drops by reason, rejected messages, queue lengths.

Bad input (unknown encodings, step/size/length that disagree, NaN joints, events out of order)
is logged (throttled), counted and dropped; a write error (a full disk) discards that episode
with an error log and recording goes on. Committed episodes are never touched.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.clock import Clock, ClockType
from rclpy.lifecycle import LifecycleState, TransitionCallbackReturn
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.task import Future
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import String
from twinloop.datasets.errors import DatasetError
from twinloop.datasets.recorder import Recorder, RecorderConfig, SinkResult, SourceConfig
from twinloop.datasets.store import EpisodeStore

from twinloop.images import COLOR_ENCODINGS as _COLOR
from twinloop.images import DEPTH_ENCODINGS as _DEPTH

from .conversions import (
    ENCODINGS,
    action_from_msg,
    episode_event_from_msg,
    image_from_msg,
    intrinsics_from_camera_info,
    json_to_msg,
    pose_from_msg,
    reward_from_msg,
    rgb_from_msg,
    stamp_to_ns,
)
from .errors import RosAdapterError
from .node_utils import (
    COMMAND_QOS,
    SENSOR_QOS,
    dataclass_from_params,
    exit_if_help,
    main_exit,
    params_from_dataclass,
)

__all__ = ["RecorderNode", "RecorderNodeConfig", "main"]

COLOR_ENCODINGS = tuple(_COLOR)  # ("rgb8", "bgr8", ...), as the bag importer reads them
DEPTH_ENCODINGS = tuple(_DEPTH)  # ("16UC1", "mono16")
_CAMERA_RE = re.compile(r"^[A-Za-z0-9_]+$")
BAD_LOG_PERIOD_S = 2.0  # a bad message is logged at most this often per source and reason


@dataclass(frozen=True)
class RecorderNodeConfig:
    """The node's parameters (one ROS parameter per field; read again on every configure)."""

    store_path: str = ""  # zarr episode store (appended to, created if missing); "" = not recording
    fps: float = 10.0  # steps per second (the control rate)
    task: str = ""  # task text of episodes whose events carry none
    operator: str = ""  # who teleoperates (an event's "operator" wins)
    robot_profile: str = "sim"  # written to the store and every episode
    cameras: tuple[str, ...] = ("color",)  # camera names: data keys image_<name>, depth_<name>
    image_topics: tuple[str, ...] = ("/camera/camera/color/image_raw",)  # one per camera
    info_topics: tuple[str, ...] = ("/camera/camera/color/camera_info",)  # one per camera or [""]
    depth_topics: tuple[str, ...] = ("",)  # one per camera ("" = none) or [""] for no depth
    joint_states_topic: str = "/joint_states"
    ee_pose_topic: str = "/twinloop/ee_pose"  # "" = not recorded
    action_topic: str = "/twinloop/action"  # the operator's command (before the safety layer)
    reward_topic: str = ""  # "" = not recorded; else every step needs a reward
    episode_topic: str = "/twinloop/episode"
    status_topic: str = "/twinloop/recorder/status"
    tolerance_s: float = 0.0  # largest |stamp - sample time| per source; 0 = 0.75 / fps
    wait_s: float = 0.1  # how long a step waits for late messages (transport lag)
    reward_tolerance_s: float = 0.0  # for the reward (stamped with its frame); 0 = tolerance_s
    reward_wait_s: float = 0.5  # rewards come late (a VLM per frame)
    buffer_len: int = 32  # raw messages kept per source
    max_queue_s: float = 2.0  # seconds of steps that may wait for the disk; more are dropped
    status_hz: float = 1.0  # status messages per second
    autostart: bool = True  # configure and activate at start
    exit_on_quit: bool = False  # a "quit" event ends the node (exit 0)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.fps) and 0.0 < self.fps <= 1000.0):
            msg = f"fps must be in (0, 1000], got {self.fps}"
            raise RosAdapterError(msg)
        for name in ("tolerance_s", "wait_s", "reward_tolerance_s", "reward_wait_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                msg = f"{name} must be >= 0, got {value}"
                raise RosAdapterError(msg)
        if not (self.max_queue_s > 0 and self.status_hz > 0 and self.buffer_len >= 2):
            msg = "max_queue_s and status_hz must be > 0, buffer_len >= 2"
            raise RosAdapterError(msg)
        if len(set(self.cameras)) != len(self.cameras) or not all(
            _CAMERA_RE.match(c) for c in self.cameras
        ):
            msg = (
                f"cameras must be unique names of letters, digits and '_', got {list(self.cameras)}"
            )
            raise RosAdapterError(msg)
        n = len(self.cameras)
        if len(self.image_topics) != n or not all(self.image_topics):
            msg = f"image_topics needs one topic per camera {list(self.cameras)}, got {list(self.image_topics)}"
            raise RosAdapterError(msg)
        for name in ("info_topics", "depth_topics"):
            topics = getattr(self, name)
            if len(topics) != n and tuple(topics) != ("",):
                msg = f"{name} needs one entry per camera {list(self.cameras)} (or [''] for none), got {list(topics)}"
                raise RosAdapterError(msg)
        for name in ("joint_states_topic", "action_topic", "episode_topic", "status_topic"):
            if not getattr(self, name):
                msg = f"{name} must name a topic"
                raise RosAdapterError(msg)

    def per_camera(self, name: str) -> tuple[str, ...]:
        topics = getattr(self, name)
        return tuple(topics) if len(topics) == len(self.cameras) else ("",) * len(self.cameras)

    @property
    def tolerance(self) -> float:
        return self.tolerance_s or 0.75 / self.fps


class RecorderNode(LifecycleNode):
    def __init__(self) -> None:
        super().__init__("recorder")
        self.cfg = params_from_dataclass(self, RecorderNodeConfig, read_only=False)
        self.done = Future()  # completes (exit code) after a "quit" with exit_on_quit
        self._store: EpisodeStore | None = None
        self._rec: Recorder | None = None
        self._subs: list[Any] = []
        self._timers: list[Any] = []
        self._status_pub: Any = None
        self._sizes: dict[str, tuple[int, int]] = {}  # source -> (width, height) of its frames
        self._joint_names: tuple[str, ...] | None = None
        self._joint_width: int | None = None  # joints in the store's joint_pos, once it has any
        self._error = ""  # why the last configure failed
        self._tick_period = 0.1  # s between ticks (set on activate)
        self._last_tick = 0.0  # time.monotonic() of the last tick
        self._bad_log: dict[tuple[str, str], tuple[float, int]] = {}  # last report, skipped
        self._receiving: set[str] = set()  # sources that have sent a usable message
        self._event_sub: Any = None
        self._event_writers = 0  # publishers of episode events, as last reported
        self._infos: dict[str, tuple[Any, ...]] = {}  # camera -> raw intrinsics seen last
        self._store_intrinsics: dict[str, Any] = {}
        if not self.cfg.autostart:
            return
        if not self.cfg.store_path:
            self.get_logger().info(
                "store_path is empty: not recording (set store_path, then configure)"
            )
            return
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            msg = f"cannot configure the recorder: {self._error}"
            raise RosAdapterError(msg)
        self.trigger_activate()

    # ----- lifecycle ---------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._error = ""
        self._sizes, self._infos, self._receiving = {}, {}, set()
        self._joint_names = self._joint_width = None
        try:
            self.cfg = cfg = dataclass_from_params(self, RecorderNodeConfig)
            if not cfg.store_path:
                raise RosAdapterError("store_path is empty")
            self._store = self._open_store(cfg)
            self._rec = self._make_recorder(cfg, self._store)
        except Exception as err:  # bad parameters, a store we cannot open: said plainly
            self._error = str(err)
            if isinstance(err, (ValueError, OSError)):  # RosAdapterError, DatasetError
                self.get_logger().error(f"configure failed: {err}")
            else:  # a bug: the lifecycle machinery would swallow it silently
                self.get_logger().error(f"configure failed:\n{traceback.format_exc()}")
            if self._store is not None:
                self._store.close()
                self._store = None
            return TransitionCallbackReturn.FAILURE
        self._status_pub = self.create_lifecycle_publisher(String, cfg.status_topic, COMMAND_QOS)
        self._subscribe(cfg)
        store = self._store
        self.get_logger().info(
            f"recording into {store.path} ({store.n_episodes} episodes so far) at {cfg.fps:g} Hz: "
            f"{', '.join(s.name for s in self._rec.config.sources)}"
        )
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._rec is None:
            return TransitionCallbackReturn.FAILURE
        self._rec.activate(self._now())
        # Ticks at twice the step rate: a step is handed out soon after its inputs are in.
        self._tick_period = 0.5 / self.cfg.fps
        self._last_tick = time.monotonic()
        # Wall-clock timers: with use_sim_time the steps still follow the node clock (sim time),
        # but sampling and status do not stall while no /clock arrives.
        wall = Clock(clock_type=ClockType.STEADY_TIME)
        self._timers = [
            self.create_timer(self._tick_period, self._tick, clock=wall),
            self.create_timer(1.0 / self.cfg.status_hz, self._publish_status, clock=wall),
        ]
        self.get_logger().info("recording: waiting for episode events")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        for timer in self._timers:
            self.destroy_timer(timer)
        self._timers = []
        if self._rec is not None:
            self._report(self._rec.deactivate(self._now()))
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def destroy_node(self) -> None:
        self._teardown()  # Ctrl-C / SIGTERM: commit what ended, discard the open episode
        super().destroy_node()

    def _teardown(self) -> None:
        for timer in self._timers:
            self.destroy_timer(timer)
        self._timers = []
        if self._rec is not None:
            rec, self._rec = self._rec, None
            self._report(rec.close(self._now()))
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        if self._status_pub is not None:
            self.destroy_lifecycle_publisher(self._status_pub)
            self._status_pub = None
        if self._store is not None:
            self._store.close()
            self.get_logger().info(f"closed {self._store.path} ({self._store.n_episodes} episodes)")
            self._store = None

    # ----- building ----------------------------------------------------------------------------
    def _open_store(self, cfg: RecorderNodeConfig) -> EpisodeStore:
        path = Path(cfg.store_path).expanduser()
        if path.exists():
            store = EpisodeStore.open(path, mode="a")
            if not math.isclose(store.fps, cfg.fps):
                store.close()
                msg = (
                    f"{path} holds episodes at {store.fps:g} fps; the recorder runs at {cfg.fps:g}"
                )
                raise DatasetError(msg)
        else:
            store = EpisodeStore.create(
                path, fps=cfg.fps, task=cfg.task, robot_profile=cfg.robot_profile
            )
        self._store_intrinsics = dict(store.attrs.get("camera_intrinsics") or {})
        for key in store.keys:  # frames must keep the size the store already holds
            if key.startswith(("image_", "depth_")):
                shape = store.array(key).shape
                self._sizes[key] = (int(shape[2]), int(shape[1]))
        if "joint_pos" in store.keys:
            self._joint_width = int(store.array("joint_pos").shape[1])
        return store

    def _make_recorder(self, cfg: RecorderNodeConfig, store: EpisodeStore) -> Recorder:
        tol, wait, n = cfg.tolerance, cfg.wait_s, cfg.buffer_len
        sources: list[SourceConfig] = []
        converters: dict[str, Callable[[Any], dict[str, np.ndarray]]] = {}
        for cam, depth_topic in zip(cfg.cameras, cfg.per_camera("depth_topics"), strict=True):
            sources.append(SourceConfig(f"image_{cam}", tol, wait, n))
            converters[f"image_{cam}"] = _keyed(f"image_{cam}", rgb_from_msg)
            if depth_topic:
                sources.append(SourceConfig(f"depth_{cam}", tol, wait, n))
                converters[f"depth_{cam}"] = _keyed(f"depth_{cam}", image_from_msg)
        sources.append(SourceConfig("joint_states", tol, wait, n))
        converters["joint_states"] = _pair("joint_pos", "joint_vel")
        if cfg.ee_pose_topic:
            sources.append(SourceConfig("ee_pose", tol, wait, n))
            converters["ee_pose"] = _keyed("ee_pose", lambda item: item)
        sources.append(SourceConfig("action", tol, wait, n))
        converters["action"] = _keyed("action", lambda item: item)
        if cfg.reward_topic:
            sources.append(
                SourceConfig("reward", cfg.reward_tolerance_s or tol, cfg.reward_wait_s, n)
            )
            converters["reward"] = _pair("reward", "success")
        config = RecorderConfig(
            tuple(sources), fps=cfg.fps, max_queue=max(1, round(cfg.max_queue_s * cfg.fps))
        )
        meta = {"task": cfg.task, "operator": cfg.operator, "robot_profile": cfg.robot_profile}
        return Recorder(config, store, converters, meta=meta)

    def _subscribe(self, cfg: RecorderNodeConfig) -> None:
        sub = self.create_subscription
        infos, depths = cfg.per_camera("info_topics"), cfg.per_camera("depth_topics")
        for cam, image, info, depth in zip(
            cfg.cameras, cfg.image_topics, infos, depths, strict=True
        ):
            self._subs.append(sub(Image, image, self._image_cb(f"image_{cam}", False), SENSOR_QOS))
            if depth:
                self._subs.append(
                    sub(Image, depth, self._image_cb(f"depth_{cam}", True), SENSOR_QOS)
                )
            if info:
                self._subs.append(
                    sub(CameraInfo, info, functools.partial(self._on_info, cam), SENSOR_QOS)
                )
        self._subs.append(sub(JointState, cfg.joint_states_topic, self._on_joints, SENSOR_QOS))
        if cfg.ee_pose_topic:
            self._subs.append(sub(PoseStamped, cfg.ee_pose_topic, self._on_pose, SENSOR_QOS))
        self._subs.append(sub(JointState, cfg.action_topic, self._on_action, COMMAND_QOS))
        if cfg.reward_topic:
            self._subs.append(sub(JointState, cfg.reward_topic, self._on_reward, COMMAND_QOS))
        self._event_sub = sub(String, cfg.episode_topic, self._on_event, COMMAND_QOS)
        self._subs.append(self._event_sub)

    # ----- message callbacks (cheap: check, then buffer the raw message) ------------------------
    def _now(self) -> int:
        return self.get_clock().now().nanoseconds

    def _bad(self, source: str, reason: str, detail: str) -> None:
        """Count a rejected message and log it (throttled per source and reason)."""
        if self._rec is not None:
            self._rec.reject(source, reason)
        self._warn((source, reason), f"dropping a {source} message ({reason}): {detail}")

    def _warn(self, key: tuple[str, str], text: str) -> None:
        """A warning at most every BAD_LOG_PERIOD_S per ``key``, saying how many were held back."""
        now = time.monotonic()
        last, skipped = self._bad_log.get(key, (-math.inf, 0))
        if now - last < BAD_LOG_PERIOD_S:
            self._bad_log[key] = (last, skipped + 1)
            return
        self._bad_log[key] = (now, 0)
        more = f" ({skipped} more like it since the last report)" if skipped else ""
        self.get_logger().warning(text + more)

    def _push(self, source: str, msg: Any, item: Any) -> None:
        if self._rec is None:
            return
        if not self._rec.push(source, stamp_to_ns(msg.header.stamp), item):
            self._warn((source, "unstamped"), f"dropping an unstamped {source} message")
        elif source not in self._receiving:
            self._receiving.add(source)
            self.get_logger().info(f"receiving {source}")

    def _image_cb(self, source: str, depth: bool) -> Callable[[Image], None]:
        def on_image(msg: Image) -> None:
            problem = self._image_problem(source, msg, depth)
            if problem is not None:
                self._bad(source, *problem)
                return
            self._push(source, msg, msg)

        return on_image

    def _image_problem(self, source: str, msg: Image, depth: bool) -> tuple[str, str] | None:
        """Header checks only (no pixel is touched here): (reason, detail) or None."""
        allowed = DEPTH_ENCODINGS if depth else COLOR_ENCODINGS
        if msg.encoding not in allowed:
            return "encoding", f"encoding {msg.encoding!r}, expected one of {list(allowed)}"
        dtype, channels = ENCODINGS[msg.encoding]
        width, height, step = int(msg.width), int(msg.height), int(msg.step)
        if width <= 0 or height <= 0:
            return "size", f"an image of {width}x{height} pixels"
        row = width * channels * dtype.itemsize
        if step < row:
            return "step", f"step {step} < {row} bytes per {width}-pixel {msg.encoding} row"
        if len(msg.data) < step * height:
            return "truncated", f"{len(msg.data)} bytes of data, {step * height} expected"
        size = self._sizes.setdefault(source, (width, height))
        if size != (width, height):
            return "size", f"{width}x{height}, but this camera's frames are {size[0]}x{size[1]}"
        return None

    def _on_info(self, camera: str, msg: CameraInfo) -> None:
        raw = (msg.width, msg.height, tuple(msg.k), tuple(msg.d), msg.distortion_model)
        if self._infos.get(camera) == raw or self._rec is None:
            return
        try:
            intr = dataclasses.asdict(intrinsics_from_camera_info(msg))
        except ValueError as err:
            self._bad(f"info_{camera}", "bad", str(err))
            return
        size = self._sizes.get(f"image_{camera}")
        if size is not None and size != (intr["width"], intr["height"]):
            self._bad(
                f"info_{camera}",
                "size",
                f"camera_info says {intr['width']}x{intr['height']}, the frames are {size[0]}x{size[1]}",
            )
            return
        self._infos[camera] = raw
        intr["coeffs"] = list(intr["coeffs"])
        self._rec.meta.setdefault("camera_intrinsics", {})[camera] = intr
        self._sizes.setdefault(f"image_{camera}", (intr["width"], intr["height"]))
        known = self._store_intrinsics.get(camera)
        if known is None:
            self._store_intrinsics[camera] = intr
            every = dict(self._store_intrinsics)
            self._rec.sink.call(lambda store: store.update_attrs(camera_intrinsics=every))
        elif known != intr:
            self.get_logger().warning(
                f"camera {camera}: intrinsics differ from the store's; each episode keeps its own",
                throttle_duration_sec=60.0,
            )

    def _on_joints(self, msg: JointState) -> None:
        names = tuple(msg.name)
        n = len(names)
        if n == 0 or len(msg.position) != n or len(msg.velocity) != n:
            self._bad(
                "joint_states",
                "layout",
                f"{n} names, {len(msg.position)} positions, {len(msg.velocity)} velocities",
            )
            return
        if self._joint_names is None:
            if self._joint_width not in (None, n):
                self._bad(
                    "joint_states", "names", f"{n} joints, the store holds {self._joint_width}"
                )
                return
            self._joint_names = names
            if self._rec is not None:
                self._rec.meta["joint_names"] = list(names)
        elif names != self._joint_names:
            self._bad(
                "joint_states", "names", f"joints {list(names)}, expected {list(self._joint_names)}"
            )
            return
        pos = np.asarray(msg.position, dtype=np.float32)
        vel = np.asarray(msg.velocity, dtype=np.float32)
        if not (np.isfinite(pos).all() and np.isfinite(vel).all()):
            self._bad("joint_states", "nan", "NaN or inf in positions or velocities")
            return
        self._push("joint_states", msg, (pos, vel))

    def _on_pose(self, msg: PoseStamped) -> None:
        try:
            pos, quat = pose_from_msg(msg)
        except ValueError as err:
            self._bad("ee_pose", "nan", str(err))
            return
        self._push("ee_pose", msg, np.concatenate([pos, quat]).astype(np.float32))

    def _on_action(self, msg: JointState) -> None:
        try:
            action = action_from_msg(msg)
        except ValueError as err:
            self._bad("action", "layout", str(err))
            return
        if not np.isfinite(action).all():
            self._bad("action", "nan", f"action {action.tolist()}")
            return
        self._push("action", msg, action.astype(np.float32))

    def _on_reward(self, msg: JointState) -> None:
        values = dict(zip(msg.name, msg.position, strict=False))
        if "reward" in values and not math.isfinite(values["reward"]):
            self._bad("reward", "nan", f"reward {values['reward']}")
            return
        try:
            reward, success, _task = reward_from_msg(msg)
        except RosAdapterError as err:
            self._bad("reward", "layout", str(err))
            return
        self._push("reward", msg, (np.float32(reward), np.bool_(success)))

    def _on_event(self, msg: String) -> None:
        try:
            payload = episode_event_from_msg(msg)
        except ValueError as err:
            self.get_logger().warning(
                f"dropping an episode event: {err}", throttle_duration_sec=1.0
            )
            if self._rec is not None:
                self._rec.reject("events", "bad")
            return
        if self._rec is None:
            self.get_logger().warning(
                f"not recording: ignoring {payload['event']} of episode {payload['episode']}",
                throttle_duration_sec=5.0,
            )
            return
        outcome = self._rec.event(payload, self._now())
        if outcome.startswith("out of order"):
            self.get_logger().warning(outcome, throttle_duration_sec=1.0)
        else:
            self.get_logger().info(outcome)
        if self._rec.quit_requested and self.cfg.exit_on_quit and not self.done.done():
            self.done.set_result(0)

    # ----- timers ------------------------------------------------------------------------------
    def _tick(self) -> None:
        if self._rec is None:
            return
        # After a stall of this process (a late timer), messages may still be queued: give them
        # one round before a step may count a source as missing.
        now = time.monotonic()
        stalled = now - self._last_tick > 2.5 * self._tick_period
        self._last_tick = now
        self._report(self._rec.tick(self._now(), timeouts=not stalled))
        self._report_drops()

    def _report_drops(self) -> None:
        if self._rec is None:
            return
        log = self._rec.drop_log
        while log:
            t_ns, reasons, newest = log.popleft()
            ages = ", ".join(
                f"{s}: {r}" + ("" if n is None else f" (newest {(t_ns - n) / 1e6:+.0f} ms)")
                for (s, r), n in zip(reasons.items(), newest.values(), strict=True)
            )
            self._warn(("step", "dropped"), f"dropped the step at {t_ns / 1e9:.3f} s: {ages}")

    def _report(self, results: list[SinkResult]) -> None:
        log = self.get_logger()
        for r in results:
            if r.outcome == "committed":
                meta = r.meta
                latency = r.commit_latency_s or 0.0
                log.info(
                    f"committed episode {r.index} ({'success' if meta.get('success') else 'failure'}, "
                    f"{r.n_steps} steps, {meta.get('dropped_steps', 0)} dropped "
                    f"{meta.get('dropped_by_reason') or ''}) {latency:.3f} s after its end"
                )
            elif r.outcome == "failed":
                log.error(f"episode discarded, it could not be written: {r.reason}")
            else:
                log.info(f"episode discarded ({r.reason}, {r.n_steps} steps)")

    def _publish_status(self) -> None:
        if self._rec is None or self._status_pub is None:
            return
        writers = self._event_sub.get_publisher_count() if self._event_sub is not None else 0
        if writers != self._event_writers:
            self._event_writers = writers
            self.get_logger().info(f"episode events: {writers} publisher(s)")
        status = self._rec.status()
        if self._store is not None:
            status["store"] = str(self._store.path)
            status["episodes_in_store"] = self._store.n_episodes
        self._status_pub.publish(json_to_msg(status))


def _keyed(key: str, fn: Callable[[Any], Any]) -> Callable[[Any], dict[str, Any]]:
    return lambda item: {key: fn(item)}


def _pair(first: str, second: str) -> Callable[[tuple[Any, Any]], dict[str, Any]]:
    return lambda item: {first: item[0], second: item[1]}


def main() -> None:
    exit_if_help(__doc__, RecorderNodeConfig)
    main_exit(RecorderNode)


if __name__ == "__main__":
    main()
