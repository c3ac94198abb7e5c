"""Training loops, twin evaluation and ``twinloop train``: policy.twin_env, evaluate, train, cli."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering, before mujoco is imported

from twinloop.datasets.store import EpisodeStore
from twinloop.policy.base import load_checkpoint, make_algorithm
from twinloop.policy.buffers import RewardSpec, load_offline
from twinloop.policy.errors import PolicyError
from twinloop.policy.evaluate import evaluate
from twinloop.policy.networks import EncoderSpec
from twinloop.policy.obs import (
    ObsSpec,
    default_state_keys,
    images_from_rows,
    normalize_action,
    state_from_rows,
)
from twinloop.policy.train import (
    EvalPoint,
    OfflineConfig,
    OnlineConfig,
    load_evals,
    train_offline,
    train_online,
)
from twinloop.policy.twin_env import PolicyTwinEnv
from twinloop.sim2real.experts import make_expert
from twinloop.sim2real.record import RecordConfig, record_twin_dataset
from twinloop.sim2real.scene import CameraConfig
from twinloop.sim2real.twin import TwinConfig

TASK = "push_cube"
CAMERA = CameraConfig(width=32, height=32)
STATE = ObsSpec(state_keys=default_state_keys(TASK, privileged=True))
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 expert push_cube episodes, 32x32 frames, no depth."""
    path = tmp_path_factory.mktemp("policy_train") / "push.zarr"
    record_twin_dataset(
        path,
        RecordConfig(episodes=4, depth=False),
        TwinConfig(task=TASK, camera=CAMERA),
    )
    return path


class ExpertPolicy:
    """An 'algorithm' that acts with the twin's scripted expert (for evaluate)."""

    def __init__(self, env: PolicyTwinEnv) -> None:
        self.env = env
        self.device = torch.device("cpu")
        self.expert = None
        self.calls = 0

    def act(self, obs: dict[str, torch.Tensor], *, deterministic: bool = True) -> torch.Tensor:
        assert obs["state"].shape == (1, self.env.state_dim)
        if self.env.twin.steps == 0 or self.expert is None:
            self.expert = make_expert(self.env.twin, noise=0.0, seed=0)
        self.calls += 1
        metric = self.expert.act(self.env.twin.privileged_state())
        return torch.as_tensor(normalize_action(metric, STATE.action_scale))[None]


class StillPolicy:
    device = torch.device("cpu")

    def act(self, obs: dict[str, torch.Tensor], *, deterministic: bool = True) -> torch.Tensor:
        return torch.zeros(obs["state"].shape[0], 5)


# ----- env -------------------------------------------------------------------------------------
def test_env_obs_match_the_recorded_rows(store: Path) -> None:
    with EpisodeStore.open(store) as s:
        ep = s.get_episode(0)  # recorded from reset(seed=0)
    image_spec = ObsSpec(state_keys=("proprio",), image_key="image_color", image_size=32)
    want_state = state_from_rows(ep, STATE)
    want_images = images_from_rows(ep, image_spec)
    with PolicyTwinEnv(TASK, STATE) as env, PolicyTwinEnv(TASK, image_spec, camera=CAMERA) as ienv:
        obs, iobs = env.reset(seed=0), ienv.reset(seed=0)
        assert env.state_dim == want_state.shape[1] == 12
        assert "image" not in obs and iobs["image"].shape == (3, 32, 32)
        for t in range(5):  # replaying the recorded actions gives the recorded rows
            np.testing.assert_allclose(obs["state"], want_state[t], atol=1e-5)
            np.testing.assert_array_equal(iobs["image"], want_images[t])
            action = normalize_action(ep["action"][t], STATE.action_scale)
            obs, _, _, _, info = env.step(action)
            iobs, *_ = ienv.step(action)
        assert set(info["row"]) >= {"proprio", "ee_pose", "joint_pos", "priv_cube_pos"}


def _expert_episode(env: PolicyTwinEnv, seed: int) -> tuple[list[float], list[dict], bool]:
    env.reset(seed=seed)
    expert = make_expert(env.twin, noise=0.0, seed=seed)
    rewards, infos = [], []
    while True:
        action = normalize_action(expert.act(env.twin.privileged_state()), STATE.action_scale)
        _, reward, terminated, truncated, info = env.step(action)
        rewards.append(reward)
        infos.append(info)
        if terminated or truncated:
            return rewards, infos, terminated


