"""ASID's exploration reward: Fisher information of the next state about the twin's parameters.

ASID (Memmel et al. 2024) rewards an exploration policy for visiting states whose outcome depends
strongly on the unknown physical parameters. With ``G = d(next state) / d(theta)`` (the
sensitivity of the tracked object's state after one control step to the parameters) the trace of
the Fisher information under isotropic Gaussian observation noise is ``trace(G^T G) / sigma^2``;
the reward is that trace divided by ``norm`` and clipped at ``clip``.

``G`` is taken by central finite differences: every parameter is nudged by ``+-delta`` (a fraction
of its prior's width, so ``G`` is per unit of *normalised* parameter and a mass in kg and a
friction coefficient are comparable) and the simulation is stepped one control step from the
twin's current state with the control the twin is about to apply. That is ``2 k`` extra control
steps per env step; they run as one batched :func:`mujoco.rollout.rollout` over ``2 k`` model
copies (one per perturbed parameter vector, built once and re-synced to the twin's current
parameters every call), or sequentially for comparison (``vectorized=False``).

Call order in an env step: ``twin.apply_action(a)`` (sets ``data.ctrl``), ``reward = fisher()``,
``twin.advance(twin.n_substeps)``; or use :func:`fisher_step`, which wraps :meth:`Twin.step`.
The reward never changes the twin's own ``MjModel`` or ``MjData``.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import mujoco
import mujoco.rollout
import numpy as np
from twinloop.sim2real.errors import TwinError
from twinloop.sim2real.params import TwinParams
from twinloop.sim2real.twin import StepResult, Twin

__all__ = [
    "FisherConfig",
    "FisherCost",
    "FisherReward",
    "SimSnapshot",
    "finite_difference_jacobian",
    "fisher_step",
]

log = logging.getLogger(__name__)

_STATE = mujoco.mjtState.mjSTATE_FULLPHYSICS  # what mujoco.rollout takes as initial state
_JOINT_SIZES = {  # joint type -> (qpos size, qvel size)
    mujoco.mjtJoint.mjJNT_FREE: (7, 6),
    mujoco.mjtJoint.mjJNT_BALL: (4, 3),
    mujoco.mjtJoint.mjJNT_SLIDE: (1, 1),
    mujoco.mjtJoint.mjJNT_HINGE: (1, 1),
}


# ----- generic central differences -----------------------------------------------------------
def _check_point(theta: np.ndarray, delta: np.ndarray) -> None:
    if theta.ndim != 1 or theta.size == 0:
        msg = f"theta must be a non-empty vector, got shape {theta.shape}"
        raise TwinError(msg)
    if delta.shape != theta.shape:
        msg = f"delta must have theta's shape {theta.shape}, got {delta.shape}"
        raise TwinError(msg)
    if not (np.isfinite(theta).all() and np.isfinite(delta).all()):
        msg = f"theta and delta must be finite, got theta={theta.tolist()} delta={delta.tolist()}"
        raise TwinError(msg)
    if (delta <= 0).any():
        msg = f"delta must be positive, got {delta.tolist()}"
        raise TwinError(msg)


def _stencil(theta: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The 2k evaluation points: row 2j is theta with theta_j -> lo_j, row 2j+1 with hi_j."""
    points = np.repeat(theta[None, :], 2 * theta.size, axis=0)
    j = np.arange(theta.size)
    points[2 * j, j] = lo
    points[2 * j + 1, j] = hi
    return points


def _difference(values: np.ndarray, width: np.ndarray) -> np.ndarray:
    """(2k, d) values at the stencil rows -> (d, k) slopes ``(f(hi) - f(lo)) / width``."""
    return ((values[1::2] - values[0::2]) / width[:, None]).T


