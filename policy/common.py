"""Pieces every algorithm shares, written once: Batch, mlp, soft_update, Monte-Carlo returns.

Observations are dicts of tensors: ``"state"`` (B, S) float32 (proprio, optional privileged
state, optional task one-hot and text embedding, already concatenated) and, for image policies,
``"image"`` (B, 3, H, W) uint8. Actions are normalised to [-1, 1]^A.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .errors import PolicyError

if TYPE_CHECKING:
    from .networks import EncoderSpec

__all__ = [
    "Batch",
    "Obs",
    "check_batch",
    "check_common",
    "mc_returns",
    "mlp",
    "obs_to",
    "soft_update",
]

Obs = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Batch:
    """A minibatch of transitions (all tensors on the same device, first dim B).

    ``done`` is 1 only where the episode *terminated* (success under -1/0 rewards); a time-limit
    truncation is not a terminal and keeps bootstrapping. ``mc_return`` is the discounted
    return-to-go of the data (Cal-QL's lower bound); NaN where unknown (online rows do not need it).
    """

    obs: Obs
    action: torch.Tensor  # (B, A) in [-1, 1]
    reward: torch.Tensor  # (B,)
    next_obs: Obs
    done: torch.Tensor  # (B,) float 0/1
    mc_return: torch.Tensor  # (B,)

    def __post_init__(self) -> None:
        n = self.action.shape[0]
        for name, value in (("reward", self.reward), ("done", self.done), ("mc", self.mc_return)):
            if value.shape != (n,):
                msg = f"batch {name} must have shape ({n},), got {tuple(value.shape)}"
                raise PolicyError(msg)
        for label, obs in (("obs", self.obs), ("next_obs", self.next_obs)):
            for key, value in obs.items():
                if value.shape[0] != n:
                    msg = f"batch {label}[{key!r}] has {value.shape[0]} rows for {n} actions"
                    raise PolicyError(msg)

    def __len__(self) -> int:
        return int(self.action.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        moved: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, dict):
                moved[f.name] = obs_to(value, device)
            else:
                moved[f.name] = value.to(device, non_blocking=True)
        return Batch(**moved)


def obs_to(obs: Mapping[str, torch.Tensor], device: torch.device | str) -> Obs:
    return {k: v.to(device, non_blocking=True) for k, v in obs.items()}


def mlp(
    in_dim: int,
    hidden: Sequence[int],
    out_dim: int,
    *,
    layer_norm: bool = False,
    dropout: float = 0.0,
    activation: type[nn.Module] = nn.ReLU,
) -> nn.Sequential:
    """Linear -> [LayerNorm] -> act -> [Dropout], per hidden layer, then a linear head."""
    layers: list[nn.Module] = []
    width = in_dim
    for h in hidden:
        layers.append(nn.Linear(width, h))
        if layer_norm:
            layers.append(nn.LayerNorm(h))
        layers.append(activation())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


def adam(params: Iterable[torch.Tensor], lr: float) -> torch.optim.Adam:
    """Adam with the fused kernel (one kernel for all parameters on CPU and CUDA; same update
    rule and state_dict layout as the default per-tensor loop, 5-15% more updates/s here)."""
    return torch.optim.Adam(list(params), lr=lr, fused=True)


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging: target <- (1 - tau) * target + tau * source."""
    t_params: list[torch.Tensor] = list(target.parameters())
    s_params: list[torch.Tensor] = list(source.parameters())
    if len(t_params) != len(s_params):
        msg = "soft_update: target and source have different parameter lists"
        raise PolicyError(msg)
    torch._foreach_lerp_(t_params, s_params, tau)


def mc_returns(
    rewards: np.ndarray,
    episode_ends: np.ndarray,
    gamma: float,
    *,
    terminated: np.ndarray | None = None,
) -> np.ndarray:
    """Discounted return-to-go of every row, episode by episode.

    ``episode_ends``: cumulative end index of each episode (the store's ``meta/episode_ends``).
    An episode that did not terminate (``terminated[i]`` False: it hit the time limit, failed)
    continues past its last row; its tail is valued as the last reward repeated forever,
    ``r_T / (1 - gamma)``, which for -1/0 rewards is the exact return of never succeeding (CORL's
    Cal-QL treats failed sparse episodes the same way). Terminated episodes have no tail.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    ends = np.asarray(episode_ends, dtype=np.int64)
    if not 0.0 <= gamma < 1.0:
        msg = f"gamma must be in [0, 1), got {gamma}"
        raise PolicyError(msg)
    if ends.ndim != 1 or (len(ends) and ends[-1] != len(rewards)) or np.any(np.diff(ends) <= 0):
        msg = f"episode_ends must increase to len(rewards)={len(rewards)}, got {ends[-3:]}"
        raise PolicyError(msg)
    if terminated is None:
        terminated = np.ones(len(ends), dtype=bool)
    out = np.empty_like(rewards)
    start = 0
    for i, end in enumerate(ends):
        acc = 0.0 if terminated[i] else rewards[end - 1] / (1.0 - gamma)
        for t in range(end - 1, start - 1, -1):
            acc = rewards[t] + gamma * acc
            out[t] = acc
        start = end
    return out.astype(np.float32)


def check_common(gamma: float, batch_size: int, hidden: tuple[int, ...]) -> None:
    """Validate the fields every algorithm config has (PolicyError naming the bad one)."""
    if not 0.0 <= gamma < 1.0:
        msg = f"gamma must be in [0, 1), got {gamma}"
        raise PolicyError(msg)
    if batch_size < 1:
        msg = f"batch_size must be >= 1, got {batch_size}"
        raise PolicyError(msg)
    if not hidden or any(int(h) < 1 for h in hidden):
        msg = f"hidden must be a non-empty tuple of widths >= 1, got {hidden}"
        raise PolicyError(msg)


def check_batch(batch: Batch, spec: EncoderSpec, device: torch.device) -> Batch:
    """``batch`` on ``device``; PolicyError when its action width is not the spec's."""
    if batch.action.ndim != 2 or batch.action.shape[1] != spec.action_dim:
        msg = f"batch action must be (B, {spec.action_dim}), got {tuple(batch.action.shape)}"
        raise PolicyError(msg)
    return batch.to(device)
