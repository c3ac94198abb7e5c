"""Encoders, actor and critics.

Image encoders: the RoboFuME/DrQ-style small CNN (4 conv layers, then Linear + LayerNorm + tanh,
trained through the critic) with random-shift augmentation, or a frozen pretrained backbone
(torchvision ResNet-18 or an open_clip image tower) when weights exist. :class:`ObsEncoder`
fuses image features with the state vector. The actor is a tanh-Gaussian; critics are a
vectorised ensemble (one batched matmul for all members, as RLPD/SAC-N do).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .common import mlp
from .errors import PolicyError

__all__ = [
    "ConvEncoder",
    "CriticEnsemble",
    "EncoderSpec",
    "FrozenBackbone",
    "ObsEncoder",
    "TanhGaussianActor",
    "policy_action",
    "random_shift",
]

EncoderKind = Literal["cnn", "resnet18", "clip"]
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


@dataclass(frozen=True)
class EncoderSpec:
    """What the policy observes and how images are encoded (shared by actor and critics)."""

    state_dim: int  # length of obs["state"]
    action_dim: int = 5  # normalised EE delta xyz, yaw, gripper
    image_size: int = 0  # square input side of obs["image"] (0: state-only policy)
    encoder: EncoderKind = "cnn"  # image encoder when image_size > 0
    features: int = 50  # image feature width after the encoder's projection
    channels: int = 32  # conv width of the small CNN
    drq_pad: int = 4  # random-shift augmentation, pixels (0 disables it)
    backbone: str = ""  # resnet18: weights file; clip: "model_name" or "model_name:weights"

    def __post_init__(self) -> None:
        if self.state_dim < 0 or self.action_dim < 1:
            msg = f"state_dim must be >= 0 and action_dim >= 1, got {self.state_dim}, {self.action_dim}"
            raise PolicyError(msg)
        if self.image_size == 0 and self.state_dim == 0:
            msg = "a policy needs a state vector, an image, or both (state_dim=0, image_size=0)"
            raise PolicyError(msg)
        if self.image_size and not 32 <= self.image_size <= 256:
            msg = f"image_size must be 0 (no image) or in [32, 256], got {self.image_size}"
            raise PolicyError(msg)
        if self.encoder not in ("cnn", "resnet18", "clip"):
            msg = f"unknown encoder {self.encoder!r}. Available: ['cnn', 'clip', 'resnet18']"
            raise PolicyError(msg)
        if self.features < 1 or self.channels < 1 or self.drq_pad < 0:
            msg = "features and channels must be >= 1 and drq_pad >= 0"
            raise PolicyError(msg)

    @property
    def uses_image(self) -> bool:
        return self.image_size > 0


def random_shift(images: torch.Tensor, pad: int) -> torch.Tensor:
    """DrQ augmentation: replicate-pad by ``pad`` and crop back at a random offset per sample.

    ``images``: (B, C, H, W) float. Integer shifts via one grid_sample call (no Python loop).
    """
    if pad <= 0:
        return images
    n, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    eps_h, eps_w = 1.0 / (h + 2 * pad), 1.0 / (w + 2 * pad)
    ar_h = torch.linspace(-1 + eps_h, 1 - eps_h, h + 2 * pad, device=images.device)[:h]
    ar_w = torch.linspace(-1 + eps_w, 1 - eps_w, w + 2 * pad, device=images.device)[:w]
    base = torch.stack(torch.meshgrid(ar_w, ar_h, indexing="xy"), dim=-1)  # (h, w, 2) as (x, y)
    shift = torch.randint(0, 2 * pad + 1, (n, 1, 1, 2), device=images.device).float()
    shift[..., 0] *= 2.0 / (w + 2 * pad)
    shift[..., 1] *= 2.0 / (h + 2 * pad)
    return F.grid_sample(
        padded, base.unsqueeze(0) + shift, padding_mode="zeros", align_corners=False
    )


def _to_float(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.ndim != 4 or images.shape[1] != 3:
        msg = f"obs['image'] must be (B, 3, H, W), got {tuple(images.shape)}"
        raise PolicyError(msg)
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return x


class ConvEncoder(nn.Module):
    """4 conv layers (first with stride 2), then Linear -> LayerNorm -> tanh (DrQ/RoboFuME)."""

    def __init__(self, size: int, channels: int = 32, features: int = 50) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(3, channels, 3, stride=2), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=1), nn.ReLU(),
        )  # fmt: skip
        with torch.no_grad():
            flat = self.convs(torch.zeros(1, 3, size, size)).numel()
        self.head = nn.Sequential(nn.Linear(flat, features), nn.LayerNorm(features), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x - 0.5
        if x.device.type == "cpu":
            # oneDNN's NHWC convolutions: forward + backward of this CNN at batch 256, 84x84,
            # 1 thread took 1.13 s instead of 1.50 s (benchmarks/learner.py). Only the input
            # changes layout; the weights (and so checkpoints) stay contiguous NCHW.
            x = x.contiguous(memory_format=torch.channels_last)
        return self.head(self.convs(x).flatten(1))


class FrozenBackbone(nn.Module):
    """A pretrained image tower kept frozen, with a trainable Linear + LayerNorm projection.

    ``kind="resnet18"``: torchvision ResNet-18, weights from ``source`` (a state_dict file; no
    download). ``kind="clip"``: an open_clip image tower, ``source`` = "model_name" or
    "model_name:weights" loaded through twinloop.vlm_reward's open_clip loader.
    """

    def __init__(self, kind: EncoderKind, source: str, size: int, features: int) -> None:
        super().__init__()
        self.kind = kind
        tower, width = _load_backbone(kind, source)
        tower.requires_grad_(False)
        tower.eval()
        # Held outside the module tree: the frozen weights stay out of state_dict (checkpoints
        # hold only the trainable projection; the backbone is reloaded from ``source``).
        self._tower: tuple[nn.Module] = (tower,)
        mean = (0.485, 0.456, 0.406) if kind == "resnet18" else (0.4815, 0.4578, 0.4082)
        std = (0.229, 0.224, 0.225) if kind == "resnet18" else (0.2686, 0.2613, 0.2758)
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.size = size
        self.head = nn.Sequential(nn.Linear(width, features), nn.LayerNorm(features), nn.Tanh())

    @property
    def tower(self) -> nn.Module:
        return self._tower[0]

    def _apply(self, fn: Any, recurse: bool = True) -> FrozenBackbone:  # .to(), .cuda(), .half()
        self._tower[0]._apply(fn)
        return super()._apply(fn, recurse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            feats = self.tower((x - self.mean) / self.std).float()  # tower stays in eval mode
        return self.head(feats)


def _load_backbone(kind: EncoderKind, source: str) -> tuple[nn.Module, int]:
    if kind == "resnet18":
        import torchvision

        net = torchvision.models.resnet18(weights=None)
        if not source:
            msg = (
                "encoder resnet18 needs its weights file (EncoderSpec.backbone); get one with "
                "torchvision.models.resnet18(weights='IMAGENET1K_V1') and torch.save(state_dict) "
                "on a machine with network"
            )
            raise PolicyError(msg)
        try:
            state = torch.load(source, map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        except (OSError, RuntimeError) as err:
            msg = f"could not load ResNet-18 weights from {source}: {err}"
            raise PolicyError(msg) from err
        width = net.fc.in_features
        net.fc = nn.Identity()
        return net, width
    from twinloop.vlm_reward.encoders import OpenClipConfig, load_open_clip
    from twinloop.vlm_reward.errors import RewardError

    name, _, weights = source.partition(":")
    if not name:
        msg = "encoder clip needs EncoderSpec.backbone = 'model_name' or 'model_name:weights'"
        raise PolicyError(msg)
    try:
        encoder = load_open_clip(
            OpenClipConfig(model_name=name, checkpoint=weights, device="cpu", precision="fp32")
        )
    except RewardError as err:
        raise PolicyError(str(err)) from err
    return encoder.model.visual, encoder.embed_dim


class ObsEncoder(nn.Module):
    """obs dict -> feature vector: [image features, state] (image part optional)."""

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__()
        self.spec = spec
        self.image: nn.Module | None = None
        if spec.uses_image:
            if spec.encoder == "cnn":
                self.image = ConvEncoder(spec.image_size, spec.channels, spec.features)
            else:
                self.image = FrozenBackbone(
                    spec.encoder, spec.backbone, spec.image_size, spec.features
                )
        self.out_dim = spec.state_dim + (spec.features if spec.uses_image else 0)
        # State normalisation (CORL normalises states with the dataset's mean/std): identity
        # until set_state_normalization; saved with the weights, so the actor uses the same.
        self.state_loc: torch.Tensor
        self.state_scale: torch.Tensor
        self.register_buffer("state_loc", torch.zeros(spec.state_dim))
        self.register_buffer("state_scale", torch.ones(spec.state_dim))

    @torch.no_grad()
    def set_state_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Standardise obs["state"] with these statistics (std below 1e-3 counts as 1e-3)."""
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if mean.shape != (self.spec.state_dim,) or std.shape != mean.shape:
            msg = (
                f"state statistics must have {self.spec.state_dim} values, got {tuple(mean.shape)}"
            )
            raise PolicyError(msg)
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
            msg = "state statistics hold NaN or inf"
            raise PolicyError(msg)
        self.state_loc.copy_(mean)
        self.state_scale.copy_(std.clamp(min=1e-3))

    def forward(self, obs: Mapping[str, torch.Tensor], *, augment: bool = False) -> torch.Tensor:
        parts = []
        if self.image is not None:
            if "image" not in obs:
                msg = "this policy needs obs['image'] (an image policy), none was given"
                raise PolicyError(msg)
            x = _to_float(obs["image"], self.spec.image_size)
            if augment and self.spec.drq_pad:
                x = random_shift(x, self.spec.drq_pad)
            parts.append(self.image(x))
        if self.spec.state_dim:
            state = obs.get("state")
            if state is None or state.shape[-1] != self.spec.state_dim:
                got = None if state is None else tuple(state.shape)
                msg = f"obs['state'] must be (B, {self.spec.state_dim}), got {got}"
                raise PolicyError(msg)
            parts.append((state.float() - self.state_loc) / self.state_scale)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


