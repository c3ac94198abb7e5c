"""Training loops: offline pre-training on a buffer, online fine-tuning in the twin.

Both loops write into ``out_dir``: ``metrics.csv`` (long format: step, phase, key, value),
``evals.json`` (the evaluation history), tensorboard scalars when the ``tensorboard`` package is
installed, and ``checkpoint.safetensors`` (:func:`~twinloop.policy.base.save_checkpoint`) whose
extra state holds the step, the torch/numpy/python RNG states and the sampler's RNG state, so
``train_offline(..., resume=True)`` continues to exactly the weights of an uninterrupted run.
The online loop also draws ``learning_curve.png`` (success rate vs steps, offline then online).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from .base import Algorithm, load_checkpoint, save_checkpoint
from .common import Batch
from .errors import PolicyError
from .evaluate import EvalEnv, EvalResult, act_np, evaluate

__all__ = [
    "CHECKPOINT",
    "EvalPoint",
    "OfflineConfig",
    "OnlineConfig",
    "TrainLog",
    "load_evals",
    "normalize_states",
    "plot_learning_curve",
    "train_offline",
    "train_online",
    "write_summary",
]

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.safetensors"
EVALS = "evals.json"
METRICS = "metrics.csv"
CURVE = "learning_curve.png"


class Sampler(Protocol):
    def sample(self, n: int) -> Batch: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


def _positive(name: str, value: int, *, zero_ok: bool = False) -> None:
    if value < 0 or (value == 0 and not zero_ok):
        bound = ">= 0" if zero_ok else ">= 1"
        msg = f"{name} must be {bound}, got {value}"
        raise PolicyError(msg)


@dataclass(frozen=True)
class OfflineConfig:
    steps: int = 100_000  # gradient updates in total (a resumed run counts from its checkpoint)
    eval_every: int = 10_000  # evaluate in the env every N updates (0: only at the end)
    eval_episodes: int = 10  # episodes per evaluation
    eval_seed: int = 1_000_000  # episode i of every evaluation resets the twin with eval_seed + i
    checkpoint_every: int = 10_000  # write the checkpoint every N updates (and at the end)
    log_every: int = 100  # write losses to metrics.csv / tensorboard every N updates
    seed: int = 0  # torch / numpy / python RNG seed of a fresh run
    progress: bool = True  # show a tqdm progress bar
    normalize_states: bool = True  # standardise obs["state"] with the data's mean/std (CORL)

    def __post_init__(self) -> None:
        _positive("steps", self.steps)
        _positive("eval_every", self.eval_every, zero_ok=True)
        _positive("eval_episodes", self.eval_episodes)
        _positive("checkpoint_every", self.checkpoint_every)
        _positive("log_every", self.log_every)


@dataclass(frozen=True)
class OnlineConfig:
    online_steps: int = 30_000  # environment steps
    utd: int = 1  # gradient updates per env step (SAC/RLPD: its config's utd, one big batch)
    offline_fraction: float = 0.5  # share of each batch from the offline data (RLPD/Cal-QL: 0.5)
    start_after: int = 0  # warm-up env steps before the first update
    warmup: str = "policy"  # actions during warm-up: "policy" (stochastic) or "random" uniform
    buffer_capacity: int = 1_000_000  # online replay capacity, transitions
    eval_every: int = 5_000  # evaluate every N env steps (at an episode end; 0: only at the ends)
    eval_episodes: int = 10  # episodes per evaluation
    eval_seed: int = 1_000_000  # episode i of every evaluation resets with eval_seed + i
    checkpoint_every: int = 10_000  # write the checkpoint every N env steps (and at the end)
    log_every: int = 100  # write losses every N env steps
    seed: int = 0  # RNG seed (torch / numpy / python, warm-up actions, training resets)
    progress: bool = True  # show a tqdm progress bar
    plot: bool = True  # write learning_curve.png at every evaluation

    def __post_init__(self) -> None:
        _positive("online_steps", self.online_steps)
        _positive("utd", self.utd)
        _positive("start_after", self.start_after, zero_ok=True)
        _positive("buffer_capacity", self.buffer_capacity)
        _positive("eval_every", self.eval_every, zero_ok=True)
        _positive("eval_episodes", self.eval_episodes)
        _positive("checkpoint_every", self.checkpoint_every)
        _positive("log_every", self.log_every)
        if not 0.0 <= self.offline_fraction <= 1.0:
            msg = f"offline_fraction must be in [0, 1], got {self.offline_fraction}"
            raise PolicyError(msg)
        if self.warmup not in ("policy", "random"):
            msg = f"warmup must be 'policy' or 'random', got {self.warmup!r}"
            raise PolicyError(msg)


@dataclass(frozen=True)
class EvalPoint:
    step: int  # updates (offline) or env steps (online) within its phase
    phase: str  # "offline" or "online"
    success_rate: float
    mean_return: float
    mean_length: float

    @classmethod
    def of(cls, step: int, phase: str, result: EvalResult) -> EvalPoint:
        return cls(step, phase, result.success_rate, result.mean_return, result.mean_length)


@dataclass
class TrainLog:
    steps: int  # steps done (updates offline, env steps online)
    phase: str  # "offline" or "online"
    evals: list[EvalPoint] = field(default_factory=list)  # this run's history (with earlier)
    metrics: dict[str, float] = field(default_factory=dict)  # the last logged losses
    wall_time: float = 0.0  # seconds this call ran
    checkpoint: Path | None = None
    curve: Path | None = None
    updates: int = 0  # gradient updates this call made

    @property
    def final_success(self) -> float | None:
        own = [e for e in self.evals if e.phase == self.phase]
        return own[-1].success_rate if own else None


# ----- outputs ---------------------------------------------------------------------------------
class _Recorder:
    """metrics.csv (always) + tensorboard (when installed) + evals.json."""

    def __init__(self, out_dir: Path, phase: str, *, keep_until: int | None) -> None:
        self.out_dir = out_dir
        self.phase = phase
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / METRICS
        rows: list[list[str]] = []
        if keep_until is not None and path.exists():  # resume: drop rows past the checkpoint
            with path.open(newline="") as f:
                rows = [r for r in csv.reader(f)][1:]
            rows = [r for r in rows if r[1] != phase or int(r[0]) <= keep_until]
        elif path.exists() and phase == "online":
            with path.open(newline="") as f:  # keep offline rows of the same directory
                rows = [r for r in list(csv.reader(f))[1:] if r[1] != phase]
        self._file = path.open("w", newline="")
        self._csv = csv.writer(self._file)
        self._csv.writerow(["step", "phase", "key", "value"])
        self._csv.writerows(rows)
        self._file.flush()
        self._tb: Any = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(out_dir / "tensorboard"))
        except ImportError:
            log.info("tensorboard is not installed: scalars go to %s only", path)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self._csv.writerow([step, self.phase, key, f"{float(value):.6g}"])
            if self._tb is not None:
                self._tb.add_scalar(f"{self.phase}/{key}", float(value), step)
        self._file.flush()

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def load_evals(out_dir: str | Path) -> list[EvalPoint]:
    """The evaluation history a training run wrote into ``out_dir`` (empty if none)."""
    path = Path(out_dir) / EVALS
    if not path.exists():
        return []
    try:
        return [EvalPoint(**e) for e in json.loads(path.read_text())]
    except (json.JSONDecodeError, TypeError) as err:
        msg = f"{path} is not an evaluation history: {err}"
        raise PolicyError(msg) from err


def _save_evals(out_dir: Path, evals: Sequence[EvalPoint]) -> None:
    (out_dir / EVALS).write_text(json.dumps([dataclasses.asdict(e) for e in evals], indent=1))


def plot_learning_curve(
    evals: Sequence[EvalPoint], path: str | Path, *, title: str = "success rate"
) -> Path:
    """Success rate vs steps: offline updates first, then online env steps after them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    offline = [e for e in evals if e.phase == "offline"]
    online = [e for e in evals if e.phase == "online"]
    shift = max((e.step for e in offline), default=0)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if offline:
        ax.plot([e.step for e in offline], [e.success_rate for e in offline], "o-", label="offline")
    if online:
        xs = [shift + e.step for e in online]
        ax.plot(xs, [e.success_rate for e in online], "s-", label="online")
    if offline and online:
        ax.axvline(shift, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("offline updates, then online env steps")
    ax.set_ylabel("success rate")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_summary(out_dir: str | Path, log_: TrainLog, config: Mapping[str, Any]) -> Path:
    """``out_dir/summary.json``: final success, steps, wall time and the run's config."""
    path = Path(out_dir) / "summary.json"
    summary = {
        "phase": log_.phase,
        "final_success": log_.final_success,
        "steps": log_.steps,
        "updates": log_.updates,
        "wall_time_s": round(log_.wall_time, 3),
        "checkpoint": str(log_.checkpoint) if log_.checkpoint else None,
        "learning_curve": str(log_.curve) if log_.curve else None,
        "evals": [dataclasses.asdict(e) for e in log_.evals],
        "last_metrics": log_.metrics,
        "config": config,
    }
    path.write_text(json.dumps(summary, indent=2, default=str))
    return path


# ----- RNG state -------------------------------------------------------------------------------
def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, np.asarray(keys, dtype=np.int64), int(pos), int(has_gauss), float(cached)],
        "python": json.dumps(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.as_tensor(s) for s in state["cuda"]])


