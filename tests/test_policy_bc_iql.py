"""BC and IQL: the expectile loss, value/advantage math, learning on toys, exact resume."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from twinloop.policy.base import load_checkpoint, make_algorithm, save_checkpoint
from twinloop.policy.bc import BC, BCConfig
from twinloop.policy.common import Batch
from twinloop.policy.errors import PolicyError
from twinloop.policy.iql import IQL, IQLConfig, advantage_weights, expectile_loss
from twinloop.policy.networks import EncoderSpec

torch.set_num_threads(1)

S, A = 6, 3
SMALL = (32, 32)


def _spec(image_size: int = 0) -> EncoderSpec:
    return EncoderSpec(state_dim=S, action_dim=A, image_size=image_size, channels=4, features=8)


def _batch(n: int = 32, image_size: int = 0, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)

    def obs() -> dict[str, torch.Tensor]:
        out = {"state": torch.randn(n, S, generator=g)}
        if image_size:
            shape = (n, 3, image_size, image_size)
            out["image"] = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
        return out

    return Batch(
        obs=obs(),
        action=torch.rand(n, A, generator=g) * 2 - 1,
        reward=torch.randn(n, generator=g),
        next_obs=obs(),
        done=(torch.rand(n, generator=g) < 0.2).float(),
        mc_return=torch.full((n,), float("nan")),
    )


# ----- expectile loss and advantage weights --------------------------------------------------
def test_expectile_half_is_half_mse() -> None:
    diff = torch.tensor([-2.0, -0.5, 0.0, 1.0, 3.0])
    assert expectile_loss(diff, 0.5).item() == pytest.approx(0.5 * (diff**2).mean().item())


def test_expectile_weights_are_asymmetric() -> None:
    diff = torch.tensor([2.0, -2.0, 1.0])
    # by hand: 0.7 * 4 + 0.3 * 4 + 0.7 * 1 = 4.7, mean over 3
    assert expectile_loss(diff, 0.7).item() == pytest.approx(4.7 / 3)
    assert expectile_loss(torch.tensor([1.0]), 0.9).item() == pytest.approx(0.9)
    assert expectile_loss(torch.tensor([-1.0]), 0.9).item() == pytest.approx(0.1)


def test_advantage_weights_clip_at_max() -> None:
    adv = torch.tensor([-1.0, 0.0, 0.5, 10.0])
    w = advantage_weights(adv, beta=3.0, max_weight=100.0)
    expected = [math.exp(-3.0), 1.0, math.exp(1.5), 100.0]
    assert w.tolist() == pytest.approx(expected, rel=1e-6)


def test_policy_update_logs_clipped_weights() -> None:
    torch.manual_seed(0)
    algo = IQL(_spec(), IQLConfig(hidden=SMALL, exp_adv_max=7.0), device=torch.device("cpu"))
    b = _batch()
    log: dict[str, torch.Tensor] = {}
    adv = torch.linspace(-1.0, 5.0, len(b))  # exp(3 * 5) far above the clip
    algo._update_policy(algo.encoder(b.obs), b.action, adv, log)
    assert log["adv_weight_max"].item() == pytest.approx(7.0)
    assert log["adv_weight_mean"].item() < 7.0


def _sample_expectile(x: np.ndarray, tau: float) -> float:
    lo, hi = float(x.min()), float(x.max())
    for _ in range(100):  # the root of d/dm mean(|tau - 1(x < m)| (x - m)^2) by bisection
        m = 0.5 * (lo + hi)
        grad = np.mean(np.where(x < m, 1 - tau, tau) * (x - m))
        lo, hi = (m, hi) if grad > 0 else (lo, m)
    return 0.5 * (lo + hi)


class _FixedQ(nn.Module):
    """Q(s, a) = 2 * a_0 + 1, the same for every ensemble member."""

    def forward(self, feats: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return (2.0 * action[:, 0] + 1.0).expand(2, -1)


@pytest.mark.parametrize("expectile", [0.5, 0.7, 0.9])
def test_value_regresses_to_expectile_of_q(expectile: float) -> None:
    torch.manual_seed(0)
    cfg = IQLConfig(hidden=(16,), expectile=expectile, value_lr=3e-2)
    algo = IQL(_spec(), cfg, device=torch.device("cpu"))
    algo.critic_target = _FixedQ()
    rng = np.random.default_rng(0)
    action = torch.from_numpy(rng.uniform(-1, 1, (2048, A)).astype(np.float32))
    feats = torch.zeros(len(action), S)  # one state: V is a constant
    for _ in range(400):
        algo._update_v(feats, action, {})
    v = algo.value(feats[:1]).item()
    want = _sample_expectile(2.0 * action[:, 0].numpy() + 1.0, expectile)
    assert v == pytest.approx(want, abs=0.03)
    if expectile == 0.9:
        assert want > 1.5  # well above the mean 1.0: the test separates expectiles


# ----- learning and shapes --------------------------------------------------------------------
@pytest.mark.parametrize("loss", ["nll", "mse"])
def test_bc_learns_a_linear_map(loss: str) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(S, A, generator=g) * 0.3
    states = torch.randn(512, S, generator=g)
    actions = torch.tanh(states @ w)
    algo = BC(_spec(), BCConfig(hidden=(64, 64), lr=3e-3, loss=loss), device=torch.device("cpu"))
    nan = torch.full((len(states),), float("nan"))
    batch = Batch({"state": states}, actions, nan, {"state": states}, nan, nan)
    first = algo.update(batch)
    for _ in range(300):
        last = algo.update(batch)
    assert last["actor_loss"] < first["actor_loss"]
    err = (algo.act({"state": states}) - actions).abs().mean().item()
    assert err < 0.05
    assert algo.total_updates == 301


@pytest.mark.parametrize("type_", ["bc", "iql"])
@pytest.mark.parametrize("image_size", [0, 32])
def test_updates_give_finite_losses_and_bounded_actions(type_: str, image_size: int) -> None:
    cfg = BCConfig(hidden=SMALL) if type_ == "bc" else IQLConfig(hidden=SMALL)
    algo = make_algorithm(type_, _spec(image_size), cfg, seed=0)
    b = _batch(16, image_size)
    for _ in range(3):
        log = algo.update(b)
    assert log and all(math.isfinite(v) for v in log.values())
    obs = {k: v * 50 if k == "state" else v for k, v in b.obs.items()}  # saturate the tanh
    for deterministic in (True, False):
        act = algo.act(obs, deterministic=deterministic)
        assert act.shape == (16, A)
        assert act.abs().max().item() <= 1.0


def test_image_encoder_trains_through_critic_only() -> None:
    torch.manual_seed(0)
    algo = IQL(_spec(32), IQLConfig(hidden=SMALL), device=torch.device("cpu"))
    before = {k: v.clone() for k, v in algo.encoder.state_dict().items()}
    algo.update(_batch(8, 32))
    assert any(not torch.equal(before[k], v) for k, v in algo.encoder.state_dict().items())
    enc = {id(p) for p in algo.encoder.parameters()}
    critic_params = {id(p) for g in algo.critic_opt.param_groups for p in g["params"]}
    others = [algo.actor_opt, algo.value_opt]
    assert enc <= critic_params
    assert not enc & {id(p) for o in others for g in o.param_groups for p in g["params"]}


def test_iql_target_critic_is_polyak_averaged() -> None:
    torch.manual_seed(0)
    algo = IQL(_spec(), IQLConfig(hidden=SMALL, tau=0.5), device=torch.device("cpu"))
    old = [p.clone() for p in algo.critic_target.parameters()]
    algo.update(_batch())
    for t, o, s in zip(algo.critic_target.parameters(), old, algo.critic.parameters(), strict=True):
        torch.testing.assert_close(t, 0.5 * o + 0.5 * s)


def test_iql_cosine_actor_lr_decays_then_holds() -> None:
    algo = IQL(_spec(), IQLConfig(hidden=(8,), max_steps=4), device=torch.device("cpu"))
    lrs = [algo.update(_batch(8))["actor_lr"] for _ in range(6)]
    assert lrs[0] == pytest.approx(3e-4 * (1 + math.cos(math.pi / 4)) / 2)
    assert lrs[3] == pytest.approx(0.0, abs=1e-12)
    assert lrs[5] == lrs[3]


def test_bad_action_width_is_named() -> None:
    algo = IQL(_spec(), IQLConfig(hidden=SMALL), device=torch.device("cpu"))
    b = _batch()
    bad = Batch(b.obs, b.action[:, :2], b.reward, b.next_obs, b.done, b.mc_return)
    with pytest.raises(PolicyError, match=r"batch action must be \(B, 3\), got \(32, 2\)"):
        algo.update(bad)


# ----- checkpoints and exact resume -----------------------------------------------------------
@pytest.mark.parametrize(
    ("type_", "image_size", "cfg"),
    [
        ("bc", 0, BCConfig(hidden=SMALL)),
        ("bc", 32, BCConfig(hidden=SMALL, loss="mse")),
        ("iql", 0, IQLConfig(hidden=SMALL, max_steps=10)),
        ("iql", 32, IQLConfig(hidden=SMALL)),
    ],
)
def test_checkpoint_resume_is_bit_identical(
    tmp_path: Path, type_: str, image_size: int, cfg: BCConfig | IQLConfig
) -> None:
    spec = _spec(image_size)
    algo = make_algorithm(type_, spec, cfg, seed=3)
    batches = [_batch(16, image_size, seed=i) for i in range(4)]
    torch.manual_seed(11)
    for b in batches[:3]:
        algo.update(b)
    path = save_checkpoint(algo, tmp_path / "algo.safetensors", extra={"step": 3})
    resumed, extra = load_checkpoint(path, expect_type=type_, expect_spec=spec)
    assert extra == {"step": 3}
    assert resumed.config == cfg
    assert getattr(resumed, "total_updates", None) == 3
    logs = []
    for a in (algo, resumed):
        torch.manual_seed(5)  # DrQ shifts and action samples draw from the global generator
        logs.append([a.update(batches[3]), a.update(batches[0])])
    assert logs[1] == logs[0]
    assert logs[0][0] != logs[0][1]  # the two steps differ: the comparison is not vacuous
    obs = batches[1].obs
    assert torch.equal(algo.act(obs), resumed.act(obs))


def test_checkpoint_of_other_type_is_refused(tmp_path: Path) -> None:
    algo = make_algorithm("bc", _spec(), BCConfig(hidden=SMALL))
    path = save_checkpoint(algo, tmp_path / "bc.safetensors")
    with pytest.raises(PolicyError, match="holds a 'bc' policy, expected 'iql'"):
        load_checkpoint(path, expect_type="iql")


def test_make_algorithm_through_registry() -> None:
    algo = make_algorithm("iql", _spec())
    assert isinstance(algo, IQL)
    assert algo.config == IQLConfig()
    assert (algo.config.expectile, algo.config.beta, algo.config.exp_adv_max) == (0.7, 3.0, 100.0)
    assert isinstance(make_algorithm("bc", _spec()), BC)
    with pytest.raises(PolicyError, match="needs a IQLConfig, got BCConfig"):
        make_algorithm("iql", _spec(), BCConfig())


# ----- config validation ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"expectile": 1.0}, r"expectile must be in \(0, 1\), got 1.0"),
        ({"expectile": 0.0}, r"expectile must be in \(0, 1\), got 0.0"),
        ({"beta": 0.0}, "beta must be > 0, got 0.0"),
        ({"exp_adv_max": -1.0}, "exp_adv_max must be > 0, got -1.0"),
        ({"critic_lr": 0.0}, "critic_lr must be > 0"),
        ({"tau": 0.0}, r"tau must be in \(0, 1\], got 0.0"),
        ({"gamma": 1.0}, r"gamma must be in \[0, 1\), got 1.0"),
        ({"n_critics": 0}, "n_critics must be >= 1, got 0"),
        ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
        ({"hidden": ()}, "hidden must be a non-empty tuple"),
        ({"max_steps": -1}, "max_steps must be >= 0"),
    ],
)
def test_iql_config_validation(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(PolicyError, match=match):
        IQLConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": 0.0}, "lr must be > 0, got 0.0"),
        ({"loss": "l1"}, r"unknown bc loss 'l1'. Available: \['mse', 'nll'\]"),
        ({"hidden": (64, 0)}, "hidden must be a non-empty tuple of widths >= 1"),
    ],
)
def test_bc_config_validation(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(PolicyError, match=match):
        BCConfig(**kwargs)