class TanhGaussianActor(nn.Module):
    """pi(a|s) = tanh(N(mu(s), sigma(s))); log-probabilities with the tanh correction."""

    def __init__(self, in_dim: int, action_dim: int, hidden: tuple[int, ...] = (256, 256)) -> None:
        super().__init__()
        self.net = mlp(in_dim, hidden, 2 * action_dim)
        self.action_dim = action_dim

    def _dist(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_std = self.net(feats).chunk(2, dim=-1)
        log_std = torch.tanh(log_std)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (log_std + 1)
        return mu, log_std

    def forward(
        self, feats: torch.Tensor, *, deterministic: bool = False, with_log_prob: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        mu, log_std = self._dist(feats)
        if deterministic:
            return torch.tanh(mu), None
        std = log_std.exp()
        u = mu + std * torch.randn_like(mu)
        action = torch.tanh(u)
        if not with_log_prob:
            return action, None
        return action, _log_prob(u, mu, log_std)

    def log_prob(self, feats: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """log-likelihood of a given (dataset) action under N(tanh(mu), sigma), in action space.

        For BC and IQL's advantage-weighted regression (CORL's IQL does the same). Not the
        tanh-squashed density: dataset actions sit exactly at +-1 (a closed gripper, a move at
        the step limit), where atanh is unbounded and the squashed likelihood is dominated by
        those entries.
        """
        mu, log_std = self._dist(feats)
        z = (action - torch.tanh(mu)) / log_std.exp()
        return (-0.5 * (z**2 + math.log(2 * math.pi)) - log_std).sum(-1)


def _log_prob(u: torch.Tensor, mu: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    normal = -0.5 * (((u - mu) / log_std.exp()) ** 2 + 2 * log_std + math.log(2 * math.pi))
    # log det of tanh: log(1 - tanh(u)^2) = 2 * (log 2 - u - softplus(-2u)), numerically stable
    correction = 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))
    return (normal - correction).sum(-1)


@torch.no_grad()
def policy_action(
    encoder: ObsEncoder,
    actor: TanhGaussianActor,
    obs: Mapping[str, torch.Tensor],
    device: torch.device,
    *,
    deterministic: bool = True,
) -> torch.Tensor:
    """(B, A) actions in [-1, 1]: tanh of the mean, or a sample when not deterministic."""
    feats = encoder({k: v.to(device, non_blocking=True) for k, v in obs.items()})
    action, _ = actor(feats, deterministic=deterministic, with_log_prob=False)
    return action


class _EnsembleLinear(nn.Module):
    def __init__(self, n: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(n, 1, out_dim))
        bound = 1.0 / math.sqrt(in_dim)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (n, B, in) -> (n, B, out)
        return torch.baddbmm(self.bias, x, self.weight)


class _EnsembleLayerNorm(nn.Module):
    """LayerNorm with its own scale and shift per ensemble member (RLPD's critics)."""

    def __init__(self, n: int, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n, 1, width))
        self.bias = nn.Parameter(torch.zeros(n, 1, width))
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (n, B, width)
        return F.layer_norm(x, (self.width,)) * self.weight + self.bias


class CriticEnsemble(nn.Module):
    """n Q-functions Q_i(s, a) evaluated in one batched pass; returns (n, B)."""

    def __init__(
        self,
        in_dim: int,
        action_dim: int,
        n: int = 2,
        hidden: tuple[int, ...] = (256, 256),
        *,
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        if n < 1:
            msg = f"a critic ensemble needs n >= 1 members, got {n}"
            raise PolicyError(msg)
        self.n = n
        layers: list[nn.Module] = []
        width = in_dim + action_dim
        for h in hidden:
            layers.append(_EnsembleLinear(n, width, h))
            if layer_norm:
                layers.append(_EnsembleLayerNorm(n, h))
            layers.append(nn.ReLU())
            width = h
        layers.append(_EnsembleLinear(n, width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, feats: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = torch.cat([feats, action], dim=-1)
        if x.ndim == 2 and x.device.type == "cpu":
            return torch.stack([self._member(x, i) for i in range(self.n)])
        x = x.unsqueeze(0).expand(self.n, *x.shape) if x.ndim == 2 else x
        return self.net(x).squeeze(-1)

    def _member(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """Member i alone on (B, in): 2-D matmuls, smaller activations (faster on CPUs)."""
        for layer in self.net:
            if isinstance(layer, _EnsembleLinear):
                x = torch.addmm(layer.bias[i], x, layer.weight[i])
            elif isinstance(layer, _EnsembleLayerNorm):
                x = F.layer_norm(x, (layer.width,)) * layer.weight[i] + layer.bias[i]
            else:
                x = layer(x)
        return x.squeeze(-1)
