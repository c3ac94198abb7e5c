"""CEM (sim2real/asid/cem.py): recovers a toy model's parameters, parallel evaluators agree with
the serial one bit for bit, non-finite values and bad inputs are handled."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from twinloop.sim2real.asid.cem import (
    CEMConfig,
    CEMIteration,
    ProcessPoolEvaluator,
    RayEvaluator,
    SerialEvaluator,
    cem,
    make_evaluator,
)
from twinloop.sim2real.errors import TwinError

TRUE = np.array([4.0, 0.6])  # stiffness k (N/m), damping c (N s/m) of a unit mass
LOW = np.array([1.0, 0.05])
HIGH = np.array([10.0, 2.0])
FAST = CEMConfig(population=64, elites=8, iterations=25, seed=3)


def spring_trajectory(theta: np.ndarray, steps: int = 300, dt: float = 0.01) -> np.ndarray:
    """Positions of a damped unit mass on a spring (semi-implicit Euler), x0 = 1, v0 = 0."""
    k, c = float(theta[0]), float(theta[1])
    x, v = 1.0, 0.0
    out = np.empty(steps)
    for i in range(steps):
        v += dt * (-k * x - c * v)
        x += dt * v
        out[i] = x
    return out


_FACTORY_CALLS = 0  # per process: how often SpringFactory() ran here


@dataclass(frozen=True)
class SpringFactory:
    """Picklable objective factory: theta -> mean squared mismatch to the true trajectory.

    ``record_dir``: the factory leaves ``factory-<pid>-<n>`` per call (n counts calls in that
    process) and every objective call appends its pid to ``calls-<pid>.txt``.
    ``nan_below_k``: candidates with stiffness below it return NaN (a "diverged" simulation).
    """

    record_dir: str | None = None
    nan_below_k: float = -math.inf

    def __call__(self) -> Callable[[np.ndarray], float]:
        global _FACTORY_CALLS
        _FACTORY_CALLS += 1
        if self.record_dir is not None:
            Path(self.record_dir, f"factory-{os.getpid()}-{_FACTORY_CALLS}").touch()
        real = spring_trajectory(TRUE)

        def objective(theta: np.ndarray) -> float:
            if self.record_dir is not None:
                with Path(self.record_dir, f"calls-{os.getpid()}.txt").open("a") as f:
                    f.write(f"{os.getpid()}\n")
            if theta[0] < self.nan_below_k:
                return math.nan
            return float(np.mean((spring_trajectory(theta) - real) ** 2))

        return objective


def run_serial(config: CEMConfig = FAST, factory: SpringFactory | None = None):
    with SerialEvaluator(factory or SpringFactory()) as ev:
        return cem(ev, LOW, HIGH, config)


@pytest.fixture(autouse=True, scope="module")
def _stop_the_resource_tracker() -> Iterator[None]:
    """Spawned pools start multiprocessing's resource tracker, a child that lives as long as
    this process; the graph tests assert that the test process has no children, so stop it."""
    yield
    from multiprocessing import resource_tracker

    resource_tracker._resource_tracker._stop()  # private, but the only way to end it


def test_recovers_spring_parameters_within_2_percent() -> None:
    seen: list[int] = []
    with SerialEvaluator(SpringFactory()) as ev:
        result = cem(ev, LOW, HIGH, FAST, progress=lambda i, it: seen.append(i))
    rel = np.abs(result.mean - TRUE) / TRUE
    assert np.all(rel < 0.02), (result.mean, rel)
    assert np.all(np.abs(result.best_theta - TRUE) / TRUE < 0.02)
    assert seen == list(range(len(result.history)))
    assert all(isinstance(it, CEMIteration) for it in result.history)
    # the distribution narrows and the elites improve
    assert np.all(result.std < 0.05 * (HIGH - LOW))
    assert result.history[-1].elite_min < result.history[0].elite_min
    assert result.best_value == min(it.best_value for it in result.history)
    for it in result.history:
        assert it.elite_min <= it.elite_median
        assert np.all(it.mean >= LOW) and np.all(it.mean <= HIGH)
    # JSON log round-trips
    d = json.loads(json.dumps(result.to_dict()))
    assert len(d["history"]) == len(result.history)
    assert d["mean"] == [float(v) for v in result.mean]
    assert set(d["history"][0]) >= {
        "mean",
        "std",
        "elite_min",
        "elite_median",
        "best_value",
        "seconds",
    }


def test_deterministic_for_a_seed_and_seed_matters() -> None:
    config = CEMConfig(population=16, elites=4, iterations=4, seed=7)
    a, b = run_serial(config), run_serial(config)
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.std, b.std)
    c = run_serial(CEMConfig(population=16, elites=4, iterations=4, seed=8))
    assert not np.array_equal(a.mean, c.mean)


def test_init_mean_and_early_stop() -> None:
    config = CEMConfig(population=32, elites=4, iterations=200, min_std=0.01, seed=1)
    with SerialEvaluator(SpringFactory()) as ev:
        result = cem(ev, LOW, HIGH, config, init_mean=np.array([3.0, 0.5]))
    assert result.converged
    assert len(result.history) < 200
    assert np.all(result.std < 0.01 * (HIGH - LOW))
    with SerialEvaluator(SpringFactory()) as ev, pytest.raises(TwinError, match="init_mean"):
        cem(ev, LOW, HIGH, config, init_mean=np.array([11.0, 0.5]))


def test_smoothing_slows_the_update() -> None:
    plain = run_serial(CEMConfig(population=16, elites=4, iterations=1, seed=2))
    smooth = run_serial(CEMConfig(population=16, elites=4, iterations=1, seed=2, smoothing=0.5))
    centre, init_std = (LOW + HIGH) / 2, 0.5 * (HIGH - LOW)
    np.testing.assert_allclose(smooth.mean, 0.5 * centre + 0.5 * plain.mean)
    np.testing.assert_allclose(smooth.std, 0.5 * init_std + 0.5 * plain.std)


def test_process_pool_matches_serial_and_builds_once_per_worker(tmp_path: Path) -> None:
    config = CEMConfig(population=24, elites=4, iterations=4, seed=5)
    serial = run_serial(config)
    with ProcessPoolEvaluator(SpringFactory(record_dir=str(tmp_path)), workers=2) as ev:
        pooled = cem(ev, LOW, HIGH, config)
    np.testing.assert_array_equal(pooled.mean, serial.mean)
    np.testing.assert_array_equal(pooled.std, serial.std)
    np.testing.assert_array_equal(pooled.best_theta, serial.best_theta)
    assert [it.best_value for it in pooled.history] == [it.best_value for it in serial.history]
    factory_files = sorted(p.name for p in tmp_path.glob("factory-*"))
    factory_pids = {int(n.split("-")[1]) for n in factory_files}
    # two workers, each built its objective exactly once (its first call), none in this process
    assert len(factory_files) == 2, factory_files
    assert all(n.endswith("-1") for n in factory_files)
    assert len(factory_pids) == 2 and os.getpid() not in factory_pids
    call_pids = [int(line) for p in tmp_path.glob("calls-*.txt") for line in p.read_text().split()]
    assert len(call_pids) == config.population * len(pooled.history)
    # only workers evaluated (which takes which chunk is up to the pool), none in this process
    assert call_pids and set(call_pids) <= factory_pids


def test_make_evaluator_backends() -> None:
    with make_evaluator(SpringFactory(), workers=1, backend="process") as ev:
        assert isinstance(ev, SerialEvaluator)
    with make_evaluator(SpringFactory(), workers=4, backend="serial") as ev:
        assert isinstance(ev, SerialEvaluator)
    with pytest.raises(TwinError, match=r"unknown evaluator backend 'dask'.*'process'.*'ray'"):
        make_evaluator(SpringFactory(), workers=2, backend="dask")
    with pytest.raises(TwinError, match="workers"):
        make_evaluator(SpringFactory(), workers=0)
    with pytest.raises(TwinError, match="mp_context"):
        ProcessPoolEvaluator(SpringFactory(), workers=2, mp_context="fork")
    ev = SerialEvaluator(SpringFactory())
    ev.close()
    with pytest.raises(TwinError, match="closed"):
        ev.evaluate(np.ones((2, 2)))


def test_ray_matches_serial() -> None:
    ray = pytest.importorskip("ray")
    import sys

    # Ray workers may not have tests/ on sys.path: ship this module's factory by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    config = CEMConfig(population=16, elites=4, iterations=3, seed=5)
    serial = run_serial(config)
    with RayEvaluator(SpringFactory(), workers=2) as ev:
        result = cem(ev, LOW, HIGH, config)
    np.testing.assert_array_equal(result.mean, serial.mean)
    np.testing.assert_array_equal(result.std, serial.std)


def test_ray_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_ray(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(TwinError, match=r'pip install "twinloop\[ray\]"'):
        make_evaluator(SpringFactory(), workers=2, backend="ray")


def test_non_finite_values_are_never_elites(caplog: pytest.LogCaptureFixture) -> None:
    config = CEMConfig(population=32, elites=4, iterations=6, seed=4)
    # candidates with k < 5 are NaN: the optimum is pushed to the feasible region's edge (k >= 5)
    with caplog.at_level(logging.WARNING), SerialEvaluator(SpringFactory(nan_below_k=5.0)) as ev:
        result = cem(ev, LOW, HIGH, config)
    assert math.isfinite(result.best_value)
    assert result.best_theta[0] >= 5.0
    assert sum(it.non_finite for it in result.history) > 0
    assert all(math.isfinite(it.elite_median) for it in result.history)
    warnings = [r for r in caplog.records if "non-finite" in r.getMessage()]
    assert len(warnings) == 1  # logged once per run


def test_all_non_finite_is_an_error() -> None:
    with SerialEvaluator(SpringFactory(nan_below_k=100.0)) as ev:
        with pytest.raises(TwinError, match="non-finite"):
            cem(ev, LOW, HIGH, CEMConfig(population=8, elites=2, iterations=2))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"elites": 1}, "elites"),
        ({"elites": 64}, "elites"),
        ({"population": 4, "elites": 8}, "elites"),
        ({"iterations": 0}, "iterations"),
        ({"init_std": 0.0}, "init_std"),
        ({"init_std": math.nan}, "init_std"),
        ({"min_std": -0.1}, "min_std"),
        ({"min_std": 0.6}, "min_std"),
        ({"smoothing": 1.0}, "smoothing"),
        ({"smoothing": -0.1}, "smoothing"),
        ({"seed": -1}, "seed"),
        ({"population": 8.5}, "population"),
        ({"iterations": True}, "iterations"),
    ],
)
def test_bad_config(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(TwinError, match=f"CEMConfig.{name}"):
        CEMConfig(**kwargs)


@pytest.mark.parametrize(
    ("low", "high", "match"),
    [
        ([1.0, 2.0], [0.5, 3.0], r"low < high.*\[0\]"),
        ([1.0, 2.0], [1.0, 3.0], "low < high"),
        ([1.0, -np.inf], [2.0, 3.0], "finite"),
        ([1.0, 2.0], [2.0, np.nan], "finite"),
        ([1.0, 2.0], [2.0, 3.0, 4.0], "shape"),
        ([], [], "shape"),
    ],
)
def test_bad_bounds(low: list[float], high: list[float], match: str) -> None:
    with SerialEvaluator(SpringFactory()) as ev, pytest.raises(TwinError, match=match):
        cem(ev, np.array(low), np.array(high), FAST)
