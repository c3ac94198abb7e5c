"""The safety limiter core: nothing it outputs leaves the limits, whatever comes in."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
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
