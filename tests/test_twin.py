"""The MuJoCo twin: IK, parameters, tasks, determinism, bad input."""

from __future__ import annotations

import math
from pathlib import Path

import mujoco
import numpy as np
import pytest
from twinloop.sim2real import TwinError
from twinloop.sim2real.arm import PANDA_LIMITS, ArmConfig
from twinloop.sim2real.experts import LiftRodExpert, make_expert
from twinloop.sim2real.physics import ee_target_quat
from twinloop.sim2real.rollout import run_expert_episodes
from twinloop.sim2real.scene import CameraConfig
from twinloop.sim2real.tasks import TASKS
from twinloop.sim2real.twin import Twin, TwinConfig

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def push_twin() -> Twin:
    return Twin(TwinConfig(task="push_cube", render=False))


# ----- arm and IK ------------------------------------------------------------------------------
def test_panda_home_pose_matches_published_kinematics(push_twin: Twin) -> None:
    push_twin.reset(seed=0)
    # Hand points straight down from the home pose; TCP about 0.46 m in front at 0.40 m height.
    pos = push_twin.physics.ee_pos()
    assert pos == pytest.approx([0.4635, 0.0, 0.4028], abs=2e-3)
    zaxis = push_twin.physics.data.site_xmat[push_twin.physics.ee_site].reshape(3, 3)[:, 2]
    assert zaxis == pytest.approx([0, 0, -1], abs=1e-3)


def test_joint_limits_are_the_pandas(push_twin: Twin) -> None:
    assert push_twin.physics.joint_range == pytest.approx(np.array(PANDA_LIMITS))


@pytest.mark.parametrize(
    "target",
    [(0.45, 0.0, 0.2), (0.35, 0.2, 0.05), (0.6, -0.25, 0.3), (0.7, 0.1, 0.1), (0.3, -0.3, 0.15)],
)
def test_ik_reaches_targets_within_5mm(push_twin: Twin, target: tuple[float, float, float]) -> None:
    """Drive the EE with 10 Hz deltas towards a target; the hand settles within 5 mm."""
    twin = push_twin
    twin.reset(seed=1)
    goal = np.array(target)
    for _ in range(60):
        delta = goal - twin.physics.ee_pos()
        twin.step([*delta, 0.0, -1.0])
    for _ in range(5):
        twin.step([*(goal - twin.physics.ee_pos()), 0.0, -1.0])
    err = np.linalg.norm(twin.physics.ee_pos() - goal)
    assert err < 0.005, f"EE {twin.physics.ee_pos()} is {err * 1000:.1f} mm from {goal}"


def test_ik_respects_joint_limits(push_twin: Twin) -> None:
    phys = push_twin.physics
    push_twin.reset(seed=0)
    # An unreachable target: IK must still return joints inside the limits.
    q = phys.solve_ik(np.array([2.0, 2.0, -1.0]), ee_target_quat(3.0), phys.arm_qpos())
    lo, hi = phys.joint_range.T
    assert np.all(q >= lo - 1e-9) and np.all(q <= hi + 1e-9)


def test_yaw_action_turns_the_hand(push_twin: Twin) -> None:
    push_twin.reset(seed=0)
    for _ in range(8):
        push_twin.step([0, 0, 0, 0.15, -1.0])
    for _ in range(3):
        push_twin.step([0, 0, 0, 0.0, -1.0])
    assert push_twin.physics.ee_yaw() == pytest.approx(1.2, abs=0.05)


def test_gripper_opens_and_closes(push_twin: Twin) -> None:
    push_twin.reset(seed=0)
    assert push_twin.physics.gripper_opening() == pytest.approx(0.08, abs=2e-3)
    for _ in range(5):
        push_twin.step([0, 0, 0, 0, 1.0])
    assert push_twin.physics.gripper_opening() < 0.005


# ----- parameters change the dynamics ----------------------------------------------------------
def _slide_distance(params: dict[str, float]) -> float:
    """Push the cube with the same impulse (a 2.5 N shove for 20 ms) and measure the slide."""
    twin = Twin(TwinConfig(task="push_cube", render=False), params=params)
    twin.reset(seed=0)
    phys = twin.physics
    start = phys.body_pos("cube")
    body = phys.model.body("cube").id
    phys.data.xfrc_applied[body, :3] = [2.5, 0.0, 0.0]
    twin.advance(10)
    phys.data.xfrc_applied[body, :3] = 0.0
    twin.advance(500)
    return float(np.linalg.norm(phys.body_pos("cube")[:2] - start[:2]))