def test_reward_conventions() -> None:
    with PolicyTwinEnv(TASK, STATE, reward="success") as env:
        rewards, infos, terminated = _expert_episode(env, 1)
        assert terminated and infos[-1]["success"]
        assert rewards[-1] == 0.0 and all(r == -1.0 for r in rewards[:-1])
        assert not any(i["success"] for i in infos[:-1])  # ends at the first success
    with PolicyTwinEnv(TASK, STATE, reward="success01") as env:
        rewards01, _, terminated = _expert_episode(env, 1)
        assert terminated and rewards01 == [r + 1.0 for r in rewards]
    with PolicyTwinEnv(TASK, STATE, reward="dense") as env:
        dense, infos, _ = _expert_episode(env, 1)
        assert dense == [i["progress"] for i in infos]
        assert 0.0 <= min(dense) and dense[-1] > dense[0]
        env.reset(seed=2)
        for _ in range(env.max_steps):  # standing still: a time-limit truncation, no terminal
            _, _, terminated, truncated, info = env.step(np.zeros(5))
        assert truncated and not terminated and info["steps"] == env.max_steps


def test_env_rejects_bad_input() -> None:
    with pytest.raises(PolicyError, match="unknown env reward 'sparse'"):
        PolicyTwinEnv(TASK, STATE, reward="sparse")
    with pytest.raises(PolicyError, match="priv_nope"):
        PolicyTwinEnv(TASK, ObsSpec(state_keys=("proprio", "priv_nope")))
    with PolicyTwinEnv(TASK, STATE) as env, pytest.raises(PolicyError, match="5 finite values"):
        env.step(np.array([0.0, np.nan, 0.0, 0.0, 0.0]))


# ----- evaluate --------------------------------------------------------------------------------
def test_evaluate_scripted_policies() -> None:
    with PolicyTwinEnv(TASK, STATE) as env:
        expert = ExpertPolicy(env)
        good = evaluate(expert, env, 2, seed=5)
        assert good.success_rate == 1.0 and good.successes == [True, True]
        assert good.mean_length < env.max_steps and good.mean_return == 1.0 - good.mean_length
        assert expert.calls == 2 * good.mean_length
        again = evaluate(ExpertPolicy(env), env, 2, seed=5)
        assert again == good  # fixed seeds per episode: evaluations are comparable
        still = evaluate(StillPolicy(), env, 1, seed=5)
        assert still.success_rate == 0.0 and still.mean_length == env.max_steps
        assert still.mean_return == -env.max_steps
        with pytest.raises(PolicyError, match="episodes >= 1"):
            evaluate(StillPolicy(), env, 0, seed=0)


# ----- offline ---------------------------------------------------------------------------------
def _weights(algo) -> dict[str, torch.Tensor]:
    from twinloop.policy.base import flatten_state

    tensors, _ = flatten_state(algo.state_dict())
    return tensors


SMALL = {"batch_size": 32, "hidden": (64, 64)}


def _offline(store: Path, algo_type: str, out: Path, steps: int, *, resume: bool = False, env=None):
    from twinloop.policy.base import config_from_dict

    buffer = load_offline(store, STATE, RewardSpec("success"), seed=3)
    config = config_from_dict(
        algo_type, SMALL | ({"cql_n_actions": 4} if algo_type == "calql" else {})
    )
    algo = make_algorithm(algo_type, EncoderSpec(state_dim=buffer.state_dim), config, seed=3)
    cfg = OfflineConfig(
        steps=steps, eval_every=0, eval_episodes=1, checkpoint_every=10, log_every=5,
        seed=3, progress=False,
    )  # fmt: skip
    return algo, train_offline(algo, buffer, cfg, out_dir=out, env=env, resume=resume)


