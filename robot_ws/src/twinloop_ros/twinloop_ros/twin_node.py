"""twin_node: the MuJoCo twin behind the same topics the robot and its camera publish.

A thin adapter over :class:`twinloop.sim2real.twin.Twin`:

- publishes realsense-ros-compatible camera topics (rgb8 colour, camera_info, optional 16UC1
  aligned depth in mm) at ``camera_fps``, and /joint_states, /twinloop/ee_pose (frame
  ``base_frame_id``) and the privileged /twinloop/sim/state (JSON) after every control step;
- applies the newest fresh /twinloop/safe_action once per control step (``control_hz``); with none
  newer than ``action_timeout_s`` the arm holds still (zero delta, gripper as last commanded);
- services ``~/reset`` (std_srvs/Trigger; episode k uses seed ``seed + k``; after task switches
  it restores the start ``task``) and ``~/get_params``
  (Trigger; JSON of the physical parameters and their ranges);
- topic ``~/switch_task`` (/twin/switch_task, std_msgs/String: a task name): reset-free
  training switches the task at run time without a reset (the physics stays as it is, the step
  count restarts, success and reward become the new task's); the next /twinloop/sim/state (sent at
  once, ``steps`` 0) names the new task. A task on other objects, or an unknown one, is refused
  with a logged error and the twin keeps running its task;
- physical parameters are node parameters ``params.<name>`` (``params.cube.mass``): set them at
  start (``-p params.cube.mass:=0.2``) or at run time (``ros2 param set /twin params.cube.mass
  0.2``); the twin validates them and a bad name or value is rejected with its reason. With
  ``params_file`` (a ``twinloop sysid apply`` file) the identified values are the start values.

With ``realtime: true`` (default) a timer runs one control step (1 / control_hz s of physics) per
1 / control_hz s of wall time and another renders at camera_fps; stamps are the node clock's
``now()`` at publication. With ``realtime: false`` the twin runs as fast as its controller: it steps
as soon as a safe_action arrives (lockstep), or with the hold action when none came for
``action_timeout_s``; frames are rendered every 1 / camera_fps s of simulation time, /clock is
published, and stamps are simulation time (run consumers with ``use_sim_time:=true``).
Bad input (NaN, wrong names or length) is logged, throttled, and dropped; it never stops the node.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

import numpy as np
from geometry_msgs.msg import PoseStamped
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, QoSReliabilityPolicy
from rclpy.time import Time
from rosgraph_msgs.msg import Clock as ClockMsg
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger
from twinloop.sim2real.asid.apply import load_twin_params, scene_params
from twinloop.sim2real.errors import TwinError
from twinloop.sim2real.scene import CameraConfig
from twinloop.sim2real.twin import Twin, TwinConfig

from .conversions import (
    action_from_msg,
    camera_info_from_intrinsics,
    image_to_msg,
    joint_state_to_msg,
    pose_to_msg,
    sim_state_to_msg,
    stamp_to_ns,
)
from .errors import RosAdapterError
from .node_utils import main_exit, params_from_dataclass, qos_for

__all__ = ["PARAM_PREFIX", "SWITCH_TOPIC", "TwinNode", "TwinNodeConfig", "main"]

PARAM_PREFIX = "params."  # node parameter "params.cube.mass" is the twin parameter "cube.mass"

COLOR_TOPIC = "/camera/camera/color/image_raw"
INFO_TOPIC = "/camera/camera/color/camera_info"
DEPTH_TOPIC = "/camera/camera/aligned_depth_to_color/image_raw"
DEPTH_INFO_TOPIC = "/camera/camera/aligned_depth_to_color/camera_info"
SWITCH_TOPIC = "/twin/switch_task"  # ~/switch_task of the node named "twin"


@dataclass(frozen=True)
class TwinNodeConfig:
    """The node's parameters (one ROS parameter per field)."""

    task: str = "push_cube"  # one of twinloop.sim2real.tasks.TASKS (at start; ~/switch_task later)
    image_width: int = 320  # camera image width, px
    image_height: int = 240  # camera image height, px
    camera_fps: float = 15.0  # colour (and depth) frames per second
    control_hz: float = 10.0  # control steps per second; each runs 1 / control_hz s of physics
    depth: bool = False  # also publish aligned depth (16UC1, mm)
    realtime: bool = True  # False: step as fast as actions come (lockstep); stamps follow sim time
    seed: int = 0  # seed of the first episode, the k-th ~/reset uses seed + k; < 0: unseeded
    camera_frame_id: str = "camera_color_optical_frame"  # realsense-ros colour optical frame
    base_frame_id: str = "base_link"  # frame of /twinloop/ee_pose (the arm base)
    action_timeout_s: float = 0.5  # a safe_action older than this is not applied: the arm holds
    # twin_params.json written by `twinloop sysid apply`: its current version's parameters of this
    # scene are the start values (params.<name> given at start still override them). "": none.
    params_file: str = ""
    # calibration file from `twinloop calibrate camera --out` (docs/robot.md): the twin's camera
    # at the calibrated pose, so its frames match the real camera's. "": the default camera.
    camera_calibration: str = ""

    def __post_init__(self) -> None:
        if not 0.0 < self.camera_fps <= 120.0:
            msg = f"camera_fps must be in (0, 120], got {self.camera_fps}"
            raise RosAdapterError(msg)
        if not self.action_timeout_s > 0.0:
            msg = f"action_timeout_s must be positive, got {self.action_timeout_s}"
            raise RosAdapterError(msg)
        if not self.camera_frame_id or not self.base_frame_id:
            msg = "camera_frame_id and base_frame_id must not be empty"
            raise RosAdapterError(msg)

    def twin_config(self) -> TwinConfig:
        # The node renders itself at camera_fps, so the twin's step() does not render.
        camera = CameraConfig(width=self.image_width, height=self.image_height)
        if self.camera_calibration:  # a bad or missing file fails the start, naming it
            from twinloop.sim2real.calibration import load_camera_config

            camera = load_camera_config(self.camera_calibration, camera)
        return TwinConfig(
            task=self.task, control_hz=self.control_hz, render=False, depth=False, camera=camera
        )


