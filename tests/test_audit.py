"""Reward audit: correlations with true progress, FP/FN counting, report files, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from helpers_clip import make_tiny_open_clip
from twinloop.datasets.store import EpisodeStore
from twinloop.vlm_reward.audit import (
    AuditConfig,
    EpisodeCurves,
    audit_curves,
    correlations,
    flag_stats,
    run_audit,
)
from twinloop.vlm_reward.base import RewardBatch, RewardOutput, save_reward_model
from twinloop.vlm_reward.clip_reward import ClipReward, ClipRewardConfig
from twinloop.vlm_reward.errors import RewardError

torch.set_num_threads(1)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three tiny push_cube episodes (expert, stall, noisy) at 64x48."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    from twinloop.sim2real.record import RecordConfig, record_twin_dataset
    from twinloop.sim2real.scene import CameraConfig
    from twinloop.sim2real.twin import TwinConfig

    path = tmp_path_factory.mktemp("audit") / "twin.zarr"
    config = RecordConfig(episodes=3, kinds=("expert", "stall", "noisy"), depth=False, seed=0)
    twin = TwinConfig(task="push_cube", camera=CameraConfig(width=64, height=48))
    return record_twin_dataset(path, config, twin)


def _with_keys(src: Path, dst: Path, make: Any) -> Path:
    """Copy ``src`` to ``dst`` adding the keys ``make(episode) -> dict`` returns."""
    with EpisodeStore.open(src) as store:
        attrs = store.attrs
        out = EpisodeStore.create(
            dst,
            fps=store.fps,
            task=attrs["task"],
            camera_intrinsics=attrs["camera_intrinsics"],
            extra_attrs={"twin_task": attrs["twin_task"]},
        )
        with out:
            for i in range(store.n_episodes):
                episode = store.get_episode(i)
                meta = store.episode_meta(i)
                out.add_episode(
                    episode | make(episode), meta={"kind": meta["kind"], "success": meta["success"]}
                )
    return dst


@pytest.fixture(scope="module")
def labelled(recorded: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)

    def keys(ep: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        progress = ep["progress"].astype(np.float32)
        return {
            "reward_affine": 2.0 * progress + 1.0,
            "reward_noisy": progress + rng.normal(0.0, 0.01, len(progress)).astype(np.float32),
            "reward_negative": -progress,
            "flags_true": ep["success"].copy(),
            "flags_inverted": ~ep["success"],
        }

    return _with_keys(recorded, tmp_path_factory.mktemp("labelled") / "twin.zarr", keys)


def test_stored_key_with_a_known_relation(labelled: Path, tmp_path: Path) -> None:
    good = run_audit(labelled, tmp_path / "noisy", config=AuditConfig(reward_key="reward_noisy"))
    assert good.n_episodes == 3 and good.spearman is not None and good.spearman > 0.9
    assert good.pearson is not None and good.pearson > 0.9
    assert good.source == "key:reward_noisy"
    assert good.frame_flags is None and good.episode_flags is None  # no flags given
    affine = run_audit(
        labelled, tmp_path / "affine", config=AuditConfig(reward_key="reward_affine")
    )
    negative = run_audit(
        labelled, tmp_path / "neg", config=AuditConfig(reward_key="reward_negative", plots=False)
    )
    assert affine.pearson == pytest.approx(1.0, abs=1e-6)
    assert affine.spearman == pytest.approx(1.0, abs=1e-6)
    assert negative.pearson == pytest.approx(-1.0, abs=1e-6)
    assert negative.spearman == pytest.approx(-1.0, abs=1e-6)
    for e_pos, e_neg in zip(affine.episodes, negative.episodes, strict=True):
        assert e_pos.spearman == pytest.approx(1.0) and e_neg.spearman == pytest.approx(-1.0)
    kinds = [e.kind for e in good.episodes]
    assert kinds == ["expert", "stall", "noisy"]
    assert [e.true_success for e in good.episodes] == [True, True, False]  # stall passes through

    summary = json.loads((tmp_path / "noisy" / "summary.json").read_text())
    assert summary["spearman"] == pytest.approx(good.spearman)
    assert [e["steps"] for e in summary["episodes"]] == [e.steps for e in good.episodes]
    markdown = (tmp_path / "noisy" / "summary.md").read_text()
    assert "| Spearman (all frames) |" in markdown and "| 2 | noisy |" in markdown
    pngs = sorted((tmp_path / "noisy").glob("*.png"))
    assert [p.name for p in pngs] == [
        "episode_0000.png",
        "episode_0001.png",
        "episode_0002.png",
        "scatter.png",
    ]
    for png in pngs:
        data = png.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000
    assert not list((tmp_path / "neg").glob("*.png"))  # plots=False


def test_flag_counting_on_a_constructed_case() -> None:
    def ep(i: int, truth: list[int], flags: list[int]) -> EpisodeCurves:
        n = len(truth)
        return EpisodeCurves(
            index=i,
            rewards=np.linspace(0.0, 1.0, n),
            progress=np.linspace(0.0, 1.0, n),
            success=np.array(truth, bool),
            flags=np.array(flags, bool),
        )

    report = audit_curves(
        [
            ep(0, [0, 0, 1, 1], [0, 1, 1, 0]),  # frames: tp 1, fp 1, tn 1, fn 1 -> episode tp
            ep(1, [0, 0, 0], [1, 0, 0]),  # frames: fp 1, tn 2 -> episode fp
            ep(2, [0, 1], [0, 0]),  # frames: tn 1, fn 1 -> episode fn
        ]
    )
    frame = report.frame_flags
    assert frame is not None and (frame.tp, frame.fp, frame.tn, frame.fn) == (1, 2, 4, 2)
    assert frame.fp_rate == pytest.approx(2 / 6) and frame.fn_rate == pytest.approx(2 / 3)
    episode = report.episode_flags
    assert episode is not None and (episode.tp, episode.fp, episode.tn, episode.fn) == (1, 1, 0, 1)
    assert episode.fp_rate == pytest.approx(1.0) and episode.fn_rate == pytest.approx(0.5)
    assert [e.first_true_success for e in report.episodes] == [2, None, 1]
    assert [e.first_flagged_success for e in report.episodes] == [1, 0, None]
    no_negatives = flag_stats(np.array([True, False]), np.array([True, True]))
    assert no_negatives.fp_rate is None and no_negatives.fn_rate == pytest.approx(0.5)
    with pytest.raises(RewardError, match="either every episode has success flags or none"):
        audit_curves(
            [ep(0, [0, 1], [0, 1]), EpisodeCurves(1, np.zeros(2), np.zeros(2), np.zeros(2, bool))]
        )


def test_stored_flags_and_thresholds(labelled: Path, tmp_path: Path) -> None:
    exact = run_audit(
        labelled,
        tmp_path / "a",
        config=AuditConfig(reward_key="reward_noisy", success_key="flags_true", plots=False),
    )
    assert exact.frame_flags is not None and exact.frame_flags.fp == exact.frame_flags.fn == 0
    assert exact.frame_flags.tp > 0
    inverted = run_audit(
        labelled,
        tmp_path / "b",
        config=AuditConfig(reward_key="reward_noisy", success_key="flags_inverted", plots=False),
    )
    assert inverted.frame_flags is not None
    assert inverted.frame_flags.fp_rate == 1.0 and inverted.frame_flags.fn_rate == 1.0
    # a threshold replaces the stored flags: progress >= 0.7 against the true success flags
    thresholded = run_audit(
        labelled,
        tmp_path / "c",
        config=AuditConfig(reward_key="reward_affine", success_threshold=2.0 * 0.7 + 1.0),
    )
    with EpisodeStore.open(labelled) as store:
        progress = np.asarray(store.array("progress")[:])
        truth = np.asarray(store.array("success")[:])
    want = flag_stats(progress >= 0.7 - 1e-6, truth)
    assert thresholded.frame_flags == want


@dataclass(frozen=True)
class _ProbeConfig:
    type: ClassVar[str] = "probe"


class _StateProbe:
    """A test reward model: reward = end-effector height; remembers what it was shown."""

    def __init__(self, batch_size: int) -> None:
        self.config = _ProbeConfig()
        self.batch_size = batch_size
        self.seen: set[str] = set()
        self.tasks: set[str] = set()

    def __call__(self, batch: RewardBatch) -> RewardOutput:
        assert len(batch) <= self.batch_size
        self.seen |= set(batch.state)
        self.tasks.add(batch.task)
        z = batch.state["ee_pose"][:, 2].astype(np.float32)
        return RewardOutput(rewards=z, success=np.zeros(len(z), bool))

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None


def test_model_sees_frames_and_state_but_not_the_ground_truth(
    recorded: Path, tmp_path: Path
) -> None:
    probe = _StateProbe(batch_size=16)
    report = run_audit(
        recorded, tmp_path, model=probe, config=AuditConfig(batch_size=16, plots=False)
    )
    assert "progress" not in probe.seen and "success" not in probe.seen
    assert {"ee_pose", "joint_pos", "priv_cube_pos"} <= probe.seen
    assert probe.tasks == {"push the red cube onto the green target"}
    assert report.source == "model:probe"
    with EpisodeStore.open(recorded) as store:
        z = np.asarray(store.array("ee_pose")[:, 2])
        truth = np.asarray(store.array("success")[:])
        lengths = store.episode_lengths
    assert report.n_frames == len(z) and [e.steps for e in report.episodes] == list(lengths)
    assert report.episodes[0].reward_max == pytest.approx(float(z[: lengths[0]].max()))
    assert report.frame_flags is not None  # the model's own (all-False) flags
    assert report.frame_flags.fn == int(truth.sum()) and report.frame_flags.fp == 0


def test_clip_reward_audit_on_the_tiny_model(recorded: Path, tmp_path: Path) -> None:
    enc = make_tiny_open_clip(tmp_path)
    config = ClipRewardConfig(
        goal_prompts=("a red cube on a green target",),
        baseline_prompts=("a robot arm next to a table",),
        model_name=enc.model_name,
        checkpoint=enc.checkpoint,
        model_config=enc.model_config,
        device="cpu",
        precision="fp32",
    )
    report = run_audit(
        recorded, tmp_path / "out", model=ClipReward(config), config=AuditConfig(max_plots=1)
    )
    assert report.n_episodes == 3 and report.pearson is not None  # random weights: any value
    assert -1.0 <= report.pearson <= 1.0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [
        "episode_0000.png",
        "scatter.png",
    ]


def test_constant_reward_has_no_correlation(tmp_path: Path) -> None:
    assert correlations(np.ones(5), np.arange(5.0)) == (None, None)
    assert correlations(np.arange(5.0), np.ones(5)) == (None, None)
    report = audit_curves([EpisodeCurves(0, np.ones(4), np.linspace(0, 1, 4), np.zeros(4, bool))])
    assert report.spearman is None and report.episode_spearman_mean is None
    with pytest.raises(RewardError, match="NaN"):
        EpisodeCurves(0, np.array([0.0, np.nan]), np.zeros(2), np.zeros(2, bool))
    with pytest.raises(RewardError, match="lengths"):
        EpisodeCurves(0, np.zeros(3), np.zeros(2), np.zeros(3, bool))


def test_bad_audit_inputs(recorded: Path, labelled: Path, tmp_path: Path) -> None:
    with pytest.raises(RewardError, match="no key \\['reward'\\]"):
        run_audit(recorded, tmp_path, config=AuditConfig(reward_key="reward"))
    with pytest.raises(RewardError, match="give a reward model or a stored reward key"):
        run_audit(recorded, tmp_path)
    with pytest.raises(RewardError, match="not both"):
        run_audit(
            labelled,
            tmp_path,
            model=_StateProbe(32),
            config=AuditConfig(reward_key="reward_noisy"),
        )
    with pytest.raises(RewardError, match="cannot open dataset"):
        run_audit(tmp_path / "missing.zarr", tmp_path, config=AuditConfig(reward_key="r"))
    stripped = _without_ground_truth(recorded, tmp_path / "stripped.zarr")
    with pytest.raises(RewardError, match="no ground truth \\['progress', 'success'\\]"):
        run_audit(stripped, tmp_path, config=AuditConfig(reward_key="action"))
    with pytest.raises(RewardError, match="success_key goes with reward_key"):
        AuditConfig(success_key="flags")
    with pytest.raises(RewardError, match="batch_size"):
        AuditConfig(batch_size=0)
    with pytest.raises(RewardError, match="values per row"):
        run_audit(labelled, tmp_path, config=AuditConfig(reward_key="ee_pose"))


def _without_ground_truth(src: Path, dst: Path) -> Path:
    with EpisodeStore.open(src) as store:
        attrs = store.attrs
        out = EpisodeStore.create(
            dst, fps=store.fps, task=attrs["task"], camera_intrinsics=attrs["camera_intrinsics"]
        )
        with out:
            episode = store.get_episode(0, ["image_color", "action"])
            out.add_episode(episode)
    return dst


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "twinloop.vlm_reward.cli_audit", "audit", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_cli_smoke(labelled: Path, tmp_path: Path) -> None:
    run = _cli("--dataset", str(labelled), "--key", "reward_noisy", "--out", str(tmp_path / "k"))
    assert run.returncode == 0, run.stderr
    assert "| Spearman (all frames) |" in run.stdout
    assert (tmp_path / "k" / "episode_0002.png").stat().st_size > 0
    summary = json.loads((tmp_path / "k" / "summary.json").read_text())
    assert summary["spearman"] > 0.9

    enc = make_tiny_open_clip(tmp_path)
    clip_flags = [
        "--clip-model",
        enc.model_name,
        "--clip-weights",
        enc.checkpoint,
        "--clip-model-config",
        enc.model_config,
        "--device",
        "cpu",
    ]
    run = _cli(
        "--dataset", str(labelled), "--out", str(tmp_path / "c"), "--no-plots", "--json",
        "--clip-goal", "a red cube on a green target", "--clip-goal", "the cube is on the goal",
        "--clip-baseline", "a robot arm", "--success-threshold", "0.5", *clip_flags,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["n_frames"] > 0 and report["frame_flags"] is not None
    assert not list((tmp_path / "c").glob("*.png"))

    model = ClipReward(
        ClipRewardConfig(
            goal_prompts=("goal",),
            baseline_prompts=("scene",),
            model_name=enc.model_name,
            checkpoint=enc.checkpoint,
            model_config=enc.model_config,
            device="cpu",
        )
    )
    ckpt = save_reward_model(model, tmp_path / "clip.safetensors")
    run = _cli(
        "--dataset",
        str(labelled),
        "--checkpoint",
        str(ckpt),
        "--out",
        str(tmp_path / "m"),
        "--max-plots",
        "1",
    )
    assert run.returncode == 0, run.stderr
    assert "clip checkpoint" in (tmp_path / "m" / "summary.md").read_text()

    run = _cli("--dataset", str(labelled), "--key", "nope", "--out", str(tmp_path / "x"))
    assert run.returncode == 2
    assert "has no key ['nope']" in run.stderr and "Traceback" not in run.stderr
    run = _cli("--dataset", str(labelled), "--clip-goal", "g", "--out", str(tmp_path / "y"))
    assert run.returncode == 2 and "--clip-baseline" in run.stderr
