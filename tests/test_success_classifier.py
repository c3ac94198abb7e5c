"""RoboFuME success classifier: labels, calibration, training, checkpoints, open_clip, CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from twinloop.datasets.store import EpisodeStore
from twinloop.vlm_reward.base import (
    RewardBatch,
    load_reward_model,
    read_checkpoint_header,
    save_reward_model,
)
from twinloop.vlm_reward.classifier_data import (
    calibrate_threshold,
    classifier_labels,
    split_episodes,
)
from twinloop.vlm_reward.errors import RewardError
from twinloop.vlm_reward.success_classifier import (
    ClassifierConfig,
    SuccessClassifier,
    train_classifier,
)

REPO = Path(__file__).resolve().parents[1]
H, W = 24, 32  # synthetic frames


def _frame(rng: np.random.Generator, success: bool) -> np.ndarray:
    """Brown-ish noise; a success frame has a red square in the middle (easy to learn)."""
    img = rng.integers(60, 140, size=(H, W, 3), dtype=np.uint8)
    if success:
        img[8:16, 12:20] = (230, 20, 20)
    return img


def make_store(path: Path, plan: Sequence[tuple[int, int, bool | None]], seed: int = 0) -> Path:
    """Episodes (length, number of final success rows, meta success) with per-row truth."""
    rng = np.random.default_rng(seed)
    intr: dict[str, object] = {"width": W, "height": H, "fx": 30.0, "fy": 30.0}
    intr |= {"ppx": W / 2, "ppy": H / 2, "model": "none", "coeffs": [0.0] * 5}
    with EpisodeStore.create(path, fps=10.0, camera_intrinsics={"color": intr}) as store:
        for n, n_success, meta_success in plan:
            truth = np.arange(n) >= n - n_success
            episode = {
                "image_color": np.stack([_frame(rng, bool(t)) for t in truth]),
                "success": truth,
                "action": np.zeros((n, 5), dtype=np.float32),
            }
            store.add_episode(episode, meta={"success": meta_success})
    return path


# (length, success rows at the end, episode success) -- successes alternate with failures
EASY_PLAN = [(14, 5, True), (12, 0, False)] * 6


@pytest.fixture(scope="module")
def easy_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("cls") / "easy.zarr", EASY_PLAN)


def _tiny_config(**kw: object) -> ClassifierConfig:
    base: dict[str, object] = dict(
        size=16, channels=(8, 16), feature_dim=16, head_hidden=16, steps=60, batch_size=16,
        lr=3e-3, k_last=4, early_fraction=0.3, device="cpu", target_fpr=0.05, min_threshold=0.5,
    )  # fmt: skip
    return ClassifierConfig(**{**base, **kw})


# ----- config ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"backbone": "resnet"}, "unknown backbone 'resnet'"),
        ({"reward_mode": "dense"}, "unknown reward_mode"),
        ({"k_last": 0}, "k_last must be >= 1"),
        ({"early_fraction": 1.0}, r"early_fraction must be in \[0, 1\)"),
        ({"target_fpr": 0.0}, r"target_fpr must be in \(0, 1\)"),
        ({"batch_size": 1}, "batch_size must be >= 2"),
        ({"size": 8}, r"size must be in \[16, 512\]"),
        ({"backbone": "open_clip", "precision": "fp8"}, "precision must be"),
    ],
)
def test_bad_config(kw: dict[str, object], match: str) -> None:
    with pytest.raises(RewardError, match=match):
        ClassifierConfig(**kw)


# ----- labels and splits -----------------------------------------------------------------------
def test_labels_follow_the_robofume_rule(tmp_path: Path) -> None:
    plan = [(10, 3, True), (6, 0, False), (4, 4, True), (5, 0, None), (8, 2, True)]
    with EpisodeStore.open(make_store(tmp_path / "s.zarr", plan)) as store:
        rows, labels = classifier_labels(store, range(5), k_last=3, early_fraction=0.5)
    # ep 0 (rows 0-9): first floor(0.5*10)=5 negative, last 3 positive, rows 5-6 left out
    # ep 1 (rows 10-15): failure, all negative
    # ep 2 (rows 16-19): 3 positives, early negatives capped at 4 - 3 = 1
    # ep 3 (rows 20-24): no success flag, skipped
    # ep 4 (rows 25-32): rows 25-28 negative, 30-32 positive
    expect_neg = [0, 1, 2, 3, 4, *range(10, 16), 16, 25, 26, 27, 28]
    expect_pos = [7, 8, 9, 17, 18, 19, 30, 31, 32]
    assert sorted(rows[~labels].tolist()) == expect_neg
    assert sorted(rows[labels].tolist()) == expect_pos
    assert labels.dtype == bool and len(set(rows.tolist())) == len(rows)


def test_labels_reject_bad_arguments(easy_store: Path) -> None:
    with EpisodeStore.open(easy_store) as store, pytest.raises(RewardError, match="k_last"):
        classifier_labels(store, [0], k_last=0, early_fraction=0.2)


def test_split_is_stratified_and_seeded(easy_store: Path) -> None:
    with EpisodeStore.open(easy_store) as store:
        train, hold = split_episodes(store, 0.25, seed=3)
        again = split_episodes(store, 0.25, seed=3)
        success = {i: store.episode_meta(i)["success"] for i in range(store.n_episodes)}
    assert (train, hold) == again
    assert sorted(train + hold) == list(range(len(EASY_PLAN)))
    assert sum(success[i] for i in hold) == 2 and sum(not success[i] for i in hold) == 2
    with pytest.raises(RewardError, match="holdout_fraction"):
        split_episodes(store, 1.0)


# ----- calibration -----------------------------------------------------------------------------
def test_calibration_on_constructed_probabilities() -> None:
    neg = np.arange(100) / 100.0  # 0.00 ... 0.99
    t = calibrate_threshold(neg, 0.05)
    # 5 negatives (0.95 ... 0.99) may pass; the sixth largest, 0.94, must not.
    assert np.sum(neg >= t) == 5
    assert t == np.nextafter(0.94, 1.0)
    assert calibrate_threshold(neg, 0.049) == np.nextafter(0.95, 1.0)  # only 4 may pass
    ties = np.array([0.1] * 10 + [0.9] * 10)
    assert np.sum(ties >= calibrate_threshold(ties, 0.3)) == 0  # ties are never split
    assert calibrate_threshold(np.zeros(50), 0.1, min_threshold=0.5) == 0.5
    assert calibrate_threshold(np.ones(50), 0.1) == 1.0  # saturated: unreachable, warned
    with pytest.raises(RewardError, match="without negative frames"):
        calibrate_threshold(np.zeros(0), 0.05)
    with pytest.raises(RewardError, match="probabilities"):
        calibrate_threshold(np.array([1.5]), 0.05)


@settings(max_examples=60, deadline=None)
@given(
    probs=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=60),
    target=st.floats(0.01, 0.99),
)
def test_calibration_is_the_lowest_threshold_meeting_the_target(
    probs: list[float], target: float
) -> None:
    neg = np.asarray(probs)
    allowed = math.floor(target * len(neg))  # negatives that may pass the threshold
    t = calibrate_threshold(neg, target)
    if np.sum(neg == 1.0) > allowed:  # saturated negatives cannot be excluded
        assert t == 1.0
        return
    assert np.sum(neg >= t) <= allowed
    lower = np.nextafter(t, -1.0)
    if lower >= 0.0:
        assert np.sum(neg >= lower) > allowed  # one float step lower breaks the target


# ----- model -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(easy_store: Path) -> tuple[SuccessClassifier, dict]:
    with EpisodeStore.open(easy_store) as store:
        train, hold = split_episodes(store, 0.25, seed=0)
    return train_classifier(
        easy_store, _tiny_config(steps=120), train_episodes=train, holdout_episodes=hold
    )


def test_training_separates_an_easy_task(trained: tuple[SuccessClassifier, dict]) -> None:
    model, report = trained
    frame, episode = report["holdout"]["frame"], report["holdout"]["episode"]
    assert frame["positives"] == 2 * 5 and frame["negatives"] == 2 * 9 + 2 * 12
    assert frame["fp"] == 0 and frame["fn"] == 0, frame
    assert episode["fp"] == 0 and episode["fn"] == 0
    curve = np.asarray(report["train"]["loss_curve"])
    assert curve[-5:, 1].mean() < 0.5 * curve[:5, 1].mean()  # the loss fell
    assert report["threshold"] == model.threshold == model.config.threshold
    assert report["calibration"]["label_fpr"] <= 0.05
    assert {e["episode"] for e in report["holdout_probs"]} == set(report["holdout_episodes"])


def test_rewards_follow_the_reward_mode(trained: tuple[SuccessClassifier, dict]) -> None:
    model, _ = trained
    rng = np.random.default_rng(1)
    frames = np.stack([_frame(rng, s) for s in [True, False, True, False]])
    out = model(RewardBatch(frames))
    assert out.success.tolist() == [True, False, True, False]
    assert out.rewards.dtype == np.float32 and out.rewards.tolist() == [0, -1, 0, -1]
    np.testing.assert_array_equal(out.success, out.info["prob"] >= model.threshold)
    zero_one = SuccessClassifier(_tiny_config(reward_mode="zero_one"))
    zero_one.load_state_dict(model.state_dict())
    assert zero_one(RewardBatch(frames)).rewards.tolist() == [1, 0, 1, 0]
    # a frame of another size is resized like the training frames
    big = np.stack([np.kron(f, np.ones((3, 3, 1), dtype=np.uint8)) for f in frames])
    assert model(RewardBatch(big)).success.tolist() == [True, False, True, False]
    with pytest.raises(RewardError, match="RewardBatch"):
        model(frames)


def test_checkpoint_round_trip(trained: tuple[SuccessClassifier, dict], tmp_path: Path) -> None:
    model, _ = trained
    path = save_reward_model(model, tmp_path / "cls.safetensors")
    loaded = load_reward_model(path, expect_type="success_classifier")
    assert isinstance(loaded, SuccessClassifier)
    assert loaded.config == model.config and loaded.threshold == model.threshold
    frames = np.random.default_rng(2).integers(0, 255, (5, 40, 60, 3), dtype=np.uint8)
    a, b = model(RewardBatch(frames)), loaded(RewardBatch(frames))
    np.testing.assert_array_equal(a.info["prob"], b.info["prob"])
    np.testing.assert_array_equal(a.rewards, b.rewards)


def test_foreign_and_misshapen_checkpoints_are_refused(
    trained: tuple[SuccessClassifier, dict], tmp_path: Path
) -> None:
    model, _ = trained
    path = save_reward_model(model, tmp_path / "cls.safetensors")
    meta = read_checkpoint_header(path)
    tensors = load_file(str(path))
    other = tmp_path / "pref.safetensors"
    save_file(tensors, str(other), metadata={**meta, "type": "preference"})
    with pytest.raises(RewardError, match="holds a 'preference' reward model"):
        load_reward_model(other, expect_type="success_classifier")
    wide = json.loads(meta["config"]) | {"feature_dim": 32}
    misshapen = tmp_path / "wide.safetensors"
    save_file(tensors, str(misshapen), metadata={**meta, "config": json.dumps(wide)})
    with pytest.raises(RewardError, match="wrong shapes"):
        load_reward_model(misshapen, expect_type="success_classifier")
    del tensors["threshold"]
    short = tmp_path / "short.safetensors"
    save_file(tensors, str(short), metadata=meta)
    with pytest.raises(RewardError, match=r"missing \['threshold'\]"):
        load_reward_model(short)


def test_training_needs_both_classes(easy_store: Path) -> None:
    with pytest.raises(RewardError, match="needs both"):
        train_classifier(easy_store, _tiny_config(), train_episodes=[1, 3], holdout_episodes=[])
    with pytest.raises(RewardError, match="in both"):
        train_classifier(easy_store, _tiny_config(), train_episodes=[0, 1], holdout_episodes=[1])
    with pytest.raises(RewardError, match="cannot open dataset"):
        train_classifier(
            easy_store.parent / "nope.zarr", _tiny_config(), train_episodes=[0], holdout_episodes=[]
        )


# ----- open_clip backbone ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory):
    sys.path.insert(0, str(Path(__file__).parent))
    from helpers_clip import make_tiny_open_clip

    return make_tiny_open_clip(tmp_path_factory.mktemp("clip"))


def _clip_config(clip, **kw: object) -> ClassifierConfig:
    return _tiny_config(
        backbone="open_clip",
        model_name=clip.model_name,
        checkpoint=clip.checkpoint,
        model_config=clip.model_config,
        precision="fp32",
        **kw,
    )


@pytest.mark.parametrize("blocks", [0, 1])
def test_open_clip_backbone(tiny_clip, easy_store: Path, tmp_path: Path, blocks: int) -> None:
    cfg = _clip_config(tiny_clip, finetune_last_blocks=blocks, steps=40, lr=1e-3)
    initial = SuccessClassifier(cfg).state_dict()
    model, report = train_classifier(
        easy_store, cfg, train_episodes=list(range(8)), holdout_episodes=[8, 9, 10, 11]
    )
    state = model.state_dict()
    tuned = sorted(k for k in state if k.startswith("backbone."))
    if blocks == 0:
        assert tuned == []
    else:
        assert tuned and all(
            k.startswith(("backbone.visual.transformer.resblocks.1.", "backbone.visual.ln_post"))
            or k == "backbone.visual.proj"
            for k in tuned
        )
        moved = [k for k in tuned if not torch.equal(state[k], initial[k])]
        assert moved, "fine-tuning did not change the unfrozen block"
        assert model.encoder is not None
        assert all(not p.requires_grad for p in model.encoder.model.parameters())
    assert report["holdout"]["frame"]["positives"] == 10
    path = save_reward_model(model, tmp_path / "clip_cls.safetensors")
    loaded = load_reward_model(path, expect_type="success_classifier")
    frames = np.random.default_rng(3).integers(0, 255, (4, H, W, 3), dtype=np.uint8)
    np.testing.assert_allclose(
        model(RewardBatch(frames)).info["prob"], loaded(RewardBatch(frames)).info["prob"], atol=1e-6
    )


def test_open_clip_bad_finetune_depth(tiny_clip) -> None:
    with pytest.raises(RewardError, match="image tower has 2 blocks"):
        SuccessClassifier(_clip_config(tiny_clip, finetune_last_blocks=3))


# ----- CLI -------------------------------------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "twinloop.vlm_reward.cli_classifier", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


def test_cli_smoke(easy_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.safetensors"
    args = ["train-classifier", "--dataset", str(easy_store), "--out", str(out), "--quiet"]
    tiny = "--size 16 --steps 30 --batch-size 8 --k-last 4 --device cpu".split()
    done = _cli(*args, *tiny)
    assert done.returncode == 0, done.stderr
    assert "threshold" in done.stdout
    report = json.loads((tmp_path / "model.report.json").read_text())
    assert report["train"]["steps"] == 30 and len(report["holdout_episodes"]) == 4
    assert (tmp_path / "model.report.png").stat().st_size > 1000
    model = load_reward_model(out, expect_type="success_classifier")
    assert math.isclose(model.config.threshold, report["threshold"])
    again = _cli(*args, *tiny)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert "Traceback" not in again.stderr
    bad = _cli(*args, "--overwrite", "--target-fpr", "2")
    assert bad.returncode == 2 and "target_fpr" in bad.stderr
    assert _cli("train-classifier", "--help").returncode == 0


# ----- acceptance: push_cube in the twin -------------------------------------------------------
# The twin's default camera looks at the cube from behind the pusher, which hides the cube and the
# goal disc exactly when the push succeeds; success is then not visible in the frame. This camera
# looks along the push from the far side of the table, so the cube and the disc stay in view.
FRONT_CAMERA = {"pos": (0.85, 0.03, 0.6), "lookat": (0.46, 0.03, 0.0), "fovy": 42.0}
# Recording seed = split/training seed. Held-out frame FP/FN measured with this recipe (CPU):
# 0: 0.4%/0.8%, 1: 0.8%/2.6%, 2: 0.0%/4.0%, 3: 0.0%/0.4%. Failing splits exist: recording 0
# with split seed 1 gives 4.4%/22.0% (a stall episode ending 2.8 cm from the goal, truth success,
# and one stuck 3.4 cm away, truth failure, are held out; no threshold gets FN <= 20% there).
ACCEPT_SEED = 0


@pytest.mark.slow
def test_acceptance_push_cube_classifier(tmp_path: Path) -> None:
    """Held-out frame-level FP <= 5% and FN <= 20% against the twin's per-row success."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    # torch optimizers import torch._dynamo -> triton lazily; importing triton after MuJoCo's EGL
    # context exists segfaults (both bring their own LLVM), so load it before rendering.
    import torch._dynamo  # noqa: F401
    from twinloop.sim2real.record import RecordConfig, record_twin_dataset
    from twinloop.sim2real.scene import CameraConfig
    from twinloop.sim2real.twin import TwinConfig

    record = RecordConfig(
        episodes=64,
        kinds=("expert", "stall", "noisy"),
        noise=0.1,  # expert episodes: noisy, some fail close to the goal
        hold_steps=15,  # 16 success rows end an expert episode: room for k_last = 12
        seed=ACCEPT_SEED,
        depth=False,
    )
    twin = TwinConfig(task="push_cube", camera=CameraConfig(**FRONT_CAMERA))
    path = record_twin_dataset(tmp_path / "push.zarr", record, twin)
    with EpisodeStore.open(path) as store:
        train, hold = split_episodes(store, 0.25, seed=ACCEPT_SEED)
        hold_success = [store.episode_meta(i)["success"] for i in hold]
    assert any(hold_success) and not all(hold_success)
    config = ClassifierConfig(
        size=64,
        k_last=12,
        early_fraction=0.25,
        shift=4,
        steps=800,
        target_fpr=0.05,  # on held-out negative-labelled frames
        min_threshold=0.5,  # the balanced classifier's own decision point
        device="cpu",
        seed=ACCEPT_SEED,
    )
    model, report = train_classifier(path, config, train_episodes=train, holdout_episodes=hold)
    frame = report["holdout"]["frame"]
    summary = {k: frame[k] for k in ("fp", "negatives", "fn", "positives")}
    assert frame["fp_rate"] <= 0.05, summary
    assert frame["fn_rate"] <= 0.20, summary
    assert report["calibration"]["label_fpr"] <= 0.05
    # the checkpoint gives the same decisions on raw 320x240 frames
    with EpisodeStore.open(path) as store:
        ep = store.get_episode(hold[0], ["image_color"])["image_color"]
    probs = np.asarray(next(e for e in report["holdout_probs"] if e["episode"] == hold[0])["prob"])
    out = model(RewardBatch(ep))
    np.testing.assert_allclose(out.info["prob"], probs, rtol=1e-4, atol=1e-12)


