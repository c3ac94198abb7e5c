"""learner_node: the learner. Assembles transitions from the cell's topics, trains, ships weights.

A thin adapter over :class:`twinloop.policy.learner.TransitionAssembler` and
:class:`twinloop.policy.learner.Learner` (docs/actor_learner.md):

- subscribes the observation sources of its ObsSpec (camera, /joint_states, /twinloop/ee_pose,
  /twinloop/sim/state for ``priv_*`` keys) and forms an observation tick whenever every source
  has a value within ``sync_tolerance_s`` of the others (stamp: the oldest of them);
- subscribes ``action_topic`` (default /twinloop/safe_action: what the arm applied, after the
  safety layer's clipping and holds), /twinloop/reward (``reward_source: topic``) and
  /twinloop/episode; episodes are assembled ``wait_s`` after their end event; a reset-free
  policy (``task_onehot`` in ``state_keys``) gets, on every row of an episode, the one-hot of
  the task its start event names (index in ``tasks``);
- trains on a background thread (``utd`` gradient steps per environment step, online buffer
  mixed with the optional offline ``dataset``), writes ``out_dir/policy_v{N}.safetensors`` at
  most every ``publish_every_s`` and announces it on ``weights_topic`` (std_msgs/String JSON
  ``{"version", "path", "updates", "env_steps"}``, reliable, transient local);
- saves itself to ``out_dir/learner.safetensors`` every ``checkpoint_every_s`` and on shutdown,
  and resumes from it at start when it exists (the policy keeps acting meanwhile);
- publishes ``status_topic`` JSON every ``status_period_s``.

Bad messages are logged (throttled) and dropped. Bad parameters end the start with exit code 2.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import String
from twinloop.policy.actor import LatestObservations
from twinloop.policy.base import load_checkpoint
from twinloop.policy.errors import PolicyError
from twinloop.policy.learner import (
    REWARD_SOURCES,
    AssembledEpisode,
    Learner,
    LearnerConfig,
    TransitionAssembler,
)
from twinloop.policy.obs import TWIN_ACTION_SCALE, ObsSpec

from .conversions import (
    action_from_msg,
    episode_event_from_msg,
    json_to_msg,
    reward_from_msg,
    stamp_to_ns,
)
from .errors import RosAdapterError
from .node_utils import COMMAND_QOS, exit_if_help, main_exit, params_from_dataclass
from .obs_inputs import KeyedThrottle, ObservationInputs
from .policy_node import WEIGHTS_QOS

__all__ = ["LearnerNode", "LearnerNodeConfig", "main"]

LOG_PERIOD_S = 2.0


@dataclass(frozen=True)
class LearnerNodeConfig:
    """The node's parameters (one ROS parameter per field)."""

    out_dir: str = ""  # weights, learner.safetensors (required)
    checkpoint: str = ""  # initial weights (e.g. offline training); unused when resuming
    dataset: str = ""  # offline episode store mixed into every batch ("" = online only)
    offline_reward: str = "success"  # RewardSpec.source of the offline dataset
    state_keys: tuple[str, ...] = ("proprio",)  # ObsSpec.state_keys, as the policy's
    image_key: str = ""  # ObsSpec.image_key; "" = state only
    image_size: int = 0  # ObsSpec.image_size
    action_scale: tuple[float, ...] = TWIN_ACTION_SCALE  # metric action / scale = [-1, 1]
    fingers: int = 2  # finger joints at the end of /joint_states
    tasks: tuple[str, ...] = ("open_drawer", "close_drawer")  # task_onehot order (reset-free)
    control_hz: float = 10.0  # the cell's control rate (matching tolerances default to half)
    sync_tolerance_s: float = 0.05  # sources of one observation tick lie within this
    reward_source: str = "success"  # success: -1/0 from events; topic: /twinloop/reward values
    wait_s: float = 0.5  # assemble an episode this long after its end event (late rewards)
    utd: float = 1.0  # gradient steps per environment step
    min_online: int = 100  # online transitions before the first update
    publish_every_s: float = 10.0  # announce new weights at most this often
    offline_fraction: float = 0.5  # share of each batch from the dataset (when there is one)
    capacity: int = 200_000  # online replay capacity (transitions)
    keep_versions: int = 3  # weight files kept in out_dir
    checkpoint_every_s: float = 60.0  # save learner.safetensors this often (and on shutdown)
    device: str = "cpu"  # torch device of training
    threads: int = 0  # torch CPU threads; 0 = torch's default
    seed: int = 0  # sampling seed
    image_topic: str = "/camera/camera/color/image_raw"
    joint_states_topic: str = "/joint_states"
    ee_pose_topic: str = "/twinloop/ee_pose"
    sim_state_topic: str = "/twinloop/sim/state"
    action_topic: str = "/twinloop/safe_action"  # what was applied (see the module docstring)
    reward_topic: str = "/twinloop/reward"
    episode_topic: str = "/twinloop/episode"
    weights_topic: str = "/twinloop/policy/weights"
    status_topic: str = "/twinloop/learner/status"
    status_period_s: float = 1.0

    def __post_init__(self) -> None:
        if not self.out_dir:
            msg = "out_dir must name a directory for weights and the learner checkpoint"
            raise RosAdapterError(msg)
        if self.reward_source not in REWARD_SOURCES:
            msg = f"unknown reward_source {self.reward_source!r}. Available: {list(REWARD_SOURCES)}"
            raise RosAdapterError(msg)
        for name in ("control_hz", "sync_tolerance_s", "checkpoint_every_s", "status_period_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                msg = f"{name} must be > 0, got {value}"
                raise RosAdapterError(msg)

    def obs_spec(self) -> ObsSpec:
        return ObsSpec(
            state_keys=tuple(k for k in self.state_keys if k),
            image_key=self.image_key,
            image_size=self.image_size,
            action_scale=self.action_scale,
            fingers=self.fingers,
        )

    def learner_config(self) -> LearnerConfig:
        return LearnerConfig(
            utd=self.utd,
            min_online=self.min_online,
            publish_every_s=self.publish_every_s,
            offline_fraction=self.offline_fraction,
            capacity=self.capacity,
            keep_versions=self.keep_versions,
            seed=self.seed,
        )


def build_learner(cfg: LearnerNodeConfig, obs: ObsSpec) -> tuple[Learner, str]:
    """Resume from out_dir, else start from ``checkpoint``; (learner, where it came from)."""
    offline = None
    if cfg.dataset:
        from twinloop.policy.buffers import RewardSpec, load_offline

        offline = load_offline(
            cfg.dataset, obs, RewardSpec(source=cfg.offline_reward), device=cfg.device
        )
    resumed = Learner.resume(cfg.out_dir, cfg.learner_config(), offline=offline, device=cfg.device)
    if resumed is not None:
        return resumed, f"resumed from {Path(cfg.out_dir) / 'learner.safetensors'}"
    if not cfg.checkpoint:
        msg = f"no learner checkpoint in {cfg.out_dir}: set checkpoint:= to initial weights"
        raise RosAdapterError(msg)
    algo, _ = load_checkpoint(cfg.checkpoint, device=cfg.device)
    return Learner(algo, cfg.learner_config(), cfg.out_dir, offline=offline), cfg.checkpoint


class LearnerNode(Node):
    def __init__(self) -> None:
        super().__init__("learner")
        self.cfg = cfg = params_from_dataclass(self, LearnerNodeConfig)
        if cfg.threads:
            import torch

            torch.set_num_threads(cfg.threads)
        obs = cfg.obs_spec()
        self.learner, source = build_learner(cfg, obs)
        self.assembler = TransitionAssembler(
            obs, cfg.control_hz, reward_source=cfg.reward_source, wait_s=cfg.wait_s, tasks=cfg.tasks
        )
        self._latest = LatestObservations(self.assembler.tick_spec)  # the task is per episode
        self._sync_ns = int(cfg.sync_tolerance_s * 1e9)
        self._last_tick = -1
        self._episodes: deque[AssembledEpisode] = deque()  # assembled, for the trainer thread
        self._weights_pub = self.create_publisher(String, cfg.weights_topic, WEIGHTS_QOS)
        self._status_pub = self.create_publisher(String, cfg.status_topic, COMMAND_QOS)
        self._throttle = KeyedThrottle(LOG_PERIOD_S)
        sources = self._latest.sources
        self._inputs = ObservationInputs(
            self,
            self._latest,
            image_topic=cfg.image_topic,
            joint_states_topic=cfg.joint_states_topic,
            ee_pose_topic=cfg.ee_pose_topic,
            sim_state_topic=cfg.sim_state_topic,
            warn=self._warn,
            after=self._maybe_tick,
        )
        self.create_subscription(JointState, cfg.action_topic, self._on_action, COMMAND_QOS)
        if cfg.reward_source == "topic":
            self.create_subscription(JointState, cfg.reward_topic, self._on_reward, COMMAND_QOS)
        self.create_subscription(String, cfg.episode_topic, self._on_event, COMMAND_QOS)
        self.create_timer(0.05, self._poll)
        self.create_timer(cfg.status_period_s, self._publish_status)
        self._stop = threading.Event()
        self._updates_per_s = 0.0
        self._busy = (0.0, 0)  # (seconds spent in steps that updated, their updates)
        latest = self.learner.latest()
        if latest is not None and latest[1].exists():
            self._announce(*latest)  # transient local: a restarted actor gets it too
        self._thread = threading.Thread(target=self._train, name="learner", daemon=True)
        self._thread.start()
        self.get_logger().info(
            f"{self.learner.algo.config.type} learner from {source}: {list(sources)} + "
            f"{cfg.action_topic}, utd {cfg.utd:g}, weights -> {cfg.out_dir} / {cfg.weights_topic}"
        )

    def destroy_node(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30.0)
        try:
            path = self.learner.save()
            self.get_logger().info(f"saved {path}")
        except (OSError, PolicyError) as err:
            self.get_logger().error(f"cannot save the learner: {err}")
        super().destroy_node()

    def _now(self) -> int:
        return int(self.get_clock().now().nanoseconds)

    def _warn(self, kind: str, text: str) -> None:
        if self._throttle.ready(kind):
            self.get_logger().warning(text)

    # ----- observations (ObservationInputs) -> ticks ------------------------------------------
    def _maybe_tick(self) -> None:
        rows, stamps = self._latest.snapshot()
        if len(stamps) < len(self._latest.sources):
            return
        values = list(stamps.values())
        oldest = min(values)
        if max(values) - oldest > self._sync_ns or oldest <= self._last_tick:
            return
        self._last_tick = oldest
        self.assembler.on_tick(rows, oldest)

    # ----- actions, rewards, events ------------------------------------------------------------
    def _on_action(self, msg: JointState) -> None:
        try:
            self.assembler.on_action(action_from_msg(msg), stamp_to_ns(msg.header.stamp))
        except (PolicyError, RosAdapterError) as err:
            self._warn("action", f"dropping an action: {err}")

    def _on_reward(self, msg: JointState) -> None:
        try:
            value, _success, task = reward_from_msg(msg)
            self.assembler.on_reward(value, stamp_to_ns(msg.header.stamp), task=task)
        except (PolicyError, RosAdapterError) as err:
            self._warn("reward", f"dropping a reward: {err}")

    def _on_event(self, msg: String) -> None:
        try:
            event = episode_event_from_msg(msg)
        except RosAdapterError as err:
            self._warn("event", f"dropping an episode event: {err}")
            return
        self.assembler.on_event(event, self._now())
        self.get_logger().info(f"episode {event['episode']}: {event['event']}")

    def _poll(self) -> None:
        for ep in self.assembler.poll(self._now()):
            self._episodes.append(ep)
            self.get_logger().info(
                f"episode {ep.episode}{f' ({ep.task})' if ep.task else ''}: {len(ep)} transitions, "
                f"success {ep.success}, "
                f"{ep.matched_rewards} rewards from the topic"
            )

    # ----- training (background thread) -------------------------------------------------------
    def _train(self) -> None:
        last_save = time.monotonic()
        window: deque[tuple[float, int]] = deque(maxlen=64)
        while not self._stop.is_set():
            t0 = time.perf_counter()
            before = self.learner.updates
            try:
                done = self._train_step()
            except Exception as err:  # a failed update must not kill the node silently
                self.get_logger().error(f"training step failed: {err!r}")
                self._stop.wait(1.0)
                continue
            if self.learner.updates > before:
                spent, count = self._busy
                self._busy = (
                    spent + time.perf_counter() - t0,
                    count + self.learner.updates - before,
                )
            now = time.monotonic()
            window.append((now, self.learner.updates))
            if len(window) > 1 and now > window[0][0]:
                self._updates_per_s = (window[-1][1] - window[0][1]) / (now - window[0][0])
            if now - last_save >= self.cfg.checkpoint_every_s:
                self.learner.save()
                last_save = now
            if not done:
                self._stop.wait(0.05)

    def _train_step(self) -> int:
        learner = self.learner
        while self._episodes:
            learner.on_episode(self._episodes.popleft())
        done = learner.train_for(max_calls=4)
        if learner.should_publish():
            version, path = learner.publish()
            self._announce(version, path)
        return done

    def _announce(self, version: int, path: Path) -> None:
        payload = {
            "version": version,
            "path": str(path.resolve()),
            "updates": self.learner.updates,
            "env_steps": self.learner.env_steps,
        }
        self._weights_pub.publish(json_to_msg(payload))
        self.get_logger().info(f"announced weights v{version}: {path}")

    def _publish_status(self) -> None:
        status = {
            **self.learner.status(),
            "updates_per_s": round(self._updates_per_s, 2),
            # what it can do: updates per second of the time it spent updating (UTD caps the rest)
            "busy_updates_per_s": round(self._busy[1] / self._busy[0], 2)
            if self._busy[0]
            else None,
            "in_episode": self.assembler.in_episode,
            "assembler": dict(self.assembler.counts),
            "queued_episodes": len(self._episodes),
        }
        self._status_pub.publish(json_to_msg(status))


def main() -> None:
    exit_if_help(__doc__, LearnerNodeConfig)
    main_exit(LearnerNode)


if __name__ == "__main__":
    main()
