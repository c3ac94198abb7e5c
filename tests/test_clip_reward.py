"""VLM-RMs CLIP reward: the formula, the model on a tiny open_clip, checkpoints, bad inputs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers_clip import make_tiny_open_clip
from twinloop.vlm_reward.base import (
    RewardBatch,
    config_from_dict,
    load_reward_model,
    make_reward_model,
    save_reward_model,
)
from twinloop.vlm_reward.clip_reward import ClipReward, ClipRewardConfig, vlm_rm_reward
from twinloop.vlm_reward.encoders import load_open_clip
from twinloop.vlm_reward.errors import RewardError

torch.set_num_threads(1)

D = 16


def _unit(rng: np.random.Generator, *shape: int) -> np.ndarray:
    x = rng.normal(size=(*shape, D))
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _goal_baseline(goal: np.ndarray, baseline: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    def direction(rows: np.ndarray) -> np.ndarray:
        rows = rows / np.linalg.norm(rows, axis=-1, keepdims=True)
        mean = rows.mean(0)
        return mean / np.linalg.norm(mean)

    return direction(goal), direction(baseline)


def test_alpha_zero_is_cosine_similarity_to_the_goal() -> None:
    rng = np.random.default_rng(0)
    images = 3.0 * _unit(rng, 7)  # unnormalised on purpose
    goal, baseline = rng.normal(size=(3, D)), rng.normal(size=(2, D))
    g, _ = _goal_baseline(goal, baseline)
    want = (images / 3.0) @ g
    got = vlm_rm_reward(images, goal, baseline, 0.0)
    assert isinstance(got, np.ndarray) and got.shape == (7,)
    np.testing.assert_allclose(got, want, atol=1e-5)
    got_t = vlm_rm_reward(
        torch.from_numpy(images),
        torch.from_numpy(goal),
        baseline_emb=torch.from_numpy(baseline),
        alpha=0.0,
    )
    assert isinstance(got_t, torch.Tensor)
    np.testing.assert_allclose(got_t.numpy(), want, atol=1e-5)


def test_alpha_one_sees_only_the_goal_baseline_direction() -> None:
    rng = np.random.default_rng(1)
    goal, baseline = rng.normal(size=(2, D)), rng.normal(size=(3, D))
    g, b = _goal_baseline(goal, baseline)
    d_hat = (g - b) / np.linalg.norm(g - b)
    s1 = _unit(rng)
    along = (s1 @ d_hat) * d_hat
    ortho = s1 - along
    # rotate the orthogonal part to another direction orthogonal to d, same length: |s2| = 1
    w = rng.normal(size=D)
    w -= (w @ d_hat) * d_hat
    s2 = along + np.linalg.norm(ortho) * w / np.linalg.norm(w)
    assert abs(np.linalg.norm(s2) - 1.0) < 1e-9 and np.linalg.norm(s2 - s1) > 0.1
    r = vlm_rm_reward(np.stack([s1, s2]), goal, baseline, 1.0)
    assert abs(r[0] - r[1]) < 1e-5
    np.testing.assert_allclose(r[0], 1.0 - 0.5 * ((s1 - g) @ d_hat) ** 2, atol=1e-5)
    for alpha in (0.25, 0.5, 1.0):  # the goal itself scores 1, above the baseline
        r_g, r_b = vlm_rm_reward(np.stack([g, b]), goal, baseline, alpha)
        assert abs(r_g - 1.0) < 1e-5 and r_g > r_b + 1e-3
    r_half = vlm_rm_reward(np.stack([s1, s2]), goal, baseline, 0.5)
    assert abs(r_half[0] - r_half[1]) > 1e-4  # below alpha = 1 the orthogonal part counts


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.8, 1.0])
def test_formula_matches_a_direct_numpy_evaluation(alpha: float) -> None:
    rng = np.random.default_rng(2)
    images, goal, baseline = _unit(rng, 6), rng.normal(size=(2, D)), rng.normal(size=(2, D))
    g, b = _goal_baseline(goal, baseline)
    d = g - b
    projection = alpha * np.outer(d, d) / (d @ d) + (1 - alpha) * np.eye(D)
    want = [1.0 - 0.5 * np.sum(((s - g) @ projection) ** 2) for s in images]
    np.testing.assert_allclose(vlm_rm_reward(images, goal, baseline, alpha), want, atol=1e-5)


def test_batched_equals_one_by_one() -> None:
    rng = np.random.default_rng(3)
    images, goal, baseline = _unit(rng, 9), _unit(rng, 2), _unit(rng, 2)
    batched = vlm_rm_reward(images, goal, baseline, 0.5)
    single = np.concatenate([vlm_rm_reward(s[None], goal, baseline, 0.5) for s in images])
    np.testing.assert_allclose(batched, single, atol=1e-6)


def _frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 60, 80, 3), dtype=np.uint8)


def _config(tmp_path: Path, **overrides: object) -> ClipRewardConfig:
    enc = make_tiny_open_clip(tmp_path)
    values: dict[str, object] = dict(
        goal_prompts=("a red cube on the green target", "the cube reached the goal"),
        baseline_prompts=("a robot arm and a cube on a table",),
        alpha=0.5,
        model_name=enc.model_name,
        checkpoint=enc.checkpoint,
        model_config=enc.model_config,
        device="cpu",
        precision="fp32",
        batch_size=3,
    )
    values.update(overrides)
    return ClipRewardConfig(**values)


def test_clip_reward_end_to_end_on_the_tiny_model(tmp_path: Path) -> None:
    config = _config(tmp_path)
    model = make_reward_model(config)
    assert isinstance(model, ClipReward)
    frames = _frames(7)
    out = model(RewardBatch(frames, task="push the cube"))
    assert out.rewards.dtype == np.float32 and out.rewards.shape == (7,)
    assert not out.success.any()  # success_threshold None: never success
    encoder = model.encoder
    want = vlm_rm_reward(
        encoder.encode_images(frames),
        encoder.encode_text(config.goal_prompts),
        encoder.encode_text(config.baseline_prompts),
        config.alpha,
    )
    np.testing.assert_allclose(out.rewards, want.numpy(), atol=1e-5)
    assert len(np.unique(out.rewards)) == 7  # frames really differ in reward
    single = np.concatenate([model(RewardBatch(f[None])).rewards for f in frames])
    np.testing.assert_allclose(out.rewards, single, atol=1e-5)

    threshold = float(np.median(out.rewards))
    thresholded = ClipReward(
        dataclasses.replace(config, success_threshold=threshold), encoder=encoder
    )
    flags = thresholded(RewardBatch(frames)).success
    np.testing.assert_array_equal(flags, out.rewards >= threshold)
    assert 0 < flags.sum() < 7


def test_save_load_round_trip(tmp_path: Path) -> None:
    config = _config(tmp_path, alpha=0.8, success_threshold=0.1)
    model = ClipReward(config)
    path = save_reward_model(model, tmp_path / "clip.safetensors")
    frames = _frames(4, seed=5)
    loaded = load_reward_model(path, expect_type="clip")
    assert isinstance(loaded, ClipReward) and loaded.config == config
    np.testing.assert_allclose(
        loaded(RewardBatch(frames)).rewards, model(RewardBatch(frames)).rewards, atol=1e-6
    )
    # the stored tensors are what the model uses: a saved projection of alpha 0 changes rewards
    state = model.state_dict()
    state["projection"] = torch.eye(len(state["goal"]))
    model.load_state_dict(state)
    cosine = model.encoder.encode_images(frames) @ model.goal
    np.testing.assert_allclose(model(RewardBatch(frames)).rewards, cosine.numpy(), atol=1e-5)
    shared = load_reward_model(path, expect_type="clip", encoder=model.encoder)
    assert isinstance(shared, ClipReward) and shared.encoder is model.encoder
    with pytest.raises(RewardError, match="expected 'preference'"):
        load_reward_model(path, expect_type="preference")


def test_load_state_dict_refuses_bad_shapes(tmp_path: Path) -> None:
    model = ClipReward(_config(tmp_path))
    state = model.state_dict()
    with pytest.raises(RewardError, match=r"'projection' has shape \(4, 4\), expected \(32, 32\)"):
        model.load_state_dict({**state, "projection": torch.eye(4)})
    with pytest.raises(RewardError, match=r"lacks \['baseline'\]"):
        model.load_state_dict({"goal": state["goal"], "projection": state["projection"]})
    with pytest.raises(RewardError, match="non-finite"):
        model.load_state_dict({**state, "goal": torch.full((32,), float("nan"))})


def test_config_from_dict_rebuilds_tuples(tmp_path: Path) -> None:
    config = _config(tmp_path)
    values = dataclasses.asdict(config)
    values["goal_prompts"] = list(values["goal_prompts"])
    assert config_from_dict("clip", values) == config


def test_bad_inputs(tmp_path: Path) -> None:
    good = {"goal_prompts": ("goal",), "baseline_prompts": ("scene",)}
    with pytest.raises(RewardError, match="goal_prompts must hold at least one prompt"):
        ClipRewardConfig(goal_prompts=(), baseline_prompts=("scene",))
    with pytest.raises(RewardError, match="baseline_prompts must be non-empty strings"):
        ClipRewardConfig(goal_prompts=("goal",), baseline_prompts=("",))
    with pytest.raises(RewardError, match="must be a tuple of strings"):
        ClipRewardConfig(goal_prompts="goal", baseline_prompts=("scene",))
    with pytest.raises(RewardError, match=r"alpha must be in \[0, 1\]"):
        ClipRewardConfig(**good, alpha=1.5)
    with pytest.raises(RewardError, match="batch_size"):
        ClipRewardConfig(**good, batch_size=0)
    with pytest.raises(RewardError, match="success_threshold"):
        ClipRewardConfig(**good, success_threshold=float("nan"))
    with pytest.raises(RewardError, match="precision"):
        ClipRewardConfig(**good, precision="int4")
    rng = np.random.default_rng(4)
    g = _unit(rng, 1)
    with pytest.raises(RewardError, match="same direction"):
        vlm_rm_reward(_unit(rng, 3), g, g, 0.5)
    np.testing.assert_allclose(vlm_rm_reward(_unit(rng, 3), g, g, 0.0).shape, (3,))
    with pytest.raises(RewardError, match="embedding sizes differ"):
        vlm_rm_reward(_unit(rng, 3), np.ones((1, 8)), g, 0.5)
    with pytest.raises(RewardError, match=r"image_emb must be \(B, D\)"):
        vlm_rm_reward(g[0], g, _unit(rng, 1), 0.5)
    with pytest.raises(RewardError, match="floating point"):
        vlm_rm_reward(np.ones((2, D), np.int64), g, _unit(rng, 1), 0.5)
    model = ClipReward(_config(tmp_path))
    with pytest.raises(RewardError, match="uint8"):
        model(RewardBatch(np.zeros((2, 32, 32, 3), np.float32)))


def test_shared_encoder_is_used(tmp_path: Path) -> None:
    config = _config(tmp_path)
    encoder = load_open_clip(config.open_clip)
    model = ClipReward(config, encoder=encoder)
    assert model.encoder is encoder
    torch.testing.assert_close(model.goal.norm(), torch.tensor(1.0))
    expected_goal = F.normalize(encoder.encode_text(config.goal_prompts).mean(0), dim=-1)
    torch.testing.assert_close(model.goal, expected_goal)