def _sampler_rng(sampler: Any) -> dict[str, Any]:
    """The sampler's RNG state only (a replay buffer's contents stay out of the checkpoint)."""
    if hasattr(sampler, "rng_state"):
        return {"rng": sampler.rng_state()}
    state = sampler.state_dict()
    rng = {k: v for k, v in state.items() if "rng" in k}
    if not rng:
        msg = f"{type(sampler).__name__}.state_dict() has no RNG entry (keys {sorted(state)})"
        raise PolicyError(msg)
    return rng


def _load_sampler_rng(sampler: Any, rng: Mapping[str, Any]) -> None:
    if hasattr(sampler, "set_rng_state"):
        sampler.set_rng_state(str(rng["rng"]))
        return
    state = sampler.state_dict()
    state.update(rng)
    sampler.load_state_dict(state)


def _resume(algo: Algorithm, path: Path) -> dict[str, Any]:
    """Load ``path`` into ``algo`` (same type, spec and config); returns the extra state."""
    saved, extra = load_checkpoint(
        path, device=algo.device, expect_type=algo.config.type, expect_spec=algo.spec
    )
    if saved.config != algo.config:
        diff = {
            f.name: (getattr(saved.config, f.name), getattr(algo.config, f.name))
            for f in dataclasses.fields(algo.config)
            if getattr(saved.config, f.name) != getattr(algo.config, f.name)
        }
        msg = f"cannot resume {path}: the algorithm config differs (saved, given): {diff}"
        raise PolicyError(msg)
    algo.load_state_dict(saved.state_dict())
    return extra


