"""Replay buffers: storage, eviction, exact resume, offline loading and reward labelling."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_reward import constant_classifier
from twinloop.datasets.store import EpisodeStore
from twinloop.policy.base import flatten_state, unflatten_state
from twinloop.policy.buffers import MixedSampler, ReplayBuffer, RewardSpec, load_offline
from twinloop.policy.common import Batch
from twinloop.policy.errors import PolicyError
from twinloop.policy.obs import ObsSpec, proprio_from_pose

torch.set_num_threads(1)

GAMMA = 0.9
SIZE = 16  # image side of the synthetic stores


# ----- helpers ---------------------------------------------------------------------------------
def _rows(ep: int, n: int, success_from: int | None, *, images: bool = True) -> dict:
    """An episode of ``n`` rows whose values encode (episode, row): proprio[:, 0] = 100 ep + row,
    action dx = 0.03 * row / 50 (normalised: row / 50), image pixels = 10 ep + row."""
    rng = np.random.default_rng(ep)
    t = np.arange(n)
    proprio = rng.normal(size=(n, 6)).astype(np.float32)
    proprio[:, 0] = 100 * ep + t
    action = np.zeros((n, 5), dtype=np.float32)
    action[:, 0] = 0.03 * t / 50
    action[:, 4] = 0.5
    success = np.zeros(n, dtype=bool)
    if success_from is not None:
        success[success_from:] = True
    rows = {
        "proprio": proprio,
        "action": action,
        "success": success,
        "progress": (t / n).astype(np.float32),
        "ee_pose": np.tile(np.array([0.5, 0.0, 0.1, 1, 0, 0, 0], np.float32), (n, 1)),
        "joint_pos": rng.uniform(0, 0.04, size=(n, 9)).astype(np.float32),
    }
    if images:
        pix = (10 * ep + t).astype(np.uint8)
        rows["image_color"] = np.broadcast_to(pix[:, None, None, None], (n, SIZE, SIZE, 3)).copy()
    return rows


def make_store(
    path: Path, plan: Sequence[tuple[int, int | None]], *, drop: Sequence[str] = (), **edit
) -> Path:
    """A store with one episode per (rows, first success row or None) in ``plan``."""
    with EpisodeStore.create(path, fps=10.0, task="push the cube", nan_keys=["progress"]) as st:
        for i, (n, success_from) in enumerate(plan):
            rows = {k: v for k, v in _rows(i, n, success_from).items() if k not in drop}
            for key, fn in edit.items():
                rows[key] = fn(i, rows[key])
            st.add_episode(rows, meta={"success": success_from is not None})
    return path


def _contents(buffer: ReplayBuffer) -> dict:
    """The buffer's transitions oldest first (numpy)."""
    state = buffer.state_dict()
    return {k: np.asarray(v) for k, v in state.items() if isinstance(v, torch.Tensor)}


def _episode_mc(rewards: np.ndarray, terminated: bool, gamma: float) -> np.ndarray:
    tail = 0.0 if terminated else rewards[-1] / (1 - gamma)
    out = np.empty(len(rewards))
    for t in range(len(rewards) - 1, -1, -1):
        tail = rewards[t] + gamma * tail
        out[t] = tail
    return out


def _fill(
    buffer: ReplayBuffer, lengths: Sequence[int], *, first: int = 0, sign: float = 1.0
) -> None:
    """Episodes whose state[:, 0] = sign * (100 (first + i) + row) and action[:, 0] = row / 50."""
    for i, t in enumerate(lengths):
        ep = first + i
        states = np.zeros((t + 1, buffer.state_dim), dtype=np.float32)
        states[:, 0] = sign * (100 * ep + np.arange(t + 1))
        actions = np.zeros((t, buffer.action_dim), dtype=np.float32)
        actions[:, 0] = np.arange(t) / 50
        images = None
        if buffer.image_size:
            pix = (10 * ep + np.arange(t + 1)).astype(np.uint8)
            shape = (t + 1, 3, buffer.image_size, buffer.image_size)
            images = np.broadcast_to(pix[:, None, None, None], shape).copy()
        rewards = -np.ones(t, dtype=np.float32)
        buffer.add_episode(states, actions, rewards, terminated=ep % 2 == 0, images=images)


