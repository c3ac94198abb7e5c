"""RL-VLM-F preference rewards: Bradley-Terry loss, the ensemble, labeling, relabeling, CLI.

The acceptance test records push_cube episodes in the twin, labels pairs through the real
HTTP client against the simulated teacher (20 % flipped labels), trains the ensemble and checks
the learned reward ranks held-out frames like the twin's true progress.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from twinloop.datasets.store import EpisodeStore
from twinloop.vlm_reward.base import RewardBatch, load_reward_model, save_reward_model
from twinloop.vlm_reward.errors import RewardError
from twinloop.vlm_reward.labeling import (
    OnlineConfig,
    OnlinePreferenceLoop,
    PairLabels,
    ask_pairs,
    default_relabel_path,
    fit_preference,
    pair_goals,
    relabel_store,
    sample_pairs,
)
from twinloop.vlm_reward.preference import (
    PreferenceConfig,
    PreferenceReward,
    bradley_terry_loss,
    train_preference,
)

os.environ.setdefault("MUJOCO_GL", "egl")
ENV = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
H, W = 32, 40
TINY = PreferenceConfig(
    size=16, channels=(8, 16), feature_dim=16, hidden=16, augment=False, lr=3e-3, seed=0
)


def progress_frames(progress: np.ndarray) -> np.ndarray:
    """Frames whose central square brightens with ``progress`` in [0, 1]."""
    frames = np.full((len(progress), H, W, 3), 40, dtype=np.uint8)
    for k, p in enumerate(progress):
        frames[k, 8:24, 12:28] = 40 + round(200 * float(p))
    return frames


def make_store(path: Path, n_episodes: int = 4, steps: int = 12, **extra_keys: bool) -> Path:
    """A small store with frames, depth, actions, success, progress, timestamps (+ reward)."""
    rng = np.random.default_rng(1)
    with EpisodeStore.create(path, fps=10, task="move the square right") as store:
        for i in range(n_episodes):
            p = np.linspace(0, 1, steps) * (i + 1) / n_episodes
            episode = {
                "image_color": progress_frames(p),
                "depth_color": rng.integers(300, 900, (steps, H, W), dtype=np.uint16),
                "action": rng.uniform(-1, 1, (steps, 5)).astype(np.float32),
                "success": p > 0.95,
                "progress": p.astype(np.float32),
                "timestamp": i * 10.0 + np.arange(steps) / 10.0,
            }
            if extra_keys.get("reward"):
                episode["reward"] = np.full(steps, -1.0, dtype=np.float32)
            store.add_episode(episode, meta={"operator": f"op{i}", "kind": "test"})
    return path


def snapshot(path: Path) -> dict[str, Any]:
    """Every array, every episode's metadata and the store attrs."""
    with EpisodeStore.open(path) as store:
        arrays = {k: np.asarray(store.array(k)[: store.n_steps]) for k in store.keys}
        metas = [store.episode_meta(i) for i in range(store.n_episodes)]
        return {"arrays": arrays, "metas": metas, "attrs": store.attrs}


# ----- Bradley-Terry loss --------------------------------------------------------------------
def test_bradley_terry_loss_value_and_gradients_match_hand_computation() -> None:
    r_a = torch.tensor([1.0, 0.0, -0.5], requires_grad=True)
    r_b = torch.tensor([0.0, 2.0, -0.5], requires_grad=True)
    labels = torch.tensor([0.0, 1.0, 1.0])  # a better, b better, b better
    loss = bradley_terry_loss(r_a, r_b, labels)
    loss.backward()

    def sig(z: float) -> float:
        return 1.0 / (1.0 + math.exp(-z))

    # P(a better) = sigmoid(r_a - r_b); the loss is -log of the probability of the label.
    p_label = [sig(1.0 - 0.0), sig(2.0 - 0.0), sig(-0.5 + 0.5)]
    expected = -sum(math.log(p) for p in p_label) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # d loss / d r_b = (sigmoid(r_b - r_a) - label) / N, and d / d r_a is its negative.
    grad_b = [(sig(-1.0) - 0) / 3, (sig(2.0) - 1) / 3, (sig(0.0) - 1) / 3]
    assert r_a.grad is not None and r_b.grad is not None
    np.testing.assert_allclose(r_b.grad.numpy(), grad_b, rtol=1e-6)
    np.testing.assert_allclose(r_a.grad.numpy(), [-g for g in grad_b], rtol=1e-6)


