"""Cross-Entropy Method over bounded physical parameters, with parallel candidate evaluation.

ASID estimates the twin's parameters theta (k,) by minimising the mismatch between a recorded
trajectory and the twin's replay of it. :func:`cem` samples a Gaussian population inside the
bounds, keeps the ``elites`` best candidates and refits the Gaussian to them; the final elite
mean is the estimate and its std the spread.

Candidates are evaluated by an *evaluator* (``evaluate(thetas (P, k)) -> values (P,)``,
``close()``, context manager): :class:`SerialEvaluator`, :class:`ProcessPoolEvaluator` (one
machine, stdlib only, the default for ``workers > 1``) or :class:`RayEvaluator` (beyond one
machine; needs ``pip install "twinloop[ray]"``). Each builds the objective from a picklable
zero-argument ``objective_factory`` once per worker, since building a twin is the expensive part.
Non-finite objective values count as +inf: never elites, and a population with no finite value is
an error.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Any, Protocol

import numpy as np
from twinloop.sim2real.errors import TwinError

__all__ = [
    "BACKENDS",
    "CEMConfig",
    "CEMIteration",
    "CEMResult",
    "Evaluator",
    "Objective",
    "ObjectiveFactory",
    "ProcessPoolEvaluator",
    "RayEvaluator",
    "SerialEvaluator",
    "cem",
    "make_evaluator",
]

log = logging.getLogger(__name__)

Objective = Callable[[np.ndarray], float]
ObjectiveFactory = Callable[[], Objective]
BACKENDS = ("serial", "process", "ray")
RESAMPLE_ROUNDS = 8  # redraws of out-of-bounds samples before clipping the rest


@dataclass(frozen=True)
class CEMConfig:
    population: int = 64  # candidates sampled per iteration
    elites: int = 8  # best candidates the Gaussian is refitted to (2 <= elites < population)
    iterations: int = 12  # maximum number of iterations
    init_std: float = 0.5  # initial std, as a fraction of each bound's width
    min_std: float = 1e-3  # stop once every std is below this fraction of its bound's width
    smoothing: float = 0.0  # alpha in [0, 1): new = alpha * old + (1 - alpha) * elite statistic
    seed: int = 0  # seed of the sampling generator (the run is deterministic given it)

    def __post_init__(self) -> None:
        for name in ("population", "elites", "iterations", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                msg = f"CEMConfig.{name} must be an int, got {value!r}"
                raise TwinError(msg)
        if self.elites < 2:
            msg = f"CEMConfig.elites must be >= 2 (a std needs two samples), got {self.elites}"
            raise TwinError(msg)
        if self.elites >= self.population:
            msg = (
                f"CEMConfig.elites ({self.elites}) must be < population ({self.population}), "
                "or nothing is selected"
            )
            raise TwinError(msg)
        if self.iterations < 1:
            msg = f"CEMConfig.iterations must be >= 1, got {self.iterations}"
            raise TwinError(msg)
        if self.seed < 0:
            msg = f"CEMConfig.seed must be >= 0, got {self.seed}"
            raise TwinError(msg)
        for name in ("init_std", "min_std", "smoothing"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
                msg = f"CEMConfig.{name} must be a number, got {value!r}"
                raise TwinError(msg)
            if not math.isfinite(value):
                msg = f"CEMConfig.{name} must be finite, got {value}"
                raise TwinError(msg)
        if self.init_std <= 0:
            msg = f"CEMConfig.init_std must be > 0 (fraction of the bounds' width), got {self.init_std}"
            raise TwinError(msg)
        if not 0 <= self.min_std < self.init_std:
            msg = f"CEMConfig.min_std must be in [0, init_std={self.init_std}), got {self.min_std}"
            raise TwinError(msg)
        if not 0 <= self.smoothing < 1:
            msg = f"CEMConfig.smoothing must be in [0, 1), got {self.smoothing}"
            raise TwinError(msg)


@dataclass(frozen=True)
class CEMIteration:
    """One iteration: the refitted distribution and what its population scored."""

    mean: np.ndarray  # (k,) after the update
    std: np.ndarray  # (k,) after the update
    elite_min: float  # best elite value (= best value of this population)
    elite_median: float
    best_value: float  # best value of this population
    non_finite: int  # candidates whose objective was not finite
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "elite_min": float(self.elite_min),
            "elite_median": float(self.elite_median),
            "best_value": float(self.best_value),
            "non_finite": int(self.non_finite),
            "seconds": float(self.seconds),
        }


@dataclass(frozen=True)
class CEMResult:
    mean: np.ndarray  # (k,) final elite mean: the estimate
    std: np.ndarray  # (k,) final elite std: its spread
    best_theta: np.ndarray  # (k,) best candidate ever evaluated
    best_value: float
    history: list[CEMIteration] = field(default_factory=list)
    converged: bool = False  # stopped early because every std fell below min_std

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary with the per-iteration log."""
        return {
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "best_theta": [float(v) for v in self.best_theta],
            "best_value": float(self.best_value),
            "converged": self.converged,
            "history": [it.to_dict() for it in self.history],
        }


