"""The reference learners of benchmarks/learner.py: plain single-file PyTorch in the CORL style.

One ``nn.Sequential`` of ``nn.Linear`` per critic, looped over in Python; the same widths, number
of critics, sampled actions and image CNN as twinloop.policy's defaults. Written for the benchmark
(not copied from CORL), so that ``ours / reference`` updates per second compare like with like.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from twinloop.policy.common import Batch
from twinloop.policy.networks import EncoderSpec

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


def ref_mlp(in_dim: int, hidden: Sequence[int], out_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(in_dim, h), nn.ReLU()]
        in_dim = h
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


def ref_shift(x: torch.Tensor, pad: int) -> torch.Tensor:
    """DrQ random shift: replicate-pad, then one grid_sample with an integer offset per image."""
    n, _, h, _ = x.shape  # square images
    x = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    eps = 1.0 / (h + 2 * pad)
    arange = torch.linspace(-1.0 + eps, 1.0 - eps, h + 2 * pad, device=x.device)[:h]
    arange = arange.unsqueeze(0).repeat(h, 1).unsqueeze(2)
    base_grid = torch.cat([arange, arange.transpose(1, 0)], dim=2).unsqueeze(0)
    shift = torch.randint(0, 2 * pad + 1, (n, 1, 1, 2), device=x.device).float()
    grid = base_grid.repeat(n, 1, 1, 1) + shift * (2.0 / (h + 2 * pad))
    return F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)


class RefEncoder(nn.Module):
    """[CNN(image) -> Linear -> LayerNorm -> tanh, state] or the state alone."""

    def __init__(self, state_dim: int, image_size: int, channels: int = 32, feats: int = 50):
        super().__init__()
        self.image_size = image_size
        self.out_dim = state_dim
        if image_size:
            self.convs = nn.Sequential(
                nn.Conv2d(3, channels, 3, stride=2), nn.ReLU(),
                nn.Conv2d(channels, channels, 3), nn.ReLU(),
                nn.Conv2d(channels, channels, 3), nn.ReLU(),
                nn.Conv2d(channels, channels, 3), nn.ReLU(),
            )  # fmt: skip
            side = (image_size - 3) // 2 + 1 - 6
            self.head = nn.Sequential(
                nn.Linear(channels * side * side, feats), nn.LayerNorm(feats), nn.Tanh()
            )
            self.out_dim += feats

    def forward(self, obs: dict[str, torch.Tensor], augment: bool = False) -> torch.Tensor:
        if not self.image_size:
            return obs["state"]
        x = obs["image"].float() / 255.0
        if augment:
            x = ref_shift(x, 4)
        z = self.head(self.convs(x - 0.5).flatten(1))
        return torch.cat([z, obs["state"]], dim=-1)


class RefActor(nn.Module):
    def __init__(self, in_dim: int, action_dim: int, hidden: Sequence[int]):
        super().__init__()
        self.net = ref_mlp(in_dim, hidden, 2 * action_dim)

    def dist(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_std = self.net(feats).chunk(2, dim=-1)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(log_std) + 1)
        return mu, log_std.exp()

    def sample(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, std = self.dist(feats)
        normal = torch.distributions.Normal(mu, std)
        u = normal.rsample()
        action = torch.tanh(u)
        logp = normal.log_prob(u).sum(-1) - torch.log(1 - action.pow(2) + 1e-6).sum(-1)
        return action, logp

    def log_prob(self, feats: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        mu, std = self.dist(feats)
        action = action.clamp(-1 + 1e-5, 1 - 1e-5)
        u = torch.atanh(action)
        normal = torch.distributions.Normal(mu, std)
        return normal.log_prob(u).sum(-1) - torch.log(1 - action.pow(2) + 1e-6).sum(-1)


class RefBase:
    """Encoder, actor, ``n`` separate critics (+ targets); the pieces every reference shares."""

    def __init__(self, spec: EncoderSpec, n_critics: int, hidden: Sequence[int], device: Any):
        self.device = device
        self.encoder = RefEncoder(spec.state_dim, spec.image_size, spec.channels, spec.features)
        self.encoder.to(device)
        feat, a = self.encoder.out_dim, spec.action_dim
        self.actor = RefActor(feat, a, hidden).to(device)
        self.critics = nn.ModuleList(ref_mlp(feat + a, hidden, 1) for _ in range(n_critics))
        self.critics.to(device)
        self.targets = copy.deepcopy(self.critics).requires_grad_(False)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=3e-4)
        self.critic_opt = torch.optim.Adam(
            [*self.critics.parameters(), *self.encoder.parameters()], lr=3e-4
        )
        self.gamma, self.tau = 0.99, 0.005

    @staticmethod
    def q(net: nn.Module, feats: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return net(torch.cat([feats, action], dim=-1)).squeeze(-1)

    def soft_update(self) -> None:
        with torch.no_grad():
            for t, s in zip(self.targets.parameters(), self.critics.parameters(), strict=True):
                t.data.mul_(1 - self.tau).add_(s.data, alpha=self.tau)

    @staticmethod
    def floats(log: dict[str, torch.Tensor]) -> dict[str, float]:
        values = torch.stack([v.detach().float() for v in log.values()]).tolist()
        return dict(zip(log, values, strict=True))


class RefIQL(RefBase):
    def __init__(self, spec: EncoderSpec, device: Any):
        super().__init__(spec, 2, (256, 256), device)
        self.value = ref_mlp(self.encoder.out_dim, (256, 256), 1).to(device)
        self.value_opt = torch.optim.Adam(self.value.parameters(), lr=3e-4)

    def update(self, b: Batch) -> dict[str, float]:
        feats = self.encoder(b.obs, augment=True)
        with torch.no_grad():
            next_v = self.value(self.encoder(b.next_obs, augment=True)).squeeze(-1)
        f = feats.detach()
        # value: expectile regression on the min target critic
        with torch.no_grad():
            target_q = torch.min(torch.stack([self.q(t, f, b.action) for t in self.targets]), 0)[0]
        v = self.value(f).squeeze(-1)
        adv = target_q - v
        v_loss = (torch.abs(0.7 - (adv < 0).float()) * adv**2).mean()
        self.value_opt.zero_grad()
        v_loss.backward()
        self.value_opt.step()
        # critics
        target = b.reward + self.gamma * (1.0 - b.done) * next_v
        q_loss = torch.stack([F.mse_loss(self.q(c, feats, b.action), target) for c in self.critics])
        q_loss = q_loss.sum()
        self.critic_opt.zero_grad()
        q_loss.backward()
        self.critic_opt.step()
        self.soft_update()
        # actor: advantage-weighted regression
        weights = torch.exp(3.0 * adv.detach()).clamp(max=100.0)
        actor_loss = -(weights * self.actor.log_prob(f, b.action)).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()
        return self.floats({"value_loss": v_loss, "q_loss": q_loss, "actor_loss": actor_loss})


class RefSAC(RefBase):
    backup_entropy = True

    def __init__(self, spec: EncoderSpec, device: Any, *, n_critics: int = 2):
        super().__init__(spec, n_critics, (256, 256), device)
        self.log_alpha = torch.zeros((), device=device, requires_grad=True)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=3e-4)
        self.target_entropy = -float(spec.action_dim)

    def update(self, b: Batch) -> dict[str, float]:
        feats = self.encoder(b.obs, augment=True)
        with torch.no_grad():
            next_feats = self.encoder(b.next_obs, augment=True)
        critic_loss = self.critic_loss(b, feats, next_feats)
        self.critic_opt.zero_grad()
        critic_loss.backward()
        self.critic_opt.step()
        self.soft_update()
        f = feats.detach()
        alpha = self.log_alpha.exp().detach()
        action, logp = self.actor.sample(f)
        q_pi = torch.min(torch.stack([self.q(c, f, action) for c in self.critics]), 0)[0]
        actor_loss = (alpha * logp - q_pi).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()
        alpha_loss = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()
        self.alpha_opt.zero_grad()
        alpha_loss.backward()
        self.alpha_opt.step()
        return self.floats(
            {"critic_loss": critic_loss, "actor_loss": actor_loss, "alpha_loss": alpha_loss}
        )

    def critic_loss(self, b: Batch, feats: torch.Tensor, next_feats: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            next_a, next_logp = self.actor.sample(next_feats)
            next_qs = [self.q(t, next_feats, next_a) for t in self.targets]
            next_q = torch.min(torch.stack(next_qs), 0)[0]
            if self.backup_entropy:
                next_q = next_q - self.log_alpha.exp() * next_logp
            target = b.reward + self.gamma * (1.0 - b.done) * next_q
        losses = [F.mse_loss(self.q(c, feats, b.action), target) for c in self.critics]
        return torch.stack(losses).sum()


class RefCalQL(RefSAC):
    """CQL(H) with importance sampling and the Cal-QL lower bound, as in CORL's cal_ql.py."""

    backup_entropy = False
    n_actions, cql_alpha = 10, 5.0

    def _q_repeat(self, net: nn.Module, feats: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        b, n, _ = actions.shape
        rep = feats.unsqueeze(1).repeat(1, n, 1).view(b * n, -1)
        return self.q(net, rep, actions.view(b * n, -1)).view(b, n)

    def critic_loss(self, b: Batch, feats: torch.Tensor, next_feats: torch.Tensor) -> torch.Tensor:
        bellman = super().critic_loss(b, feats, next_feats)
        bs, n, a = b.action.shape[0], self.n_actions, b.action.shape[1]
        with torch.no_grad():
            rand_a = torch.empty(bs, n, a, device=self.device).uniform_(-1, 1)
            f_rep = feats.detach().unsqueeze(1).repeat(1, n, 1).view(bs * n, -1)
            nf_rep = next_feats.unsqueeze(1).repeat(1, n, 1).view(bs * n, -1)
            cur_a, cur_logp = self.actor.sample(f_rep)
            next_a, next_logp = self.actor.sample(nf_rep)
            cur_a, next_a = cur_a.view(bs, n, a), next_a.view(bs, n, a)
            cur_logp, next_logp = cur_logp.view(bs, n), next_logp.view(bs, n)
        bound = b.mc_return.unsqueeze(-1)
        loss = bellman
        for critic in self.critics:
            q_data = self.q(critic, feats, b.action)
            q_rand = self._q_repeat(critic, feats, rand_a)
            q_cur = torch.maximum(self._q_repeat(critic, feats, cur_a), bound)
            q_next = torch.maximum(self._q_repeat(critic, feats, next_a), bound)
            cat = torch.cat(
                [q_rand - a * math.log(0.5), q_next - next_logp, q_cur - cur_logp], dim=1
            )
            loss = loss + self.cql_alpha * (torch.logsumexp(cat, dim=1) - q_data).mean()
        return loss


def make_reference(algo: str, spec: EncoderSpec, device: torch.device) -> Any:
    if algo == "iql":
        return RefIQL(spec, device)
    if algo == "calql":
        return RefCalQL(spec, device)
    return RefSAC(spec, device)