def test_heavier_cube_slides_less() -> None:
    light = _slide_distance({"cube.mass": 0.1})
    heavy = _slide_distance({"cube.mass": 0.4})
    assert 0.01 < light < 0.1
    assert heavy < 0.5 * light


def test_higher_friction_slides_less() -> None:
    slippery = _slide_distance({"cube.friction": 0.2})
    grippy = _slide_distance({"cube.friction": 1.0})
    assert grippy < 0.5 * slippery


@pytest.mark.parametrize("mass", [0.3, 1.0])
def test_mass_set_at_runtime_refreshes_the_derived_constants(mass: float) -> None:
    """A mass written into the compiled model must behave like a compiled one: the solver's
    contact softness uses body_invweight0, and with the compiled (0.1 kg) value kept a 0.3 kg
    cube spinning on the table diverged (4500 rad/s in one second)."""
    twin = Twin(TwinConfig(task="push_cube", render=False), params={"cube.mass": mass})
    twin.reset(seed=0)
    m, d = twin.physics.model, twin.physics.data
    body = m.body("cube").id
    fresh = Twin(TwinConfig(task="push_cube", render=False)).physics.model  # compiled: 0.1 kg
    assert m.body_invweight0[body, 0] == pytest.approx(fresh.body_invweight0[body, 0] * 0.1 / mass)
    dof = m.jnt_dofadr[m.joint("cube_joint").id]
    d.qvel[dof : dof + 6] = [-0.14, -0.14, 0.0, 0.75, 0.0, -3.3]  # the state a push left it in
    fastest = 0.0
    for _ in range(500):
        mujoco.mj_step(m, d)
        fastest = max(fastest, float(np.abs(d.qvel[dof : dof + 6]).max()))
    assert fastest < 4.0  # it slows down; it never spins up
    twin.set_params({"cube.mass": 0.1})  # and back
    assert m.body_invweight0[body, 0] == pytest.approx(fresh.body_invweight0[body, 0])


def test_drawer_damping_slows_the_drawer() -> None:
    def travel(damping: float) -> float:
        twin = Twin(
            TwinConfig(task="open_drawer", render=False), params={"drawer.damping": damping}
        )
        twin.reset(seed=0)
        phys = twin.physics
        phys.data.xfrc_applied[phys.model.body("drawer").id, :3] = [-5.0, 0, 0]
        twin.advance(100)
        return phys.joint_qpos("drawer_joint")

    assert travel(40.0) < 0.5 * travel(1.0)


def test_drawer_range_limits_the_opening() -> None:
    twin = Twin(TwinConfig(task="open_drawer", render=False), params={"drawer.range": 0.12})
    twin.reset(seed=0)
    phys = twin.physics
    phys.data.xfrc_applied[phys.model.body("drawer").id, :3] = [-30.0, 0, 0]
    twin.advance(500)
    assert phys.joint_qpos("drawer_joint") == pytest.approx(0.12, abs=0.01)


def test_rod_com_offset_moves_the_centre_of_mass() -> None:
    twin = Twin(TwinConfig(task="lift_rod", render=False), params={"rod.com_offset": 0.08})
    twin.reset(seed=0)
    phys = twin.physics
    along = (phys.body_com("rod") - phys.body_pos("rod")) @ phys.body_xmat("rod")[:, 1]
    assert along == pytest.approx(0.08, abs=1e-6)
    assert twin.get_params()["rod.com_offset"] == pytest.approx(0.08)


def test_grasping_off_the_com_tilts_the_rod() -> None:
    """The ASID rod setting: a grasp at the geometric centre tilts a rod whose CoM is off."""

    class CentreGrasp(LiftRodExpert):
        def plan(self, state: dict[str, np.ndarray]):  # type: ignore[no-untyped-def]
            return super().plan({**state, "rod_com": state["rod_pos"]})

    tilts = {}
    for name, cls in (("com", LiftRodExpert), ("centre", CentreGrasp)):
        twin = Twin(TwinConfig(task="lift_rod", render=False), params={"rod.com_offset": 0.06})
        twin.reset(seed=0)
        expert = cls(twin.config)
        for _ in range(twin.task.max_steps):
            twin.step(expert.act(twin.privileged_state()))
        tilts[name] = float(twin.privileged_state()["rod_tilt_deg"])
    assert tilts["com"] < 3.0
    assert tilts["centre"] > 8.0


