"""VLM-RMs: a zero-shot reward from CLIP embeddings of the frame, goal and baseline prompts.

With s, g, b the unit embeddings of the image, the goal prompt(s) and the baseline prompt(s)
(several prompts: the normalised mean of their normalised embeddings), d = g - b and

    P = alpha * d d^T / |d|^2 + (1 - alpha) * I,        R(s) = 1 - 0.5 * |(s - g) P|^2.

alpha = 0 gives the cosine similarity s . g; alpha = 1 keeps only the component of s - g along the
baseline-to-goal direction ("goal-baseline regularisation", Rocamonde et al. 2023).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from .base import RewardBatch, RewardOutput
from .encoders import OpenClipConfig, OpenClipEncoder, load_open_clip
from .errors import RewardError

__all__ = [
    "ClipReward",
    "ClipRewardConfig",
    "goal_projection",
    "mean_direction",
    "projected_reward",
    "vlm_rm_reward",
]

log = logging.getLogger(__name__)

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)
_MIN_DIRECTION = 1e-6  # |g - b| below this: goal and baseline prompts embed to the same point


@dataclass(frozen=True)
class ClipRewardConfig:
    type: ClassVar[str] = "clip"

    goal_prompts: tuple[str, ...] = ()  # what success looks like ("a red cube on the green mark")
    baseline_prompts: tuple[str, ...] = ()  # neutral description of the scene ("a robot arm")
    alpha: float = 0.5  # goal-baseline regularisation: 0 = cosine to goal, 1 = along g - b only
    model_name: str = "ViT-B-32"  # open_clip architecture (open_clip.list_models())
    pretrained: str = ""  # open_clip pretrained tag, e.g. "laion2b_s34b_b79k" (network once)
    checkpoint: str = ""  # local open_clip weight file instead of a tag
    model_config: str = ""  # model-config JSON of a custom architecture (stem = model_name)
    device: str = "auto"  # "auto" = cuda if available
    precision: str = "auto"  # "auto" = fp16 on cuda, fp32 on cpu
    success_threshold: float | None = None  # reward >= this -> success; None -> never success
    batch_size: int = 64  # frames per forward pass

    def __post_init__(self) -> None:
        for name in ("goal_prompts", "baseline_prompts"):
            prompts = getattr(self, name)
            if isinstance(prompts, str) or not isinstance(prompts, tuple):
                msg = f"{name} must be a tuple of strings, got {type(prompts).__name__}"
                raise RewardError(msg)
            if not prompts:
                msg = f"{name} must hold at least one prompt"
                raise RewardError(msg)
            if any(not isinstance(p, str) or not p.strip() for p in prompts):
                msg = f"{name} must be non-empty strings, got {prompts!r}"
                raise RewardError(msg)
        if not 0.0 <= self.alpha <= 1.0:
            msg = f"alpha must be in [0, 1], got {self.alpha}"
            raise RewardError(msg)
        if self.success_threshold is not None and not np.isfinite(self.success_threshold):
            msg = f"success_threshold must be finite or None, got {self.success_threshold}"
            raise RewardError(msg)
        if self.batch_size < 1:
            msg = f"batch_size must be >= 1, got {self.batch_size}"
            raise RewardError(msg)
        _ = self.open_clip  # validates the encoder fields (raises RewardError)

    @property
    def open_clip(self) -> OpenClipConfig:
        """The encoder part of this config."""
        return OpenClipConfig(
            model_name=self.model_name,
            pretrained=self.pretrained,
            checkpoint=self.checkpoint,
            model_config=self.model_config,
            device=self.device,
            precision=self.precision,
        )


# ---------------------------------------------------------------------- the formula
def _as_tensor(x: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if not torch.is_floating_point(t):
        msg = f"{name} must be floating point, got {t.dtype}"
        raise RewardError(msg)
    return t.float()


def mean_direction(prompt_emb: torch.Tensor) -> torch.Tensor:
    """(N, D) or (D,) prompt embeddings -> (D,) normalised mean of the normalised rows."""
    emb = prompt_emb[None] if prompt_emb.ndim == 1 else prompt_emb
    if emb.ndim != 2 or emb.shape[0] == 0:
        msg = f"prompt embeddings must be (N, D) with N >= 1, got {tuple(prompt_emb.shape)}"
        raise RewardError(msg)
    return F.normalize(F.normalize(emb, dim=-1).mean(0), dim=-1)


def goal_projection(g: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """P = alpha * d d^T / |d|^2 + (1 - alpha) I with d = g - b; (D, D)."""
    if not 0.0 <= alpha <= 1.0:
        msg = f"alpha must be in [0, 1], got {alpha}"
        raise RewardError(msg)
    d = g - b
    norm2 = float(d @ d)
    eye = torch.eye(len(d), dtype=d.dtype, device=d.device)
    if alpha == 0.0:
        return eye
    if norm2 < _MIN_DIRECTION**2:
        msg = (
            f"goal and baseline prompts embed to the same direction (|g - b| = {norm2**0.5:.2e}); "
            "use more distinct prompts or alpha = 0"
        )
        raise RewardError(msg)
    return alpha * torch.outer(d, d) / norm2 + (1.0 - alpha) * eye


def projected_reward(s: torch.Tensor, g: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """R = 1 - 0.5 |(s - g) P|^2 for (B, D) unit image embeddings s; (B,)."""
    residual = (s - g[None]) @ projection
    return 1.0 - 0.5 * residual.pow(2).sum(-1)


def vlm_rm_reward(
    image_emb: ArrayT, goal_emb: ArrayT, baseline_emb: ArrayT, alpha: float
) -> ArrayT:
    """VLM-RMs reward of each image embedding; (B, D), (N, D)/(D,), (M, D)/(D,) -> (B,).

    Embeddings need not be normalised (they are, here). Returns numpy for numpy input, else a
    float32 tensor on the input's device.
    """
    s = _as_tensor(image_emb, "image_emb")
    if s.ndim != 2:
        msg = f"image_emb must be (B, D), got {tuple(s.shape)}"
        raise RewardError(msg)
    g = mean_direction(_as_tensor(goal_emb, "goal_emb").to(s.device))
    b = mean_direction(_as_tensor(baseline_emb, "baseline_emb").to(s.device))
    if not s.shape[-1] == g.shape[-1] == b.shape[-1]:
        msg = f"embedding sizes differ: image {s.shape[-1]}, goal {g.shape[-1]}, baseline {b.shape[-1]}"
        raise RewardError(msg)
    rewards = projected_reward(F.normalize(s, dim=-1), g, goal_projection(g, b, alpha))
    if isinstance(image_emb, np.ndarray):
        return rewards.cpu().numpy()
    return rewards


# ---------------------------------------------------------------------- the reward model
class ClipReward:
    """VLM-RMs reward model; ``encoder`` lets callers share one loaded CLIP between models."""

    def __init__(self, config: ClipRewardConfig, encoder: OpenClipEncoder | None = None) -> None:
        self.config = config
        self.encoder = encoder if encoder is not None else load_open_clip(config.open_clip)
        device = self.encoder.device
        self.goal = mean_direction(self.encoder.encode_text(config.goal_prompts)).to(device)
        self.baseline = mean_direction(self.encoder.encode_text(config.baseline_prompts)).to(device)
        self.projection = goal_projection(self.goal, self.baseline, config.alpha)
        log.info(
            "clip reward: goal %s vs baseline %s, alpha %.2f, cos(g, b) = %.3f",
            config.goal_prompts,
            config.baseline_prompts,
            config.alpha,
            float(self.goal @ self.baseline),
        )

    def __call__(self, batch: RewardBatch) -> RewardOutput:
        emb = self.encoder.encode_images(batch.frames, batch_size=self.config.batch_size)
        rewards = projected_reward(emb, self.goal, self.projection).cpu().numpy()
        rewards = rewards.astype(np.float32)
        threshold = self.config.success_threshold
        if threshold is None:
            success = np.zeros(len(rewards), dtype=bool)
        else:
            success = rewards >= threshold
        goal_cosine = (emb @ self.goal).cpu().numpy().astype(np.float32)
        return RewardOutput(rewards=rewards, success=success, info={"goal_cosine": goal_cosine})

    def state_dict(self) -> dict[str, Any]:
        return {
            "goal": self.goal.detach().cpu().clone(),
            "baseline": self.baseline.detach().cpu().clone(),
            "projection": self.projection.detach().cpu().clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        d = int(self.goal.shape[0])
        want = {"goal": (d,), "baseline": (d,), "projection": (d, d)}
        missing = sorted(set(want) - set(state))
        if missing:
            msg = f"clip reward state lacks {missing} (has {sorted(state)})"
            raise RewardError(msg)
        loaded = {}
        for key, shape in want.items():
            raw = state[key]
            value = raw if isinstance(raw, torch.Tensor) else torch.as_tensor(np.asarray(raw))
            if tuple(value.shape) != shape:
                msg = f"clip reward state {key!r} has shape {tuple(value.shape)}, expected {shape}"
                raise RewardError(msg)
            if not bool(torch.isfinite(value).all()):
                msg = f"clip reward state {key!r} holds non-finite values"
                raise RewardError(msg)
            loaded[key] = value.float().to(self.encoder.device)
        self.goal, self.baseline, self.projection = (
            loaded["goal"],
            loaded["baseline"],
            loaded["projection"],
        )
