"""RL-VLM-F preference reward: a Bradley-Terry ensemble of small image nets trained on VLM labels.

A VLM compares two frames of the same task and says which one is closer to the goal (see
:mod:`.labeling`). Each of the ``ensemble_size`` nets maps one frame to a scalar ``r``; the
probability that frame ``a`` is preferred over frame ``b`` is ``sigmoid(r_a - r_b)``
(Bradley-Terry) and the nets minimise the cross-entropy against the labels. Every member sees
its own bootstrap resample of the pairs in its own order and stops early once its training
accuracy passes ``early_stop_accuracy`` (as in PEBBLE / RL-VLM-F). After training each member's
output is standardised over the training frames, so the ensemble mean is a reward of unit scale
and the spread between members (``info["std"]``) measures their disagreement.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import RewardBatch, RewardOutput, check_frames
from .cnn import ConvEncoderConfig, ImageScorer, augment, to_tensor
from .errors import RewardError

__all__ = [
    "PreferenceConfig",
    "PreferenceReward",
    "TrainLog",
    "bradley_terry_loss",
    "resize_frames",
    "train_preference",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreferenceConfig:
    type: ClassVar[str] = "preference"

    ensemble_size: int = 3  # Bradley-Terry nets; the reward is their mean (RL-VLM-F uses 3)
    size: int = 64  # frames are resized to size x size before the nets
    channels: tuple[int, ...] = (16, 32, 64, 64)  # conv widths of each net (stride 2 each)
    feature_dim: int = 128  # conv features per frame
    hidden: int = 128  # width of the MLP head on the features
    lr: float = 3e-4  # AdamW learning rate
    weight_decay: float = 1e-4  # AdamW weight decay (labels are noisy; keep the nets small)
    batch_size: int = 64  # pairs per gradient step (and 4x this many frames per scoring batch)
    max_epochs: int = 20  # upper bound on passes over each member's pairs
    early_stop_accuracy: float = 0.97  # a member stops once its epoch accuracy exceeds this
    label_noise: float = 0.0  # assumed label flip rate of the labeler (robust BT loss); 0: plain
    augment: bool = True  # random shift + brightness/contrast jitter while training (DrQ)
    shift: int = 4  # largest random shift of the augmentation, pixels at ``size``
    bootstrap: bool = True  # each member trains on its own resample (with replacement) of pairs
    seed: int = 0  # seeds the initialisation, bootstrap, order and augmentation of every member
    success_threshold: float | None = None  # success where the reward >= this; None: never
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...

    def __post_init__(self) -> None:
        problems = []
        if self.ensemble_size < 1:
            problems.append(f"ensemble_size must be >= 1, got {self.ensemble_size}")
        if self.hidden < 1:
            problems.append(f"hidden must be >= 1, got {self.hidden}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            problems.append(f"lr must be > 0, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.shift < 0:
            problems.append(f"shift must be >= 0, got {self.shift}")
        if not 0.0 <= self.label_noise < 0.5:
            problems.append(f"label_noise must be in [0, 0.5), got {self.label_noise}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_epochs < 1:
            problems.append(f"max_epochs must be >= 1, got {self.max_epochs}")
        if not 0.5 <= self.early_stop_accuracy <= 1.0:
            problems.append(
                f"early_stop_accuracy must be in [0.5, 1], got {self.early_stop_accuracy}"
            )
        if self.success_threshold is not None and not math.isfinite(self.success_threshold):
            problems.append(
                f"success_threshold must be finite or None, got {self.success_threshold}"
            )
        if self.device != "auto" and not self.device.startswith(("cpu", "cuda", "mps")):
            problems.append(
                f"device must be 'auto', 'cpu', 'cuda[:N]' or 'mps', got {self.device!r}"
            )
        if problems:
            msg = "bad preference config: " + "; ".join(problems)
            raise RewardError(msg)
        self.encoder  # noqa: B018  # validates size / channels / feature_dim

    @property
    def encoder(self) -> ConvEncoderConfig:
        """The conv encoder config of each member."""
        return ConvEncoderConfig(
            size=self.size, channels=tuple(self.channels), feature_dim=self.feature_dim
        )


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def bradley_terry_loss(
    r_a: torch.Tensor, r_b: torch.Tensor, labels: torch.Tensor, *, label_noise: float = 0.0
) -> torch.Tensor:
    """Mean Bradley-Terry cross-entropy of pair rewards against preference labels.

    ``labels``: 0 where ``a`` is better, 1 where ``b`` is better (floats in between are soft
    labels). P(a better than b) = sigmoid(r_a - r_b), so the loss is the binary cross-entropy of
    the logit ``r_b - r_a`` against the label. ``label_noise`` = e > 0 models a labeler that
    flips a label with probability e: P(label 1) = e + (1 - 2e) * sigmoid(r_b - r_a), so a
    flipped label cannot push the rewards apart without bound.
    """
    if r_a.shape != r_b.shape or r_a.shape != labels.shape:
        msg = (
            f"r_a, r_b and labels need the same shape, got {tuple(r_a.shape)}, "
            f"{tuple(r_b.shape)} and {tuple(labels.shape)}"
        )
        raise RewardError(msg)
    if not 0.0 <= label_noise < 0.5:
        msg = f"label_noise must be in [0, 0.5), got {label_noise}"
        raise RewardError(msg)
    logit = r_b - r_a
    y = labels.to(r_a.dtype)
    if label_noise == 0.0:
        return F.binary_cross_entropy_with_logits(logit, y)
    log_e = math.log(label_noise)
    log_keep = math.log(1.0 - 2.0 * label_noise)
    log_p1 = torch.logaddexp(torch.full_like(logit, log_e), log_keep + F.logsigmoid(logit))
    log_p0 = torch.logaddexp(torch.full_like(logit, log_e), log_keep + F.logsigmoid(-logit))
    return -(y * log_p1 + (1.0 - y) * log_p0).mean()


def resize_frames(
    frames: np.ndarray, size: int, *, batch: int = 256, device: str | torch.device = "cpu"
) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, size, size, 3) uint8, with the same resize the nets use.

    Keeps datasets of pairs small in memory: the nets see the same pixels (up to rounding)
    whether they get full frames or these.
    """
    check_frames(frames)
    if frames.shape[1:3] == (size, size):
        return frames
    dev = torch.device(device)
    out = np.empty((len(frames), size, size, 3), dtype=np.uint8)
    for start in range(0, len(frames), batch):
        x = to_tensor(frames[start : start + batch], size, dev)
        x = x.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
        out[start : start + batch] = x.permute(0, 2, 3, 1).cpu().numpy()
    return out


