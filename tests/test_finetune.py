"""``twinloop finetune``: bad input (exit 2, one message) and a --quick run on the real graph."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from twinloop.policy.errors import PolicyError
from twinloop.policy.finetune import (
    FinetuneConfig,
    merge_task_stores,
    pick_versions,
    twin_camera_size,
)

DOMAIN_ID = 1 + (os.getpid() + 37) % 100  # below 102: DDS ports out of the ephemeral range


def run_cli(args: list[str], tmp_path: Path, timeout: float = 60.0) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "ROS_DOMAIN_ID": str(DOMAIN_ID),
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "twinloop", "finetune", *args],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "fly_away"], "unknown task 'fly_away'"),
        (["--algo", "ppo"], "unknown algo 'ppo'"),
        (["--reward", "model:missing.safetensors"], "the reward checkpoint does not exist"),
        (["--reward", "vibes"], "unknown reward 'vibes'"),
        (["--profile", "moon"], "unknown graph profile 'finetune_moon'"),
        (["--no-realtime"], "--no-realtime is not supported on the graph"),
        (["--set", "nobody.x=1"], "has no node 'nobody'"),
        (["--reset-free", "--task", "push_cube"], "--reset-free needs a task with a backward"),
        (["--reset-free", "--reset-every", "-1"], "reset_every must be >= 0"),
    ],
)
def test_bad_input_exits_2_with_one_message(args: list[str], message: str, tmp_path: Path) -> None:
    out = run_cli([*args, "--quick", "--out", str(tmp_path / "run")], tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "run" / "demos.zarr").exists()  # nothing ran


def test_config_validation() -> None:
    with pytest.raises(PolicyError, match="online_episodes must be >= 1"):
        FinetuneConfig(out=Path("x"), online_episodes=0)
    with pytest.raises(PolicyError, match="utd must be a positive number"):
        FinetuneConfig(out=Path("x"), utd=0.0)


def test_reset_free_config_and_task_column_merge(tmp_path: Path) -> None:
    from twinloop.datasets.store import EpisodeStore

    cfg = FinetuneConfig(out=Path("x"), task="close_drawer", reset_free=True)
    assert cfg.tasks == ("close_drawer", "open_drawer")
    assert FinetuneConfig(out=Path("x")).tasks == ("open_drawer",)
    # a learned reward with reset-free: one model per task, named
    with pytest.raises(PolicyError, match="needs one model per task"):
        FinetuneConfig(out=Path("x"), reset_free=True, reward="model:x.safetensors")
    with pytest.raises(PolicyError, match=r"no reward model for task\(s\) \['close_drawer'\]"):
        FinetuneConfig(out=Path("x"), reset_free=True, reward="model:open_drawer=a.st")
    with pytest.raises(PolicyError, match="is not TASK=PATH"):
        FinetuneConfig(out=Path("x"), reset_free=True, reward="model:open_drawer=a.st,b.st")
    both = FinetuneConfig(out=Path("x"), reset_free=True,
                          reward="model:close_drawer=/m/b.st,open_drawer=/m/a.st")  # fmt: skip
    assert both.reward_models == {"open_drawer": Path("/m/a.st"), "close_drawer": Path("/m/b.st")}
    assert both.reward_source() == "model:open_drawer=/m/a.st,close_drawer=/m/b.st"
    # without reset-free a per-task list gives the task's model
    one = FinetuneConfig(out=Path("x"), reward="model:close_drawer=/m/b.st,open_drawer=/m/a.st")
    assert one.reward_source() == "model:/m/a.st"
    rng = np.random.default_rng(0)
    parts = []
    for task, lengths in (("open_drawer", (3, 4)), ("close_drawer", (5,))):
        path = tmp_path / f"{task}.zarr"
        with EpisodeStore.create(path, fps=10.0, task=task, extra_attrs={"twin_task": task}) as st:
            for n in lengths:
                episode = {"action": rng.uniform(-0.01, 0.01, (n, 5)).astype(np.float32),
                           "success": np.arange(n) == n - 1}  # fmt: skip
                st.add_episode(episode, meta={"success": True, "kind": "expert"})
        parts.append(path)
    merged = merge_task_stores(parts, tmp_path / "demos.zarr")
    with EpisodeStore.open(merged) as store:
        assert store.n_episodes == 3 and "task_onehot" in store.keys
        columns = [store.get_episode(i)["task_onehot"] for i in range(3)]
        metas = [store.episode_meta(i) for i in range(3)]
        first = EpisodeStore.open(parts[0])
        np.testing.assert_array_equal(
            store.get_episode(1)["action"], first.get_episode(1)["action"]
        )
        first.close()
    np.testing.assert_array_equal(columns[0], [[1, 0]] * 3)
    np.testing.assert_array_equal(columns[1], [[1, 0]] * 4)
    np.testing.assert_array_equal(columns[2], [[0, 1]] * 5)
    assert [m["twin_task"] for m in metas] == ["open_drawer", "open_drawer", "close_drawer"]
    assert all(m["success"] and m["kind"] == "expert" for m in metas)


def test_demos_are_recorded_with_the_graph_twins_camera_size() -> None:
    # a reward model relabels the offline demos from the frames reward_node sees online
    from twinloop.graph import load_graph

    graph = load_graph("finetune_sim")
    assert twin_camera_size(graph) == (64, 48)
    wide = graph.with_overrides(["twin.image_width=160", "twin.image_height=120"])
    assert twin_camera_size(wide) == (160, 120)
    with pytest.raises(PolicyError, match="must be positive integers"):
        twin_camera_size(graph.with_overrides(["twin.image_width=0"]))


def test_pick_versions() -> None:
    assert pick_versions([3, 1, 2], 6) == [1, 2, 3]
    picked = pick_versions(list(range(1, 31)), 6)
    assert len(picked) <= 7 and picked[0] == 1 and picked[-1] == 30
    assert picked == sorted(set(picked))
    gaps = [b - a for a, b in itertools.pairwise(picked)]
    assert max(gaps) - min(gaps) <= 1  # evenly spaced, plus the last
    assert pick_versions([], 6) == []


@pytest.mark.ros
@pytest.mark.slow
def test_quick_finetune_on_the_graph(tmp_path: Path) -> None:
    pytest.importorskip("rclpy", reason="needs the ROS 2 Jazzy wheels (pip install -e .[ros])")
    t0 = time.monotonic()
    out_dir = tmp_path / "run"
    out = run_cli(["--profile", "sim", "--quick", "--out", str(out_dir), "--no-progress"],
                  tmp_path, timeout=180.0)  # fmt: skip
    wall = time.monotonic() - t0
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for stage in range(1, 6):
        assert f"stage {stage}/5" in out.stdout, out.stdout
    summary = json.loads((out_dir / "summary.json").read_text())
    assert (out_dir / "learning_curve.png").stat().st_size > 5_000
    assert summary["demos"]["episodes"] == 3 and summary["demos"]["success_rate"] == 1.0
    assert summary["online_episodes"] == 4
    assert 0.0 <= summary["success_offline_end"] <= 1.0
    assert 0.0 <= summary["success_online_end"] <= 1.0
    # the graph ended by its runner, and every node left cleanly on the stop
    graph = summary["graph"]
    assert graph["exit_code"] == 0 and graph["ended_by"] == "episode_runner", graph
    assert set(graph["returncodes"].values()) == {0}, graph
    # 4 episodes of at most 60 steps (open_drawer) at 10 Hz reached the learner
    assert 20 <= summary["env_steps"] <= 4 * 60 + 8, summary["env_steps"]
    versions = summary["versions"]
    assert versions and summary["versions_published"] >= len(versions) >= 1
    assert versions[-1]["version"] == summary["versions_published"]
    assert versions[-1]["env_steps"] >= versions[0]["env_steps"] > 0
    assert summary["success_online_end"] == versions[-1]["success_rate"]
    online = [e for e in summary["evals"] if e["phase"] == "online"]
    assert len(online) == len(versions) + 1  # the offline end at env step 0, then each version
    assert summary["node_rates"]["policy_rate_hz"] == pytest.approx(10.0, abs=2.0)
    runner_lines = (out_dir / "runner.jsonl").read_text().splitlines()
    assert sum('"kind": "episode"' in line for line in runner_lines) == 4
    assert wall < 180.0


@pytest.mark.ros
@pytest.mark.slow
def test_quick_reset_free_finetune_on_the_graph(tmp_path: Path) -> None:
    pytest.importorskip("rclpy", reason="needs the ROS 2 Jazzy wheels (pip install -e .[ros])")
    t0 = time.monotonic()
    out_dir = tmp_path / "run"
    args = ["--profile", "sim", "--quick", "--reset-free", "--reset-every", "3",
            "--out", str(out_dir), "--no-progress"]  # fmt: skip
    out = run_cli(args, tmp_path, timeout=180.0)
    wall = time.monotonic() - t0
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads((out_dir / "summary.json").read_text())
    # demos of both tasks in one store with the task column
    assert summary["demos"]["episodes"] == 6 and summary["demos"]["success_rate"] == 1.0
    assert "open_drawer + close_drawer" in out.stdout
    rf = summary["reset_free"]
    assert rf["tasks"] == ["open_drawer", "close_drawer"] and rf["reset_every"] == 3
    records = [json.loads(line) for line in (out_dir / "runner.jsonl").read_text().splitlines()]
    episodes = [r for r in records if r["kind"] == "episode"]
    assert len(episodes) == 4 and episodes[0]["task"] == "open_drawer"
    # the schedule: the other task after a success, the same after a failure, a full reset
    # (back to the forward task) after reset_every=3 episodes
    other = {"open_drawer": "close_drawer", "close_drawer": "open_drawer"}
    for i, (prev, ep) in enumerate(itertools.pairwise(episodes), start=1):
        expected = (
            "open_drawer" if i == 3 else (other[prev["task"]] if prev["success"] else prev["task"])
        )
        assert ep["task"] == expected, episodes
    switches = sum(bool(p["success"]) for i, p in enumerate(episodes[:-1], 1) if i != 3)
    assert rf["switches"] == switches and rf["resets"] == 2, (rf, episodes)
    # the policy was conditioned on the runner's tasks and every episode reached the learner
    final = next(r for r in records if r["kind"] == "final")
    assert final["policy"]["task"] == episodes[-1]["task"]
    assert final["learner"]["episodes"] == 4 and final["runner"]["episodes"] == 4
    versions = summary["versions"]
    assert versions and all(0.0 <= v["success_rate_backward"] <= 1.0 for v in versions)
    assert wall < 180.0
