"""The safety layer's core: every action bound for an arm passes through :class:`SafetyLayer`.

ROS-free and driven by an injected clock (integer nanoseconds), so tests replay any sequence of
inputs deterministically. ``safety_node`` is the thin ROS adapter around it (docs/safety.md).

Two layers:

- :class:`ActionLimiter` (stateless): finite values and length, per-step translation and yaw
  limits, the workspace box on the commanded end-effector target, the gripper range.
- :class:`SafetyLayer` (stateful): the limiter plus stale-stamp rejection, a latched software
  e-stop, a deadman for teleoperated sources, a joint-limit margin (first-order, through the
  arm's Jacobian), a gripper rate limit and a command watchdog. Every output is either the
  limited action or a *hold* command: zero deltas and the last gripper command sent.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from twinloop.sim2real.arm import PANDA_DH, PANDA_FLANGE_D, PANDA_LIMITS, PANDA_TCP_D

from .errors import TwinloopError
from .topics import ACTION_NAMES

__all__ = [
    "ARM_MODELS",
    "PANDA_JOINT_NAMES",
    "PANDA_LOWER",
    "PANDA_UPPER",
    "ActionLimiter",
    "JointLimitGuard",
    "LimiterConfig",
    "SafetyConfig",
    "SafetyDecision",
    "SafetyLayer",
    "panda_jacobian",
]

log = logging.getLogger(__name__)

# The Panda's joints and limits (the twin's arm module is the one place they are written down).
PANDA_JOINT_NAMES: tuple[str, ...] = tuple(f"joint{i}" for i in range(1, 8))
PANDA_LOWER: tuple[float, ...] = tuple(lo for lo, _ in PANDA_LIMITS)
PANDA_UPPER: tuple[float, ...] = tuple(hi for _, hi in PANDA_LIMITS)

OUTCOMES = ("passed", "clipped", "held", "dropped")
HOLD_REASONS = ("estop", "deadman", "joint_limit", "no_state")
DROP_REASONS = ("invalid", "malformed", "unstamped", "stale", "future")
_MOTION = slice(0, 4)  # dx, dy, dz, dyaw
_GRIP = 4


# ----- per-action limits -------------------------------------------------------------------
@dataclass(frozen=True)
class LimiterConfig:
    max_translation: float = 0.03  # largest EE move per command, m
    max_yaw: float = 0.2  # largest yaw change per command, rad
    workspace_low: tuple[float, float, float] = (0.25, -0.35, 0.01)  # EE box, m (robot base frame)
    workspace_high: tuple[float, float, float] = (0.8, 0.35, 0.45)

    def __post_init__(self) -> None:
        if not (0.0 < self.max_translation <= 0.1):
            msg = f"max_translation must be in (0, 0.1] m, got {self.max_translation}"
            raise TwinloopError(msg)
        if not (0.0 < self.max_yaw <= 0.5):
            msg = f"max_yaw must be in (0, 0.5] rad, got {self.max_yaw}"
            raise TwinloopError(msg)
        if len(self.workspace_low) != 3 or len(self.workspace_high) != 3:
            msg = "workspace_low and workspace_high need 3 values (x, y, z)"
            raise TwinloopError(msg)
        if any(lo >= hi for lo, hi in zip(self.workspace_low, self.workspace_high, strict=True)):
            msg = f"workspace_low {self.workspace_low} must be below workspace_high {self.workspace_high}"
            raise TwinloopError(msg)


class ActionLimiter:
    """Validates and limits ``[dx, dy, dz, dyaw, gripper]`` commands (stateless)."""

    def __init__(self, config: LimiterConfig | None = None) -> None:
        self.config = config or LimiterConfig()
        self._low = np.asarray(self.config.workspace_low, dtype=float)
        self._high = np.asarray(self.config.workspace_high, dtype=float)

    def __call__(
        self,
        action: Sequence[float] | np.ndarray,
        ee_pos: Sequence[float] | np.ndarray | None = None,
    ) -> np.ndarray:
        """Return the limited action; raise TwinloopError for one that cannot be made safe.

        With ``ee_pos`` (the current end-effector position) the translation is also cut so that
        the commanded point stays inside the workspace box.
        """
        a = check_action(action)
        cfg = self.config
        out = a.copy()
        if ee_pos is not None:
            ee = np.asarray(ee_pos, dtype=float)
            if ee.shape == (3,) and np.isfinite(ee).all():
                target = ee + out[:3]
                inside = np.clip(target, self._low, self._high)
                if not np.array_equal(inside, target):  # (a move that stays in is left exact)
                    out[:3] = inside - ee
        out[:3] = _limit_norm(out[:3], cfg.max_translation)  # also bounds a move back inside
        out[3] = float(np.clip(out[3], -cfg.max_yaw, cfg.max_yaw))
        out[4] = float(np.clip(out[4], -1.0, 1.0))
        return out


def check_action(action: Sequence[float] | np.ndarray) -> np.ndarray:
    """The action as a float vector of ACTION_NAMES' length; TwinloopError if not finite."""
    try:
        a = np.asarray(action, dtype=float)
    except (TypeError, ValueError) as err:
        msg = f"action is not a numeric vector: {action!r}"
        raise TwinloopError(msg) from err
    if a.shape != (len(ACTION_NAMES),):
        msg = f"action must have {len(ACTION_NAMES)} values {ACTION_NAMES}, got shape {a.shape}"
        raise TwinloopError(msg)
    if not np.isfinite(a).all():
        msg = f"action has NaN or inf: {a.tolist()}"
        raise TwinloopError(msg)
    return a


