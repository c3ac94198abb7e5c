"""The safety limiter core: nothing it outputs leaves the limits, whatever comes in."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from twinloop.errors import TwinloopError
from twinloop.safety import ActionLimiter, LimiterConfig

CFG = LimiterConfig()
LIMITER = ActionLimiter(CFG)
floats = st.floats(allow_nan=True, allow_infinity=True, width=64)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(floats, min_size=0, max_size=8),
    st.one_of(st.none(), st.lists(floats, min_size=3, max_size=3)),
)
def test_output_never_leaves_the_limits(action: list[float], ee: list[float] | None) -> None:
    try:
        out = LIMITER(action, ee_pos=ee)
    except TwinloopError:
        return  # refused: nothing reaches the arm
    assert out.shape == (5,)
    assert np.isfinite(out).all()
    assert np.linalg.norm(out[:3]) <= CFG.max_translation + 1e-9
    assert abs(out[3]) <= CFG.max_yaw + 1e-12
    assert -1.0 <= out[4] <= 1.0
    if ee is not None and np.isfinite(ee).all():
        target = np.asarray(ee) + out[:3]
        inside = np.all(np.asarray(ee) >= CFG.workspace_low) and np.all(
            np.asarray(ee) <= CFG.workspace_high
        )
        if inside:
            assert np.all(target >= np.asarray(CFG.workspace_low) - 1e-9)
            assert np.all(target <= np.asarray(CFG.workspace_high) + 1e-9)


@pytest.mark.parametrize(
    ("action", "match"),
    [
        ([0, 0, float("nan"), 0, 0], "NaN or inf"),
        ([0, 0, 0, 0], "5 values"),
        ("fast", "5 values|numeric"),
        ([None] * 5, "NaN or inf|numeric"),
    ],
)
def test_refuses_what_cannot_be_made_safe(action: object, match: str) -> None:
    with pytest.raises(TwinloopError, match=match):
        LIMITER(action)  # type: ignore[arg-type]


def test_small_actions_pass_unchanged() -> None:
    a = np.array([0.01, -0.005, 0.002, 0.05, 1.0])
    np.testing.assert_allclose(LIMITER(a, ee_pos=[0.5, 0.0, 0.2]), a)


def test_workspace_cuts_motion_at_the_wall() -> None:
    out = LIMITER([0, 0, -0.03, 0, 0], ee_pos=[0.5, 0.0, 0.02])
    assert out[2] == pytest.approx(CFG.workspace_low[2] - 0.02)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_translation": 0.0}, "max_translation"),
        ({"max_yaw": 2.0}, "max_yaw"),
        ({"workspace_low": (1.0, 0, 0)}, "must be below"),
        ({"workspace_low": (0.0, 0.0)}, "3 values"),
    ],
)
def test_config_validates(kwargs: dict, match: str) -> None:
    with pytest.raises(TwinloopError, match=match):
        LimiterConfig(**kwargs)


# ===== the stateful safety layer ===============================================================
# Everything below drives SafetyLayer with a fake clock: deterministic, no sleeping.
import math  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

import mujoco  # noqa: E402
from twinloop.sim2real.arm import PANDA_LIMITS  # noqa: E402
from twinloop.sim2real.experts import make_expert  # noqa: E402
from twinloop.sim2real.twin import Twin, TwinConfig  # noqa: E402

from twinloop.safety import (  # noqa: E402
    PANDA_LOWER,
    PANDA_UPPER,
    SafetyConfig,
    SafetyLayer,
    panda_jacobian,
)

MS = 1_000_000  # ns
HOME_Q = np.array([0.0, -0.3, 0.0, -2.2, 0.0, 1.9, math.pi / 4])
JOINTS = [f"joint{i}" for i in range(1, 8)]
EE = [0.5, 0.0, 0.3]  # well inside the workspace box


class FakeClock:
    def __init__(self, start_ms: float = 1_000_000.0) -> None:
        self.ns = int(start_ms * MS)

    def __call__(self) -> int:
        return self.ns

    def advance(self, ms: float) -> None:
        self.ns += int(ms * MS)


def make_layer(
    clock: FakeClock, *, q: np.ndarray | None = HOME_Q, ee: list[float] | None = EE, **kw: Any
) -> SafetyLayer:
    layer = SafetyLayer(SafetyConfig(**kw), clock=clock)
    if q is not None:
        layer.update_joints(JOINTS, q)
    if ee is not None:
        layer.update_ee(ee)
    return layer


def act(layer: SafetyLayer, clock: FakeClock, action: list[float], *, age_ms: float = 5.0, **kw):
    return layer.filter(action, stamp_ns=clock() - int(age_ms * MS), **kw)


# ----- kinematics ------------------------------------------------------------------------------
def test_panda_jacobian_matches_the_twin() -> None:
    twin = Twin(TwinConfig(task="push_cube", render=False))
    ph = twin.physics
    m, d = ph.model, ph.data
    rng = np.random.default_rng(0)
    jacp, jacr = np.zeros((3, m.nv)), np.zeros((3, m.nv))
    for _ in range(5):
        q = rng.uniform(ph.joint_range[:, 0], ph.joint_range[:, 1])
        d.qpos[ph.qpos_adr] = q
        mujoco.mj_kinematics(m, d)
        mujoco.mj_comPos(m, d)
        mujoco.mj_jacSite(m, d, jacp, jacr, ph.ee_site)
        tcp, jac = panda_jacobian(q)
        np.testing.assert_allclose(tcp, d.site_xpos[ph.ee_site], atol=1e-9)
        np.testing.assert_allclose(jac[:3], jacp[:, ph.dof_adr], atol=1e-9)
        np.testing.assert_allclose(jac[3:], jacr[:, ph.dof_adr], atol=1e-9)
    assert (PANDA_LOWER, PANDA_UPPER) == tuple(zip(*PANDA_LIMITS, strict=True))


# ----- config ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_gripper_step": 0.0}, "max_gripper_step"),
        ({"watchdog_ms": -5.0}, "watchdog_ms must be a positive"),
        ({"max_age_ms": float("nan")}, "max_age_ms"),
        ({"arm_model": "ur5"}, r"unknown arm_model 'ur5'. Available: \['none', 'panda'\]"),
        ({"joint_names": ("a", "a")}, "each arm joint once"),
        ({"joint_lower": (0.0,) * 3}, "one value per joint"),
        (
            {
                "arm_model": "none",
                "joint_names": ("a",),
                "joint_lower": (0.0,),
                "joint_upper": (0.05,),
            },
            "wider than twice",
        ),
        (
            {"joint_names": ("a",), "joint_lower": (0.0,), "joint_upper": (1.0,)},
            "'panda' has 7 joints",
        ),
        ({"joint_margin": -0.1}, "joint_margin"),
        ({"joint_lookahead_ms": 5000.0}, "joint_lookahead_ms"),
    ],
)
def test_safety_config_validates(kwargs: dict, match: str) -> None:
    with pytest.raises(TwinloopError, match=match):
        SafetyConfig(**kwargs)


# ----- stamps and bad input --------------------------------------------------------------------
def test_fresh_actions_pass_and_bad_ones_are_dropped_and_counted() -> None:
    clock = FakeClock()
    layer = make_layer(clock, max_age_ms=200.0)
    a = [0.01, 0.0, -0.01, 0.05, -1.0]
    d = act(layer, clock, a, age_ms=199.0)
    assert d.outcome == "passed" and d.command is not None
    np.testing.assert_array_equal(d.command, a)
    assert act(layer, clock, a, age_ms=201.0).outcome == "dropped"
    assert "ms ago" in act(layer, clock, a, age_ms=5000.0).reason
    assert "ahead of this clock" in act(layer, clock, a, age_ms=-300.0).reason
    assert layer.filter(a, stamp_ns=0).reason == "action has no stamp (header.stamp is 0)"
    assert act(layer, clock, [float("nan"), 0, 0, 0, 0]).command is None
    assert act(layer, clock, [0.0] * 4).command is None
    assert layer.drop("malformed").outcome == "dropped"
    c = layer.counts
    assert c["received"] == 8 and c["passed"] == 1 and c["dropped"] == 7
    assert c["dropped_by"] == {
        "invalid": 2,
        "malformed": 1,
        "unstamped": 1,
        "stale": 2,
        "future": 1,
    }


def test_bad_state_is_refused_and_counted() -> None:
    layer = make_layer(FakeClock())
    with pytest.raises(TwinloopError, match=r"lacks \['joint7'\]"):
        layer.update_joints(JOINTS[:6], HOME_Q[:6])
    with pytest.raises(TwinloopError, match="NaN or inf"):
        layer.update_joints(JOINTS, [*HOME_Q[:6], float("nan")])
    with pytest.raises(TwinloopError, match="7 names but 2 velocities"):
        layer.update_joints(JOINTS, HOME_Q, [0.0, 0.0])
    with pytest.raises(TwinloopError, match="3 finite values"):
        layer.update_ee([0.5, float("inf"), 0.2])
    assert layer.counts["bad_state"] == 4


def test_clipped_actions_are_counted_as_clipped() -> None:
    clock = FakeClock()
    layer = make_layer(clock)
    d = act(layer, clock, [0.5, 0.0, 0.0, 1.0, -1.0])
    assert d.outcome == "clipped" and d.command is not None
    np.testing.assert_allclose(d.command, [0.03, 0.0, 0.0, 0.2, -1.0])


# ----- gripper rate ----------------------------------------------------------------------------
def test_gripper_rate_is_limited_per_command() -> None:
    clock = FakeClock()
    layer = make_layer(clock, max_gripper_step=0.5)
    grips = []
    for target in [-1.0, 1.0, 1.0, 1.0, 1.0, 1.0, -1.0]:
        clock.advance(100)
        d = act(layer, clock, [0.0, 0.0, 0.0, 0.0, target])
        assert d.command is not None
        grips.append(d.command[4])
    # the first command sets the reference (nothing was sent before)
    assert grips == pytest.approx([-1.0, -0.5, 0.0, 0.5, 1.0, 1.0, 0.5])


# ----- watchdog ----------------------------------------------------------------------------------
def test_watchdog_holds_after_silence_and_repeats_each_period() -> None:
    clock = FakeClock()
    layer = make_layer(clock, watchdog_ms=300.0)
    clock.advance(1000)
    assert layer.tick() is None and layer.watchdog_state() == "idle"  # nothing sent: no hold
    layer.update_joints(JOINTS, HOME_Q)
    layer.update_ee(EE)
    assert act(layer, clock, [0.01, 0, 0, 0, 0.4]).outcome == "passed"
    assert layer.watchdog_state() == "ok"
    clock.advance(299)
    assert layer.tick() is None
    clock.advance(1)
    hold = layer.tick()
    assert hold is not None and hold.is_hold and hold.reason.startswith("no fresh action")
    np.testing.assert_array_equal(hold.command, [0, 0, 0, 0, 0.4])  # zero deltas, last gripper
    assert layer.watchdog_state() == "holding"
    clock.advance(150)
    assert layer.tick() is None  # one hold per watchdog period
    clock.advance(150)
    assert layer.tick() is not None
    assert layer.counts["watchdog_holds"] == 2 and layer.counts["held"] == 0
    assert act(layer, clock, [0.01, 0, 0, 0, 0.4], age_ms=600).outcome == "dropped"
    clock.advance(300)
    assert layer.tick() is not None, "a stale action does not feed the watchdog"
    assert act(layer, clock, [0.01, 0, 0, 0, 0.4]).outcome == "passed"
    assert layer.watchdog_state() == "ok"


# ----- e-stop ----------------------------------------------------------------------------------
def test_estop_latches_until_released_and_reset() -> None:
    clock = FakeClock()
    layer = make_layer(clock)
    assert layer.reset_estop() == (True, "the e-stop was not latched")
    act(layer, clock, [0.01, 0.0, 0.0, 0.0, 1.0])
    d = layer.update_estop(True)
    assert d is not None and d.is_hold and d.reason == "estop"  # published at once
    np.testing.assert_array_equal(d.command, [0, 0, 0, 0, 1.0])
    for _ in range(3):
        clock.advance(100)
        d = act(layer, clock, [0.02, 0.0, 0.0, 0.1, -1.0])
        assert d.outcome == "held" and d.is_hold
        np.testing.assert_array_equal(d.command, [0, 0, 0, 0, 1.0])
    ok, message = layer.reset_estop()
    assert not ok and "still asserted" in message and layer.estop_latched
    layer.update_estop(False)
    assert layer.estop_latched, "releasing the input does not clear the latch"
    assert act(layer, clock, [0.02, 0.0, 0.0, 0.0, 1.0]).outcome == "held"
    assert layer.reset_estop() == (True, "e-stop reset")
    assert act(layer, clock, [0.02, 0.0, 0.0, 0.0, 1.0]).outcome == "passed"
    assert layer.counts["estops"] == 1 and layer.counts["held_by"]["estop"] == 4


def test_estop_before_any_command_holds_without_publishing() -> None:
    clock = FakeClock()
    layer = make_layer(clock)
    assert layer.update_estop(True) is None  # no gripper command known yet: nothing to hold
    d = act(layer, clock, [0.01, 0, 0, 0, 1.0])
    assert d.outcome == "held" and d.command is None


# ----- deadman ---------------------------------------------------------------------------------
def test_teleop_actions_need_a_fresh_deadman() -> None:
    clock = FakeClock()
    layer = make_layer(clock, deadman_timeout_ms=200.0)
    a = [0.01, 0.0, 0.0, 0.0, 0.0]
    assert act(layer, clock, a).outcome == "passed"  # unnamed source: a policy, no deadman
    assert act(layer, clock, a, source="scripted").outcome == "passed"
    d = act(layer, clock, a, source="teleop")
    assert d.outcome == "held" and d.is_hold and "deadman not held" in d.reason
    layer.update_deadman(True)
    assert act(layer, clock, a, source="teleop").outcome == "passed"
    clock.advance(201)
    assert act(layer, clock, a, source="teleop").outcome == "held", "a stale deadman is released"
    layer.update_deadman(True)
    layer.update_joints(JOINTS, HOME_Q)
    layer.update_ee(EE)
    assert act(layer, clock, a, source="teleop").outcome == "passed"
    layer.update_deadman(False)
    assert act(layer, clock, a, source="teleop").outcome == "held"
    assert layer.counts["held_by"]["deadman"] == 3


def test_deadman_for_every_source() -> None:
    clock = FakeClock()
    layer = make_layer(clock, deadman_sources=("*",))
    assert act(layer, clock, [0.01, 0, 0, 0, 0]).outcome == "held"


# ----- state and joint limits ------------------------------------------------------------------
def test_without_fresh_state_motion_is_held_but_the_gripper_moves() -> None:
    clock = FakeClock()
    layer = make_layer(clock, q=None, max_gripper_step=2.0)
    d = act(layer, clock, [0.01, 0.0, 0.0, 0.1, 1.0])
    assert d.outcome == "held" and "no fresh /joint_states" in d.reason
    np.testing.assert_array_equal(d.command, [0, 0, 0, 0, 1.0])
    layer.update_joints(JOINTS, HOME_Q)
    assert act(layer, clock, [0.01, 0.0, 0.0, 0.1, 1.0]).outcome == "passed"
    clock.advance(1001)  # state_timeout_ms
    assert "EE pose" in act(layer, clock, [0.01, 0.0, 0.0, 0.1, 1.0]).reason
    relaxed = make_layer(clock, q=None, ee=None, require_state=False)
    assert act(relaxed, clock, [0.01, 0.0, 0.0, 0.1, 1.0]).outcome == "passed"


def _near_upper_q7(gap: float) -> np.ndarray:
    q = HOME_Q.copy()
    q[6] = PANDA_UPPER[6] - gap
    return q


def _yaw_dq7(layer: SafetyLayer, q: np.ndarray, dyaw: float) -> float:
    return float(layer.guard.joint_motion(q, np.array([0.0, 0.0, 0.0, dyaw]))[6])


def test_joint_limit_margin_refuses_pushing_and_allows_backing_out() -> None:
    clock = FakeClock()
    q = _near_upper_q7(0.03)  # inside the 0.05 rad margin
    layer = make_layer(clock, q=q)
    push = 0.2 if _yaw_dq7(layer, q, 0.2) > 0 else -0.2  # the yaw that turns joint 7 up
    d = act(layer, clock, [0.0, 0.0, 0.0, push, 0.0])
    assert d.outcome == "held" and "joint7 upper" in d.reason and d.is_hold
    assert act(layer, clock, [0.0, 0.0, 0.0, -push, 0.0]).outcome == "passed"
    assert act(layer, clock, [0.0, 0.0, 0.01, 0.0, 0.0]).outcome in ("passed", "clipped")
    assert layer.counts["held_by"]["joint_limit"] == 1


def test_joint_limit_margin_scales_a_command_to_the_edge() -> None:
    clock = FakeClock()
    q = _near_upper_q7(0.1)  # 0.05 rad of room before the margin
    layer = make_layer(clock, q=q)
    push = 0.2 if _yaw_dq7(layer, q, 0.2) > 0 else -0.2
    d = act(layer, clock, [0.0, 0.0, 0.0, push, 0.0])
    assert d.outcome == "clipped" and d.command is not None
    moved = q[6] + _yaw_dq7(layer, q, float(d.command[3]))
    assert moved == pytest.approx(PANDA_UPPER[6] - 0.05, abs=1e-9)


def test_joint_limit_uses_the_velocity_lookahead() -> None:
    clock = FakeClock()
    q = _near_upper_q7(0.2)
    layer = make_layer(clock, q=q)
    push = 0.1 if _yaw_dq7(layer, q, 0.1) > 0 else -0.1
    assert act(layer, clock, [0.0, 0.0, 0.0, push, 0.0]).outcome == "passed"
    qdot = np.zeros(7)
    qdot[6] = 1.6  # 0.16 rad in the 100 ms lookahead: inside the margin already
    layer.update_joints(JOINTS, q, qdot)
    assert act(layer, clock, [0.0, 0.0, 0.0, push, 0.0]).outcome == "held"


def test_without_an_arm_model_a_joint_in_the_margin_stops_all_motion() -> None:
    clock = FakeClock()
    layer = make_layer(clock, q=_near_upper_q7(0.01), arm_model="none")
    for a in ([0.0, 0.0, 0.0, 0.1, 0.0], [0.0, 0.0, 0.0, -0.1, 0.0], [0.01, 0, 0, 0, 0]):
        assert act(layer, clock, a).outcome == "held"
    assert act(layer, clock, [0.0, 0.0, 0.0, 0.0, 0.5]).outcome == "passed"  # gripper only


def _drive_yaw(margin: float, steps: int = 25) -> np.ndarray:
    """Turn the twin's hand with the safety layer in the loop; joint 7 per step."""
    twin = Twin(TwinConfig(task="push_cube", render=False, yaw_limit=3.1))
    twin.reset(seed=0)
    clock = FakeClock()
    layer = SafetyLayer(SafetyConfig(joint_margin=margin), clock=clock)
    ph, q7 = twin.physics, []
    for _ in range(steps):
        clock.advance(100)
        layer.update_joints(ph.joint_names, ph.joint_positions(), ph.joint_velocities())
        layer.update_ee(ph.ee_pos())
        d = layer.filter([0.0, 0.0, 0.0, -0.2, 1.0], stamp_ns=clock())
        assert d.command is not None
        twin.step(d.command)
        q7.append(ph.arm_qpos()[6])
    return np.array(q7)