def test_offline_bc_writes_checkpoint_metrics_and_evals(store: Path, tmp_path: Path) -> None:
    with PolicyTwinEnv(TASK, STATE) as env:
        algo, log = _offline(store, "bc", tmp_path, 20, env=env)
    assert log.steps == 20 and log.updates == 20 and log.final_success is not None
    assert [e.step for e in log.evals] == [20] and load_evals(tmp_path) == log.evals
    with (tmp_path / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows if r["key"] == "actor_loss"] == [5, 10, 15, 20]
    assert any(r["key"] == "eval/success_rate" for r in rows)
    loaded, extra = load_checkpoint(tmp_path / "checkpoint.safetensors", expect_type="bc")
    assert extra["step"] == 20 and extra["phase"] == "offline"
    for key, value in _weights(loaded).items():
        torch.testing.assert_close(value, _weights(algo)[key], rtol=0, atol=0)


@pytest.mark.parametrize("algo_type", ["bc", "iql", "calql"])
def test_offline_resume_equals_uninterrupted(store: Path, tmp_path: Path, algo_type: str) -> None:
    full, _ = _offline(store, algo_type, tmp_path / "full", 30)
    _offline(store, algo_type, tmp_path / "cut", 20)  # "interrupted" after its step-20 checkpoint
    resumed, log = _offline(store, algo_type, tmp_path / "cut", 30, resume=True)
    assert log.updates == 10
    want, got = _weights(full), _weights(resumed)
    assert want.keys() == got.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=key)
    with (tmp_path / "cut" / "metrics.csv").open() as f:
        logged = [(int(r["step"]), r["key"]) for r in csv.DictReader(f)]
    assert len(logged) == len(set(logged))  # rows past the checkpoint were not logged twice
    assert sorted({step for step, _ in logged}) == [5, 10, 15, 20, 25, 30]


def test_offline_resume_refuses_bad_state(store: Path, tmp_path: Path) -> None:
    buffer = load_offline(store, STATE, RewardSpec("success"), seed=0)
    algo = make_algorithm("bc", EncoderSpec(state_dim=buffer.state_dim))
    cfg = OfflineConfig(steps=10, eval_every=0, checkpoint_every=10, progress=False)
    with pytest.raises(PolicyError, match="no checkpoint"):
        train_offline(algo, buffer, cfg, out_dir=tmp_path, resume=True)
    train_offline(algo, buffer, cfg, out_dir=tmp_path)
    from twinloop.policy.bc import BCConfig

    other = make_algorithm("bc", algo.spec, BCConfig(lr=1e-3))
    with pytest.raises(PolicyError, match=r"config differs.*lr"):
        train_offline(other, buffer, cfg, out_dir=tmp_path, resume=True)
    with pytest.raises(PolicyError, match="steps must be >= 1"):
        OfflineConfig(steps=0)


# ----- online ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_online_sac_from_scratch_writes_curve(tmp_path: Path) -> None:
    from twinloop.policy.sac import SACConfig

    config = SACConfig(batch_size=32, hidden=(64, 64), utd=2)
    with PolicyTwinEnv(TASK, STATE, seed=7) as env:
        algo = make_algorithm("sac", EncoderSpec(state_dim=env.state_dim), config, seed=0)
        cfg = OnlineConfig(
            online_steps=240, utd=2, start_after=100, warmup="random", eval_every=120,
            eval_episodes=1, checkpoint_every=120, log_every=20, progress=False,
        )  # fmt: skip
        log = train_online(algo, None, env, cfg, out_dir=tmp_path)
    assert algo.online and log.updates == 240 - 100
    assert algo.total_updates > 0
    assert log.evals[0].step == 0 and log.evals[-1].step == 240
    assert len(log.evals) == 3  # 0, one at an episode end after step 120, 240
    png = tmp_path / "learning_curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and log.curve == png
    with (tmp_path / "metrics.csv").open() as f:
        keys = {r["key"] for r in csv.DictReader(f)}
    assert "train/episode_return" in keys and "eval/success_rate" in keys
    _, extra = load_checkpoint(tmp_path / "checkpoint.safetensors", expect_type="sac")
    assert extra["step"] == 240 and extra["episodes"] >= 240 // env.max_steps


