"""Soft actor-critic with RLPD's options (Ball et al. 2023) for online fine-tuning.

SAC: critics regress to r + gamma * (1 - done) * (min Q_target(s', a') - alpha * log pi(a'|s')),
the actor maximises Q - alpha * log pi, and the temperature alpha tracks a target entropy of
-action_dim. RLPD adds a LayerNorm critic ensemble (10 members) whose target takes the minimum of a
random subset of 2, a high update-to-data ratio (UTD: several critic steps per actor step) and
symmetric 50/50 sampling of offline and online data (the trainer's MixedSampler does the mixing;
the config only carries ``offline_fraction``).

Image policies: one :class:`ObsEncoder` trained through the critic loss with DrQ random shifts;
the actor reads its features detached and the target critic reads them without gradient (no
target encoder, as in DrQ-v2).

:class:`SoftActorCritic` holds the parts SAC and Cal-QL share (networks, temperature, actor step,
checkpoint state); :mod:`twinloop.policy.calql` builds on it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from .common import Batch, Obs, adam, check_batch, check_common, soft_update
from .errors import PolicyError
from .networks import CriticEnsemble, EncoderSpec, ObsEncoder, TanhGaussianActor, policy_action

__all__ = [
    "SAC",
    "SACConfig",
    "SoftActorCritic",
    "rlpd_config",
    "split_batch",
    "subsample_min",
]


@dataclass(frozen=True)
class SACConfig:
    """SAC hyper-parameters; defaults are plain SAC, :func:`rlpd_config` gives RLPD's."""

    type: ClassVar[str] = "sac"
    gamma: float = 0.99  # discount
    tau: float = 0.005  # Polyak rate of the target critics
    lr: float = 3e-4  # Adam learning rate of actor, critics (+ image encoder) and temperature
    batch_size: int = 256  # rows per critic minibatch; the trainer samples utd * batch_size
    hidden: tuple[int, ...] = (256, 256)  # MLP widths of actor and critics
    n_critics: int = 2  # critic ensemble size (RLPD: 10)
    critic_subsample: int | None = None  # target = min over this many random critics (RLPD: 2)
    layer_norm: bool = False  # LayerNorm in the critics (RLPD: True)
    init_temperature: float = 1.0  # initial alpha (RLPD 1.0; 0.1 is common for plain SAC)
    auto_temperature: bool = True  # tune alpha towards target_entropy
    target_entropy: float | None = None  # None: -action_dim
    backup_entropy: bool = True  # subtract alpha * log pi(a'|s') in the TD target
    utd: int = 1  # critic steps per update() call; update() gets utd * batch_size rows
    offline_fraction: float = 0.5  # share of offline rows per batch (RLPD symmetric sampling)

    def __post_init__(self) -> None:
        check_common(self.gamma, self.batch_size, self.hidden)
        _check_positive(self, ("lr", "init_temperature"))
        _check_tau(self.tau)
        if self.n_critics < 1:
            msg = f"n_critics must be >= 1, got {self.n_critics}"
            raise PolicyError(msg)
        if self.critic_subsample is not None and not 1 <= self.critic_subsample <= self.n_critics:
            msg = (
                f"critic_subsample must be None or in [1, n_critics={self.n_critics}], "
                f"got {self.critic_subsample}"
            )
            raise PolicyError(msg)
        if self.utd < 1:
            msg = f"utd must be >= 1 (critic steps per update), got {self.utd}"
            raise PolicyError(msg)
        _check_fraction(self.offline_fraction)


def rlpd_config(**overrides: Any) -> SACConfig:
    """RLPD's SAC: 10 LayerNorm critics, target min over 2 random ones, 50/50 offline/online.

    The paper uses UTD 20; the default here is 4 so that an update stays affordable on a laptop
    CPU (pass ``utd=20`` to match the paper on a GPU).
    """
    base = SACConfig(
        n_critics=10,
        critic_subsample=2,
        layer_norm=True,
        init_temperature=1.0,
        backup_entropy=True,
        utd=4,
        offline_fraction=0.5,
    )
    try:
        return replace(base, **overrides)
    except TypeError as err:
        msg = f"bad rlpd_config override: {err}"
        raise PolicyError(msg) from err


def _check_positive(config: object, names: tuple[str, ...]) -> None:
    for name in names:
        if not getattr(config, name) > 0:
            msg = f"{name} must be > 0, got {getattr(config, name)}"
            raise PolicyError(msg)


def _check_tau(tau: float) -> None:
    if not 0.0 < tau <= 1.0:
        msg = f"tau must be in (0, 1], got {tau}"
        raise PolicyError(msg)


def _check_fraction(fraction: float) -> None:
    if not 0.0 <= fraction <= 1.0:
        msg = f"offline_fraction must be in [0, 1], got {fraction}"
        raise PolicyError(msg)