# ---------------------------------------------------------------------------------- evaluators


class Evaluator(Protocol):
    def evaluate(self, thetas: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


def _check_thetas(thetas: np.ndarray) -> np.ndarray:
    thetas = np.asarray(thetas, dtype=np.float64)
    if thetas.ndim != 2 or thetas.shape[0] == 0:
        msg = f"thetas must be a non-empty (P, k) array, got shape {thetas.shape}"
        raise TwinError(msg)
    return thetas


def _check_workers(workers: int) -> int:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        msg = f"workers must be an int >= 1, got {workers!r}"
        raise TwinError(msg)
    return workers


def _check_factory(objective_factory: ObjectiveFactory) -> ObjectiveFactory:
    if not callable(objective_factory):
        msg = f"objective_factory must be a zero-argument callable, got {objective_factory!r}"
        raise TwinError(msg)
    return objective_factory


def _run_chunk(objective: Objective, thetas: np.ndarray) -> list[float]:
    return [float(objective(theta)) for theta in thetas]


def _chunks(thetas: np.ndarray, n: int) -> list[np.ndarray]:
    """At most n contiguous, non-empty chunks, in order (one per worker: small IPC)."""
    return [c for c in np.array_split(thetas, min(n, len(thetas))) if len(c)]


class _EvaluatorBase:
    _closed = False

    def __enter__(self) -> _EvaluatorBase:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            msg = f"{type(self).__name__} is closed"
            raise TwinError(msg)


class SerialEvaluator(_EvaluatorBase):
    """Evaluates candidates one after another in this process (objective built once, lazily)."""

    def __init__(self, objective_factory: ObjectiveFactory) -> None:
        self._factory = _check_factory(objective_factory)
        self._objective: Objective | None = None

    def evaluate(self, thetas: np.ndarray) -> np.ndarray:
        self._check_open()
        thetas = _check_thetas(thetas)
        if self._objective is None:
            self._objective = self._factory()
        return np.asarray(_run_chunk(self._objective, thetas), dtype=np.float64)

    def close(self) -> None:
        self._objective = None
        super().close()


_WORKER_OBJECTIVE: Objective | None = None  # the objective of a process-pool worker


def _pool_init(objective_factory: ObjectiveFactory) -> None:
    global _WORKER_OBJECTIVE  # one objective (one twin) per worker process, built once
    _WORKER_OBJECTIVE = objective_factory()


def _pool_chunk(thetas: np.ndarray) -> list[float]:
    if _WORKER_OBJECTIVE is None:  # pragma: no cover - the initializer always ran
        msg = "process-pool worker has no objective (initializer did not run)"
        raise TwinError(msg)
    return _run_chunk(_WORKER_OBJECTIVE, thetas)


class ProcessPoolEvaluator(_EvaluatorBase):
    """A pool of ``workers`` processes on this machine; each builds the objective once.

    Each evaluation splits the candidates into one contiguous chunk per worker (few, small
    messages; a free worker takes the next chunk) and concatenates the results in order, so values
    line up with ``thetas`` and match the serial evaluator exactly.
    """

    def __init__(
        self, objective_factory: ObjectiveFactory, workers: int, *, mp_context: str = "spawn"
    ) -> None:
        self._factory = _check_factory(objective_factory)
        self.workers = _check_workers(workers)
        # Not "fork": the parent may hold MuJoCo/EGL contexts and torch/OpenMP thread pools, which
        # a forked child inherits in a broken state (deadlocks, corrupted GL state). "spawn" starts
        # every worker from a fresh interpreter on every OS; its start-up (imports + building the
        # objective) is paid once per worker, not per candidate. "forkserver" (Linux/macOS) is
        # also clean and allowed.
        if mp_context not in ("spawn", "forkserver"):
            msg = f"mp_context must be 'spawn' or 'forkserver' (never fork), got {mp_context!r}"
            raise TwinError(msg)
        self._pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context(mp_context),
            initializer=_pool_init,
            initargs=(self._factory,),
        )

    def evaluate(self, thetas: np.ndarray) -> np.ndarray:
        self._check_open()
        thetas = _check_thetas(thetas)
        futures = [self._pool.submit(_pool_chunk, c) for c in _chunks(thetas, self.workers)]
        try:
            values = [v for f in futures for v in f.result()]
        except concurrent.futures.BrokenExecutor as err:
            msg = f"a process-pool worker died (objective_factory or objective crashed): {err}"
            raise TwinError(msg) from err
        return np.asarray(values, dtype=np.float64)

    def close(self) -> None:
        if not self._closed:
            self._pool.shutdown(wait=True, cancel_futures=True)
        super().close()


