"""sysid_node: ASID's exploration rollout through the node graph, recorded for identification.

A thin adapter over :class:`twinloop.sim2real.asid.executor.RolloutExecutor` (docs/sysid.md):
the scripted approach to a pre-contact pose, then ``steps`` explorer steps (``policy``: an
exploration policy checkpoint; "" = the random explorer), each published on /twinloop/action
(sensor_msgs/JointState, ``frame_id`` ``sysid``) and so passed through safety_node; what the
safety layer passed (/twinloop/safe_action) is what is recorded, with the poses after the step.
A clipped or held action is logged and recorded as executed. After the last step the rollout is
saved (``out``, the recorder's zarr layout, :func:`~twinloop.sim2real.asid.rollout.save_rollout`)
and the node exits 0 (mark it ``required``: the graph ends with it); on any error it exits 1.

Observations: the EE position, yaw and gripper opening and the tracked object's pose (cube or
rod) come from the twin's privileged /twinloop/sim/state; the EE orientation for the record from
/twinloop/ee_pose (matched to the state by its simulation-time stamp). On a robot the object pose
would come from a pose tracker; in the twin its simulation state stands in for one. The node does
not know the twin's physical parameters (they are what is being identified).

Lockstep with twin_node ``realtime: false``: after ``reset_service`` (the twin's /twin/reset;
"" = start from the next state) the node sends one action per fresh state (``steps`` counter
advanced by exactly one) and waits for its safe action and the next state. Any step the twin takes
on its own (a safety watchdog hold, the twin's idle hold) would make the rollout wrong, so it ends
the run with an error: run safety_node with ``watchdog_ms`` and twin_node with
``action_timeout_s`` well above ``step_timeout_s``. No answer for ``step_timeout_s``: exit 1.
Malformed messages are logged (throttled) and ignored. Actions are rounded to float32 before
they are sent (the rollout store keeps float32 actions), so the saved rollout is exactly what the
twin executed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.task import Future
from sensor_msgs.msg import JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger
from twinloop.sim2real.asid.executor import CellObservation, RolloutExecutor, tracked_body
from twinloop.sim2real.asid.explore import Explorer, PolicyExplorer, RandomExplorer
from twinloop.sim2real.asid.rollout import save_rollout
from twinloop.sim2real.errors import TwinError

from .conversions import (
    action_from_msg,
    action_to_msg,
    pose_from_msg,
    sim_state_from_msg,
    stamp_to_ns,
)
from .errors import RosAdapterError
from .node_utils import exit_if_help, main_exit, params_from_dataclass, qos_for

__all__ = ["SOURCE", "SysIdNode", "SysIdNodeConfig", "main"]

SOURCE = "sysid"  # header.frame_id of the actions (the safety layer's source name)
STATE_TOPIC = "/twinloop/sim/state"
ACTION_TOPIC = "/twinloop/action"
SAFE_TOPIC = "/twinloop/safe_action"
EE_TOPIC = "/twinloop/ee_pose"


@dataclass(frozen=True)
class SysIdNodeConfig:
    """The node's parameters (one ROS parameter per field)."""

    task: str = "lift_rod"  # lift_rod | push_cube: the task (and tracked object) of the rollout
    policy: str = ""  # exploration policy checkpoint (policy.safetensors); "" = random explorer
    steps: int = 30  # explorer steps after the approach
    seed: int = 0  # approach side / point and the random explorer's seed
    out: str = ""  # the rollout (.zarr); required
    overwrite: bool = False  # replace an existing rollout at ``out``
    control_hz: float = 10.0  # the cell's control rate (recorded with the rollout)
    robot_profile: str = "panda"  # the arm the rollout is recorded with
    reset_service: str = "/twin/reset"  # std_srvs/Trigger before the rollout; "" = no reset
    settle_s: float = 1.0  # after the graph is connected, wait this long before the reset
    start_timeout_s: float = 60.0  # no connected graph / first state for this long: exit 1
    step_timeout_s: float = 10.0  # no safe action, state or EE pose for a step this long: exit 1

    def __post_init__(self) -> None:
        if not self.out:
            msg = "out must name the rollout file to write (out:=runs/rollout.zarr)"
            raise RosAdapterError(msg)
        if self.steps < 1:
            msg = f"steps must be >= 1, got {self.steps}"
            raise RosAdapterError(msg)
        for name in ("control_hz", "start_timeout_s", "step_timeout_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                msg = f"{name} must be > 0, got {value}"
                raise RosAdapterError(msg)
        if not (math.isfinite(self.settle_s) and self.settle_s >= 0):
            msg = f"settle_s must be >= 0, got {self.settle_s}"
            raise RosAdapterError(msg)
        try:
            tracked_body(self.task)
        except TwinError as err:
            raise RosAdapterError(str(err)) from None


class SysIdNode(Node):
    def __init__(self) -> None:
        super().__init__("sysid")
        self.cfg = cfg = params_from_dataclass(self, SysIdNodeConfig)
        explorer: Explorer = PolicyExplorer(cfg.policy) if cfg.policy else RandomExplorer(cfg.seed)
        self.run = RolloutExecutor(
            explorer, cfg.steps, task=cfg.task, seed=cfg.seed, control_hz=cfg.control_hz,
            robot_profile=cfg.robot_profile,
        )  # fmt: skip
        self.body = self.run.body
        self.done = Future()  # result: the exit code (run_node stops on it)
        self._action_pub = self.create_publisher(JointState, ACTION_TOPIC, qos_for(ACTION_TOPIC))
        self.create_subscription(String, STATE_TOPIC, self._on_state, qos_for(STATE_TOPIC))
        self.create_subscription(JointState, SAFE_TOPIC, self._on_safe, qos_for(SAFE_TOPIC))
        self.create_subscription(PoseStamped, EE_TOPIC, self._on_ee, qos_for(EE_TOPIC))
        self._client = self.create_client(Trigger, cfg.reset_service) if cfg.reset_service else None

        self._phase = "connecting"  # connecting, resetting, starting, stepping, finished
        self._since = self._now()  # when the current phase (or step) began, ns
        self._ready_at: int | None = None  # when the graph was first seen connected
        self._episode: int | None = None  # the twin episode of the rollout
        self._state: dict[str, Any] | None = None  # newest state not yet used
        self._steps = -1  # the twin's step count of the last state used
        self._ee: dict[int, np.ndarray] = {}  # EE poses by stamp (ns), recent ones
        self._ee_since = 0  # EE poses received before this time (ns) are not used
        self._ee_base: tuple[int, int] | None = None  # (stamp ns, sim time ns) at the start
        self._sent: np.ndarray | None = None  # the outstanding action
        self._safe: np.ndarray | None = None  # its safe action
        self._clipped = 0
        self.create_timer(0.02, self._tick)
        self.get_logger().info(
            f"sysid rollout on {cfg.task}: {explorer.name} explorer, {cfg.steps} steps after the "
            f"approach, seed {cfg.seed} -> {cfg.out}"
        )

    def _now(self) -> int:
        return int(self.get_clock().now().nanoseconds)

    def _fail(self, why: str) -> None:
        if self.done.done():
            return
        self.get_logger().error(f"sysid rollout failed: {why}")
        self._phase = "finished"
        self.done.set_result(1)

    # ----- inputs ----------------------------------------------------------------------------
    def _on_state(self, msg: String) -> None:
        try:
            state = sim_state_from_msg(msg)
            steps, episode = int(state["steps"]), int(state["episode"])
            ps = state["privileged_state"]
            obs = CellObservation(
                ee_pos=ps["ee_pos"],
                ee_yaw=float(ps["ee_yaw"]),
                gripper_opening=float(ps["gripper_opening"]),
                object_pose=np.concatenate([ps[f"{self.body}_pos"], ps[f"{self.body}_quat"]]),
            )
            sim_ns = round(float(state["time"]) * 1e9)
        except (RosAdapterError, TwinError, KeyError, TypeError, ValueError) as err:
            self.get_logger().error(f"ignoring a sim state: {err}", throttle_duration_sec=2.0)
            return
        if state["task"] != self.cfg.task:
            self.get_logger().error(
                f"ignoring a sim state of task {state['task']!r}: this rollout is on "
                f"{self.cfg.task!r}", throttle_duration_sec=2.0,
            )  # fmt: skip
            return
        entry = {"steps": steps, "episode": episode, "obs": obs, "sim_ns": sim_ns}
        if self._phase == "stepping":
            if episode != self._episode:
                self._fail(f"the twin started episode {episode} during the rollout (a reset?)")
                return
            if steps <= self._steps:
                return  # an old state
            if steps > self._steps + 1 or self._state is not None:
                self._fail(
                    f"the twin stepped on its own (state {steps} after {self._steps}, one action "
                    "sent): a safety watchdog hold or the twin's idle hold; raise the safety's "
                    "watchdog_ms and the twin's action_timeout_s"
                )
                return
        self._state = entry
        self._advance()

    def _on_safe(self, msg: JointState) -> None:
        try:
            action = action_from_msg(msg)
        except RosAdapterError as err:
            self.get_logger().error(f"ignoring a safe action: {err}", throttle_duration_sec=2.0)
            return
        if self._phase != "stepping":
            return  # not ours (before the start, after the end)
        if self._sent is None or self._safe is not None:
            self._fail(
                "a safe action came that answers no action of this node (a safety watchdog hold "
                "or another source): the twin executed it, the rollout would be wrong"
            )
            return
        self._safe = action
        self._advance()

    def _on_ee(self, msg: PoseStamped) -> None:
        try:
            pos, quat = pose_from_msg(msg)
        except RosAdapterError as err:
            self.get_logger().error(f"ignoring an EE pose: {err}", throttle_duration_sec=2.0)
            return
        if self._now() < self._ee_since:
            return
        self._ee[stamp_to_ns(msg.header.stamp)] = np.concatenate([pos, quat])
        while len(self._ee) > 64:
            self._ee.pop(next(iter(self._ee)))
        self._advance()

    # ----- the protocol ----------------------------------------------------------------------
    def _tick(self) -> None:
        now, cfg = self._now(), self.cfg
        waited_s = (now - self._since) / 1e9
        if self._phase == "connecting":
            if self._connected():
                self._ready_at = self._ready_at or now
                if (now - self._ready_at) / 1e9 >= cfg.settle_s:
                    self._start_episode()
            elif waited_s > cfg.start_timeout_s:
                self._fail(f"no connected graph after {cfg.start_timeout_s} s: {self._missing()}")
            else:
                self.get_logger().info(
                    f"waiting for the graph: {self._missing()}", throttle_duration_sec=5.0
                )
        elif self._phase in ("resetting", "starting") and waited_s > cfg.start_timeout_s:
            self._fail(f"no reset / first state of the twin after {cfg.start_timeout_s} s")
        elif self._phase == "stepping" and waited_s > cfg.step_timeout_s:
            missing = [
                what
                for what, have in (
                    ("safe action", self._safe is not None),
                    ("sim state", self._state is not None),
                    ("EE pose", self._state is not None and self._ee_for(self._state) is not None),
                )
                if not have
            ]
            self._fail(
                f"the cell stopped answering: no {', '.join(missing)} for step "
                f"{self.run.recorded + 1} after {cfg.step_timeout_s} s"
            )

    def _connected(self) -> bool:
        return not self._missing()

    def _missing(self) -> str:
        missing = []
        if self._action_pub.get_subscription_count() < 1:
            missing.append(f"a reader of {ACTION_TOPIC} (safety_node)")
        if self.count_publishers(SAFE_TOPIC) < 1:
            missing.append(f"a writer of {SAFE_TOPIC}")
        if self.count_publishers(STATE_TOPIC) < 1:
            missing.append(f"a writer of {STATE_TOPIC} (twin_node)")
        if self._client is not None and not self._client.service_is_ready():
            missing.append(f"the service {self.cfg.reset_service}")
        return ", ".join(missing)

    def _start_episode(self) -> None:
        self._since = self._ee_since = self._now()
        self._state, self._ee = None, {}
        if self._client is None:
            self._phase = "starting"
            return
        self._phase = "resetting"
        self._client.call_async(Trigger.Request()).add_done_callback(self._on_reset_done)

    def _on_reset_done(self, future: Future) -> None:
        response = future.result()
        if response is None or not response.success:
            why = "no answer" if response is None else response.message
            self._fail(f"{self.cfg.reset_service} failed: {why}")
            return
        try:
            self._episode = int(json.loads(response.message)["episode"])
        except (ValueError, KeyError, TypeError):
            self._episode = None  # not twin_node's answer: take the next state with steps 0
        self._phase = "starting"
        self._advance()

    def _ee_for(self, state: dict[str, Any]) -> np.ndarray | None:
        if self._ee_base is None:
            return None
        stamp, sim_ns = self._ee_base
        return self._ee.get(stamp + state["sim_ns"] - sim_ns)

    def _advance(self) -> None:
        if self._phase == "starting":
            self._begin()
        elif self._phase == "stepping":
            self._complete_step()

    def _begin(self) -> None:
        state = self._state
        if state is None or not self._ee:
            return
        if self._client is not None:  # after a reset: its state (steps 0, the new episode)
            if state["steps"] != 0 or self._episode not in (None, state["episode"]):
                self._state = None
                return
        self._episode = state["episode"]
        stamp = max(self._ee)  # the pose published with this state (nothing steps meanwhile)
        self._ee_base = (stamp, state["sim_ns"])
        obs = state["obs"]
        self.run.start(self._ee[stamp], obs.object_pose)
        self.get_logger().info(
            f"twin episode {self._episode}: starting the rollout at step {state['steps']}"
        )
        self._phase = "stepping"
        self._steps = state["steps"]
        self._state = None
        self._send(obs)

    def _complete_step(self) -> None:
        state = self._state
        if state is None or self._safe is None or self._sent is None:
            return
        ee = self._ee_for(state)
        if ee is None:
            return
        safe, sent = self._safe, self._sent
        if not np.array_equal(safe, sent):
            self._clipped += 1
            self.get_logger().warning(
                f"step {self.run.recorded + 1}: the safety layer changed the action by up to "
                f"{float(np.max(np.abs(safe - sent))):.2g} ({np.round(sent, 4).tolist()} -> "
                f"{np.round(safe, 4).tolist()}); recording what it passed", throttle_duration_sec=1.0,
            )  # fmt: skip
        obs: CellObservation = state["obs"]
        self.run.record(safe, ee, obs.object_pose)
        self._steps = state["steps"]
        self._state = self._safe = self._sent = None
        self._send(obs)

    def _send(self, obs: CellObservation) -> None:
        try:
            action = self.run.next_action(obs)
        except TwinError as err:
            self._fail(str(err))
            return
        if action is None:
            self._finish()
            return
        # float32: the rollout store's dtype, so the saved actions are the executed ones
        self._sent = action.astype(np.float32).astype(np.float64)
        msg = action_to_msg(self._sent, stamp=self.get_clock().now().to_msg())
        msg.header.frame_id = SOURCE
        self._since = self._now()
        self._action_pub.publish(msg)

    def _finish(self) -> None:
        cfg = self.cfg
        rollout = self.run.rollout({"graph": True, "clipped_steps": self._clipped})
        try:
            save_rollout(rollout, cfg.out, overwrite=cfg.overwrite)
        except (TwinError, OSError) as err:
            self._fail(f"cannot save the rollout: {err}")
            return
        moved = float(np.linalg.norm(rollout.object_pose[-1, :3] - rollout.object_pose[0, :3]))
        self.get_logger().info(
            f"recorded a {rollout.steps}-step rollout ({rollout.meta['approach_steps']} approach, "
            f"{self._clipped} changed by the safety layer; the {self.body} moved "
            f"{moved * 100:.1f} cm) into {cfg.out}"
        )
        self._phase = "finished"
        if not self.done.done():
            self.done.set_result(0)


def main() -> None:
    exit_if_help(__doc__, SysIdNodeConfig)
    main_exit(SysIdNode)


if __name__ == "__main__":
    main()