def test_robust_bradley_terry_loss_matches_the_flip_model() -> None:
    r_a = torch.tensor([3.0, -1.0], requires_grad=True)
    r_b = torch.tensor([0.0, 1.0])
    labels = torch.tensor([1.0, 1.0])  # the first label contradicts the rewards
    eps = 0.2
    loss = bradley_terry_loss(r_a, r_b, labels, label_noise=eps)
    loss.backward()

    def p_label(z: float) -> float:  # P(label 1) = eps + (1 - 2 eps) sigmoid(r_b - r_a)
        return eps + (1 - 2 * eps) / (1 + math.exp(-z))

    expected = -(math.log(p_label(-3.0)) + math.log(p_label(2.0))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # A contradicting label's pull fades as the rewards disagree with it (plain BT: it grows).
    plain = torch.autograd.grad(bradley_terry_loss(r_a, r_b, labels), r_a)[0]
    assert r_a.grad is not None and abs(r_a.grad[0]) < 0.5 * abs(plain[0])
    assert bradley_terry_loss(r_a, r_b, labels, label_noise=0.0).item() == pytest.approx(
        torch.nn.functional.binary_cross_entropy_with_logits(r_b - r_a, labels).item()
    )
    with pytest.raises(RewardError, match="label_noise"):
        bradley_terry_loss(r_a, r_b, labels, label_noise=0.5)


def test_bradley_terry_loss_is_symmetric_and_checks_shapes() -> None:
    r_a, r_b = torch.tensor([0.3, -1.2]), torch.tensor([1.1, 0.4])
    labels = torch.tensor([1.0, 0.0])
    swapped = bradley_terry_loss(r_b, r_a, 1 - labels)
    assert bradley_terry_loss(r_a, r_b, labels).item() == pytest.approx(swapped.item())
    # Equal rewards give log 2 whatever the label.
    assert bradley_terry_loss(r_a, r_a, labels).item() == pytest.approx(math.log(2))
    with pytest.raises(RewardError, match="same shape"):
        bradley_terry_loss(r_a, r_b, torch.tensor([1.0]))


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("ensemble_size", 0, "ensemble_size"),
        ("lr", 0.0, "lr"),
        ("batch_size", 0, "batch_size"),
        ("max_epochs", 0, "max_epochs"),
        ("early_stop_accuracy", 0.2, "early_stop_accuracy"),
        ("success_threshold", math.inf, "success_threshold"),
        ("device", "tpu", "device"),
        ("size", 8, "size"),
        ("label_noise", 0.5, "label_noise"),
        ("shift", -1, "shift"),
    ],
)
def test_config_rejects_bad_values(field: str, value: Any, match: str) -> None:
    with pytest.raises(RewardError, match=match):
        PreferenceConfig(**{field: value})


# ----- the ensemble --------------------------------------------------------------------------
def test_reward_is_the_mean_of_standardised_members() -> None:
    model = PreferenceReward(dataclasses.replace(TINY, success_threshold=0.5))
    frames = progress_frames(np.linspace(0, 1, 10))
    model.set_normalization(frames)
    out = model(RewardBatch(frames))
    members = out.info["member_rewards"]
    assert members.shape == (3, 10)
    np.testing.assert_allclose(members.mean(axis=1), 0.0, atol=1e-3)
    np.testing.assert_allclose(members.std(axis=1, ddof=1), 1.0, rtol=1e-3)
    np.testing.assert_allclose(out.rewards, members.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(out.info["std"], members.std(axis=0), rtol=1e-5)
    np.testing.assert_array_equal(out.success, out.rewards >= 0.5)
    assert out.rewards.dtype == np.float32
    # Different members start from different weights (an ensemble, not three copies).
    assert not np.allclose(members[0], members[1])


@dataclass(frozen=True)
class _OtherConfig:
    type: ClassVar[str] = "success_classifier"
    size: int = 16


class _OtherModel:
    config = _OtherConfig()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"w": torch.zeros(2)}