class RayEvaluator(_EvaluatorBase):
    """``workers`` Ray actors, each holding one objective; ``address`` joins a running cluster
    (None: start or reuse a local Ray). Needs ``pip install "twinloop[ray]"``."""

    def __init__(
        self, objective_factory: ObjectiveFactory, workers: int, address: str | None = None
    ) -> None:
        self._factory = _check_factory(objective_factory)
        self.workers = _check_workers(workers)
        try:
            import ray
        except ImportError as err:
            msg = (
                'the Ray backend needs ray: pip install "twinloop[ray]" (or use backend="process")'
            )
            raise TwinError(msg) from err
        self._ray = ray
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            ray.init(address=address, log_to_driver=False)
        actor: Any = ray.remote(num_cpus=1)(_RayWorker)
        self._actors: list[Any] = [actor.remote(self._factory) for _ in range(self.workers)]

    def evaluate(self, thetas: np.ndarray) -> np.ndarray:
        self._check_open()
        thetas = _check_thetas(thetas)
        refs = [
            a.evaluate.remote(c)
            for a, c in zip(self._actors, _chunks(thetas, self.workers), strict=False)
        ]
        values = [v for chunk in self._ray.get(refs) for v in chunk]
        return np.asarray(values, dtype=np.float64)

    def close(self) -> None:
        if not self._closed:
            for a in self._actors:
                self._ray.kill(a)
            self._actors = []
            if self._owns_ray:
                self._ray.shutdown()
        super().close()


class _RayWorker:
    """Body of a Ray actor (wrapped with ray.remote lazily, so ray stays optional)."""

    def __init__(self, objective_factory: ObjectiveFactory) -> None:
        self._objective = objective_factory()

    def evaluate(self, thetas: np.ndarray) -> list[float]:
        return _run_chunk(self._objective, thetas)


def make_evaluator(
    objective_factory: ObjectiveFactory, workers: int = 1, backend: str = "process"
) -> SerialEvaluator | ProcessPoolEvaluator | RayEvaluator:
    """Serial for ``workers == 1`` (or backend "serial"), else a process pool or Ray actors."""
    workers = _check_workers(workers)
    if backend not in BACKENDS:
        msg = f"unknown evaluator backend {backend!r}. Available: {list(BACKENDS)}"
        raise TwinError(msg)
    if workers == 1 or backend == "serial":
        return SerialEvaluator(objective_factory)
    if backend == "process":
        return ProcessPoolEvaluator(objective_factory, workers)
    return RayEvaluator(objective_factory, workers)


# ----------------------------------------------------------------------------------------- CEM