def subsample_min(q: torch.Tensor, k: int | None) -> torch.Tensor:
    """Minimum over ``k`` randomly chosen ensemble members of ``q`` (n, ...); all when None.

    One random subset for the whole batch, as RLPD/REDQ draw it per update.
    """
    n = q.shape[0]
    if k is None or k >= n:
        return q.min(dim=0).values
    idx = torch.randperm(n, device=q.device)[:k]
    return q.index_select(0, idx).min(dim=0).values


def split_batch(batch: Batch, parts: int) -> list[Batch]:
    """``batch`` cut into ``parts`` equal consecutive minibatches (views, no copies)."""
    n = len(batch)
    if parts < 1 or n == 0 or n % parts:
        msg = (
            f"a batch of {n} rows cannot be split into utd={parts} equal minibatches; "
            f"sample utd * batch_size rows"
        )
        raise PolicyError(msg)
    size = n // parts
    out = []
    for i in range(parts):
        s = slice(i * size, (i + 1) * size)
        out.append(
            Batch(
                obs={k: v[s] for k, v in batch.obs.items()},
                action=batch.action[s],
                reward=batch.reward[s],
                next_obs={k: v[s] for k, v in batch.next_obs.items()},
                done=batch.done[s],
                mc_return=batch.mc_return[s],
            )
        )
    return out


class _ActorCriticConfig(Protocol):
    @property
    def gamma(self) -> float: ...
    @property
    def tau(self) -> float: ...
    @property
    def hidden(self) -> tuple[int, ...]: ...
    @property
    def n_critics(self) -> int: ...
    @property
    def layer_norm(self) -> bool: ...
    @property
    def init_temperature(self) -> float: ...
    @property
    def auto_temperature(self) -> bool: ...
    @property
    def target_entropy(self) -> float | None: ...
    @property
    def backup_entropy(self) -> bool: ...


@contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    """Skip parameter gradients of ``module`` (the actor step backpropagates through critics)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)


class SoftActorCritic:
    """Encoder, tanh-Gaussian actor, critic ensemble + target, temperature; shared by SAC, Cal-QL.

    Subclasses implement ``update`` and ``_update_critic``; this class gives the actor and
    temperature steps, ``act``, ``set_online`` and the checkpoint state.
    """

    config: _ActorCriticConfig

    def __init__(
        self,
        spec: EncoderSpec,
        config: _ActorCriticConfig,
        *,
        device: torch.device,
        actor_lr: float,
        critic_lr: float,
        temperature_lr: float,
    ) -> None:
        self.spec = spec
        self.config = config
        self.device = torch.device(device)
        c = config
        self.encoder = ObsEncoder(spec).to(self.device)
        feat = self.encoder.out_dim
        self.actor = TanhGaussianActor(feat, spec.action_dim, tuple(c.hidden)).to(self.device)
        self.critic = CriticEnsemble(
            feat, spec.action_dim, c.n_critics, tuple(c.hidden), layer_norm=c.layer_norm
        ).to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.tensor(
            math.log(c.init_temperature), device=self.device, requires_grad=c.auto_temperature
        )
        self.target_entropy = (
            -float(spec.action_dim) if c.target_entropy is None else float(c.target_entropy)
        )
        enc_params = [p for p in self.encoder.parameters() if p.requires_grad]
        self.actor_opt = adam(self.actor.parameters(), lr=actor_lr)
        self.critic_opt = adam([*self.critic.parameters(), *enc_params], lr=critic_lr)
        self.alpha_opt = adam([self.log_alpha], lr=temperature_lr)
        self.online = False
        self.total_updates = 0  # update() calls
        self.critic_updates = 0  # critic gradient steps (utd per update() for SAC)

    # ----- pieces of an update ------------------------------------------------------------
    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.detach().exp()

    def _reduce_target(self, q: torch.Tensor) -> torch.Tensor:
        """(n, ...) target-critic values -> the pessimistic estimate (min over the ensemble)."""
        return q.min(dim=0).values

    def _reduce_actor(self, q: torch.Tensor) -> torch.Tensor:
        """(n, B) critic values at the policy's actions -> what the actor maximises (min)."""
        return q.min(dim=0).values

    def _soft_target(
        self, next_feats: torch.Tensor, reward: torch.Tensor, done: torch.Tensor
    ) -> torch.Tensor:
        """r + gamma * (1 - done) * (reduce Q_target(s', a') [- alpha log pi(a'|s')]), a' ~ pi."""
        with torch.no_grad():
            next_action, next_logp = self.actor(next_feats)
            next_q = self._reduce_target(self.critic_target(next_feats, next_action))
            if self.config.backup_entropy and next_logp is not None:
                next_q = next_q - self.alpha * next_logp
            return reward + self.config.gamma * (1.0 - done) * next_q

    def _step_critic(self, loss: torch.Tensor) -> None:
        self.critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_opt.step()
        soft_update(self.critic_target, self.critic, self.config.tau)
        self.critic_updates += 1

    def _update_policy(self, feats: torch.Tensor, log: dict[str, torch.Tensor]) -> torch.Tensor:
        """Maximise Q(s, pi(s)) - alpha log pi(pi(s)|s) on detached features; returns log pi."""
        action, logp = self.actor(feats)
        if logp is None:  # the actor always returns it with with_log_prob=True
            msg = "actor returned no log-probability"
            raise PolicyError(msg)
        with _frozen(self.critic):
            q = self._reduce_actor(self.critic(feats, action))
        loss = (self.alpha * logp - q).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.actor_opt.step()
        log.update(actor_loss=loss.detach(), entropy=-logp.detach().mean(), q_pi=q.detach().mean())
        return logp.detach()

    def _update_temperature(self, logp: torch.Tensor, log: dict[str, torch.Tensor]) -> None:
        """Move log alpha so that the policy entropy tracks ``target_entropy``."""
        if self.config.auto_temperature:
            loss = -(self.log_alpha * (logp + self.target_entropy)).mean()
            self.alpha_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.alpha_opt.step()
            log["alpha_loss"] = loss.detach()
        log["alpha"] = self.alpha

    @staticmethod
    def _floats(log: Mapping[str, torch.Tensor]) -> dict[str, float]:
        values = torch.stack([v.float().reshape(()) for v in log.values()]).tolist()
        return dict(zip(log, values, strict=True))  # one device sync

    # ----- interface ----------------------------------------------------------------------
    def set_online(self, online: bool) -> None:
        """Switch to the online-phase settings (subclasses change hyper-parameters here)."""
        self.online = bool(online)

    @torch.no_grad()
    def act(self, obs: Obs, *, deterministic: bool = True) -> torch.Tensor:
        """(B, A) actions in [-1, 1]: tanh of the mean, or a sample when not deterministic."""
        return policy_action(
            self.encoder, self.actor, obs, self.device, deterministic=deterministic
        )

    _MODULES: ClassVar[tuple[str, ...]] = ("encoder", "actor", "critic", "critic_target")
    _OPTIMS: ClassVar[tuple[str, ...]] = ("actor_opt", "critic_opt", "alpha_opt")

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {n: getattr(self, n).state_dict() for n in self._MODULES}
        state.update({n: getattr(self, n).state_dict() for n in self._OPTIMS})
        state.update(
            log_alpha=self.log_alpha.detach().clone(),
            online=self.online,
            total_updates=self.total_updates,
            critic_updates=self.critic_updates,
        )
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name in (*self._MODULES, *self._OPTIMS):
            getattr(self, name).load_state_dict(state[name])
        with torch.no_grad():
            self.log_alpha.copy_(torch.as_tensor(state["log_alpha"]))
        self.set_online(bool(state["online"]))
        self.total_updates = int(state["total_updates"])
        self.critic_updates = int(state["critic_updates"])