def test_save_load_round_trip_and_wrong_type(tmp_path: Path) -> None:
    model = PreferenceReward(TINY)
    frames = progress_frames(np.linspace(0, 1, 7))
    labels = np.array([1, 1, 0, 1, 0, 0])
    model, _ = train_preference(frames[:-1], frames[1:], labels, model=model)
    path = save_reward_model(model, tmp_path / "pref.safetensors")
    loaded = load_reward_model(path, expect_type="preference", device="cpu")
    assert isinstance(loaded, PreferenceReward) and loaded.device.type == "cpu"
    assert loaded.config == TINY
    before, after = model(RewardBatch(frames)), loaded(RewardBatch(frames))
    np.testing.assert_allclose(after.rewards, before.rewards, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        loaded.ensemble.reward_std.numpy(), model.ensemble.reward_std.numpy()
    )
    other = save_reward_model(_OtherModel(), tmp_path / "other.safetensors")
    with pytest.raises(RewardError, match=r"holds a 'success_classifier'.*expected 'preference'"):
        load_reward_model(other, expect_type="preference")
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(RewardError, match="not a safetensors file"):
        load_reward_model(tmp_path / "junk.safetensors", expect_type="preference")


def test_training_learns_the_ordering_and_stops_early() -> None:
    rng = np.random.default_rng(0)
    p_a, p_b = rng.uniform(0, 1, 300), rng.uniform(0, 1, 300)
    labels = (p_b > p_a).astype(int)
    config = dataclasses.replace(TINY, max_epochs=30, early_stop_accuracy=0.95)
    model, log = train_preference(progress_frames(p_a), progress_frames(p_b), labels, config)
    assert all(e < config.max_epochs for e in log.epochs), log.epochs  # early stop happened
    assert all(a > 0.95 for a in log.accuracy)
    assert len(log.loss) == 3 and all(
        len(c) == e for c, e in zip(log.loss, log.epochs, strict=True)
    )
    assert all(curve[-1] < math.log(2) for curve in log.loss)  # better than chance
    test_p = np.linspace(0, 1, 30)
    rewards = model(RewardBatch(progress_frames(test_p))).rewards
    assert spearmanr(rewards, test_p)[0] > 0.9


def test_training_rejects_bad_labels_and_shapes() -> None:
    frames = progress_frames(np.linspace(0, 1, 4))
    with pytest.raises(RewardError, match=r"0 \(first better\) or 1.*\[2\]"):
        train_preference(frames, frames, np.array([0, 1, 2, 0]), TINY)
    with pytest.raises(RewardError, match="labels must be"):
        train_preference(frames, frames, np.array([0, 1]), TINY)
    with pytest.raises(RewardError, match="differ in shape"):
        train_preference(frames, frames[:3], np.array([0, 1, 1, 0]), TINY)
    with pytest.raises(RewardError, match="not a different config"):
        other = dataclasses.replace(TINY, lr=0.1)
        train_preference(frames, frames, np.zeros(4), other, model=PreferenceReward(TINY))


# ----- pairs and labels ----------------------------------------------------------------------
def test_sample_pairs_is_seeded_distinct_and_respects_episodes(tmp_path: Path) -> None:
    path = make_store(tmp_path / "s.zarr")
    pairs = sample_pairs(path, 500, seed=3, episodes=[1, 3])
    np.testing.assert_array_equal(pairs, sample_pairs(path, 500, seed=3, episodes=[1, 3]))
    assert not np.array_equal(pairs, sample_pairs(path, 500, seed=4, episodes=[1, 3]))
    assert (pairs[:, 0] != pairs[:, 1]).all()
    with EpisodeStore.open(path) as store:
        allowed = np.concatenate([np.arange(12, 24), np.arange(36, 48)])
        assert store.episode_slice(1) == slice(12, 24)
    assert np.isin(pairs, allowed).all()
    assert set(np.unique(pairs)) == set(allowed)  # every allowed row gets drawn
    with pytest.raises(RewardError, match="out of range"):
        sample_pairs(path, 5, episodes=[9])


