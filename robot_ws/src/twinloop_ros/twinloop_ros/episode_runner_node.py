"""episode_runner_node: runs N episodes on the cell the way a person does, then exits 0.

A thin adapter over :class:`twinloop.policy.runner.EpisodeRunner` (docs/finetune.md):

- before each episode it calls ``reset_service`` (std_srvs/Trigger; the twin's /twin/reset); with
  ``reset_service:=""`` (a robot without a scripted reset) it waits for an operator's ``start``
  event on /twinloop/episode instead;
- publishes ``start`` / ``success`` / ``failure`` on /twinloop/episode (the JSON events of the
  teleop and scripted-teleop nodes, with ``"source": "episode_runner"``); success comes from
  ``success_source``: ``sim`` = the twin's /twinloop/sim/state ``success`` field, ``reward`` =
  the success flag of /twinloop/reward (a reward model); an episode without success ends with
  ``failure`` after ``max_steps / control_hz`` seconds. With ``reward``, a flag counts only if its
  frame is stamped after the episode's start, it was scored for the running task (the reward's
  ``task:<name>``, reset-free) and ``success_frames`` flags came in a row; when the cell also
  publishes /twinloop/sim/state (the twin), the twin's success is recorded next to the reward's
  verdict: ``true_success`` in each episode record and an ``audit`` in the status (false
  successes, missed successes): the online reward audit;
- after the last episode it waits (at most ``drain_s``) until /twinloop/learner/status counts
  every episode and a weights announcement covers its env steps, then exits 0 (mark it
  ``required`` in the graph: the graph ends with it);
- publishes ``status_topic`` JSON (episodes, successes, phase, ...) every ``status_period_s``;
  with ``results_path`` set, appends JSON lines: one per episode (``"kind": "episode"``), one per
  weights announcement (``"kind": "weights"``: version, path, updates, env_steps) and a last
  one (``"kind": "final"``) with the runner's, the policy's and the learner's last status.

Reset-free (RoboFuME, ``reset_free:=true``, ``tasks:=[forward, backward]``): a success switches
the cell to the other task instead of resetting, a failure retries the same task, and every
``reset_every`` episodes a full reset is made. A switch is a std_msgs/String task name on
``switch_topic`` (twin_node's /twin/switch_task), followed at once by the next ``start`` event,
which names the task (policy and learner condition on it). Until the twin's
/twinloop/sim/state acknowledges the switch (the new task with ``steps`` 0) its success signals
are ignored, so a success of the previous task still in flight cannot end the new attempt.
Reset-free with ``success_source: reward`` needs one reward model per task (reward_node's
``task_checkpoints``), which switches models on the ``start`` events (their ``stamp_ns``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rclpy.node import Node
from rclpy.task import Future
from sensor_msgs.msg import JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger
from twinloop.policy.errors import PolicyError
from twinloop.policy.runner import SUCCESS_SOURCES, Command, EpisodeRunner, RunnerConfig

from .conversions import (
    json_from_msg,
    json_to_msg,
    reward_from_msg,
    sim_state_from_msg,
    stamp_to_ns,
)
from .errors import RosAdapterError
from .node_utils import COMMAND_QOS, exit_if_help, main_exit, params_from_dataclass
from .policy_node import WEIGHTS_QOS

__all__ = ["EpisodeRunnerNode", "EpisodeRunnerNodeConfig", "main"]

SOURCE = "episode_runner"  # "source" field of the events this node publishes


@dataclass(frozen=True)
class EpisodeRunnerNodeConfig:
    """The node's parameters (one ROS parameter per field)."""

    episodes: int = 1  # episodes to run, then exit 0
    max_steps: int = 60  # step budget of an episode: timeout = max_steps / control_hz
    control_hz: float = 10.0  # the cell's control rate
    success_source: str = "sim"  # sim: /twinloop/sim/state success; reward: /twinloop/reward flag
    success_frames: int = 1  # reward: success flags in a row that end an episode
    reset_service: str = "/twin/reset"  # std_srvs/Trigger before each episode; "" = operator start
    task: str = ""  # task name put into the events ("" = the twin's, from its reset answer)
    settle_s: float = 0.0  # wait after a reset before "start"
    drain_s: float = 30.0  # after the last episode, wait at most this long for the learner
    min_event_readers: int = 0  # wait for this many /twinloop/episode readers (the learner)
    reset_timeout_s: float = 60.0  # no reset service / answer for this long: exit 1
    reset_free: bool = False  # on success switch to the other task instead of resetting
    tasks: tuple[str, ...] = ("open_drawer", "close_drawer")  # (forward, backward) for reset_free
    reset_every: int = 10  # reset_free: a full reset every N episodes (0 = only the first)
    switch_topic: str = "/twin/switch_task"  # reset_free: std_msgs/String task name to the cell
    switch_ack_warn_s: float = 2.0  # reset_free: warn when a switch is unacknowledged this long
    results_path: str = ""  # JSON lines: episodes, weights announcements, final status
    sim_state_topic: str = "/twinloop/sim/state"
    reward_topic: str = "/twinloop/reward"
    episode_topic: str = "/twinloop/episode"
    weights_topic: str = "/twinloop/policy/weights"
    learner_status_topic: str = "/twinloop/learner/status"
    policy_status_topic: str = "/twinloop/policy/status"
    # the other nodes' last status goes into the final record (rates, latencies, drops)
    reward_status_topic: str = "/twinloop/reward/status"
    safety_status_topic: str = "/twinloop/safety_status"
    status_topic: str = "/twinloop/runner/status"
    status_period_s: float = 1.0

    def __post_init__(self) -> None:
        if self.success_source not in SUCCESS_SOURCES:
            msg = f"unknown success_source {self.success_source!r}. Available: {list(SUCCESS_SOURCES)}"
            raise RosAdapterError(msg)
        if self.reset_free and (len(self.tasks) != 2 or self.tasks[0] == self.tasks[1]):
            msg = f"reset_free needs tasks = [forward, backward], two names, got {list(self.tasks)}"
            raise RosAdapterError(msg)
        if not (math.isfinite(self.status_period_s) and self.status_period_s > 0):
            msg = f"status_period_s must be > 0, got {self.status_period_s}"
            raise RosAdapterError(msg)
        if self.min_event_readers < 0:
            msg = f"min_event_readers must be >= 0, got {self.min_event_readers}"
            raise RosAdapterError(msg)

    def runner_config(self) -> RunnerConfig:
        return RunnerConfig(
            episodes=self.episodes,
            max_steps=self.max_steps,
            control_hz=self.control_hz,
            success_source=self.success_source,
            use_reset=bool(self.reset_service),
            reset_timeout_s=self.reset_timeout_s,
            settle_s=self.settle_s,
            drain_s=self.drain_s,
            reset_free=self.reset_free,
            tasks=self.tasks if self.reset_free else (),
            reset_every=self.reset_every,
            success_frames=self.success_frames,
        )