# ----- tasks -----------------------------------------------------------------------------------
@pytest.mark.parametrize("task", sorted(TASKS))
def test_expert_solves_task_and_success_predicate_flips(task: str) -> None:
    twin = Twin(TwinConfig(task=task, render=False))
    twin.reset(seed=3)
    assert not twin.success(), "a fresh episode must not start successful"
    results = list(run_expert_episodes(twin, 3, seed=3))
    assert sum(r.success for r in results) >= 2, results
    assert all(r.steps <= twin.task.max_steps for r in results)


def test_idle_arm_does_not_succeed() -> None:
    for task in sorted(TASKS):
        twin = Twin(TwinConfig(task=task, render=False))
        twin.reset(seed=0)
        for _ in range(10):
            result = twin.step([0, 0, 0, 0, -1.0])
        assert not result.success, task


def test_push_success_radius() -> None:
    twin = Twin(TwinConfig(task="push_cube", render=False))
    twin.reset(seed=0)
    phys = twin.physics
    goal = phys.site_pos("goal")
    phys.set_free_pose(
        "cube_joint", np.array([goal[0] + 0.01, goal[1], 0.025]), np.array([1, 0, 0, 0])
    )
    mujoco.mj_forward(phys.model, phys.data)
    assert twin.success()
    phys.set_free_pose(
        "cube_joint", np.array([goal[0] + 0.05, goal[1], 0.025]), np.array([1, 0, 0, 0])
    )
    mujoco.mj_forward(phys.model, phys.data)
    assert not twin.success()


def test_forward_backward_pair_switches_without_reset() -> None:
    twin = Twin(TwinConfig(task="open_drawer", render=False))
    twin.reset(seed=0)
    expert = make_expert(twin)
    for _ in range(twin.task.max_steps):
        if twin.step(expert.act(twin.privileged_state())).success:
            break
    assert twin.success()
    opening = twin.physics.joint_qpos("drawer_joint")
    twin.switch_task("close_drawer")
    assert twin.physics.joint_qpos("drawer_joint") == opening  # no reset happened
    expert = make_expert(twin)
    for _ in range(twin.task.max_steps):
        if twin.step(expert.act(twin.privileged_state())).success:
            break
    assert twin.success()
    with pytest.raises(TwinError, match="different objects"):
        twin.switch_task("push_cube")


def test_privileged_state_has_what_oracles_need() -> None:
    keys = {
        "push_cube": {"cube_pos", "goal_pos"},
        "open_drawer": {"drawer_opening", "handle_pos"},
        "lift_rod": {"rod_com", "rod_tilt_deg"},
    }
    for task, expected in keys.items():
        twin = Twin(TwinConfig(task=task, render=False))
        twin.reset(seed=0)
        state = twin.privileged_state()
        assert expected | {"ee_pos", "ee_yaw", "gripper_opening"} <= state.keys()


# ----- determinism -----------------------------------------------------------------------------
def _trajectory(seed: int) -> tuple[np.ndarray, np.ndarray]:
    twin = Twin(TwinConfig(task="push_cube", camera=CameraConfig(width=64, height=48)))
    obs = twin.reset(seed=seed)
    expert = make_expert(twin, noise=0.3, seed=seed)
    props = [obs.proprio]
    for _ in range(15):
        obs = twin.step(expert.act(twin.privileged_state())).observation
        props.append(obs.proprio)
    assert obs.image is not None
    return np.array(props), obs.image


def test_same_seed_same_episode() -> None:
    a_prop, a_img = _trajectory(7)
    b_prop, b_img = _trajectory(7)
    np.testing.assert_array_equal(a_prop, b_prop)
    np.testing.assert_array_equal(a_img, b_img)
    c_prop, _ = _trajectory(8)
    assert not np.allclose(a_prop, c_prop)


# ----- camera ----------------------------------------------------------------------------------
def test_intrinsics_project_the_cube_onto_its_pixels() -> None:
    cam = CameraConfig(width=320, height=240)
    twin = Twin(TwinConfig(task="push_cube", camera=cam, depth=True))
    obs = twin.reset(seed=0)
    assert obs.image is not None and obs.depth is not None
    phys = twin.physics
    cam_id = phys.model.camera("camera").id
    cam_pos = phys.data.cam_xpos[cam_id]
    cam_mat = phys.data.cam_xmat[cam_id].reshape(3, 3)
    # MuJoCo cameras look along -z with y up; the optical frame looks along +z with y down.
    p = cam_mat.T @ (phys.body_pos("cube") + [0, 0, 0.025] - cam_pos)  # top face centre
    x, y, z = p[0], -p[1], -p[2]
    k = twin.intrinsics
    u, v = k.fx * x / z + k.ppx, k.fy * y / z + k.ppy
    pixel = obs.image[round(v), round(u)]
    assert pixel[0] > 150 and pixel[1] < 80, f"expected red cube at ({u:.0f}, {v:.0f}), got {pixel}"
    assert obs.depth[round(v), round(u)] == pytest.approx(z * 1000, abs=8)
    assert obs.depth.dtype == np.uint16
    assert k.fx == pytest.approx(120 / math.tan(math.radians(cam.fovy) / 2))


