"""The shared policy pieces: Batch, mc_returns, soft_update, networks, checkpoints, ObsSpec."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from twinloop.policy.base import (
    config_from_dict,
    flatten_state,
    load_checkpoint,
    make_algorithm,
    save_checkpoint,
    unflatten_state,
)
from twinloop.policy.common import Batch, mc_returns, mlp, soft_update
from twinloop.policy.errors import PolicyError
from twinloop.policy.networks import (
    ConvEncoder,
    CriticEnsemble,
    EncoderSpec,
    FrozenBackbone,
    ObsEncoder,
    TanhGaussianActor,
    random_shift,
)
from twinloop.policy.obs import (
    ObsSpec,
    default_state_keys,
    images_from_rows,
    normalize_action,
    proprio_from_pose,
    state_from_rows,
    unnormalize_action,
)

torch.set_num_threads(1)


# ----- common ----------------------------------------------------------------------------------
def test_mc_returns_terminated_and_truncated() -> None:
    rewards = np.array([-1.0, -1.0, 0.0, -1.0, -1.0])
    ends = np.array([3, 5])
    out = mc_returns(rewards, ends, 0.9, terminated=np.array([True, False]))
    # episode 0 terminates: -1 + 0.9 * (-1 + 0.9 * 0)
    assert out[:3] == pytest.approx([-1.9, -1.0, 0.0])
    # episode 1 failed: -1 forever = -1 / (1 - 0.9) = -10 at every row
    assert out[3:] == pytest.approx([-10.0, -10.0])


def test_mc_returns_rejects_bad_input() -> None:
    with pytest.raises(PolicyError, match="gamma"):
        mc_returns(np.zeros(3), np.array([3]), 1.0)
    with pytest.raises(PolicyError, match="episode_ends"):
        mc_returns(np.zeros(3), np.array([2]), 0.9)


def test_soft_update_is_polyak() -> None:
    torch.manual_seed(0)
    a, b = mlp(3, (4,), 2), mlp(3, (4,), 2)
    before = [p.clone() for p in a.parameters()]
    soft_update(a, b, 0.25)
    for old, new, src in zip(before, a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(new, 0.75 * old + 0.25 * src)
    with pytest.raises(PolicyError, match="parameter lists"):
        soft_update(a, mlp(3, (4, 4), 2), 0.5)


def test_batch_validates_shapes() -> None:
    obs = {"state": torch.zeros(4, 3)}
    good = dict(obs=obs, action=torch.zeros(4, 5), reward=torch.zeros(4), next_obs=obs,
                done=torch.zeros(4), mc_return=torch.zeros(4))  # fmt: skip
    assert len(Batch(**good)) == 4
    with pytest.raises(PolicyError, match="reward"):
        Batch(**(good | {"reward": torch.zeros(4, 1)}))
    with pytest.raises(PolicyError, match=r"next_obs\['state'\] has 3 rows"):
        Batch(**(good | {"next_obs": {"state": torch.zeros(3, 3)}}))


# ----- networks --------------------------------------------------------------------------------
def test_random_shift_moves_by_whole_pixels() -> None:
    torch.manual_seed(0)
    img = torch.rand(8, 3, 16, 16)
    out = random_shift(img, 2)
    assert out.shape == img.shape
    # every output is the input shifted by an integer offset (replicate padding at the edges)
    padded = nn.functional.pad(img, (2, 2, 2, 2), mode="replicate")
    for i in range(8):
        found = any(
            torch.allclose(out[i], padded[i, :, dy : dy + 16, dx : dx + 16], atol=1e-5)
            for dy in range(5)
            for dx in range(5)
        )
        assert found
    assert torch.equal(random_shift(img, 0), img)


def test_tanh_gaussian_log_prob_matches_torch_distribution() -> None:
    torch.manual_seed(0)
    actor = TanhGaussianActor(6, 3, (16,))
    feats = torch.randn(5, 6)
    action, log_prob = actor(feats)
    mu, log_std = actor._dist(feats)
    base = torch.distributions.Independent(torch.distributions.Normal(mu, log_std.exp()), 1)
    dist = torch.distributions.TransformedDistribution(
        base, [torch.distributions.TanhTransform(cache_size=1)]
    )
    assert log_prob is not None
    assert torch.allclose(log_prob, dist.log_prob(action.clamp(-1 + 1e-6, 1 - 1e-6)), atol=1e-3)
    # dataset actions: a Gaussian around tanh(mu) in action space, finite at exactly +-1
    edge = torch.ones(5, 3)
    expected = torch.distributions.Normal(torch.tanh(mu), log_std.exp()).log_prob(edge).sum(-1)
    assert torch.allclose(actor.log_prob(feats, edge), expected, atol=1e-5)
    det, none = actor(feats, deterministic=True)
    assert none is None and torch.allclose(det, torch.tanh(mu))


def test_critic_ensemble_members_are_independent() -> None:
    torch.manual_seed(0)
    critic = CriticEnsemble(4, 2, n=3, hidden=(8, 8), layer_norm=True)
    feats, act = torch.randn(6, 4), torch.rand(6, 2)
    q = critic(feats, act)
    assert q.shape == (3, 6)
    assert not torch.allclose(q[0], q[1])
    q[1].sum().backward()  # member 1's loss reaches only member 1's parameters
    for p in critic.parameters():
        assert p.grad is not None
        assert torch.count_nonzero(p.grad[0]) == 0 and torch.count_nonzero(p.grad[2]) == 0
    norms = [m for m in critic.modules() if m.__class__.__name__ == "_EnsembleLayerNorm"]
    assert len(norms) == 2 and norms[0].weight.shape == (3, 1, 8)


def test_critic_ensemble_cpu_member_path_equals_the_batched_path() -> None:
    """On a CPU members run one by one (2-D matmuls); values and gradients match the batched
    (n, B, in) pass that GPUs use."""
    torch.manual_seed(0)
    for layer_norm in (False, True):
        critic = CriticEnsemble(5, 2, n=3, hidden=(16, 16), layer_norm=layer_norm)
        feats = torch.randn(7, 5, requires_grad=True)
        act = torch.rand(7, 2)
        q_member = critic(feats, act)
        (g_member,) = torch.autograd.grad(q_member.square().sum(), feats)
        x = torch.cat([feats, act], dim=-1)
        q_batched = critic.net(x.unsqueeze(0).expand(3, 7, 7)).squeeze(-1)
        (g_batched,) = torch.autograd.grad(q_batched.square().sum(), feats)
        torch.testing.assert_close(q_member, q_batched)
        torch.testing.assert_close(g_member, g_batched)


def test_calql_groups_on_cpu_equal_one_call() -> None:
    """Cal-QL's per-group critic calls on a CPU give the one-call (GPU) values."""
    torch.manual_seed(0)
    algo = make_algorithm("calql", EncoderSpec(6, 2), device="cpu", seed=0)
    feats = torch.randn(4, 6)
    groups = [torch.rand(4, k, 2) * 2 - 1 for k in (1, 3, 3, 3)]
    split = algo._q_at_s(feats, groups)
    cat = torch.cat(groups, dim=1)
    rep = feats.unsqueeze(1).expand(4, 10, 6).reshape(40, 6)
    whole = algo.critic(rep, cat.reshape(40, 2)).view(-1, 4, 10)
    assert split.shape == (2, 4, 10)
    torch.testing.assert_close(split, whole)


