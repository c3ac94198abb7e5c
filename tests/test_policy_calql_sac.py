"""Cal-QL and SAC/RLPD: the calibrated conservative term, ensemble targets, UTD, exact resume."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from twinloop.policy.base import (
    config_from_dict,
    load_checkpoint,
    make_algorithm,
    save_checkpoint,
)
from twinloop.policy.calql import CalQL, CalQLConfig, calibrated_q, cql_gap
from twinloop.policy.common import Batch
from twinloop.policy.errors import PolicyError
from twinloop.policy.networks import EncoderSpec
from twinloop.policy.sac import SAC, SACConfig, rlpd_config, split_batch, subsample_min

torch.set_num_threads(1)

SMALL = {"hidden": (32, 32), "batch_size": 16}
S, A = 6, 3


def make_batch(n: int, *, image: int = 0, mc: float | None = None, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    obs = {"state": torch.randn(n, S, generator=g)}
    next_obs = {"state": torch.randn(n, S, generator=g)}
    if image:
        for o in (obs, next_obs):
            o["image"] = torch.randint(0, 256, (n, 3, image, image), generator=g).to(torch.uint8)
    mc_return = torch.randn(n, generator=g) if mc is None else torch.full((n,), mc)
    mc_return[::4] = math.nan  # online rows: no lower bound
    return Batch(
        obs=obs,
        action=torch.rand(n, A, generator=g) * 2 - 1,
        reward=-torch.ones(n),
        next_obs=next_obs,
        done=(torch.rand(n, generator=g) < 0.1).float(),
        mc_return=mc_return,
    )


# ----- Cal-QL math -----------------------------------------------------------------------------
def test_calibrated_q_clips_below_and_ignores_nan() -> None:
    q = torch.tensor([[-5.0, 0.0, 2.0, 1.0], [3.0, -1.0, -2.0, 0.5]])
    mc = torch.tensor([-1.0, 1.0, math.nan, 0.5])
    out = calibrated_q(q, mc)
    expected = torch.tensor([[-1.0, 1.0, 2.0, 1.0], [3.0, 1.0, -2.0, 0.5]])
    assert torch.equal(out, expected)
    assert not torch.isnan(out).any()


def _gap_inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n, b, k = 2, 8, 5
    return {
        "q_data": torch.randn(n, b, generator=g),
        "q_rand": torch.randn(n, b, k, generator=g),
        "q_cur": torch.randn(n, b, k, generator=g).requires_grad_(),
        "logp_cur": torch.randn(b, k, generator=g),
        "q_next": torch.randn(n, b, k, generator=g),
        "logp_next": torch.randn(b, k, generator=g),
    }


def test_calql_gap_with_high_mc_returns_is_larger_and_stops_pushing_policy_q_down() -> None:
    x = _gap_inputs()
    b = x["q_data"].shape[1]
    plain = cql_gap(**x, action_dim=A)
    high = torch.full((b,), 10.0)  # every policy Q lies below the data's MC return
    clipped = cql_gap(**x, action_dim=A, mc_return=high)
    # the clipped values enter the log-sum-exp raised to the bound: the gap grows ...
    assert torch.all(clipped > plain + 1.0)
    # ... and no gradient reaches the (clipped) policy-action Q values any more
    (grad_plain,) = torch.autograd.grad(plain.sum(), x["q_cur"])
    (grad_clip,) = torch.autograd.grad(clipped.sum(), x["q_cur"])
    assert grad_plain.abs().sum() > 0
    assert torch.count_nonzero(grad_clip) == 0
    # a bound below every Q, or no bound (NaN), changes nothing
    low = cql_gap(**x, action_dim=A, mc_return=torch.full((b,), -100.0))
    unknown = cql_gap(**x, action_dim=A, mc_return=torch.full((b,), math.nan))
    torch.testing.assert_close(low, plain, rtol=0, atol=0)
    torch.testing.assert_close(unknown, plain, rtol=0, atol=0)


def test_cql_gap_importance_sampling_and_clip() -> None:
    x = _gap_inputs(1)
    with_is = cql_gap(**x, action_dim=A)
    without = cql_gap(**x, action_dim=A, importance_sample=False)
    assert not torch.allclose(with_is, without)
    capped = cql_gap(**x, action_dim=A, clip=(-1.0, 0.25))
    assert torch.all(capped <= 0.25 + 1e-6)
    # temperature -> 0 turns the log-sum-exp into a max
    cold = cql_gap(**x, action_dim=A, temp=1e-3, importance_sample=False)
    ood = torch.cat([x["q_rand"], x["q_data"].unsqueeze(-1), x["q_next"], x["q_cur"]], -1)
    torch.testing.assert_close(cold, (ood.amax(-1) - x["q_data"]).mean(-1), atol=1e-2, rtol=0)


def _algo(type_: str, spec: EncoderSpec | None = None, seed: int = 0, **config: object) -> object:
    spec = spec or EncoderSpec(state_dim=S, action_dim=A)
    cls = CalQLConfig if type_ == "calql" else SACConfig
    return make_algorithm(type_, spec, cls(**{**SMALL, **config}), seed=seed)  # type: ignore[arg-type]


def test_enable_calql_raises_conservative_term_on_batch_with_high_mc() -> None:
    batch = make_batch(16, mc=50.0)
    gaps = {}
    for enable in (True, False):
        algo = _algo("calql", enable_calql=enable)
        assert isinstance(algo, CalQL)
        torch.manual_seed(3)
        gaps[enable] = algo.update(batch)
    assert gaps[True]["cql_gap"] > gaps[False]["cql_gap"] + 10.0
    # every row with a known MC return is clipped; the NaN quarter (online rows) is not
    assert gaps[True]["calql_bound_rate"] == pytest.approx(0.75)
    assert "calql_bound_rate" not in gaps[False]
    assert gaps[True]["bellman_loss"] == gaps[False]["bellman_loss"]  # same nets, same seed


def test_set_online_switches_alpha_and_calibration() -> None:
    algo = _algo("calql", cql_alpha=5.0, cql_online_alpha=1.0, calibrate_online=False)
    assert isinstance(algo, CalQL)
    assert (algo.cql_alpha, algo.calibrated) == (5.0, True)
    algo.set_online(True)
    assert (algo.cql_alpha, algo.calibrated) == (1.0, False)
    stats = algo.update(make_batch(16, mc=50.0))
    assert "calql_bound_rate" not in stats
    kept = _algo("calql", cql_online_alpha=None)
    assert isinstance(kept, CalQL)
    kept.set_online(True)
    assert (kept.cql_alpha, kept.calibrated) == (5.0, True)


def test_calql_lagrange_and_max_backup_give_finite_losses() -> None:
    algo = _algo("calql", cql_lagrange=True, cql_max_target_backup=True, backup_entropy=True)
    assert isinstance(algo, CalQL)
    for _ in range(3):
        stats = algo.update(make_batch(16))
    assert all(math.isfinite(v) for v in stats.values())
    assert "alpha_prime" in stats
    assert algo.log_alpha_prime.item() != 0.0  # the multiplier moved


# ----- SAC / RLPD ------------------------------------------------------------------------------
def test_subsample_min_uses_a_random_pair_and_equals_min_for_all() -> None:
    q = torch.arange(10.0).view(10, 1).expand(10, 4).clone()  # member i predicts i everywhere
    torch.testing.assert_close(subsample_min(q, 10), q.min(0).values, rtol=0, atol=0)
    torch.testing.assert_close(subsample_min(q, None), q.min(0).values, rtol=0, atol=0)
    torch.manual_seed(0)
    seen = set()
    for _ in range(50):
        out = subsample_min(q, 2)
        assert torch.all(out == out[0])  # one subset for the whole batch
        seen.add(int(out[0]))
    assert min(seen) == 0 and max(seen) > 0  # sometimes the global min, often not
    assert max(seen) <= 8  # the min of two distinct members is never the largest


def test_sac_target_with_full_subsample_equals_plain_min() -> None:
    batch = make_batch(16)
    targets = []
    for k in (None, 4):
        algo = _algo("sac", n_critics=4, critic_subsample=k)
        assert isinstance(algo, SAC)
        torch.manual_seed(1)
        feats = algo.encoder(batch.next_obs)
        targets.append(algo._soft_target(feats, batch.reward, batch.done))
    torch.testing.assert_close(targets[0], targets[1], rtol=0, atol=0)


def test_utd_does_utd_critic_steps_and_refuses_uneven_batches() -> None:
    algo = _algo("sac", utd=4)
    assert isinstance(algo, SAC)
    stats = algo.update(make_batch(64))
    assert stats["critic_steps"] == 4.0
    assert (algo.total_updates, algo.critic_updates) == (1, 4)
    with pytest.raises(PolicyError, match=r"30 rows .* utd=4"):
        algo.update(make_batch(30))
    parts = split_batch(make_batch(12), 3)
    assert [len(p) for p in parts] == [4, 4, 4]


def test_rlpd_config_defaults_and_overrides() -> None:
    c = rlpd_config()
    assert (c.n_critics, c.critic_subsample, c.layer_norm, c.offline_fraction) == (10, 2, True, 0.5)
    assert rlpd_config(utd=20).utd == 20
    with pytest.raises(PolicyError, match="critic_subsample"):
        rlpd_config(n_critics=1)
    with pytest.raises(PolicyError, match="bad rlpd_config override"):
        rlpd_config(nonsense=1)


@pytest.mark.parametrize("type_", ["sac", "calql"])
@pytest.mark.parametrize("image", [0, 32])
def test_updates_give_finite_losses(type_: str, image: int) -> None:
    spec = EncoderSpec(state_dim=S, action_dim=A, image_size=image, channels=8, features=16)
    extra = {"utd": 2} if type_ == "sac" else {"cql_n_actions": 4}
    algo = _algo(type_, spec, **extra)
    batch = make_batch(16, image=image)
    enc_before = [p.detach().clone() for p in algo.encoder.parameters()]  # type: ignore[attr-defined]
    for _ in range(2):
        stats = algo.update(batch)  # type: ignore[attr-defined]
    assert stats and all(math.isfinite(v) for v in stats.values()), stats
    enc_after = list(algo.encoder.parameters())  # type: ignore[attr-defined]
    if image:  # the CNN trains through the critic loss
        assert any(not torch.equal(a, b) for a, b in zip(enc_before, enc_after, strict=True))
    action = algo.act(batch.obs)  # type: ignore[attr-defined]
    assert action.shape == (16, A) and action.abs().max() <= 1.0


def test_sac_solves_a_one_step_bandit() -> None:
    torch.manual_seed(0)
    spec = EncoderSpec(state_dim=1, action_dim=1)
    algo = make_algorithm("sac", spec, SACConfig(hidden=(32, 32), batch_size=64, lr=3e-3), seed=0)
    obs = {"state": torch.zeros(1, 1)}
    start = abs(algo.act(obs).item() - 0.5)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        a = torch.rand(64, 1, generator=g) * 2 - 1
        state = {"state": torch.zeros(64, 1)}
        batch = Batch(state, a, -(a[:, 0] - 0.5).abs(), state, torch.ones(64), torch.zeros(64))
        algo.update(batch)
    end = abs(algo.act(obs).item() - 0.5)
    assert end < 0.15 and end < start, (start, end)


# ----- checkpoints -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("type_", "config"),
    [
        ("calql", {"cql_lagrange": True, "cql_n_actions": 3}),
        ("sac", {"utd": 2, "n_critics": 4, "critic_subsample": 2, "layer_norm": True}),
    ],
)
def test_checkpoint_resume_is_bit_identical(tmp_path, type_: str, config: dict) -> None:
    algo = _algo(type_, **config)
    batch = make_batch(32, seed=7)
    for _ in range(3):
        algo.update(batch)  # type: ignore[attr-defined]
    algo.set_online(True)  # type: ignore[attr-defined]
    path = save_checkpoint(algo, tmp_path / "ckpt.safetensors", extra={"step": 3})  # type: ignore[arg-type]
    restored, extra = load_checkpoint(path, expect_type=type_)
    assert extra == {"step": 3}
    assert restored.online is True  # type: ignore[attr-defined]
    assert restored.total_updates == 3  # type: ignore[attr-defined]
    torch.manual_seed(11)
    expected = algo.update(batch)  # type: ignore[attr-defined]
    torch.manual_seed(11)
    got = restored.update(batch)
    assert got == expected
    for a, b in zip(algo.actor.parameters(), restored.actor.parameters(), strict=True):  # type: ignore[attr-defined]
        assert torch.equal(a, b)


def test_state_dict_round_trip_in_memory() -> None:
    a = _algo("calql", seed=1)
    b = _algo("calql", seed=2)
    a.update(make_batch(16))  # type: ignore[attr-defined]
    b.load_state_dict(a.state_dict())  # type: ignore[attr-defined]
    obs = make_batch(4).obs
    assert torch.equal(a.act(obs), b.act(obs))  # type: ignore[attr-defined]
    assert torch.equal(a.log_alpha, b.log_alpha)  # type: ignore[attr-defined]


# ----- configs and registry ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (SACConfig, {"utd": 0}, "utd must be >= 1"),
        (
            SACConfig,
            {"critic_subsample": 3},
            r"critic_subsample must be None or in \[1, n_critics=2\]",
        ),
        (SACConfig, {"tau": 0.0}, "tau must be in"),
        (SACConfig, {"lr": -1.0}, "lr must be > 0"),
        (SACConfig, {"offline_fraction": 1.5}, "offline_fraction"),
        (SACConfig, {"gamma": 1.0}, "gamma"),
        (CalQLConfig, {"cql_n_actions": 0}, "cql_n_actions must be >= 1"),
        (CalQLConfig, {"cql_alpha": -1.0}, "cql_alpha must be >= 0"),
        (CalQLConfig, {"cql_online_alpha": -0.5}, "cql_online_alpha must be >= 0"),
        (CalQLConfig, {"cql_temp": 0.0}, "cql_temp must be > 0"),
        (CalQLConfig, {"cql_clip_diff_min": 1.0, "cql_clip_diff_max": 0.0}, "cql_clip_diff_min"),
        (CalQLConfig, {"hidden": ()}, "hidden"),
    ],
)
def test_config_validation(cls: type, kwargs: dict, match: str) -> None:
    with pytest.raises(PolicyError, match=match):
        cls(**kwargs)


def test_registry_builds_both_and_round_trips_configs() -> None:
    spec = EncoderSpec(state_dim=S, action_dim=A)
    assert isinstance(make_algorithm("calql", spec), CalQL)
    assert isinstance(make_algorithm("sac", spec), SAC)
    c = CalQLConfig()
    assert (c.cql_alpha, c.cql_n_actions, c.offline_fraction, c.backup_entropy) == (
        5.0,
        10,
        0.5,
        False,
    )
    for config in (CalQLConfig(cql_online_alpha=1.0), rlpd_config()):
        values = {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()
        }
        assert config_from_dict(config.type, values) == config
    with pytest.raises(PolicyError, match="unknown calql config keys"):
        config_from_dict("calql", {"cql_alpah": 1.0})


def test_calql_bc_warmup_clones_data_actions_then_switches() -> None:
    torch.manual_seed(0)
    spec = EncoderSpec(state_dim=S, action_dim=A)
    algo = CalQL(
        spec, CalQLConfig(batch_size=32, bc_steps=3, cql_n_actions=2), device=torch.device("cpu")
    )
    batch = make_batch(32)
    logs = [algo.update(batch) for _ in range(4)]
    assert all("q_pi" not in log for log in logs[:3])  # warm-up: log pi(a_data|s), no Q
    assert "q_pi" in logs[3]
    algo.set_online(True)  # online never clones, whatever the step
    fresh = CalQL(
        spec, CalQLConfig(batch_size=32, bc_steps=100, cql_n_actions=2), device=torch.device("cpu")
    )
    fresh.set_online(True)
    assert "q_pi" in fresh.update(batch)
    with pytest.raises(PolicyError, match="bc_steps"):
        CalQLConfig(bc_steps=-1)