def test_the_twin_stops_at_the_joint_margin() -> None:
    # Yaw -0.2 rad a step turns joint 7 towards its upper limit (2.8973); the twin's IK alone
    # stops at the limit itself. With the layer the joint ends at the margin's edge, not past it.
    unguarded = _drive_yaw(margin=0.0)
    guarded = _drive_yaw(margin=0.05)
    upper = PANDA_UPPER[6]
    assert unguarded.max() > upper - 0.005
    assert guarded.max() <= upper - 0.05 + 0.005
    assert guarded[-1] > upper - 0.08, "the arm still gets close to the edge"


@pytest.mark.parametrize("task", ["push_cube", "open_drawer", "close_drawer", "lift_rod"])
def test_scripted_experts_succeed_through_the_safety_layer(task: str) -> None:
    twin = Twin(TwinConfig(task=task, render=False))
    twin.reset(seed=1)
    expert = make_expert(twin, seed=1)
    clock = FakeClock()
    layer = SafetyLayer(SafetyConfig(), clock=clock)
    ph, success = twin.physics, False
    for _ in range(twin.task.max_steps):
        clock.advance(100)
        layer.update_joints(ph.joint_names, ph.joint_positions(), ph.joint_velocities())
        layer.update_ee(ph.ee_pos())
        d = layer.filter(expert.act(twin.privileged_state()), stamp_ns=clock() - 20 * MS)
        assert d.outcome in ("passed", "clipped"), d.reason
        if twin.step(d.command).success:
            success = True
            break
    assert success
    assert layer.counts["held"] == 0