class SAC(SoftActorCritic):
    """SAC / RLPD: ``utd`` critic steps per call, then one actor and temperature step."""

    config: SACConfig

    def __init__(self, spec: EncoderSpec, config: SACConfig, *, device: torch.device) -> None:
        lr = config.lr
        super().__init__(spec, config, device=device, actor_lr=lr, critic_lr=lr, temperature_lr=lr)

    def _reduce_target(self, q: torch.Tensor) -> torch.Tensor:
        return subsample_min(q, self.config.critic_subsample)

    def _reduce_actor(self, q: torch.Tensor) -> torch.Tensor:
        # RLPD/REDQ: with a subsampled ensemble the actor maximises the ensemble mean
        if self.config.critic_subsample is not None:
            return q.mean(dim=0)
        return q.min(dim=0).values

    def update(self, batch: Batch) -> dict[str, float]:
        """``utd`` critic steps on ``utd`` equal slices of ``batch``, then actor + temperature.

        ``batch`` holds utd * batch_size rows (RLPD samples them at once and splits them).
        """
        batch = check_batch(batch, self.spec, self.device)
        minibatches = split_batch(batch, self.config.utd)
        log: dict[str, torch.Tensor] = {}
        feats = torch.empty(0)
        for mb in minibatches:
            feats = self._update_critic(mb, log)
        logp = self._update_policy(feats, log)
        self._update_temperature(logp, log)
        self.total_updates += 1
        out = self._floats(log)
        out["critic_steps"] = float(len(minibatches))
        return out

    def _update_critic(self, batch: Batch, log: dict[str, torch.Tensor]) -> torch.Tensor:
        """One TD step of the critics (and the encoder); returns the detached features."""
        feats = self.encoder(batch.obs, augment=True)
        with torch.no_grad():
            next_feats = self.encoder(batch.next_obs, augment=True)
        target = self._soft_target(next_feats, batch.reward, batch.done)
        q = self.critic(feats, batch.action)  # (n, B)
        loss = (q - target.unsqueeze(0)).square().mean(dim=1).sum()
        self._step_critic(loss)
        log.update(critic_loss=loss.detach(), q_data=q.detach().mean(), target=target.mean())
        return feats.detach()
