"""Reward audit: how well a reward tracks the ground truth of a recorded twin dataset.

The twin recorder stores ``progress`` (the task's privileged dense reward in [0, 1]) and
``success`` (per frame). An audit takes the rewards of a model (run over the frames) or a reward
key already in the store and reports

* Pearson and Spearman correlation with progress, over all frames and per episode;
* false-positive / false-negative rates of the reward's success flags against the true flags,
  per frame and per episode (an episode counts as successful when any of its frames is: a
  reset-free runner stops at the first success flag);
* one PNG per episode (reward and progress over the steps, true success shaded, flagged
  success marked), a reward-vs-progress scatter, ``summary.json`` and ``summary.md``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .base import RewardBatch, RewardModel
from .errors import RewardError

__all__ = [
    "AuditConfig",
    "AuditReport",
    "EpisodeAudit",
    "EpisodeCurves",
    "FlagStats",
    "audit_curves",
    "correlations",
    "flag_stats",
    "plot_episode",
    "run_audit",
    "write_report",
]

log = logging.getLogger(__name__)

GROUND_TRUTH = ("progress", "success")
# Keys a reward model must not see: the ground truth it is judged against.
_HIDDEN_STATE = frozenset(GROUND_TRUTH)


@dataclass(frozen=True)
class AuditConfig:
    reward_key: str = ""  # audit the rewards stored under this key ("" = run the model)
    success_key: str = ""  # stored per-frame success flags of that reward ("" = none)
    success_threshold: float | None = None  # flags = reward >= this, replacing any other flags
    image_key: str = "image_color"  # frames fed to the reward model
    batch_size: int = 32  # frames per reward-model call
    plots: bool = True  # write the PNGs
    max_plots: int = 50  # episode PNGs for at most the first this-many episodes

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            msg = f"batch_size must be >= 1, got {self.batch_size}"
            raise RewardError(msg)
        if self.max_plots < 0:
            msg = f"max_plots must be >= 0, got {self.max_plots}"
            raise RewardError(msg)
        if self.success_threshold is not None and not math.isfinite(self.success_threshold):
            msg = f"success_threshold must be finite or None, got {self.success_threshold}"
            raise RewardError(msg)
        if self.success_key and not self.reward_key:
            msg = "success_key goes with reward_key (a model gives its own success flags)"
            raise RewardError(msg)


@dataclass(frozen=True)
class EpisodeCurves:
    """Per-frame arrays of one episode: the reward under audit and the ground truth."""

    index: int
    rewards: np.ndarray  # (T,) float
    progress: np.ndarray  # (T,) float, ground truth
    success: np.ndarray  # (T,) bool, ground truth
    flags: np.ndarray | None = None  # (T,) bool success flags of the reward, if it has any
    kind: str = ""  # recorder episode kind (expert, stall, noisy), if known

    def __post_init__(self) -> None:
        n = len(self.rewards)
        lengths = {"progress": len(self.progress), "success": len(self.success)}
        if self.flags is not None:
            lengths["flags"] = len(self.flags)
        bad = {k: v for k, v in lengths.items() if v != n}
        if bad:
            msg = f"episode {self.index}: {n} rewards but lengths {bad}"
            raise RewardError(msg)
        if n == 0:
            msg = f"episode {self.index} is empty"
            raise RewardError(msg)
        if not np.all(np.isfinite(self.rewards)):
            msg = f"episode {self.index}: rewards hold NaN or inf"
            raise RewardError(msg)


@dataclass(frozen=True)
class FlagStats:
    """Confusion counts of predicted vs true success and the two error rates."""

    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def fp_rate(self) -> float | None:
        """FP / (FP + TN): share of truly unsuccessful items flagged as success."""
        return self.fp / (self.fp + self.tn) if self.fp + self.tn else None

    @property
    def fn_rate(self) -> float | None:
        """FN / (FN + TP): share of truly successful items not flagged."""
        return self.fn / (self.fn + self.tp) if self.fn + self.tp else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"fp_rate": self.fp_rate, "fn_rate": self.fn_rate}


@dataclass(frozen=True)
class EpisodeAudit:
    index: int
    kind: str
    steps: int
    pearson: float | None  # None when reward or progress is constant over the episode
    spearman: float | None
    reward_min: float
    reward_max: float
    true_success: bool  # any frame truly successful
    flagged_success: bool | None  # any frame flagged (None: the reward has no flags)
    first_true_success: int | None  # step index
    first_flagged_success: int | None


@dataclass(frozen=True)
class AuditReport:
    source: str  # what was audited ("key:reward", "checkpoint:...", "clip")
    dataset: str
    n_episodes: int
    n_frames: int
    pearson: float | None  # over all frames of all episodes
    spearman: float | None
    episode_pearson_mean: float | None  # mean over episodes with a defined correlation
    episode_spearman_mean: float | None
    frame_flags: FlagStats | None  # None when the reward gives no success flags
    episode_flags: FlagStats | None
    episodes: list[EpisodeAudit] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["frame_flags"] = self.frame_flags.to_dict() if self.frame_flags else None
        out["episode_flags"] = self.episode_flags.to_dict() if self.episode_flags else None
        return out


# ---------------------------------------------------------------------- metrics
def correlations(rewards: np.ndarray, progress: np.ndarray) -> tuple[float | None, float | None]:
    """(Pearson, Spearman) of rewards vs progress; None where either series is constant."""
    from scipy import stats

    r = np.asarray(rewards, dtype=np.float64).ravel()
    p = np.asarray(progress, dtype=np.float64).ravel()
    if len(r) != len(p):
        msg = f"{len(r)} rewards but {len(p)} progress values"
        raise RewardError(msg)
    if len(r) < 2 or np.ptp(r) == 0.0 or np.ptp(p) == 0.0:
        return None, None
    pearson = float(stats.pearsonr(r, p)[0])
    spearman = float(stats.spearmanr(r, p)[0])
    return (
        pearson if math.isfinite(pearson) else None,
        spearman if math.isfinite(spearman) else None,
    )


def flag_stats(predicted: np.ndarray, truth: np.ndarray) -> FlagStats:
    """Confusion counts of boolean ``predicted`` vs ``truth`` (same length)."""
    pred = np.asarray(predicted, dtype=bool).ravel()
    true = np.asarray(truth, dtype=bool).ravel()
    if pred.shape != true.shape:
        msg = f"{len(pred)} predicted flags but {len(true)} true flags"
        raise RewardError(msg)
    return FlagStats(
        tp=int(np.sum(pred & true)),
        fp=int(np.sum(pred & ~true)),
        tn=int(np.sum(~pred & ~true)),
        fn=int(np.sum(~pred & true)),
    )


def _first(flags: np.ndarray) -> int | None:
    hits = np.flatnonzero(flags)
    return int(hits[0]) if len(hits) else None


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def audit_curves(
    curves: Sequence[EpisodeCurves], *, source: str = "", dataset: str = ""
) -> AuditReport:
    """The metrics of a set of episodes (pure: no files)."""
    if not curves:
        msg = "nothing to audit: no episodes"
        raise RewardError(msg)
    has_flags = [c.flags is not None for c in curves]
    if any(has_flags) and not all(has_flags):
        msg = "either every episode has success flags or none has"
        raise RewardError(msg)
    episodes = []
    for c in curves:
        pearson, spearman = correlations(c.rewards, c.progress)
        episodes.append(
            EpisodeAudit(
                index=c.index,
                kind=c.kind,
                steps=len(c.rewards),
                pearson=pearson,
                spearman=spearman,
                reward_min=float(np.min(c.rewards)),
                reward_max=float(np.max(c.rewards)),
                true_success=bool(np.any(c.success)),
                flagged_success=None if c.flags is None else bool(np.any(c.flags)),
                first_true_success=_first(c.success),
                first_flagged_success=None if c.flags is None else _first(c.flags),
            )
        )
    pearson, spearman = correlations(
        np.concatenate([c.rewards for c in curves]), np.concatenate([c.progress for c in curves])
    )
    frame_flags = episode_flags = None
    if all(has_flags):
        frame_flags = flag_stats(
            np.concatenate([np.asarray(c.flags) for c in curves]),
            np.concatenate([c.success for c in curves]),
        )
        episode_flags = flag_stats(
            np.array([e.flagged_success for e in episodes], dtype=bool),
            np.array([e.true_success for e in episodes], dtype=bool),
        )
    return AuditReport(
        source=source,
        dataset=dataset,
        n_episodes=len(curves),
        n_frames=int(sum(len(c.rewards) for c in curves)),
        pearson=pearson,
        spearman=spearman,
        episode_pearson_mean=_mean([e.pearson for e in episodes]),
        episode_spearman_mean=_mean([e.spearman for e in episodes]),
        frame_flags=frame_flags,
        episode_flags=episode_flags,
        episodes=episodes,
    )


# ---------------------------------------------------------------------- reading the store
def _model_state(episode: Mapping[str, np.ndarray], image_key: str) -> dict[str, np.ndarray]:
    """What a reward model may see besides the frames: everything but images and ground truth."""
    state = {
        k: v
        for k, v in episode.items()
        if k != image_key and k not in _HIDDEN_STATE and not k.startswith("image_")
    }
    if "depth_color" in state:
        state["depth"] = state.pop("depth_color")
    return state


def _episode_rewards(
    store: Any,
    i: int,
    model: RewardModel | None,
    config: AuditConfig,
    task: str,
) -> tuple[np.ndarray, np.ndarray | None]:
    if model is None:
        keys = [config.reward_key] + ([config.success_key] if config.success_key else [])
        data = store.get_episode(i, keys)
        rewards = np.asarray(data[config.reward_key], dtype=np.float64)
        if rewards.ndim > 1:
            if rewards[0].size != 1:
                msg = f"reward key {config.reward_key!r} has {rewards.shape[1:]} values per row, need 1"
                raise RewardError(msg)
            rewards = rewards.reshape(len(rewards))
        flags = (
            np.asarray(data[config.success_key], dtype=bool).reshape(-1)
            if config.success_key
            else None
        )
        return rewards, flags
    skip = {"action"}
    keys = [
        k
        for k in store.keys
        if k not in skip and (k == config.image_key or not k.startswith("image_"))
    ]
    episode = store.get_episode(i, keys)
    frames = episode[config.image_key]
    state = _model_state(episode, config.image_key)
    rewards_parts, flag_parts = [], []
    for start in range(0, len(frames), config.batch_size):
        sl = slice(start, start + config.batch_size)
        batch = RewardBatch(frames[sl], {k: v[sl] for k, v in state.items()}, task=task)
        out = model(batch)
        rewards_parts.append(np.asarray(out.rewards, dtype=np.float64).reshape(-1))
        flag_parts.append(np.asarray(out.success, dtype=bool).reshape(-1))
    return np.concatenate(rewards_parts), np.concatenate(flag_parts)


def _check_store(store: Any, model: RewardModel | None, config: AuditConfig) -> None:
    missing = [k for k in GROUND_TRUTH if k not in store.keys]
    if missing:
        msg = (
            f"{store.path} has no ground truth {missing}: audit a dataset recorded from the twin "
            "(`twinloop twin record` / sim2real.record.record_twin_dataset)"
        )
        raise RewardError(msg)
    if model is None and not config.reward_key:
        msg = "give a reward model or a stored reward key to audit"
        raise RewardError(msg)
    if model is not None and config.reward_key:
        msg = f"give a reward model or a stored reward key ({config.reward_key!r}), not both"
        raise RewardError(msg)
    wanted = [config.reward_key, config.success_key] if model is None else [config.image_key]
    absent = [k for k in wanted if k and k not in store.keys]
    if absent:
        msg = f"{store.path} has no key {absent}; it has {store.keys}"
        raise RewardError(msg)
    if store.n_episodes == 0:
        msg = f"{store.path} holds no episodes"
        raise RewardError(msg)


def _progress_bar(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="episode", desc="reward audit", disable=not enabled)


def run_audit(
    dataset: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    model: RewardModel | None = None,
    config: AuditConfig | None = None,
    source: str = "",
    progress: bool = False,
) -> AuditReport:
    """Audit ``model`` (or ``config.reward_key``) on ``dataset``; write the report to ``out_dir``.

    ``progress``: a tqdm bar over the episodes (CLIs).
    """
    from twinloop.datasets.store import EpisodeStore

    config = config or AuditConfig()
    try:
        store = EpisodeStore.open(dataset, mode="r")
    except (ValueError, OSError) as err:  # DatasetError is a ValueError
        msg = f"cannot open dataset {dataset}: {err}"
        raise RewardError(msg) from err
    curves = []
    with store:
        _check_store(store, model, config)
        task = str(store.attrs.get("task", ""))
        with _progress_bar(store.n_episodes, progress) as bar:
            for i in range(store.n_episodes):
                rewards, flags = _episode_rewards(store, i, model, config, task)
                truth = store.get_episode(i, GROUND_TRUTH)
                if config.success_threshold is not None:
                    flags = rewards >= config.success_threshold
                curves.append(
                    EpisodeCurves(
                        index=i,
                        rewards=rewards,
                        progress=np.asarray(truth["progress"], dtype=np.float64).reshape(-1),
                        success=np.asarray(truth["success"], dtype=bool).reshape(-1),
                        flags=flags,
                        kind=str(store.episode_meta(i).get("kind", "")),
                    )
                )
                bar.update(1)
    if not source:
        source = f"key:{config.reward_key}" if model is None else f"model:{model.config.type}"
    report = audit_curves(curves, source=source, dataset=str(dataset))
    write_report(report, curves, out_dir, config)
    return report


# ---------------------------------------------------------------------- writing
def plot_episode(curves: EpisodeCurves, path: str | os.PathLike[str], title: str = "") -> Path:
    """Reward and progress over the steps; true success shaded green, flagged success marked."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, Agg for PNG

    steps = np.arange(len(curves.rewards))
    fig = Figure(figsize=(7, 3.2), dpi=90)
    ax = fig.subplots()
    for s in np.flatnonzero(curves.success):
        ax.axvspan(s - 0.5, s + 0.5, color="tab:green", alpha=0.15, lw=0)
    ax.plot(steps, curves.rewards, color="tab:blue", label="reward")
    ax.set_xlabel("step")
    ax.set_ylabel("reward", color="tab:blue")
    twin = ax.twinx()
    twin.plot(steps, curves.progress, color="tab:orange", ls="--", label="true progress")
    twin.set_ylabel("true progress", color="tab:orange")
    twin.set_ylim(-0.05, 1.05)
    if curves.flags is not None and np.any(curves.flags):
        hits = np.flatnonzero(curves.flags)
        twin.scatter(
            hits,
            np.full(len(hits), 1.02),
            marker="|",
            color="tab:red",
            s=60,
            label="flagged success",
        )
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper left", fontsize=7)
    ax.set_title(title or f"episode {curves.index}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def _plot_scatter(curves: Sequence[EpisodeCurves], path: Path, report: AuditReport) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global backend state, Agg for PNG

    fig = Figure(figsize=(4.5, 4), dpi=90)
    ax = fig.subplots()
    for c in curves:
        ax.scatter(
            c.progress,
            c.rewards,
            s=6,
            alpha=0.6,
            label=f"ep {c.index}" if len(curves) <= 8 else None,
        )
    ax.set_xlabel("true progress")
    ax.set_ylabel("reward")
    ax.set_title(f"Spearman {_fmt(report.spearman)}, Pearson {_fmt(report.pearson)}", fontsize=9)
    if len(curves) <= 8:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def _fmt(value: float | bool | int | None, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def _markdown(report: AuditReport) -> str:
    lines = [
        f"# Reward audit: {report.source}",
        "",
        f"Dataset `{report.dataset}`: {report.n_episodes} episodes, {report.n_frames} frames.",
        "",
        "| metric | value |",
        "|---|---|",
        f"| Pearson (all frames) | {_fmt(report.pearson)} |",
        f"| Spearman (all frames) | {_fmt(report.spearman)} |",
        f"| mean per-episode Pearson | {_fmt(report.episode_pearson_mean)} |",
        f"| mean per-episode Spearman | {_fmt(report.episode_spearman_mean)} |",
    ]
    for name, stats in (("frame", report.frame_flags), ("episode", report.episode_flags)):
        if stats is not None:
            lines.append(
                f"| {name} FP rate | {_fmt(stats.fp_rate)} ({stats.fp}/{stats.fp + stats.tn}) |"
            )
            lines.append(
                f"| {name} FN rate | {_fmt(stats.fn_rate)} ({stats.fn}/{stats.fn + stats.tp}) |"
            )
    lines += [
        "",
        "| episode | kind | steps | Pearson | Spearman | true success | flagged success |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in report.episodes:
        lines.append(
            f"| {e.index} | {e.kind or '-'} | {e.steps} | {_fmt(e.pearson)} | {_fmt(e.spearman)} "
            f"| {_fmt(e.true_success)} | {_fmt(e.flagged_success)} |"
        )
    return "\n".join(lines) + "\n"


def write_report(
    report: AuditReport,
    curves: Sequence[EpisodeCurves],
    out_dir: str | os.PathLike[str],
    config: AuditConfig | None = None,
) -> Path:
    """``summary.json``, ``summary.md`` and (``config.plots``) the PNGs under ``out_dir``."""
    config = config or AuditConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    (out / "summary.md").write_text(_markdown(report))
    if config.plots:
        by_index = {e.index: e for e in report.episodes}
        for c in curves[: config.max_plots]:
            e = by_index[c.index]
            title = f"episode {c.index} {c.kind}  Spearman {_fmt(e.spearman)}"
            plot_episode(c, out / f"episode_{c.index:04d}.png", title)
        _plot_scatter(curves, out / "scatter.png", report)
    log.info(
        "reward audit of %s: Spearman %s, Pearson %s over %d frames -> %s",
        report.source,
        _fmt(report.spearman),
        _fmt(report.pearson),
        report.n_frames,
        out,
    )
    return out