# ----- properties over any sequence of inputs --------------------------------------------------
PROP_CFG = SafetyConfig(
    max_gripper_step=0.3, watchdog_ms=200.0, max_age_ms=150.0, deadman_timeout_ms=100.0
)
any_float = st.floats(allow_nan=True, allow_infinity=True, width=64)
sane = st.floats(-0.2, 0.2)


def _near_limit(joint: int, gap: float, upper: bool) -> list[float]:
    q = HOME_Q.copy()
    q[joint] = PANDA_UPPER[joint] - gap if upper else PANDA_LOWER[joint] + gap
    return q.tolist()


joint_positions = st.one_of(
    st.lists(st.floats(-0.3, 0.3), min_size=7, max_size=7).map(lambda d: (HOME_Q + d).tolist()),
    st.builds(_near_limit, st.integers(0, 6), st.floats(-0.1, 0.2), st.booleans()),
    st.lists(st.floats(-4.0, 4.0), min_size=7, max_size=7),
)
joints_op = st.tuples(
    st.just("joints"),
    joint_positions,
    st.one_of(st.none(), st.lists(st.floats(-3.0, 3.0), min_size=7, max_size=7)),
)
ee_op = st.tuples(
    st.just("ee"),
    st.one_of(
        st.tuples(st.floats(0.24, 0.81), st.floats(-0.36, 0.36), st.floats(0.0, 0.46)).map(list),
        st.lists(st.floats(-1.0, 1.5), min_size=3, max_size=3),
    ),
)
action_op = st.tuples(
    st.just("action"),
    st.one_of(
        st.tuples(sane, sane, sane, sane, st.floats(-3, 3)).map(list),
        st.lists(sane, min_size=4, max_size=4).map(lambda v: [*v, 0.0]),
        st.lists(any_float, min_size=0, max_size=7),
    ),
    st.one_of(st.floats(-100.0, 149.0), st.floats(-400.0, 400.0), st.none()),  # stamp age, ms
    st.sampled_from(["", "policy", "teleop"]),
)
ops = st.one_of(
    action_op,
    st.tuples(st.just("advance"), st.one_of(st.floats(0.0, 120.0), st.floats(0.0, 1500.0))),
    st.tuples(st.just("tick")),
    st.tuples(st.just("estop"), st.booleans()),
    st.tuples(st.just("reset")),
    st.tuples(st.just("deadman"), st.booleans()),
    joints_op,
    ee_op,
)