def finite_difference_jacobian(
    f: Callable[[np.ndarray], np.ndarray], theta: np.ndarray, delta: np.ndarray
) -> np.ndarray:
    """Jacobian (d, k) of ``f: R^k -> R^d`` at ``theta`` by central differences with step ``delta``.

    Column j is ``(f(theta + delta_j e_j) - f(theta - delta_j e_j)) / (2 delta_j)``; the error is
    O(delta^2) for smooth ``f``.
    """
    theta = np.asarray(theta, dtype=float)
    delta = np.asarray(delta, dtype=float)
    _check_point(theta, delta)
    values: list[np.ndarray] = []
    for point in _stencil(theta, theta - delta, theta + delta):
        value = np.asarray(f(point), dtype=float)
        if value.ndim != 1 or (values and value.shape != values[0].shape):
            msg = f"f must return vectors of one length, got shape {value.shape}"
            raise TwinError(msg)
        values.append(value)
    return _difference(np.stack(values), 2.0 * delta)


# ----- configuration --------------------------------------------------------------------------
@dataclass(frozen=True)
class FisherConfig:
    """Which parameters, how far to nudge them, and how to scale the reward."""

    params: tuple[str, ...]  # twin parameter names (twinloop.sim2real.params.PARAM_SPECS)
    rel_delta: float = 0.02  # finite-difference step, fraction of each parameter's prior width
    # Upper clip of the reward. Measured on the twin (rel_delta 0.02, norm 1): resting or moving
    # in free air gives ~1e-5; in smooth contact the linear part of G (positions, m/s) gives
    # trace ~1 .. 10; but contact onsets and stick/slip switches are discontinuities where
    # central differences jump by orders of magnitude (1e2 .. 1e4, dominated by the angular
    # velocity rows, and growing as delta shrinks: chaos, not a derivative). A clip of 10 keeps
    # the smooth, informative range and stops those spikes from dominating the policy's return.
    clip: float = 10.0
    norm: float = 1.0  # divisor of trace(G^T G) (the observation noise variance in the Fisher)
    bodies: tuple[str, ...] | None = None  # bodies whose joint state enters G; None: task objects
    # Free joints' angular velocity rows in G. Off by default: they dominate G in contact and
    # grow as delta shrinks (contact chaos, not a sensitivity); orientation still enters G through
    # the quaternion rows, and linear velocity through its own rows.
    angular_velocity: bool = False
    threads: int = 1  # MjData / threads of the batched rollout

    def __post_init__(self) -> None:
        if not self.params:
            msg = "FisherConfig.params is empty: name the parameters to identify"
            raise TwinError(msg)
        if len(set(self.params)) != len(self.params):
            msg = f"FisherConfig.params has duplicates: {list(self.params)}"
            raise TwinError(msg)
        checks = (
            ("rel_delta", 0.0 < self.rel_delta < 0.5, "must be in (0, 0.5)", self.rel_delta),
            ("clip", self.clip > 0.0, "must be positive", self.clip),
            ("norm", self.norm > 0.0, "must be positive", self.norm),
            ("threads", self.threads >= 1, "must be >= 1", self.threads),
        )
        for name, ok, rule, value in checks:
            if not (ok and np.isfinite(value)):
                msg = f"FisherConfig.{name} {rule}, got {value}"
                raise TwinError(msg)
        if self.bodies is not None and not self.bodies:
            msg = "FisherConfig.bodies is empty: name bodies or leave it None (task objects)"
            raise TwinError(msg)


@dataclass(frozen=True)
class FisherCost:
    """What the reward has cost so far."""

    calls: int
    seconds: float  # total wall time in reward evaluations

    @property
    def mean_seconds(self) -> float:
        return self.seconds / self.calls if self.calls else 0.0


@dataclass(frozen=True)
class SimSnapshot:
    """The twin's physics state (mjSTATE_FULLPHYSICS) and solver warm start at one instant."""

    state: np.ndarray
    warmstart: np.ndarray