class _Ensemble(nn.Module):
    """The member nets plus each member's output mean and std over its training frames."""

    reward_mean: torch.Tensor
    reward_std: torch.Tensor

    def __init__(self, config: PreferenceConfig) -> None:
        super().__init__()
        nets = []
        for m in range(config.ensemble_size):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed * 1009 + m)
                nets.append(ImageScorer(config.encoder, hidden=config.hidden))
        self.members = nn.ModuleList(nets)
        self.register_buffer("reward_mean", torch.zeros(config.ensemble_size))
        self.register_buffer("reward_std", torch.ones(config.ensemble_size))


class PreferenceReward:
    """Ensemble of Bradley-Terry image nets; reward = mean of the standardised member outputs.

    ``info`` of each output: ``member_rewards`` (M, B) float32 and ``std`` (B,) float32, the
    disagreement between members. ``device`` overrides ``config.device`` (say, to load a
    checkpoint trained on a GPU on a CPU-only machine: ``load_reward_model(path, device="cpu")``).
    """

    def __init__(self, config: PreferenceConfig, *, device: str | None = None) -> None:
        if not isinstance(config, PreferenceConfig):
            msg = f"PreferenceReward needs a PreferenceConfig, got {type(config).__name__}"
            raise RewardError(msg)
        self.config = config
        self.device = _device(device or config.device)
        self.ensemble = _Ensemble(config).to(self.device)
        self.ensemble.eval()

    @property
    def members(self) -> nn.ModuleList:
        members: nn.ModuleList = self.ensemble.members
        return members

    def raw_scores(self, frames: np.ndarray | torch.Tensor, member: int) -> torch.Tensor:
        """Unnormalised output of one member on a frame batch (with gradients; for training)."""
        x = to_tensor(frames, self.config.size, self.device)
        out: torch.Tensor = self.members[member](x)
        return out

    @torch.no_grad()
    def member_rewards(self, frames: np.ndarray, *, normalize: bool = True) -> np.ndarray:
        """(M, B) float32 rewards of every member (standardised unless ``normalize=False``)."""
        check_frames(frames)
        chunk = 4 * self.config.batch_size
        outs = []
        for start in range(0, len(frames), chunk):
            x = to_tensor(frames[start : start + chunk], self.config.size, self.device)
            outs.append(torch.stack([net(x) for net in self.members]))
        scores = torch.cat(outs, dim=1) if outs else torch.zeros(len(self.members), 0)
        if normalize:
            mean = self.ensemble.reward_mean[:, None]
            std = self.ensemble.reward_std[:, None]
            scores = (scores - mean) / std
        return scores.float().cpu().numpy()

    def __call__(self, batch: RewardBatch) -> RewardOutput:
        members = self.member_rewards(batch.frames)
        rewards = members.mean(axis=0).astype(np.float32)
        threshold = self.config.success_threshold
        success = (
            rewards >= threshold if threshold is not None else np.zeros(len(rewards), dtype=bool)
        )
        return RewardOutput(
            rewards=rewards,
            success=success,
            info={"member_rewards": members, "std": members.std(axis=0).astype(np.float32)},
        )

    @torch.no_grad()
    def set_normalization(self, frames: np.ndarray) -> None:
        """Standardise each member's output over ``frames`` (mean 0, std 1)."""
        raw = torch.as_tensor(self.member_rewards(frames, normalize=False))
        self.ensemble.reward_mean.copy_(raw.mean(dim=1).to(self.device))
        std = raw.std(dim=1) if raw.shape[1] > 1 else torch.ones(raw.shape[0])
        self.ensemble.reward_std.copy_(std.clamp_min(1e-6).to(self.device))

    def state_dict(self) -> dict[str, Any]:
        return dict(self.ensemble.state_dict())

    def load_state_dict(self, state: Mapping[str, Any]) -> Any:
        return self.ensemble.load_state_dict(dict(state), strict=True)