@dataclass
class Model:
    """What the test knows independently of the layer."""

    latched: bool = False
    estop_input: bool = False
    last_grip: float | None = None
    q_est: np.ndarray | None = None
    q_at: float = -1e18
    ee: np.ndarray | None = None
    ee_at: float = -1e18
    deadman: bool = False
    deadman_at: float = -1e18
    last_out_at: float = -1e18
    outputs: list[np.ndarray] = field(default_factory=list)


def _check_output(layer: SafetyLayer, m: Model, now: float, c: np.ndarray, *, held: bool) -> None:
    lim, cfg = LimiterConfig(), PROP_CFG
    assert c.shape == (5,) and np.isfinite(c).all()
    assert np.linalg.norm(c[:3]) <= lim.max_translation + 1e-12
    assert abs(c[3]) <= lim.max_yaw and -1.0 <= c[4] <= 1.0
    if m.last_grip is not None:
        assert abs(c[4] - m.last_grip) <= cfg.max_gripper_step + 1e-12
    if held or m.latched:
        assert not np.any(c[:4]) and (m.last_grip is None or c[4] == m.last_grip)
    ee_fresh = m.ee is not None and now - m.ee_at <= cfg.state_timeout_ms * MS
    q_fresh = m.q_est is not None and now - m.q_at <= cfg.state_timeout_ms * MS
    if np.any(c[:4]):
        assert ee_fresh and q_fresh, "motion without fresh state"
    if ee_fresh and m.ee is not None:
        low, high = np.array(lim.workspace_low), np.array(lim.workspace_high)
        if np.all(m.ee >= low) and np.all(m.ee <= high):
            target = m.ee + c[:3]
            assert np.all(target >= low - 1e-9) and np.all(target <= high + 1e-9)
    if q_fresh and m.q_est is not None and np.any(c[:4]):
        q = m.q_est
        dq = layer.guard.joint_motion(q, c[:4])
        lo = np.array(cfg.joint_lower) + cfg.joint_margin
        hi = np.array(cfg.joint_upper) - cfg.joint_margin
        tol = 1e-9 + 1e-9 * np.abs(dq)
        pushing_low = dq < -layer.guard.TOL
        pushing_high = dq > layer.guard.TOL
        assert np.all(~pushing_low | (q + dq >= lo - tol)), "pushed into the lower margin"
        assert np.all(~pushing_high | (q + dq <= hi + tol)), "pushed into the upper margin"
    m.last_grip = float(c[4])
    m.last_out_at = now
    m.outputs.append(c)
    event("output: motion" if np.any(c[:4]) else "output: hold")
    if m.latched:
        event("output while latched")


