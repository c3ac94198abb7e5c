"""policy_node: the actor. Runs the current policy at the control rate and publishes /twinloop/action.

A thin adapter over :class:`twinloop.policy.actor.PolicyRunner` (docs/actor_learner.md):

- subscribes the observation sources its ObsSpec needs: the camera (sensor QoS), /joint_states,
  /twinloop/ee_pose and, for ``priv_*`` state keys, the twin's /twinloop/sim/state (a String
  without a header: stamped with its ``stamp_ns`` field, the stamp of the joint state and pose
  published with it);
- a timer at ``control_hz`` opens one action slot per period. The slot's action is computed as
  soon as every source has a message newer than the last action's and all their stamps lie
  within ``max_spread_s`` of each other (default half a period): at the tick if that already
  holds and the stamps are younger than ``max_spread_s``, else on the arrival that makes it
  hold, else at the next tick if the observations are still fresh. It is published on
  /twinloop/action (sensor_msgs/JointState, ACTION_NAMES, ``header.frame_id`` = ``source``,
  stamp = the oldest observation stamp it was computed from). Both rules keep the action on
  the newest state whatever the phase between the timer and the sensors: the twin's joint
  state, pose and privileged state arrive a millisecond apart, and acting on the first two
  with the previous privileged state, or at a tick just before the next state, locked in
  every action one state late (tests/test_policy_nodes.py caught it). The safety node turns actions into
  /twinloop/safe_action; this node never publishes safe actions. A slot that ends without an
  action publishes nothing (the safety watchdog holds the arm) and counts why;
- a reset-free policy (``task_onehot`` in ``state_keys``) is conditioned on the task of the
  newest ``start`` event on ``episode_topic`` (the one-hot of its index in ``tasks``); before the
  first one it holds still (counted as ``missing``), a start event of an unknown task is logged
  and the node holds until a known one comes;
- listens for weight announcements on ``weights_topic`` (std_msgs/String JSON
  ``{"version": n, "path": ...}``, reliable, transient local) and loads them on a background
  thread; the control timer keeps running while weights load. A file of another
  observation/action spec is refused (logged) and the old weights stay;
- publishes ``status_topic`` JSON every ``status_period_s``: version, control rate, timer jitter
  p50/p99 (ms), actions sent, held-still counts by reason, swaps.

Bad messages and observation-shape changes are logged (throttled) and dropped; the node keeps
running. Bad parameters (no checkpoint, unknown state keys) end the start with exit code 2.
"""

from __future__ import annotations

import math
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np
from rclpy.node import Node
from rclpy.qos import QoSDurabilityPolicy, QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy
from sensor_msgs.msg import JointState
from std_msgs.msg import String
from twinloop.policy.actor import PolicyRunner
from twinloop.policy.errors import PolicyError
from twinloop.policy.obs import TWIN_ACTION_SCALE, ObsSpec

from .conversions import (
    action_to_msg,
    json_from_msg,
    json_to_msg,
    stamp_from_ns,
)
from .errors import RosAdapterError
from .node_utils import COMMAND_QOS, exit_if_help, main_exit, params_from_dataclass
from .obs_inputs import KeyedThrottle, ObservationInputs

__all__ = ["WEIGHTS_QOS", "PolicyNode", "PolicyNodeConfig", "main"]

# Weight announcements: reliable, and the newest one kept for late joiners (a restarted actor).
WEIGHTS_QOS = QoSProfile(
    history=QoSHistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=QoSReliabilityPolicy.RELIABLE,
    durability=QoSDurabilityPolicy.TRANSIENT_LOCAL,
)
LOG_PERIOD_S = 2.0  # a bad message or a hold is logged at most this often per kind


