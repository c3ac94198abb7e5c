"""RoboFuME-style success classifier: frames in, success probability out, sparse reward on top.

Training data come from an EpisodeStore whose episodes carry a ``success`` flag in their metadata
(:func:`~.classifier_data.classifier_labels`): the last ``k_last`` frames of a successful episode
are positives, the frames in the first ``early_fraction`` of a successful episode and every frame of
a failed episode are negatives, the rest are not used. Two backbones:

* ``cnn``: the small :class:`~twinloop.vlm_reward.cnn.ImageScorer` trained from scratch (CPU-able);
* ``open_clip``: an open_clip image tower (frozen, or with its last ``finetune_last_blocks``
  transformer blocks trained) under a small MLP head, as RoboFuME fine-tunes a VLM.

Frames are squashed to the backbone's square input (the whole view is kept, no centre crop). Classes
are balanced by sampling half of every batch from each. After training, the decision threshold is
calibrated on the held-out episodes (:func:`~.classifier_data.calibrate_threshold`): the lowest
threshold, not below ``min_threshold``, at which at most ``target_fpr`` of their negative-labelled
frames are called successes. RoboFuME trades recall for few false positives because a false success
ends an episode early and rewards failure. The classifier can only learn what the camera shows: in
the twin's default view the pusher hides the cube at the moment of success.

Reward (``reward_mode``): ``neg_one_zero`` gives -1 per step and 0 on success (the episode should
terminate then; RoboFuME), ``zero_one`` gives 1 on success and 0 otherwise.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import RewardBatch, RewardOutput, check_frames
from .classifier_data import (
    _cache_frames,
    _check_episodes,
    _episode_success,
    _goal_frames,
    _progress,
    calibrate_threshold,
    classifier_labels,
    open_image_store,
)
from .cnn import ConvEncoderConfig, ImageScorer, augment, to_tensor
from .errors import RewardError

if TYPE_CHECKING:
    from twinloop.datasets.store import EpisodeStore

    from .encoders import OpenClipConfig, OpenClipEncoder

__all__ = [
    "BACKBONES",
    "REWARD_MODES",
    "ClassifierConfig",
    "SuccessClassifier",
    "train_classifier",
]

log = logging.getLogger(__name__)

BACKBONES = ("cnn", "open_clip")
REWARD_MODES = ("neg_one_zero", "zero_one")
_CHUNK = 128  # frames per forward pass at inference and while caching


@dataclass(frozen=True)
class ClassifierConfig:
    type: ClassVar[str] = "success_classifier"

    backbone: str = "cnn"  # "cnn" (small CNN from scratch) or "open_clip" (CLIP image tower)
    # --- open_clip backbone (used when backbone == "open_clip"; see encoders.OpenClipConfig)
    model_name: str = "ViT-B-32"  # open_clip architecture name
    pretrained: str = ""  # open_clip pretrained tag (needs network on first use); "" = none
    checkpoint: str = ""  # local CLIP weight file; "" = none (random weights: tests only)
    model_config: str = ""  # model-config JSON of a custom architecture; its stem is the name
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", ... (both backbones)
    precision: str = "auto"  # CLIP weights: "auto" (fp16 on cuda), "fp32", "fp16", "bf16"
    finetune_last_blocks: int = 0  # 0: head on frozen features; n: train the last n blocks too
    # --- cnn backbone
    size: int = 64  # frames are resized to size x size
    channels: tuple[int, ...] = (16, 32, 64, 64)  # conv widths; each conv halves the resolution
    feature_dim: int = 128  # CNN output features
    head_hidden: int = 128  # hidden width of the MLP head (both backbones)
    # --- labels (see classifier_labels)
    k_last: int = 4  # the last k frames of a successful episode are positives (<= success rows)
    early_fraction: float = 0.25  # frames in this first fraction of a successful episode: negatives
    # --- training
    augment: bool = True  # random shift + brightness/contrast jitter on image batches
    shift: int = 4  # augmentation: largest random shift, pixels of the resized input
    steps: int = 800  # gradient steps
    batch_size: int = 64  # frames per step, half positives and half negatives
    lr: float = 1e-3  # AdamW learning rate (cosine-decayed to 0 over the steps)
    weight_decay: float = 1e-4  # AdamW weight decay
    seed: int = 0  # initial weights, batch sampling and augmentation
    # --- decision
    target_fpr: float = 0.05  # calibration: largest false-positive rate on held-out negatives
    min_threshold: float = 0.5  # calibration never sets the threshold below this probability
    threshold: float = 0.5  # success = prob >= threshold (set by calibration, saved with weights)
    reward_mode: str = "neg_one_zero"  # "neg_one_zero": -1/step, 0 on success; "zero_one": 0/1

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem:
            raise RewardError(problem)
        if self.backbone == "cnn":
            ConvEncoderConfig(self.size, tuple(self.channels), self.feature_dim)  # validates
        else:
            self.clip_config()  # validates the open_clip fields

    def _problem(self) -> str:
        if self.backbone not in BACKBONES:
            return f"unknown backbone {self.backbone!r}. Available: {list(BACKBONES)}"
        if self.reward_mode not in REWARD_MODES:
            return f"unknown reward_mode {self.reward_mode!r}. Available: {list(REWARD_MODES)}"
        checks = [
            ("finetune_last_blocks", self.finetune_last_blocks >= 0, ">= 0"),
            ("head_hidden", self.head_hidden >= 1, ">= 1"),
            ("shift", self.shift >= 0, ">= 0"),
            ("k_last", self.k_last >= 1, ">= 1"),
            ("early_fraction", 0.0 <= self.early_fraction < 1.0, "in [0, 1)"),
            ("steps", self.steps >= 1, ">= 1"),
            ("batch_size", self.batch_size >= 2, ">= 2 (half positives, half negatives)"),
            ("lr", self.lr > 0.0, "> 0"),
            ("weight_decay", self.weight_decay >= 0.0, ">= 0"),
            ("target_fpr", 0.0 < self.target_fpr < 1.0, "in (0, 1)"),
            ("threshold", 0.0 <= self.threshold <= 1.0, "in [0, 1]"),
            ("min_threshold", 0.0 <= self.min_threshold <= 1.0, "in [0, 1]"),
        ]
        for name, ok, rule in checks:
            if not ok:
                return f"{name} must be {rule}, got {getattr(self, name)!r}"
        return ""

    def clip_config(self) -> OpenClipConfig:
        """The :class:`~twinloop.vlm_reward.encoders.OpenClipConfig` of the open_clip fields."""
        from .encoders import OpenClipConfig

        return OpenClipConfig(
            model_name=self.model_name,
            pretrained=self.pretrained,
            checkpoint=self.checkpoint,
            model_config=self.model_config,
            device=self.device,
            precision=self.precision,
        )


class _Head(nn.Module):
    """LayerNorm -> MLP -> one logit, on (normalised) CLIP image features."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def _tuned_names(model: Any, n_blocks: int) -> list[str]:
    """Names (in ``model``) of the CLIP image-tower parameters trained with ``n_blocks`` > 0.

    The last ``n_blocks`` residual blocks of the vision transformer and what follows them
    (``ln_post``, ``proj``).
    """
    if n_blocks == 0:
        return []
    blocks = getattr(
        getattr(getattr(model, "visual", None), "transformer", None), "resblocks", None
    )
    if blocks is None:
        msg = (
            f"finetune_last_blocks={n_blocks} needs a vision transformer image tower; "
            f"{type(getattr(model, 'visual', model)).__name__} has no transformer.resblocks"
        )
        raise RewardError(msg)
    if n_blocks > len(blocks):
        msg = f"finetune_last_blocks={n_blocks} but the image tower has {len(blocks)} blocks"
        raise RewardError(msg)
    first = len(blocks) - n_blocks
    prefixes = [f"visual.transformer.resblocks.{i}." for i in range(first, len(blocks))]
    prefixes += ["visual.ln_post.", "visual.proj"]
    return [
        name for name, _ in model.named_parameters() if any(name.startswith(p) for p in prefixes)
    ]


