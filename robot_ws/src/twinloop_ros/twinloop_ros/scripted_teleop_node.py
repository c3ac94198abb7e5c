"""scripted_teleop_node: a scripted expert stands in for the teleoperator in simulation.

For each of ``episodes`` episodes it calls the twin's reset service (``reset_service``), publishes
``start`` on /twinloop/episode, then answers every new /twinloop/sim/state with one expert action
on /twinloop/action (so actions come at the twin's control rate, one per twin step, whatever the
phase between the two processes). The episode ends with ``success`` when the state says so, or
``failure`` once ``steps`` reaches the step budget; a JSON line
``{"episode", "success", "steps", "return", "task"}`` is appended to ``results_path`` (if set).
After the last episode the node exits 0 (``exit_when_done``), which ends a graph that marks it
``required``. The service is called asynchronously, so nothing blocks the executor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rclpy.node import Node
from rclpy.task import Future
from sensor_msgs.msg import JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger
from twinloop.sim2real.experts import ScriptedExpert, make_expert

from .conversions import action_to_msg, episode_event_to_msg, sim_state_from_msg
from .errors import RosAdapterError
from .node_utils import COMMAND_QOS, main_exit, params_from_dataclass, qos_for

__all__ = ["ScriptedTeleopConfig", "ScriptedTeleopNode", "main"]

MAX_RESET_FAILURES = 3
ACTION_STREAM = "action"  # the recorder's stream of /twinloop/action


@dataclass(frozen=True)
class ScriptedTeleopConfig:
    """The node's parameters (one ROS parameter per field)."""

    task: str = ""  # task the expert expects; "" follows the twin's task (from its state)
    noise: float = 0.0  # expert noise, as a fraction of the largest step
    seed: int = 0  # expert seed of episode 0; episode i uses seed + i
    control_hz: float = 10.0  # rate of the episode state machine (service waits, timeouts)
    episodes: int = 1  # episodes to run
    reset_service: str = "/twin/reset"  # std_srvs/Trigger that starts an episode
    results_path: str = ""  # append one JSON line per finished episode here ("" = nowhere)
    exit_when_done: bool = True  # exit 0 after the last episode
    max_steps: int = 0  # step budget per episode; 0 = the task's own (from the twin's state)
    service_timeout_s: float = 60.0  # give up (exit 1) when the reset service stays silent
    min_event_readers: int = 0  # wait for this many /twinloop/episode readers (a recorder)
    # wait until the recorder publishing this status has data on every stream ("" = do not)
    recorder_status_topic: str = ""

    def __post_init__(self) -> None:
        if self.episodes < 1:
            msg = f"episodes must be >= 1, got {self.episodes}"
            raise RosAdapterError(msg)
        if self.noise < 0:
            msg = f"noise must be >= 0, got {self.noise}"
            raise RosAdapterError(msg)
        if not 0.0 < self.control_hz <= 100.0:
            msg = f"control_hz must be in (0, 100], got {self.control_hz}"
            raise RosAdapterError(msg)
        if self.min_event_readers < 0:
            msg = f"min_event_readers must be >= 0, got {self.min_event_readers}"
            raise RosAdapterError(msg)
        if self.max_steps < 0 or self.service_timeout_s <= 0:
            msg = "max_steps must be >= 0 and service_timeout_s positive"
            raise RosAdapterError(msg)
        if not self.reset_service:
            msg = "reset_service must name a service"
            raise RosAdapterError(msg)


