"""``twinloop finetune``: bad input (exit 2, one message) and a --quick run on the real graph."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from twinloop.policy.errors import PolicyError
from twinloop.policy.finetune import FinetuneConfig, pick_versions

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
