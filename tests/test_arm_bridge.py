"""The arm bridge's ROS-free core: kinematics, IK targets, twists, grippers, profiles, the mock."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import mujoco
import numpy as np
import pytest
from twinloop.sim2real.arm import PANDA_HOME, PANDA_LIMITS
from twinloop.sim2real.errors import TwinError
from twinloop.sim2real.kinematics import ArmKinematics, KinematicsConfig, quat_about_z
from twinloop.sim2real.twin import Twin, TwinConfig

from twinloop.arm_bridge import (
    ArmBridge,
    JointMirror,
    MirrorConfig,
    check_action,
    gripper_value,
    load_profiles,
    quat_multiply,
    resolve_profile,
    twist_from_action,
)
from twinloop.errors import TwinloopError

FIXTURES = Path(__file__).parent / "fixtures"
TOY_ARM = FIXTURES / "toy_arm.xml"
HOME = np.array(PANDA_HOME)


@pytest.fixture(scope="module")
def panda() -> ArmKinematics:
    return ArmKinematics()


def _random_q(rng: np.random.Generator, spread: float = 0.6) -> np.ndarray:
    lo, hi = np.array(PANDA_LIMITS).T
    return np.clip(HOME + rng.uniform(-spread, spread, 7), lo + 0.05, hi - 0.05)


def _rot_angle(q1: np.ndarray, q2: np.ndarray) -> float:
    return 2.0 * math.acos(min(1.0, abs(float(np.dot(q1, q2)))))


# ----- forward kinematics ----------------------------------------------------------------------
def test_fk_equals_the_twins_ee_pose_for_the_same_joints(panda: ArmKinematics) -> None:
    twin = Twin(TwinConfig(render=False))
    twin.reset(seed=3)
    rng = np.random.default_rng(0)
    phys = twin.physics
    for _ in range(6):  # joint angles the twin reaches while stepping
        twin.step([*rng.uniform(-0.03, 0.03, 3), rng.uniform(-0.2, 0.2), 0.0])
        mujoco.mj_kinematics(phys.model, phys.data)  # site poses of the current qpos
        pos, quat = panda.fk(phys.arm_qpos())
        np.testing.assert_allclose(pos, phys.ee_pos(), atol=1e-9)
        assert _rot_angle(quat, phys.ee_quat()) < 1e-6
    for _ in range(6):  # and arbitrary ones
        q = _random_q(rng, 1.0)
        phys.data.qpos[phys.qpos_adr] = q
        mujoco.mj_kinematics(phys.model, phys.data)
        pos, quat = panda.fk(q)
        np.testing.assert_allclose(pos, phys.ee_pos(), atol=1e-9)
        assert _rot_angle(quat, phys.ee_quat()) < 1e-6
    twin.close()


def test_fk_of_home_points_the_hand_down(panda: ArmKinematics) -> None:
    pos, quat = panda.fk(HOME)
    assert 0.3 < pos[0] < 0.8 and abs(pos[1]) < 1e-6 and 0.1 < pos[2] < 0.6
    z_axis = np.zeros(9)
    mujoco.mju_quat2Mat(z_axis, quat)
    assert z_axis.reshape(3, 3)[2, 2] < -0.95  # the tool's z points at the table


def test_jacobian_matches_finite_differences(panda: ArmKinematics) -> None:
    q = _random_q(np.random.default_rng(1))
    jac = panda.jacobian(q)
    eps = 1e-6
    for j in range(7):
        dq = np.zeros(7)
        dq[j] = eps
        numeric = (panda.fk(q + dq)[0] - panda.fk(q - dq)[0]) / (2 * eps)
        np.testing.assert_allclose(jac[:3, j], numeric, atol=1e-6)


# ----- inverse kinematics ----------------------------------------------------------------------
def test_ik_reaches_reachable_targets_within_a_millimetre(panda: ArmKinematics) -> None:
    rng = np.random.default_rng(2)
    for _ in range(10):
        q_goal = _random_q(rng, 0.4)
        pos, quat = panda.fk(q_goal)
        result = panda.solve_ik(pos, quat, HOME, iterations=100)
        assert result.converged(1e-3, 1e-2), (result.pos_error, result.rot_error)
        assert np.all(result.q >= panda.joint_limits[:, 0] - 1e-12)
        assert np.all(result.q <= panda.joint_limits[:, 1] + 1e-12)


def test_ik_of_an_unreachable_target_reports_its_error(panda: ArmKinematics) -> None:
    pos, quat = panda.fk(HOME)
    result = panda.solve_ik(pos + np.array([2.0, 0.0, 0.0]), quat, HOME, iterations=50)
    assert not result.converged() and result.pos_error > 0.5
    with pytest.raises(TwinError, match="IK target must be a finite"):
        panda.solve_ik([np.nan, 0.0, 0.0], quat, HOME)
    with pytest.raises(TwinError, match="expected 7 joint angles"):
        panda.solve_ik(pos, quat, HOME[:6])


# ----- MJCF arms -------------------------------------------------------------------------------
def test_mjcf_arm_site_or_body_plus_tcp_offset_give_the_same_tcp() -> None:
    joints = tuple(f"j{i}" for i in range(1, 8))
    by_site = ArmKinematics(KinematicsConfig(str(TOY_ARM), joints, ee_frame="tool"))
    by_body = ArmKinematics(
        KinematicsConfig(str(TOY_ARM), joints, ee_frame="l7", tcp_offset=(0.0, 0.0, 0.15))
    )
    q = np.array([0.3, 0.4, -0.2, 0.9, 0.1, -0.5, 0.7])
    np.testing.assert_allclose(by_site.fk(q)[0], by_body.fk(q)[0], atol=1e-12)
    straight = by_site.fk(np.zeros(7))[0]  # a straight arm: 0.05 + 3 * 0.3 + 0.15 up
    np.testing.assert_allclose(straight, [0.0, 0.0, 1.1], atol=1e-9)


def test_poses_are_in_the_base_body_frame(tmp_path: Path) -> None:
    # The same arm on a pedestal, shifted and turned 90 degrees: in the pedestal's frame
    # (base_body) every pose equals the bare arm's.
    text = TOY_ARM.read_text().replace(
        "<worldbody>", '<worldbody><body name="pedestal" pos="0.1 0.2 0.3" euler="0 0 1.5708">'
    )
    mounted = tmp_path / "mounted.xml"
    mounted.write_text(text.replace("</worldbody>", "</body></worldbody>"))
    joints = tuple(f"j{i}" for i in range(1, 8))
    bare = ArmKinematics(KinematicsConfig(str(TOY_ARM), joints, ee_frame="tool"))
    on_base = ArmKinematics(KinematicsConfig(str(mounted), joints, "tool", base_body="pedestal"))
    in_world = ArmKinematics(KinematicsConfig(str(mounted), joints, ee_frame="tool"))
    q = np.array([0.3, 0.4, -0.2, 0.9, 0.1, -0.5, 0.7])
    np.testing.assert_allclose(on_base.fk(q)[0], bare.fk(q)[0], atol=1e-6)
    assert _rot_angle(on_base.fk(q)[1], bare.fk(q)[1]) < 1e-5
    np.testing.assert_allclose(in_world.fk(np.zeros(7))[0], [0.1, 0.2, 1.4], atol=1e-6)
    np.testing.assert_allclose(on_base.jacobian(q), bare.jacobian(q), atol=1e-5)
    pos, quat = bare.fk(q)
    result = on_base.solve_ik(pos, quat, np.zeros(7) + 0.2, iterations=200)
    assert result.converged(), (result.pos_error, result.rot_error)


def test_mjcf_errors_name_the_missing_piece() -> None:
    joints = tuple(f"j{i}" for i in range(1, 8))
    with pytest.raises(TwinError, match=r"no site or body named 'flange'.*sites: \['tool'\]"):
        ArmKinematics(KinematicsConfig(str(TOY_ARM), joints, ee_frame="flange"))
    with pytest.raises(TwinError, match="no joint named 'j9'"):
        ArmKinematics(KinematicsConfig(str(TOY_ARM), (*joints[:6], "j9"), ee_frame="tool"))
    with pytest.raises(TwinError, match="base body 'l2' is not fixed"):
        ArmKinematics(KinematicsConfig(str(TOY_ARM), joints, ee_frame="tool", base_body="l2"))
    with pytest.raises(TwinError, match="arm MJCF not found"):
        KinematicsConfig("/nonexistent/arm.xml")


# ----- the bridge: joint targets ---------------------------------------------------------------
def _bridge(**overrides: object) -> ArmBridge:
    return ArmBridge(resolve_profile("ros2_control", overrides=overrides or None))


def test_plus_x_delta_moves_the_commanded_hand_plus_x() -> None:
    bridge = _bridge()
    q = HOME.copy()
    start, quat0 = bridge.ee_pose(q)
    for _ in range(5):  # the arm follows each command exactly (an ideal position controller)
        q = bridge.joint_command([0.02, 0.0, 0.0, 0.0, -1.0], q).positions
    end, quat1 = bridge.ee_pose(q)
    moved = end - start
    assert moved[0] == pytest.approx(0.10, abs=2e-3)
    assert abs(moved[1]) < 2e-3 and abs(moved[2]) < 2e-3
    assert _rot_angle(quat0, quat1) < 0.01


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_each_axis_delta_moves_along_that_axis(axis: int) -> None:
    bridge = _bridge()
    start, _ = bridge.ee_pose(HOME)
    action = np.zeros(5)
    action[axis] = -0.02
    q = bridge.joint_command(action, HOME).positions
    moved = bridge.ee_pose(q)[0] - start
    expected = np.zeros(3)
    expected[axis] = -0.02
    np.testing.assert_allclose(moved, expected, atol=1e-3)


def test_dyaw_turns_the_hand_about_the_base_z_axis() -> None:
    bridge = _bridge()
    pos0, quat0 = bridge.ee_pose(HOME)
    q = bridge.joint_command([0.0, 0.0, 0.0, 0.15, 0.0], HOME).positions
    pos1, quat1 = bridge.ee_pose(q)
    np.testing.assert_allclose(pos1, pos0, atol=1e-3)
    expected = quat_multiply(quat_about_z(0.15), quat0)
    assert _rot_angle(quat1, expected) < 0.01


def test_target_never_leads_a_stuck_arm_by_more_than_max_lag() -> None:
    bridge = _bridge(max_lag=0.05)
    start, _ = bridge.ee_pose(HOME)
    for _ in range(10):  # the arm does not move at all
        command = bridge.joint_command([0.02, 0.0, 0.0, 0.0, 0.0], HOME)
    assert command.target_pos[0] - start[0] == pytest.approx(0.05, abs=1e-9)


def test_joint_steps_are_cut_to_max_joint_step() -> None:
    bridge = _bridge(max_joint_step=0.01, max_lag=0.5)
    command = bridge.joint_command([0.0, 0.0, -0.3, 0.0, 0.0], HOME)
    assert command.clipped
    assert np.max(np.abs(command.positions - HOME)) <= 0.01 + 1e-12


def test_reset_restarts_from_the_measured_pose() -> None:
    bridge = _bridge()
    bridge.joint_command([0.02, 0.0, 0.0, 0.0, 0.0], HOME)
    bridge.reset()
    start, _ = bridge.ee_pose(HOME)
    command = bridge.joint_command([0.0, 0.0, 0.0, 0.0, 0.0], HOME)
    np.testing.assert_allclose(command.target_pos, start, atol=1e-12)


def test_bad_actions_are_errors() -> None:
    bridge = _bridge()
    with pytest.raises(TwinloopError, match="action has NaN"):
        bridge.joint_command([np.nan, 0, 0, 0, 0], HOME)
    with pytest.raises(TwinloopError, match="must have 5 values"):
        check_action([0.0, 0.0])


# ----- joint states ----------------------------------------------------------------------------
def test_joint_states_are_read_by_name_in_any_order_ignoring_other_joints() -> None:
    bridge = _bridge()
    names = ["finger_joint1", *reversed([f"joint{i}" for i in range(1, 8)])]
    positions = [0.04, *reversed(HOME.tolist())]
    np.testing.assert_allclose(bridge.joints_from_state(names, positions), HOME)


def test_joint_state_errors_name_the_problem() -> None:
    bridge = _bridge()
    names = [f"joint{i}" for i in range(1, 8)]
    with pytest.raises(TwinloopError, match=r"lacks the arm joints \['joint7'\].*ros2_control"):
        bridge.joints_from_state(names[:6], HOME[:6])
    with pytest.raises(TwinloopError, match=r"NaN or inf for \['joint3'\]"):
        bridge.joints_from_state(names, [0, 0, np.nan, 0, 0, 0, 0])
    with pytest.raises(TwinloopError, match="7 names but 6 positions"):
        bridge.joints_from_state(names, HOME[:6])


# ----- twists and grippers ---------------------------------------------------------------------
def test_twist_is_the_delta_over_one_action_period() -> None:
    linear, angular = twist_from_action([0.01, -0.02, 0.03, 0.1, 1.0], dt=0.1)
    np.testing.assert_allclose(linear, [0.1, -0.2, 0.3])
    np.testing.assert_allclose(angular, [0.0, 0.0, 1.0])
    bridge = ArmBridge(resolve_profile("moveit_servo", overrides={"publish_ee_pose": False}))
    assert bridge.kinematics is None  # a servo bridge without FK needs no model
    np.testing.assert_allclose(bridge.twist([0.01, 0, 0, 0, 0])[0], [0.1, 0.0, 0.0])
    with pytest.raises(TwinloopError, match="dt must be positive"):
        twist_from_action([0, 0, 0, 0, 0], dt=0.0)
    with pytest.raises(TwinloopError, match="has no kinematics"):
        bridge.ee_pose(HOME)


def test_gripper_values_map_open_to_closed_and_repeat_only_on_change() -> None:
    assert gripper_value(-1.0, 0.04, 0.0) == pytest.approx(0.04)
    assert gripper_value(1.0, 0.04, 0.0) == pytest.approx(0.0)
    assert gripper_value(0.0, 0.0, 0.8) == pytest.approx(0.4)
    assert gripper_value(7.0, 0.0, 0.8) == pytest.approx(0.8)  # clipped to closed
    bridge = _bridge()
    assert bridge.gripper(-1.0) == pytest.approx(0.04)
    assert bridge.gripper(-0.99) is None  # inside the deadband: nothing to send
    assert bridge.gripper(1.0) == pytest.approx(0.0)


# ----- profiles --------------------------------------------------------------------------------
def test_shipped_profiles_name_each_drivers_interface() -> None:
    profiles = load_profiles()
    assert set(profiles) == {
        "ros2_control",
        "moveit_servo",
        "franka_ros2",
        "ur_robot_driver",
        "xarm_ros2",
    }
    rc, servo = profiles["ros2_control"], profiles["moveit_servo"]
    assert (rc.interface, rc.command_topic) == (
        "ros2_control",
        "/forward_position_controller/commands",
    )
    assert (servo.interface, servo.command_topic) == (
        "moveit_servo",
        "/servo_node/delta_twist_cmds",
    )
    assert servo.gripper_topic == rc.gripper_topic  # "extends" keeps the parent's keys
    franka = profiles["franka_ros2"]
    assert (
        franka.joint_names[0] == "fr3_joint1"
        and franka.gripper_topic == "/fr3_gripper/gripper_action"
    )
    assert profiles["ur_robot_driver"].joint_names[0] == "shoulder_pan_joint"
    assert profiles["xarm_ros2"].command_topic == "/servo_server/delta_twist_cmds"
    # the Franka profile drives the twin's Panda kinematics under the driver's joint names
    bridge = ArmBridge(franka)
    names = [f"fr3_joint{i}" for i in range(1, 8)]
    np.testing.assert_allclose(
        bridge.ee_pose(bridge.joints_from_state(names, HOME))[0], ArmKinematics().fk(HOME)[0]
    )


def test_arms_without_a_shipped_model_ask_for_their_mjcf() -> None:
    with pytest.raises(TwinloopError, match=r"'ur_robot_driver': mjcf_path is empty.*-p mjcf_path"):
        ArmBridge(resolve_profile("ur_robot_driver"))


def test_unknown_profile_lists_the_available_ones() -> None:
    with pytest.raises(
        TwinloopError, match=r"unknown arm profile 'kuka'\. Available: \[.*'franka_ros2'"
    ):
        resolve_profile("kuka")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "profiles.yaml"
    path.write_text(textwrap.dedent(text))
    return path


_BASE = """
    profiles:
      arm:
        interface: ros2_control
        command_topic: /cmd
        joint_names: [j1, j2, j3, j4, j5, j6, j7]