class EpisodeRunnerNode(Node):
    def __init__(self) -> None:
        super().__init__("episode_runner")
        self.cfg = cfg = params_from_dataclass(self, EpisodeRunnerNodeConfig)
        try:
            self.runner = EpisodeRunner(cfg.runner_config(), task=cfg.task)
        except PolicyError as err:
            raise RosAdapterError(str(err)) from None
        self.done = Future()  # result: the exit code (run_node stops on it)
        self._client = self.create_client(Trigger, cfg.reset_service) if cfg.reset_service else None
        self._reset_wanted = False
        self._event_pub = self.create_publisher(String, cfg.episode_topic, COMMAND_QOS)
        self._switch_pub = (
            self.create_publisher(String, cfg.switch_topic, COMMAND_QOS) if cfg.reset_free else None
        )
        self._switch_wait: tuple[str, int] | None = None  # (task, since ns) until acknowledged
        self._status_pub = self.create_publisher(String, cfg.status_topic, COMMAND_QOS)
        # with success from a reward, the twin's states (where there is a twin) are the truth
        self.create_subscription(String, cfg.sim_state_topic, self._on_state, COMMAND_QOS)
        if cfg.success_source == "reward":
            self.create_subscription(JointState, cfg.reward_topic, self._on_reward, COMMAND_QOS)
        self.create_subscription(String, cfg.episode_topic, self._on_event, COMMAND_QOS)
        self.create_subscription(String, cfg.weights_topic, self._on_weights, WEIGHTS_QOS)
        self.create_subscription(
            String, cfg.learner_status_topic, self._on_learner_status, COMMAND_QOS
        )
        self.create_subscription(
            String, cfg.policy_status_topic, self._on_policy_status, COMMAND_QOS
        )
        self._last_status: dict[str, dict[str, Any] | None] = {"reward": None, "safety": None}
        for name, topic in (("reward", cfg.reward_status_topic),
                            ("safety", cfg.safety_status_topic)):  # fmt: skip
            self.create_subscription(
                String, topic, lambda msg, name=name: self._on_other_status(name, msg), COMMAND_QOS
            )
        self._learner_status: dict[str, Any] | None = None
        self._policy_status: dict[str, Any] | None = None
        self._ready = cfg.min_event_readers == 0
        self.create_timer(0.02, self._tick)
        self.create_timer(cfg.status_period_s, self._publish_status)
        how = f"reset by {cfg.reset_service}" if cfg.reset_service else "operator start events"
        if cfg.reset_free:
            how += (
                f", reset-free {cfg.tasks[0]} <-> {cfg.tasks[1]} via {cfg.switch_topic} (full "
                f"reset every {cfg.reset_every or 'never'})"
            )
        self.get_logger().info(
            f"{cfg.episodes} episodes of at most {cfg.max_steps} steps at {cfg.control_hz:g} Hz, "
            f"{how}, success from {cfg.success_source}"
        )

    def _now(self) -> int:
        return int(self.get_clock().now().nanoseconds)

    # ----- commands ------------------------------------------------------------------------------
    def _run(self, commands: list[Command]) -> None:
        for command in commands:
            if command.kind == "reset":
                self._switch_wait = None  # a reset also restores the twin's start task
                self._reset_wanted = True
                self._call_reset()
            elif command.kind == "event":
                payload = {**command.payload, "source": SOURCE}
                self._event_pub.publish(json_to_msg(payload))
                self._log_event(payload)
            elif command.kind == "exit":
                self._write({"kind": "final", "runner": self.runner.status(),
                             "policy": self._policy_status, "learner": self._learner_status,
                             **self._last_status})  # fmt: skip
                if not self.done.done():
                    self.done.set_result(int(command.payload["code"]))
            elif command.kind == "switch" and self._switch_pub is not None:
                task = str(command.payload["task"])
                self._switch_wait = (task, self._now())
                self._switch_pub.publish(String(data=task))
                self.get_logger().info(f"switching the cell to {task} (no reset)")
            else:
                self.get_logger().error(f"cannot carry out {command.kind!r}")

    def _log_event(self, payload: dict[str, Any]) -> None:
        kind, episode = payload["event"], payload["episode"]
        if kind == "start":
            self.get_logger().info(f"episode {episode} started")
            return
        result = self.runner.results[-1]
        self.get_logger().info(
            f"episode {episode}: {kind} after {result.duration_s:.1f} s "
            f"({self.runner.successes}/{len(self.runner.results)} successes)"
        )
        record = {"kind": "episode", "episode": episode, "success": result.success,
                  "duration_s": round(result.duration_s, 3), "task": result.task}  # fmt: skip
        if result.true_success is not None:
            record["true_success"] = result.true_success
        if result.true_progress is not None:
            record["true_progress"] = round(result.true_progress, 4)
        self._write(record)

    def _write(self, record: dict[str, Any]) -> None:
        if not self.cfg.results_path:
            return
        path = Path(self.cfg.results_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def _call_reset(self) -> None:
        if self._client is None or not self._reset_wanted or not self._client.service_is_ready():
            return
        self._reset_wanted = False
        future = self._client.call_async(Trigger.Request())
        future.add_done_callback(self._on_reset_done)

    def _on_reset_done(self, future: Future) -> None:
        response = future.result()
        info: dict[str, Any] | None = None
        ok = response is not None and bool(response.success)
        if response is not None:
            try:
                parsed = json.loads(response.message)
                info = parsed if isinstance(parsed, dict) else {"message": response.message}
            except json.JSONDecodeError:
                info = {"message": response.message}
        forward = self.cfg.tasks[0]
        if ok and self.cfg.reset_free and info and info.get("task") not in (None, forward):
            self.get_logger().error(
                f"the cell reset into {info.get('task')!r}, not the forward task {forward!r}: "
                "start the twin with task:= the forward task"
            )
        self._run(self.runner.on_reset_done(ok, info, self._now()))

    def _tick(self) -> None:
        if self.runner.done:
            return
        if not self._ready:
            readers = self._event_pub.get_subscription_count() - 1  # minus our own subscription
            if readers < self.cfg.min_event_readers:
                self.get_logger().info(
                    f"waiting for {self.cfg.min_event_readers} episode-event readers ({readers})",
                    throttle_duration_sec=5.0,
                )
                return
            self._ready = True
        self._call_reset()
        self._run(self.runner.tick(self._now()))

    # ----- inputs --------------------------------------------------------------------------------
    def _on_state(self, msg: String) -> None:
        try:
            state = sim_state_from_msg(msg)
            success, episode = bool(state["success"]), int(state["episode"])
            task, steps = str(state["task"]), int(state["steps"])
        except (RosAdapterError, TypeError, ValueError) as err:
            self.get_logger().error(f"dropping sim state: {err}", throttle_duration_sec=2.0)
            return
        if not self._switch_acknowledged(task, steps):
            return
        if self.cfg.success_source == "reward":  # the truth next to the reward's verdict
            stamp = state.get("stamp_ns")
            stamp = stamp if isinstance(stamp, int) and not isinstance(stamp, bool) else None
            reward = state.get("reward")
            progress = float(reward) if isinstance(reward, (int, float)) else None
            self.runner.on_truth(success, task=task, stamp_ns=stamp, progress=progress)
            return
        self._run(self.runner.on_success(success, self._now(), episode=episode))

    def _switch_acknowledged(self, task: str, steps: int) -> bool:
        """Reset-free: ignore the cell's states until it reports the switched task, steps 0."""
        if self._switch_wait is None:
            return True
        wanted, since = self._switch_wait
        if task == wanted and steps == 0:
            self._switch_wait = None
            return True
        waited_s = (self._now() - since) / 1e9
        if waited_s > self.cfg.switch_ack_warn_s:
            self.get_logger().warning(
                f"the cell has not switched to {wanted} after {waited_s:.1f} s (it reports "
                f"{task}); is twin_node listening on {self.cfg.switch_topic}?",
                throttle_duration_sec=5.0,
            )
        return False

    def _on_reward(self, msg: JointState) -> None:
        try:
            _reward, success, task = reward_from_msg(msg)
        except RosAdapterError as err:
            self.get_logger().error(f"dropping a reward: {err}", throttle_duration_sec=2.0)
            return
        stamp = stamp_to_ns(msg.header.stamp)
        self._run(self.runner.on_success(success, self._now(), stamp_ns=stamp or None, task=task))

    def _on_event(self, msg: String) -> None:
        try:
            event = json_from_msg(msg)
        except RosAdapterError:
            return
        if event.get("source") != SOURCE and event.get("event") == "start":
            self._run(self.runner.on_operator_start(self._now()))

    def _on_weights(self, msg: String) -> None:
        try:
            payload = json_from_msg(msg)
            env_steps = int(payload.get("env_steps", 0))
        except (RosAdapterError, TypeError, ValueError):
            return
        self.runner.on_weights(env_steps)
        self._write({"kind": "weights", **payload})

    def _on_learner_status(self, msg: String) -> None:
        try:
            status = json_from_msg(msg)
            self.runner.on_learner_status(int(status["episodes"]), int(status["env_steps"]))
        except (RosAdapterError, KeyError, TypeError, ValueError):
            return
        self._learner_status = status

    def _on_policy_status(self, msg: String) -> None:
        try:
            self._policy_status = json_from_msg(msg)
        except RosAdapterError:
            return

    def _on_other_status(self, name: str, msg: String) -> None:
        try:
            self._last_status[name] = json_from_msg(msg)
        except RosAdapterError:
            return

    def _publish_status(self) -> None:
        self._status_pub.publish(json_to_msg(self.runner.status()))


def main() -> None:
    exit_if_help(__doc__, EpisodeRunnerNodeConfig)
    main_exit(EpisodeRunnerNode)


if __name__ == "__main__":
    main()
