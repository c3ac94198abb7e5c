"""Behaviour cloning: a tanh-Gaussian actor fitted to the dataset actions.

The baseline every offline RL result is compared with (IQL must beat it on noisy demos). The
observation encoder (small CNN for images) trains through the actor loss with DrQ random-shift
augmentation; ``act`` returns the tanh of the Gaussian mean.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from .common import Batch, Obs, adam, check_batch, check_common
from .errors import PolicyError
from .networks import EncoderSpec, ObsEncoder, TanhGaussianActor, policy_action

__all__ = ["BC", "BCConfig"]


@dataclass(frozen=True)
class BCConfig:
    """Behaviour cloning hyper-parameters (CORL any_percent_bc defaults where they exist)."""

    type: ClassVar[str] = "bc"
    gamma: float = 0.99  # discount (unused by BC; kept so every algorithm config has it)
    batch_size: int = 256  # minibatch size the trainer samples
    lr: float = 3e-4  # Adam learning rate of the actor and the encoder
    hidden: tuple[int, ...] = (256, 256)  # actor MLP widths
    loss: Literal["nll", "mse"] = "nll"  # nll: -log pi(a|s); mse: |tanh(mean) - a|^2

    def __post_init__(self) -> None:
        check_common(self.gamma, self.batch_size, self.hidden)
        if not self.lr > 0:
            msg = f"lr must be > 0, got {self.lr}"
            raise PolicyError(msg)
        if self.loss not in ("nll", "mse"):
            msg = f"unknown bc loss {self.loss!r}. Available: ['mse', 'nll']"
            raise PolicyError(msg)


class BC:
    """Maximum-likelihood (or MSE) regression of dataset actions; encoder trained through it."""

    def __init__(self, spec: EncoderSpec, config: BCConfig, *, device: torch.device) -> None:
        self.spec = spec
        self.config = config
        self.device = torch.device(device)
        self.encoder = ObsEncoder(spec).to(self.device)
        self.actor = TanhGaussianActor(self.encoder.out_dim, spec.action_dim, config.hidden).to(
            self.device
        )
        params = [p for p in self.encoder.parameters() if p.requires_grad]
        self.actor_opt = adam([*self.actor.parameters(), *params], lr=config.lr)
        self.total_updates = 0

    def update(self, batch: Batch) -> dict[str, float]:
        """One gradient step of the actor (and encoder) on ``batch``."""
        batch = check_batch(batch, self.spec, self.device)
        feats = self.encoder(batch.obs, augment=True)
        log = self._update_policy(feats, batch.action)
        self.total_updates += 1
        values = torch.stack(list(log.values())).tolist()  # one device sync for all scalars
        return dict(zip(log, values, strict=True))

    def _update_policy(self, feats: torch.Tensor, action: torch.Tensor) -> dict[str, torch.Tensor]:
        log_prob = self.actor.log_prob(feats, action)
        mean_action, _ = self.actor(feats, deterministic=True)
        mse = F.mse_loss(mean_action, action)
        loss = -log_prob.mean() if self.config.loss == "nll" else mse
        self.actor_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.actor_opt.step()
        return {
            "actor_loss": loss.detach(),
            "log_prob": log_prob.detach().mean(),
            "action_mse": mse.detach(),
        }

    @torch.no_grad()
    def act(self, obs: Obs, *, deterministic: bool = True) -> torch.Tensor:
        """(B, A) actions in [-1, 1]: tanh of the mean, or a sample when not deterministic."""
        return policy_action(
            self.encoder, self.actor, obs, self.device, deterministic=deterministic
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "encoder": self.encoder.state_dict(),
            "actor": self.actor.state_dict(),
            "actor_opt": self.actor_opt.state_dict(),
            "total_updates": self.total_updates,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.encoder.load_state_dict(state["encoder"])
        self.actor.load_state_dict(state["actor"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.total_updates = int(state["total_updates"])