# ----- hard negatives (reset-free: the partner task's goal frames) ------------------------------
def _cue_frame(rng: np.random.Generator, pose: bool, goal: bool) -> np.ndarray:
    """``pose``: a red square (the arm at the handle); ``goal``: a yellow bar (the drawer open)."""
    img = rng.integers(60, 140, size=(H, W, 3), dtype=np.uint8)
    if pose:
        img[8:16, 4:12] = (230, 20, 20)
    if goal:
        img[0:8, 14:32] = (240, 230, 30)
    return img


def _cue_store(path: Path, episodes: int, *, goal: bool, seed: int) -> Path:
    """Successful episodes ending with the arm at the handle (pose), the goal shown or not, and
    failed episodes of background only."""
    rng = np.random.default_rng(seed)
    with EpisodeStore.create(path, fps=10.0) as store:
        for i in range(episodes):
            win = i % 2 == 0
            n = 12
            truth = (np.arange(n) >= n - 5) & win
            frames = [_cue_frame(rng, bool(t), bool(t) and goal) for t in truth]
            store.add_episode({"image_color": np.stack(frames), "success": truth,
                               "action": np.zeros((n, 5), np.float32)}, meta={"success": win})  # fmt: skip
    return path


def test_partner_goal_frames_are_hard_negatives(tmp_path: Path) -> None:
    # this task's successes show the pose AND the goal; the partner task ends in the pose alone
    own = _cue_store(tmp_path / "open.zarr", 12, goal=True, seed=1)
    partner = _cue_store(tmp_path / "close.zarr", 8, goal=False, seed=2)
    with EpisodeStore.open(own) as store:
        train, hold = split_episodes(store, 0.25, seed=0)
    model, report = train_classifier(own, _tiny_config(steps=300), train_episodes=train,
                                     holdout_episodes=hold, negatives=[partner])  # fmt: skip
    assert report["train"]["hard_negatives"] == 4 * 4  # k_last 4 of each of 4 successes
    assert report["train"]["negative_stores"] == [str(partner)]
    rng = np.random.default_rng(9)
    pose_only = np.stack([_cue_frame(rng, True, False) for _ in range(16)])
    both = np.stack([_cue_frame(rng, True, True) for _ in range(16)])
    assert not model(RewardBatch(frames=pose_only)).success.any()  # the partner's goal: no
    assert model(RewardBatch(frames=both)).success.all()
    # without them the same training keys on the pose and flags the partner's goal
    plain, _ = train_classifier(own, _tiny_config(steps=300), train_episodes=train,
                                holdout_episodes=hold)  # fmt: skip
    assert plain(RewardBatch(frames=pose_only)).success.mean() > 0.5
    # a negatives store without a success to take goal frames from is refused by name
    empty = make_store(tmp_path / "fails.zarr", [(6, 0, False)] * 2)
    with pytest.raises(RewardError, match=r"fails\.zarr has no successful episode"):
        train_classifier(own, _tiny_config(steps=5), train_episodes=train, holdout_episodes=hold,
                         negatives=[empty])  # fmt: skip