class TwinNode(Node):
    def __init__(self) -> None:
        # Undeclared names reach _on_set_parameters, which rejects them with the available names.
        super().__init__("twin", allow_undeclared_parameters=True)
        self.cfg = cfg = params_from_dataclass(self, TwinNodeConfig)
        self.twin = Twin(cfg.twin_config())
        self._declare_physical_params()
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._episode = 0
        self._grip = -1.0  # last commanded gripper: the hold action keeps it
        self._pending: np.ndarray | None = None  # newest unapplied safe action
        self._pending_ns = 0
        self._pending_stamp_ns = 0  # header stamp of the pending action (its observation's)
        self._published_ns: deque[int] = deque(maxlen=8)  # stamps of the last published states
        # real time: how many states old the observation of each applied action was (0: the
        # newest state, as it should be; 1: one control step late; "hold": no new action)
        self.action_timing: Counter[str] = Counter()
        self._reward = 0.0
        self._success = False
        self._clock_base_ns = self.get_clock().now().nanoseconds
        self._sim_offset_ns = 0  # simulation time of earlier episodes: sim stamps never go back
        self._next_frame_t = 0.0  # simulation time of the next frame (realtime: false)
        self._wall = Clock(clock_type=ClockType.STEADY_TIME)  # for lockstep idle detection
        self._last_step_ns = self._wall.now().nanoseconds  # of the last step (realtime: false)
        self._intrinsics = self.twin.intrinsics
        self.twin.physics.render()  # fail at start, not in a timer, when rendering is broken

        sensor = qos_for(COLOR_TOPIC)
        self._image_pub = self.create_publisher(Image, COLOR_TOPIC, sensor)
        self._info_pub = self.create_publisher(CameraInfo, INFO_TOPIC, sensor)
        self._depth_pub = self._depth_info_pub = None
        if cfg.depth:
            self._depth_pub = self.create_publisher(Image, DEPTH_TOPIC, sensor)
            self._depth_info_pub = self.create_publisher(CameraInfo, DEPTH_INFO_TOPIC, sensor)
        self._joint_pub = self.create_publisher(
            JointState, "/joint_states", qos_for("/joint_states")
        )
        self._pose_pub = self.create_publisher(
            PoseStamped, "/twinloop/ee_pose", qos_for("/twinloop/ee_pose")
        )
        self._state_pub = self.create_publisher(
            String, "/twinloop/sim/state", qos_for("/twinloop/sim/state")
        )
        self._clock_pub = None
        if not cfg.realtime:
            clock_qos = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.BEST_EFFORT)
            self._clock_pub = self.create_publisher(ClockMsg, "/clock", clock_qos)
        self.create_subscription(
            JointState,
            "/twinloop/safe_action",
            self._on_safe_action,
            qos_for("/twinloop/safe_action"),
        )
        self.create_service(Trigger, "~/reset", self._on_reset)
        self.create_service(Trigger, "~/get_params", self._on_get_params)
        self.create_subscription(
            String, "~/switch_task", self._on_switch_task, qos_for(SWITCH_TOPIC)
        )
        self.switches = 0  # task switches carried out

        self._reset_twin()
        if cfg.realtime:
            self.create_timer(1.0 / cfg.control_hz, self._control_step)
            self.create_timer(1.0 / cfg.camera_fps, self._publish_camera)
        else:
            self.create_timer(self.cfg.action_timeout_s / 4, self._hold_if_idle, clock=self._wall)
        self.get_logger().info(
            f"twin ready: task {cfg.task}, {cfg.image_width}x{cfg.image_height} at "
            f"{cfg.camera_fps} fps, control {cfg.control_hz} Hz, "
            f"{'real time' if cfg.realtime else 'lockstep with its actions'}"
        )

    # ----- physical parameters ---------------------------------------------------------------
    def _declare_physical_params(self) -> None:
        specs = self.twin.params.specs
        if self.cfg.params_file:  # a bad or missing file fails the start, naming it
            identified = scene_params(load_twin_params(self.cfg.params_file), specs)
            self.twin.set_params(identified)
            self.get_logger().info(f"twin parameters from {self.cfg.params_file}: {identified}")
        for name, value in self.twin.get_params().items():
            spec = specs[name]
            descriptor = ParameterDescriptor(
                dynamic_typing=True,
                description=f"{spec.doc} [{spec.low}, {spec.high}] {spec.unit}".strip(),
            )
            self.declare_parameter(PARAM_PREFIX + name, value, descriptor)
        start = {n: self.get_parameter(PARAM_PREFIX + n).value for n in specs}
        self.twin.set_params(_numbers(start))  # a bad value given at start fails the start

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        values: dict[str, Any] = {}
        for p in params:
            if p.name.startswith(PARAM_PREFIX):
                values[p.name.removeprefix(PARAM_PREFIX)] = p.value
            elif not self.has_parameter(p.name):
                available = sorted(PARAM_PREFIX + n for n in self.twin.params.specs)
                reason = f"unknown parameter {p.name!r}; physical parameters are {available}"
                return SetParametersResult(successful=False, reason=reason)
        if values:
            try:
                self.twin.set_params(_numbers(values))
            except TwinError as err:
                self.get_logger().warning(f"rejected parameters: {err}")
                return SetParametersResult(successful=False, reason=str(err))
            self.get_logger().info(f"twin parameters set: {values}")
        return SetParametersResult(successful=True)

    # ----- inputs ----------------------------------------------------------------------------
    def _on_safe_action(self, msg: JointState) -> None:
        try:
            action = self.twin.check_action(action_from_msg(msg))
        except ValueError as err:  # RosAdapterError or TwinError
            self.get_logger().error(f"dropping safe_action: {err}", throttle_duration_sec=1.0)
            return
        if not self.cfg.realtime:  # lockstep: every action is one step, right away
            self._grip = float(action[4])
            self._fast_step(action)
            return
        self._pending = action
        self._pending_ns = self.get_clock().now().nanoseconds
        self._pending_stamp_ns = stamp_to_ns(msg.header.stamp)

    def _take_action(self) -> np.ndarray:
        """The newest fresh action (each applied once), else hold still."""
        action, self._pending = self._pending, None
        if action is not None:
            age_s = (self.get_clock().now().nanoseconds - self._pending_ns) / 1e9
            if age_s <= self.cfg.action_timeout_s:
                self._grip = float(action[4])
                self._count_timing(self._pending_stamp_ns)
                return action
            self.get_logger().warning(
                f"ignoring a safe_action {age_s:.2f} s old", throttle_duration_sec=5.0
            )
        self.action_timing["hold"] += 1
        return self._hold_action()

    def _count_timing(self, stamp_ns: int) -> None:
        """States published after the one the action was computed from (0 = on time)."""
        newer = [s for s in self._published_ns if s > stamp_ns + 1_000_000]  # 1 ms: same state
        self.action_timing[str(min(len(newer), 3)) if stamp_ns > 0 else "unstamped"] += 1

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self._episode += 1
        try:
            seed = self._reset_twin()
        except TwinError as err:
            response.success, response.message = False, str(err)
            return response
        response.success = True
        response.message = json.dumps(
            {"episode": self._episode, "seed": seed, "task": self.twin.task.name}
        )
        self.get_logger().info(f"reset: episode {self._episode}, seed {seed}")
        return response

    def _on_switch_task(self, msg: String) -> None:
        """Reset-free: another task on the same objects, no reset (physics untouched)."""
        name, before = msg.data.strip(), self.twin.task.name
        try:
            self.twin.switch_task(name)
        except TwinError as err:
            self.get_logger().error(f"refusing to switch task: {err}; staying with {before}")
            return
        self.switches += 1
        self._reward = self.twin.task.reward(self.twin.physics)
        self._success = self.twin.success()
        self._publish_state(self._stamp())  # steps 0 and the new task: the switch is done
        self.get_logger().info(
            f"task {before} -> {name} without a reset (switch {self.switches}, "
            f"success {self._success})"
        )

    def _on_get_params(
        self, request: Trigger.Request, response: Trigger.Response
    ) -> Trigger.Response:
        specs = {n: dataclasses.asdict(s) for n, s in self.twin.params.specs.items()}
        response.success = True
        response.message = json.dumps(
            {"task": self.twin.task.name, "params": self.twin.get_params(), "specs": specs}
        )
        return response

    # ----- the loop --------------------------------------------------------------------------
    def _reset_twin(self) -> int | None:
        seed = self.cfg.seed + self._episode if self.cfg.seed >= 0 else None
        if self.twin.task.name != self.cfg.task:  # a full reset ends a reset-free run of switches
            self.twin.switch_task(self.cfg.task)
        self._sim_offset_ns += round(self.twin.physics.time * 1e9)
        self.twin.reset(seed=seed)
        self._next_frame_t = 0.0
        self._pending, self._grip = None, -1.0
        self._reward = self.twin.task.reward(self.twin.physics)
        self._success = self.twin.success()
        self._publish_state(self._stamp())
        return seed

    def _control_step(self) -> None:
        self._step(self._take_action())

    def _hold_action(self) -> np.ndarray:
        return np.array([0.0, 0.0, 0.0, 0.0, self._grip])

    def _step(self, action: np.ndarray) -> None:
        try:
            result = self.twin.step(action)
        except TwinError as err:  # the simulation diverged: start a fresh episode
            self.get_logger().error(f"{err}: resetting the twin", throttle_duration_sec=1.0)
            self._reset_twin()
            return
        self._reward, self._success = result.reward, result.success
        self._publish_state(self._stamp())

    def _hold_if_idle(self) -> None:
        idle_s = (self._wall.now().nanoseconds - self._last_step_ns) / 1e9
        if idle_s >= self.cfg.action_timeout_s:
            self._fast_step(self._hold_action())

    def _fast_step(self, action: np.ndarray) -> None:
        self._last_step_ns = self._wall.now().nanoseconds
        self._step(action)
        if self.twin.physics.time >= self._next_frame_t:
            self._publish_camera()
            self._next_frame_t = self.twin.physics.time + 1.0 / self.cfg.camera_fps
        if self._clock_pub is not None:
            self._clock_pub.publish(ClockMsg(clock=self._stamp().to_msg()))

    def _stamp(self) -> Time:
        if self.cfg.realtime:
            return self.get_clock().now()
        sim_ns = self._sim_offset_ns + round(self.twin.physics.time * 1e9)
        return Time(
            nanoseconds=self._clock_base_ns + sim_ns, clock_type=self.get_clock().clock_type
        )

    def _publish_state(self, now: Time) -> None:
        self._published_ns.append(now.nanoseconds)
        stamp = now.to_msg()
        phys, twin = self.twin.physics, self.twin
        self._joint_pub.publish(
            joint_state_to_msg(
                phys.joint_names, phys.joint_positions(), phys.joint_velocities(), stamp=stamp
            )
        )
        self._pose_pub.publish(
            pose_to_msg(phys.ee_pos(), phys.ee_quat(), stamp=stamp, frame_id=self.cfg.base_frame_id)
        )
        self._state_pub.publish(
            sim_state_to_msg(
                task=twin.task.name,
                episode=self._episode,
                steps=twin.steps,
                max_steps=twin.task.max_steps,
                success=self._success,
                reward=self._reward,
                privileged_state=twin.privileged_state(),
                time=phys.time,
                stamp_ns=now.nanoseconds,
            )
        )

    def _publish_camera(self) -> None:
        stamp = self._stamp().to_msg()
        frame = self.cfg.camera_frame_id
        info = camera_info_from_intrinsics(self._intrinsics, stamp=stamp, frame_id=frame)
        self._image_pub.publish(
            image_to_msg(self.twin.physics.render(), stamp=stamp, frame_id=frame)
        )
        self._info_pub.publish(info)
        if self._depth_pub is not None and self._depth_info_pub is not None:
            depth = self.twin.physics.render_depth()
            self._depth_pub.publish(image_to_msg(depth, stamp=stamp, frame_id=frame))
            self._depth_info_pub.publish(info)

    def destroy_node(self) -> None:
        if self.cfg.realtime and self.action_timing:
            self.get_logger().info(f"action timing (states late): {dict(self.action_timing)}")
        self.twin.close()
        super().destroy_node()


def _numbers(values: dict[str, Any]) -> dict[str, Any]:
    """Refuse booleans (``float(True)`` would pass as 1.0); the twin checks everything else."""
    for name, value in values.items():
        if isinstance(value, bool):
            msg = f"parameter {name} must be a number, got {value!r}"
            raise TwinError(msg)
    return values


def main() -> None:
    main_exit(TwinNode)


if __name__ == "__main__":
    main()