def test_online_calql_mixes_offline_data(store: Path, tmp_path: Path) -> None:
    from twinloop.policy.calql import CalQLConfig

    offline = load_offline(store, STATE, RewardSpec("success"), seed=0)
    config = CalQLConfig(batch_size=16, hidden=(32, 32), cql_n_actions=2)
    algo = make_algorithm("calql", EncoderSpec(state_dim=offline.state_dim), config)
    before = [EvalPoint(step=50, phase="offline", success_rate=0.5, mean_return=-40.0,
                        mean_length=50.0)]  # fmt: skip
    with PolicyTwinEnv(TASK, STATE) as env:
        cfg = OnlineConfig(
            online_steps=30, utd=2, eval_every=0, eval_episodes=1, progress=False, plot=True,
        )  # fmt: skip
        log = train_online(algo, offline, env, cfg, out_dir=tmp_path, history=before)
    assert algo.online and log.updates == 60  # utd separate updates per env step
    assert [e.phase for e in log.evals] == ["offline", "online", "online"]
    assert load_evals(tmp_path) == log.evals and (tmp_path / "learning_curve.png").exists()
    from twinloop.policy.sac import SACConfig

    sac = make_algorithm("sac", EncoderSpec(state_dim=12), SACConfig(utd=4))
    with (
        PolicyTwinEnv(TASK, STATE) as env,
        pytest.raises(PolicyError, match="utd from its config"),
    ):
        train_online(sac, None, env, OnlineConfig(utd=2, progress=False), out_dir=tmp_path)


# ----- CLI -------------------------------------------------------------------------------------
def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "twinloop", "train", *args],
        capture_output=True,
        text=True,
        check=check,
        env=env,
        cwd=ROOT,
        timeout=300,
    )


@pytest.mark.slow
def test_cli_offline_then_online(store: Path, tmp_path: Path) -> None:
    off = tmp_path / "off"
    common = ["--task", TASK, "--privileged", "--eval-episodes", "1", "--threads", "1"]
    res = _cli(
        "offline", "--algo", "calql", "--dataset", str(store), "--out", str(off),
        "--steps", "20", "--eval-every", "10", "--batch-size", "16",
        "--set", "hidden=32,32", "--set", "cql_n_actions=2", "--no-progress", *common,
    )  # fmt: skip
    assert "final success" in res.stdout
    summary = json.loads((off / "summary.json").read_text())
    assert summary["steps"] == 20 and summary["config"]["algo"]["hidden"] == [32, 32]
    assert [e["step"] for e in summary["evals"]] == [10, 20]
    on = tmp_path / "on"
    _cli(
        "online", "--algo", "calql", "--checkpoint", str(off / "checkpoint.safetensors"),
        "--dataset", str(store), "--out", str(on), "--online-steps", "20", "--utd", "1",
        "--eval-every", "0", "--no-progress", *common,
    )  # fmt: skip
    summary = json.loads((on / "summary.json").read_text())
    assert summary["phase"] == "online" and summary["steps"] == 20
    assert [e["phase"] for e in summary["evals"]] == ["offline", "offline", "online", "online"]
    assert (on / "learning_curve.png").exists()


def test_cli_help_and_bad_input_subprocess(tmp_path: Path) -> None:
    for cmd in ("offline", "online"):
        assert "--algo" in _cli(cmd, "--help").stdout
    res = _cli(
        "offline", "--algo", "bc", "--dataset", str(tmp_path / "none.zarr"),
        "--out", str(tmp_path / "o"), check=False,
    )  # fmt: skip
    assert res.returncode == 2 and "none.zarr does not exist" in res.stderr
    assert len([ln for ln in res.stderr.splitlines() if "ERROR" in ln]) == 1
    res = _cli("offline", "--algo", "td3", "--dataset", "x", "--out", "o", check=False)
    assert res.returncode == 2 and "invalid choice: 'td3'" in res.stderr


def test_cli_bad_input_in_process(store: Path, tmp_path: Path, caplog) -> None:
    from twinloop.cli import main

    base = ["train", "offline", "--algo", "bc", "--dataset", str(store), "--out", str(tmp_path)]
    cases = [
        (["--state-keys", "proprio,priv_missing"], "priv_missing"),
        (["--image-size", "32", "--image-key", "image_wrist"], "image_wrist"),
        (["--set", "nope=1"], "unknown bc config key 'nope'"),
        (["--set", "lr=fast"], "lr='fast'"),
        (["--reward", "key:nothing"], "nothing"),
    ]
    for extra, message in cases:
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            assert main([*base, "--steps", "2", "--no-progress", *extra]) == 2, extra
        assert message in caplog.text, (extra, caplog.text)