class ScriptedTeleopNode(Node):
    def __init__(self) -> None:
        super().__init__("scripted_teleop")
        self.cfg = cfg = params_from_dataclass(self, ScriptedTeleopConfig)
        if cfg.task:
            make_expert(cfg.task)  # an unknown task fails at start
        self.done = Future()  # result: the exit code
        self._client = self.create_client(Trigger, cfg.reset_service)
        self._action_pub = self.create_publisher(
            JointState, "/twinloop/action", qos_for("/twinloop/action")
        )
        self._event_pub = self.create_publisher(
            String, "/twinloop/episode", qos_for("/twinloop/episode")
        )
        self.create_subscription(
            String, "/twinloop/sim/state", self._on_state, qos_for("/twinloop/sim/state")
        )
        # streams the recorder has no message on yet (None: no recorder status heard yet)
        self._recorder_missing: list[str] | None = None
        self._recorder_said, self._recorder_said_s = "", 0.0  # the last wait logged, and when
        if cfg.recorder_status_topic:
            self.create_subscription(
                String, cfg.recorder_status_topic, self._on_recorder_status, COMMAND_QOS
            )
        self._phase = "wait_service"  # -> resetting -> running -> (resetting | done)
        self._phase_since_ns = self._now_ns()
        self._reset_failures = 0
        self._index = 0  # our episode number, 0-based
        self._twin_episode: int | None = None  # the twin's episode id of the running episode
        self._latest: dict[str, Any] | None = None
        self._expert: ScriptedExpert | None = None
        self._task = cfg.task
        self._last_steps = -1
        self._return = 0.0
        self.create_timer(1.0 / cfg.control_hz, self._tick)

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _set_phase(self, phase: str) -> None:
        self._phase, self._phase_since_ns = phase, self._now_ns()

    def _finish(self, code: int) -> None:
        self._set_phase("done")
        if not self.done.done():
            self.done.set_result(code)

    # ----- episode state machine -------------------------------------------------------------
    def _tick(self) -> None:
        waited_s = (self._now_ns() - self._phase_since_ns) / 1e9
        if self._phase == "wait_service":
            readers = self._event_pub.get_subscription_count()
            if readers < self.cfg.min_event_readers and waited_s <= self.cfg.service_timeout_s:
                # A start event sent before DDS matched the recorder would be lost.
                self.get_logger().info(
                    f"waiting for {self.cfg.min_event_readers} episode-event readers ({readers})",
                    throttle_duration_sec=5.0,
                )
            elif self._recorder_waiting(waited_s):
                pass
            elif self._client.service_is_ready():
                self._request_reset()
            elif waited_s > self.cfg.service_timeout_s:
                self.get_logger().error(f"no reset service {self.cfg.reset_service} appeared")
                self._finish(1)
            else:
                self.get_logger().info(
                    f"waiting for {self.cfg.reset_service}", throttle_duration_sec=5.0
                )
        elif self._phase == "resetting" and waited_s > self.cfg.service_timeout_s:
            self.get_logger().error(f"{self.cfg.reset_service} did not answer")
            self._finish(1)

    def _recorder_waiting(self, waited_s: float) -> bool:
        """True while the recorder lacks data on a stream: an episode started now would miss
        its first steps (DDS matches each topic on its own, the twin's streams can come seconds
        after the recorder hears the events). Past service_timeout_s: an error, exit 1."""
        missing = self._recorder_missing
        if not self.cfg.recorder_status_topic or missing == []:
            return False
        what = "no recorder status yet" if missing is None else f"no data on {missing}"
        if waited_s > self.cfg.service_timeout_s:
            self.get_logger().error(f"the recorder is not receiving: {what}")
            self._finish(1)
        elif what != self._recorder_said or waited_s - self._recorder_said_s >= 5.0:
            self.get_logger().info(f"waiting for the recorder: {what}")
            self._recorder_said, self._recorder_said_s = what, waited_s
        return True

    def _on_recorder_status(self, msg: String) -> None:
        try:
            buffers = json.loads(msg.data)["queues"]["buffers"]
            # the actions are this node's own: none come before the first episode
            self._recorder_missing = sorted(
                name for name, n in buffers.items() if int(n) <= 0 and name != ACTION_STREAM
            )
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            self.get_logger().warning(
                f"dropping a recorder status: {err!r}", throttle_duration_sec=5.0
            )

    def _request_reset(self) -> None:
        self._set_phase("resetting")
        future = self._client.call_async(Trigger.Request())
        future.add_done_callback(self._on_reset_done)

    def _on_reset_done(self, future: Future) -> None:
        if self._phase != "resetting":
            return
        response = future.result()
        try:
            if response is None or not response.success:
                reason = response.message if response is not None else "no response"
                raise RosAdapterError(f"reset failed: {reason}")
            info = json.loads(response.message)
            twin_episode = int(info["episode"])
        except (ValueError, KeyError, TypeError) as err:
            self._reset_failures += 1
            self.get_logger().error(f"{err} ({self._reset_failures}/{MAX_RESET_FAILURES})")
            if self._reset_failures >= MAX_RESET_FAILURES:
                self._finish(1)
            else:
                self._set_phase("wait_service")
            return
        self._start_episode(twin_episode)

    def _start_episode(self, twin_episode: int) -> None:
        self._twin_episode = twin_episode
        self._expert = None  # made from the first state, for the twin's task
        self._last_steps, self._return = -1, 0.0
        self._set_phase("running")
        self._event_pub.publish(episode_event_to_msg("start", self._index, task=self._task))
        self.get_logger().info(f"episode {self._index} started")
        latest = self._latest  # the reset state may have arrived before the service answer
        if latest is not None and latest["episode"] == twin_episode:
            self._handle_state(latest)

    def _on_state(self, msg: String) -> None:
        try:
            state = sim_state_from_msg(msg)
        except ValueError as err:
            self.get_logger().error(f"dropping sim state: {err}", throttle_duration_sec=1.0)
            return
        self._latest = state
        if self._phase == "running" and state["episode"] == self._twin_episode:
            self._handle_state(state)

    def _handle_state(self, state: dict[str, Any]) -> None:
        steps = int(state["steps"])
        if steps <= self._last_steps:
            return
        if steps > 0 and state["reward"] is not None:
            self._return += float(state["reward"])
        self._last_steps = steps
        expert = self._expert or self._make_expert(str(state["task"]))
        if expert is None:
            return
        budget = self.cfg.max_steps or int(state["max_steps"])
        if state["success"]:
            self._finish_episode(success=True, steps=steps)
        elif steps >= budget:
            self._finish_episode(success=False, steps=steps)
        else:
            try:
                action = expert.act(state["privileged_state"])
            except (KeyError, ValueError) as err:
                self.get_logger().error(f"expert failed: {err!r}", throttle_duration_sec=1.0)
                return
            self._action_pub.publish(action_to_msg(action, stamp=self.get_clock().now().to_msg()))

    def _make_expert(self, task: str) -> ScriptedExpert | None:
        if self.cfg.task and task != self.cfg.task:
            self.get_logger().error(
                f"the twin runs {task!r}, this teleop expects {self.cfg.task!r}"
            )
            self._finish(1)
            return None
        try:
            expert = make_expert(task, noise=self.cfg.noise, seed=self.cfg.seed + self._index)
        except ValueError as err:
            self.get_logger().error(str(err))
            self._finish(1)
            return None
        self._task, self._expert = task, expert
        return expert

    def _finish_episode(self, *, success: bool, steps: int) -> None:
        result = {
            "episode": self._index,
            "success": success,
            "steps": steps,
            "return": round(self._return, 6),
            "task": self._task,
        }
        event = "success" if success else "failure"
        extra = {k: v for k, v in result.items() if k != "episode"}
        self._event_pub.publish(episode_event_to_msg(event, self._index, **extra))
        self.get_logger().info(f"episode {self._index}: {event} after {steps} steps")
        if self.cfg.results_path:
            path = Path(self.cfg.results_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(result) + "\n")
        self._index += 1
        if self._index < self.cfg.episodes:
            self._request_reset()
        elif self.cfg.exit_when_done:
            self._finish(0)
        else:
            self._set_phase("done")


def main() -> None:
    main_exit(ScriptedTeleopNode)


if __name__ == "__main__":
    main()