@dataclass
class TrainLog:
    """What :func:`train_preference` did: per-member epochs, accuracy and loss curves."""

    n_pairs: int  # labelled pairs given
    epochs: list[int] = field(default_factory=list)  # epochs run by each member
    accuracy: list[float] = field(default_factory=list)  # each member's last epoch accuracy
    loss: list[list[float]] = field(default_factory=list)  # each member's mean loss per epoch
    ensemble_accuracy: float = float("nan")  # ensemble-mean reward agreeing with the labels

    def as_dict(self) -> dict[str, Any]:
        return {
            "n_pairs": self.n_pairs,
            "epochs": list(self.epochs),
            "accuracy": [round(a, 4) for a in self.accuracy],
            "loss": [[round(v, 5) for v in curve] for curve in self.loss],
            "ensemble_accuracy": round(self.ensemble_accuracy, 4),
        }


def _check_pairs(frames_a: np.ndarray, frames_b: np.ndarray, labels: np.ndarray) -> np.ndarray:
    check_frames(frames_a, name="frames_a")
    check_frames(frames_b, name="frames_b")
    if frames_a.shape != frames_b.shape:
        msg = f"frames_a {frames_a.shape} and frames_b {frames_b.shape} differ in shape"
        raise RewardError(msg)
    labels = np.asarray(labels)
    if labels.shape != (len(frames_a),):
        msg = f"labels must be ({len(frames_a)},), got {labels.shape}"
        raise RewardError(msg)
    if len(labels) == 0:
        msg = "no labelled pairs to train on"
        raise RewardError(msg)
    if not np.isin(labels, (0, 1)).all():
        bad = sorted(set(np.unique(labels).tolist()) - {0, 1})
        msg = f"labels must be 0 (first better) or 1 (second better); got {bad}"
        raise RewardError(msg)
    return labels.astype(np.float32)