def _check_bounds(
    low: np.ndarray, high: np.ndarray, init_mean: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lo = np.asarray(low, dtype=np.float64)
    hi = np.asarray(high, dtype=np.float64)
    if lo.ndim != 1 or lo.size == 0 or lo.shape != hi.shape:
        msg = f"low and high must be non-empty (k,) arrays of one shape, got {lo.shape} and {hi.shape}"
        raise TwinError(msg)
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        msg = f"bounds low={lo.tolist()} high={hi.tolist()} must be finite"
        raise TwinError(msg)
    if not np.all(lo < hi):
        bad = np.flatnonzero(~(lo < hi)).tolist()
        msg = (
            f"bounds need low < high; violated at index {bad}: low={lo.tolist()} high={hi.tolist()}"
        )
        raise TwinError(msg)
    if init_mean is None:
        return lo, hi, (lo + hi) / 2
    mean = np.asarray(init_mean, dtype=np.float64)
    if mean.shape != lo.shape or not np.all(np.isfinite(mean)):
        msg = f"init_mean must be a finite {lo.shape} array, got {init_mean!r}"
        raise TwinError(msg)
    if np.any(mean < lo) or np.any(mean > hi):
        msg = f"init_mean {mean.tolist()} lies outside the bounds [{lo.tolist()}, {hi.tolist()}]"
        raise TwinError(msg)
    return lo, hi, mean


def _sample(
    rng: np.random.Generator,
    mean: np.ndarray,
    std: np.ndarray,
    n: int,
    lo: np.ndarray,
    hi: np.ndarray,
) -> np.ndarray:
    """n Gaussian samples inside [lo, hi]: out-of-bounds entries are redrawn a few times (keeping
    the distribution's shape), what is still outside is clipped."""
    x = mean + std * rng.standard_normal((n, mean.size))
    for _ in range(RESAMPLE_ROUNDS):
        out = (x < lo) | (x > hi)
        if not out.any():
            break
        redraw = mean + std * rng.standard_normal(x.shape)
        x = np.where(out, redraw, x)
    return np.clip(x, lo, hi)


def _select_elites(values: np.ndarray, n_elites: int) -> np.ndarray:
    """Indices of the best finite values (stable order, so ties are deterministic)."""
    order = np.argsort(values, kind="stable")
    finite = int(np.isfinite(values).sum())
    return order[: min(n_elites, finite)]


def cem(
    evaluator: Evaluator,
    low: np.ndarray,
    high: np.ndarray,
    config: CEMConfig | None = None,
    *,
    init_mean: np.ndarray | None = None,
    progress: Callable[[int, CEMIteration], None] | None = None,
) -> CEMResult:
    """Minimise the evaluator's objective over the box [low, high] with the Cross-Entropy Method."""
    config = config or CEMConfig()
    if not isinstance(config, CEMConfig):
        msg = f"config must be a CEMConfig, got {type(config).__name__}"
        raise TwinError(msg)
    lo, hi, mean = _check_bounds(low, high, init_mean)
    width = hi - lo
    std = config.init_std * width
    alpha = config.smoothing
    rng = np.random.default_rng(config.seed)
    best_theta, best_value = mean.copy(), math.inf
    history: list[CEMIteration] = []
    warned = False
    converged = False
    for i in range(config.iterations):
        t0 = time.perf_counter()
        thetas = _sample(rng, mean, std, config.population, lo, hi)
        values = np.asarray(evaluator.evaluate(thetas), dtype=np.float64)
        if values.shape != (config.population,):
            msg = f"evaluator returned shape {values.shape}, expected ({config.population},)"
            raise TwinError(msg)
        bad = ~np.isfinite(values)
        n_bad = int(bad.sum())
        if n_bad == config.population:
            msg = f"CEM iteration {i}: every one of {n_bad} candidates had a non-finite objective"
            raise TwinError(msg)
        if n_bad and not warned:
            log.warning(
                "CEM iteration %d: %d/%d non-finite objective values treated as +inf "
                "(logged once per run; counts are in the history)", i, n_bad, config.population
            )  # fmt: skip
            warned = True
        values = np.where(bad, math.inf, values)
        idx = _select_elites(values, config.elites)
        elites = thetas[idx]
        elite_std = elites.std(axis=0) if len(idx) >= 2 else std  # one finite value: keep spread
        mean = alpha * mean + (1 - alpha) * elites.mean(axis=0)
        std = alpha * std + (1 - alpha) * elite_std
        if values[idx[0]] < best_value:
            best_value, best_theta = float(values[idx[0]]), thetas[idx[0]].copy()
        it = CEMIteration(
            mean=mean.copy(),
            std=std.copy(),
            elite_min=float(values[idx[0]]),
            elite_median=float(np.median(values[idx])),
            best_value=float(values[idx[0]]),
            non_finite=n_bad,
            seconds=time.perf_counter() - t0,
        )
        history.append(it)
        log.debug("CEM iteration %d: %s", i, asdict(it))
        if progress is not None:
            progress(i, it)
        if np.all(std < config.min_std * width):
            converged = True
            break
    return CEMResult(mean, std, best_theta, best_value, history, converged)