@dataclass(frozen=True)
class PolicyNodeConfig:
    """The node's parameters (one ROS parameter per field)."""

    checkpoint: str = ""  # policy checkpoint (safetensors) to start with; required
    state_keys: tuple[str, ...] = ("proprio",)  # ObsSpec.state_keys (priv_* needs the twin)
    image_key: str = ""  # ObsSpec.image_key ("image_color"); "" = state-only policy
    image_size: int = 0  # ObsSpec.image_size (frames are resized to it)
    action_scale: tuple[float, ...] = TWIN_ACTION_SCALE  # metric action = policy output * scale
    fingers: int = 2  # finger joints at the end of /joint_states (gripper opening)
    control_hz: float = 10.0  # actions per second
    max_obs_age_s: float = 0.3  # observations older than this are stale: hold still
    # the sources' stamps must lie within this of each other (s); < 0: half a control period
    max_spread_s: float = -1.0
    device: str = "cpu"  # torch device of the policy
    threads: int = 0  # torch CPU threads; 0 = torch's default
    deterministic: bool = True  # the mean action (False: sample from the policy)
    tasks: tuple[str, ...] = ("open_drawer", "close_drawer")  # task_onehot order (reset-free)
    source: str = "policy"  # header.frame_id of the actions (the safety node's source name)
    image_topic: str = "/camera/camera/color/image_raw"
    joint_states_topic: str = "/joint_states"
    ee_pose_topic: str = "/twinloop/ee_pose"
    sim_state_topic: str = "/twinloop/sim/state"  # read only for priv_* state keys
    episode_topic: str = "/twinloop/episode"  # read only for the task_onehot state key
    action_topic: str = "/twinloop/action"
    weights_topic: str = "/twinloop/policy/weights"
    status_topic: str = "/twinloop/policy/status"
    status_period_s: float = 1.0  # seconds between two status messages

    def __post_init__(self) -> None:
        if not self.checkpoint:
            msg = "checkpoint must name a policy checkpoint (safetensors)"
            raise RosAdapterError(msg)
        for name in ("control_hz", "max_obs_age_s", "status_period_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                msg = f"{name} must be > 0, got {value}"
                raise RosAdapterError(msg)
        if self.threads < 0:
            msg = f"threads must be >= 0, got {self.threads}"
            raise RosAdapterError(msg)
        if not math.isfinite(self.max_spread_s):
            msg = f"max_spread_s must be a number of seconds, got {self.max_spread_s}"
            raise RosAdapterError(msg)
        if self.action_topic == "/twinloop/safe_action":
            msg = "policy_node publishes /twinloop/action; only safety_node makes safe actions"
            raise RosAdapterError(msg)

    def spread_s(self) -> float:
        return self.max_spread_s if self.max_spread_s >= 0 else 0.5 / self.control_hz

    def obs_spec(self) -> ObsSpec:
        return ObsSpec(
            state_keys=tuple(k for k in self.state_keys if k),
            image_key=self.image_key,
            image_size=self.image_size,
            action_scale=self.action_scale,
            fingers=self.fingers,
        )


class PolicyNode(Node):
    def __init__(self) -> None:
        super().__init__("policy")
        self.cfg = cfg = params_from_dataclass(self, PolicyNodeConfig)
        if cfg.threads:
            import torch

            torch.set_num_threads(cfg.threads)
        t0 = time.perf_counter()
        self.runner = PolicyRunner(
            cfg.checkpoint,
            cfg.obs_spec(),
            device=cfg.device,
            max_obs_age_s=cfg.max_obs_age_s,
            max_spread_s=cfg.spread_s(),
            deterministic=cfg.deterministic,
            tasks=cfg.tasks,
        )
        self._pub = self.create_publisher(JointState, cfg.action_topic, COMMAND_QOS)
        self._status_pub = self.create_publisher(String, cfg.status_topic, COMMAND_QOS)
        self._throttle = KeyedThrottle(LOG_PERIOD_S)
        sources = self.runner.observations.sources
        self._inputs = ObservationInputs(
            self,
            self.runner.observations,
            image_topic=cfg.image_topic,
            joint_states_topic=cfg.joint_states_topic,
            ee_pose_topic=cfg.ee_pose_topic,
            sim_state_topic=cfg.sim_state_topic,
            warn=self._warn,
            after=self._on_observation,
        )
        if "task" in sources:
            self.create_subscription(String, cfg.episode_topic, self._on_event, COMMAND_QOS)
        self.create_subscription(String, cfg.weights_topic, self._on_weights, WEIGHTS_QOS)
        self._ticks: deque[float] = deque(maxlen=512)  # monotonic times of timer callbacks
        self._sent: deque[float] = deque(maxlen=512)  # monotonic times of published actions
        self._due = False  # this period's action slot is open (not yet used)
        self._pending: Future[int] | None = None
        self._wanted: tuple[int, str] | None = None  # newest announced, not yet loading
        self.create_timer(1.0 / cfg.control_hz, self._tick)
        self.create_timer(cfg.status_period_s, self._publish_status)
        self.get_logger().info(
            f"policy {cfg.checkpoint} ({time.perf_counter() - t0:.1f} s) on {cfg.device}: "
            f"{list(sources)} -> {cfg.action_topic} at {cfg.control_hz:g} Hz, weights from "
            f"{cfg.weights_topic}"
        )

    def destroy_node(self) -> None:
        self.runner.close()
        super().destroy_node()

    def _now(self) -> int:
        return int(self.get_clock().now().nanoseconds)

    def _warn(self, kind: str, text: str) -> None:
        if self._throttle.ready(kind):
            self.get_logger().warning(text)

    # ----- observations (ObservationInputs) and episode events ---------------------------------
    def _on_event(self, msg: String) -> None:
        try:
            event = json_from_msg(msg)
            self.runner.on_event(event, self._now())
        except (PolicyError, RosAdapterError) as err:
            self.get_logger().error(f"holding still: {err}", throttle_duration_sec=LOG_PERIOD_S)
            return
        if event.get("event") == "start":
            self.get_logger().info(f"episode {event.get('episode')}: task {self.runner.task}")
            self._on_observation()

    # ----- control -------------------------------------------------------------------------------
    def _tick(self) -> None:
        self._ticks.append(time.monotonic())
        if self._due:  # the last slot ended without an action: count and report why
            self._act(count_hold=True)
        self._due = True
        # at the tick only on observations younger than the spread: a tick just before the next
        # state would otherwise act on a state a period old, and keep that phase
        self._act(count_hold=False, max_age_s=self.cfg.spread_s())

    def _on_observation(self) -> None:
        if self._due:
            self._act(count_hold=False)

    def _act(self, *, count_hold: bool, max_age_s: float | None = None) -> None:
        """Use the open slot if the observations are fresh; ``count_hold``: the slot is over."""
        try:
            action = self.runner.act(self._now(), count_hold=count_hold, max_age_s=max_age_s)
        except PolicyError as err:
            self._due = False  # one error per slot, not one per message
            self._warn("error", f"holding still: {err}")
            return
        if action is None:
            if count_hold:
                self._warn("hold", f"holding still ({self.runner.last_hold})")
            return
        self._due = False
        msg = action_to_msg(action.metric, stamp=stamp_from_ns(action.stamp_ns))
        msg.header.frame_id = self.cfg.source
        self._pub.publish(msg)
        self._sent.append(time.monotonic())

    # ----- weights -------------------------------------------------------------------------------
    def _on_weights(self, msg: String) -> None:
        try:
            payload = json_from_msg(msg)
            version, path = int(payload["version"]), str(payload["path"])
        except (RosAdapterError, KeyError, TypeError, ValueError) as err:
            self._warn("weights", f"dropping a weights announcement: {err}")
            return
        if version <= self.runner.version:
            return
        self._wanted = (version, path)
        self._start_swap()

    def _start_swap(self) -> None:
        if self._wanted is None or (self._pending is not None and not self._pending.done()):
            return  # the newest announcement is loaded when the running load ends
        version, path = self._wanted
        self._wanted = None
        if version <= self.runner.version:
            return
        self._pending = self.runner.swap_in_background(path, version)
        self._pending.add_done_callback(self._on_swapped)

    def _on_swapped(self, future: Future[int]) -> None:
        err = future.exception()
        if err is not None:
            self.get_logger().error(f"keeping weights v{self.runner.version}: {err}")
        else:
            self.get_logger().info(f"weights v{future.result()} in use")
        self._start_swap()

    # ----- status --------------------------------------------------------------------------------
    def _publish_status(self) -> None:
        periods = np.diff(np.asarray(self._ticks)) if len(self._ticks) > 2 else np.zeros(0)
        target = 1.0 / self.cfg.control_hz
        jitter = np.abs(periods - target) * 1e3
        now = time.monotonic()
        sent = [t for t in self._sent if now - t <= 5.0]
        gaps = np.diff(np.asarray(sent)) if len(sent) > 1 else np.zeros(0)
        status: dict[str, Any] = {
            **self.runner.status(),
            "rate_hz": round(len(periods) / float(periods.sum()), 3) if len(periods) else 0.0,
            "action_rate_hz": round(len(sent) / 5.0, 3),
            "jitter_ms": {
                "p50": round(float(np.percentile(jitter, 50)), 3) if len(jitter) else 0.0,
                "p99": round(float(np.percentile(jitter, 99)), 3) if len(jitter) else 0.0,
            },
            "max_action_gap_s": round(float(gaps.max()), 3) if len(gaps) else None,
            "loading": self._pending is not None and not self._pending.done(),
        }
        self._status_pub.publish(json_to_msg(status))


def main() -> None:
    exit_if_help(__doc__, PolicyNodeConfig)
    main_exit(PolicyNode)


if __name__ == "__main__":
    main()