def _check_linkage(batch: Batch) -> None:
    obs, nxt = batch.obs["state"][:, 0], batch.next_obs["state"][:, 0]
    torch.testing.assert_close(nxt, obs + 1)
    row = torch.remainder(obs, 100)
    torch.testing.assert_close(batch.action[:, 0], row / 50)
    if "image" in batch.obs:
        ep = torch.div(obs, 100, rounding_mode="floor")
        expect = (10 * ep + row).to(torch.uint8)
        assert torch.equal(batch.obs["image"][:, 0, 0, 0], expect)
        assert torch.equal(batch.next_obs["image"][:, 2, -1, -1], expect + 1)


# ----- the buffer ------------------------------------------------------------------------------
def test_sample_links_next_obs_and_images() -> None:
    buffer = ReplayBuffer(50, 3, 2, image_size=8, seed=1)
    _fill(buffer, [5, 7, 3])
    assert len(buffer) == 15 and buffer.n_episodes == 3
    batch = buffer.sample(200)
    assert batch.obs["image"].dtype == torch.uint8 and batch.obs["image"].shape == (200, 3, 8, 8)
    _check_linkage(batch)
    rows = set(batch.obs["state"][:, 0].tolist())
    assert {0.0, 4.0, 100.0, 106.0, 200.0, 202.0} <= rows  # every transition can be drawn
    assert not {5.0, 107.0, 203.0} & rows  # final rows are next_obs only


def test_done_only_on_terminal_transition() -> None:
    buffer = ReplayBuffer(50, 2, 2)
    _fill(buffer, [4, 3])  # episode 0 terminates, episode 1 is truncated
    c = _contents(buffer)
    np.testing.assert_array_equal(c["dones"], [0, 0, 0, 1, 0, 0, 0])
    # add_episode's default gamma is 0.99: the truncated episode's -1 forever is worth -100
    np.testing.assert_allclose(c["mc_returns"][:4], _episode_mc(-np.ones(4), True, 0.99), rtol=1e-6)
    np.testing.assert_allclose(c["mc_returns"][4:], -100.0, rtol=1e-5)
    given = np.array([5.0, 6.0], dtype=np.float32)
    zeros = np.zeros((3, 2))
    buffer.add_episode(zeros, zeros[:2], zeros[:2, 0], terminated=False, mc_returns=given)
    np.testing.assert_array_equal(_contents(buffer)["mc_returns"][-2:], given)


def test_eviction_drops_whole_oldest_episodes() -> None:
    buffer = ReplayBuffer(10, 2, 2, seed=0)
    _fill(buffer, [4, 4])
    _fill(buffer, [4], first=2)
    assert len(buffer) == 8 and buffer.n_episodes == 2 and buffer.episode_lengths == [4, 4]
    batch = buffer.sample(300)
    episodes = set(torch.div(batch.obs["state"][:, 0], 100, rounding_mode="floor").tolist())
    assert episodes == {1.0, 2.0}
    _check_linkage(batch)
    with pytest.raises(PolicyError, match="does not fit capacity 10"):
        _fill(buffer, [11])


def test_short_episodes_grow_rows_and_wrap() -> None:
    buffer = ReplayBuffer(6, 2, 2, image_size=4, seed=3)
    _fill(buffer, [1] * 6)  # 12 rows for 6 transitions: row storage grows
    assert len(buffer) == 6 and buffer.n_episodes == 6
    batch = buffer.sample(200)
    _check_linkage(batch)
    assert set(batch.obs["state"][:, 0].tolist()) == {0.0, 100.0, 200.0, 300.0, 400.0, 500.0}
    _fill(buffer, [2, 3, 1, 2], first=6)  # wraps both rings, evicts
    assert buffer.episode_lengths == [3, 1, 2] and len(buffer) == 6
    batch = buffer.sample(400)
    _check_linkage(batch)
    episodes = set(torch.div(batch.obs["state"][:, 0], 100, rounding_mode="floor").tolist())
    assert episodes == {7.0, 8.0, 9.0}