def _tick(layer: SafetyLayer, m: Model, now: float) -> None:
    d = layer.tick()
    due = m.last_grip is not None and now - m.last_out_at >= PROP_CFG.watchdog_ms * MS
    assert (d is not None) == due
    if d is not None:
        assert d.command is not None and d.reason == "no fresh action: watchdog hold"
        _check_output(layer, m, now, d.command, held=True)


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(joints_op, st.just(("tick",))),
    st.one_of(ee_op, st.just(("tick",))),
    st.lists(ops, min_size=8, max_size=40),
)
def test_no_output_ever_leaves_the_limits(joints: tuple, ee: tuple, rest: list[tuple]) -> None:
    sequence = [joints, ee, *rest]
    clock = FakeClock()
    layer = SafetyLayer(PROP_CFG, clock=clock)
    m = Model()
    cfg = PROP_CFG
    for op in sequence:
        now = clock()
        kind = op[0]
        if kind == "advance":
            clock.advance(op[1])
        elif kind == "joints":
            q = np.array(op[1])
            layer.update_joints(JOINTS, q, op[2])
            qdot = np.zeros(7) if op[2] is None else np.array(op[2])
            m.q_est, m.q_at = q + qdot * cfg.joint_lookahead_ms / 1e3, now
        elif kind == "ee":
            layer.update_ee(op[1])
            m.ee, m.ee_at = np.array(op[1]), now
        elif kind == "deadman":
            layer.update_deadman(op[1])
            m.deadman, m.deadman_at = op[1], now
        elif kind == "estop":
            d = layer.update_estop(op[1])
            m.estop_input = op[1]
            if op[1] and not m.latched:
                m.latched = True
                assert layer.estop_latched
                assert (d is None) == (m.last_grip is None)
            else:
                assert d is None
            if d is not None:
                assert d.command is not None
                _check_output(layer, m, now, d.command, held=True)
        elif kind == "reset":
            ok, _ = layer.reset_estop()
            assert ok == (not m.estop_input)
            if ok:
                m.latched = False
            assert layer.estop_latched == m.latched
        elif kind == "tick":
            _tick(layer, m, now)
        else:
            _, action, age_ms, source = op
            stamp = 0 if age_ms is None else now - int(age_ms * MS)
            d = layer.filter(action, stamp_ns=stamp, source=source)
            a = np.asarray(action, dtype=float) if len(action) == 5 else None
            bad = a is None or not np.isfinite(a).all()
            stale = age_ms is None or abs(int(age_ms * MS)) > cfg.max_age_ms * MS
            if bad or stale or stamp <= 0:
                assert d.outcome == "dropped" and d.command is None
                continue
            assert d.outcome != "dropped"
            deadman_ok = m.deadman and now - m.deadman_at <= cfg.deadman_timeout_ms * MS
            full_hold = m.latched or (source == "teleop" and not deadman_ok)
            if full_hold:
                assert d.outcome == "held"
            if d.command is None:
                assert full_hold and m.last_grip is None
            else:
                _check_output(layer, m, now, d.command, held=full_hold)
        assert layer.estop_latched == m.latched
        _tick(layer, m, clock())  # the node's timer checks the watchdog all the time
    counts = layer.counts
    for key in ("clipped", "held", "dropped", "watchdog_holds"):
        if counts[key]:
            event(f"some {key}")
    if counts["held_by"]["joint_limit"]:
        event("joint limit hold")
    assert counts["received"] == sum(counts[k] for k in ("passed", "clipped", "held", "dropped"))
    assert counts["held"] == sum(counts["held_by"].values())
    assert counts["dropped"] == sum(counts["dropped_by"].values())