def _train_member(
    model: PreferenceReward,
    m: int,
    xa: torch.Tensor,
    xb: torch.Tensor,
    y: torch.Tensor,
    seed: int,
    progress_bar: Any,
) -> tuple[int, float, list[float]]:
    """Train member ``m`` on uint8 (N, 3, S, S) pairs; returns (epochs, accuracy, losses)."""
    cfg = model.config
    net = model.members[m]
    gen = torch.Generator().manual_seed(seed * 7919 + m)
    n = len(y)
    idx = torch.randint(0, n, (n,), generator=gen) if cfg.bootstrap else torch.arange(n)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    net.train()
    losses: list[float] = []
    accuracy = 0.0
    epochs = 0
    for epoch in range(1, cfg.max_epochs + 1):
        epochs = epoch
        order = idx[torch.randperm(n, generator=gen)]
        total, correct = 0.0, 0.0
        for start in range(0, n, cfg.batch_size):
            sel = order[start : start + cfg.batch_size]
            x = torch.cat([xa[sel], xb[sel]]).to(model.device).float().div_(255.0)
            if cfg.augment:
                x = augment(x, gen, pad=cfg.shift)
            r = net(x)
            r_a, r_b = r[: len(sel)], r[len(sel) :]
            target = y[sel].to(model.device)
            loss = bradley_terry_loss(r_a, r_b, target, label_noise=cfg.label_noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(sel)
            correct += float(((r_b > r_a).float() == target).sum())
        losses.append(total / n)
        accuracy = correct / n
        progress_bar.update(1)
        progress_bar.set_postfix(member=m, loss=f"{losses[-1]:.3f}", acc=f"{accuracy:.3f}")
        if accuracy > cfg.early_stop_accuracy:
            break
    net.eval()
    log.debug("member %d: %d epochs, accuracy %.3f, loss %.4f", m, epochs, accuracy, losses[-1])
    return epochs, accuracy, losses


def _to_chw_uint8(frames: np.ndarray, size: int) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(resize_frames(frames, size))).permute(0, 3, 1, 2)


def train_preference(
    frames_a: np.ndarray,
    frames_b: np.ndarray,
    labels: np.ndarray,
    config: PreferenceConfig | None = None,
    *,
    model: PreferenceReward | None = None,
    seed: int | None = None,
    progress: bool = False,
) -> tuple[PreferenceReward, TrainLog]:
    """Fit a Bradley-Terry ensemble to labelled frame pairs.

    ``frames_a`` / ``frames_b``: (N, H, W, 3) uint8; ``labels`` (N,): 0 where the first frame is
    better, 1 where the second is. ``model``: continue training it (warm start, online loop);
    otherwise a new model of ``config`` (default config if None). Every member trains on its
    own bootstrap resample in its own order until its epoch accuracy exceeds
    ``early_stop_accuracy`` or ``max_epochs`` pass; then the outputs are standardised over the
    training frames. ``seed``: of the bootstrap, order and augmentation (default
    ``config.seed``; pass a new one per round when continuing a model). Returns the model and a
    :class:`TrainLog`.
    """
    from tqdm import tqdm

    from .encoders import avoid_triton_llvm_clash

    y = torch.from_numpy(_check_pairs(frames_a, frames_b, labels))
    avoid_triton_llvm_clash()  # torch optimisers import triton; it crashes after a twin render
    if model is None:
        model = PreferenceReward(config or PreferenceConfig())
    elif config is not None and config != model.config:
        msg = "pass either config or a model to continue training, not a different config"
        raise RewardError(msg)
    cfg = model.config
    run_seed = cfg.seed if seed is None else seed
    xa = _to_chw_uint8(frames_a, cfg.size)
    xb = _to_chw_uint8(frames_b, cfg.size)
    train_log = TrainLog(n_pairs=len(y))
    total = cfg.ensemble_size * cfg.max_epochs
    with tqdm(total=total, desc="preference nets", unit="epoch", disable=not progress) as bar:
        for m in range(cfg.ensemble_size):
            epochs, acc, losses = _train_member(model, m, xa, xb, y, run_seed, bar)
            bar.update(cfg.max_epochs - epochs)  # early stop: skip the rest of this member
            train_log.epochs.append(epochs)
            train_log.accuracy.append(acc)
            train_log.loss.append(losses)
    pool = torch.cat([xa, xb]).permute(0, 2, 3, 1).contiguous().numpy()
    model.set_normalization(pool)
    rewards = model.member_rewards(pool).mean(axis=0)
    r_a, r_b = rewards[: len(y)], rewards[len(y) :]
    train_log.ensemble_accuracy = float(np.mean((r_b > r_a) == (y.numpy() > 0.5)))
    log.info(
        "preference ensemble: %d pairs, epochs %s, member accuracy %s, ensemble accuracy %.3f",
        len(y),
        train_log.epochs,
        [round(a, 3) for a in train_log.accuracy],
        train_log.ensemble_accuracy,
    )
    return model, train_log