def test_obs_encoder_shapes_and_errors() -> None:
    spec = EncoderSpec(state_dim=4, image_size=32, features=10, channels=8)
    enc = ObsEncoder(spec)
    obs = {"state": torch.zeros(2, 4), "image": torch.zeros(2, 3, 48, 48, dtype=torch.uint8)}
    assert enc(obs, augment=True).shape == (2, 14) and enc.out_dim == 14
    with pytest.raises(PolicyError, match=r"obs\['state'\] must be \(B, 4\)"):
        enc({"state": torch.zeros(2, 5), "image": obs["image"]})
    with pytest.raises(PolicyError, match="needs obs\\['image'\\]"):
        enc({"state": torch.zeros(2, 4)})
    with pytest.raises(PolicyError, match="state vector, an image, or both"):
        EncoderSpec(state_dim=0)
    with pytest.raises(PolicyError, match="unknown encoder"):
        EncoderSpec(state_dim=1, image_size=64, encoder="vit")  # type: ignore[arg-type]


def test_conv_encoder_channels_last_input_matches_nchw_and_keeps_weights_nchw() -> None:
    torch.manual_seed(0)
    enc = ConvEncoder(32, channels=8, features=10)
    x = torch.rand(4, 3, 32, 32)
    out = enc(x)
    plain = enc.head(enc.convs(x - 0.5).flatten(1))  # the NCHW path, no layout change
    torch.testing.assert_close(out, plain, rtol=1e-4, atol=1e-5)
    out.sum().backward()
    for name, p in enc.named_parameters():
        assert p.is_contiguous(), name  # safetensors checkpoints need contiguous tensors
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_resnet_backbone_from_local_weights_stays_out_of_checkpoints(tmp_path: Path) -> None:
    import torchvision

    weights = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    spec = EncoderSpec(state_dim=3, image_size=64, encoder="resnet18", backbone=str(weights))
    enc = ObsEncoder(spec)
    out = enc({"state": torch.zeros(2, 3), "image": torch.zeros(2, 3, 64, 64, dtype=torch.uint8)})
    assert out.shape == (2, 53)
    assert isinstance(enc.image, FrozenBackbone)
    keys = list(enc.state_dict())
    assert keys and all(k.startswith(("image.head.", "state_")) for k in keys), keys
    assert all(not p.requires_grad for p in enc.image.tower.parameters())
    missing = EncoderSpec(state_dim=3, image_size=64, encoder="resnet18")
    with pytest.raises(PolicyError, match="needs its weights file"):
        ObsEncoder(missing)