def _postfix(metrics: Mapping[str, float], success: float | None) -> dict[str, str]:
    shown = {k: f"{v:.3g}" for k, v in metrics.items() if "loss" in k}
    out = dict(list(shown.items())[:2])
    if success is not None:
        out["success"] = f"{success:.0%}"
    return out


def _progress(total: int, initial: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not enabled)


# ----- offline ---------------------------------------------------------------------------------
def normalize_states(algo: Algorithm, buffer: Any) -> bool:
    """Set the algorithm's state normalisation from ``buffer``'s data; False if not possible.

    The statistics are buffers of the encoder, so checkpoints (and the policy node) carry them.
    """
    encoder = getattr(algo, "encoder", None)
    stats = getattr(buffer, "state_stats", None)
    if encoder is None or stats is None or not algo.spec.state_dim or len(buffer) == 0:
        return False
    mean, std = stats()
    encoder.set_state_normalization(mean, std)
    log.info("state normalisation from %d transitions: std %s", len(buffer), std.numpy().round(3))
    return True


def train_offline(
    algo: Algorithm,
    buffer: Sampler,
    cfg: OfflineConfig,
    *,
    out_dir: str | Path,
    env: EvalEnv | None = None,
    resume: bool = False,
) -> TrainLog:
    """``cfg.steps`` updates on minibatches of ``algo.config.batch_size`` from ``buffer``.

    Evaluates in ``env`` (if given) every ``eval_every`` updates and at the end; with
    ``resume=True`` continues from ``out_dir/checkpoint.safetensors`` exactly.
    """
    out = Path(out_dir)
    ckpt = out / CHECKPOINT
    start = 0
    evals: list[EvalPoint] = []
    if resume:
        if not ckpt.exists():
            msg = f"--resume: no checkpoint at {ckpt}"
            raise PolicyError(msg)
        extra = _resume(algo, ckpt)
        if extra.get("phase", "offline") != "offline":
            msg = f"{ckpt} is from {extra.get('phase')!r} training, not offline"
            raise PolicyError(msg)
        start = int(extra["step"])
        _set_rng_state(extra["rng"])
        _load_sampler_rng(buffer, extra["sampler_rng"])
        evals = [e for e in load_evals(out) if e.phase == "offline" and e.step <= start]
        log.info("resuming offline training at step %d of %d", start, cfg.steps)
    else:
        _seed_all(cfg.seed)
        if cfg.normalize_states:
            normalize_states(algo, buffer)
    if start > cfg.steps:
        msg = f"the checkpoint is at step {start}, past steps={cfg.steps}"
        raise PolicyError(msg)
    recorder = _Recorder(out, "offline", keep_until=start if resume else None)
    batch_size = int(algo.config.batch_size)
    t0 = time.perf_counter()
    metrics: dict[str, float] = {}
    success = evals[-1].success_rate if evals else None
    bar = _progress(cfg.steps, start, f"offline {algo.config.type}", cfg.progress)

    def save(step: int) -> None:
        extra = {
            "phase": "offline",
            "step": step,
            "rng": _rng_state(),
            "sampler_rng": _sampler_rng(buffer),
        }
        save_checkpoint(algo, ckpt, extra=extra)

    try:
        for step in range(start + 1, cfg.steps + 1):
            metrics = algo.update(buffer.sample(batch_size).to(algo.device))
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                recorder.scalars(step, metrics)
                bar.set_postfix(_postfix(metrics, success))
            if env is not None and (
                (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps
            ):
                result = evaluate(algo, env, cfg.eval_episodes, seed=cfg.eval_seed)
                success = result.success_rate
                evals.append(EvalPoint.of(step, "offline", result))
                recorder.scalars(step, {"eval/success_rate": success,
                                        "eval/return": result.mean_return})  # fmt: skip
                _save_evals(out, evals)
                bar.set_postfix(_postfix(metrics, success))
                log.info("offline step %d: success %.0f%%", step, 100 * success)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                save(step)
    finally:
        bar.close()
        recorder.close()
    return TrainLog(
        steps=cfg.steps,
        phase="offline",
        evals=evals,
        metrics=metrics,
        wall_time=time.perf_counter() - t0,
        checkpoint=ckpt,
        updates=cfg.steps - start,
    )


# ----- online ----------------------------------------------------------------------------------
class _Episode:
    """Transitions of the running episode, turned into one add_episode call when it ends."""

    def __init__(self, obs: Mapping[str, np.ndarray]) -> None:
        self.states = [np.asarray(obs["state"], dtype=np.float32)]
        self.images = [obs["image"]] if "image" in obs else None
        self.actions: list[np.ndarray] = []
        self.rewards: list[float] = []

    def add(self, action: np.ndarray, reward: float, next_obs: Mapping[str, np.ndarray]) -> None:
        self.actions.append(np.asarray(action, dtype=np.float32))
        self.rewards.append(float(reward))
        self.states.append(np.asarray(next_obs["state"], dtype=np.float32))
        if self.images is not None:
            self.images.append(next_obs["image"])

    def flush(self, buffer: Any, *, terminated: bool, gamma: float) -> None:
        buffer.add_episode(
            np.stack(self.states),
            np.stack(self.actions),
            np.asarray(self.rewards, dtype=np.float32),
            terminated=terminated,
            images=np.stack(self.images) if self.images is not None else None,
            gamma=gamma,
        )


def _updates(algo: Algorithm, sampler: Sampler, utd: int) -> Iterator[dict[str, float]]:
    """One env step's worth of updates: SAC takes utd*batch rows at once, others utd updates."""
    batch_size = int(algo.config.batch_size)
    algo_utd = getattr(algo.config, "utd", None)
    if algo_utd is not None:
        yield algo.update(sampler.sample(int(algo_utd) * batch_size).to(algo.device))
        return
    for _ in range(utd):
        yield algo.update(sampler.sample(batch_size).to(algo.device))


def train_online(
    algo: Algorithm,
    offline: Any | None,
    env: Any,
    cfg: OnlineConfig,
    *,
    out_dir: str | Path,
    history: Sequence[EvalPoint] = (),
) -> TrainLog:
    """Fine-tune ``algo`` online in ``env`` for ``cfg.online_steps`` env steps.

    Batches mix ``offline`` (a ReplayBuffer, or None) and the online buffer by
    ``offline_fraction`` (MixedSampler); episodes enter the online buffer when they end.
    Algorithms with ``set_online`` (Cal-QL) are switched to online mode; an algorithm whose
    config has ``utd`` (SAC/RLPD) gets one batch of ``utd * batch_size`` rows per env step and
    must agree with ``cfg.utd``. ``history``: earlier evaluations (the offline run's), drawn
    first in the learning curve.
    """
    from .buffers import MixedSampler, ReplayBuffer

    algo_utd = getattr(algo.config, "utd", None)
    if algo_utd is not None and int(algo_utd) != cfg.utd:
        msg = (
            f"{algo.config.type} takes utd from its config ({algo_utd}); OnlineConfig.utd is "
            f"{cfg.utd}: set both to the same value"
        )
        raise PolicyError(msg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _seed_all(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gamma = float(algo.config.gamma)
    online = ReplayBuffer(
        cfg.buffer_capacity,
        int(algo.spec.state_dim),
        int(algo.spec.action_dim),
        int(algo.spec.image_size),
        device=algo.device,
        seed=cfg.seed,
    )
    sampler: Sampler = (
        MixedSampler(offline, online, cfg.offline_fraction, seed=cfg.seed)
        if offline is not None and cfg.offline_fraction > 0
        else online
    )
    set_online = getattr(algo, "set_online", None)
    if callable(set_online):
        set_online(True)
    recorder = _Recorder(out, "online", keep_until=None)
    evals = list(history)
    ckpt = out / CHECKPOINT
    curve = out / CURVE if cfg.plot else None
    metrics: dict[str, float] = {}
    success: float | None = None
    updates = episodes = 0
    t0 = time.perf_counter()

    def run_eval(step: int) -> None:
        nonlocal success
        result = evaluate(algo, env, cfg.eval_episodes, seed=cfg.eval_seed)
        success = result.success_rate
        evals.append(EvalPoint.of(step, "online", result))
        recorder.scalars(step, {"eval/success_rate": success, "eval/return": result.mean_return})
        _save_evals(out, evals)
        if curve is not None:
            plot_learning_curve(evals, curve, title=f"{algo.config.type}: success rate")
        log.info("online step %d: success %.0f%%", step, 100 * success)

    def save(step: int) -> None:
        extra = {"phase": "online", "step": step, "rng": _rng_state(), "episodes": episodes}
        save_checkpoint(algo, ckpt, extra=extra)

    run_eval(0)  # where offline training left the policy (shows any collapse at the start)
    bar = _progress(cfg.online_steps, 0, f"online {algo.config.type}", cfg.progress)
    bar.set_postfix(_postfix(metrics, success))
    obs = env.reset(seed=cfg.seed * 100_003)
    episode = _Episode(obs)
    eval_due = False
    ep_return = 0.0
    try:
        for step in range(1, cfg.online_steps + 1):
            if step <= cfg.start_after and cfg.warmup == "random":
                action = rng.uniform(-1.0, 1.0, int(algo.spec.action_dim)).astype(np.float32)
            else:
                action = act_np(algo, obs, deterministic=False)
            obs, reward, terminated, truncated, info = env.step(action)
            episode.add(action, reward, obs)
            ep_return += reward
            if terminated or truncated:
                episode.flush(online, terminated=bool(terminated), gamma=gamma)
                episodes += 1
                recorder.scalars(step, {"train/episode_return": ep_return,
                                        "train/episode_success": float(info["success"])})  # fmt: skip
                if eval_due:
                    run_eval(step)
                    eval_due = False
                obs = env.reset(seed=cfg.seed * 100_003 + episodes)
                episode, ep_return = _Episode(obs), 0.0
            if step > cfg.start_after and (offline is not None or len(online) > 0):
                for update_metrics in _updates(algo, sampler, cfg.utd):
                    metrics = update_metrics
                    updates += 1
            if step % cfg.log_every == 0 and metrics:
                recorder.scalars(step, metrics)
            bar.update(1)
            bar.set_postfix(_postfix(metrics, success), refresh=False)
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.online_steps:
                eval_due = True  # at the end of the running episode
            if step % cfg.checkpoint_every == 0:
                save(step)
        run_eval(cfg.online_steps)
        save(cfg.online_steps)
    finally:
        bar.close()
        recorder.close()
    return TrainLog(
        steps=cfg.online_steps,
        phase="online",
        evals=evals,
        metrics=metrics,
        wall_time=time.perf_counter() - t0,
        checkpoint=ckpt,
        curve=curve,
        updates=updates,
    )
