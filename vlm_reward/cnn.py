"""Small image networks trained from scratch, shared by the success classifier and preference nets.

Frames go in as (B, H, W, 3) uint8 numpy or torch; :func:`to_tensor` resizes them to a square
input on the model's device. Augmentation (random shift, brightness/contrast jitter) follows DrQ:
cheap, on the batch tensor, and only while training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import RewardError

__all__ = ["ConvEncoder", "ConvEncoderConfig", "ImageScorer", "augment", "to_tensor"]


@dataclass(frozen=True)
class ConvEncoderConfig:
    size: int = 64  # frames are resized to size x size
    channels: tuple[int, ...] = (16, 32, 64, 64)  # conv widths; each conv halves the resolution
    feature_dim: int = 128  # output features

    def __post_init__(self) -> None:
        if self.size < 16 or self.size > 512:
            msg = f"size must be in [16, 512], got {self.size}"
            raise RewardError(msg)
        if not self.channels or any(c < 1 for c in self.channels):
            msg = f"channels must be positive, got {self.channels}"
            raise RewardError(msg)
        if self.size >> len(self.channels) < 1:
            msg = f"{len(self.channels)} stride-2 convs are too many for size {self.size}"
            raise RewardError(msg)
        if self.feature_dim < 1:
            msg = f"feature_dim must be >= 1, got {self.feature_dim}"
            raise RewardError(msg)


def to_tensor(frames: np.ndarray | torch.Tensor, size: int, device: torch.device) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, size, size) float in [0, 1] on ``device`` (resize on device)."""
    x = torch.as_tensor(frames).to(device, non_blocking=True)
    if x.ndim != 4 or x.shape[-1] != 3:
        msg = f"frames must be (B, H, W, 3), got {tuple(x.shape)}"
        raise RewardError(msg)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return x


def augment(
    x: torch.Tensor, generator: torch.Generator | None = None, pad: int = 4
) -> torch.Tensor:
    """Random shift by up to ``pad`` pixels (replicate padding) and brightness/contrast jitter."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device="cpu")
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device="cpu")
    rows = (torch.arange(h)[None, :] + dy[:, None]).to(x.device)  # (B, h)
    cols = (torch.arange(w)[None, :] + dx[:, None]).to(x.device)  # (B, w)
    idx_b = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_b, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    gain = 1.0 + 0.2 * (torch.rand(b, 1, 1, 1, generator=generator) - 0.5).to(x.device)
    bias = 0.1 * (torch.rand(b, 1, 1, 1, generator=generator) - 0.5).to(x.device)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    return ((out - mean) * gain + mean + bias).clamp_(0.0, 1.0)


class ConvEncoder(nn.Module):
    """Stride-2 conv stack -> global average pool -> linear features."""

    def __init__(self, config: ConvEncoderConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        c_in = 3
        for c in config.channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(1, c), nn.GELU()]
            c_in = c
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Linear(c_in, config.feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Centre the [0, 1] input; the norms inside handle the rest.
        h = self.convs(x - 0.5)
        return self.proj(h.mean(dim=(2, 3)))


class ImageScorer(nn.Module):
    """ConvEncoder + MLP head -> one scalar per frame (a logit or a reward)."""

    def __init__(self, config: ConvEncoderConfig, hidden: int = 128) -> None:
        super().__init__()
        self.encoder = ConvEncoder(config)
        self.head = nn.Sequential(
            nn.GELU(), nn.Linear(config.feature_dim, hidden), nn.GELU(), nn.Linear(hidden, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)).squeeze(-1)