def test_camera_config_validates() -> None:
    with pytest.raises(TwinError, match="camera size"):
        CameraConfig(width=2, height=240)
    with pytest.raises(TwinError, match="fovy"):
        CameraConfig(fovy=0.0)


# ----- bad input -------------------------------------------------------------------------------
def test_set_params_unknown_name(push_twin: Twin) -> None:
    with pytest.raises(TwinError, match=r"unknown twin parameter 'cube\.colour'.*Available"):
        push_twin.set_params({"cube.colour": 1.0})


def test_set_params_out_of_range_changes_nothing(push_twin: Twin) -> None:
    before = push_twin.get_params()
    with pytest.raises(TwinError, match=r"cube\.mass=5\.0 is outside"):
        push_twin.set_params({"cube.friction": 0.9, "cube.mass": 5.0})
    assert push_twin.get_params() == before  # all or nothing


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "heavy", None])
def test_set_params_not_a_finite_number(push_twin: Twin, value: object) -> None:
    with pytest.raises(TwinError, match=r"cube\.mass"):
        push_twin.set_params({"cube.mass": value})  # type: ignore[dict-item]


@pytest.mark.parametrize(
    ("action", "match"),
    [
        ([0, 0, float("nan"), 0, 0], "NaN or inf"),
        ([0, 0, 0, float("inf"), 0], "NaN or inf"),
        ([0, 0, 0], "5 values"),
        ([[0, 0, 0, 0, 0]], "5 values"),
    ],
)
def test_bad_actions_raise_and_leave_the_twin_running(
    push_twin: Twin, action: list[float], match: str
) -> None:
    push_twin.reset(seed=0)
    with pytest.raises(TwinError, match=match):
        push_twin.step(action)
    result = push_twin.step([0.01, 0, 0, 0, -1])  # still usable
    assert np.isfinite(result.observation.proprio).all()


def test_huge_action_is_limited_to_one_step(push_twin: Twin) -> None:
    push_twin.reset(seed=0)
    before = push_twin.physics.ee_pos()
    push_twin.step([10.0, 0, 0, 0, -1])
    moved = np.linalg.norm(push_twin.physics.ee_pos() - before)
    assert moved <= push_twin.config.max_translation + 0.005


def test_unknown_task() -> None:
    with pytest.raises(TwinError, match=r"unknown task 'fold_laundry'.*Available"):
        TwinConfig(task="fold_laundry")


# ----- swapping the arm ------------------------------------------------------------------------
def _toy_arm(**kw: object) -> ArmConfig:
    base = dict(
        mjcf_path=str(FIXTURES / "toy_arm.xml"),
        ee_site="tool",
        joints=tuple(f"j{i}" for i in range(1, 8)),
        actuators=tuple(f"a{i}" for i in range(1, 8)),
        gripper_actuator=None,
        finger_joints=(),
        home=(0, 0.5, 0, 1.0, 0, 0.8, 0),
    )
    base.update(kw)
    return ArmConfig(**base)  # type: ignore[arg-type]


def test_any_mjcf_arm_can_be_swapped_in() -> None:
    twin = Twin(TwinConfig(task="push_cube", render=False, arm=_toy_arm()))
    twin.reset(seed=0)
    assert twin.physics.joint_names == tuple(f"j{i}" for i in range(1, 8))
    before = twin.physics.ee_pos()
    for _ in range(5):
        twin.step([0.0, 0.02, 0.0, 0.0, 0.0])
    assert twin.physics.ee_pos()[1] - before[1] > 0.03


def test_mjcf_arm_without_the_named_site() -> None:
    with pytest.raises(TwinError, match=r"no site named 'flange'.*sites: \['tool'\]"):
        Twin(TwinConfig(arm=_toy_arm(ee_site="flange")))


def test_mjcf_arm_missing_joints_or_file() -> None:
    with pytest.raises(TwinError, match=r"lacks joints \['j9'\]"):
        Twin(TwinConfig(arm=_toy_arm(joints=("j1", "j2", "j3", "j4", "j5", "j6", "j9"))))
    with pytest.raises(TwinError, match="arm MJCF not found"):
        _toy_arm(mjcf_path="/nonexistent/arm.xml")