# ----- the reward -----------------------------------------------------------------------------
class FisherReward:
    """``clip(trace(G^T G) / norm)`` with ``G`` = d(tracked state after one control step)/d(theta).

    ``G`` is (d, k): d = the tracked joints' qpos (m, unit quaternion) and qvel (m/s; rad/s only with angular_velocity),
    k = ``len(config.params)``, per unit of the parameter normalised by its prior width.
    """

    def __init__(
        self,
        twin: Twin,
        config: FisherConfig,
        prior: Mapping[str, tuple[float, float]] | None = None,
        *,
        vectorized: bool = True,
    ) -> None:
        self.twin = twin
        self.config = config
        self.vectorized = vectorized
        specs = twin.params.specs
        unknown = [n for n in config.params if n not in specs]
        if unknown:
            msg = f"unknown twin parameter(s) {unknown} for task {twin.task.name!r}. Available: {sorted(specs)}"
            raise TwinError(msg)
        self.prior = self._check_prior(prior or {})
        self._spec_lo = np.array([specs[n].low for n in config.params])
        self._spec_hi = np.array([specs[n].high for n in config.params])
        width = np.array([hi - lo for lo, hi in (self.prior[n] for n in config.params)])
        self._width = width  # prior widths: G is per unit of theta / width
        self._delta = config.rel_delta * width
        model = twin.physics.model
        self._qpos_idx, self._qvel_idx = self._tracked(
            model, config.bodies or twin.task.objects, angular=config.angular_velocity
        )
        k = len(config.params)
        self._models = [copy.copy(model) for _ in range(2 * k)]
        self._row_params = [TwinParams(m, twin.task.objects) for m in self._models]
        self._datas = [mujoco.MjData(model) for _ in range(config.threads)]
        self._runner: mujoco.rollout.Rollout | None = None
        time_size = mujoco.mj_stateSize(model, mujoco.mjtState.mjSTATE_TIME)
        self._qpos_at = time_size + self._qpos_idx  # offsets into a FULLPHYSICS state vector
        self._qvel_at = time_size + model.nq + self._qvel_idx
        self.sim_steps_per_call = 2 * k * twin.n_substeps
        self.last_jacobian = np.zeros((self.state_dim, k))
        self._calls = 0
        self._seconds = 0.0

    # ----- setup -------------------------------------------------------------------------------
    def _check_prior(
        self, prior: Mapping[str, tuple[float, float]]
    ) -> dict[str, tuple[float, float]]:
        specs = self.twin.params.specs
        extra = [n for n in prior if n not in self.config.params]
        if extra:
            msg = f"prior names parameters {extra} that are not in FisherConfig.params {list(self.config.params)}"
            raise TwinError(msg)
        checked: dict[str, tuple[float, float]] = {}
        for name in self.config.params:
            spec = specs[name]
            bounds = prior.get(name, (spec.low, spec.high))
            try:
                low, high = (float(b) for b in bounds)
            except (TypeError, ValueError) as err:
                msg = f"prior of {name} must be (low, high), got {bounds!r}"
                raise TwinError(msg) from err
            if not (np.isfinite([low, high]).all() and spec.low <= low < high <= spec.high):
                msg = f"prior of {name} ({low}, {high}) must satisfy {spec.low} <= low < high <= {spec.high} {spec.unit}"
                raise TwinError(msg)
            checked[name] = (low, high)
        return checked

    @staticmethod
    def _tracked(
        model: mujoco.MjModel, bodies: tuple[str, ...], *, angular: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        qpos: list[int] = []
        qvel: list[int] = []
        for name in bodies:
            body = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, name)
            if body < 0 or model.body_jntnum[body] == 0:
                msg = f"body {name!r} does not exist or has no joint to track"
                raise TwinError(msg)
            first = int(model.body_jntadr[body])
            for jnt in range(first, first + int(model.body_jntnum[body])):
                kind = mujoco.mjtJoint(model.jnt_type[jnt])
                nq, nv = _JOINT_SIZES[kind]
                if kind == mujoco.mjtJoint.mjJNT_FREE and not angular:
                    nv = 3  # linear velocity only (a free joint's dofs: 3 linear, 3 angular)
                qpos.extend(range(int(model.jnt_qposadr[jnt]), int(model.jnt_qposadr[jnt]) + nq))
                qvel.extend(range(int(model.jnt_dofadr[jnt]), int(model.jnt_dofadr[jnt]) + nv))
        return np.array(qpos, dtype=np.int64), np.array(qvel, dtype=np.int64)

    @property
    def state_dim(self) -> int:
        return len(self._qpos_idx) + len(self._qvel_idx)

    @property
    def cost(self) -> FisherCost:
        return FisherCost(self._calls, self._seconds)

    # ----- evaluation --------------------------------------------------------------------------
    def snapshot(self) -> SimSnapshot:
        """The twin's physics state now (read only)."""
        m, d = self.twin.physics.model, self.twin.physics.data
        state = np.empty(mujoco.mj_stateSize(m, _STATE))
        mujoco.mj_getState(m, d, state, _STATE)
        return SimSnapshot(state, d.qacc_warmstart.copy())

    def stencil(self) -> tuple[np.ndarray, np.ndarray]:
        """Perturbed parameter vectors (2k, k) around the twin's current values and the (k,)
        distances between each pair; a pair is shifted inward where it would leave the spec."""
        theta = np.array([self.twin.params.get()[n] for n in self.config.params])
        lo = np.clip(theta - self._delta, self._spec_lo, self._spec_hi - 2 * self._delta)
        hi = lo + 2 * self._delta
        return _stencil(theta, lo, hi), hi - lo

    def __call__(self) -> float:
        """The reward for the control in ``data.ctrl`` from the current state; call between
        ``twin.apply_action`` and ``twin.advance``."""
        return self.evaluate(self.snapshot(), self.twin.physics.data.ctrl)

    compute = __call__

    def evaluate(self, snapshot: SimSnapshot, ctrl: np.ndarray) -> float:
        """The reward for holding ``ctrl`` for one control step from ``snapshot``."""
        start = time.perf_counter()
        points, width = self.stencil()
        self._sync(points)
        final = self._run(snapshot, np.asarray(ctrl, dtype=float))
        tracked = np.concatenate([final[:, self._qpos_at], final[:, self._qvel_at]], axis=1)
        jac = _difference(tracked, width) * self._width  # per unit of normalised parameter
        self.last_jacobian = jac
        trace = float(np.sum(jac * jac))
        if np.isfinite(trace):
            reward = min(trace / self.config.norm, self.config.clip)
        else:
            log.warning("a perturbed simulation diverged; Fisher reward set to 0")
            reward = 0.0
        self._calls += 1
        self._seconds += time.perf_counter() - start
        return reward

    def _sync(self, points: np.ndarray) -> None:
        """Write the twin's current parameters, then row r's perturbed values, into model r."""
        current = self.twin.params.get()
        for params, point in zip(self._row_params, points, strict=True):
            params.set({**current, **dict(zip(self.config.params, point.tolist(), strict=True))})

    def _run(self, snap: SimSnapshot, ctrl: np.ndarray) -> np.ndarray:
        """Step every perturbed model n_substeps; their final FULLPHYSICS states (2k, nstate)."""
        n = self.twin.n_substeps
        if self.vectorized:
            rows = len(self._models)
            if self._runner is None:
                threads = self.config.threads
                self._runner = mujoco.rollout.Rollout(nthread=threads if threads > 1 else 0)
            states, _ = self._runner.rollout(
                self._models,
                self._datas,
                np.tile(snap.state, (rows, 1)),
                np.tile(ctrl, (rows, 1, 1)),
                nstep=n,
                initial_warmstart=np.tile(snap.warmstart, (rows, 1)),
            )
            return np.asarray(states[:, -1])
        d = self._datas[0]
        out = np.empty((len(self._models), snap.state.size))
        for r, m in enumerate(self._models):
            mujoco.mj_resetData(m, d)
            mujoco.mj_setState(m, d, snap.state, _STATE)
            d.qacc_warmstart[:] = snap.warmstart
            d.ctrl[:] = ctrl
            for _ in range(n):
                mujoco.mj_step(m, d)
            mujoco.mj_getState(m, d, out[r], _STATE)
        return out

    def close(self) -> None:
        """Stop the rollout thread pool (if any)."""
        if self._runner is not None:
            self._runner.close()
            self._runner = None


def fisher_step(
    twin: Twin, fisher: FisherReward, action: np.ndarray | list[float]
) -> tuple[StepResult, float]:
    """One :meth:`Twin.step` plus the Fisher reward of that step.

    The physics state is snapshotted before the step; :meth:`Twin.apply_action` changes only
    ``data.ctrl``, which stays constant through the step, so the reward from (snapshot, the ctrl
    left after the step) is exactly the reward ``apply_action -> fisher() -> advance`` gives.
    """
    snap = fisher.snapshot()
    result = twin.step(action)
    return result, fisher.evaluate(snap, twin.physics.data.ctrl)