def test_state_dict_round_trip_samples_the_same_batches() -> None:
    buffer = ReplayBuffer(20, 3, 2, image_size=4, seed=7)
    _fill(buffer, [5, 6, 4, 7])  # evicts, so the live data wraps around the ring
    buffer.sample(11)
    tensors, skeleton = flatten_state(buffer.state_dict())  # as a checkpoint stores it
    expect = [buffer.sample(9) for _ in range(3)]
    other = ReplayBuffer(20, 3, 2, image_size=4, seed=123)
    other.load_state_dict(unflatten_state(tensors, skeleton))
    assert len(other) == len(buffer) and other.episode_lengths == buffer.episode_lengths
    for want in expect:
        got = other.sample(9)
        for name in ("action", "reward", "done", "mc_return"):
            assert torch.equal(getattr(got, name), getattr(want, name))
        for key in ("state", "image"):
            assert torch.equal(got.obs[key], want.obs[key])
            assert torch.equal(got.next_obs[key], want.next_obs[key])
    _fill(other, [3], first=10)  # still a working ring after loading
    _check_linkage(other.sample(100))
    with pytest.raises(PolicyError, match="capacity"):
        ReplayBuffer(21, 3, 2, image_size=4).load_state_dict(buffer.state_dict())


def test_add_episode_rejects_bad_input() -> None:
    buffer = ReplayBuffer(10, 2, 2)
    s, a, r = np.zeros((4, 2)), np.zeros((3, 2)), np.zeros(3)
    with pytest.raises(PolicyError, match=r"states must be \(T \+ 1, S\)"):
        buffer.add_episode(s[:3], a, r, terminated=False)
    with pytest.raises(PolicyError, match=r"actions must be \(T >= 1, 2\)"):
        buffer.add_episode(s, np.zeros((3, 3)), r, terminated=False)
    with pytest.raises(PolicyError, match=r"\[-1, 1\]"):
        buffer.add_episode(s, a + 2, r, terminated=False)
    with pytest.raises(PolicyError, match="NaN"):
        buffer.add_episode(s, a, np.array([0, np.nan, 0]), terminated=False)
    with pytest.raises(PolicyError, match="images given"):
        buffer.add_episode(s, a, r, terminated=False, images=np.zeros((4, 3, 4, 4), np.uint8))
    with pytest.raises(PolicyError, match="empty"):
        buffer.sample(4)


def test_mixed_sampler_exact_ratio_and_offline_only_while_online_empty() -> None:
    offline = ReplayBuffer(100, 2, 2, seed=1)
    online = ReplayBuffer(100, 2, 2, seed=2)
    _fill(offline, [10, 10])
    sampler = MixedSampler(offline, online, 0.25, seed=0)
    batch = sampler.sample(64)
    assert len(batch) == 64 and bool((batch.obs["state"][:, 0] >= 0).all())  # all offline
    _fill(online, [10], sign=-1.0, first=5)
    for n in (64, 10, 7):
        batch = sampler.sample(n)
        from_offline = int((batch.obs["state"][:, 0] >= 0).sum())
        assert len(batch) == n and from_offline == round(n * 0.25)
        assert torch.equal(batch.next_obs["state"][:, 0] >= 0, batch.obs["state"][:, 0] >= 0)
    assert int((MixedSampler(offline, online, 1.0).sample(9).obs["state"][:, 0] < 0).sum()) == 0
    assert int((MixedSampler(offline, online, 0.0).sample(9).obs["state"][:, 0] >= 0).sum()) == 0
    with pytest.raises(PolicyError, match="offline_fraction"):
        MixedSampler(offline, online, 1.5)
    with pytest.raises(PolicyError, match="state_dim"):
        MixedSampler(offline, ReplayBuffer(10, 3, 2))