class SuccessClassifier:
    """Success probability of each frame; reward per ``reward_mode``, success = prob >= threshold.

    ``encoder``: an already loaded open_clip encoder to reuse (open_clip backbone only); without
    it one is loaded from the config. With ``finetune_last_blocks`` > 0 the classifier trains and
    loads the last blocks of that encoder in place, so do not share it with another reward model.
    """

    def __init__(self, config: ClassifierConfig, encoder: OpenClipEncoder | None = None) -> None:
        if not isinstance(config, ClassifierConfig):
            msg = f"SuccessClassifier needs a ClassifierConfig, got {type(config).__name__}"
            raise RewardError(msg)
        self.config = config
        self.encoder: OpenClipEncoder | None = None
        self.scorer: ImageScorer | None = None
        self.head: _Head | None = None
        self._tuned: list[str] = []
        if config.backbone == "cnn":
            from .encoders import resolve_device

            if encoder is not None:
                msg = "the cnn backbone takes no open_clip encoder (set backbone='open_clip')"
                raise RewardError(msg)
            self.device = resolve_device(config.device)
            cnn = ConvEncoderConfig(config.size, tuple(config.channels), config.feature_dim)
            self.scorer = ImageScorer(cnn, hidden=config.head_hidden).to(self.device).eval()
            self.input_size = config.size
        else:
            from .encoders import load_open_clip

            self.encoder = encoder if encoder is not None else load_open_clip(config.clip_config())
            self.device = self.encoder.device
            self.input_size = self.encoder.image_size
            self.head = _Head(self.encoder.embed_dim, config.head_hidden).to(self.device).eval()
            self._tuned = _tuned_names(self.encoder.model, config.finetune_last_blocks)

    # ----- weights -----------------------------------------------------------------------------
    @property
    def threshold(self) -> float:
        return float(self.config.threshold)

    def set_threshold(self, threshold: float) -> None:
        """Replace the decision threshold (validated through the config)."""
        self.config = dataclasses.replace(self.config, threshold=float(threshold))

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters training updates (CNN, or head + unfrozen CLIP blocks)."""
        if self.scorer is not None:
            return list(self.scorer.parameters())
        params = dict(self._clip_model().named_parameters())
        return [*self._head().parameters(), *(params[n] for n in self._tuned)]

    def state_dict(self) -> dict[str, Any]:
        """Head/CNN weights, the trained CLIP blocks (``backbone.*``) and the threshold."""
        state: dict[str, Any] = {}
        if self.scorer is not None:
            state |= {f"scorer.{k}": v for k, v in self.scorer.state_dict().items()}
        else:
            state |= {f"head.{k}": v for k, v in self._head().state_dict().items()}
            params = dict(self._clip_model().named_parameters())
            state |= {f"backbone.{n}": params[n].detach() for n in self._tuned}
        state["threshold"] = torch.tensor([self.threshold], dtype=torch.float64)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load what :meth:`state_dict` gave; RewardError naming missing/extra/misshapen keys."""
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        extra = sorted(set(state) - set(own))
        if missing or extra:
            msg = f"success classifier weights do not match: missing {missing}, unexpected {extra}"
            raise RewardError(msg)
        tensors = {
            k: torch.as_tensor(np.asarray(v)) if not torch.is_tensor(v) else v
            for k, v in state.items()
        }
        bad = [
            f"{k} {tuple(tensors[k].shape)} != {tuple(v.shape)}"
            for k, v in own.items()
            if tuple(tensors[k].shape) != tuple(v.shape)
        ]
        if bad:
            msg = f"success classifier weights have the wrong shapes: {bad}"
            raise RewardError(msg)
        threshold = float(tensors["threshold"].reshape(-1)[0])
        with torch.no_grad():
            if self.scorer is not None:
                self.scorer.load_state_dict(_strip(tensors, "scorer."))
            else:
                self._head().load_state_dict(_strip(tensors, "head."))
                params = dict(self._clip_model().named_parameters())
                for name in self._tuned:
                    params[name].copy_(tensors[f"backbone.{name}"].to(params[name].dtype))
        self.set_threshold(threshold)

    # ----- inference ---------------------------------------------------------------------------
    def __call__(self, batch: RewardBatch) -> RewardOutput:
        if not isinstance(batch, RewardBatch):
            msg = f"SuccessClassifier takes a RewardBatch, got {type(batch).__name__}"
            raise RewardError(msg)
        probs = self.predict_proba(batch.frames)
        success = probs >= self.threshold
        if self.config.reward_mode == "neg_one_zero":
            rewards = np.where(success, 0.0, -1.0).astype(np.float32)
        else:
            rewards = success.astype(np.float32)
        return RewardOutput(rewards=rewards, success=success, info={"prob": probs})

    def predict_proba(self, frames: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 frames -> (B,) float64 success probabilities.

        float64 keeps probabilities far from 0.5 distinct (float32 rounds sigmoid(-104) to 0 and
        sigmoid(17) to 1), so a calibrated threshold separates them.
        """
        check_frames(frames)
        self.train_mode(False)
        out = []
        with torch.no_grad():
            for start in range(0, len(frames), _CHUNK):
                x = to_tensor(frames[start : start + _CHUNK], self.input_size, self.device)
                x = x.mul_(255.0).round_().clamp_(0.0, 255.0).div_(255.0)  # as training saw it
                out.append(torch.sigmoid(self.logits(x).double()).cpu())
        if not out:
            return np.zeros(0, dtype=np.float64)
        return torch.cat(out).numpy().astype(np.float64)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) float [0, 1] images on the device -> (B,) float32 logits."""
        if self.scorer is not None:
            return self.scorer(x).float()
        return self.head_logits(self.features(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """open_clip backbone: (B, 3, S, S) float [0, 1] -> (B, D) normalised float32 features."""
        encoder = self._encoder()
        pixels = x.mul(255.0).round_().clamp_(0.0, 255.0).to(torch.uint8).permute(0, 2, 3, 1)
        feats = encoder.model.encode_image(encoder.preprocess(pixels)).float()
        return F.normalize(feats, dim=-1)

    def head_logits(self, feats: torch.Tensor) -> torch.Tensor:
        return self._head()(feats).float()

    def train_mode(self, on: bool) -> None:
        """Switch the trained modules to training (on) or inference (off) mode."""
        if self.scorer is not None:
            self.scorer.train(on)
            return
        self._head().train(on)
        tuned = set(self._tuned)
        for name, param in self._clip_model().named_parameters():
            if name in tuned:
                param.requires_grad_(on)

    def _head(self) -> _Head:
        if self.head is None:
            msg = "this classifier has no CLIP head (cnn backbone)"
            raise RewardError(msg)
        return self.head

    def _encoder(self) -> OpenClipEncoder:
        if self.encoder is None:
            msg = "this classifier has no open_clip encoder (cnn backbone)"
            raise RewardError(msg)
        return self.encoder

    def _clip_model(self) -> nn.Module:
        model: nn.Module = self._encoder().model
        return model


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


# ----- training -------------------------------------------------------------------------------
def _as_float(u8: torch.Tensor) -> torch.Tensor:
    return u8.float().div_(255.0)


def _batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([fn(x[s : s + _CHUNK]) for s in range(0, len(x), _CHUNK)])


def _fit(
    model: SuccessClassifier,
    images: torch.Tensor,
    labels: np.ndarray,
    progress: bool,
) -> list[float]:
    """Train ``model`` on cached uint8 images with balanced batches; returns the loss per step."""
    cfg = model.config
    gen = torch.Generator().manual_seed(cfg.seed)
    pos = torch.from_numpy(np.flatnonzero(labels))
    neg = torch.from_numpy(np.flatnonzero(~labels))
    frozen_clip = model.scorer is None and cfg.finetune_last_blocks == 0
    if frozen_clip:  # features once; augmentation would need the tower again per step
        if cfg.augment:
            log.info("frozen CLIP features are computed once: augment is not applied")
        feats = _batched(lambda x: model.features(_as_float(x)), images)
    model.train_mode(True)
    params = model.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps)
    n_pos = cfg.batch_size // 2
    target = torch.cat([torch.ones(n_pos), torch.zeros(cfg.batch_size - n_pos)]).to(model.device)
    losses: list[float] = []
    bar = _progress(cfg.steps, "training", progress)
    try:
        for _ in range(cfg.steps):
            idx = torch.cat(
                [
                    pos[torch.randint(len(pos), (n_pos,), generator=gen)],
                    neg[torch.randint(len(neg), (cfg.batch_size - n_pos,), generator=gen)],
                ]
            ).to(images.device)
            if frozen_clip:
                logits = model.head_logits(feats[idx])
            else:
                x = _as_float(images[idx])
                if cfg.augment:
                    x = augment(x, gen, pad=cfg.shift)
                logits = model.logits(x)
            loss = F.binary_cross_entropy_with_logits(logits, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if bar is not None:
                bar.update(1)
                if len(losses) % 25 == 0:
                    bar.set_postfix(loss=f"{np.mean(losses[-25:]):.4f}")
    finally:
        if bar is not None:
            bar.close()
        model.train_mode(False)
    return losses


def _loss_curve(losses: Sequence[float], points: int = 100) -> list[list[float]]:
    """[[step, mean loss over the window ending there], ...] with at most ``points`` entries."""
    window = max(1, len(losses) // points)
    return [
        [float(s + window), float(np.mean(losses[s : s + window]))]
        for s in range(0, len(losses) - window + 1, window)
    ]


def _rates(pred: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """FP/FN counts and rates of boolean predictions against boolean truth."""
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    fp, fn = int((pred & ~truth).sum()), int((~pred & truth).sum())
    return {
        "positives": n_pos,
        "negatives": n_neg,
        "fp": fp,
        "fn": fn,
        "fp_rate": fp / n_neg if n_neg else None,
        "fn_rate": fn / n_pos if n_pos else None,
    }


def train_classifier(
    store_path: str | os.PathLike[str],
    config: ClassifierConfig,
    *,
    train_episodes: Sequence[int],
    holdout_episodes: Sequence[int],
    progress: bool = False,
    encoder: OpenClipEncoder | None = None,
    negatives: Sequence[str | os.PathLike[str]] = (),
) -> tuple[SuccessClassifier, dict[str, Any]]:
    """Train a success classifier on ``train_episodes``; calibrate and judge it on the holdout.

    ``negatives``: other episode stores whose successful episodes' last ``k_last`` frames are
    added as negatives (hard negatives). For a reset-free pair these are the partner task's goal
    states: the arm at the handle with the drawer shut is what ``close_drawer`` ends in and what
    ``open_drawer`` starts from, so an ``open_drawer`` classifier that keyed on the arm's pose
    instead of the drawer would flag it. Only episode outcomes are used, as on a real robot.

    Calibration (:func:`~.classifier_data.calibrate_threshold`): the threshold is the lowest one,
    not below ``config.min_threshold``, that calls at most ``config.target_fpr`` of the
    negative-LABELLED frames of the held-out episodes successes
    (:func:`~.classifier_data.classifier_labels`: every frame of a failed episode and the early
    frames of a successful one); never the per-row truth, as on a real robot where only episode
    outcomes are known. The report then judges the calibrated classifier on ALL held-out frames
    against the store's per-row ``success`` (the twin's ground truth; absent in real data, then
    None): frame-level FP rate = negatives called successes / true negatives, FN rate = positives
    missed / true positives. Episode level: an episode is called successful if any of its frames is,
    against its metadata ``success``. Without holdout episodes the threshold stays as configured.
    """
    started = time.perf_counter()
    store = open_image_store(store_path)
    with store:
        train_eps = _check_episodes(store, train_episodes, "train")
        hold_eps = _check_episodes(store, holdout_episodes, "holdout")
        overlap = sorted(set(train_eps) & set(hold_eps))
        if overlap:
            msg = f"episodes {overlap} are in both the train and the holdout set"
            raise RewardError(msg)
        rows, labels = classifier_labels(store, train_eps, config.k_last, config.early_fraction)
        n_pos = int(labels.sum())
        if n_pos == 0 or n_pos == len(labels):
            msg = (
                f"the training episodes give {n_pos} positive and {len(labels) - n_pos} negative "
                "frames; the classifier needs both (successful and failed episodes)"
            )
            raise RewardError(msg)
        if config.backbone == "open_clip" and config.finetune_last_blocks > 0:
            _check_finetune_dtype(encoder, config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = SuccessClassifier(config, encoder=encoder)
        hold_rows = np.concatenate(
            [np.arange(store.episode_slice(i).start, store.episode_slice(i).stop) for i in hold_eps]
            or [np.zeros(0, dtype=np.int64)]
        ).astype(np.int64)
        bar = _progress(len(rows) + len(hold_rows), "reading frames", progress)
        try:
            images = _cache_frames(store, rows, model.input_size, model.device, bar)
            hold_images = _cache_frames(store, hold_rows, model.input_size, model.device, bar)
        finally:
            if bar is not None:
                bar.close()
        log.info(
            "training on %d frames (%d positive) from %d episodes, %d held-out frames",
            len(rows),
            n_pos,
            len(train_eps),
            len(hold_rows),
        )
        hard = 0
        for extra in negatives:
            extra_images = _goal_frames(
                extra, config.k_last, model.input_size, model.device, progress
            )
            hard += len(extra_images)
            images = torch.cat([images, extra_images])
            labels = np.concatenate([labels, np.zeros(len(extra_images), dtype=bool)])
        losses = _fit(model, images, labels, progress)
        train_s = time.perf_counter() - started
        hold_probs = (
            _batched(lambda x: torch.sigmoid(model.logits(_as_float(x)).double()), hold_images)
            .cpu()
            .numpy()
        )
        report = _evaluate(store, model, hold_eps, hold_rows, hold_probs)
    report = {
        "store": str(store_path),
        "config": dataclasses.asdict(model.config),
        "train_episodes": train_eps,
        "holdout_episodes": hold_eps,
        "train": {
            "frames": len(rows),
            "positives": n_pos,
            "negatives": len(rows) - n_pos + hard,
            "hard_negatives": hard,
            "negative_stores": [str(x) for x in negatives],
            "steps": len(losses),
            "final_loss": float(np.mean(losses[-max(1, len(losses) // 20) :])),
            "loss_curve": _loss_curve(losses),
            "seconds": round(train_s, 2),
        },
        **report,
    }
    return model, report


def _check_finetune_dtype(encoder: OpenClipEncoder | None, config: ClassifierConfig) -> None:
    from .encoders import resolve_device, resolve_dtype

    dtype = (
        encoder.dtype
        if encoder is not None
        else resolve_dtype(config.precision, resolve_device(config.device))
    )
    if dtype == torch.float16:
        msg = (
            "fine-tuning CLIP blocks in fp16 is unstable; set precision='fp32' or 'bf16' "
            "(or finetune_last_blocks=0)"
        )
        raise RewardError(msg)


def _evaluate(
    store: EpisodeStore,
    model: SuccessClassifier,
    hold_eps: list[int],
    hold_rows: np.ndarray,
    hold_probs: np.ndarray,
) -> dict[str, Any]:
    """Calibrate on the held-out negative labels, then the frame- and episode-level metrics."""
    cfg = model.config
    calibration: dict[str, Any] | None = None
    lab_rows, lab = classifier_labels(store, hold_eps, cfg.k_last, cfg.early_fraction)
    neg_probs = hold_probs[np.searchsorted(hold_rows, lab_rows[~lab])] if len(lab_rows) else []
    if len(neg_probs):
        threshold = calibrate_threshold(np.asarray(neg_probs), cfg.target_fpr, cfg.min_threshold)
        model.set_threshold(threshold)
        calibration = {
            "target_fpr": cfg.target_fpr,
            "min_threshold": cfg.min_threshold,
            "negatives": len(neg_probs),
            "label_fpr": float(np.mean(np.asarray(neg_probs) >= threshold)),
            "rule": (
                "max(min_threshold, lowest threshold with FP rate <= target_fpr on the "
                "held-out negative-labelled frames)"
            ),
        }
    elif hold_eps:
        log.warning(
            "held-out episodes give no negative frames: threshold left at %g", cfg.threshold
        )
    pred = hold_probs >= model.threshold
    frame: dict[str, Any] | None = None
    truth_rows: np.ndarray | None = None
    if "success" in store.keys and len(hold_rows):
        truth_rows = np.asarray(store.array("success")[: store.n_steps])[hold_rows].astype(bool)
        frame = _rates(pred, truth_rows)
    episodes: list[dict[str, Any]] = []
    offset = 0
    for i in hold_eps:
        sl = store.episode_slice(i)
        n = sl.stop - sl.start
        probs = hold_probs[offset : offset + n]
        entry: dict[str, Any] = {
            "episode": i,
            "success": _episode_success(store, i),
            "predicted": bool((probs >= model.threshold).any()),
            "prob": [float(f"{p:.6g}") for p in probs],
        }
        if truth_rows is not None:
            entry["truth"] = [bool(t) for t in truth_rows[offset : offset + n]]
        episodes.append(entry)
        offset += n
    judged = [e for e in episodes if e["success"] is not None]
    episode = (
        _rates(
            np.array([e["predicted"] for e in judged], dtype=bool),
            np.array([e["success"] for e in judged], dtype=bool),
        )
        if judged
        else None
    )
    return {
        "threshold": model.threshold,
        "calibration": calibration,
        "holdout": {"frame": frame, "episode": episode, "frames": len(hold_rows)},
        "holdout_probs": episodes,
    }
