"""ASID's Fisher-information exploration reward (twinloop.sim2real.asid.fisher)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from twinloop.sim2real.asid.fisher import (
    FisherConfig,
    FisherReward,
    finite_difference_jacobian,
    fisher_step,
)
from twinloop.sim2real.errors import TwinError
from twinloop.sim2real.twin import Twin, TwinConfig

CUBE = ("cube.mass", "cube.friction")
CLOSED = 1.0


def _twin(task: str, params: dict[str, float] | None = None, seed: int = 0) -> Twin:
    twin = Twin(TwinConfig(task=task, render=False), params=params)
    twin.reset(seed)
    return twin


def _action(move: np.ndarray) -> np.ndarray:
    return np.array([*np.clip(move, -0.03, 0.03), 0.0, CLOSED])


def _goto(twin: Twin, target: np.ndarray, steps: int) -> None:
    for _ in range(steps):
        twin.step(_action(np.asarray(target) - twin.physics.ee_pos()))


def _rewards(twin: Twin, fisher: FisherReward, move: np.ndarray, steps: int) -> np.ndarray:
    return np.array([fisher_step(twin, fisher, _action(move))[1] for _ in range(steps)])


def _behind_cube(twin: Twin) -> None:
    """Hand 7 cm behind the cube (-y side), at cube height, ready to push it along +y."""
    cube = twin.privileged_state()["cube_pos"]
    _goto(twin, cube + [0.0, -0.07, 0.1], 15)
    _goto(twin, cube + [0.0, -0.07, 0.0], 15)


def _state(twin: Twin) -> tuple[np.ndarray, ...]:
    d = twin.physics.data
    return tuple(
        np.array(a, copy=True) for a in (d.qpos, d.qvel, d.ctrl, d.act, d.qacc_warmstart, [d.time])
    )


# ----- finite differences --------------------------------------------------------------------
def test_finite_differences_match_analytic_gradient() -> None:
    def f(t: np.ndarray) -> np.ndarray:
        return np.array([t[0] ** 2 * t[1], math.sin(t[1])])

    theta = np.array([1.3, 0.7])
    jac = finite_difference_jacobian(f, theta, np.array([1e-4, 1e-4]))
    exact = np.array([[2 * 1.3 * 0.7, 1.3**2], [0.0, math.cos(0.7)]])
    assert jac.shape == (2, 2)
    np.testing.assert_allclose(jac, exact, atol=1e-8)


def test_finite_differences_point_mass() -> None:
    """x' = x + v dt + F/m dt^2: d x'/d m = -F dt^2 / m^2 (one parameter, two outputs)."""
    x, v, force, dt = 0.1, 0.5, 2.0, 0.01

    def step(theta: np.ndarray) -> np.ndarray:
        m = theta[0]
        return np.array([x + v * dt + force / m * dt**2, v + force / m * dt])

    m = 0.4
    jac = finite_difference_jacobian(step, np.array([m]), np.array([1e-3]))
    exact = np.array([[-force * dt**2 / m**2], [-force * dt / m**2]])
    np.testing.assert_allclose(jac, exact, rtol=1e-5)


@pytest.mark.parametrize(
    ("theta", "delta", "match"),
    [
        (np.array([1.0, 2.0]), np.array([0.1]), "shape"),
        (np.array([1.0]), np.array([0.0]), "positive"),
        (np.array([np.nan]), np.array([0.1]), "finite"),
        (np.zeros(0), np.zeros(0), "non-empty"),
    ],
)
def test_finite_differences_bad_input(theta: np.ndarray, delta: np.ndarray, match: str) -> None:
    with pytest.raises(TwinError, match=match):
        finite_difference_jacobian(lambda t: t, theta, delta)


# ----- the reward on the twin ----------------------------------------------------------------
def test_angular_velocity_rows_are_optional() -> None:
    twin = _twin("push_cube")
    with_w = FisherReward(twin, FisherConfig(params=CUBE, angular_velocity=True))
    without = FisherReward(twin, FisherConfig(params=CUBE))
    assert with_w.state_dim == 13 and without.state_dim == 10


def test_cube_push_is_informative_idle_is_not() -> None:
    twin = _twin("push_cube")
    fisher = FisherReward(twin, FisherConfig(params=CUBE))
    idle = _rewards(twin, fisher, np.zeros(3), 5)
    free_air = _rewards(twin, fisher, np.array([0.03, 0.03, 0.03]), 8)  # away, above the cube
    _behind_cube(twin)
    push = _rewards(twin, fisher, np.array([0.0, 0.02, 0.0]), 10)
    assert twin.privileged_state()["cube_pos"][1] > -0.05  # the cube did move
    assert max(idle.max(), free_air.max()) < 1e-3
    assert push.mean() > 1.0
    assert push.max() <= fisher.config.clip
    assert fisher.last_jacobian.shape == (10, 2)  # cube free joint: 7 qpos + 3 linear qvel
    assert fisher.cost.calls == 23
    assert fisher.sim_steps_per_call == 2 * 2 * twin.n_substeps


def test_rod_push_near_one_end_is_informative() -> None:
    twin = _twin("lift_rod")
    fisher = FisherReward(twin, FisherConfig(params=("rod.com_offset",)))
    idle = _rewards(twin, fisher, np.zeros(3), 5)
    s = twin.privileged_state()
    axis = s["rod_axis"]
    perp = np.array([axis[1], -axis[0], 0.0]) / np.linalg.norm(axis[:2])
    perp = perp if perp[0] > 0 else -perp
    start = s["rod_pos"] + 0.12 * axis - 0.06 * perp  # 12 cm off centre, 6 cm behind
    _goto(twin, start + [0.0, 0.0, 0.1], 15)
    _goto(twin, np.array([start[0], start[1], 0.015]), 15)
    push = _rewards(twin, fisher, 0.02 * perp, 10)
    assert idle.max() < 1e-6
    assert push.max() > 1e-3  # 0.0065 here: one step of a push moves the rod little per mm of CoM
    assert push[2:].mean() > 1e3 * max(idle.max(), 1e-12)  # 2500x here


def test_vectorized_and_sequential_agree() -> None:
    for threads in (1, 2):
        twins = [_twin("push_cube"), _twin("push_cube")]
        config = FisherConfig(params=CUBE, threads=threads)
        vec = FisherReward(twins[0], config, vectorized=True)
        seq = FisherReward(twins[1], config, vectorized=False)
        for twin in twins:
            _behind_cube(twin)
        for _ in range(4):
            r_vec = fisher_step(twins[0], vec, _action(np.array([0.0, 0.02, 0.0])))[1]
            r_seq = fisher_step(twins[1], seq, _action(np.array([0.0, 0.02, 0.0])))[1]
            np.testing.assert_allclose(vec.last_jacobian, seq.last_jacobian, rtol=1e-9, atol=1e-9)
            assert r_vec == pytest.approx(r_seq, rel=1e-9, abs=1e-12)
        vec.close()


def test_reward_leaves_the_twin_untouched() -> None:
    twin = _twin("push_cube")
    fisher = FisherReward(twin, FisherConfig(params=CUBE))
    _behind_cube(twin)
    twin.apply_action(_action(np.array([0.0, 0.02, 0.0])))
    before, params = _state(twin), twin.get_params()
    mass = twin.physics.model.body_mass.copy()
    reward = fisher()
    assert reward > 0.0
    for a, b in zip(before, _state(twin), strict=True):
        np.testing.assert_array_equal(a, b)
    assert twin.get_params() == params
    np.testing.assert_array_equal(twin.physics.model.body_mass, mass)


def test_fisher_step_equals_apply_reward_advance() -> None:
    twins = [_twin("push_cube"), _twin("push_cube")]
    fishers = [FisherReward(t, FisherConfig(params=CUBE)) for t in twins]
    for twin in twins:
        _behind_cube(twin)
    action = _action(np.array([0.0, 0.02, 0.0]))
    for _ in range(3):
        result, r_step = fisher_step(twins[0], fishers[0], action)
        twins[1].apply_action(action)
        r_manual = fishers[1]()
        twins[1].advance(twins[1].n_substeps)
        assert r_step == r_manual
        np.testing.assert_array_equal(twins[0].physics.data.qpos, twins[1].physics.data.qpos)
        assert result.info["steps"] == twins[0].steps


def test_perturbed_models_follow_the_twins_parameters() -> None:
    """A reward built at mass 0.1 and re-synced after set_params equals one built at mass 0.5."""
    old, new = _twin("push_cube"), _twin("push_cube", {"cube.mass": 0.5})
    config = FisherConfig(params=("cube.friction",))
    stale = FisherReward(old, config)
    fresh = FisherReward(new, config)
    old.set_params({"cube.mass": 0.5})
    for twin in (old, new):
        twin.reset(0)  # same settled start at mass 0.5
        _behind_cube(twin)
    points_before = stale.stencil()[0]
    old.set_params({"cube.friction": 1.0})
    new.set_params({"cube.friction": 1.0})
    points_after, width = stale.stencil()
    assert not np.array_equal(points_before, points_after)
    np.testing.assert_allclose(points_after.mean(axis=0), [1.0])  # centred on the new value
    np.testing.assert_allclose(width, [2 * 0.02 * 1.4])
    rewards = []
    for _ in range(6):
        action = _action(np.array([0.0, 0.02, 0.0]))
        rewards.append(fisher_step(old, stale, action)[1])
        assert rewards[-1] == fisher_step(new, fresh, action)[1]
        np.testing.assert_array_equal(stale.last_jacobian, fresh.last_jacobian)
    assert max(rewards) > 0.1  # compared in contact, where the parameters matter


def test_stencil_shifts_inward_at_the_bounds() -> None:
    twin = _twin("push_cube", {"cube.mass": 0.02, "cube.friction": 1.5})
    fisher = FisherReward(twin, FisherConfig(params=CUBE, rel_delta=0.1))
    points, width = fisher.stencil()
    np.testing.assert_allclose(width, [0.2 * 0.98, 0.2 * 1.4])
    assert points[0, 0] == pytest.approx(0.02) and points[1, 0] == pytest.approx(0.02 + 0.196)
    assert points[3, 1] == pytest.approx(1.5) and points[2, 1] == pytest.approx(1.5 - 0.28)
    assert fisher() >= 0.0  # every stencil point is a valid parameter value


def test_drawer_tracks_its_slide_joint() -> None:
    twin = _twin("open_drawer")
    fisher = FisherReward(twin, FisherConfig(params=("drawer.damping",)))
    twin.apply_action(np.zeros(5))
    assert fisher() >= 0.0
    assert fisher.last_jacobian.shape == (2, 1)


# ----- bad input -----------------------------------------------------------------------------
def test_unknown_parameter_lists_the_available_ones() -> None:
    twin = _twin("push_cube")
    with pytest.raises(TwinError, match=r"rod\.mass.*Available.*cube\.friction"):
        FisherReward(twin, FisherConfig(params=("rod.mass",)))


@pytest.mark.parametrize(
    "prior",
    [{"cube.mass": (0.0, 0.5)}, {"cube.mass": (0.5, 0.5)}, {"cube.mass": (0.1, 2.0)}],
)
def test_bad_prior(prior: dict[str, tuple[float, float]]) -> None:
    twin = _twin("push_cube")
    with pytest.raises(TwinError, match=r"prior of cube\.mass"):
        FisherReward(twin, FisherConfig(params=CUBE), prior)


def test_prior_sets_the_step_and_unknown_prior_name() -> None:
    twin = _twin("push_cube")
    fisher = FisherReward(twin, FisherConfig(params=("cube.mass",)), {"cube.mass": (0.05, 0.25)})
    np.testing.assert_allclose(fisher.stencil()[1], [2 * 0.02 * 0.2])
    with pytest.raises(TwinError, match=r"cube\.friction"):
        FisherReward(twin, FisherConfig(params=("cube.mass",)), {"cube.friction": (0.2, 1.0)})


def test_bad_body() -> None:
    twin = _twin("push_cube")
    with pytest.raises(TwinError, match="'table'"):
        FisherReward(twin, FisherConfig(params=CUBE, bodies=("table",)))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"params": ()}, "params"),
        ({"params": ("cube.mass", "cube.mass")}, "duplicates"),
        ({"rel_delta": 0.0}, "rel_delta"),
        ({"rel_delta": 0.5}, "rel_delta"),
        ({"clip": 0.0}, "clip"),
        ({"norm": -1.0}, "norm"),
        ({"threads": 0}, "threads"),
        ({"bodies": ()}, "bodies"),
    ],
)
def test_bad_config(kwargs: dict[str, object], name: str) -> None:
    args: dict[str, object] = {"params": CUBE, **kwargs}
    with pytest.raises(TwinError, match=name):
        FisherConfig(**args)