def test_mixed_sampler_state_dict_resumes_both_buffers() -> None:
    offline, online = ReplayBuffer(100, 2, 2, seed=1), ReplayBuffer(100, 2, 2, seed=2)
    _fill(offline, [10, 10])
    _fill(online, [10], sign=-1.0)
    sampler = MixedSampler(offline, online, 0.5, seed=0)
    sampler.sample(16)
    state = sampler.state_dict()
    want = sampler.sample(16)
    sampler.sample(16)
    sampler.load_state_dict(state)
    assert torch.equal(sampler.sample(16).obs["state"], want.obs["state"])


# ----- offline loading and reward labelling ----------------------------------------------------
STATE = ObsSpec()  # proprio only
IMAGE = ObsSpec(image_key="image_color", image_size=8)


def test_success_reward_cuts_at_first_success(tmp_path: Path, caplog) -> None:
    path = make_store(tmp_path / "s.zarr", [(6, 3), (5, None)])
    with caplog.at_level(logging.INFO, logger="twinloop.policy.buffers"):
        buffer = load_offline(path, STATE, RewardSpec("success"), gamma=GAMMA)
    assert "2 episodes, 7 transitions" in caplog.text and "1 success episodes" in caplog.text
    assert buffer.episode_lengths == [3, 4]
    c = _contents(buffer)
    np.testing.assert_array_equal(c["rewards"], [-1, -1, 0, -1, -1, -1, -1])
    np.testing.assert_array_equal(c["dones"], [0, 0, 1, 0, 0, 0, 0])
    np.testing.assert_allclose(c["mc_returns"][:3], [-1.9, -1.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(c["mc_returns"][3:], -10.0, rtol=1e-5)
    # states: episode 0 keeps rows 0..3 (the success row is the final obs), episode 1 rows 0..4
    np.testing.assert_array_equal(c["states"][:, 0], [0, 1, 2, 3, 100, 101, 102, 103, 104])
    np.testing.assert_allclose(c["actions"][:, 0], np.array([0, 1, 2, 0, 1, 2, 3]) / 50)
    np.testing.assert_allclose(c["actions"][:, 4], 0.5)  # gripper 0.5 / scale 1


def test_final_transitions_link_to_the_stored_final_row(tmp_path: Path) -> None:
    path = make_store(tmp_path / "s.zarr", [(6, 3), (5, None), (4, 1)])
    buffer = load_offline(path, IMAGE, RewardSpec("success"), gamma=GAMMA, seed=4)
    batch = buffer.sample(300)
    obs, nxt = batch.obs["state"][:, 0], batch.next_obs["state"][:, 0]
    torch.testing.assert_close(nxt, obs + 1)
    torch.testing.assert_close(batch.action[:, 0], torch.remainder(obs, 100) / 50)
    expect_pix = 10 * torch.div(obs, 100, rounding_mode="floor") + torch.remainder(obs, 100)
    assert torch.equal(batch.next_obs["image"][:, 1, 3, 3], expect_pix.to(torch.uint8) + 1)
    done_next = set(nxt[batch.done == 1].tolist())
    assert done_next == {3.0, 201.0}  # the first success rows of episodes 0 and 2
    assert 104.0 in set(nxt.tolist())  # the truncated episode's final stored row
    assert float(nxt[torch.remainder(nxt, 100) == 4].max()) == 104.0


def test_success01_reward(tmp_path: Path) -> None:
    path = make_store(tmp_path / "s.zarr", [(6, 2)])
    c = _contents(load_offline(path, STATE, RewardSpec("success01", scale=2.0, shift=-1.0)))
    np.testing.assert_array_equal(c["rewards"], [-1, 1])  # 2 * [0, 1] - 1
    np.testing.assert_array_equal(c["dones"], [0, 1])


def test_key_reward_dense_with_and_without_success_terminal(tmp_path: Path) -> None:
    path = make_store(tmp_path / "s.zarr", [(5, 3), (4, None)])
    dense = _contents(
        load_offline(path, STATE, RewardSpec("key:progress", terminal_on_success=False))
    )
    np.testing.assert_allclose(dense["rewards"], [0.2, 0.4, 0.6, 0.8, 0.25, 0.5, 0.75])
    assert not dense["dones"].any()
    cut = _contents(load_offline(path, STATE, RewardSpec("key:progress", scale=10.0)))
    np.testing.assert_allclose(cut["rewards"], [2, 4, 6, 2.5, 5, 7.5], rtol=1e-6)
    np.testing.assert_array_equal(cut["dones"], [0, 0, 1, 0, 0, 0])


def test_model_reward_relabels_frames(tmp_path: Path) -> None:
    from twinloop.vlm_reward.base import save_reward_model
    from twinloop.vlm_reward.success_classifier import ClassifierConfig, SuccessClassifier

    torch.manual_seed(0)
    path = make_store(tmp_path / "s.zarr", [(9, None), (7, None)])
    config = ClassifierConfig(size=16, channels=(4, 8), feature_dim=8, head_hidden=8, device="cpu")
    model = SuccessClassifier(config)
    store = EpisodeStore.open(path)
    frames = [store.get_episode(i, ["image_color"])["image_color"] for i in range(2)]
    store.close()
    # frames differ only by brightness here; pick the threshold so some rows count as success
    probs = [model.predict_proba(f) for f in frames]
    model.set_threshold(float(np.median(np.concatenate([p[1:] for p in probs]))))
    ckpt = save_reward_model(model, tmp_path / "clf.safetensors")
    buffer = load_offline(path, STATE, RewardSpec(f"model:{ckpt}"), gamma=GAMMA, reward_batch=3)
    c = _contents(buffer)
    rewards, dones = [], []
    for p in probs:
        hit = p[1:] >= model.threshold
        cut = int(np.argmax(hit)) + 1 if hit.any() else len(hit)
        rewards += list(np.where(hit[:cut], 0.0, -1.0))
        dones += [0.0] * (cut - 1) + [float(hit.any())]
    assert 0 < sum(dones)
    np.testing.assert_array_equal(c["rewards"], rewards)
    np.testing.assert_array_equal(c["dones"], dones)
    dense = load_offline(path, STATE, RewardSpec(f"model:{ckpt}", terminal_on_success=False))
    assert len(dense) == 8 + 6 and not _contents(dense)["dones"].any()


def _task_part(path: Path, task: str, plan: Sequence[tuple[int, int]]) -> Path:
    """A per-task store (attr twin_task) with one episode per (episode seed, rows)."""
    extra = {"twin_task": task}
    with EpisodeStore.create(path, fps=10.0, task="drawer", extra_attrs=extra) as st:
        for ep, n in plan:
            st.add_episode(_rows(ep, n, None), meta={"success": False})
    return path


def test_model_reward_per_task_picks_each_episodes_own_model(tmp_path: Path) -> None:
    from twinloop.policy.finetune import merge_task_stores

    parts = [
        _task_part(tmp_path / "open.zarr", "open_drawer", [(0, 5), (1, 4)]),
        _task_part(tmp_path / "close.zarr", "close_drawer", [(2, 6)]),
    ]
    merged = merge_task_stores(parts, tmp_path / "merged.zarr")
    with EpisodeStore.open(merged) as store:
        assert [store.episode_meta(i)["twin_task"] for i in range(3)] == [
            "open_drawer",
            "open_drawer",
            "close_drawer",
        ]
    opened = constant_classifier(tmp_path / "open.st", success=True)
    closed = constant_classifier(tmp_path / "close.st", success=False)
    spec = f"model:close_drawer={closed},open_drawer={opened}"
    dense = load_offline(merged, STATE, RewardSpec(spec, terminal_on_success=False), reward_batch=2)
    c = _contents(dense)
    assert dense.episode_lengths == [4, 3, 5]
    np.testing.assert_array_equal(c["rewards"], [1.0] * 7 + [-1.0] * 5)
    assert not c["dones"].any()
    # the success flag of the open_drawer model ends its episodes at the first scored row
    cut = load_offline(merged, STATE, RewardSpec(spec), episodes=[2, 0, 1])
    assert cut.episode_lengths == [5, 1, 1]
    c = _contents(cut)
    np.testing.assert_array_equal(c["rewards"], [-1.0] * 5 + [1.0, 1.0])
    np.testing.assert_array_equal(c["dones"], [0.0] * 5 + [1.0, 1.0])
    np.testing.assert_array_equal(c["states"][[0, 6, 8], 0], [200, 0, 100])  # episodes 2, 0, 1


def test_model_reward_per_task_follows_the_episode_meta_not_the_order(tmp_path: Path) -> None:
    opened = constant_classifier(tmp_path / "open.st", success=True)
    closed = constant_classifier(tmp_path / "close.st", success=False)
    path = tmp_path / "mixed.zarr"
    tasks = ["close_drawer", "open_drawer", "close_drawer"]
    with EpisodeStore.create(path, fps=10.0, extra_attrs={"twin_task": "open_drawer"}) as st:
        for ep, task in enumerate(tasks):
            st.add_episode(_rows(ep, 4, None), meta={"twin_task": task})
    spec = RewardSpec(
        f"model:open_drawer={opened},close_drawer={closed}", terminal_on_success=False
    )
    c = _contents(load_offline(path, STATE, spec))
    np.testing.assert_array_equal(c["rewards"], [-1.0] * 3 + [1.0] * 3 + [-1.0] * 3)


def test_model_reward_per_task_errors_name_the_task(tmp_path: Path) -> None:
    opened = constant_classifier(tmp_path / "open.st", success=True)
    path = tmp_path / "three.zarr"
    with EpisodeStore.create(path, fps=10.0) as st:
        for ep, task in enumerate(["open_drawer", "lift_rod"]):
            st.add_episode(_rows(ep, 4, None), meta={"twin_task": task})
    only_open = RewardSpec(f"model:open_drawer={opened}")
    with pytest.raises(
        PolicyError,
        match=r"episode 1 is of task 'lift_rod', which has no reward model "
        r"\(models for \['open_drawer'\]\)",
    ):
        load_offline(path, STATE, only_open)
    assert len(load_offline(path, STATE, only_open, episodes=[0])) == 1  # cut at row 1
    missing = tmp_path / "nope.st"
    with pytest.raises(PolicyError, match=r"reward model of task 'close_drawer': .*nope\.st"):
        load_offline(path, STATE, RewardSpec(f"model:open_drawer={opened},close_drawer={missing}"))
    with pytest.raises(PolicyError, match=r"item 'open_drawer=' is not TASK=PATH"):
        load_offline(path, STATE, RewardSpec("model:open_drawer="))


def test_proprio_is_derived_when_the_store_lacks_it(tmp_path: Path) -> None:
    path = make_store(tmp_path / "s.zarr", [(5, None)], drop=["proprio"])
    buffer = load_offline(path, STATE, RewardSpec("success"))
    rows = _rows(0, 5, None)
    expect = proprio_from_pose(rows["ee_pose"], rows["joint_pos"])
    np.testing.assert_allclose(_contents(buffer)["states"], expect, rtol=1e-6)


def test_load_offline_errors_name_the_problem(tmp_path: Path) -> None:
    path = make_store(tmp_path / "s.zarr", [(5, None), (5, 2)])
    with pytest.raises(PolicyError, match="priv_cube_pos"):
        load_offline(path, ObsSpec(state_keys=("proprio", "priv_cube_pos")), RewardSpec())
    with pytest.raises(PolicyError, match="'nope'"):
        load_offline(path, STATE, RewardSpec("key:nope"))
    with pytest.raises(PolicyError, match="action_scale has 4"):
        load_offline(path, ObsSpec(action_scale=(0.03, 0.03, 0.03, 1.0)), RewardSpec())
    with pytest.raises(PolicyError, match="unknown reward source"):
        RewardSpec("progress")
    nan_path = make_store(
        tmp_path / "nan.zarr",
        [(5, None), (5, None)],
        progress=lambda i, v: np.where(np.arange(len(v)) == 3, np.nan, v) if i else v,
    )
    with pytest.raises(PolicyError, match=r"progress.*row 3 of episode 1"):
        load_offline(nan_path, STATE, RewardSpec("key:progress", terminal_on_success=False))
    no_success = make_store(tmp_path / "ns.zarr", [(5, None)], drop=["success"])
    with pytest.raises(PolicyError, match="'success'"):
        load_offline(no_success, STATE, RewardSpec("success"))
    plain = load_offline(no_success, STATE, RewardSpec("key:progress", terminal_on_success=False))
    assert len(plain) == 4


def test_episode_subset_and_capacity(tmp_path: Path) -> None:
    path = make_store(tmp_path / "s.zarr", [(5, None), (6, None), (4, None)])
    subset = load_offline(path, STATE, RewardSpec(), episodes=[2, 0])
    np.testing.assert_array_equal(_contents(subset)["states"][[0, 4], 0], [200, 0])
    small = load_offline(path, STATE, RewardSpec(), capacity=8)
    assert small.episode_lengths == [5, 3] and small.capacity == 8


def test_recorded_twin_dataset(tmp_path: Path) -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")
    from twinloop.sim2real.record import RecordConfig, record_twin_dataset
    from twinloop.sim2real.scene import CameraConfig
    from twinloop.sim2real.twin import TwinConfig

    start = time.perf_counter()
    path = record_twin_dataset(
        tmp_path / "twin.zarr",
        RecordConfig(episodes=2, kinds=("expert", "noisy"), depth=False),
        TwinConfig(task="push_cube", camera=CameraConfig(width=64, height=48)),
    )
    spec = ObsSpec(state_keys=("proprio", "priv_cube_pos"), image_key="image_color", image_size=16)
    buffer = load_offline(path, spec, RewardSpec("success"), gamma=GAMMA)
    with EpisodeStore.open(path) as store:
        success = [store.episode_meta(i)["success"] for i in range(2)]
        lengths = store.episode_lengths
    assert buffer.n_episodes == 2 and buffer.state_dim == 9
    c = _contents(buffer)
    assert c["images"].shape[1:] == (3, 16, 16)
    assert int(c["dones"].sum()) == sum(success)
    assert success[0] and not success[1]  # the expert pushes the cube home, the noisy one fails
    assert buffer.episode_lengths[0] < lengths[0] - 1  # cut at the first success row
    assert buffer.episode_lengths[1] == lengths[1] - 1
    batch = buffer.sample(32)
    assert batch.obs["state"].shape == (32, 9) and float(batch.action.abs().max()) <= 1.0
    assert time.perf_counter() - start < 30


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_episode_streams_match_a_fifo_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    capacity = int(rng.integers(5, 30))
    buffer = ReplayBuffer(capacity, 1, 1, image_size=2, seed=seed)
    kept: list[int] = []  # lengths of the episodes a FIFO of whole episodes keeps
    for ep in range(40):
        t = int(rng.integers(1, capacity + 1))
        _fill(buffer, [t], first=ep)
        kept.append(t)
        while sum(kept) > capacity:
            kept.pop(0)
        assert buffer.episode_lengths == kept
        c = _contents(buffer)
        ids = range(ep - len(kept) + 1, ep + 1)
        firsts = np.concatenate([[100 * e] * (k + 1) for e, k in zip(ids, kept, strict=True)])
        np.testing.assert_array_equal(c["states"][:, 0] // 100 * 100, firsts)
        _check_linkage(buffer.sample(64))