def _limit_norm(v: np.ndarray, limit: float) -> np.ndarray:
    """Scale ``v`` down to norm ``limit`` if longer (overflow-safe for huge values)."""
    peak = float(np.max(np.abs(v)))
    if peak == 0.0:
        return v
    norm = peak * float(np.linalg.norm(v / peak))
    return v * (limit / norm) if norm > limit else v


# ----- kinematics for the joint-limit margin ------------------------------------------------
def _dh(alpha: float, a: float, q: float, d: float) -> np.ndarray:
    """Modified DH (Craig): RotX(alpha) TransX(a) RotZ(q) TransZ(d)."""
    ca, sa, cq, sq = math.cos(alpha), math.sin(alpha), math.cos(q), math.sin(q)
    return np.array(
        [
            [cq, -sq, 0.0, a],
            [sq * ca, cq * ca, -sa, -d * sa],
            [sq * sa, cq * sa, ca, d * ca],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )


def panda_jacobian(q: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(tcp_pos (3,), J (6, 7))`` of the Panda at joint angles ``q``, in the base frame.

    Rows 0-2 map joint rates to the TCP's linear velocity, rows 3-5 to the hand's angular
    velocity. The TCP is the twin's ``ee_site``: flange plus PANDA_TCP_D along joint 7's axis.
    """
    q = np.asarray(q, dtype=float)
    if q.shape != (len(PANDA_DH),):
        msg = f"the Panda has {len(PANDA_DH)} joints, got {q.shape}"
        raise TwinloopError(msg)
    t = np.eye(4)
    origins, axes = [], []
    for (a, d, alpha), qi in zip(PANDA_DH, q, strict=True):
        t = t @ _dh(alpha, a, float(qi), d)
        origins.append(t[:3, 3].copy())  # joint i's axis passes through the frame origin
        axes.append(t[:3, 2].copy())
    tcp = t[:3, 3] + t[:3, 2] * (PANDA_FLANGE_D + PANDA_TCP_D)
    jac = np.empty((6, len(q)))
    for i, (o, z) in enumerate(zip(origins, axes, strict=True)):
        jac[:3, i] = np.cross(z, tcp - o)
        jac[3:, i] = z
    return tcp, jac


# Arm kinematics by name: q -> (tcp, 6xN Jacobian). "none": no model (see JointLimitGuard).
ARM_MODELS: dict[str, Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None] = {
    "panda": panda_jacobian,
    "none": None,
}


class JointLimitGuard:
    """Keeps EE commands from driving a joint into its limit margin.

    First order: the command's twist ``(dx, dy, dz, 0, 0, dyaw)`` (roll and pitch held, as the
    arm bridges and the twin keep the hand pointing down) is mapped to joint motion ``dq`` with
    damped least squares, like the twin's IK. For every joint that ``dq`` moves towards a limit,
    the room left is the distance from ``q`` to the margin's edge (``limit -+ margin``); the
    command is scaled so that no such joint crosses that edge. A joint already inside the margin
    (or beyond the limit) leaves no room: the motion is refused (scale 0). Commands that move
    such a joint away from its limit pass, so the arm can always back out.

    Without an arm model (``"none"``) the direction is unknown: any joint inside the margin
    refuses all motion, and recovery needs the arm's own tools.
    """

    DAMPING = 0.05  # DLS damping, as the twin's IK
    ROT_WEIGHT = 0.5  # weight of the rotation rows, as the twin's IK
    TOL = 1e-9  # rad: joint motion below this is numerical noise, not a push

    def __init__(
        self,
        lower: Sequence[float],
        upper: Sequence[float],
        margin: float,
        model: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None,
        names: Sequence[str] | None = None,
    ) -> None:
        self.lower = np.asarray(lower, dtype=float)
        self.upper = np.asarray(upper, dtype=float)
        self.margin = float(margin)
        self.model = model
        n = len(self.lower)
        self.names = tuple(names) if names is not None else tuple(f"joint{i + 1}" for i in range(n))
        weights = [1.0, 1.0, 1.0, self.ROT_WEIGHT, self.ROT_WEIGHT, self.ROT_WEIGHT]
        self._w = np.diag(weights)

    def joint_motion(self, q: np.ndarray, motion: np.ndarray) -> np.ndarray:
        """Predicted joint motion ``dq`` for ``motion = (dx, dy, dz, dyaw)`` at ``q``."""
        if self.model is None:
            msg = "no arm model: joint motion cannot be predicted"
            raise TwinloopError(msg)
        _, jac = self.model(q)
        twist = np.array([motion[0], motion[1], motion[2], 0.0, 0.0, motion[3]])
        jw = self._w @ jac
        jjt = jw @ jw.T + self.DAMPING**2 * np.eye(6)
        return jw.T @ np.linalg.solve(jjt, self._w @ twist)

    def scale(self, q: np.ndarray, motion: np.ndarray) -> tuple[float, list[str]]:
        """``(s, joints)``: ``s * motion`` keeps every joint out of its margin, ``s`` in [0, 1].

        ``joints`` names the joints that limit the command (``"joint4 upper"``), empty when
        ``s == 1``.
        """
        lo, hi, m = self.lower + self.margin, self.upper - self.margin, self.margin
        if not np.any(motion):
            return 1.0, []
        if self.model is None:
            near = (q < lo) | (q > hi)
            return (
                (0.0, [f"{self.names[i]} within {m} rad of a limit" for i in np.flatnonzero(near)])
                if near.any()
                else (1.0, [])
            )
        dq = self.joint_motion(q, motion)
        if not np.isfinite(dq).all():
            return 0.0, ["the joint motion is not finite"]
        s, limiting = 1.0, []
        for i in range(len(q)):
            if dq[i] < -self.TOL:
                room, side = q[i] - lo[i], "lower"
            elif dq[i] > self.TOL:
                room, side = hi[i] - q[i], "upper"
            else:
                continue
            si = min(1.0, max(0.0, room / abs(dq[i])))
            if si < 1.0:
                limiting.append(f"{self.names[i]} {side}")
                s = min(s, si)
        return s, limiting


# ----- the stateful safety layer -----------------------------------------------------------
@dataclass(frozen=True)
class SafetyConfig:
    """What the safety layer adds to the per-action limits (one ROS parameter per field)."""

    max_gripper_step: float = 0.5  # largest gripper command change per output (range -1..1)
    watchdog_ms: float = 500.0  # no accepted action this long -> a hold, then one per period
    max_age_ms: float = 500.0  # drop actions stamped longer ago (or further ahead) than this
    state_timeout_ms: float = 1000.0  # joint states / EE pose older than this are not used
    require_state: bool = True  # without fresh joint states and EE pose, motion is held
    deadman_sources: tuple[str, ...] = ("teleop",)  # action sources (frame_id) needing a deadman
    deadman_timeout_ms: float = 300.0  # a deadman True older than this counts as released
    arm_model: str = "panda"  # kinematics for the joint-limit margin: panda | none
    joint_names: tuple[str, ...] = PANDA_JOINT_NAMES  # arm joints in /joint_states, base first
    joint_lower: tuple[float, ...] = PANDA_LOWER  # rad
    joint_upper: tuple[float, ...] = PANDA_UPPER  # rad
    joint_margin: float = 0.05  # rad: refuse motion that drives a joint this close to a limit
    joint_lookahead_ms: float = 100.0  # check limits at q + qdot * this (the arm's tracking lag)

    def __post_init__(self) -> None:
        if not 0.0 < self.max_gripper_step <= 2.0:
            msg = f"max_gripper_step must be in (0, 2] (the gripper range is 2), got {self.max_gripper_step}"
            raise TwinloopError(msg)
        for name in ("watchdog_ms", "max_age_ms", "state_timeout_ms", "deadman_timeout_ms"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0.0):
                msg = f"{name} must be a positive number of milliseconds, got {value}"
                raise TwinloopError(msg)
        if self.arm_model not in ARM_MODELS:
            msg = f"unknown arm_model {self.arm_model!r}. Available: {sorted(ARM_MODELS)}"
            raise TwinloopError(msg)
        n = len(self.joint_names)
        if n == 0 or len(set(self.joint_names)) != n:
            msg = f"joint_names must name each arm joint once, got {list(self.joint_names)}"
            raise TwinloopError(msg)
        if len(self.joint_lower) != n or len(self.joint_upper) != n:
            msg = (
                f"joint_lower ({len(self.joint_lower)}) and joint_upper ({len(self.joint_upper)}) "
                f"need one value per joint in joint_names ({n})"
            )
            raise TwinloopError(msg)
        if self.arm_model == "panda" and n != len(PANDA_DH):
            msg = f"arm_model 'panda' has {len(PANDA_DH)} joints, joint_names lists {n}"
            raise TwinloopError(msg)
        if not (math.isfinite(self.joint_lookahead_ms) and 0.0 <= self.joint_lookahead_ms <= 1e3):
            msg = f"joint_lookahead_ms must be in [0, 1000], got {self.joint_lookahead_ms}"
            raise TwinloopError(msg)
        if not (0.0 <= self.joint_margin < 0.5):
            msg = f"joint_margin must be in [0, 0.5) rad, got {self.joint_margin}"
            raise TwinloopError(msg)
        for name, lo, hi in zip(self.joint_names, self.joint_lower, self.joint_upper, strict=True):
            if not (math.isfinite(lo) and math.isfinite(hi) and hi - lo > 2 * self.joint_margin):
                msg = (
                    f"{name}: limits [{lo}, {hi}] must be finite and wider than twice joint_margin"
                )
                raise TwinloopError(msg)


@dataclass(frozen=True, eq=False)
class SafetyDecision:
    """What the safety layer made of one input."""

    command: np.ndarray | None  # goes to the arm; None: nothing is published
    outcome: str  # passed | clipped | held | dropped (OUTCOMES)
    reason: str = ""  # why it was held or dropped (for the log)

    @property
    def is_hold(self) -> bool:
        c = self.command
        return c is not None and not np.any(c[_MOTION])


def _new_counts() -> dict[str, Any]:
    return {
        "received": 0,
        **dict.fromkeys(OUTCOMES, 0),
        "held_by": dict.fromkeys(HOLD_REASONS, 0),
        "dropped_by": dict.fromkeys(DROP_REASONS, 0),
        "watchdog_holds": 0,
        "estops": 0,
        "bad_state": 0,
    }


@dataclass
class _Fresh:
    """A value and when it arrived (clock ns)."""

    value: Any = None
    at_ns: int = 0


@dataclass
class _State:
    estop_latched: bool = False
    estop_input: bool = False
    deadman: _Fresh = field(default_factory=_Fresh)
    joints: _Fresh = field(default_factory=_Fresh)
    ee: _Fresh = field(default_factory=_Fresh)
    last_gripper: float | None = None  # of the last output; None: nothing sent yet
    last_output_ns: int = 0
    last_action_ns: int | None = None  # last accepted (valid, fresh) action
    watchdog_tripped: bool = False


class SafetyLayer:
    """The full safety layer over one action stream. Not thread-safe (one executor).

    ``clock()`` returns the current time in integer nanoseconds, on the same clock as the
    action stamps (the node passes its ROS clock; tests a fake one).
    """

    def __init__(
        self,
        config: SafetyConfig | None = None,
        limits: LimiterConfig | None = None,
        *,
        clock: Callable[[], int],
    ) -> None:
        self.config = cfg = config or SafetyConfig()
        self.limiter = ActionLimiter(limits)
        self.guard = JointLimitGuard(
            cfg.joint_lower,
            cfg.joint_upper,
            cfg.joint_margin,
            ARM_MODELS[cfg.arm_model],
            cfg.joint_names,
        )
        self._clock = clock
        self._s = _State()
        self.counts: dict[str, Any] = _new_counts()
        self._deadman_all = "*" in cfg.deadman_sources

    # ----- inputs besides actions ----------------------------------------------------------
    def update_joints(
        self,
        names: Sequence[str],
        positions: Sequence[float],
        velocities: Sequence[float] | None = None,
    ) -> None:
        """A /joint_states reading; TwinloopError (counted) when the arm joints are missing.

        The joint-limit margin is checked at ``q + qdot * joint_lookahead_ms``: where the arm's
        own target already is, since the measured joints lag it. Without velocities, ``q``.
        """
        try:
            q = self._pick(names, positions, "positions")
            qdot = (
                None
                if velocities is None or len(velocities) == 0
                else self._pick(names, velocities, "velocities")
            )
        except TwinloopError:
            self.counts["bad_state"] += 1
            raise
        if qdot is not None:
            q = q + qdot * (self.config.joint_lookahead_ms / 1e3)
        self._s.joints = _Fresh(q, self._clock())

    def _pick(self, names: Sequence[str], values: Sequence[float], what: str) -> np.ndarray:
        if len(names) != len(values):
            msg = f"joint state has {len(names)} names but {len(values)} {what}"
            raise TwinloopError(msg)
        by_name = dict(zip(names, values, strict=True))
        missing = [n for n in self.config.joint_names if n not in by_name]
        if missing:
            msg = f"joint state lacks {missing} (has {list(names)})"
            raise TwinloopError(msg)
        v = np.array([by_name[n] for n in self.config.joint_names], dtype=float)
        if not np.isfinite(v).all():
            msg = f"joint state {what} have NaN or inf: {v.tolist()}"
            raise TwinloopError(msg)
        return v

    def update_ee(self, pos: Sequence[float] | np.ndarray) -> None:
        """The end effector's current position (robot base frame)."""
        p = np.asarray(pos, dtype=float)
        if p.shape != (3,) or not np.isfinite(p).all():
            self.counts["bad_state"] += 1
            msg = f"EE position must be 3 finite values, got {p.tolist()}"
            raise TwinloopError(msg)
        self._s.ee = _Fresh(p, self._clock())

    def update_deadman(self, pressed: bool) -> None:
        self._s.deadman = _Fresh(bool(pressed), self._clock())

    def update_estop(self, asserted: bool) -> SafetyDecision | None:
        """The e-stop input. True latches; on latching, a hold to publish at once (if any)."""
        s = self._s
        s.estop_input = bool(asserted)
        if not asserted or s.estop_latched:
            return None
        s.estop_latched = True
        self.counts["estops"] += 1
        log.debug("e-stop latched")
        hold = self._hold_command()
        if hold is None:
            return None
        self._emit(hold)
        return SafetyDecision(hold, "held", "estop")

    def reset_estop(self) -> tuple[bool, str]:
        """Clear the latch, unless the e-stop input is still asserted: ``(done, message)``."""
        s = self._s
        if s.estop_input:
            return False, "the e-stop input is still asserted (True): release it first"
        if not s.estop_latched:
            return True, "the e-stop was not latched"
        s.estop_latched = False
        log.debug("e-stop reset")
        return True, "e-stop reset"

    # ----- actions -------------------------------------------------------------------------
    def drop(self, reason: str) -> SafetyDecision:
        """Count an action the caller could not even parse (``reason`` in DROP_REASONS)."""
        self.counts["received"] += 1
        return self._dropped(reason if reason in DROP_REASONS else "malformed", reason)

    def filter(
        self, action: Sequence[float] | np.ndarray, *, stamp_ns: int, source: str = ""
    ) -> SafetyDecision:
        """The command for one incoming action stamped ``stamp_ns`` from ``source``."""
        self.counts["received"] += 1
        cfg, s = self.config, self._s
        try:
            a = check_action(action)
        except TwinloopError as err:
            return self._dropped("invalid", str(err))
        now = self._clock()
        if stamp_ns <= 0:
            return self._dropped("unstamped", "action has no stamp (header.stamp is 0)")
        age_ms = (now - stamp_ns) / 1e6
        if age_ms > cfg.max_age_ms:
            return self._dropped("stale", f"action stamped {age_ms:.0f} ms ago (> max_age_ms)")
        if -age_ms > cfg.max_age_ms:
            return self._dropped(
                "future", f"action stamped {-age_ms:.0f} ms ahead of this clock (> max_age_ms)"
            )
        s.last_action_ns = now
        s.watchdog_tripped = False
        if s.estop_latched:
            return self._full_hold("estop")
        if (self._deadman_all or source in cfg.deadman_sources) and not self.deadman_held():
            return self._full_hold("deadman", f"deadman not held for a {source!r} action")

        ee = self._fresh(s.ee)
        out = self.limiter(a, ee_pos=ee)
        held = ""
        q = self._fresh(s.joints)
        if cfg.require_state and (ee is None or q is None):
            held = "no_state"
            why = "no fresh " + " and ".join(
                t for t, v in (("/joint_states", q), ("EE pose", ee)) if v is None
            )
        elif q is not None:
            scale, joints = self.guard.scale(q, out[_MOTION])
            out[_MOTION] *= scale
            if scale == 0.0:
                held, why = "joint_limit", f"joint limit margin: the command pushes {joints}"
        if held:
            out[_MOTION] = 0.0
        if s.last_gripper is not None:
            step = cfg.max_gripper_step
            out[_GRIP] = float(np.clip(out[_GRIP], s.last_gripper - step, s.last_gripper + step))
        self._emit(out)
        if held:
            return self._count_hold(out, held, why)
        outcome = "passed" if np.array_equal(out, a) else "clipped"
        self.counts[outcome] += 1
        return SafetyDecision(out, outcome)

    def tick(self) -> SafetyDecision | None:
        """Call often (faster than the watchdog period): a watchdog hold when one is due."""
        s = self._s
        if s.last_gripper is None:
            return None  # nothing sent yet: nothing to hold
        now = self._clock()
        if now - s.last_output_ns < self.config.watchdog_ms * 1e6:
            return None
        if not s.watchdog_tripped:
            log.debug("watchdog tripped after %.0f ms without an action", self.config.watchdog_ms)
        s.watchdog_tripped = True
        hold = self._hold_command()
        if hold is None:  # pragma: no cover - last_gripper is set
            return None
        self._emit(hold)
        self.counts["watchdog_holds"] += 1
        return SafetyDecision(hold, "held", "no fresh action: watchdog hold")

    # ----- state ---------------------------------------------------------------------------
    @property
    def estop_latched(self) -> bool:
        return self._s.estop_latched

    def deadman_held(self) -> bool:
        d = self._s.deadman
        age_ms = (self._clock() - d.at_ns) / 1e6
        return bool(d.value) and age_ms <= self.config.deadman_timeout_ms

    def watchdog_state(self) -> str:
        """``idle`` (nothing sent yet), ``ok`` (actions are fresh) or ``holding``."""
        s = self._s
        if s.last_gripper is None:
            return "idle"
        if s.watchdog_tripped:
            return "holding"
        return "ok"

    def status(self) -> dict[str, Any]:
        """JSON-able state for /twinloop/safety_status."""
        s = self._s
        return {
            "estop_latched": s.estop_latched,
            "estop_input": s.estop_input,
            "deadman": self.deadman_held(),
            "watchdog": self.watchdog_state(),
            "joint_state_fresh": self._fresh(s.joints) is not None,
            "ee_pose_fresh": self._fresh(s.ee) is not None,
            "last_gripper": s.last_gripper,
            "last_action_age_ms": (
                None if s.last_action_ns is None else (self._clock() - s.last_action_ns) / 1e6
            ),
            "counts": {k: dict(v) if isinstance(v, dict) else v for k, v in self.counts.items()},
        }

    # ----- helpers -------------------------------------------------------------------------
    def _fresh(self, item: _Fresh) -> np.ndarray | None:
        if item.value is None:
            return None
        if (self._clock() - item.at_ns) / 1e6 > self.config.state_timeout_ms:
            return None
        return item.value

    def _hold_command(self) -> np.ndarray | None:
        g = self._s.last_gripper
        return None if g is None else np.array([0.0, 0.0, 0.0, 0.0, g])

    def _emit(self, command: np.ndarray) -> None:
        self._s.last_gripper = float(command[_GRIP])
        self._s.last_output_ns = self._clock()

    def _full_hold(self, reason: str, why: str = "") -> SafetyDecision:
        hold = self._hold_command()
        if hold is not None:
            self._emit(hold)
        return self._count_hold(hold, reason, why or reason)

    def _count_hold(self, command: np.ndarray | None, reason: str, why: str) -> SafetyDecision:
        self.counts["held"] += 1
        self.counts["held_by"][reason] += 1
        return SafetyDecision(command, "held", why)

    def _dropped(self, reason: str, why: str) -> SafetyDecision:
        self.counts["dropped"] += 1
        self.counts["dropped_by"][reason] += 1
        return SafetyDecision(None, "dropped", why)
