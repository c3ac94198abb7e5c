"""Implicit Q-Learning (Kostrikov et al. 2021), as in CORL's iql.py.

Three losses per step, never querying out-of-distribution actions:

- value: V(s) regresses to the ``expectile`` of min_i Q_target_i(s, a) over dataset actions;
- critic: Q_i(s, a) regresses to r + gamma * (1 - done) * V(s');
- actor: advantage-weighted regression, -min(exp(beta * (Q_target - V)), exp_adv_max) *
  log pi(a|s) on dataset actions.

Image policies: one :class:`ObsEncoder` trained through the Q loss with DrQ random shifts; the
value net and the actor read its features detached, and the target critic reads them without
gradient (DrQ-v2 keeps no target encoder either).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from .common import Batch, Obs, adam, check_batch, check_common, mlp, soft_update
from .errors import PolicyError
from .networks import CriticEnsemble, EncoderSpec, ObsEncoder, TanhGaussianActor, policy_action

__all__ = ["IQL", "IQLConfig", "advantage_weights", "expectile_loss"]


@dataclass(frozen=True)
class IQLConfig:
    """IQL hyper-parameters; defaults are CORL's (D4RL locomotion)."""

    type: ClassVar[str] = "iql"
    gamma: float = 0.99  # discount
    batch_size: int = 256  # minibatch size the trainer samples
    expectile: float = 0.7  # value expectile: 0.5 is mean regression, towards 1 approaches max
    beta: float = 3.0  # inverse temperature of the advantage weights
    exp_adv_max: float = 100.0  # clip of the advantage weights exp(beta * adv)
    tau: float = 0.005  # Polyak rate of the target critic
    actor_lr: float = 3e-4  # Adam learning rate of the actor
    critic_lr: float = 3e-4  # Adam learning rate of the critics (and the image encoder)
    value_lr: float = 3e-4  # Adam learning rate of the value net
    hidden: tuple[int, ...] = (256, 256)  # MLP widths of actor, critics and value net
    n_critics: int = 2  # critic ensemble size; targets use the minimum
    max_steps: int = 0  # >0: actor lr follows a cosine to 0 over this many updates, then stays

    def __post_init__(self) -> None:
        check_common(self.gamma, self.batch_size, self.hidden)
        if not 0.0 < self.expectile < 1.0:
            msg = f"expectile must be in (0, 1), got {self.expectile}"
            raise PolicyError(msg)
        for name in ("beta", "exp_adv_max", "actor_lr", "critic_lr", "value_lr"):
            if not getattr(self, name) > 0:
                msg = f"{name} must be > 0, got {getattr(self, name)}"
                raise PolicyError(msg)
        if not 0.0 < self.tau <= 1.0:
            msg = f"tau must be in (0, 1], got {self.tau}"
            raise PolicyError(msg)
        if self.n_critics < 1:
            msg = f"n_critics must be >= 1, got {self.n_critics}"
            raise PolicyError(msg)
        if self.max_steps < 0:
            msg = f"max_steps must be >= 0 (0: constant actor lr), got {self.max_steps}"
            raise PolicyError(msg)


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """mean(|expectile - 1(diff < 0)| * diff^2); ``diff`` = target - prediction."""
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return (weight * diff.square()).mean()


def advantage_weights(adv: torch.Tensor, beta: float, max_weight: float) -> torch.Tensor:
    """AWR weights exp(beta * adv), clipped above at ``max_weight``."""
    return torch.exp(beta * adv).clamp(max=max_weight)