# ----- checkpoints -----------------------------------------------------------------------------
def test_flatten_state_round_trips_optimizer_state() -> None:
    net = mlp(3, (4,), 1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.randn(2, 3)).sum().backward()
    opt.step()
    state = {"opt": opt.state_dict(), "n": 3, "name": "x", "arr": np.arange(3), "none": None}
    tensors, skeleton = flatten_state(state)
    back = unflatten_state(tensors, skeleton)
    assert back["n"] == 3 and back["name"] == "x" and back["none"] is None
    np.testing.assert_array_equal(back["arr"], np.arange(3))
    assert set(back["opt"]["state"]) == set(opt.state_dict()["state"])  # int keys stay ints
    opt2 = torch.optim.Adam(net.parameters(), lr=1e-3)
    opt2.load_state_dict(back["opt"])
    assert opt2.state_dict()["param_groups"] == opt.state_dict()["param_groups"]
    with pytest.raises(PolicyError, match="cannot checkpoint object"):
        flatten_state({"bad": object()})


def test_checkpoint_refuses_other_type_spec_and_foreign_files(tmp_path: Path) -> None:
    spec = EncoderSpec(state_dim=4)
    algo = make_algorithm("bc", spec, seed=0)
    path = save_checkpoint(algo, tmp_path / "bc.safetensors", extra={"step": 7})
    loaded, extra = load_checkpoint(path)
    assert extra == {"step": 7} and loaded.config == algo.config
    assert (tmp_path / "bc.json").is_file()
    with pytest.raises(PolicyError, match="holds a 'bc' policy, expected 'iql'"):
        load_checkpoint(path, expect_type="iql")
    with pytest.raises(PolicyError, match="state_dim"):
        load_checkpoint(path, expect_spec=EncoderSpec(state_dim=5))
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(PolicyError, match="not a safetensors file"):
        load_checkpoint(tmp_path / "junk.safetensors")
    with pytest.raises(PolicyError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")
    with pytest.raises(PolicyError, match="unknown algorithm 'ppo'"):
        make_algorithm("ppo", spec)
    with pytest.raises(PolicyError, match="unknown iql config keys \\['nope'\\]"):
        config_from_dict("iql", {"nope": 1})


# ----- observations ----------------------------------------------------------------------------
def test_proprio_from_pose_matches_the_twin() -> None:
    from twinloop.sim2real.twin import Twin, TwinConfig

    twin = Twin(TwinConfig(task="push_cube", render=False))
    try:
        twin.reset(seed=3)
        for _ in range(4):
            twin.step(np.array([0.01, -0.02, 0.0, 0.15, 0.3]))
        phys = twin.physics
        pose = np.r_[phys.ee_pos(), phys.ee_quat()][None]
        derived = proprio_from_pose(pose, phys.joint_positions()[None])
        np.testing.assert_allclose(derived[0], twin.proprio(), atol=1e-5)
    finally:
        twin.close()


def test_state_from_rows_builds_and_names_problems() -> None:
    spec = ObsSpec(state_keys=("proprio", "priv_cube_pos"))
    yaw = 0.3
    rows = {
        "ee_pose": np.array([[0.4, 0.1, 0.2, math.cos(yaw / 2), 0, 0, math.sin(yaw / 2)]]),
        "joint_pos": np.array([[0.0] * 7 + [0.01, 0.02]]),
        "priv_cube_pos": np.array([[0.5, 0.0, 0.02]]),
    }
    state = state_from_rows(rows, spec)
    np.testing.assert_allclose(
        state[0], [0.4, 0.1, 0.2, math.sin(yaw), math.cos(yaw), 0.03, 0.5, 0.0, 0.02], atol=1e-6
    )
    with pytest.raises(PolicyError, match="'priv_cube_pos' is missing"):
        state_from_rows({k: v for k, v in rows.items() if k != "priv_cube_pos"}, spec)
    rows["priv_cube_pos"] = np.array([[np.nan, 0, 0]])
    with pytest.raises(PolicyError, match="'priv_cube_pos' holds NaN"):
        state_from_rows(rows, spec)
    assert default_state_keys("push_cube", privileged=True) == (
        "proprio", "priv_cube_pos", "priv_goal_pos"
    )  # fmt: skip
    with pytest.raises(PolicyError, match="no privileged state known"):
        default_state_keys("fold_shirt", privileged=True)


def test_images_and_actions() -> None:
    spec = ObsSpec(image_key="image_color", image_size=32)
    frames = np.random.default_rng(0).integers(0, 255, (2, 48, 64, 3), dtype=np.uint8)
    out = images_from_rows({"image_color": frames}, spec)
    assert out.shape == (2, 3, 32, 32) and out.dtype == np.uint8
    with pytest.raises(PolicyError, match="uint8"):
        images_from_rows({"image_color": frames.astype(np.float32)}, spec)
    scale = (0.03, 0.03, 0.03, 0.2, 1.0)
    metric = np.array([[0.015, -0.03, 0.06, 0.1, -1.0]])
    norm = normalize_action(metric, scale)
    np.testing.assert_allclose(norm, [[0.5, -1.0, 1.0, 0.5, -1.0]], atol=1e-6)  # 0.06 clipped
    np.testing.assert_allclose(unnormalize_action(norm, scale)[0, :2], [0.015, -0.03])
    with pytest.raises(PolicyError, match="6 values"):
        normalize_action(np.zeros((1, 6)), scale)
    with pytest.raises(PolicyError, match="image_key and image_size go together"):
        ObsSpec(image_key="image_color")


def test_state_normalization_is_applied_and_saved(tmp_path: Path) -> None:
    spec = EncoderSpec(state_dim=3)
    algo = make_algorithm("bc", spec, seed=0)
    enc = algo.encoder  # type: ignore[attr-defined]
    state = torch.tensor([[1.0, 2.0, 3.0]])
    assert torch.equal(enc({"state": state}), state)  # identity until set
    enc.set_state_normalization(torch.tensor([1.0, 0.0, 3.0]), torch.tensor([2.0, 4.0, 0.0]))
    expected = torch.tensor([[0.0, 0.5, 0.0]])  # a zero std counts as 1e-3: (3 - 3) / 1e-3 = 0
    assert torch.allclose(enc({"state": state}), expected)
    loaded, _ = load_checkpoint(save_checkpoint(algo, tmp_path / "n.safetensors"))
    assert torch.allclose(loaded.encoder({"state": state}), expected)  # type: ignore[attr-defined]
    with pytest.raises(PolicyError, match="3 values"):
        enc.set_state_normalization(torch.zeros(2), torch.ones(2))
    with pytest.raises(PolicyError, match="NaN"):
        enc.set_state_normalization(torch.tensor([0.0, float("nan"), 0.0]), torch.ones(3))