@settings(max_examples=300, deadline=None)
@given(joint_positions, st.tuples(sane, sane, sane, sane).map(np.array))
def test_joint_guard_never_drives_a_joint_into_its_margin(
    q: list[float], motion: np.ndarray
) -> None:
    layer = SafetyLayer(SafetyConfig(), clock=FakeClock())
    guard, margin = layer.guard, layer.config.joint_margin
    q_arr = np.array(q)
    scale, joints = guard.scale(q_arr, motion)
    assert 0.0 <= scale <= 1.0 and (scale == 1.0) == (not joints)
    dq = guard.joint_motion(q_arr, scale * motion)
    lo, hi = np.array(PANDA_LOWER) + margin, np.array(PANDA_UPPER) - margin
    tol = 1e-9 * (1 + np.abs(dq))
    assert np.all((dq <= guard.TOL) | (q_arr + dq <= hi + tol))
    assert np.all((dq >= -guard.TOL) | (q_arr + dq >= lo - tol))
    if scale < 1.0:  # the command was cut exactly at the edge of the tightest joint
        event("scaled")
        edge_hit = np.isclose(q_arr + dq, lo, atol=1e-9) | np.isclose(q_arr + dq, hi, atol=1e-9)
        assert scale == 0.0 or edge_hit.any()
