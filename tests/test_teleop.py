"""The teleoperation core: deadband, scaling, the deadman, device readers and episode events."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twinloop.errors import TwinloopError
from twinloop.teleop import (
    GRIPPER_CLOSED,
    GRIPPER_OPEN,
    ActionMapper,
    DeviceSample,
    EpisodeStateMachine,
    GamepadConfig,
    JoyConfig,
    JoyReader,
    KeyboardConfig,
    KeyboardReader,
    KeyDecoder,
    SpaceMouseConfig,
    TeleopConfig,
    apply_deadband,
)
from twinloop.topics import EPISODE_EVENTS

CFG = TeleopConfig(max_translation=0.02, max_yaw=0.1, deadband=0.1)


def _sample(axes: list[float], *, deadman: bool = True, toggle: bool = False) -> DeviceSample:
    return DeviceSample(axes=np.asarray(axes, dtype=float), deadman=deadman, toggle_gripper=toggle)


# ----- deadband and scaling ------------------------------------------------------------------
def test_deadband_zeroes_the_centre_and_rescales_the_rest() -> None:
    out = apply_deadband([0.05, -0.1, 0.55, -1.0, 2.0, -3.0], 0.1)
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, -1.0, 1.0, -1.0])
    # continuous at the band's edge, monotonic beyond it
    edge = apply_deadband([0.1 + 1e-9, 0.2, 0.3], 0.1)
    assert 0.0 < edge[0] < 1e-8 and edge[0] < edge[1] < edge[2]
    np.testing.assert_allclose(apply_deadband([0.3, -0.7], 0.0), [0.3, -0.7])


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_deadband_must_be_in_range(bad: float) -> None:
    with pytest.raises(TwinloopError, match="deadband must be in"):
        apply_deadband([0.5], bad)


def test_full_deflection_scales_to_the_configured_step() -> None:
    mapper = ActionMapper(CFG)
    np.testing.assert_allclose(mapper(_sample([1.0, 0, 0, 0])), [0.02, 0, 0, 0, GRIPPER_OPEN])
    np.testing.assert_allclose(mapper(_sample([0, -1.0, 0, 0])), [0, -0.02, 0, 0, GRIPPER_OPEN])
    np.testing.assert_allclose(mapper(_sample([0, 0, 0.55, -0.55])), [0, 0, 0.01, -0.05, -1.0])


def test_diagonal_moves_are_no_faster_than_one_axis() -> None:
    out = ActionMapper(CFG)(_sample([1.0, 1.0, 1.0, 1.0]))
    assert np.linalg.norm(out[:3]) == pytest.approx(0.02)
    np.testing.assert_allclose(out[:3], [0.02 / np.sqrt(3)] * 3)
    assert out[3] == pytest.approx(0.1)  # yaw is not part of the translation norm


def test_mapper_refuses_bad_axes() -> None:
    mapper = ActionMapper(CFG)
    with pytest.raises(TwinloopError, match="NaN or inf"):
        mapper(_sample([np.nan, 0, 0, 0]))
    with pytest.raises(TwinloopError, match="axes must hold 4 values"):
        mapper(_sample([0.0, 0.0, 0.0]))


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("max_translation", 0.0, "max_translation"),
        ("max_translation", 0.5, "max_translation"),
        ("max_yaw", -0.1, "max_yaw"),
        ("deadband", 1.0, "deadband"),
        ("input_timeout_s", 0.0, "input_timeout_s"),
    ],
)
def test_teleop_config_validates(field: str, value: float, match: str) -> None:
    with pytest.raises(TwinloopError, match=match):
        TeleopConfig(**{field: value})


# ----- the deadman ---------------------------------------------------------------------------
def test_no_motion_and_no_gripper_change_without_the_deadman() -> None:
    mapper = ActionMapper(CFG)
    out = mapper(_sample([1.0, -1.0, 1.0, 1.0], deadman=False, toggle=True))
    np.testing.assert_array_equal(out, [0, 0, 0, 0, GRIPPER_OPEN])
    assert mapper.gripper == GRIPPER_OPEN and mapper.ignored_toggles == 1
    out = mapper(_sample([0, 0, 0, 0], toggle=True))  # with the deadman the toggle acts
    assert out[4] == GRIPPER_CLOSED
    out = mapper(_sample([1.0, 0, 0, 0], deadman=False))  # released: holds the gripper
    np.testing.assert_array_equal(out, [0, 0, 0, 0, GRIPPER_CLOSED])
    mapper.reset_gripper()
    assert mapper(_sample([0, 0, 0, 0], deadman=False))[4] == GRIPPER_OPEN


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(st.lists(finite, min_size=4, max_size=4), st.booleans(), st.booleans())
def test_nothing_moves_without_the_deadman(axes: list[float], deadman: bool, toggle: bool) -> None:
    mapper = ActionMapper(CFG)
    out = mapper(_sample(axes, deadman=deadman, toggle=toggle))
    assert out.shape == (5,) and np.isfinite(out).all()
    assert np.linalg.norm(out[:3]) <= CFG.max_translation + 1e-12
    assert abs(out[3]) <= CFG.max_yaw + 1e-12
    if not deadman:
        assert not out[:4].any() and out[4] == GRIPPER_OPEN


# ----- joysticks -----------------------------------------------------------------------------
def _pad_buttons(*pressed: int, n: int = 21) -> list[int]:
    return [int(i in pressed) for i in range(n)]


def _pad_axes(**values: float) -> list[float]:
    axes = [0.0] * 6  # LEFTX, LEFTY, RIGHTX, RIGHTY, TRIGGERLEFT, TRIGGERRIGHT
    for name, v in values.items():
        axes[["lx", "ly", "rx", "ry", "lt", "rt"].index(name)] = v
    return axes


def test_gamepad_defaults_map_sticks_and_need_lb() -> None:
    reader = JoyReader(GamepadConfig(), input_timeout_s=0.5)
    reader.update_axes(_pad_axes(ly=1.0, lx=-0.5, ry=0.3, rx=0.8), now=0.0)
    reader.update_buttons(_pad_buttons())
    s = reader.sample(now=0.1)
    assert not s.deadman  # sticks alone never move the arm
    reader.update_buttons(_pad_buttons(9))  # LB
    s = reader.sample(now=0.1)
    assert s.deadman and not s.stale
    np.testing.assert_allclose(s.axes, [1.0, -0.5, 0.3, 0.8])  # dx, dy, dz, dyaw


def test_joy_buttons_act_on_the_press_edge_in_order() -> None:
    reader = JoyReader(GamepadConfig())
    reader.update_axes(_pad_axes(), now=0.0)
    reader.update_buttons(_pad_buttons(11))  # start
    reader.update_buttons(_pad_buttons(11))  # still held: no second start
    reader.update_buttons(_pad_buttons())
    reader.update_buttons(_pad_buttons(14, 0))  # success + gripper
    s = reader.sample(now=0.0)
    assert s.commands == ("start", "success") and s.toggle_gripper
    s = reader.sample(now=0.0)  # consumed
    assert s.commands == () and not s.toggle_gripper
    reader.update_buttons(_pad_buttons(4, 12, 13))
    assert set(reader.sample(now=0.0).commands) == {"quit", "failure", "discard"}


def test_silent_device_stops_motion_even_with_the_deadman_held() -> None:
    reader = JoyReader(GamepadConfig(), input_timeout_s=0.3)
    assert not reader.sample(now=0.0).deadman  # nothing received yet
    reader.update_axes(_pad_axes(ly=1.0), now=1.0)
    reader.update_buttons(_pad_buttons(9))
    assert reader.sample(now=1.29).deadman
    s = reader.sample(now=1.31)
    assert not s.deadman and s.stale and not s.axes.any()


def test_toggled_deadman_arms_disarms_and_disarms_when_silent() -> None:
    reader = JoyReader(SpaceMouseConfig(deadman_toggle=True), input_timeout_s=0.3)
    reader.update_axes([0.5, 0, 0, 0, 0, 0], now=0.0)
    reader.update_buttons([1])
    reader.update_buttons([0])  # released: still armed
    assert reader.sample(now=0.1).deadman
    reader.update_buttons([1])
    assert not reader.sample(now=0.1).deadman  # second press disarms
    reader.update_buttons([0])
    reader.update_buttons([1])
    assert reader.sample(now=0.2).deadman
    assert not reader.sample(now=0.5).deadman  # silence disarms ...
    reader.update_axes([0.5, 0, 0, 0, 0, 0], now=0.6)
    assert not reader.sample(now=0.6).deadman  # ... and it stays disarmed


def test_spacemouse_maps_twist_and_buttons() -> None:
    reader = JoyReader(SpaceMouseConfig())
    # spacenav twist as a 6-vector: linear x, y, z, angular x, y, z
    reader.update_axes([0.2, -0.4, 0.6, 0.9, 0.9, -0.8], now=0.0)
    reader.update_buttons([])  # spacenav sends no buttons until one is pressed
    assert not reader.sample(now=0.0).deadman
    reader.update_buttons([1, 0])
    s = reader.sample(now=0.0)
    assert s.deadman
    np.testing.assert_allclose(s.axes, [0.2, -0.4, 0.6, -0.8])  # roll and pitch unused
    reader.update_buttons([1, 1])
    assert reader.sample(now=0.0).toggle_gripper


def test_joy_reader_refuses_bad_axes_and_keeps_the_old_ones() -> None:
    reader = JoyReader(GamepadConfig(signs=(-1.0, 1.0, 1.0, 1.0)))
    reader.update_axes(_pad_axes(ly=0.5), now=0.0)
    with pytest.raises(TwinloopError, match="sends 2 axes but axis 3 is mapped to dz"):
        reader.update_axes([0.1, 0.2], now=0.1)
    with pytest.raises(TwinloopError, match="NaN or inf"):
        reader.update_axes([float("nan")] * 6, now=0.1)
    reader.update_buttons(_pad_buttons(9))
    np.testing.assert_allclose(reader.sample(now=0.2).axes, [-0.5, 0, 0, 0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"axes": (0, 1, 2)}, "axes must be 4 indices"),
        ({"axes": (0, 1, 2, -2)}, "axes must be 4 indices"),
        ({"signs": (1.0, 0.5, 1.0, 1.0)}, "signs must be"),
        ({"deadman_button": -1}, "deadman_button"),
        ({"gripper_button": 9}, "one role only"),
        ({"quit_button": -3}, "button indices"),
    ],
)
def test_joy_config_validates(kwargs: dict, match: str) -> None:
    with pytest.raises(TwinloopError, match=match):
        JoyConfig(**kwargs)


# ----- keyboard ------------------------------------------------------------------------------
def test_key_decoder_arrows_esc_and_split_sequences() -> None:
    dec = KeyDecoder(esc_timeout_s=0.05)
    assert dec.feed(b"wA \r\x1b[A\x1b[B\x1b[C\x1b[D\x1bOA", now=0.0) == [
        "w",
        "a",
        "space",
        "enter",
        "up",
        "down",
        "right",
        "left",
        "up",
    ]
    assert dec.feed(b"\x1b", now=1.0) == []  # could be an arrow key's first byte
    assert dec.feed(b"[", now=1.01) == []
    assert dec.feed(b"C", now=1.02) == ["right"]
    assert dec.flush(now=2.0) == []
    assert dec.feed(b"\x1b", now=3.0) == []
    assert dec.flush(now=3.02) == []  # not yet
    assert dec.flush(now=3.06) == ["esc"]
    assert dec.feed(b"\x1bw", now=4.0) == ["esc", "w"]  # Esc, then a key
    assert dec.feed(b"\x1b[3~\x1b[1;5Cq\xc3\xa9", now=5.0) == ["q"]  # Delete, Ctrl-right, é


def test_keyboard_motion_needs_the_key_to_keep_coming() -> None:
    reader = KeyboardReader(KeyboardConfig(hold_s=0.15))
    reader.feed(b"w", now=0.0)
    s = reader.sample(now=0.0)
    assert s.deadman and s.axes.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert reader.sample(now=0.1).deadman  # within the hold window
    s = reader.sample(now=0.2)
    assert not s.deadman and not s.axes.any()  # released: stops
    reader.feed(b"w", now=1.0)  # a tap is one step even when the next sample comes late
    assert reader.sample(now=1.5).deadman
    assert not reader.sample(now=1.6).deadman
    reader.feed(b"dqf", now=2.0)
    assert reader.sample(now=2.0).axes.tolist() == [0.0, -1.0, -1.0, 1.0]
    reader.feed(b"ws", now=3.0)  # opposite keys cancel
    assert not reader.sample(now=3.0).axes.any()


def test_keyboard_gripper_events_and_help() -> None:
    reader = KeyboardReader()
    reader.feed(b" \x1b[A\x1b[C\n\x1b[B\x1b[Dhx", now=0.0)
    s = reader.sample(now=0.0)
    assert s.toggle_gripper and s.deadman and not s.axes.any()
    assert s.commands == ("start", "success", "start", "failure", "discard", "help")
    assert reader.unknown == ["x"]
    reader.feed(b"\x1b", now=1.0)
    assert reader.sample(now=1.01).commands == ()
    assert reader.sample(now=1.1).commands == ("quit",)


def test_keyboard_events_only_reader_ignores_motion_keys() -> None:
    reader = KeyboardReader(motion=False)
    reader.feed(b"w \x1b[A", now=0.0)
    s = reader.sample(now=0.0)
    assert not s.deadman and not s.toggle_gripper and s.commands == ("start",)


# ----- episode events ------------------------------------------------------------------------
def test_episode_state_machine_happy_path() -> None:
    sm = EpisodeStateMachine(first_episode=3)
    assert sm.submit("start", stamp=1.5, operator="ana") == [
        {"event": "start", "episode": 3, "stamp": 1.5, "operator": "ana"}
    ]
    assert sm.submit("success")[0] == {"event": "success", "episode": 3}
    assert [p["episode"] for p in (sm.submit("start")[0], sm.submit("failure")[0])] == [4, 4]
    sm.submit("start")
    assert sm.submit("discard") == [{"event": "discard", "episode": 5}]
    assert sm.submit("start")[0]["episode"] == 5  # re-record the same number
    assert [p["event"] for p in sm.submit("quit")] == ["discard", "quit"]
    assert sm.state == "stopped"


@pytest.mark.parametrize(
    ("before", "event", "match"),
    [
        ([], "success", "'success' ignored: no episode is running"),
        ([], "failure", "no episode is running"),
        ([], "discard", "no episode is running"),
        (["start"], "start", "episode 0 is running"),
        (["start", "success"], "success", "no episode is running .start episode 1 first"),
        (["quit"], "start", "teleoperation has quit"),
        (["quit"], "quit", "teleoperation has quit"),
    ],
)
def test_out_of_order_events_are_refused_and_change_nothing(
    before: list[str], event: str, match: str
) -> None:
    sm = EpisodeStateMachine()
    for e in before:
        sm.submit(e)
    state, episode = sm.state, sm.episode
    with pytest.raises(TwinloopError, match=match):
        sm.submit(event)
    assert (sm.state, sm.episode) == (state, episode)


def test_episode_state_machine_rejects_unknown_events_and_bad_stamps() -> None:
    sm = EpisodeStateMachine()
    with pytest.raises(TwinloopError, match=r"unknown episode event .save.\. Available"):
        sm.submit("save")
    with pytest.raises(TwinloopError, match="stamp must be a finite number"):
        sm.submit("quit", stamp=float("nan"))
    with pytest.raises(TwinloopError, match="first_episode"):
        EpisodeStateMachine(first_episode=-1)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(EPISODE_EVENTS), max_size=30))
def test_any_event_sequence_gives_a_well_formed_stream(events: list[str]) -> None:
    """Whatever the operator presses, the published stream alternates start / end properly."""
    sm = EpisodeStateMachine()
    out: list[dict] = []
    for e in events:
        try:
            out += sm.submit(e)
        except TwinloopError:
            pass
    running: int | None = None
    kept: list[int] = []
    for p in out:
        if p["event"] == "start":
            assert running is None
            running = p["episode"]
        elif p["event"] == "quit":
            assert running is None and p is out[-1]
        else:
            assert running == p["episode"]
            if p["event"] != "discard":
                kept.append(running)
            running = None
    assert kept == list(range(len(kept)))  # kept episodes are numbered 0, 1, 2, ...