def test_sample_pairs_same_task_keeps_tasks_apart(tmp_path: Path) -> None:
    path = tmp_path / "multi.zarr"
    with EpisodeStore.create(path, fps=10) as store:
        for i, task in enumerate(["open", "close", "open", "close"]):
            store.add_episode(
                {"image_color": progress_frames(np.full(5, i / 4)), "action": np.zeros((5, 5))},
                meta={"task": task},
            )
    pairs = sample_pairs(path, 400, seed=0, same_task=True)
    episode = pairs // 5
    task_of = np.array([0, 1, 0, 1])
    np.testing.assert_array_equal(task_of[episode[:, 0]], task_of[episode[:, 1]])
    mixed = sample_pairs(path, 400, seed=0)
    assert (task_of[mixed[:, 0] // 5] != task_of[mixed[:, 1] // 5]).any()
    goals = pair_goals(path, pairs)
    assert goals == [["open", "close"][t] for t in task_of[episode[:, 0]]]


class FakeAnswer:
    def __init__(self, label: int) -> None:
        self.label = label


def brightness_ask(client: Any, goal: str, a: np.ndarray, b: np.ndarray) -> FakeAnswer:
    """A labeler that reads the square's brightness (a perfect teacher for progress_frames)."""
    client.append(goal)
    pos_a, pos_b = (int(im[16, 20, 0]) - 40 for im in (a, b))
    if pos_a == pos_b:
        return FakeAnswer(-1)
    if min(pos_a, pos_b) == 0:
        raise RewardError("no preference label in VLM reply 'hmm'")
    return FakeAnswer(int(pos_b > pos_a))


def test_ask_pairs_drops_unsure_and_failed_answers() -> None:
    p = np.array([0.0, 0.2, 0.2, 0.6, 1.0])
    frames = progress_frames(p)
    pairs = np.array([[1, 3], [4, 2], [1, 2], [0, 3], [3, 1]])
    calls: list[str] = []
    labels = ask_pairs(calls, "go right", frames, pairs, concurrency=3, ask=brightness_ask)
    assert labels.asked == 5 and labels.unsure == 1 and labels.failed == 1
    assert labels.dropped == 2 and len(labels.errors) == 1
    np.testing.assert_array_equal(labels.pairs, [[1, 3], [4, 2], [3, 1]])
    np.testing.assert_array_equal(labels.labels, [1, 0, 0])
    assert calls == ["go right"] * 5
    with pytest.raises(RewardError, match="pair rows must be in"):
        ask_pairs(calls, "go right", frames, np.array([[0, 5]]), ask=brightness_ask)
    with pytest.raises(RewardError, match="3 goals for 5 pairs"):
        ask_pairs(calls, ["a", "b", "c"], frames, pairs, ask=brightness_ask)


def test_fit_preference_reads_each_row_once_and_needs_labels(tmp_path: Path) -> None:
    path = make_store(tmp_path / "s.zarr")
    with EpisodeStore.open(path) as store:
        pairs = sample_pairs(store, 120, seed=0)
        labels = ask_pairs([], "right", store.array("image_color"), pairs, ask=brightness_ask)
        model, log = fit_preference(store.array("image_color"), labels, TINY)
        frames, progress = store.array("image_color")[:], store.array("progress")[:]
    assert log.n_pairs == len(labels.labels) > 80
    assert spearmanr(model(RewardBatch(frames)).rewards, progress)[0] > 0.9
    empty = PairLabels(pairs=np.zeros((0, 2), np.int64), labels=np.zeros(0, np.int64), asked=3)
    with pytest.raises(RewardError, match="no usable preference labels"):
        fit_preference(progress_frames(np.zeros(2)), empty, TINY)


# ----- relabeling ----------------------------------------------------------------------------
def test_relabel_writes_a_new_store_and_keeps_everything(tmp_path: Path) -> None:
    src = make_store(tmp_path / "src.zarr", reward=True)
    before = snapshot(src)
    model = PreferenceReward(TINY)
    model.set_normalization(before["arrays"]["image_color"])
    out, rewards = relabel_store(src, model, batch_size=5)
    assert out == default_relabel_path(src) == tmp_path / "src_reward.zarr"
    expected = model(RewardBatch(before["arrays"]["image_color"])).rewards
    # batch sizes differ, so does float32 summation order (3.8e-5 seen on an AMD EPYC)
    np.testing.assert_allclose(rewards, expected, rtol=1e-3, atol=2e-4)
    after_src = snapshot(src)  # the source is untouched
    for key, value in before["arrays"].items():
        np.testing.assert_array_equal(after_src["arrays"][key], value)
    assert after_src["attrs"] == before["attrs"]
    new = snapshot(out)
    assert set(new["arrays"]) == set(before["arrays"])
    for key, value in before["arrays"].items():
        if key != "reward":
            np.testing.assert_array_equal(new["arrays"][key], value, err_msg=key)
    np.testing.assert_allclose(new["arrays"]["reward"], rewards)
    assert new["metas"] == before["metas"]
    assert new["attrs"]["task"] == before["attrs"]["task"]
    assert new["attrs"]["reward_model"]["type"] == "preference"
    with pytest.raises(RewardError, match="exists"):
        relabel_store(src, model)
    relabel_store(src, model, overwrite=True)  # replacing our own output is allowed


def test_relabel_in_place_touches_only_the_reward_key(tmp_path: Path) -> None:
    src = make_store(tmp_path / "src.zarr")
    before = snapshot(src)
    model = PreferenceReward(TINY)
    key_files = {
        k: sorted(p.stat().st_mtime_ns for p in (src / "data" / k).rglob("*") if p.is_file())
        for k in before["arrays"]
    }
    _, rewards = relabel_store(src, model, in_place=True)
    after = snapshot(src)
    assert set(after["arrays"]) == {*before["arrays"], "reward"}
    for key, value in before["arrays"].items():
        np.testing.assert_array_equal(after["arrays"][key], value, err_msg=key)
        files = (src / "data" / key).rglob("*")
        assert sorted(p.stat().st_mtime_ns for p in files if p.is_file()) == key_files[key]
    np.testing.assert_allclose(after["arrays"]["reward"], rewards)
    assert after["metas"] == before["metas"]
    _, again = relabel_store(
        src, PreferenceReward(dataclasses.replace(TINY, seed=5)), in_place=True
    )
    np.testing.assert_allclose(snapshot(src)["arrays"]["reward"], again)
    assert not np.allclose(again, rewards)
    with EpisodeStore.open(src, mode="a") as store:  # the store still takes new episodes
        episode = {k: v[:3] for k, v in after["arrays"].items()}
        assert store.add_episode(episode) == 4
    assert not any(p.name.startswith(".column-") for p in src.iterdir())
    with pytest.raises(RewardError, match="not both"):
        relabel_store(src, model, in_place=True, out_path=tmp_path / "x.zarr")


# ----- online --------------------------------------------------------------------------------
def test_online_loop_queries_retrains_and_relabels_the_buffer() -> None:
    config = dataclasses.replace(TINY, max_epochs=15)
    online = OnlineConfig(query_every=40, queries_per_round=60, concurrency=2, capacity=70)
    calls: list[str] = []
    loop = OnlinePreferenceLoop(config, calls, "go right", online, ask=brightness_ask)
    rng = np.random.default_rng(0)
    results = []
    for _ in range(4):
        results.append(loop.append(progress_frames(rng.uniform(0, 1, 20))))
    assert results[0] is None and results[2] is None
    assert results[1] is not None and results[3] is not None
    assert len(results[1]) == 40 and len(results[3]) == 70 == len(loop)  # capacity
    assert loop.stats["updates"] == 2 and loop.stats["asked"] == 120
    assert loop.stats["kept"] == loop.n_labels > 60
    assert len(calls) == 120
    test_p = np.linspace(0, 1, 25)
    assert loop.model is not None
    rewards = loop.model(RewardBatch(progress_frames(test_p))).rewards
    assert spearmanr(rewards, test_p)[0] > 0.8
    np.testing.assert_allclose(loop.rewards, loop.model(RewardBatch(loop.buffer())).rewards)


# ----- CLI -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def twin_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from twinloop.sim2real.record import RecordConfig, record_twin_dataset
    from twinloop.sim2real.twin import TwinConfig

    path = tmp_path_factory.mktemp("pref") / "push.zarr"
    config = RecordConfig(episodes=3, kinds=("expert", "stall", "noisy"), depth=False, seed=5)
    return record_twin_dataset(path, config, TwinConfig(task="push_cube"))


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "twinloop.vlm_reward.cli_preference", "label", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=240)


def test_cli_label_with_teacher_smoke(twin_store: Path, tmp_path: Path) -> None:
    before = snapshot(twin_store)
    model_path = tmp_path / "pref.safetensors"
    out = tmp_path / "relabeled.zarr"
    proc = run_cli(
        "--dataset", str(twin_store), "--out-model", str(model_path), "--out-dataset", str(out),
        "--teacher", "--queries", "40", "--epochs", "1", "--size", "24", "--ensemble", "2",
        "--concurrency", "4", "--label-noise", "0.1",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(model_path.with_suffix(".json").read_text())
    assert report["queries"] == 40
    assert report["kept"] + report["dropped"] == 40
    assert report["teacher"]["labels"] == 40 and report["epochs"] == [1, 1]
    assert 0.0 <= report["accuracy"] <= 1.0 and -1 <= report["spearman_progress"] <= 1
    model = load_reward_model(model_path, expect_type="preference")
    assert model.config.ensemble_size == 2
    with EpisodeStore.open(out) as store:
        assert store.n_steps == len(before["arrays"]["progress"])
        assert "reward" in store.keys
    after = snapshot(twin_store)
    assert set(after["arrays"]) == set(before["arrays"])  # the source gained nothing
    # An existing output is refused with a clear message and exit code 2, no traceback.
    again = run_cli("--dataset", str(twin_store), "--out-model", str(model_path), "--teacher")
    assert again.returncode == 2
    assert "exists" in again.stderr and "Traceback" not in again.stderr


def test_cli_errors_and_help(tmp_path: Path) -> None:
    proc = run_cli(
        "--dataset", str(tmp_path / "missing.zarr"), "--out-model", str(tmp_path / "m.st"),
        "--base-url", "http://127.0.0.1:9/v1", "--model", "x",
    )  # fmt: skip
    assert proc.returncode == 2 and "not an episode store" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_cli("--dataset", "d", "--out-model", "m", "--in-place", "--out-dataset", "o")
    assert proc.returncode == 2 and "not allowed with" in proc.stderr
    help_text = run_cli("--help")
    assert help_text.returncode == 0 and "--teacher" in help_text.stdout


# ----- acceptance ----------------------------------------------------------------------------
ACCEPT_EPISODES = 114  # kinds cycle expert, stall, noisy; the last HELD_OUT are never labelled
HELD_OUT = 18  # many held-out episodes: one odd episode must not decide the test
ACCEPT_QUERIES = 2000  # pairs asked (the teacher answers about 12 % of them "-1")
# Tuned on other recording seeds: 48 px frames, robust BT loss at the teacher's flip rate.
ACCEPT_CONFIG = PreferenceConfig(size=48, max_epochs=10, lr=1e-3, label_noise=0.2)


def acceptance_run(tmp_path: Path, seed: int) -> dict[str, float]:
    """Record, label via HTTP (20 % noise), train, relabel; Spearman on held-out episodes."""
    from twinloop.sim2real.record import RecordConfig, record_twin_dataset
    from twinloop.sim2real.twin import TwinConfig
    from twinloop.vlm_reward.teacher import FrameIndex, SimulatedTeacher
    from twinloop.vlm_reward.vlm_client import VLMClient, VLMClientConfig

    path = tmp_path / "push.zarr"
    record = RecordConfig(
        episodes=ACCEPT_EPISODES, kinds=("expert", "stall", "noisy"), depth=False, seed=100 * seed
    )
    record_twin_dataset(path, record, TwinConfig(task="push_cube"))
    train_episodes = range(ACCEPT_EPISODES - HELD_OUT)
    with EpisodeStore.open(path) as store:
        goal = store.attrs["task"]
        pairs = sample_pairs(store, ACCEPT_QUERIES, seed=seed, episodes=train_episodes)
        with SimulatedTeacher(FrameIndex.from_store(path), error_rate=0.2, seed=seed) as teacher:
            client_config = VLMClientConfig(
                teacher.base_url, teacher.model, api_key_env="", max_concurrency=8
            )
            with VLMClient(client_config) as client:
                labels = ask_pairs(client, goal, store.array("image_color"), pairs, concurrency=8)
            flips = teacher.stats["flips"]
        config = dataclasses.replace(ACCEPT_CONFIG, seed=seed)
        model, log = fit_preference(store.array("image_color"), labels, config)
    out, _ = relabel_store(path, model, out_path=tmp_path / "relabeled.zarr")
    with EpisodeStore.open(out) as relabeled:
        held = np.arange(relabeled.episode_slice(len(train_episodes)).start, relabeled.n_steps)
        reward = np.asarray(relabeled.array("reward")[held])
        progress = np.asarray(relabeled.array("progress")[held])
    return {
        "spearman": float(spearmanr(reward, progress)[0]),
        "kept": len(labels.labels),
        "dropped": labels.dropped,
        "flip_rate": flips / max(1, labels.asked - labels.unsure),
        "accuracy": log.ensemble_accuracy,
    }


@pytest.mark.slow
def test_acceptance_learned_reward_ranks_held_out_frames_like_progress(tmp_path: Path) -> None:
    result = acceptance_run(tmp_path, seed=0)
    assert result["kept"] + result["dropped"] == ACCEPT_QUERIES
    assert 0.8 * ACCEPT_QUERIES < result["kept"] <= 2000
    assert 0.15 < result["flip_rate"] < 0.25  # the teacher really was noisy
    assert result["spearman"] >= 0.9, result