"""


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("    colour: red\n", r"arm profile 'arm': unknown keys \['colour'\]"),
        ("    interface: joint_velocity\n", r"'arm': interface must be one of \['ros2_control'"),
        ("    publish_ee_pose: 'yes'\n", r"'arm': publish_ee_pose must be true or false"),
        ("    max_joint_step: 0\n", r"'arm': max_joint_step must be in \(0"),
        ("    tcp_offset: [0, 0]\n", r"'arm': tcp_offset must be 3 finite numbers"),
        ("    joint_names: [j1, j1]\n", r"'arm': joint_names must hold distinct"),
        ("    gripper_interface: joint_trajectory\n", r"'arm': gripper_topic must be a ROS name"),
        ("    extends: nothing\n", r"'arm' extends unknown profile 'nothing'"),
        ("    extends: arm\n", r"'arm': 'extends' loops: arm -> arm"),
    ],
)
def test_profile_errors_name_the_profile_and_key(tmp_path: Path, extra: str, message: str) -> None:
    path = _write(tmp_path, _BASE + textwrap.indent(extra, "    "))
    with pytest.raises(TwinloopError, match=message):
        load_profiles(path)


def test_missing_keys_and_bad_files_are_named(tmp_path: Path) -> None:
    path = _write(tmp_path, "profiles:\n  arm: {interface: ros2_control}\n")
    with pytest.raises(
        TwinloopError, match=r"'arm': missing keys \['command_topic', 'joint_names'\]"
    ):
        load_profiles(path)
    path.write_text("profiles: [1, 2]\n")
    with pytest.raises(TwinloopError, match="needs a non-empty 'profiles:' mapping"):
        load_profiles(path)
    with pytest.raises(TwinloopError, match="does not exist"):
        load_profiles(tmp_path / "missing.yaml")
    with pytest.raises(TwinloopError, match=r"'ros2_control': unknown keys \['colour'\]"):
        resolve_profile("ros2_control", overrides={"colour": "red"})


def test_an_mjcf_profile_resolves_its_model_next_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "arms").mkdir()
    (tmp_path / "arms" / "toy.xml").write_text(TOY_ARM.read_text())
    path = _write(
        tmp_path,
        _BASE
        + "        model: mjcf\n"
        + "        mjcf_path: arms/toy.xml\n"
        + "        ee_frame: tool\n"
        + "        gripper_interface: none\n",
    )
    profile = resolve_profile("arm", path)
    assert profile.mjcf_path == str(tmp_path / "arms" / "toy.xml")
    bridge = ArmBridge(profile)
    q0 = np.array([0.0, 0.5, 0.0, 0.8, 0.0, 0.6, 0.0])
    start, _ = bridge.ee_pose(q0)
    q = bridge.joint_command([0.0, 0.02, 0.0, 0.0, 0.0], q0).positions
    np.testing.assert_allclose(bridge.ee_pose(q)[0] - start, [0.0, 0.02, 0.0], atol=1e-3)


# ----- the controller mock's core --------------------------------------------------------------
def test_joint_mirror_follows_commands_with_a_first_order_lag() -> None:
    mirror = JointMirror(MirrorConfig(("a", "b"), (0.0, 1.0), time_constant_s=0.1))
    mirror.command([1.0, 0.0])
    mirror.step(0.1)
    np.testing.assert_allclose(mirror.positions, [1 - math.exp(-1), math.exp(-1)])
    np.testing.assert_allclose(mirror.velocities, (mirror.positions - [0.0, 1.0]) / 0.1)
    instant = JointMirror(MirrorConfig(("a",), (0.0,)))
    instant.command([0.5])
    assert instant.step(0.02)[0] == pytest.approx(0.5)
    with pytest.raises(TwinloopError, match=r"command has 1 values for 2 joints"):
        mirror.command([1.0])
    with pytest.raises(TwinloopError, match="command has NaN"):
        mirror.command([np.nan, 0.0])
    with pytest.raises(TwinloopError, match="initial_positions has 1 values for 2 joints"):
        MirrorConfig(("a", "b"), (0.0,))


# ----- message conversions of the bridge (message classes only, no ROS graph) ------------------
def test_command_and_twist_conversions_round_trip() -> None:
    conversions = pytest.importorskip("twinloop_ros.conversions")
    msg = conversions.float64_array_to_msg(np.array([0.1, -0.2, 0.3]))
    np.testing.assert_allclose(conversions.float64_array_from_msg(msg, size=3), [0.1, -0.2, 0.3])
    with pytest.raises(ValueError, match="expected 7 values, got 3"):
        conversions.float64_array_from_msg(msg, size=7)
    with pytest.raises(ValueError, match="NaN or inf"):
        conversions.float64_array_from_msg(conversions.float64_array_to_msg([np.nan]))
    twist = conversions.twist_to_msg([0.1, 0.2, 0.3], [0.0, 0.0, 0.5], frame_id="fr3_link0")
    linear, angular = conversions.twist_from_msg(twist)
    assert twist.header.frame_id == "fr3_link0"
    np.testing.assert_allclose(linear, [0.1, 0.2, 0.3])
    np.testing.assert_allclose(angular, [0.0, 0.0, 0.5])
    with pytest.raises(ValueError, match=r"linear \(3,\) and angular \(3,\)"):
        conversions.twist_to_msg([0.1, 0.2], [0.0, 0.0, 0.0])