class IQL:
    """IQL with an optional image encoder trained through the critic loss."""

    def __init__(self, spec: EncoderSpec, config: IQLConfig, *, device: torch.device) -> None:
        self.spec = spec
        self.config = config
        self.device = torch.device(device)
        c = config
        self.encoder = ObsEncoder(spec).to(self.device)
        feat = self.encoder.out_dim
        self.actor = TanhGaussianActor(feat, spec.action_dim, c.hidden).to(self.device)
        self.critic = CriticEnsemble(feat, spec.action_dim, c.n_critics, c.hidden).to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.value = mlp(feat, c.hidden, 1).to(self.device)
        enc_params = [p for p in self.encoder.parameters() if p.requires_grad]
        self.actor_opt = adam(self.actor.parameters(), lr=c.actor_lr)
        self.critic_opt = adam([*self.critic.parameters(), *enc_params], lr=c.critic_lr)
        self.value_opt = adam(self.value.parameters(), lr=c.value_lr)
        self.actor_sched: torch.optim.lr_scheduler.LRScheduler | None = None
        if c.max_steps > 0:
            self.actor_sched = torch.optim.lr_scheduler.CosineAnnealingLR(
                self.actor_opt, c.max_steps
            )
        self.total_updates = 0

    def update(self, batch: Batch) -> dict[str, float]:
        """One gradient step of value net, critics and actor, then the target critic."""
        batch = check_batch(batch, self.spec, self.device)
        feats = self.encoder(batch.obs, augment=True)
        with torch.no_grad():
            next_v = self.value(self.encoder(batch.next_obs, augment=True)).squeeze(-1)
        log: dict[str, torch.Tensor] = {}
        adv = self._update_v(feats.detach(), batch.action, log)
        self._update_q(feats, batch.action, batch.reward, batch.done, next_v, log)
        self._update_policy(feats.detach(), batch.action, adv, log)
        self.total_updates += 1
        values = torch.stack(list(log.values())).tolist()  # one device sync for all scalars
        out = dict(zip(log, values, strict=True))
        out["actor_lr"] = float(self.actor_opt.param_groups[0]["lr"])
        return out

    def _update_v(
        self, feats: torch.Tensor, action: torch.Tensor, log: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Expectile regression of V(s) on the target critics; returns the advantages."""
        with torch.no_grad():
            target_q = self.critic_target(feats, action).min(dim=0).values
        v = self.value(feats).squeeze(-1)
        adv = target_q - v
        loss = expectile_loss(adv, self.config.expectile)
        self.value_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.value_opt.step()
        log.update(value_loss=loss.detach(), v_mean=v.detach().mean(), adv_mean=adv.detach().mean())
        return adv.detach()

    def _update_q(
        self,
        feats: torch.Tensor,
        action: torch.Tensor,
        reward: torch.Tensor,
        done: torch.Tensor,
        next_v: torch.Tensor,
        log: dict[str, torch.Tensor],
    ) -> None:
        """TD regression of every critic (and the encoder) on r + gamma * (1 - done) * V(s')."""
        target = reward + self.config.gamma * (1.0 - done) * next_v
        q = self.critic(feats, action)  # (n, B)
        loss = F.mse_loss(q, target.unsqueeze(0).expand_as(q))
        self.critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_opt.step()
        soft_update(self.critic_target, self.critic, self.config.tau)
        log.update(q_loss=loss.detach(), q_mean=q.detach().mean())

    def _update_policy(
        self,
        feats: torch.Tensor,
        action: torch.Tensor,
        adv: torch.Tensor,
        log: dict[str, torch.Tensor],
    ) -> None:
        """Advantage-weighted regression: -weight(adv) * log pi(a|s) on dataset actions."""
        weights = advantage_weights(adv, self.config.beta, self.config.exp_adv_max)
        log_prob = self.actor.log_prob(feats, action)
        loss = -(weights * log_prob).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.actor_opt.step()
        if self.actor_sched is not None and self.total_updates < self.config.max_steps:
            self.actor_sched.step()
        log.update(
            actor_loss=loss.detach(),
            log_prob=log_prob.detach().mean(),
            adv_weight_mean=weights.mean(),
            adv_weight_max=weights.max(),
        )

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
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "value": self.value.state_dict(),
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
            "value_opt": self.value_opt.state_dict(),
            "actor_sched": None if self.actor_sched is None else self.actor_sched.state_dict(),
            "total_updates": self.total_updates,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name in ("encoder", "actor", "critic", "critic_target", "value"):
            getattr(self, name).load_state_dict(state[name])
        for name in ("actor_opt", "critic_opt", "value_opt"):
            getattr(self, name).load_state_dict(state[name])
        if self.actor_sched is not None:
            self.actor_sched.load_state_dict(state["actor_sched"])
        self.total_updates = int(state["total_updates"])
